"""Detection and instance-segmentation metrics: Pascal VOC AP, COCO AP/AR (bbox and segm), precision-recall curves.

**COCO** (Lin et al. 2014, "Microsoft COCO: Common Objects in Context"; the evaluation of cocodataset.org).
`coco_evaluate` returns the 12 summary numbers pycocotools' `COCOeval.summarize()` prints - AP averaged over
IoU 0.50:0.05:0.95, AP50, AP75, AP for small/medium/large objects, AR with 1/10/100 detections per image and
AR for small/medium/large - and equals pycocotools to the last bit, because it repeats its decisions exactly:

- per (image, category) the detections are sorted by score (stable, so ties keep file order) and only the 100
  best are kept; gts are ordered non-ignored first;
- a gt is *ignored* if it is a crowd region (`iscrowd`, which overrides any `ignore` field, as in pycocotools)
  or its `area` is outside the area range; each detection in score order takes the unmatched gt of highest IoU
  >= the threshold, preferring non-ignored gts; crowd gts can absorb any number of detections and their IoU
  is intersection over the *detection's* area. Detections matched to ignored gts, and unmatched ones outside
  the area range, are ignored (neither TP nor FP);
- per category, the detections of all images (each image's best `maxDets`) are sorted by score (stable
  mergesort), precision is made monotone (the envelope: p(r) = max over r' >= r), and sampled at the 101
  recall thresholds 0:0.01:1 with `searchsorted(side='left')`; AP is the mean over thresholds, categories and
  IoUs of the categories that have gts.
Also as in pycocotools (loadRes): if the first result has a `bbox`, every result's area (used for the area
ranges) is its box area - even for segm - and a result without a segmentation is its box as a polygon; if it
has none, areas and boxes come from the masks. A gt whose annotation `id` is 0 cannot count a match
(pycocotools stores matches as gt ids, 0 meaning "unmatched"), so a detection on it is a false positive; this
quirk is kept for fidelity, with a warning.

How it is fast: detections and gts are grouped by (image, category) with numpy sorts; one numba kernel computes
the IoUs of all groups, a second runs the greedy matching of every (group, area range, IoU threshold), a third
accumulates every (category, area range, maxDets, IoU threshold) curve. `benchmarks/metrics.py` measures it
against pycocotools and faster-coco-eval.

**Pascal VOC** (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge", sec. 4.2; the devkit's
`VOCevaldet.m`): detections of a class sorted by confidence; each is matched to the gt of largest overlap in its
image; overlap >= 0.5 with a not yet detected gt is a TP, with an already detected one a FP (duplicate), with a
`difficult` gt neither; AP is the VOC2007 11-point interpolated precision or the VOC2010+ area under the
monotone precision envelope. Boxes are continuous (`x2 - x1` wide) unless `plus_one=True`, which uses the
devkit's inclusive pixel convention (`x2 - x1 + 1`).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numba
import numpy as np

from scenekit import masks
from scenekit.errors import DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Built exactly as pycocotools' Params does (linspace, not arange: arange drifts past the end points).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)     # [10]
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)  # [101]
MAX_DETS = (1, 10, 100)
AREA_RANGES = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
               "large": (96 ** 2, 1e5 ** 2)}
IOU_TYPES = ("bbox", "segm")


# =========================================================================================== loading and checks
# Each loader has a fast path that reads whole columns with numpy and checks them vectorised, and a slow pass
# that runs only when a check fails, to name the first bad record and field.

def read_json(path, what: str = "JSON"):
    """Load a JSON file; a missing or malformed file is a one-line DataError naming it (and line, column)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{what} file not found", file=str(path)) from None
    except IsADirectoryError:
        raise DataError(f"{what} path is a directory, not a JSON file", file=str(path)) from None
    except UnicodeDecodeError as error:
        raise DataError(f"not a UTF-8 text file ({error.reason})", file=str(path)) from None
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
                        file=str(path)) from None


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _numeric_column(values: list, integer: bool = False, allow_bool: bool = False) -> np.ndarray | None:
    """Plain numbers -> int64 / float64 array; None if any value is of another type (e.g. a string)."""
    allowed = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    for kind in set(map(type, values)):
        is_bool = kind is bool or issubclass(kind, np.bool_)
        if (is_bool and not allow_bool) or not (is_bool or issubclass(kind, allowed)):
            return None
    return np.fromiter(values, np.int64 if integer else np.float64, len(values))


def _box_column(values: list) -> np.ndarray | None:
    """Boxes -> [N, 4] float64; None if any is not a list of 4 numbers."""
    if not set(map(type, values)) <= {list, tuple, np.ndarray} or (values and set(map(len, values)) != {4}):
        return None
    flat = _numeric_column(list(itertools.chain.from_iterable(values)))
    return None if flat is None else flat.reshape(-1, 4)


def _valid_boxes(boxes: np.ndarray) -> bool:
    return bool(np.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all())


def _check_box(box, error) -> None:
    """A COCO `[x, y, w, h]`: four finite numbers, w and h >= 0."""
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise error(f"must be [x, y, w, h] of 4 numbers, got {box!r}")
    if not all(math.isfinite(float(v)) for v in box):
        raise error(f"must be finite, got {list(box)!r}")
    if box[2] < 0 or box[3] < 0:
        raise error(f"has negative size (w={box[2]}, h={box[3]})")


def _check_segmentation(segmentation, error) -> None:
    """Structure only (polygons: lists of numbers; RLE: size + counts); rasterising checks the rest."""
    if isinstance(segmentation, dict):
        if "size" not in segmentation or "counts" not in segmentation:
            raise error("an RLE needs 'size' and 'counts'")
        if not isinstance(segmentation["counts"], (str, list)):
            raise error("RLE counts must be a string or a list of integers")
    elif isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                raise error("polygons must be lists of numbers [x1, y1, x2, y2, ...]")
    else:
        raise error(f"must be polygons (a list) or an RLE (a dict), got {type(segmentation).__name__}")


