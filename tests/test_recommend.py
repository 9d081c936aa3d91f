"""What the training set decides (scenekit.data.recommend): anchors that cover its boxes, priors, tiles,
detections and a schedule counted in steps; checked against independent references and the real photograph."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit.boxes import box_iou
from scenekit.data.recommend import FAMILIES, anchor_coverage, format_recommendation, recommend
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError

TREES = Path("/work/shared/realdata/aerial-trees")


def reference_coverage(boxes, sizes, ratios, iou=0.5) -> float:
    """Share of boxes with an anchor (area s^2, h / w = r) centred on the box at IoU >= iou, by box_iou."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64))                         # [N, 4]
    shapes = torch.tensor([[s / math.sqrt(r), s * math.sqrt(r)] for s in sizes for r in ratios])   # [A, 2] w, h
    centres = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2                             # [N, 1, 2]
    anchors = torch.cat([centres - shapes / 2, centres + shapes / 2], dim=2)            # [N, A, 4]
    n, a = anchors.shape[:2]
    own = box_iou(boxes, anchors.reshape(-1, 4)).view(n, n, a)[torch.arange(n), torch.arange(n)]   # [N, A]
    return float((own.max(dim=1).values >= iou).double().mean())


def scattered(rng, count, width, height, smallest, largest, aspect=(0.5, 2.0)):
    """`count` boxes with sqrt(area) in [smallest, largest] and h / w in `aspect`, inside the image."""
    side = np.exp(rng.uniform(np.log(smallest), np.log(largest), count))
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), count))
    w, h = side / np.sqrt(ratio), side * np.sqrt(ratio)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x, y, x + w, y + h], 1)


def synthetic(images=36, width=640, height=480, objects=20, smallest=6, largest=40, seed=0):
    rng = np.random.default_rng(seed)
    records = [Record(image_id=k + 1, file_name=f"{k}.jpg", width=width, height=height,
                      boxes=scattered(rng, objects, width, height, smallest, largest), labels=[1] * objects)
               for k in range(images)]
    return Dataset(records, {1: "thing"}, name="synthetic")


def input_boxes(dataset, rec):
    """The training boxes in network-input pixels: a whole image letterboxed into the input, a tile scaled."""
    out = []
    for record in dataset.records:
        tiled = max(record.width, record.height) > 1.5 * rec.tile
        out.append(record.boxes * (rec.scale * rec.input_size / rec.tile if tiled else
                                   rec.input_size / max(record.width, record.height)))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------- anchors
def test_anchor_coverage_is_the_best_iou_of_anchors_centred_on_each_box():
    rng = np.random.default_rng(3)
    boxes = scattered(rng, 200, 300, 300, 5, 120, aspect=(0.2, 5.0))
    for sizes, ratios in (((16, 32, 64), (0.5, 1, 2)), ((20, 46, 106), (1,)), ((8,), (0.25, 4))):
        assert anchor_coverage(boxes, sizes, ratios) == pytest.approx(reference_coverage(boxes, sizes, ratios))
    square = np.array([[0, 0, 32, 32], [100, 100, 164, 164]], dtype=float)      # sides 32 and 64
    assert anchor_coverage(square, [32], [1]) == 0.5                            # 64 vs 32: IoU 0.25
    assert anchor_coverage(square, [32, 64], [1]) == 1.0


def test_derived_anchors_cover_95_percent_of_small_synthetic_boxes():
    dataset = synthetic()
    rec = recommend(dataset)
    boxes = input_boxes(dataset, rec)
    assert rec.anchor_coverage >= 0.95
    assert reference_coverage(boxes, rec.anchor_sizes, rec.anchor_ratios) >= 0.95
    sides = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))
    assert min(rec.anchor_sizes) <= 1.5 * np.percentile(sides, 5)
    assert max(rec.anchor_sizes) >= np.percentile(sides, 95) / 1.5
    assert rec.world_anchor_coverage < 0.5                       # the world's 20..106 px anchors miss boxes this small
    assert any("far smaller than the world's anchors" in note for note in rec.notes)


@pytest.mark.skipif(not TREES.is_dir(), reason="the real aerial photograph is not on this machine")
def test_the_real_photographs_boxes_are_covered_and_it_is_tiled():
    from scenekit.data.sources import load_data

    dataset = load_data(f"voc:{TREES}")
    rec = recommend(dataset)
    print("\n" + format_recommendation(rec))
    # 2299 x 2472 px is more than 1.5 x any input the small backbones take: tiles at the photograph's resolution
    assert rec.tiled_images == 1 and rec.scale == 1 and rec.tile == rec.input_size == 512
    boxes = dataset.records[0].boxes
    assert reference_coverage(boxes, rec.anchor_sizes, rec.anchor_ratios) >= 0.95
    largest = (boxes[:, 2:] - boxes[:, :2]).max()
    assert rec.overlap >= largest                                # every crown lies whole inside some tile
    assert rec.max_detections_per_image >= 574 and rec.max_detections >= rec.objects_per_input
    assert any("maxDets" in note for note in rec.notes)


