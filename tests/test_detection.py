"""What every detector shares (scenekit/models/detection.py): one conversion of detections to COCO result records
and one evaluation, so every detector family's `evaluate` reports the same metric names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenekit.data.world import make_world
from scenekit.masks import rle_decode
from scenekit.metrics.detection import coco_evaluate, voc_evaluate
from scenekit.models.detection import (COCO_METRICS, DETECTION_METRICS, MASK_METRICS, coco_records,
                                       evaluate_detections)
from scenekit.models.registry import make_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# Tiny untrained networks at a 64 px input (R-CNN warps 24 px regions of the 64 px images).
TWO_STAGE = {"image_size": 64, "channels": (4, 8, 8), "extra_convs": 1, "hidden": 16, "flip": False}
DETECTORS = {
    "rcnn": {"image_size": 64, "input_size": 24, "channels": (4, 8), "hidden": 16, "max_proposals": 50},
    "fast-rcnn": {**TWO_STAGE, "max_proposals": 50},
    "faster-rcnn": TWO_STAGE,
    "mask-rcnn": {**TWO_STAGE, "mask_convs": 1, "mask_channels": 8},
    "yolo1": {"image_size": 64, "channels": [4, 8, 8, 8, 8], "hidden": 16, "grid": 2, "flip": False},
    "yolo2": {"image_size": 64, "channels": [4, 8, 8, 8, 8], "head_channels": 8, "anchors": "hand",
              "multi_scale": False, "flip": False},
}


def _metric_names(metrics: dict) -> set[str]:
    """The keys that are detection scores (not times or counts): COCO's and VOC's names, old names included."""
    return {key for key in metrics if key.startswith(("AP", "AR", "mAP", "mask_", "coco_"))}


@pytest.fixture(scope="module")
def world():
    return make_world(3, seed=5, image_size=64, min_objects=1, max_objects=3)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_family_reports_the_same_metric_names(name, world, tmp_path):
    options = dict(DETECTORS[name])
    if name == "rcnn":
        options["cache"] = str(tmp_path)
    recipe = make_recipe(name, world.categories, options)
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config).eval()
    metrics = recipe.evaluate(model, world, CPU)
    expected = set(DETECTION_METRICS) | (set(MASK_METRICS) if name == "mask-rcnn" else set())
    assert _metric_names(metrics) == expected
    assert recipe.best_metric in metrics and all(isinstance(metrics[key], float) for key in expected)


def test_coco_records_turn_xyxy_boxes_into_xywh_and_masks_into_rles():
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:20, 0:30] = 1
    found = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 6.0], [0.0, 10.0, 30.0, 20.0]]),
             "scores": torch.tensor([0.9, 0.25]), "labels": torch.tensor([2, 1]), "masks": torch.from_numpy(masks)}
    records = coco_records(found, 7, file_name="a/b.png")
    assert [{k: v for k, v in r.items() if k != "segmentation"} for r in records] == [
        {"image_id": 7, "file_name": "a/b.png", "category_id": 2, "score": pytest.approx(0.9),
         "bbox": [3.0, 2.0, 6.0, 4.0]},
        {"image_id": 7, "file_name": "a/b.png", "category_id": 1, "score": 0.25, "bbox": [0.0, 10.0, 30.0, 10.0]}]
    for record, mask in zip(records, masks):
        assert np.array_equal(rle_decode(record["segmentation"]), mask)
    boxes_only = {key: found[key] for key in ("boxes", "scores", "labels")}
    assert coco_records(boxes_only) == [{k: v for k, v in r.items() if k not in ("image_id", "file_name",
                                                                               "segmentation")} for r in records]
    assert coco_records({**boxes_only, "masks": None}, 7) == coco_records(boxes_only, 7)


def test_evaluation_is_voc_map50_and_coco_stats_of_the_records(world):
    results = []
    for record in world.records:
        boxes = torch.as_tensor(record.boxes, dtype=torch.float32) + 1.5            # near misses and hits
        found = {"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(boxes)),
                 "labels": torch.as_tensor(record.labels)}
        results += coco_records(found, record.image_id)
    metrics = evaluate_detections(world, results)
    stats = coco_evaluate(world, results)
    assert list(metrics) == list(DETECTION_METRICS)
    assert metrics["mAP50"] == voc_evaluate(world, results)["mAP"] > 0.5
    assert all(metrics[name] == stats[name] for name in COCO_METRICS)
    assert evaluate_detections(world, [], masks=True) == dict.fromkeys(DETECTION_METRICS + MASK_METRICS, 0.0)


def test_no_family_table_row_is_a_detector_without_the_shared_evaluation():
    """The families whose evaluate scores boxes are the ones this file checks (a new detector joins DETECTORS)."""
    from scenekit.models.registry import FAMILIES

    detectors = {name for name, family in FAMILIES.items()
                 if family.module.rsplit(".", 1)[1] in ("rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn", "yolo")}
    assert detectors == set(DETECTORS)