@dataclass
class _GroundTruth:
    """A COCO instances dict checked and turned into arrays (one row per annotation, in file order)."""

    source: str
    image_ids: np.ndarray            # [I] sorted
    heights: np.ndarray              # [I] (0 where not given)
    widths: np.ndarray               # [I]
    category_ids: np.ndarray         # [C] sorted
    ann_image: np.ndarray            # [N] image ids
    ann_category: np.ndarray         # [N]
    ann_id: np.ndarray               # [N]
    boxes: np.ndarray                # [N, 4] xywh (NaN where not needed and not given)
    areas: np.ndarray                # [N]
    iscrowd: np.ndarray              # [N] bool
    difficult: np.ndarray            # [N] bool (VOC)
    segmentations: list              # [N] polygons / RLE / None


def _load_ground_truth(gt, iou_type: str) -> _GroundTruth:
    """Check a COCO instances dict (or a Dataset, or a path to a JSON file) as far as the evaluation reads it.

    Needed per annotation: `id`, `image_id`, `category_id` (known ones), `bbox` (for bbox evaluation) or
    `segmentation` (for segm); `iscrowd` defaults to 0 and a missing `area` is computed (box area for bbox,
    mask area for segm). Images need `height` and `width` for segm (polygons are rasterised at that size).
    """
    from scenekit.data.records import Dataset

    source = "ground truth"
    if isinstance(gt, (str, Path)):
        source = str(gt)
        gt = read_json(gt, "ground-truth")
    elif isinstance(gt, Dataset):
        gt = dataset_to_coco_dict(gt)
    if not isinstance(gt, dict):
        raise DataError("must be a COCO instances object with 'images', 'annotations' and 'categories', got "
                        f"{type(gt).__name__}", file=source)
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise DataError("missing or not a list", file=source, field=key)

    def error_at(kind, index, field_name):
        return lambda message: DataError(message, file=source, record=f"{kind} {index}", field=field_name)

    image_size = {}
    for index, image in enumerate(gt["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise error_at("image", index, "id")("must be an integer")
        if image["id"] in image_size:
            raise error_at("image", index, "id")(f"duplicate image id {image['id']}")
        size = []
        for key in ("height", "width"):
            value = image.get(key)
            if value is None and iou_type != "segm":
                value = 0
            elif not _is_int(value) or value <= 0:
                raise error_at("image", index, key)(f"must be a positive integer, got {value!r}")
            size.append(value)
        image_size[image["id"]] = size
    category_ids = set()
    for index, category in enumerate(gt["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise error_at("category", index, "id")("must be an integer")
        if category["id"] in category_ids:
            raise error_at("category", index, "id")(f"duplicate category id {category['id']}")
        category_ids.add(category["id"])
    image_ids = np.array(sorted(image_size), dtype=np.int64)
    sizes = np.array([image_size[i] for i in image_ids.tolist()], dtype=np.int64).reshape(-1, 2)
    categories = np.array(sorted(category_ids), np.int64)

    columns = _annotation_columns(gt["annotations"], iou_type, image_ids, categories)
    if columns is None:
        _find_bad_annotation(gt["annotations"], iou_type, image_size, category_ids, error_at)
        raise DataError("malformed annotations", file=source)          # not reached: the pass above raises
    ann_id, ann_image, ann_category, boxes, areas, iscrowd, difficult, segmentations = columns
    for index in np.flatnonzero(np.isnan(areas)).tolist():   # pycocotools needs "area"; compute its meaning
        if iou_type == "segm":
            height, width = image_size[int(ann_image[index])]
            record = f"annotation {index} (id {ann_id[index]})"
            areas[index] = _segmentation_runs(segmentations[index], height, width, source, record)[1::2].sum()
        else:
            areas[index] = boxes[index, 2] * boxes[index, 3]
    return _GroundTruth(source, image_ids, sizes[:, 0], sizes[:, 1], categories, ann_image, ann_category, ann_id,
                        boxes, areas, iscrowd, difficult, segmentations)


def _annotation_columns(annotations: list, iou_type: str, image_ids: np.ndarray, categories: np.ndarray):
    """The fast path: every column read and checked at once; None when anything is off."""
    n = len(annotations)
    if n == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)),
                np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), [])
    if not set(map(type, annotations)) <= {dict}:
        return None
    ann_id = _numeric_column([a.get("id") for a in annotations], integer=True)
    ann_image = _numeric_column([a.get("image_id") for a in annotations], integer=True)
    ann_category = _numeric_column([a.get("category_id") for a in annotations], integer=True)
    iscrowd = _numeric_column([a.get("iscrowd", 0) for a in annotations], allow_bool=True)
    difficult = _numeric_column([a.get("difficult", 0) for a in annotations], allow_bool=True)
    if any(c is None for c in (ann_id, ann_image, ann_category, iscrowd, difficult)):
        return None
    if (len(np.unique(ann_id)) != n or not np.isin(ann_image, image_ids).all()
            or not np.isin(ann_category, categories).all() or not np.isfinite(iscrowd).all()):
        return None
    boxes = np.full((n, 4), np.nan)
    given = [i for i, a in enumerate(annotations) if "bbox" in a]
    if iou_type == "bbox" and len(given) != n:
        return None
    if given:
        given_boxes = _box_column([annotations[i]["bbox"] for i in given])
        if given_boxes is None or not _valid_boxes(given_boxes):
            return None
        boxes[given] = given_boxes
    areas = np.full(n, np.nan)
    given = [i for i, a in enumerate(annotations) if "area" in a]
    if given:
        given_areas = _numeric_column([annotations[i]["area"] for i in given])
        if given_areas is None or not np.isfinite(given_areas).all() or (given_areas < 0).any():
            return None
        areas[given] = given_areas
    segmentations = [a.get("segmentation") for a in annotations]
    if iou_type == "segm" and any(s is None for s in segmentations):
        return None
    return ann_id, ann_image, ann_category, boxes, areas, iscrowd != 0, difficult != 0, segmentations


