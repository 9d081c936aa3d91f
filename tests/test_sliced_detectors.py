"""Large photographs through the detectors' recipes (issue 17, "Real photographs"): an image larger than
`slice_factor` x the input is predicted by tiles merged as `scenekit.data.tiling` merges them, trains on random
windows, and the world's images (<= 320 px) are predicted whole as before; `max_detections` caps every
detector's answers and survives a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenekit.data.records import Dataset, Record
from scenekit.data.tiling import crop_target, merge_tiles, tile_windows
from scenekit.data.transforms import record_masks
from scenekit.data.world import CATEGORIES, make_world
from scenekit.engine.checkpoint import load_checkpoint, save_checkpoint
from scenekit.engine.evaluate import restore_model
from scenekit.errors import DataError
from scenekit.models import fast_rcnn, faster_rcnn, localizer, mask_rcnn, rcnn, registry, yolo

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
CLASS_IDS = sorted(CATEGORIES)
# Tiny untrained networks at a 64 px input: their many low-scoring boxes everywhere make a merge non-trivial.
TWO_STAGE = {"image_size": 64, "channels": (4, 8, 8), "extra_convs": 1, "hidden": 16, "flip": False}
YOLO2 = {"name": "yolo2", "image_size": 64, "channels": [4, 8, 8, 8, 8], "head_channels": 8, "anchors": "hand",
         "multi_scale": False, "flip": False, "score_threshold": 1e-6}


def _build(recipe):
    torch.manual_seed(0)
    return recipe.build_model(recipe.model_config).eval()


def _noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same(found, expected):
    assert set(found) == set(expected)
    for key in expected:
        assert torch.equal(torch.as_tensor(found[key]), torch.as_tensor(expected[key])), key


def _tiles_merged(image, size, detect, *, iou_threshold, max_detections):
    """What the issue asks a sliced prediction to equal: the model on each input-size tile (overlap a quarter
    of it), merged by `merge_tiles` with the core margin of `sliced_predict` (overlap / 8)."""
    overlap = size // 4
    windows = tile_windows(image.shape[0], image.shape[1], size, overlap)
    found = detect([np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows])
    return merge_tiles(found, windows, iou_threshold=iou_threshold, max_detections=max_detections,
                       margin=overlap / 8)


def _photo_dataset(photo, boxes, labels, *, world_image=None, segmentations=None):
    """A dataset of one in-memory photograph (and a world-size image after it, when given)."""
    records = [Record(1, "photo.png", photo.shape[1], photo.shape[0], boxes=boxes, labels=labels, image=photo,
                      segmentations=segmentations)]
    if world_image is not None:
        records.append(world_image)
    return Dataset(records, dict(CATEGORIES))


def _coordinate_image(height, width):
    """Every pixel names its position (R = x mod 256, G = y mod 256, B = 16 (x div 256) + y div 256)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, 16 * (xs // 256) + ys // 256], -1).astype(np.uint8)


def _origin(tensor):
    """(x0, y0) of a [3, h, w] float crop of a `_coordinate_image`, read off its top-left pixel."""
    r, g, b = (int(round(float(v) * 255)) for v in tensor[:, 0, 0])
    return r + 256 * (b // 16), g + 256 * (b % 16)


# ------------------------------------------------------------------------------------------------ sliced = tiles merged
def test_faster_rcnn_predicts_a_big_image_as_its_tiles_merged():
    recipe = faster_rcnn.recipe(CATEGORIES, **TWO_STAGE)
    model = _build(recipe)
    big = _noise(200, 230)                                            # 230 px > 2.5 x 64: sliced
    found = recipe.predict(model, [big], CPU)[0]
    expected = _tiles_merged(big, 64, lambda tiles: fast_rcnn.run_detector(model, tiles, CPU, CLASS_IDS)[0],
                             iou_threshold=model.config.nms_threshold, max_detections=100)
    assert len(found["scores"]) == 100           # an untrained head scores every class: the cap is reached
    _assert_same(found, expected)
    assert float(found["boxes"][:, 2].max()) > 200 and float(found["boxes"][:, 3].max()) > 170   # whole photo


def test_yolo2_predicts_a_big_image_as_its_tiles_merged():
    recipe = yolo.recipe(CATEGORIES, **YOLO2)
    model = _build(recipe)
    big = _noise(200, 230, seed=1)
    found = recipe.predict(model, [big], CPU)[0]
    expected = _tiles_merged(big, 64, lambda tiles: yolo.detect(model, tiles, CPU, CLASS_IDS, score_threshold=1e-6),
                             iou_threshold=0.45, max_detections=100)
    assert len(found["scores"]) == 100
    _assert_same(found, expected)


def test_mask_rcnn_pastes_into_the_photo_the_masks_of_the_tiles_it_keeps():
    recipe = mask_rcnn.recipe(CATEGORIES, **TWO_STAGE, mask_convs=1, mask_channels=8, max_detections=20)
    model = _build(recipe)
    big = _noise(170, 180, seed=2)
    found = recipe.predict(model, [big], CPU)[0]
    expected = _tiles_merged(big, 64, lambda tiles: fast_rcnn.run_detector(model, tiles, CPU, CLASS_IDS,
                                                                            max_detections=20)[0],
                             iou_threshold=model.config.nms_threshold, max_detections=20)
    assert found["masks"].shape == (20, 170, 180) and found["masks"].dtype == torch.uint8
    _assert_same(found, expected)


def test_fast_rcnn_searches_a_photo_once_and_gives_each_tile_the_proposals_in_it():
    recipe = fast_rcnn.recipe(CATEGORIES, **TWO_STAGE)
    model = _build(recipe)
    big = _noise(180, 200, seed=3)
    rng = np.random.default_rng(4)
    corner = rng.uniform(0, 170, (300, 2))
    proposals = np.concatenate([corner, corner + rng.uniform(4, 40, (300, 2))], 1).astype(np.float32)
    searched = []

    def search(image):                                   # a ProposalCache stand-in that counts its searches
        searched.append(image.shape)
        return proposals, 0.5

    seconds = {}
    found = fast_rcnn.detect_any_size(model, [big], CPU, CLASS_IDS, proposals=search, factor=2.5, seconds=seconds)
    assert searched == [big.shape] and seconds["proposals"] == 0.5           # one search, counted once
    windows = tile_windows(180, 200, 64, 16)
    given = iter(windows)

    def per_tile(image):
        return fast_rcnn.window_proposals(proposals, next(given)), 0.0

    expected = _tiles_merged(big, 64, lambda tiles: fast_rcnn.run_detector(model, tiles, CPU, CLASS_IDS,
                                                                            proposals=per_tile)[0],
                             iou_threshold=model.config.nms_threshold, max_detections=100)
    _assert_same(found[0], expected)


# ------------------------------------------------------------------------------------------------ the world
def test_world_images_are_predicted_whole_as_before():
    world = make_world(6, seed=3, min_objects=1)                      # own sizes, up to 320 px
    images = [record.image for record in world.records]
    assert max(max(image.shape[:2]) for image in images) > 240        # past tiling's 1.5 x 160
    two_stage = faster_rcnn.recipe(CATEGORIES, channels=(4, 8, 8), hidden=16)             # the 160 px input
    model = _build(two_stage)
    found = two_stage.predict(model, images, CPU)
    for got, want in zip(found, fast_rcnn.run_detector(model, images, CPU, CLASS_IDS)[0]):
        _assert_same(got, want)
    for name, size in (("yolo2", 160), ("yolo1", 128)):              # yolo1's input: the world's largest is 2.5 x
        one_stage = yolo.recipe(CATEGORIES, name=name, channels=[4, 8, 8, 8, 8], head_channels=8, hidden=16,
                                anchors="hand")
        model = _build(one_stage)
        assert model.config.image_size == size
        for got, want in zip(one_stage.predict(model, images, CPU),
                             yolo.detect(model, images, CPU, CLASS_IDS, **{k: one_stage.options[k] for k in (
                                 "score_threshold", "nms_threshold", "max_detections")})):
            _assert_same(got, want)


def test_slice_factor_sets_where_slicing_starts_and_zero_never_slices():
    image = _noise(100, 160, seed=5)                                  # exactly 2.5 x 64
    for options, sliced in (({}, False), ({"slice_factor": 1.5}, True), ({"slice_factor": 0}, False)):
        recipe = yolo.recipe(CATEGORIES, **YOLO2, **options)
        model = _build(recipe)
        whole = yolo.detect(model, [image], CPU, CLASS_IDS, score_threshold=1e-6)[0]
        tiles = _tiles_merged(image, 64, lambda t: yolo.detect(model, t, CPU, CLASS_IDS, score_threshold=1e-6),
                              iou_threshold=0.45, max_detections=100)
        _assert_same(recipe.predict(model, [image], CPU)[0], tiles if sliced else whole)
    bigger = _noise(100, 161, seed=5)                                 # just past 2.5 x: sliced by default
    recipe = yolo.recipe(CATEGORIES, **YOLO2)
    model = _build(recipe)
    _assert_same(recipe.predict(model, [bigger], CPU)[0],
                 _tiles_merged(bigger, 64, lambda t: yolo.detect(model, t, CPU, CLASS_IDS, score_threshold=1e-6),
                               iou_threshold=0.45, max_detections=100))


# ------------------------------------------------------------------------------------------------ max_detections
def test_max_detections_caps_and_raises_the_detections_of_every_detector_family():
    image = _noise(120, 100, seed=6)                                  # fitted whole
    for module, options in ((faster_rcnn, TWO_STAGE), (yolo, YOLO2)):
        counts = {}
        for limit in (5, 100, 300):
            recipe = module.recipe(CATEGORIES, **options, max_detections=limit)
            counts[limit] = len(recipe.predict(_build(recipe), [image], CPU)[0]["scores"])
        assert counts[5] == 5 and counts[100] == 100 and counts[300] > 100, (module.__name__, counts)
    big = _noise(200, 230, seed=6)                                    # sliced: the cap is on the merged photo
    recipe = faster_rcnn.recipe(CATEGORIES, **TWO_STAGE, max_detections=300)
    assert len(recipe.predict(_build(recipe), [big], CPU)[0]["scores"]) == 300
    assert localizer.recipe(CATEGORIES).options["max_detections"] == 5          # ILSVRC's five guesses
    assert rcnn.recipe(CATEGORIES, max_detections=7).model_config["detections_per_image"] == 7


def test_evaluation_scores_every_detection_up_to_max_detections_and_counts_the_capped_images():
    from scenekit.metrics.detection import voc_evaluate
    from scenekit.models.detection import coco_records

    world = make_world(2, seed=4, image_size=64, min_objects=1)
    images = [record.image for record in world.records]
    for module, options in ((faster_rcnn, TWO_STAGE), (yolo, YOLO2)):
        capped = module.recipe(CATEGORIES, **options)                  # max_detections 100
        metrics = capped.evaluate(_build(capped), world, CPU)
        assert metrics["images_at_max_detections"] == 2              # 100 each: objects may have been cut
        recipe = module.recipe(CATEGORIES, **options, max_detections=300)
        model = _build(recipe)
        metrics = recipe.evaluate(model, world, CPU)
        results = [r for record, found in zip(world.records, recipe.predict(model, images, CPU))
                   for r in coco_records(found, record.image_id)]
        assert len(results) > 200 and metrics["images_at_max_detections"] < 2
        assert metrics["mAP50"] == voc_evaluate(world, results)["mAP"]        # VOC's mAP of all of them


@pytest.mark.parametrize("module, name, options", [(faster_rcnn, "faster-rcnn", TWO_STAGE),
                                                    (yolo, "yolo2", YOLO2)])
def test_options_survive_a_checkpoint_and_max_detections_can_be_overridden_for_one_call(tmp_path, module, name,
                                                                                        options):
    options = {k: v for k, v in options.items() if k != "name"}
    recipe = module.recipe(CATEGORIES, name=name, **options, max_detections=300, slice_factor=0)
    model = _build(recipe)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model_name": name, "options": recipe.options, "categories": recipe.categories,
                           "model_config": recipe.model_config, "model": model.state_dict()})
    checkpoint = load_checkpoint(path)
    restored = registry.make_recipe(name, checkpoint["categories"], stored=checkpoint["options"], source=str(path))
    assert restored.options["max_detections"] == 300 and restored.options["slice_factor"] == 0
    model = restore_model(restored, checkpoint, CPU)
    big = _noise(200, 230, seed=7)                                    # slice_factor 0: fitted whole
    found = restored.predict(model, [big], CPU)[0]
    assert len(found["scores"]) > 100
    if module is faster_rcnn:
        _assert_same(found, fast_rcnn.run_detector(model, [big], CPU, CLASS_IDS, max_detections=300)[0][0])
    # What `scenekit predict/evaluate --max-detections N` does: the stored options, one overridden.
    once = registry.make_recipe(name, checkpoint["categories"], {"max_detections": 7}, stored=checkpoint["options"])
    assert len(once.predict(model, [big], CPU)[0]["scores"]) == 7 and once.options["slice_factor"] == 0


