"""Detection and instance-segmentation metrics: COCO AP / AR (bbox and segm), Pascal VOC AP, precision-recall
curves.

- `reading`: COCO ground truth and result records (objects or JSON files) checked and read into arrays, with
  the box and segmentation checks of `scenekit.data.coco`;
- `coco`: COCO's evaluation, equal to pycocotools' (`coco_evaluate`, `coco_evaluation`, `format_coco_stats`)
  and the per-category precision-recall curves (`precision_recall_curves`; `scenekit.viz` draws them);
- `voc`: Pascal VOC's AP (`voc_evaluate`, `voc_ap`).

How a detector's predictions become result records and which of these numbers its `evaluate` reports:
`scenekit.models.detection`.
"""

from scenekit.metrics.detection.coco import (AREA_RANGES, IOU_THRESHOLDS, IOU_TYPES, MAX_DETS, RECALL_THRESHOLDS,
                                             STAT_NAMES, CocoEvaluation, PRCurve, coco_evaluate, coco_evaluation,
                                             format_coco_stats, precision_recall_curves)
from scenekit.metrics.detection.reading import dataset_to_coco_dict, parse_json, read_json
from scenekit.metrics.detection.voc import voc_ap, voc_evaluate

__all__ = ["AREA_RANGES", "IOU_THRESHOLDS", "IOU_TYPES", "MAX_DETS", "RECALL_THRESHOLDS", "STAT_NAMES",
           "CocoEvaluation", "PRCurve", "coco_evaluate", "coco_evaluation", "dataset_to_coco_dict",
           "format_coco_stats", "parse_json", "precision_recall_curves", "read_json", "voc_ap", "voc_evaluate"]


def __getattr__(name: str):
    """`plot_precision_recall` moved to `scenekit.viz` (pictures live there); the old name still answers."""
    if name == "plot_precision_recall":
        from scenekit.viz import plot_precision_recall

        return plot_precision_recall
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