def _find_bad_annotation(annotations, iou_type, image_size, category_ids, error_at) -> None:
    seen_ids = set()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise error_at("annotation", index, None)(f"must be an object, got {type(ann).__name__}")
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise error_at("annotation", index, key)(f"must be an integer, got {ann.get(key)!r}")
        if ann["id"] in seen_ids:
            raise error_at("annotation", index, "id")(f"duplicate annotation id {ann['id']}")
        seen_ids.add(ann["id"])
        if ann["image_id"] not in image_size:
            raise error_at("annotation", index, "image_id")(f"unknown image id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise error_at("annotation", index, "category_id")(f"unknown category id {ann['category_id']}")
        if "bbox" in ann or iou_type == "bbox":
            _check_box(ann.get("bbox"), error_at("annotation", index, "bbox"))
        for key in ("iscrowd", "difficult"):
            value = ann.get(key, 0)
            if not (_is_number(value) or isinstance(value, bool)) or not math.isfinite(value):
                raise error_at("annotation", index, key)(f"must be 0 or 1, got {value!r}")
        if "area" in ann:
            area = ann["area"]
            if not _is_number(area) or not math.isfinite(area) or area < 0:
                raise error_at("annotation", index, "area")(f"must be a finite number >= 0, got {area!r}")
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], error_at("annotation", index, "segmentation"))
        elif iou_type == "segm":
            raise error_at("annotation", index, "segmentation")("missing (needed for segm evaluation)")


def _segmentation_runs(segmentation, height, width, source, record) -> np.ndarray:
    try:
        return masks.annotation_runs(segmentation, height, width)[0]
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=source, record=record, field="segmentation") from None


@dataclass
class _Results:
    """Detection results as arrays, in file order; `boxes` NaN where a result gave no box."""

    source: str
    image_id: np.ndarray             # [D]
    category_id: np.ndarray          # [D]
    score: np.ndarray                # [D] float64
    boxes: np.ndarray                # [D, 4] xywh
    box_mode: bool                   # pycocotools' loadRes branch: the first result has a bbox
    records: list                    # the result dicts (segmentations are read from here when needed)


def _has_box(record: dict) -> bool:
    return "bbox" in record and not (isinstance(record["bbox"], list) and len(record["bbox"]) == 0)


def _load_results(results, image_ids: np.ndarray, category_ids: np.ndarray) -> _Results:
    """Check COCO result records against the gt's image and category ids and read them into arrays.

    As pycocotools' loadRes, the first record decides the kind: with a `bbox`, every record needs one (and
    its area is the box's); without, every record needs a `segmentation` (area and box come from the mask).
    """
    source = "results"
    if isinstance(results, (str, Path)):
        source = str(results)
        results = read_json(results, "results")
    if not isinstance(results, list):
        raise DataError(f"must be a list of result objects, got {type(results).__name__}", file=source)
    n = len(results)
    box_mode = n == 0 or (isinstance(results[0], dict) and _has_box(results[0]))
    columns = None
    if set(map(type, results)) <= {dict}:
        try:
            image_id = _numeric_column(list(map(itemgetter("image_id"), results)), integer=True)
            category_id = _numeric_column(list(map(itemgetter("category_id"), results)), integer=True)
            score = _numeric_column(list(map(itemgetter("score"), results)))
            boxes = _box_column(list(map(itemgetter("bbox"), results))) if box_mode else np.full((n, 4), np.nan)
            columns = (image_id, category_id, score, boxes)
        except KeyError:
            pass
    ok = columns is not None and all(c is not None for c in columns)
    if ok:
        ok = (np.isfinite(score).all() and _valid_boxes(boxes if box_mode else np.zeros((0, 4)))
              and np.isin(image_id, image_ids).all() and np.isin(category_id, category_ids).all())
    if ok and not box_mode:
        ok = all("segmentation" in r for r in results)
    if not ok:
        _find_bad_result(results, image_ids, category_ids, box_mode, source)
        raise DataError("malformed results", file=source)             # not reached: the pass above raises
    if not box_mode:                            # segmentation results may still carry their own boxes
        for index, record in enumerate(results):
            if _has_box(record):
                _check_box(record["bbox"], _result_error(source, index, "bbox"))
                boxes[index] = record["bbox"]
    return _Results(source, image_id, category_id, score, boxes, box_mode, results)


def _result_error(source, index, field_name):
    return lambda message: DataError(message, file=source, record=f"record {index}", field=field_name)


