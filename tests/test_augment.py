"""Augmentations keep boxes and masks exact: flips and quarter turns are exact group actions, resizing agrees within
a pixel, crops and mosaics clip and drop by the visible fraction; the options switch each one."""

from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.data.augment import (TOP_DOWN_DEFAULTS, USER_DATA_DEFAULTS, WORLD_DEFAULTS, AugmentOptions,
                                   ColorJitter, FixedSizeCrop, HorizontalFlip, MosaicDataset, RandomCrop,
                                   RecordPairs, Rotate90, ScaleJitter, VerticalFlip, build_augmentation, mosaic,
                                   rotate90)
from scenekit.data.records import Dataset, Record
from tests.test_transforms import mask_boxes  # tight pixel-edge boxes of masks: the reference


# ------------------------------------------------------------------------------------------------- scenes
def blob_scene(seed, height, width, n=4, shape="blob"):
    """A random image and n objects: ragged blobs (random pixels in a random window, any shape), ellipses
    (convex) or rectangles; boxes are the masks' tight boxes, the semantic map the label of the last object
    covering a pixel."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    for k in range(n):
        x1, y1 = rng.integers(0, width - 2), rng.integers(0, height - 2)
        x2, y2 = rng.integers(x1 + 3, width + 1), rng.integers(y1 + 3, height + 1)
        window = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        if shape == "rectangle":
            masks[k] = window
        elif shape == "ellipse":
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks[k] = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1
        else:
            masks[k] = window & (rng.random((height, width)) < 0.3)
            masks[k, rng.integers(y1, y2), rng.integers(x1, x2)] = 1                # never empty
    semantic = np.zeros((height, width), dtype=np.int64)
    for k in range(n):
        semantic[masks[k] > 0] = k + 1
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, {"boxes": mask_boxes(masks), "labels": np.arange(1, n + 1), "masks": masks,
                   "iscrowd": np.zeros(n, bool), "semantic": semantic, "image_id": seed}


def assert_same(first, second):
    (image_a, target_a), (image_b, target_b) = first, second
    np.testing.assert_array_equal(image_a, image_b)
    assert target_a.keys() == target_b.keys()
    for key in ("boxes", "labels", "masks", "semantic"):
        if key in target_a:
            np.testing.assert_array_equal(target_a[key], target_b[key])


# ------------------------------------------------------------------------------------------------- flips, turns
@pytest.mark.parametrize("flip", [HorizontalFlip(p=1.0), VerticalFlip(p=1.0)], ids=["horizontal", "vertical"])
def test_flipping_twice_restores_image_boxes_masks_and_semantic(flip):
    image, target = blob_scene(0, 17, 23)
    assert_same(flip(*flip(image, target)), (image, target))


def test_vertical_flip_maps_y_to_height_minus_y():
    image, target = blob_scene(1, 10, 20, n=1, shape="rectangle")
    target["boxes"], target["masks"][:] = np.array([[2.0, 1, 5, 4]]), 0
    target["masks"][0, 1:4, 2:5] = 1
    out_image, out = VerticalFlip(p=1.0)(image, target)
    np.testing.assert_array_equal(out["boxes"], [[2, 6, 5, 9]])              # y1' = H - y2, y2' = H - y1
    np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])
    np.testing.assert_array_equal(out_image, np.flipud(image))
    assert VerticalFlip(p=0.0)(image, target)[1] is target


def test_a_quarter_turn_swaps_width_and_height_as_np_rot90():
    image, target = blob_scene(2, 10, 20, n=1, shape="rectangle")
    target["boxes"], target["masks"][:] = np.array([[2.0, 1, 5, 4]]), 0
    target["masks"][0, 1:4, 2:5] = 1
    out_image, out = rotate90(image, target, 1)
    assert out_image.shape == (20, 10, 3) and out["masks"].shape == (1, 20, 10) and out["semantic"].shape == (20, 10)
    np.testing.assert_array_equal(out_image, np.rot90(image))
    assert (out_image[20 - 1 - 7, 3] == image[3, 7]).all()                   # pixel (r, c) -> (W - 1 - c, r)
    np.testing.assert_array_equal(out["boxes"], [[1, 15, 4, 18]])            # [y1, W - x2, y2, W - x1]
    np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])


def test_four_quarter_turns_are_the_identity_and_two_are_both_flips():
    image, target = blob_scene(3, 13, 29)
    turned = (image, target)
    for _ in range(4):
        turned = Rotate90(k=1)(*turned)
        assert turned[0].shape[:2] in ((13, 29), (29, 13))
    assert_same(turned, (image, target))
    assert_same(Rotate90(k=3)(*Rotate90(k=1)(image, target)), (image, target))
    assert_same(rotate90(image, target, 2), VerticalFlip(p=1.0)(*HorizontalFlip(p=1.0)(image, target)))


GEOMETRY = {
    "hflip": lambda: HorizontalFlip(p=1.0),
    "vflip": lambda: VerticalFlip(p=1.0),
    "rot90": lambda: Rotate90(k=1),
    "rot180": lambda: Rotate90(k=2),
    "rot270": lambda: Rotate90(k=3),
}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(4, 40), width=st.integers(4, 40),
       name=st.sampled_from(sorted(GEOMETRY)))
def test_boxes_of_flipped_and_turned_images_are_the_tight_boxes_of_their_masks(seed, height, width, name):
    image, target = blob_scene(seed, height, width)
    out_image, out = GEOMETRY[name]()(image, target)
    np.testing.assert_array_equal(out["boxes"], mask_boxes(out["masks"]))
    assert out["masks"].shape[1:] == out["semantic"].shape == out_image.shape[:2]
    np.testing.assert_array_equal(out["semantic"] > 0, out["masks"].max(0) > 0)


def test_vertical_flips_and_turns_refuse_text_they_would_falsify():
    image, target = blob_scene(4, 8, 8)
    with pytest.raises(ValueError, match="captions"):
        VerticalFlip(p=0.0)(image, {**target, "captions": ["a star above a ring"]})
    with pytest.raises(ValueError, match="captions"):
        Rotate90(k=0)(image, {**target, "questions": []})


def test_random_turns_draw_every_quarter_and_repeat_with_a_seed():
    image, target = blob_scene(5, 6, 9)
    shapes = [Rotate90(seed=s)(image, target)[0].shape[:2] for s in range(40)]
    assert {(6, 9), (9, 6)} == set(shapes)
    first, again = Rotate90(seed=7), Rotate90(seed=7)
    for _ in range(5):
        assert_same(first(image, target), again(image, target))


# ------------------------------------------------------------------------------------------------- scale
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(8, 48), width=st.integers(8, 48),
       shape=st.sampled_from(["ellipse", "rectangle", "blob"]))
def test_scale_jitter_keeps_boxes_on_the_masks_tight_boxes(seed, height, width, shape):
    image, target = blob_scene(seed, height, width, shape=shape)
    out_image, out = ScaleJitter(scale_range=(0.75, 1.25), seed=seed)(image, target)
    out_h, out_w = out_image.shape[:2]
    assert 0.75 * height - 1 <= out_h <= 1.25 * height + 1 and abs(out_h / height - out_w / width) < 0.1
    np.testing.assert_allclose(out["boxes"], target["boxes"] * ([out_w / width, out_h / height] * 2))
    assert out["masks"].shape == (4, out_h, out_w) and out["semantic"].shape == (out_h, out_w)
    from_masks = mask_boxes(out["masks"])
    if shape == "rectangle":                                                 # within a pixel
        np.testing.assert_allclose(from_masks, out["boxes"], atol=1.0)
    else:       # nearest sampling can skip a mask's outermost pixels, never add any past half a pixel outside
        seen = ~np.isnan(from_masks[:, 0])
        assert (from_masks[seen, :2] >= out["boxes"][seen, :2] - 0.5 - 1e-9).all()
        assert (from_masks[seen, 2:] <= out["boxes"][seen, 2:] + 0.5 + 1e-9).all()


def test_scale_jitter_with_a_target_size_scales_the_fitted_image():
    image, target = blob_scene(6, 50, 200, shape="rectangle")
    out_image, out = ScaleJitter(target_size=100, scale_range=(1.0, 1.0))(image, target)
    assert out_image.shape == (25, 100, 3)                                   # fitted: longer side 100
    out_image, _ = ScaleJitter(target_size=(100, 100), scale_range=(1.5, 1.5))(image, target)
    assert out_image.shape == (38, 150, 3)
    with pytest.raises(ValueError, match="target_size"):
        ScaleJitter((0.75, 1.25))                                            # a range given as the size


def test_fixed_size_crop_pads_small_images_and_crops_large_ones():
    image, target = blob_scene(7, 20, 30, shape="rectangle")
    out_image, out = FixedSizeCrop((32, 40), fill=9)(image, target)
    assert out_image.shape == (32, 40, 3) and (out_image[20:] == 9).all() and (out_image[:, 30:] == 9).all()
    np.testing.assert_array_equal(out_image[:20, :30], image)
    np.testing.assert_array_equal(out["boxes"], target["boxes"])
    np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])
    assert out["semantic"].shape == (32, 40) and (out["semantic"][20:] == 0).all()
    for seed in range(10):
        out_image, out = FixedSizeCrop(16, min_visible=0.25, seed=seed)(image, target)
        assert out_image.shape == (16, 16, 3) and out["masks"].shape[1:] == (16, 16)
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 16)).all()
        np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])   # rectangles stay exact


# ------------------------------------------------------------------------------------------------- colour
def test_colour_jitter_changes_pixels_and_leaves_the_target_untouched():
    image, target = blob_scene(8, 16, 16)
    out_image, out = ColorJitter(0.5, 0.5, 0.5, seed=1)(image, target)
    assert out is target and not np.array_equal(out_image, image)
    only_colour = build_augmentation(replace(WORLD_DEFAULTS, hflip=False, color_jitter=0.4), seed=0)
    np.testing.assert_array_equal(only_colour(image, target)[1]["boxes"], target["boxes"])


# ------------------------------------------------------------------------------------------------- mosaic
def flat_pair(value, size, boxes=()):
    """A size x size image of one grey `value` with rectangular objects at `boxes`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), size, size), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[k, y1:y2, x1:x2] = 1
    return np.full((size, size, 3), value, np.uint8), {
        "boxes": boxes, "labels": np.full(len(boxes), value), "masks": masks, "iscrowd": np.zeros(len(boxes), bool),
        "image_id": value}


