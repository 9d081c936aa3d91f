"""Transforms keep boxes, masks and captions consistent; the detection Dataset, collate and multi-scale batches."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from scenekit.data.records import Dataset, Question, Record
from scenekit.data.transforms import (ColorJitter, Compose, DetectionDataset, HorizontalFlip, Letterbox,
                                      MultiScaleBatchSampler, RandomCrop, Resize, collate_detection, flip_text,
                                      letterbox_image, load_image, multiscale_sizes, record_masks)
from scenekit.errors import DataError


def coordinate_image(height, width):
    """Pixel (y, x) holds (x, y, 7): where a crop came from can be read off its pixels."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)


def rectangle_target(boxes, height, width):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[k, y1:y2, x1:x2] = 1
    return {"boxes": boxes, "labels": np.arange(1, len(boxes) + 1), "masks": masks,
            "iscrowd": np.zeros(len(boxes), bool), "semantic": masks.max(0, initial=0).astype(np.int64)}


def mask_boxes(masks):
    out = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [np.nan] * 4)
    return np.array(out, dtype=np.float64).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------- captions
@pytest.mark.parametrize("text, flipped", [
    ("a star to the left of a ring", "a star to the right of a ring"),
    ("Left circle, RIGHT square; leftmost star", "Right circle, LEFT square; rightmost star"),
    ("a bright star, alright", "a bright star, alright"),
    ("the cross on the right", "the cross on the left"),
])
def test_flip_text_swaps_left_and_right_words_only(text, flipped):
    assert flip_text(text) == flipped


def test_horizontal_flip_mirrors_boxes_masks_and_captions():
    image = coordinate_image(10, 20)
    target = rectangle_target([[2, 1, 5, 4]], 10, 20)
    target["captions"] = ["a star to the left of a ring"]
    target["questions"] = [Question("where is the star?", ["on the left", "on the right"], 0, "position")]
    out_image, out = HorizontalFlip(p=1.0)(image, target)
    np.testing.assert_array_equal(out["boxes"], [[15, 1, 18, 4]])            # x1' = W - x2, x2' = W - x1
    np.testing.assert_array_equal(mask_boxes(out["masks"]), out["boxes"])
    np.testing.assert_array_equal(out_image[:, 0], image[:, -1])
    assert out["captions"] == ["a star to the right of a ring"]
    question = out["questions"][0]
    assert question.choices[question.answer] == "on the right"
    assert HorizontalFlip(p=0.0)(image, target)[1] is target


# ------------------------------------------------------------------------------------------------- geometry
def test_resize_scales_boxes_by_each_axis_factor():
    image, target = coordinate_image(40, 80), rectangle_target([[8, 4, 40, 20]], 40, 80)
    out_image, out = Resize((20, 160))(image, target)
    assert out_image.shape == (20, 160, 3) and out["masks"].shape == (1, 20, 160)
    np.testing.assert_allclose(out["boxes"], [[16, 2, 80, 10]])
    new_image, _ = Resize(600, max_size=1000)(np.zeros((300, 900, 3), np.uint8), {"boxes": np.zeros((0, 4))})
    assert new_image.shape == (333, 1000, 3)                      # the longer side caps the scale


def test_letterbox_pads_centred_and_records_how_to_undo_it():
    image, target = coordinate_image(50, 100), rectangle_target([[10, 10, 30, 20]], 50, 100)
    out_image, out = Letterbox(64, fill=114)(image, target)
    assert out_image.shape == (64, 64, 3)
    scale_x, scale_y, left, top = out["letterbox"]
    assert (left, top) == (0, 16) and scale_x == pytest.approx(0.64) and scale_y == pytest.approx(0.64)
    np.testing.assert_allclose(out["boxes"], [[6.4, 22.4, 19.2, 28.8]])
    assert (out_image[:16] == 114).all() and (out_image[-16:] == 114).all()
    undone = (out["boxes"] - [left, top, left, top]) / [scale_x, scale_y, scale_x, scale_y]
    np.testing.assert_allclose(undone, target["boxes"])


def test_letterbox_image_is_the_image_half_of_letterbox():
    image = coordinate_image(100, 200)
    canvas, undo = letterbox_image(image, 64)
    # scale min(64 / 100, 64 / 200) = 0.32: 200 x 100 -> 64 x 32, centred vertically (top = (64 - 32) // 2)
    np.testing.assert_allclose(undo, [0.32, 0.32, 0, 16])
    assert canvas.shape == (64, 64, 3) and (canvas[:16] == 114).all() and (canvas[48:] == 114).all()
    same, target = Letterbox(64)(image, {"boxes": np.zeros((0, 4))})
    assert np.array_equal(canvas, same) and np.array_equal(undo, target["letterbox"])
    tall, tall_undo = letterbox_image(coordinate_image(64, 16), (32, 40), fill=0)
    np.testing.assert_allclose(tall_undo, [0.5, 0.5, 16, 0])     # 16 x 64 -> 8 x 32, centred horizontally
    assert (tall[:, :16] == 0).all() and (tall[:, 24:] == 0).all()