def _find_bad_result(results, image_ids, category_ids, box_mode, source) -> None:
    images, categories = set(image_ids.tolist()), set(category_ids.tolist())
    for index, r in enumerate(results):
        if not isinstance(r, dict):
            raise _result_error(source, index, None)(f"must be an object, got {type(r).__name__}")
        for key, known in (("image_id", images), ("category_id", categories)):
            if not _is_int(r.get(key)):
                raise _result_error(source, index, key)(f"must be an integer, got {r.get(key)!r}")
            if r[key] not in known:
                what = "image" if key == "image_id" else "category"
                raise _result_error(source, index, key)(f"unknown {what} id {r[key]} (not in the ground truth)")
        value = r.get("score")
        if not _is_number(value):
            raise _result_error(source, index, "score")(f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise _result_error(source, index, "score")(f"must be finite, got {value!r}")
        if box_mode:
            if "bbox" not in r:
                raise _result_error(source, index, "bbox")("missing (the first result has a bbox, so all must)")
            _check_box(r["bbox"], _result_error(source, index, "bbox"))
        elif "segmentation" not in r:
            raise _result_error(source, index, "segmentation")("missing: a result needs a bbox or a segmentation")
        if "segmentation" in r:
            _check_segmentation(r["segmentation"], _result_error(source, index, "segmentation"))


# =============================================================================================== the kernels
@numba.njit(cache=True)
def _pair_indices(d_start, d_count, g_start, g_count):
    """All (detection, gt) index pairs of each group, detection-major: group k's pairs start at offset[k]."""
    offset = np.zeros(len(d_start) + 1, np.int64)
    for k in range(len(d_start)):
        offset[k + 1] = offset[k] + d_count[k] * g_count[k]
    dt_index = np.empty(offset[-1], np.int64)
    gt_index = np.empty(offset[-1], np.int64)
    for k in range(len(d_start)):
        p = offset[k]
        for d in range(d_count[k]):
            for g in range(g_count[k]):
                dt_index[p] = d_start[k] + d
                gt_index[p] = g_start[k] + g
                p += 1
    return offset, dt_index, gt_index


@numba.njit(cache=True)
def _box_iou_pairs(dt_boxes, gt_boxes, dt_index, gt_index, gt_crowd, out):
    for p in range(len(dt_index)):
        g = gt_index[p]
        out[p] = masks._box_iou_xywh(dt_boxes[dt_index[p]], gt_boxes[g], gt_crowd[g])


@numba.njit(cache=True)
def _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt_area, gt_crowd, gt_id,
           area_lo, area_hi, iou_thresholds, codes):
    """COCOeval.evaluateImg for every group, area range and IoU threshold.

    Writes codes[detection, a, t]: 1 true positive, 0 false positive, 2 ignored.
    """
    max_g = 0
    for k in range(len(g_count)):
        max_g = max(max_g, g_count[k])
    order = np.empty(max_g, np.int64)
    ignored = np.empty(max_g, np.bool_)
    taken = np.empty(max_g, np.bool_)
    for k in range(len(d_start)):
        ds, nd, gs, ng, po = d_start[k], d_count[k], g_start[k], g_count[k], offset[k]
        for a in range(len(area_lo)):
            lo, hi = area_lo[a], area_hi[a]
            n = 0
            for j in range(ng):                  # non-ignored gts first, each part in file order
                ignored[j] = gt_crowd[gs + j] or gt_area[gs + j] < lo or gt_area[gs + j] > hi
                if not ignored[j]:
                    order[n] = j
                    n += 1
            for j in range(ng):
                if ignored[j]:
                    order[n] = j
                    n += 1
            for t in range(len(iou_thresholds)):
                for j in range(ng):
                    taken[j] = False
                for d in range(nd):
                    best = min(iou_thresholds[t], 1 - 1e-10)
                    m = -1
                    for jj in range(ng):
                        j = order[jj]
                        if taken[j] and not gt_crowd[gs + j]:
                            continue
                        if m > -1 and not ignored[m] and ignored[j]:
                            break                # matched a regular gt; the rest are ignored ones
                        iou = ious[po + d * ng + j]
                        if iou < best:
                            continue
                        best = iou
                        m = j
                    det = ds + d
                    outside = dt_area[det] < lo or dt_area[det] > hi
                    if m == -1:
                        codes[det, a, t] = 2 if outside else 0
                    else:
                        taken[m] = True
                        if ignored[m]:
                            codes[det, a, t] = 2
                        elif gt_id[gs + m] != 0:
                            codes[det, a, t] = 1
                        else:                    # pycocotools' "matched gt id 0" reads as unmatched
                            codes[det, a, t] = 2 if outside else 0


# ================================================================================================ COCO
@dataclass
class CocoEvaluation:
    """Everything COCOeval.accumulate() computes, plus the 12 summary stats.

    precision[t, r, k, a, m]: interpolated precision at IoU threshold t, recall threshold r, category k, area
    range a, max detections m (-1 where category k has no gt in that setting); recall[t, k, a, m] likewise;
    scores: the detection score at which each precision sample is reached.
    """

    stats: dict[str, float]
    precision: np.ndarray            # [T, R, K, A, M]
    recall: np.ndarray               # [T, K, A, M]
    scores: np.ndarray               # [T, R, K, A, M]
    category_ids: np.ndarray         # [K]
    image_ids: np.ndarray            # [I]
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())
    recall_thresholds: np.ndarray = field(default_factory=lambda: RECALL_THRESHOLDS.copy())
    area_names: tuple = tuple(AREA_RANGES)
    max_dets: tuple = MAX_DETS

    def category_ap(self, iou_threshold: float | None = None, area: str = "all", max_dets: int = 100) -> dict:
        """Per-category AP (mean over recall thresholds and IoUs, or at one IoU); NaN for absent categories."""
        s = self.precision
        if iou_threshold is not None:
            s = s[np.where(iou_threshold == self.iou_thresholds)[0]]
        s = s[:, :, :, self.area_names.index(area), self.max_dets.index(max_dets)]     # [T', R, K]
        out = {}
        for k, category in enumerate(self.category_ids.tolist()):
            values = s[:, :, k]
            out[category] = float(np.mean(values[values > -1])) if (values > -1).any() else float("nan")
        return out


@dataclass
class _Matched:
    """Detections sorted by (image, category, score) and cut to maxDets[-1] per group, with their match codes."""

    category_ids: np.ndarray         # [K]
    image_ids: np.ndarray            # [I]
    score: np.ndarray                # [D]
    rank: np.ndarray                 # [D] position within its (image, category) by score
    by_score: np.ndarray             # [D] detection indices by category, then score (ties: image order)
    category_start: np.ndarray       # [K + 1] category k is by_score[category_start[k]:category_start[k+1]]
    codes: np.ndarray                # [D, A, T] int8: 1 TP, 0 FP, 2 ignored
    num_gt: np.ndarray               # [K, A] non-ignored gts