def test_mosaic_puts_each_image_in_its_quarter_with_its_inner_corner_on_the_centre():
    pairs = [flat_pair(10, 64, [[50, 30, 60, 60]]), flat_pair(20, 64, [[0, 40, 8, 64]]),
             flat_pair(30, 64, [[10, 0, 30, 10]]), flat_pair(40, 64, [[0, 0, 5, 5]])]
    canvas, out = mosaic(pairs, 64, (20, 40), min_visible=0.25)
    assert canvas.shape == (64, 64, 3) and out["masks"].shape == (3, 64, 64)
    assert (canvas[:40, :20] == 10).all() and (canvas[:40, 20:] == 20).all()
    assert (canvas[40:, :20] == 30).all() and (canvas[40:, 20:] == 40).all()
    # image corners at (20 - 64, 40 - 64), (20, 40 - 64), (20 - 64, 40), (20, 40): top-left [50, 30, 60, 60] ->
    # [6, 6, 16, 36]; top-right [0, 40, 8, 64] -> [20, 16, 28, 40]; bottom-left [10, 0, 30, 10] -> [-34, 40, -14, 50],
    # wholly off the canvas and dropped; bottom-right [0, 0, 5, 5] -> [20, 40, 25, 45]
    np.testing.assert_array_equal(out["boxes"], [[6, 6, 16, 36], [20, 16, 28, 40], [20, 40, 25, 45]])
    assert out["labels"].tolist() == [10, 20, 40] and out["image_id"] == 10
    np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])