def test_random_crop_keeps_exactly_the_boxes_with_half_their_area_inside():
    rng = np.random.default_rng(0)
    image = coordinate_image(120, 160)
    boxes = np.concatenate([rng.uniform(0, 120, (30, 2)), rng.uniform(0, 120, (30, 2))], 1)
    boxes = np.stack([boxes[:, [0, 2]].min(1), boxes[:, [1, 3]].min(1) * 0.9,
                      boxes[:, [0, 2]].max(1) + 1, boxes[:, [1, 3]].max(1) * 0.9 + 1], 1)
    target = {"boxes": boxes, "labels": np.arange(30)}
    crop = RandomCrop(min_overlap=0.5, scale=(0.3, 0.7), seed=1)
    for _ in range(20):
        out_image, out = crop(image, target)
        x0, y0 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])           # read the crop's origin
        h, w = out_image.shape[:2]
        inter_w = np.clip(np.minimum(boxes[:, 2], x0 + w) - np.maximum(boxes[:, 0], x0), 0, None)
        inter_h = np.clip(np.minimum(boxes[:, 3], y0 + h) - np.maximum(boxes[:, 1], y0), 0, None)
        fraction = inter_w * inter_h / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert out["labels"].tolist() == np.flatnonzero(fraction >= 0.5).tolist()
        expected = np.clip(boxes[fraction >= 0.5] - [x0, y0, x0, y0], 0, [w, h, w, h])
        np.testing.assert_allclose(out["boxes"], expected)


def test_random_crop_is_reproducible_with_a_seed():
    image, target = coordinate_image(60, 60), rectangle_target([[10, 10, 40, 40]], 60, 60)
    first = RandomCrop(seed=5)(image, target)[0]
    assert np.array_equal(first, RandomCrop(seed=5)(image, target)[0])


# ------------------------------------------------------------------------------------------------- properties
@st.composite
def scenes(draw):
    height, width = draw(st.integers(8, 48)), draw(st.integers(8, 48))
    n = draw(st.integers(0, 4))
    boxes = []
    for _ in range(n):
        x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        boxes.append([x1, y1, draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))])
    return height, width, boxes


TRANSFORMS = {
    "flip": lambda seed: HorizontalFlip(p=1.0),
    "resize": lambda seed: Resize((int(np.random.default_rng(seed).integers(8, 64)),
                                   int(np.random.default_rng(seed + 1).integers(8, 64)))),
    "resize_short": lambda seed: Resize(int(np.random.default_rng(seed).integers(8, 64)), max_size=70),
    "letterbox": lambda seed: Letterbox(int(np.random.default_rng(seed).integers(8, 64))),
    "crop": lambda seed: RandomCrop(scale=(0.2, 1.0), seed=seed),
    "jitter": lambda seed: ColorJitter(0.5, 0.5, 0.5, 0.1, seed=seed),
    "chain": lambda seed: Compose([RandomCrop(seed=seed), HorizontalFlip(seed=seed), Letterbox(40)]),
}


@settings(max_examples=80, deadline=None)
@given(scene=scenes(), name=st.sampled_from(sorted(TRANSFORMS)), seed=st.integers(0, 1000))
def test_transforms_keep_boxes_inside_the_image_and_in_agreement_with_masks(scene, name, seed):
    height, width, boxes = scene
    target = rectangle_target(boxes, height, width)
    image, out = TRANSFORMS[name](seed)(coordinate_image(height, width), target)
    out_h, out_w = image.shape[:2]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert out["masks"].shape == (len(out["boxes"]), out_h, out_w) and out["semantic"].shape == (out_h, out_w)
    assert len(out["labels"]) == len(out["boxes"]) == len(out["iscrowd"])
    if len(out["boxes"]):
        assert (out["boxes"] >= 0).all() and (out["boxes"][:, [0, 2]] <= out_w).all()
        assert (out["boxes"][:, [1, 3]] <= out_h).all()
        assert (out["boxes"][:, 2:] >= out["boxes"][:, :2]).all()
        from_masks = mask_boxes(out["masks"])
        visible = ~np.isnan(from_masks[:, 0])            # a mask can vanish when shrunk below a pixel
        assert visible.all() or name in ("resize", "resize_short", "letterbox", "chain")
        np.testing.assert_allclose(from_masks[visible], out["boxes"][visible], atol=1.0)


@settings(max_examples=30, deadline=None)
@given(grey=st.integers(0, 255), seed=st.integers(0, 100))
def test_colour_jitter_leaves_grey_images_grey_and_targets_untouched(grey, seed):
    image = np.full((6, 5, 3), grey, dtype=np.uint8)
    target = {"boxes": np.array([[1.0, 1, 3, 3]]), "captions": ["a red star"]}
    out, out_target = ColorJitter(brightness=0, contrast=0.6, saturation=0.6, hue=0.3, seed=seed)(image, target)
    np.testing.assert_allclose(out.astype(int), grey, atol=1)    # no contrast, saturation or hue in flat grey
    assert out_target is target
    bright, _ = ColorJitter(brightness=0.5, contrast=0, saturation=0, seed=seed)(np.full((2, 2, 3), 100, np.uint8), {})
    assert 50 <= bright[0, 0, 0] <= 150 and (bright == bright[0, 0, 0]).all()