def _select(ids, chosen):
    return ids if chosen is None else np.unique(np.asarray(list(chosen), dtype=np.int64))


def _match_all(gt: _GroundTruth, res: _Results, iou_type: str, img_ids, cat_ids, iou_thresholds,
               area_ranges, max_det: int) -> _Matched:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    images = _select(gt.image_ids, img_ids)
    categories = _select(gt.category_ids, cat_ids)
    num_categories = len(categories)
    area_lo = np.array([r[0] for r in area_ranges], np.float64)
    area_hi = np.array([r[1] for r in area_ranges], np.float64)

    # ground truth of the selected images and categories, grouped by (image, category), file order inside
    keep = np.isin(gt.ann_image, images) & np.isin(gt.ann_category, categories)
    g_rows = np.flatnonzero(keep)
    g_key = (np.searchsorted(images, gt.ann_image[g_rows]) * num_categories
             + np.searchsorted(categories, gt.ann_category[g_rows]))
    order = np.argsort(g_key, kind="stable")
    g_rows, g_key = g_rows[order], g_key[order]
    if (gt.ann_id[g_rows] == 0).any():
        warnings.warn("ground truth has an annotation with id 0: as in pycocotools, a detection matched to it "
                      "counts as a false positive; number annotations from 1", stacklevel=3)

    # detections likewise, by score inside each group (stable: ties keep file order), the best max_det kept
    keep = np.isin(res.image_id, images) & np.isin(res.category_id, categories)
    d_rows = np.flatnonzero(keep)
    d_key = (np.searchsorted(images, res.image_id[d_rows]) * num_categories
             + np.searchsorted(categories, res.category_id[d_rows]))
    order = np.argsort(d_key, kind="stable")              # quick: result files are usually grouped by image
    d_rows, d_key = d_rows[order], d_key[order]
    group_start = _run_starts(d_key)
    group_end = np.r_[group_start[1:], len(d_key)].astype(np.int64)
    d_rows = d_rows[_sort_groups_by_score(group_start, group_end, -res.score[d_rows])]
    rank = np.arange(len(d_key)) - np.repeat(group_start, group_end - group_start)
    cut = rank < max_det
    d_rows, d_key, rank = d_rows[cut], d_key[cut], rank[cut]

    # groups: every (image, category) with a detection or a gt
    keys = np.sort(np.concatenate([_sorted_unique(d_key), _sorted_unique(g_key)]))
    keys = _sorted_unique(keys)
    d_start = np.searchsorted(d_key, keys, "left")
    d_count = np.searchsorted(d_key, keys, "right") - d_start
    g_start = np.searchsorted(g_key, keys, "left")
    g_count = np.searchsorted(g_key, keys, "right") - g_start
    offset, pair_dt, pair_gt = _pair_indices(d_start, d_count, g_start, g_count)

    gt_crowd = gt.iscrowd[g_rows]
    dt_mask_list, dt_masks = None, None
    if iou_type == "segm" or not res.box_mode:
        dt_mask_list = [_result_mask(res, gt, row) for row in d_rows.tolist()]
        dt_masks = _pack(dt_mask_list)
    ious = np.empty(len(pair_dt), np.float64)                          # [sum over groups of D_k * G_k]
    if iou_type == "bbox":
        dt_boxes = res.boxes[d_rows]
        missing = np.isnan(dt_boxes[:, 0])     # segmentation-only results: the box of the mask (loadRes)
        if missing.any():
            dt_boxes[missing] = dt_masks.boxes[missing]
        _box_iou_pairs(dt_boxes, gt.boxes[g_rows], pair_dt, pair_gt, gt_crowd, ious)
    else:
        packed = _pack(dt_mask_list + [_gt_mask(gt, row) for row in g_rows.tolist()])
        masks._rle_iou_pairs(packed.counts, packed.starts, packed.lengths, packed.heights, packed.widths,
                             packed.boxes, pair_dt, pair_gt + len(d_rows), gt_crowd[pair_gt], ious)

    # detection areas as loadRes sets them: box area if the first result has a box, else the mask area
    if res.box_mode:
        dt_area = res.boxes[d_rows, 2] * res.boxes[d_rows, 3]
    else:
        dt_area = dt_masks.areas().astype(np.float64)
    codes = np.empty((len(d_rows), len(area_ranges), len(iou_thresholds)), np.int8)
    _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt.areas[g_rows], gt_crowd,
           gt.ann_id[g_rows], area_lo, area_hi, np.asarray(iou_thresholds, np.float64), codes)

    # non-ignored gts per (category, area range)
    g_category = g_key % num_categories if num_categories else g_key
    num_gt = np.zeros((len(categories), len(area_ranges)), np.int64)
    for a in range(len(area_ranges)):
        regular = ~gt_crowd & (gt.areas[g_rows] >= area_lo[a]) & (gt.areas[g_rows] <= area_hi[a])
        num_gt[:, a] = np.bincount(g_category[regular], minlength=len(categories))
    # COCOeval.accumulate sorts each category's detections, concatenated in image order, by score with a
    # stable mergesort. One stable sort by (category, score) over the (image, category, rank)-ordered
    # detections gives that order for every category at once; for maxDets 1 and 10 it is the subsequence.
    score = res.score[d_rows]
    d_category = d_key % num_categories if num_categories else d_key
    by_score = np.argsort(-score, kind="stable")
    small = np.int16 if num_categories < 2 ** 15 else np.int64         # int16 sorts by radix
    by_score = by_score[np.argsort(d_category[by_score].astype(small), kind="stable")]
    category_start = np.searchsorted(d_category[by_score], np.arange(len(categories) + 1))
    return _Matched(categories, images, score, rank, by_score, category_start, codes, num_gt)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _sorted_unique(sorted_keys: np.ndarray) -> np.ndarray:
    return sorted_keys[_run_starts(sorted_keys)]


