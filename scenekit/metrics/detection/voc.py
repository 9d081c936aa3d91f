"""Pascal VOC detection AP (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge",
sec. 4.2; the devkit's `VOCevaldet.m`).

Detections of a class sorted by confidence; each is matched to the gt of largest overlap in its
image; overlap >= 0.5 with a not yet detected gt is a TP, with an already detected one a FP (duplicate), with a
`difficult` gt neither; AP is the VOC2007 11-point interpolated precision or the VOC2010+ area under the
monotone precision envelope. Boxes are continuous (`x2 - x1` wide) unless `plus_one=True`, which uses the
devkit's inclusive pixel convention (`x2 - x1 + 1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scenekit.errors import DataError
from scenekit.metrics.detection.coco import pair_indices
from scenekit.metrics.detection.reading import gc_paused, load_ground_truth, load_results


def _voc_match(dt_boxes, g_start, g_count, gt_boxes, gt_difficult, iou_threshold, one):
    """VOCevaldet.m's loop over detections in decreasing confidence: 1 TP, 0 FP, 2 ignored (difficult).

    Each detection's best gt (largest overlap among the gts of its image and class, the first of equal ones)
    does not depend on the other detections; only whether it was already detected does. So the overlaps of
    all (detection, gt) pairs are computed at once, and of the detections whose best gt is a regular one with
    overlap >= the threshold, the first (most confident) of each gt is its TP, the later ones duplicates (FP).
    """
    num_d = len(dt_boxes)
    offset, pair_d, pair_g = pair_indices(np.arange(num_d), np.ones(num_d, np.int64), g_start, g_count)
    bb, gb = dt_boxes[pair_d].T, gt_boxes[pair_g].T
    iw = np.minimum(bb[2], gb[2]) - np.maximum(bb[0], gb[0]) + one
    ih = np.minimum(bb[3], gb[3]) - np.maximum(bb[1], gb[1]) + one
    ua = (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one) + (gb[2] - gb[0] + one) * (gb[3] - gb[1] + one) - iw * ih
    overlapping = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = np.where(overlapping, iw * ih / np.where(overlapping, ua, 1.0), -np.inf)    # [P]
    codes = np.zeros(num_d, np.int8)
    with_gt = np.flatnonzero(g_count > 0)
    if len(with_gt) == 0:
        return codes
    first_pair = offset[with_gt]
    best = np.maximum.reduceat(overlap, first_pair)                                    # [D'] per detection
    pair_index = np.where(overlap == np.repeat(best, g_count[with_gt]), np.arange(len(overlap)), len(overlap))
    best_gt = pair_g[np.minimum.reduceat(pair_index, first_pair)]                       # the first of equal ones
    hit = best >= iou_threshold
    difficult = hit & gt_difficult[best_gt]
    codes[with_gt[difficult]] = 2
    regular = np.flatnonzero(hit & ~difficult)
    _, first = np.unique(best_gt[regular], return_index=True)           # the most confident detection of each gt
    codes[with_gt[regular[first]]] = 1
    return codes


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
    """AP from a recall/precision curve: VOC2007's 11-point interpolation or VOC2010+'s area under the envelope.

    11-point: mean over r in {0, 0.1, ..., 1} of max precision at recall >= r (Everingham et al. 2010, eq. 1).
    All-point: sum over recall steps of the step width times the envelope precision (VOC2010+ devkit).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            above = recall >= threshold
            ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]                     # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class _VocGroundTruth:
    image_ids: np.ndarray            # [I] sorted
    file_names: list                 # [I]
    category_ids: np.ndarray         # [C] sorted
    ann_image: np.ndarray            # [N]
    ann_category: np.ndarray         # [N]
    boxes: np.ndarray                # [N, 4] xyxy
    difficult: np.ndarray            # [N] bool: difficult or crowd, ignored


