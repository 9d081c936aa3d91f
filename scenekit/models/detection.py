"""What every detector shares: its detections as COCO result records, and one evaluation of them.

A detector (R-CNN, Fast / Faster / Mask R-CNN, YOLO v1 / v2) predicts, per image, a dict of `boxes` [N, 4] xyxy
in pixels, `scores` [N], `labels` [N] (category ids) and, with a mask branch, `masks` [N, H, W]. Those leave the
library as COCO result records (`coco_records`: `image_id, category_id, bbox [x, y, w, h], score`, masks as
compressed RLE), so any COCO tool reads them, and every detector's `evaluate` scores them the same way
(`evaluate_detections`) under the same names (`DETECTION_METRICS`):

- AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100: COCO's box stats (Lin et al. 2014; `coco_evaluate`, each
  image's best 100 detections per category);
- mAP50: Pascal VOC's all-point mAP at IoU 0.5 (Everingham et al. 2010; `voc_evaluate`, every detection);
- with masks, `mask_` and the COCO names: the same stats of the masks (COCO segm).
"""

from __future__ import annotations

import numpy as np

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
DETECTION_METRICS = ("mAP50", *COCO_METRICS)
MASK_METRICS = tuple(f"mask_{name}" for name in COCO_METRICS)


def coco_records(found: dict, image_id: int | None = None, file_name: str | None = None) -> list[dict]:
    """One image's detections as COCO result records, in their order: `{image_id, file_name, category_id,
    score, bbox [x, y, w, h]}` and, where `found` has masks, `segmentation` (a compressed RLE).

    found: `boxes` [N, 4] xyxy, `scores` [N], `labels` [N] category ids, optionally `masks` [N, H, W] (tensors or
        arrays). Without `image_id` (or `file_name`) the records leave that key out: `scenekit evaluate` matches a
        record to its ground-truth image by either.
    """
    image = {} if image_id is None else {"image_id": int(image_id)}
    if file_name is not None:
        image["file_name"] = file_name
    rles = None
    if found.get("masks") is not None:
        from scenekit.masks import compress, rle_encode

        rles = [compress(rle_encode(mask)) for mask in np.asarray(found["masks"])]
    records = []
    for k, ((x1, y1, x2, y2), score, label) in enumerate(zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                               found["labels"].tolist())):
        record = {**image, "category_id": int(label), "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1]}
        if rles is not None:
            record["segmentation"] = rles[k]
        records.append(record)
    return records


def evaluate_detections(dataset, results: list[dict], *, masks: bool = False) -> dict[str, float]:
    """`DETECTION_METRICS` (and `MASK_METRICS` with `masks`) of COCO result records on `dataset`.

    VOC's mAP50 takes every result; COCO's stats each image's best 100 per category (its maxDets). A stat with
    nothing to measure (APs without small objects) is -1, as in pycocotools; without any result all are 0.
    """
    from scenekit.metrics.detection import coco_evaluate, voc_evaluate

    names = DETECTION_METRICS + (MASK_METRICS if masks else ())
    if not results:
        return dict.fromkeys(names, 0.0)
    metrics = {"mAP50": float(voc_evaluate(dataset, results)["mAP"])}
    boxes = coco_evaluate(dataset, results, "bbox")
    metrics.update({name: float(boxes[name]) for name in COCO_METRICS})
    if masks:
        segments = coco_evaluate(dataset, results, "segm")
        metrics.update({f"mask_{name}": float(segments[name]) for name in COCO_METRICS})
    return metrics