# ------------------------------------------------------------------------------------------------- dataset
def _world_like(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    polygon = [[5.0, 5.0, 25.0, 5.0, 25.0, 20.0, 5.0, 20.0]]
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 6), np.uint8), ((2, 24), (30, 4)))))
    rle = {"size": [30, 40], "counts": rle["counts"].decode()}
    files = Record(1, "a.png", 40, 30, boxes=[[5, 5, 25, 20], [30, 2, 36, 6]], labels=[3, 1],
                   segmentations=[polygon, rle], captions=["a thing on the left"])
    memory = Record(2, "b.png", 24, 16, boxes=[[0, 0, 8, 8]], labels=[2], segmentations=[None],
                    image=rng.integers(0, 255, (16, 24, 3), dtype=np.uint8),
                    semantic=np.pad(np.full((8, 8), 2), ((0, 8), (0, 16))))
    return Dataset([files, memory], {1: "a", 2: "b", 3: "c"}, image_root=tmp_path), image, polygon


def test_record_masks_decode_polygons_and_rle_like_pycocotools(tmp_path):
    dataset, _, polygon = _world_like(tmp_path)
    masks = record_masks(dataset.records[0])
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 30, 40)))
    np.testing.assert_array_equal(masks[0], reference)
    np.testing.assert_array_equal(mask_boxes(masks[1:]), [[30, 2, 36, 6]])
    with pytest.raises(DataError, match="no mask") as caught:
        record_masks(dataset.records[1])
    assert caught.value.field == "segmentations[0]"
    np.testing.assert_array_equal(mask_boxes(record_masks(dataset.records[1], box_fallback=True)), [[0, 0, 8, 8]])


def test_load_image_reads_files_and_names_missing_or_corrupt_ones(tmp_path):
    dataset, image, _ = _world_like(tmp_path)
    np.testing.assert_array_equal(load_image(dataset, dataset.records[0]), image)
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="PIL cannot decode") as caught:
        load_image(dataset, dataset.records[0])
    assert caught.value.record == "image id 1" and caught.value.file.endswith("a.png")
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match="not found"):
        load_image(dataset, dataset.records[0])


def test_detection_dataset_items_follow_the_contract(tmp_path):
    dataset, image, _ = _world_like(tmp_path)
    items = DetectionDataset(dataset, transform=HorizontalFlip(p=1.0), with_masks=False)
    pixels, target = items[0]
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 30, 40) and 0 <= pixels.min() <= pixels.max() <= 1
    torch.testing.assert_close(pixels, torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1).float() / 255)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[15, 5, 35, 20], [4, 2, 10, 6]] and target["image_id"] == 1
    assert target["captions"] == ["a thing on the right"] and "masks" not in target
    _, second = items[1]
    assert second["semantic"].dtype == torch.int64 and second["semantic"][0, -1] == 2     # flipped map
    with_masks = DetectionDataset(Dataset(dataset.records[:1], dataset.categories, tmp_path), with_masks=True)
    assert with_masks[0][1]["masks"].shape == (2, 30, 40) and with_masks[0][1]["masks"].dtype == torch.uint8


def test_collate_stacks_equal_sizes_and_lists_different_ones(tmp_path):
    dataset, _, _ = _world_like(tmp_path)
    items = DetectionDataset(dataset)
    images, targets = collate_detection([items[0], items[1]])
    assert isinstance(images, list) and [t["image_id"] for t in targets] == [1, 2]
    images, targets = collate_detection([items[(0, 32)], items[(1, 32)]])
    assert images.shape == (2, 3, 32, 32) and len(targets) == 2


def test_multiscale_batches_share_one_size_that_changes_every_k_batches(tmp_path):
    sampler = MultiScaleBatchSampler(103, batch_size=4, sizes=multiscale_sizes(), every=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 26
    assert sorted(i for batch in batches for i, _ in batch) == list(range(103))
    sizes = [{s for _, s in batch} for batch in batches]
    assert all(len(s) == 1 for s in sizes)
    sizes = [s.pop() for s in sizes]
    assert all(s in range(320, 609, 32) for s in sizes)
    assert all(sizes[k] == sizes[k - k % 3] for k in range(len(sizes)))
    assert len(set(sizes)) > 1
    sampler.set_epoch(1)
    assert [b[0][0] for b in sampler] != [b[0][0] for b in batches]


def test_multiscale_sampler_drives_a_dataloader(tmp_path):
    dataset, _, _ = _world_like(tmp_path)
    sampler = MultiScaleBatchSampler(2, batch_size=2, sizes=[32, 64], every=1, seed=3)
    loader = torch.utils.data.DataLoader(DetectionDataset(dataset), batch_sampler=sampler,
                                         collate_fn=collate_detection)
    (images, targets), = list(loader)
    size = list(sampler)[0][0][1]
    assert images.shape == (2, 3, size, size)