@pytest.mark.parametrize("min_visible, kept", [(0.5, True), (0.51, False)])
def test_mosaic_drops_objects_whose_visible_fraction_is_below_the_threshold(min_visible, kept):
    # top-left image at (-32, -32): [16, 40, 48, 56] -> [-16, 8, 16, 24], half of it inside its quarter
    pairs = [flat_pair(10, 64, [[16, 40, 48, 56]])] + [flat_pair(v, 64) for v in (20, 30, 40)]
    _, out = mosaic(pairs, 64, (32, 32), min_visible=min_visible)
    assert len(out["boxes"]) == kept
    if kept:
        np.testing.assert_array_equal(out["boxes"], [[0, 8, 16, 24]])
        np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10 ** 6), cx=st.integers(0, 48), cy=st.integers(0, 48),
       shape=st.sampled_from(["rectangle", "blob"]))
def test_mosaic_boxes_lie_in_the_canvas_and_match_their_masks(seed, cx, cy, shape):
    rng = np.random.default_rng(seed)
    sides = rng.integers(12, 70, size=(4, 2))
    sides[0] = (48, int(rng.integers(12, 49)))                               # one image needs no resizing
    pairs = [blob_scene(seed + k, h, w, shape=shape) for k, (h, w) in enumerate(sides)]
    for k, (_, target) in enumerate(pairs):
        target["labels"] = target["labels"] + 10 * k                         # which image an object came from
    canvas, out = mosaic(pairs, 48, (cx, cy), min_visible=0.3)
    assert canvas.shape == (48, 48, 3) and out["semantic"].shape == (48, 48)
    assert out["masks"].shape == (len(out["boxes"]), 48, 48) == (len(out["labels"]), 48, 48)
    assert ((out["boxes"] >= 0) & (out["boxes"] <= 48)).all()
    assert (out["boxes"][:, 2:] > out["boxes"][:, :2]).all()
    from_masks = mask_boxes(out["masks"])
    if shape == "rectangle":                    # exact at scale 1 (image 0), within a pixel after resizing
        np.testing.assert_allclose(from_masks, out["boxes"], atol=1.0)
        unscaled = out["labels"] < 10
        np.testing.assert_array_equal(from_masks[unscaled], out["boxes"][unscaled])
    else:                                       # a clipped box holds the visible part of its mask
        seen = ~np.isnan(from_masks[:, 0])
        assert (from_masks[seen, :2] >= out["boxes"][seen, :2] - 0.5 - 1e-9).all()
        assert (from_masks[seen, 2:] <= out["boxes"][seen, 2:] + 0.5 + 1e-9).all()