# ------------------------------------------------------------------------------------------------- the world
def test_the_world_gets_about_the_worlds_own_defaults():
    from scenekit.data.world import make_world
    from scenekit.models.yolo import yolo2_priors

    world = make_world(100, image_size=160)                      # the images the recipes train on
    rec = recommend(world)
    assert rec.input_size == rec.tile == 160 and rec.tiled_images == 0 and rec.scale == 1
    assert rec.anchor_ratios == [0.5, 1.0, 2.0] and 3 <= len(rec.anchor_sizes) <= 5
    assert 20 / 1.6 <= rec.anchor_sizes[0] <= 20 * 1.6 and 106 / 1.6 <= rec.anchor_sizes[-1] <= 106 * 1.6
    assert rec.max_detections == 100 and rec.rois_per_image == 64
    # no tiles: the priors are what the yolo2 recipe's own k-means finds on the same records
    np.testing.assert_allclose(rec.yolo_anchors, yolo2_priors(world, 5, 0), atol=1e-4)
    assert "anchors" not in rec.options["yolo2"]
    # at the CLI's 2,000 training images every recipe keeps its default schedule
    big = Dataset(world.records * 20, world.categories, name="world-2000")
    for name, schedule in recommend(big).schedule.items():
        assert (schedule["epochs"], schedule["batch_size"], schedule["warmup_steps"]) == \
            (FAMILIES[name].epochs, FAMILIES[name].batch_size, FAMILIES[name].warmup_steps)


def test_family_defaults_and_the_options_agree_with_the_recipes():
    from scenekit.models import fast_rcnn, faster_rcnn, mask_rcnn, yolo

    categories = {1: "thing"}
    recipes = {"faster-rcnn": faster_rcnn.recipe, "mask-rcnn": mask_rcnn.recipe, "fast-rcnn": fast_rcnn.recipe,
               "yolo2": lambda c, **o: yolo.recipe(c, version=2, **o),
               "yolo1": lambda c, **o: yolo.recipe(c, version=1, **o)}
    from scenekit.data import recommend as module
    assert module.WORLD_ANCHOR_SIZES == faster_rcnn.WORLD_ANCHOR_SIZES
    rec = recommend(synthetic(images=4, width=2000, height=1800, objects=30))   # tiled, so yolo2 gets priors
    assert rec.tiled_images == 4 and "anchors" in rec.options["yolo2"]
    for name, make in recipes.items():
        default = make(categories)
        assert (default.phases[0].epochs, default.phases[0].warmup_steps, default.batch_size) == \
            (FAMILIES[name].epochs, FAMILIES[name].warmup_steps, FAMILIES[name].batch_size)
        applied = make(categories, **rec.options[name])         # every recommended option is one the recipe takes
        for key, value in rec.options[name].items():
            assert applied.options[key] == value, (name, key)


# ------------------------------------------------------------------------------------------------- the rest
def test_kmeans_priors_are_sorted_by_area_and_fractions_of_the_input():
    rec = recommend(synthetic(images=5, width=1000, height=900, objects=40, smallest=8, largest=300))
    priors = np.array(rec.yolo_anchors)
    assert priors.shape == (5, 2) and (priors > 0).all() and (priors <= 1).all()
    assert (np.diff(priors.prod(axis=1)) >= 0).all()


def test_max_detections_hold_the_most_objects_of_an_image():
    dataset = synthetic(images=3, width=300, height=300, objects=10)
    rng = np.random.default_rng(1)
    dataset.records[1] = Record(image_id=99, file_name="busy.jpg", width=300, height=300,
                                boxes=scattered(rng, 180, 300, 300, 8, 20), labels=[1] * 180)
    rec = recommend(dataset)
    assert rec.objects_per_input == rec.objects_per_image == 180
    assert rec.max_detections >= 180 and rec.max_detections_per_image >= 180
    assert rec.rois_per_image >= 64
    assert recommend(synthetic(images=3, width=300, height=300, objects=10)).max_detections == 100