@numba.njit(cache=True)
def _sort_groups_by_score(group_start, group_end, negative_score):
    """Stable argsort by `negative_score` inside each [start, end) group (the groups stay in place)."""
    order = np.arange(len(negative_score))
    for g in range(len(group_start)):
        lo, hi = group_start[g], group_end[g]
        if hi - lo <= 32:                                  # small groups: insertion sort (stable)
            for i in range(lo + 1, hi):
                current = order[i]
                j = i - 1
                while j >= lo and negative_score[order[j]] > negative_score[current]:
                    order[j + 1] = order[j]
                    j -= 1
                order[j + 1] = current
        else:
            inside = np.argsort(negative_score[lo:hi], kind="mergesort")
            order[lo:hi] = lo + inside
    return order


def _pack(mask_list) -> masks.PackedRLEs:
    return masks.PackedRLEs([m[0] for m in mask_list], [m[1] for m in mask_list], [m[2] for m in mask_list])


def _result_mask(res: _Results, gt: _GroundTruth, row: int):
    """(runs, height, width) of one result's mask, as COCO.annToRLE reads it (the box polygon if it has none)."""
    record = res.records[row]
    image = np.searchsorted(gt.image_ids, res.image_id[row])
    height, width = int(gt.heights[image]), int(gt.widths[image])
    segmentation = record.get("segmentation")
    if segmentation is None:
        x, y, w, h = record["bbox"]
        x2, y2 = x + w, y + h
        segmentation = [[x, y, x, y2, x2, y2, x2, y]]
    try:
        return masks.annotation_runs(segmentation, height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=res.source, record=f"record {row}", field="segmentation") from None


def _gt_mask(gt: _GroundTruth, row: int):
    image = np.searchsorted(gt.image_ids, gt.ann_image[row])
    height, width = int(gt.heights[image]), int(gt.widths[image])
    try:
        return masks.annotation_runs(gt.segmentations[row], height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=gt.source, record=f"annotation {row} (id {gt.ann_id[row]})",
                        field="segmentation") from None


def _ranked(matched: _Matched, k: int, max_det: int) -> np.ndarray:
    """Detections of category k among each image's best max_det, in COCOeval.accumulate's score order."""
    chosen = matched.by_score[matched.category_start[k]:matched.category_start[k + 1]]
    return chosen[matched.rank[chosen] < max_det]


@numba.njit(cache=True)
def _accumulate_kernel(positions, starts, score, codes, num_gt, recall_thresholds, precision, recall, scores):
    """COCOeval.accumulate for every (category, area range, maxDets, IoU threshold).

    positions[starts[m, k]:starts[m, k + 1]]: category k's detections among each image's best maxDets[m], in
    score order (indices into score [D] and codes [D, A, T]).
    Walks them counting TPs and FPs (ignored ones count as neither), makes precision monotone from the
    right, and samples it where recall first reaches each threshold (numpy's searchsorted side='left');
    thresholds never reached keep precision 0.
    """
    num_a, num_t = codes.shape[1], codes.shape[2]
    num_m, num_k = starts.shape[0], starts.shape[1] - 1
    longest = 0
    for m in range(num_m):
        for k in range(num_k):
            longest = max(longest, starts[m, k + 1] - starts[m, k])
    rc = np.empty(longest)
    pr = np.empty(longest)
    eps = np.spacing(1.0)
    for k in range(num_k):
        for a in range(num_a):
            positives = num_gt[k, a]
            if positives == 0:
                continue                                        # no gt: stays -1, left out of the means
            for m in range(num_m):
                lo, nd = starts[m, k], starts[m, k + 1] - starts[m, k]
                for t in range(num_t):
                    tp = 0.0
                    fp = 0.0
                    for i in range(nd):
                        # a quotient is recomputed only when its operands change (same value otherwise)
                        code = codes[positions[lo + i], a, t]
                        if code == 1:
                            tp += 1.0
                            rc[i] = tp / positives
                            pr[i] = tp / (fp + tp + eps)
                        elif code == 0:
                            fp += 1.0
                            rc[i] = rc[i - 1] if i > 0 else 0.0
                            pr[i] = tp / (fp + tp + eps)
                        else:                                   # ignored: the curve does not move
                            rc[i] = rc[i - 1] if i > 0 else 0.0
                            pr[i] = pr[i - 1] if i > 0 else 0.0
                    recall[t, k, a, m] = rc[nd - 1] if nd else 0.0
                    for i in range(nd - 1, 0, -1):               # the precision envelope
                        if pr[i] > pr[i - 1]:
                            pr[i - 1] = pr[i]
                    i = 0
                    for r in range(len(recall_thresholds)):
                        while i < nd and rc[i] < recall_thresholds[r]:
                            i += 1
                        if i < nd:
                            precision[t, r, k, a, m] = pr[i]
                            scores[t, r, k, a, m] = score[positions[lo + i]]
                        else:
                            precision[t, r, k, a, m] = 0.0
                            scores[t, r, k, a, m] = 0.0


def _accumulate(matched: _Matched, iou_thresholds, max_dets):
    """COCOeval.accumulate: precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M]."""
    T, R = len(iou_thresholds), len(RECALL_THRESHOLDS)
    K, A, M = len(matched.category_ids), matched.codes.shape[1], len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    order = matched.by_score
    rank = matched.rank[order]
    positions, starts = [], np.zeros((M, K + 1), np.int64)
    total = 0
    for m, max_det in enumerate(max_dets):                 # each maxDets' detections, still in score order
        chosen = np.flatnonzero(rank < max_det)
        starts[m] = total + np.searchsorted(chosen, matched.category_start)
        positions.append(order[chosen])
        total += len(chosen)
    _accumulate_kernel(np.concatenate(positions), starts, matched.score, matched.codes, matched.num_gt,
                       RECALL_THRESHOLDS, precision, recall, scores)
    return precision, recall, scores


