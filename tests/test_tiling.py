"""Large photographs: windows that cover the image, targets cut to a window, random training windows, and
sliced prediction that gives back exactly the objects a detector sees whole in some tile."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from scenekit.data.tiling import (RandomWindow, crop_target, merge_tiles, needs_slicing, predict_any_size,
                                  sliced_predict, tile_windows)
from scenekit.errors import DataError

TREES = Path("/work/shared/realdata/aerial-trees")


# ------------------------------------------------------------------------------------------------- helpers
def rectangles(boxes, height, width):
    """Instance masks [N, H, W] filling integer boxes exactly, and the target of transforms.py around them."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[k, y1:y2, x1:x2] = 1
    return {"boxes": boxes, "labels": np.arange(1, len(boxes) + 1), "masks": masks,
            "iscrowd": np.zeros(len(boxes), bool), "truncated": np.zeros(len(boxes), bool),
            "ann_ids": np.arange(100, 100 + len(boxes)), "image_id": 7, "captions": ["trees"]}


def mask_boxes(masks):
    """The xyxy box of each mask's pixels (NaN for an empty mask)."""
    out = []
    for mask in np.asarray(masks):
        ys, xs = np.nonzero(mask)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [np.nan] * 4)
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def scattered_boxes(rng, height, width, count, smallest, largest):
    """`count` integer boxes with sides in [smallest, largest], anywhere in the image (they may overlap)."""
    w = rng.integers(smallest, largest + 1, count)
    h = rng.integers(smallest, largest + 1, count)
    x = rng.integers(0, width - w + 1)
    y = rng.integers(0, height - h + 1)
    return np.stack([x, y, x + w, y + h], 1).astype(np.float64)


def sorted_rows(boxes, *columns):
    rows = np.column_stack([np.asarray(boxes, dtype=np.float64)] + [np.asarray(c, dtype=np.float64) for c in columns])
    return rows[np.lexsort(rows.T[::-1])]