def test_bad_slice_factor_or_max_detections_is_one_error_naming_the_option():
    for module, options in ((faster_rcnn, {}), (mask_rcnn, {}), (fast_rcnn, {}), (yolo, {"name": "yolo2"})):
        with pytest.raises(DataError, match="slice_factor") as error:
            module.recipe(CATEGORIES, **options, slice_factor=0.5)
        assert error.value.field == "slice_factor"
        with pytest.raises(DataError, match="max_detections"):
            module.recipe(CATEGORIES, **options, max_detections=0)
    for module in (localizer, rcnn):
        with pytest.raises(DataError, match="max_detections"):
            module.recipe(CATEGORIES, max_detections=-1)


# ------------------------------------------------------------------------------------------------ training windows
def _photo_and_world():
    photo = _coordinate_image(300, 420)
    boxes = np.array([[10, 10, 40, 50], [100, 80, 150, 120], [300, 200, 330, 260], [200, 20, 260, 90]], float)
    world = make_world(1, seed=5, image_size=64, min_objects=2).records[0]
    return photo, boxes, world


def test_training_cuts_input_size_windows_from_big_photos_and_leaves_world_images_alone():
    photo, boxes, world = _photo_and_world()
    data = _photo_dataset(photo, boxes, [1, 2, 3, 4], world_image=world)
    recipe = faster_rcnn.recipe(CATEGORIES, **TWO_STAGE)
    train, test = recipe.make_dataset(data, True), recipe.make_dataset(data, False)
    for _ in range(5):
        image, target = train[0]
        assert image.shape == (3, 64, 64) and target["size"].tolist() == [64, 64]      # the photo's own pixels
        x0, y0 = _origin(image)
        cut = crop_target({"boxes": boxes, "labels": np.arange(1, 5)}, (x0, y0, x0 + 64, y0 + 64))
        wide = (cut["boxes"][:, 2:] - cut["boxes"][:, :2] >= 1).all(1)
        assert np.allclose(target["boxes"].numpy(), cut["boxes"][wide])
        assert target["labels"].tolist() == cut["labels"][wide].tolist()
    image, target = train[1]                                          # a world image: as without the window
    want_image, want_target = test[1]
    assert torch.equal(image, want_image)
    assert torch.equal(target["boxes"], want_target["boxes"]) and torch.equal(target["labels"], want_target["labels"])

    recipe = yolo.recipe(CATEGORIES, **YOLO2)
    train, test = recipe.make_dataset(data, True), recipe.make_dataset(data, False)
    image, target = train[0]
    assert image.shape == (3, 64, 64)
    x0, y0 = _origin(image)                                           # a 64 px window letterboxed at scale 1
    cut = crop_target({"boxes": boxes}, (x0, y0, x0 + 64, y0 + 64))
    assert np.allclose(target["boxes"].numpy(), cut["boxes"])
    assert torch.equal(train[1][0], test[1][0]) and torch.equal(train[1][1]["boxes"], test[1][1]["boxes"])