def _voc_ground_truth(gt) -> _VocGroundTruth:
    """A Dataset (boxes used as stored) or a COCO instances dict / path (xywh -> xyxy) as VOC arrays."""
    from scenekit.data.records import Dataset

    if isinstance(gt, Dataset):
        def joined(values, empty):
            return np.concatenate(values) if values else empty

        records = gt.records
        names = {int(r.image_id): r.file_name for r in records}
        image_ids = np.array(sorted(names), np.int64)
        return _VocGroundTruth(
            image_ids, [names[i] for i in image_ids.tolist()],
            np.array(sorted(gt.categories), np.int64),
            joined([np.full(r.num_objects, r.image_id, np.int64) for r in records], np.zeros(0, np.int64)),
            joined([r.labels for r in records], np.zeros(0, np.int64)),
            joined([r.boxes for r in records], np.zeros((0, 4))),
            joined([r.difficult | r.iscrowd for r in records], np.zeros(0, bool)))
    ground = load_ground_truth(gt, "bbox")
    xyxy = ground.boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    return _VocGroundTruth(ground.image_ids, ground.file_names, ground.category_ids, ground.ann_image,
                           ground.ann_category, xyxy, ground.difficult | ground.iscrowd)


@gc_paused()
def voc_evaluate(gt, results, iou_threshold: float = 0.5, use_07_metric: bool = False, *,
                 plus_one: bool = False) -> dict:
    """Pascal VOC detection AP per category and their mean: `{"mAP": float, "AP": {category_id: ap}}`.

    gt: a `Dataset` (its `difficult` and `iscrowd` objects are ignored: a detection on them is neither TP nor
        FP, and they do not count as positives), a COCO instances dict or its path (a `difficult` field on an
        annotation is honoured, crowd regions are treated as difficult).
    results: COCO result dicts (`image_id, category_id, bbox [x, y, w, h], score`) or their path; the box is
        `[x, y, x + w, y + h]`.
    iou_threshold: a detection matches when its overlap with the best gt is >= this (VOCevaldet.m's `>=`).
    use_07_metric: VOC2007's 11-point AP instead of the VOC2010+ area under the envelope.
    plus_one: the devkit's pixel-inclusive boxes (width x2 - x1 + 1); the default treats boxes as continuous.
    A category without (non-difficult) gt has AP NaN and is left out of the mean. Detections with equal
    confidence keep file order (stable sort).
    """
    ground = _voc_ground_truth(gt)
    gt_boxes, gt_difficult = ground.boxes, ground.difficult
    res = load_results(results, ground.image_ids, ground.category_ids, ground.file_names)
    if not res.box_mode and len(res.image_id):
        raise DataError("VOC evaluation needs a bbox in every result", file=res.source, record="record 0",
                        field="bbox")
    categories = ground.category_ids
    images = ground.image_ids
    num_images = max(len(images), 1)
    g_key = np.searchsorted(categories, ground.ann_category) * num_images + np.searchsorted(images, ground.ann_image)
    g_order = np.argsort(g_key, kind="stable")
    g_key = g_key[g_order]
    d_cat = np.searchsorted(categories, res.category_id)
    d_key = d_cat * num_images + np.searchsorted(images, res.image_id)
    d_order = np.argsort(-res.score, kind="stable")
    d_order = d_order[np.argsort(d_cat[d_order], kind="stable")]          # by category, then confidence
    d_key, d_cat = d_key[d_order], d_cat[d_order]
    dt_boxes = res.boxes[d_order].copy()
    dt_boxes[:, 2:] += dt_boxes[:, :2]                                    # xywh -> xyxy
    g_start = np.searchsorted(g_key, d_key, "left")
    g_count = np.searchsorted(g_key, d_key, "right") - g_start
    codes = _voc_match(dt_boxes, g_start, g_count, gt_boxes[g_order], gt_difficult[g_order], float(iou_threshold),
                       1.0 if plus_one else 0.0)

    positives = np.bincount(np.searchsorted(categories, ground.ann_category)[~gt_difficult],
                            minlength=len(categories))
    category_start = np.searchsorted(d_cat, np.arange(len(categories) + 1))
    aps = {}
    for k, category in enumerate(categories.tolist()):
        if positives[k] == 0:
            aps[category] = float("nan")
            continue
        c = codes[category_start[k]:category_start[k + 1]]
        tp = np.cumsum(c == 1).astype(np.float64)
        fp = np.cumsum(c == 0).astype(np.float64)
        recall = tp / float(positives[k])
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[category] = voc_ap(recall, precision, use_07_metric)
    valid = [v for v in aps.values() if not math.isnan(v)]
    return {"mAP": float(np.mean(valid)) if valid else float("nan"), "AP": aps}