def coordinate_image(height, width):
    """Every pixel names its own position: R = x mod 256, G = y mod 256, B = 16 (x div 256) + y div 256."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, 16 * (xs // 256) + ys // 256], -1).astype(np.uint8)


def origin(crop):
    """(x0, y0) of a crop of a `coordinate_image`, read off its top-left pixel."""
    r, g, b = (int(v) for v in crop[0, 0])
    return r + 256 * (b // 16), g + 256 * (b % 16)


# ------------------------------------------------------------------------------------------------- windows
@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 700), width=st.integers(1, 700), tile=st.integers(8, 300), data=st.data())
def test_windows_cover_every_pixel_and_neighbours_overlap_by_at_least_overlap(height, width, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    windows = tile_windows(height, width, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(tile, width), min(tile, height))
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs, ys = np.unique(windows[:, [0, 2]], axis=0), np.unique(windows[:, [1, 3]], axis=0)
    assert len(windows) == len(xs) * len(ys)                                       # a grid
    for column, length in ((xs, width), (ys, height)):
        assert column[0, 0] == 0 and column[-1, 1] == length                        # flush with both borders
        assert (column[:-1, 1] - column[1:, 0] >= overlap).all()                     # neighbours' shared pixels
        # The fewest tiles: one fewer could not reach the border even at the largest allowed step.
        if len(column) > 1:
            assert (len(column) - 2) * (tile - overlap) + tile < length


def test_image_that_fits_gets_a_single_window():
    np.testing.assert_array_equal(tile_windows(300, 416, 416, 64), [[0, 0, 416, 300]])
    np.testing.assert_array_equal(tile_windows(100, 1000, 416, 0), [[0, 0, 416, 100], [292, 0, 708, 100],
                                                                    [584, 0, 1000, 100]])


@pytest.mark.parametrize("tile, overlap, field", [(64, 64, "overlap"), (64, 100, "overlap"), (64, -1, "tile/overlap"),
                                                  (0, 0, "tile/overlap"), (64.0, 8, "tile"), (64, 8.5, "overlap")])
def test_tile_not_larger_than_its_overlap_is_one_clear_error(tile, overlap, field):
    with pytest.raises(DataError, match=f"field {field}"):
        tile_windows(500, 500, tile, overlap)
    with pytest.raises(DataError, match=f"field {field}"):
        sliced_predict(lambda tiles: [], np.zeros((500, 500, 3), np.uint8), tile=tile, overlap=overlap,
                       iou_threshold=0.5, max_detections=10)


@pytest.mark.parametrize("shape, expected", [((375, 500, 3), False), ((624, 624), False), ((625, 100), True),
                                             ((2472, 2299, 3), True), ((416, 4000), True)])
def test_images_beyond_one_and_a_half_input_sides_are_sliced(shape, expected):
    assert needs_slicing(shape, 416) is expected


# ------------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("window, min_visible, kept, box", [
    ((5, 0, 20, 20), 0.5, True, [0, 0, 5, 10]),       # exactly half visible: kept (>=)
    ((6, 0, 20, 20), 0.5, False, None),               # 40% visible
    ((6, 0, 20, 20), 0.4, True, [0, 0, 4, 10]),
    ((9, 9, 20, 20), 0.0, True, [0, 0, 1, 1]),        # a 1 px sliver, kept when every sliver is wanted
    ((10, 0, 20, 20), 0.0, False, None),              # touching the window's edge is no visible area
    ((0, 0, 20, 20), 1.0, True, [0, 0, 10, 10]),      # whole
])
def test_objects_below_the_visible_fraction_are_dropped(window, min_visible, kept, box):
    out = crop_target(rectangles([[0, 0, 10, 10]], 20, 20), window, min_visible=min_visible)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) == int(kept)
    if kept:
        np.testing.assert_array_equal(out["boxes"], [box])
        np.testing.assert_array_equal(mask_boxes(out["masks"]), [box])


def test_crop_target_cuts_masks_and_carries_every_per_object_field():
    target = rectangles([[2, 2, 8, 8], [12, 3, 30, 9], [25, 14, 29, 19]], 20, 32)
    target["semantic"] = target["masks"].max(0).astype(np.int64)
    out = crop_target(target, (10, 0, 28, 16), min_visible=0.5)
    # The first box is outside, the second has 16 of its 18 columns inside, the third 3 of 4 columns, 2 of 5 rows.
    np.testing.assert_array_equal(out["boxes"], [[2, 3, 18, 9]])
    np.testing.assert_array_equal(out["labels"], [2])
    np.testing.assert_array_equal(out["ann_ids"], [101])
    np.testing.assert_array_equal(out["truncated"], [True])                 # cut by the window
    np.testing.assert_array_equal(out["masks"][0], target["masks"][1, 0:16, 10:28])
    np.testing.assert_array_equal(out["semantic"], target["semantic"][0:16, 10:28])
    assert out["image_id"] == 7 and out["captions"] == ["trees"]
    whole = crop_target(target, (0, 0, 10, 10))
    np.testing.assert_array_equal(whole["truncated"], [False])


@pytest.mark.parametrize("box", [[1, 1, np.nan, 5], [1, 1, np.inf, 5], [5, 1, 1, 5]])
def test_nan_or_inverted_box_is_one_error_naming_record_and_field(box):
    target = {"boxes": np.array([[0, 0, 4, 4], box], dtype=np.float64), "labels": np.array([1, 2]), "image_id": 3}
    with pytest.raises(DataError, match=r"image id 3: field boxes: box 1 is"):
        crop_target(target, (0, 0, 10, 10))


def test_window_must_be_whole_pixels_inside_the_image():
    with pytest.raises(DataError, match="field window"):
        crop_target(rectangles([[0, 0, 4, 4]], 10, 10), (0, 0, 5.5, 10))


# ------------------------------------------------------------------------------------------------- round trip
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), height=st.integers(60, 500), width=st.integers(60, 500),
       tile=st.integers(40, 160), data=st.data())
def test_boxes_split_over_tiles_and_merged_back_equal_the_originals(seed, height, width, tile, data):
    """Every box, cut by `crop_target` into every tile it touches (slivers included), and each piece returned as a
    detection, merges back to exactly the original boxes when objects are at most overlap - 2 margin."""
    overlap = data.draw(st.integers(12, tile - 1))
    margin = data.draw(st.sampled_from([0, 1, overlap // 8]))
    rng = np.random.default_rng(seed)
    largest = min(overlap - 2 * margin, height, width)
    boxes = scattered_boxes(rng, height, width, 30, 1, largest)
    boxes[::3] += rng.uniform(0, 0.9, (len(boxes[::3]), 4)) * [1, 1, 0, 0]        # some fractional corners
    target = {"boxes": boxes, "labels": np.arange(len(boxes))}                     # one label each: NMS per object
    scores = rng.uniform(0.1, 1.0, len(boxes))
    windows = tile_windows(height, width, tile, overlap)
    found = []
    for window in windows:
        piece = crop_target(target, window, min_visible=0.0)
        found.append({"boxes": piece["boxes"], "labels": piece["labels"], "scores": scores[piece["labels"]]})
    merged = merge_tiles(found, windows, iou_threshold=0.5, max_detections=1000, margin=margin)
    np.testing.assert_allclose(sorted_rows(merged["boxes"], merged["labels"], merged["scores"]),
                               sorted_rows(boxes, np.arange(len(boxes)), scores), atol=1e-9)
    assert (np.diff(merged["scores"].numpy()) <= 0).all()                          # best first


def test_without_the_core_rule_the_slivers_of_cut_objects_survive_nms():
    """Why the core rule: NMS alone keeps a sliver whose IoU with its whole object is small."""
    boxes = np.array([[92.0, 10, 112, 30]])                          # cut by the first tile's edge at x = 100
    windows = tile_windows(40, 160, 100, 40)                         # x: [0, 100], [60, 160]; cores meet at 80
    found = [{**crop_target({"boxes": boxes, "labels": np.array([1])}, w, 0.0), "scores": np.array([0.9])}
             for w in windows]
    np.testing.assert_array_equal(found[0]["boxes"], [[92, 10, 100, 30]])
    ruled = merge_tiles(found, windows, iou_threshold=0.5, max_detections=10)
    plain = merge_tiles(found, windows, iou_threshold=0.5, max_detections=10, margin=1e9)
    np.testing.assert_array_equal(ruled["boxes"], boxes)
    assert len(plain["boxes"]) == 2


def test_margin_keeps_an_object_whose_centres_wobble_across_the_midline_once():
    """Tile 0 places the object's centre at x = 81 (in tile 1's core), tile 1 at x = 79 (in tile 0's core):
    without a margin both drop it; with one both keep it and NMS leaves the better detection."""
    windows = tile_windows(40, 160, 100, 40)                         # cores meet at x = 80
    found = [{"boxes": np.array([[74.0, 10, 88, 30]]), "scores": np.array([0.6]), "labels": np.array([1])},
             {"boxes": np.array([[12.0, 10, 26, 30]]), "scores": np.array([0.8]), "labels": np.array([1])}]
    assert len(merge_tiles(found, windows, iou_threshold=0.5, max_detections=10)["boxes"]) == 0
    merged = merge_tiles(found, windows, iou_threshold=0.5, max_detections=10, margin=5)
    np.testing.assert_array_equal(merged["boxes"], [[72, 10, 86, 30]])    # the second tile's, shifted by 60
    np.testing.assert_array_equal(merged["scores"], [0.8])


# ------------------------------------------------------------------------------------------------- training windows
def test_random_window_keeps_pixels_boxes_and_masks_exact():
    rng = np.random.default_rng(0)
    height, width = 300, 520
    image = coordinate_image(height, width)
    target = rectangles(scattered_boxes(rng, height, width, 12, 4, 60), height, width)
    transform = RandomWindow(128, seed=1)
    for _ in range(30):
        crop, out = transform(image, target)
        assert crop.shape == (128, 128, 3)
        x0, y0 = origin(crop)
        np.testing.assert_array_equal(crop, image[y0:y0 + 128, x0:x0 + 128])       # every pixel where it was
        # Kept: the objects with at least half their pixels in the window (an independent count on the masks).
        inside = target["masks"][:, y0:y0 + 128, x0:x0 + 128].sum((1, 2))
        expected = (inside > 0) & (inside >= 0.5 * target["masks"].sum((1, 2)))
        np.testing.assert_array_equal(out["ann_ids"], target["ann_ids"][expected])
        np.testing.assert_array_equal(out["masks"], target["masks"][expected][:, y0:y0 + 128, x0:x0 + 128])
        np.testing.assert_array_equal(out["boxes"], mask_boxes(out["masks"]))
        for box, k in zip(out["boxes"].astype(int), np.flatnonzero(expected)):      # pixels under each box
            x1, y1, x2, y2 = box
            original = np.clip(target["boxes"][k] - [x0, y0, x0, y0], 0, 128).astype(int)
            np.testing.assert_array_equal(box, original)
            np.testing.assert_array_equal(crop[y1:y2, x1:x2], image[y0 + y1:y0 + y2, x0 + x1:x0 + x2])


def test_random_window_is_seeded_and_seeds_differ():
    image, target = coordinate_image(400, 400), rectangles([[10, 10, 30, 30], [300, 200, 340, 260]], 400, 400)

    def origins(seed):
        transform = RandomWindow(100, seed=seed)
        return [origin(transform(image, target)[0]) for _ in range(10)]
    assert origins(3) == origins(3)
    assert origins(3) != origins(4)


def test_random_window_biased_to_objects_holds_one_whole():
    image, target = coordinate_image(600, 600), rectangles([[500, 40, 530, 90]], 600, 600)
    transform = RandomWindow(100, object_bias=1.0, seed=0)
    starts = set()
    for _ in range(20):
        crop, out = transform(image, target)
        x0, y0 = origin(crop)
        starts.add((x0, y0))
        np.testing.assert_array_equal(out["boxes"] + [x0, y0, x0, y0], target["boxes"])
    assert len(starts) > 5                                           # not always the same place around it


def test_random_window_leaves_images_that_predict_whole_untouched():
    image, target = coordinate_image(150, 200), rectangles([[10, 10, 30, 30]], 150, 200)
    out_image, out = RandomWindow(160, seed=0)(image, target)        # 200 <= 1.5 x 160: letterboxed whole
    assert out_image is image and out is target
    tall, tall_target = coordinate_image(900, 100), rectangles([[10, 400, 30, 430]], 900, 100)
    crop, _ = RandomWindow(160, seed=0)(tall, tall_target)
    assert crop.shape == (160, 100, 3)                               # the narrow side stays whole


# ------------------------------------------------------------------------------------------------- sliced prediction
def squares_image(rng, height, width, count, smallest, largest):
    """A black image with `count` non-overlapping squares, square k coloured (label, k // 256 + 1, k % 256):
    the labels, boxes and masks a perfect detector would report."""
    image = np.zeros((height, width, 3), np.uint8)
    boxes, labels = [], []
    while len(boxes) < count:
        side = int(rng.integers(smallest, largest + 1))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if image[max(y - 1, 0):y + side + 1, max(x - 1, 0):x + side + 1].any():
            continue
        k, label = len(boxes), int(rng.integers(1, 4))
        image[y:y + side, x:x + side] = (label, k // 256 + 1, k % 256)
        boxes.append([x, y, x + side, y + side])
        labels.append(label)
    return image, np.array(boxes, np.float64), np.array(labels)


def detect_squares(tiles):
    """A fake detector: each colour in a tile is one object, its box the colour's pixels (so a square cut by the
    tile's edge is reported cut), its label the red channel, its score a fixed function of the colour."""
    results = []
    for tile in tiles:
        codes = tile[..., 0].astype(np.int64) * 65536 + tile[..., 1].astype(np.int64) * 256 + tile[..., 2]
        colours = np.unique(codes[codes > 0])
        masks = (codes[None] == colours[:, None, None]).astype(np.uint8)                    # [N, h, w]
        results.append({"boxes": torch.from_numpy(mask_boxes(masks)), "scores": torch.from_numpy(
            0.5 + (colours % 65536) / 2 ** 18), "labels": torch.from_numpy(colours // 65536),
            "masks": torch.from_numpy(masks)})
    return results


def test_sliced_predict_of_a_big_image_finds_each_square_whole_and_once():
    rng = np.random.default_rng(5)
    image, boxes, labels = squares_image(rng, 500, 700, 60, 6, 34)
    calls = []
    found = sliced_predict(lambda tiles: calls.append(len(tiles)) or detect_squares(tiles), image,
                           tile=128, overlap=48, iou_threshold=0.5, max_detections=1000, batch_size=5)
    assert found["boxes"].dtype == torch.float64 and found["labels"].dtype == torch.int64
    np.testing.assert_array_equal(sorted_rows(found["boxes"], found["labels"]), sorted_rows(boxes, labels))
    for box, mask in zip(found["boxes"].numpy().astype(int), found["masks"].numpy()):
        colour = image[box[1], box[0]]
        np.testing.assert_array_equal(mask, (image == colour).all(-1))              # pasted into the whole image
    windows = tile_windows(500, 700, 128, 48)
    assert sum(calls) == len(windows) and max(calls) == 5
    # The same as predicting the tiles one by one and merging them by hand.
    by_hand = merge_tiles([detect_squares([image[y0:y1, x0:x1]])[0] for x0, y0, x1, y1 in windows], windows,
                          iou_threshold=0.5, max_detections=1000, margin=6)
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(found[key], by_hand[key]), key


def test_sliced_predict_keeps_the_best_max_detections():
    image, _, _ = squares_image(np.random.default_rng(2), 300, 300, 30, 6, 20)
    everything = sliced_predict(detect_squares, image, tile=100, overlap=40, iou_threshold=0.5, max_detections=1000)
    best = sliced_predict(detect_squares, image, tile=100, overlap=40, iou_threshold=0.5, max_detections=7)
    assert len(everything["boxes"]) == 30 and len(best["boxes"]) == 7
    assert torch.equal(best["scores"], everything["scores"][:7])
    assert best["masks"].shape == (7, 300, 300)


def test_a_detector_that_returns_nan_is_one_error_naming_the_tile():
    def broken(tiles):
        return [{"boxes": np.array([[np.nan, 0, 1, 1]]), "scores": np.array([0.5]), "labels": np.array([1])}
                for _ in tiles]
    with pytest.raises(DataError, match=r"field boxes: .*NaN .* tile 0 \[0, 0, 100, 100\]"):
        sliced_predict(broken, np.zeros((300, 300, 3), np.uint8), tile=100, overlap=20, iou_threshold=0.5,
                       max_detections=10)
    with pytest.raises(DataError, match="returned 0 results for 8 tiles"):
        sliced_predict(lambda tiles: [], np.zeros((300, 300, 3), np.uint8), tile=100, overlap=20,
                       iou_threshold=0.5, max_detections=10)


def test_predict_any_size_slices_only_the_large_images():
    rng = np.random.default_rng(9)
    big, boxes, labels = squares_image(rng, 400, 420, 20, 6, 20)
    small, small_boxes, small_labels = squares_image(rng, 120, 150, 3, 6, 20)
    calls = []

    def predict(tiles):
        calls.append([t.shape[:2] for t in tiles])
        return detect_squares(tiles)
    found = predict_any_size(predict, [small, big, small], input_size=128, iou_threshold=0.5, max_detections=100)
    assert calls[0] == [(120, 150), (120, 150)]                      # the images that fit, together, as they are
    assert all(shape == (128, 128) for call in calls[1:] for shape in call)
    np.testing.assert_array_equal(sorted_rows(found[1]["boxes"], found[1]["labels"]), sorted_rows(boxes, labels))
    for whole in (found[0], found[2]):
        np.testing.assert_array_equal(sorted_rows(whole["boxes"], whole["labels"]),
                                      sorted_rows(small_boxes, small_labels))


@pytest.mark.skipif(not (TREES / "yell_2019_crop2.xml").is_file(), reason="no aerial-trees photo here")
def test_sliced_predict_gives_back_every_tree_of_the_real_photo():
    """The 2299 x 2472 px NEON photo with 574 crowns of 8-108 px, predicted by a detector that reports exactly the
    annotated crowns its tile shows (cut ones cut): the whole photo comes back with every crown once, in the image."""
    root = ET.parse(TREES / "yell_2019_crop2.xml").getroot()
    trees = np.array([[float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
                      for o in root.iter("object")])
    with Image.open(TREES / "yell_2019_crop2.jpg") as picture:
        image = np.asarray(picture.convert("RGB"))
    height, width = image.shape[:2]
    assert (height, width) == (2472, 2299) and len(trees) == 574 and needs_slicing(image.shape, 416)
    windows = iter(tile_windows(height, width, 416, 128))            # sliced_predict's documented tile order
    target = {"boxes": trees, "labels": np.ones(len(trees), np.int64)}

    def annotated_crowns(tiles):
        results = []
        for tile, window in zip(tiles, windows):
            assert tile.shape[:2] == (window[3] - window[1], window[2] - window[0])
            piece = crop_target(target, window, min_visible=0.0)
            results.append({"boxes": piece["boxes"], "labels": piece["labels"],
                            "scores": 1.0 - piece["boxes"][:, 0] / 1e4})
        return results
    found = sliced_predict(annotated_crowns, image, tile=416, overlap=128, margin=8, iou_threshold=0.5,
                           max_detections=1000)
    assert next(windows, None) is None
    boxes = found["boxes"].numpy()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    np.testing.assert_array_equal(sorted_rows(boxes), sorted_rows(trees))


@pytest.mark.parametrize("arguments, field", [({"size": 0}, "size"), ({"size": 64, "object_bias": 1.5}, "object_bias"),
                                              ({"size": 64, "min_visible": -0.1}, "min_visible"),
                                              ({"size": 64, "factor": 0.5}, "factor")])
def test_random_window_bad_arguments_are_one_clear_error(arguments, field):
    with pytest.raises(DataError, match=f"field {field}"):
        RandomWindow(**arguments)