def test_a_training_window_takes_the_photos_proposals_and_masks_that_lie_in_it():
    photo, boxes, _ = _photo_and_world()
    polygons = [[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in boxes.tolist()]
    data = _photo_dataset(photo, boxes, [1, 2, 3, 4], segmentations=polygons)
    proposals = np.concatenate([boxes, boxes + 5, [[0, 0, 420, 300]]]).astype(np.float32)
    searched = []

    def search(image):
        searched.append(image.shape)
        return proposals, 0.1

    window = fast_rcnn.RandomWindow(64, factor=2.5, object_bias=1.0, seed=0)
    items = fast_rcnn.DetectionData(data, CLASS_IDS, 64, with_masks=True, proposals=search, window=window)
    full_masks = record_masks(data.records[0])
    for _ in range(4):
        image, target = items[0]
        x0, y0 = _origin(image)
        window_box = (x0, y0, x0 + 64, y0 + 64)
        assert torch.equal(target["proposals"], torch.from_numpy(fast_rcnn.window_proposals(proposals, window_box)))
        cut = crop_target({"boxes": boxes, "ann_ids": np.arange(4)}, window_box)
        kept = cut["ann_ids"][(cut["boxes"][:, 2:] - cut["boxes"][:, :2] >= 1).all(1)]
        assert len(kept) == len(target["boxes"]) >= 1                 # object_bias=1: a window around an object
        assert torch.equal(target["masks"], torch.from_numpy(full_masks[kept][:, y0:y0 + 64, x0:x0 + 64]))
    assert searched == [photo.shape] * 4                             # the whole photograph, never the window



def test_predict_and_evaluate_take_max_detections_on_the_command_line(tmp_path, untrained_checkpoint):
    """`--max-detections N` overrides the checkpoint's option for one call; a family without it is one line."""
    import json

    from PIL import Image

    from scenekit import cli
    from scenekit.data.world import CATEGORIES, make_world

    checkpoint = untrained_checkpoint(tmp_path / "y.pt", "yolo2", dict(CATEGORIES),
                                      {"image_size": 64, "channels": [4, 8, 8, 16, 16], "head_channels": 16,
                                       "score_threshold": 0.0})
    image = tmp_path / "scene.png"
    Image.fromarray(make_world(1, seed=0, split="test", image_size=64).records[0].image).save(image)
    counts = {}
    for limit in ("7", "150"):
        assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / limit),
                         "--max-detections", limit]) == 0
        counts[limit] = len(json.loads((tmp_path / limit / "predictions.json").read_text()))
    assert counts["7"] == 7 and counts["150"] > 100
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "z"),
                     "--max-detections", "0"]) == 2