def test_mosaic_needs_all_or_none_of_the_targets_with_masks():
    pairs = [flat_pair(v, 16, [[0, 0, 4, 4]]) for v in (1, 2, 3, 4)]
    del pairs[2][1]["masks"]
    with pytest.raises(ValueError, match="masks"):
        mosaic(pairs, 16, (8, 8))


def test_mosaic_dataset_is_seeded_keeps_the_item_id_and_passes_items_through_at_p_zero():
    pairs = [flat_pair(v, 32, [[4, 4, 28, 28]]) for v in (10, 20, 30, 40, 50)]
    first, again = MosaicDataset(pairs, 32, p=1.0, seed=3), MosaicDataset(pairs, 32, p=1.0, seed=3)
    other = MosaicDataset(pairs, 32, p=1.0, seed=4)
    items = [first[i] for i in range(5)]
    for i, item in enumerate(items):
        assert_same(item, again[i])
        assert item[0].shape == (32, 32, 3) and item[1]["image_id"] == pairs[i][1]["image_id"]
        assert (item[0] == pairs[i][0][0, 0]).any()                          # the item's own image is in it
    assert any(not np.array_equal(item[0], other[i][0]) for i, item in enumerate(items))
    plain = MosaicDataset(pairs, 32, p=0.0, seed=3, transform=HorizontalFlip(p=1.0))
    assert_same(plain[1], HorizontalFlip(p=1.0)(*pairs[1]))