def _summarize(precision, recall) -> dict[str, float]:
    """COCOeval.summarize's 12 numbers, averaged exactly as it does (mean of the entries > -1)."""
    areas, dets = list(AREA_RANGES), list(MAX_DETS)

    def mean(ap, iou=None, area="all", max_dets=100):
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        aind, mind = [areas.index(area)], [dets.index(max_dets)]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    values = [mean(1), mean(1, .5), mean(1, .75), mean(1, area="small"), mean(1, area="medium"),
              mean(1, area="large"), mean(0, max_dets=1), mean(0, max_dets=10), mean(0),
              mean(0, area="small"), mean(0, area="medium"), mean(0, area="large")]
    return dict(zip(STAT_NAMES, values))


def coco_evaluation(gt, results, iou_type: str = "bbox", *, img_ids=None, cat_ids=None) -> CocoEvaluation:
    """COCO evaluation with everything accumulated (see `CocoEvaluation`); `coco_evaluate` keeps the 12 stats.

    gt: a COCO instances dict, a `Dataset`, or the path of an instances JSON file.
    results: a list of COCO result dicts (`image_id, category_id, bbox [x, y, w, h], score[, segmentation]`)
        or the path of a results JSON file. Result image and category ids must exist in `gt`.
    iou_type: "bbox" (box IoU) or "segm" (mask IoU; gt polygons/RLE, result RLE - compressed or not - or polygons).
    img_ids, cat_ids: evaluate only these images / categories (pycocotools' params.imgIds / catIds).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    ground_truth = _load_ground_truth(gt, iou_type)
    res = _load_results(results, ground_truth.image_ids, ground_truth.category_ids)
    matched = _match_all(ground_truth, res, iou_type, img_ids, cat_ids, IOU_THRESHOLDS,
                         list(AREA_RANGES.values()), MAX_DETS[-1])
    precision, recall, scores = _accumulate(matched, IOU_THRESHOLDS, MAX_DETS)
    return CocoEvaluation(_summarize(precision, recall), precision, recall, scores, matched.category_ids,
                          matched.image_ids)


def coco_evaluate(gt, results, iou_type: str = "bbox", *, img_ids=None, cat_ids=None) -> dict[str, float]:
    """The 12 COCO summary stats `{"AP", "AP50", ..., "ARl"}`, equal to pycocotools' `COCOeval.stats`.

    A stat with no ground truth to measure (e.g. APs without small objects) is -1, as in pycocotools.
    See `coco_evaluation` for the arguments.
    """
    return coco_evaluation(gt, results, iou_type, img_ids=img_ids, cat_ids=cat_ids).stats


def format_coco_stats(stats: dict[str, float]) -> str:
    """The 12 stats as the table pycocotools' summarize() prints."""
    rows = [("Precision", "(AP)", None, "all", 100), ("Precision", "(AP)", .5, "all", 100),
            ("Precision", "(AP)", .75, "all", 100), ("Precision", "(AP)", None, "small", 100),
            ("Precision", "(AP)", None, "medium", 100), ("Precision", "(AP)", None, "large", 100),
            ("Recall", "(AR)", None, "all", 1), ("Recall", "(AR)", None, "all", 10),
            ("Recall", "(AR)", None, "all", 100), ("Recall", "(AR)", None, "small", 100),
            ("Recall", "(AR)", None, "medium", 100), ("Recall", "(AR)", None, "large", 100)]
    lines = []
    for name, (kind, short, iou, area, dets) in zip(STAT_NAMES, rows):
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {'Average ' + kind:<18} {short} @[ IoU={iou_text:<9} | area={area:>6s} | "
                     f"maxDets={dets:>3d} ] = {stats[name]:0.3f}")
    return "\n".join(lines)


# ====================================================================================== precision-recall curves
@dataclass
class PRCurve:
    """One category's precision-recall curve at one IoU threshold (COCO matching rules).

    recall, precision, scores: one point per counted detection (ignored ones left out), in decreasing score
    order; `precision` is the interpolated one (max precision at this recall or beyond, monotone
    non-increasing), `raw_precision` the plain TP / (TP + FP).
    interpolated: precision sampled at COCO's 101 recall thresholds; its mean is the category's AP.
    """

    recall: np.ndarray               # [N]
    precision: np.ndarray            # [N]
    raw_precision: np.ndarray        # [N]
    scores: np.ndarray               # [N]
    interpolated: np.ndarray         # [101]
    num_gt: int

    @property
    def ap(self) -> float:
        return float(np.mean(self.interpolated))