def test_a_36_image_set_gets_a_run_in_steps_with_a_shorter_warm_up():
    rec = recommend(synthetic(images=36), budget_s=None)                # rule 5 alone; the budget: rule 6
    assert rec.inputs_per_epoch == 36
    for name, schedule in rec.schedule.items():
        assert schedule["warmup_steps"] < schedule["steps"] and schedule["steps"] >= 1000
        assert schedule["steps_per_epoch"] == math.ceil(36 / schedule["batch_size"]) >= 4
        assert schedule["steps"] == schedule["epochs"] * schedule["steps_per_epoch"]
        assert rec.options[name]["epochs"] == schedule["epochs"] > FAMILIES[name].epochs


def test_tiles_of_a_large_photograph_hold_every_box_whole_in_some_tile():
    from scenekit.data.tiling import tile_windows

    dataset = synthetic(images=2, width=3000, height=2000, objects=60, smallest=10, largest=90)
    rec = recommend(dataset)
    assert rec.tiled_images == 2
    for record in dataset.records:
        windows = tile_windows(record.height, record.width, rec.tile, rec.overlap)
        inside = ((record.boxes[:, None, :2] >= windows[None, :, :2]) &
                  (record.boxes[:, None, 2:] <= windows[None, :, 2:])).all(axis=2)     # [N boxes, K tiles]
        assert inside.any(axis=1).all()
    assert rec.inputs_per_epoch == sum(len(tile_windows(r.height, r.width, rec.tile, rec.overlap))
                                       for r in dataset.records)


def test_the_recommendation_is_json_and_family_limits_it():
    rec = recommend(synthetic(images=6), family="yolo2")
    assert list(rec.schedule) == list(rec.options) == ["yolo2"]
    assert json.loads(json.dumps(asdict(rec)))["input_size"] == rec.input_size
    assert "--option image_size=" in format_recommendation(rec)


def test_data_without_boxes_or_an_unknown_family_is_one_error():
    empty = Dataset([Record(image_id=1, file_name="a.jpg", width=10, height=10)], {1: "a"}, name="empty")
    with pytest.raises(DataError, match="no boxes"):
        recommend(empty)
    with pytest.raises(DataError, match="detectors are") as caught:
        recommend(synthetic(images=2), family="resnet")
    assert caught.value.field == "family"


def test_data_check_prints_the_recommendation_after_the_statistics(tmp_path, capsys):
    from scenekit.cli import main

    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        Image.new("RGB", (200, 150)).save(folder / f"{stem}.jpg")
        objects = "".join(f"<object><name>nut</name><bndbox><xmin>{int(x1) + 1}</xmin><ymin>{int(y1) + 1}</ymin>"
                          f"<xmax>{int(x2)}</xmax><ymax>{int(y2)}</ymax></bndbox></object>"
                          for x1, y1, x2, y2 in scattered(rng, 8, 200, 150, 10, 30))
        (folder / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename><size><width>200</width>"
                                            f"<height>150</height></size>{objects}</annotation>")
    assert main(["data", "check", f"voc:{folder}"]) == 0
    text = capsys.readouterr().out
    assert text.index("boxes per class:") < text.index("recommendation from 2 images, 16 boxes")
    assert "--option anchor_sizes=" in text
    assert main(["data", "check", f"voc:{folder}", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["objects"] == 16 and stats["recommendation"]["input_size"] == 224   # 200 px, rounded up to 32


def test_the_cpu_budget_shortens_only_the_lengthening_and_counts_the_evaluations():
    from scenekit.data.recommend import CPU_BUDGET_S

    dataset, budget = synthetic(images=36), 300
    free, capped = recommend(dataset, budget_s=None), recommend(dataset, budget_s=budget)
    evaluated = recommend(dataset, budget_s=budget, eval_data=synthetic(images=30, seed=1))   # 30 inputs an epoch
    for name, schedule in capped.schedule.items():
        assert schedule["cpu_seconds"] <= budget or schedule["epochs"] == FAMILIES[name].epochs
        assert FAMILIES[name].epochs <= schedule["epochs"] <= free.schedule[name]["epochs"]
        assert schedule["capped"] == (schedule["epochs"] < free.schedule[name]["epochs"])
        assert evaluated.schedule[name]["epochs"] <= schedule["epochs"]
        assert recommend(dataset).schedule[name]["cpu_seconds"] <= CPU_BUDGET_S or not free.schedule[name]["capped"]
        assert capped.options[name]["epochs"] == schedule["epochs"]
    assert capped.schedule["faster-rcnn"]["capped"] and evaluated.schedule["faster-rcnn"]["epochs"] < \
        capped.schedule["faster-rcnn"]["epochs"]