def test_record_pairs_give_targets_for_augmenting_and_feed_a_mosaic():
    rng = np.random.default_rng(0)
    records = [Record(i, f"{i}.png", 40, 30, boxes=[[5, 5, 25, 20], [30, 2, 36, 6]], labels=[1, 2],
                      difficult=[False, True], segmentations=[[[5.0, 5, 25, 5, 25, 20, 5, 20]], None],
                      captions=["a thing above a thing"], image=rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
               for i in range(4)]
    pairs = RecordPairs(Dataset(records, {1: "a", 2: "b"}), with_masks=True, box_fallback=True,
                        transform=Rotate90(k=1))
    image, target = pairs[1]
    assert image.shape == (40, 30, 3) and "captions" not in target and target["image_id"] == 1
    assert target["difficult"].tolist() == [False, True] and target["labels"].tolist() == [1, 2]
    np.testing.assert_array_equal(mask_boxes(target["masks"]), target["boxes"])
    np.testing.assert_array_equal(target["boxes"], [[5, 15, 20, 35], [2, 4, 6, 10]])
    items = MosaicDataset(RecordPairs(Dataset(records, {1: "a", 2: "b"})), 64, p=1.0, seed=0)
    image, target = items[2]
    assert image.shape == (64, 64, 3) and target["image_id"] == 2 and len(items) == 4
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 64)).all()
    assert len(target["difficult"]) == len(target["boxes"])


# ------------------------------------------------------------------------------------------------- options
def kinds(pipeline):
    return [type(step.transform) for step in pipeline.transforms]


SWITCHES = {"hflip": [HorizontalFlip], "vflip": [VerticalFlip], "rot90": [Rotate90], "crop": [RandomCrop],
            "scale_jitter": [ScaleJitter, FixedSizeCrop], "color_jitter": [ColorJitter]}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_build_augmentation_leaves_out_each_switched_off_transform(switch):
    everything = kinds(build_augmentation(TOP_DOWN_DEFAULTS, seed=0, size=32))
    assert everything == [RandomCrop, HorizontalFlip, VerticalFlip, Rotate90, ScaleJitter, FixedSizeCrop,
                          ColorJitter]
    off = replace(TOP_DOWN_DEFAULTS, **{switch: False if isinstance(getattr(TOP_DOWN_DEFAULTS, switch), bool) else 0.0})
    assert kinds(build_augmentation(off, seed=0, size=32)) == [k for k in everything if k not in SWITCHES[switch]]


def test_presets_and_options_say_what_they_switch_on():
    assert kinds(build_augmentation(WORLD_DEFAULTS)) == [HorizontalFlip] and WORLD_DEFAULTS.mosaic == 0
    assert USER_DATA_DEFAULTS == AugmentOptions() and not USER_DATA_DEFAULTS.vflip and not USER_DATA_DEFAULTS.rot90
    assert USER_DATA_DEFAULTS.mosaic > 0 and TOP_DOWN_DEFAULTS.vflip and TOP_DOWN_DEFAULTS.rot90
    assert kinds(build_augmentation(USER_DATA_DEFAULTS)) == [RandomCrop, HorizontalFlip, ScaleJitter, ColorJitter]
    assert all(f.metadata["help"] for f in fields(AugmentOptions))
    with pytest.raises(ValueError, match="mosaic"):
        AugmentOptions(mosaic=1.5)


def test_pipeline_transforms_draw_independently_and_repeat_with_a_seed():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)            # tells all four flips apart
    target = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}
    flips = replace(WORLD_DEFAULTS, vflip=True)
    seen = set()
    for seed in (None, 0):
        pipeline = build_augmentation(flips, seed=seed)
        outcomes = [pipeline(image, target)[0].tobytes() for _ in range(60)]
        seen.add(len(set(outcomes)))                     # both flips at once with p = 1/2 would give only 2
        again = build_augmentation(flips, seed=seed)
        assert outcomes == [again(image, target)[0].tobytes() for _ in range(60)]
    assert seen == {4}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(10, 60), width=st.integers(10, 60))
def test_a_sized_pipeline_gives_that_size_with_boxes_on_their_masks(seed, height, width):
    image, target = blob_scene(seed, height, width, shape="rectangle")
    out_image, out = build_augmentation(TOP_DOWN_DEFAULTS, seed=seed, size=(24, 32))(image, target)
    assert out_image.shape == (24, 32, 3) and out["masks"].shape == (len(out["boxes"]), 24, 32)
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= [32, 24, 32, 24]).all()
    from_masks = mask_boxes(out["masks"])
    seen = ~np.isnan(from_masks[:, 0])                   # shrinking can lose a thin mask, never its box's place
    np.testing.assert_allclose(from_masks[seen], out["boxes"][seen], atol=1.0)