def precision_recall_curves(gt, results, iou_type: str = "bbox", *, iou_threshold: float = 0.5,
                            area: str = "all", max_dets: int = 100, img_ids=None, cat_ids=None
                            ) -> dict[int, PRCurve]:
    """Per-category precision-recall curves `{category_id: PRCurve}` for categories with ground truth.

    Matching follows COCO (crowd and out-of-range gts ignored, best `max_dets` detections per image) at one
    `iou_threshold`; `curve.ap` equals COCO's per-category AP at that threshold.
    """
    if area not in AREA_RANGES:
        raise ValueError(f"area must be one of {tuple(AREA_RANGES)}, got {area!r}")
    ground_truth = _load_ground_truth(gt, iou_type)
    res = _load_results(results, ground_truth.image_ids, ground_truth.category_ids)
    matched = _match_all(ground_truth, res, iou_type, img_ids, cat_ids, [iou_threshold], [AREA_RANGES[area]],
                         max_dets)
    precision, _, _ = _accumulate(matched, [iou_threshold], [max_dets])
    curves = {}
    for k, category in enumerate(matched.category_ids.tolist()):
        num_gt = int(matched.num_gt[k, 0])
        if num_gt == 0:
            continue
        ranked = _ranked(matched, k, max_dets)
        codes = matched.codes[ranked, 0, 0]                             # [N] in score order
        tp = np.cumsum(codes == 1).astype(np.float64)
        fp = np.cumsum(codes == 0).astype(np.float64)
        recall, raw = tp / num_gt, tp / (fp + tp + np.spacing(1))
        counted = codes != 2
        envelope = np.maximum.accumulate(raw[::-1])[::-1]
        curves[category] = PRCurve(recall[counted], envelope[counted], raw[counted],
                                   matched.score[ranked][counted], precision[0, :, k, 0, 0].copy(), num_gt)
    return curves


def plot_precision_recall(curves: dict[int, PRCurve], path, names: dict | None = None, title: str = "") -> Path:
    """Draw the curves (one line per category, AP in the legend) into a PNG at `path`. Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'scenekit[plots]'") from None
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6, 5))
    for category, curve in curves.items():
        name = (names or {}).get(category, str(category))
        recall = np.r_[0.0, curve.recall]
        precision = np.r_[curve.precision[0] if len(curve.precision) else 0.0, curve.precision]
        axes.step(recall, precision, where="post", label=f"{name} (AP {curve.ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ================================================================================================ Pascal VOC
@numba.njit(cache=True)
def _voc_match(dt_boxes, g_start, g_count, gt_boxes, gt_difficult, iou_threshold, one, codes):
    """VOCevaldet.m's loop over detections in decreasing confidence: 1 TP, 0 FP, 2 ignored (difficult)."""
    detected = np.zeros(len(gt_boxes), np.bool_)
    for d in range(len(dt_boxes)):
        bb = dt_boxes[d]
        best = -np.inf
        jbest = -1
        for j in range(g_start[d], g_start[d] + g_count[d]):
            gb = gt_boxes[j]
            iw = min(bb[2], gb[2]) - max(bb[0], gb[0]) + one
            ih = min(bb[3], gb[3]) - max(bb[1], gb[1]) + one
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
                      + (gb[2] - gb[0] + one) * (gb[3] - gb[1] + one) - iw * ih)
                overlap = iw * ih / ua
                if overlap > best:
                    best = overlap
                    jbest = j
        if jbest >= 0 and best >= iou_threshold:
            if gt_difficult[jbest]:
                codes[d] = 2
            elif not detected[jbest]:
                codes[d] = 1
                detected[jbest] = True
            else:
                codes[d] = 0                      # a duplicate detection of the same object
        else:
            codes[d] = 0


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
        return _VocGroundTruth(
            np.array(sorted({int(r.image_id) for r in records}), np.int64),
            np.array(sorted(gt.categories), np.int64),
            joined([np.full(r.num_objects, r.image_id, np.int64) for r in records], np.zeros(0, np.int64)),
            joined([r.labels for r in records], np.zeros(0, np.int64)),
            joined([r.boxes for r in records], np.zeros((0, 4))),
            joined([r.difficult | r.iscrowd for r in records], np.zeros(0, bool)))
    ground = _load_ground_truth(gt, "bbox")
    xyxy = ground.boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    return _VocGroundTruth(ground.image_ids, ground.category_ids, ground.ann_image, ground.ann_category, xyxy,
                           ground.difficult | ground.iscrowd)


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
    res = _load_results(results, ground.image_ids, ground.category_ids)
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
    codes = np.zeros(len(d_key), np.int8)
    _voc_match(dt_boxes, g_start, g_count, np.ascontiguousarray(gt_boxes[g_order]), gt_difficult[g_order],
               float(iou_threshold), 1.0 if plus_one else 0.0, codes)

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


# ============================================================================================ Dataset -> COCO
def dataset_to_coco_dict(dataset) -> dict:
    """A `Dataset` as a COCO instances dict, so its models are evaluated by the same code as COCO files.

    Boxes become `[x1, y1, x2 - x1, y2 - y1]`; `area` is the record's (mask) area when given, else the box
    area; segmentations and `iscrowd` are carried over, `difficult` objects get `"difficult": 1` (read by
    `voc_evaluate`; COCO ignores it). Annotation ids are the records' `ann_ids` when those are unique across
    the dataset and positive, else 1..N in record order (pycocotools cannot match a gt of id 0).
    """
    records = dataset.records
    all_ids = np.concatenate([r.ann_ids for r in records]) if records else np.zeros(0, np.int64)
    keep_ids = len(np.unique(all_ids)) == len(all_ids) and (all_ids > 0).all()
    images, annotations = [], []
    next_id = 1
    for record in records:
        images.append({"id": int(record.image_id), "file_name": record.file_name, "width": int(record.width),
                       "height": int(record.height)})
        for i in range(record.num_objects):
            x1, y1, x2, y2 = (float(v) for v in record.boxes[i])
            area = float(record.areas[i]) if record.areas is not None else (x2 - x1) * (y2 - y1)
            ann = {"id": int(record.ann_ids[i]) if keep_ids else next_id, "image_id": int(record.image_id),
                   "category_id": int(record.labels[i]), "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area,
                   "iscrowd": int(record.iscrowd[i])}
            if record.segmentations is not None and record.segmentations[i] is not None:
                ann["segmentation"] = record.segmentations[i]
            if record.difficult[i]:
                ann["difficult"] = 1
            annotations.append(ann)
            next_id += 1
    categories = [{"id": int(c), "name": str(name)} for c, name in sorted(dataset.categories.items())]
    return {"images": images, "annotations": annotations, "categories": categories}
