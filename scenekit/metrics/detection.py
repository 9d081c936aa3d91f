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

How it is fast: JSON is parsed by orjson when installed (else the standard library) with the cyclic garbage
collector paused; detections and gts are grouped by (image, category) with numpy sorts; the IoUs of all
(detection, gt) pairs are one vectorised expression; the greedy matching steps through the detections by rank,
the k-th detection of every group (and every area range and IoU threshold) at once; the curves of a category
come from cumulative sums, one per (area range, maxDets, IoU threshold) column. Plain numpy throughout, so the
command does not pay numba's import and cache loading (only segm's mask IoUs use the numba kernels of
`scenekit.masks`). `benchmarks/metrics.py` measures it against pycocotools and faster-coco-eval, in process and
as whole commands.

**Pascal VOC** (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge", sec. 4.2; the devkit's
`VOCevaldet.m`): detections of a class sorted by confidence; each is matched to the gt of largest overlap in its
image; overlap >= 0.5 with a not yet detected gt is a TP, with an already detected one a FP (duplicate), with a
`difficult` gt neither; AP is the VOC2007 11-point interpolated precision or the VOC2010+ area under the
monotone precision envelope. Boxes are continuous (`x2 - x1` wide) unless `plus_one=True`, which uses the
devkit's inclusive pixel convention (`x2 - x1 + 1`).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from scenekit.errors import DataError
from scenekit.metrics.result_images import result_image_ids

try:                                    # a runtime dependency; the standard library's parser when absent
    import orjson
except ImportError:                     # pragma: no cover - exercised by tests that hide the module
    orjson = None

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

@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off meanwhile (a context manager and a decorator): parsing a large file
    creates millions of containers, and the collector's passes over them (none of them in a cycle) cost more
    than the parse itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_json(data: bytes, source: str = "JSON"):
    """JSON bytes -> Python objects: orjson when installed, the standard library otherwise and for what orjson
    refuses but the standard library reads (NaN, Infinity, integers beyond 64 bits), so both give the same
    objects and the same errors. A malformed text is a DataError naming `source` (and line, column)."""
    with _gc_paused():
        if orjson is not None:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass                    # the standard library decides, and words the error
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"not a UTF-8 text file ({error.reason})", file=source) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
                            file=source) from None


def read_json(path, what: str = "JSON"):
    """Load a JSON file; a missing or malformed file is a one-line DataError naming it (and line, column)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{what} file not found", file=str(path)) from None
    except IsADirectoryError:
        raise DataError(f"{what} path is a directory, not a JSON file", file=str(path)) from None
    return parse_json(data, str(path))


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
    file_names: list                 # [I] each image's file_name (None where not given)
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

    image_size, file_names = {}, {}
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
        file_names[image["id"]] = image.get("file_name")
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
    return _GroundTruth(source, image_ids, [file_names[i] for i in image_ids.tolist()], sizes[:, 0], sizes[:, 1],
                        categories, ann_image, ann_category, ann_id, boxes, areas, iscrowd, difficult, segmentations)


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
    from scenekit import masks

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


def _load_results(results, image_ids: np.ndarray, category_ids: np.ndarray, file_names=None) -> _Results:
    """Check COCO result records against the gt's image and category ids and read them into arrays.

    As pycocotools' loadRes, the first record decides the kind: with a `bbox`, every record needs one (and
    its area is the box's); without, every record needs a `segmentation` (area and box come from the mask).
    A record with a `file_name` (as `scenekit predict` writes) stands for the gt image of that file name
    (`file_names`, aligned with `image_ids`), see `scenekit.metrics.result_images`.
    """
    source = "results"
    if isinstance(results, (str, Path)):
        source = str(results)
        results = read_json(results, "results")
    if not isinstance(results, list):
        raise DataError(f"must be a list of result objects, got {type(results).__name__}", file=source)
    n = len(results)
    box_mode = n == 0 or (isinstance(results[0], dict) and _has_box(results[0]))
    named_ids = result_image_ids(results, image_ids, file_names, source)    # None: no record has a file_name
    columns = None
    if set(map(type, results)) <= {dict}:
        try:
            ids = list(map(itemgetter("image_id"), results)) if named_ids is None else named_ids
            image_id = _numeric_column(ids, integer=True)
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
        _find_bad_result(results, image_ids, category_ids, box_mode, source, named_ids)
        raise DataError("malformed results", file=source)             # not reached: the pass above raises
    if not box_mode:                            # segmentation results may still carry their own boxes
        for index, record in enumerate(results):
            if _has_box(record):
                _check_box(record["bbox"], _result_error(source, index, "bbox"))
                boxes[index] = record["bbox"]
    return _Results(source, image_id, category_id, score, boxes, box_mode, results)


def _result_error(source, index, field_name):
    return lambda message: DataError(message, file=source, record=f"record {index}", field=field_name)


def _find_bad_result(results, image_ids, category_ids, box_mode, source, named_ids=None) -> None:
    images, categories = set(image_ids.tolist()), set(category_ids.tolist())
    for index, r in enumerate(results):
        if not isinstance(r, dict):
            raise _result_error(source, index, None)(f"must be an object, got {type(r).__name__}")
        if named_ids is not None and "file_name" in r:
            r = {**r, "image_id": named_ids[index]}             # its file name says which image
        for key, known in (("image_id", images), ("category_id", categories)):
            if key == "image_id" and key not in r:
                raise _result_error(source, index, key)("missing: a result needs an image_id or a file_name")
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


# ========================================================================================= the vectorised steps
def _pair_indices(d_start, d_count, g_start, g_count):
    """All (detection, gt) index pairs of each group, detection-major: group k's pairs start at offset[k]."""
    sizes = d_count * g_count
    offset = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offset[1:])
    group = np.repeat(np.arange(len(sizes)), sizes)                    # [P] the group of each pair
    local = np.arange(offset[-1]) - offset[group]
    per_detection = g_count[group]
    return offset, d_start[group] + local // per_detection, g_start[group] + local % per_detection


def _box_iou_pairs(dt_boxes, gt_boxes, gt_crowd):
    """maskApi.c `bbIou` for each pair of `[x, y, w, h]` boxes (rows of `dt_boxes` and `gt_boxes`): intersection
    over union, over the detection's area for a crowd gt, 0 without overlap. The same operations in the same
    order as the C code, so the same doubles."""
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da = dw * dh
    union = np.where(gt_crowd, da, da + gw * gh - inter)
    overlapping = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping, inter / np.where(overlapping, union, 1.0), 0.0)


def _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt_area, gt_crowd, gt_id,
           area_lo, area_hi, iou_thresholds):
    """COCOeval.evaluateImg for every group, area range and IoU threshold: codes[detection, a, t] is 1 for a true
    positive, 0 for a false positive, 2 for an ignored detection.

    Inside a group the detections go in score order, each taking the gt of highest IoU >= the threshold among
    those not yet taken (crowd gts are never used up), a regular gt before any ignored one, the later of equal
    IoUs. A detection matched to an ignored gt is ignored, so is an unmatched one outside the area range, and
    one matched to a gt of id 0 counts as unmatched (pycocotools stores a match as the gt's id, 0 meaning none).
    """
    thresholds = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)             # [T]
    outside = (dt_area[:, None] < area_lo) | (dt_area[:, None] > area_hi)                  # [D, A]
    unmatched = np.where(outside, 2, 0).astype(np.int8)                                      # [D, A]
    codes = np.empty((len(dt_area), len(area_lo), len(thresholds)), np.int8)                  # [D, A, T]
    codes[...] = unmatched[:, :, None]
    busy = (d_count > 0) & (g_count > 0)
    gt_range = (area_lo, area_hi)
    _match_single_gt(np.flatnonzero(busy & (g_count == 1)), offset, d_start, d_count, g_start, ious, gt_area,
                     gt_crowd, gt_id, gt_range, thresholds, unmatched, codes)
    several = np.flatnonzero(busy & (g_count > 1))
    width = np.ceil(np.log2(g_count[several])).astype(np.int64)                              # 2**width gt slots
    for bucket in np.unique(width).tolist():
        _match_stepwise(several[width == bucket], 1 << bucket, offset, d_start, d_count, g_start, g_count, ious,
                        gt_area, gt_crowd, gt_id, gt_range, thresholds, unmatched, codes)
    return codes


def _match_single_gt(groups, offset, d_start, d_count, g_start, ious, gt_area, gt_crowd, gt_id, gt_range,
                     thresholds, unmatched, codes) -> None:
    """`_match` for groups of one gt: at each threshold the first detection reaching it takes the gt (every one
    reaching it, for a crowd gt)."""
    if len(groups) == 0:
        return
    num_d = d_count[groups]
    first = np.cumsum(num_d) - num_d                        # where each group starts among the N detections
    within = np.arange(num_d.sum()) - np.repeat(first, num_d)                              # [N] rank in group
    detections = np.repeat(d_start[groups], num_d) + within
    gt = np.repeat(g_start[groups], num_d)                                                # [N] its gt's row
    crowd = gt_crowd[gt][:, None]
    reaches = ious[np.repeat(offset[groups], num_d) + within][:, None] >= thresholds       # [N, T]
    so_far = np.cumsum(reaches, axis=0)                     # running counts over all groups, less each group's
    takes = reaches & ((so_far - np.repeat((so_far - reaches)[first], num_d, axis=0) == 1) | crowd)   # start
    area = gt_area[gt][:, None]
    ignored = crowd | (area < gt_range[0]) | (area > gt_range[1])                        # [N, A]
    code = np.where(ignored, 2, np.where((gt_id[gt] != 0)[:, None], 1, unmatched[detections]))     # [N, A]
    some = np.flatnonzero(takes.any(axis=1))                # most detections take no gt at any threshold
    codes[detections[some]] = np.where(takes[some][:, None, :], code[some][:, :, None], codes[detections[some]])


def _last_best(ious, allowed):
    """Per (group, area range, IoU threshold): the last slot of greatest IoU among the `allowed` ones (the gt a
    pycocotools scan keeps: an equal IoU later in the order replaces the earlier), and whether there is one.

    ious [G, S]; allowed [G, S, A, T] -> slot [G, A, T], found [G, A, T].
    """
    values = np.where(allowed, ious[:, :, None, None], -np.inf)
    best = values.max(axis=1, keepdims=True)
    at_best = allowed & (values == best)
    slots = ious.shape[1]
    return slots - 1 - np.argmax(at_best[:, ::-1], axis=1), allowed.any(axis=1)


def _match_stepwise(groups, slots, offset, d_start, d_count, g_start, g_count, ious, gt_area, gt_crowd, gt_id,
                    gt_range, thresholds, unmatched, codes) -> None:
    """`_match` for groups of up to `slots` gts. Sequential within a group but independent across groups: step
    k handles the k-th detection of every group at once (groups sorted by their number of detections, so those
    still going are a prefix), the gts of a group padded to `slots`."""
    groups = groups[np.argsort(-d_count[groups], kind="stable")]
    num_d, num_g = d_count[groups], g_count[groups]
    slot = np.arange(slots)
    real = slot < num_g[:, None]                                                             # [G, S]
    clamped = np.minimum(slot, num_g[:, None] - 1)
    rows = g_start[groups][:, None] + clamped                                                # [G, S] gt rows
    area = gt_area[rows][:, :, None]
    crowd = gt_crowd[rows] & real
    ignored = crowd[:, :, None] | (area < gt_range[0]) | (area > gt_range[1])               # [G, S, A]
    regular_slot = (real[:, :, None] & ~ignored)[..., None]                                  # [G, S, A, 1]
    ignored_slot = (real[:, :, None] & ignored)[..., None]
    countable = gt_id[rows] != 0
    num_areas = ignored.shape[2]
    taken = np.zeros((len(groups), slots, num_areas, len(thresholds)), bool)
    area_index = np.arange(num_areas)[None, :, None]
    for k in range(int(num_d[0]) if len(groups) else 0):
        going = int(np.count_nonzero(num_d > k))
        pair_rows = (offset[groups[:going]] + k * num_g[:going])[:, None] + clamped[:going]
        iou = ious[pair_rows]                                                                # [G', S]
        free = (iou[:, :, None, None] >= thresholds) & ~taken[:going]                       # [G', S, A, T]
        regular, found_regular = _last_best(iou, free & regular_slot[:going])
        other, found_other = _last_best(iou, free & ignored_slot[:going])
        slot_of = np.where(found_regular, regular, other)                                   # [G', A, T]
        matched = found_regular | found_other
        group_index = np.arange(going)[:, None, None]
        detections = d_start[groups[:going]] + k
        code = np.where(ignored[group_index, slot_of, area_index], 2,
                        np.where(countable[group_index, slot_of], 1, unmatched[detections][:, :, None]))
        codes[detections] = np.where(matched, code, codes[detections])
        g, a, t = np.nonzero(matched & ~crowd[group_index, slot_of])
        taken[g, slot_of[g, a, t], a, t] = True


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

    # detections likewise, by score inside each group (stable: ties keep file order), the best max_det kept.
    # One float sort serves twice: by score, then group, then file order; re-sorted by group (stable, by radix)
    # that is the group order, and it is the order COCOeval.accumulate wants (see below).
    keep = np.isin(res.image_id, images) & np.isin(res.category_id, categories)
    d_rows = np.flatnonzero(keep)
    d_key = (np.searchsorted(images, res.image_id[d_rows]) * num_categories
             + np.searchsorted(categories, res.category_id[d_rows]))
    by_key = np.argsort(d_key, kind="stable")               # quick: result files are usually grouped by image
    by_score = by_key[np.argsort(-res.score[d_rows][by_key], kind="stable")]
    order = by_score[_radix_argsort(d_key[by_score])]                # by group, then score, then file order
    d_rows, d_key = d_rows[order], d_key[order]
    group_start = _run_starts(d_key)
    group_end = np.r_[group_start[1:], len(d_key)].astype(np.int64)
    rank = np.arange(len(d_key)) - np.repeat(group_start, group_end - group_start)
    cut = rank < max_det
    kept, place = np.empty(len(order), bool), np.empty(len(order), np.int64)
    kept[order], place[order] = cut, np.cumsum(cut) - 1           # by kept detection: its place after the cut
    by_score = place[by_score[kept[by_score]]]
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
    if iou_type == "bbox":                                              # [sum over groups of D_k * G_k]
        dt_boxes = res.boxes[d_rows]
        missing = np.isnan(dt_boxes[:, 0])     # segmentation-only results: the box of the mask (loadRes)
        if missing.any():
            dt_boxes[missing] = dt_masks.boxes[missing]
        ious = _box_iou_pairs(dt_boxes[pair_dt], gt.boxes[g_rows][pair_gt], gt_crowd[pair_gt])
    else:
        from scenekit import masks

        packed = _pack(dt_mask_list + [_gt_mask(gt, row) for row in g_rows.tolist()])
        ious = np.empty(len(pair_dt), np.float64)
        masks._rle_iou_pairs(packed.counts, packed.starts, packed.lengths, packed.heights, packed.widths,
                             packed.boxes, pair_dt, pair_gt + len(d_rows), gt_crowd[pair_gt], ious)

    # detection areas as loadRes sets them: box area if the first result has a box, else the mask area
    if res.box_mode:
        dt_area = res.boxes[d_rows, 2] * res.boxes[d_rows, 3]
    else:
        dt_area = dt_masks.areas().astype(np.float64)
    codes = _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt.areas[g_rows], gt_crowd,
                   gt.ann_id[g_rows], area_lo, area_hi, iou_thresholds)

    # non-ignored gts per (category, area range)
    g_category = g_key % num_categories if num_categories else g_key
    num_gt = np.zeros((len(categories), len(area_ranges)), np.int64)
    for a in range(len(area_ranges)):
        regular = ~gt_crowd & (gt.areas[g_rows] >= area_lo[a]) & (gt.areas[g_rows] <= area_hi[a])
        num_gt[:, a] = np.bincount(g_category[regular], minlength=len(categories))
    # COCOeval.accumulate sorts each category's detections, concatenated in image order, by score with a
    # stable mergesort: by (category, score, image, rank). `by_score` is by (score, image, category, rank)
    # already (group keys are image-major; in a group, file order is rank order among equal scores), so one
    # stable sort by category gives every category's order at once; for maxDets 1 and 10 it is the subsequence.
    score = res.score[d_rows]
    d_category = d_key % num_categories if num_categories else d_key
    by_score = by_score[_radix_argsort(d_category[by_score])]
    category_start = np.searchsorted(d_category[by_score], np.arange(len(categories) + 1))
    return _Matched(categories, images, score, rank, by_score, category_start, codes, num_gt)


def _radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers, 16 bits at a time from the lowest (numpy sorts 16-bit
    integers by radix: a few linear passes instead of a comparison sort)."""
    order = np.arange(len(keys))
    top, shift = int(keys.max()) if len(keys) else 0, 0
    while True:
        order = order[np.argsort(((keys[order] >> shift) & 0xFFFF).astype(np.uint16), kind="stable")]
        shift += 16
        if top >> shift == 0:
            return order


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _sorted_unique(sorted_keys: np.ndarray) -> np.ndarray:
    return sorted_keys[_run_starts(sorted_keys)]


def _pack(mask_list):
    from scenekit import masks

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
    from scenekit import masks

    try:
        return masks.annotation_runs(segmentation, height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=res.source, record=f"record {row}", field="segmentation") from None


def _gt_mask(gt: _GroundTruth, row: int):
    image = np.searchsorted(gt.image_ids, gt.ann_image[row])
    height, width = int(gt.heights[image]), int(gt.widths[image])
    from scenekit import masks

    try:
        return masks.annotation_runs(gt.segmentations[row], height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=gt.source, record=f"annotation {row} (id {gt.ann_id[row]})",
                        field="segmentation") from None


def _ranked(matched: _Matched, k: int, max_det: int) -> np.ndarray:
    """Detections of category k among each image's best max_det, in COCOeval.accumulate's score order."""
    chosen = matched.by_score[matched.category_start[k]:matched.category_start[k + 1]]
    return chosen[matched.rank[chosen] < max_det]


def _accumulate(matched: _Matched, iou_thresholds, max_dets):
    """COCOeval.accumulate: precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M].

    pycocotools walks each (category, area range, maxDets, IoU threshold) curve over the detections in score
    order: recall TP / #gt, precision TP / (TP + FP + eps) (ignored detections count as neither), made monotone
    from the right, sampled where recall first reaches each of the 101 thresholds (searchsorted side='left';
    0 where never reached). Recall only moves at a TP, and precision only rises at one, so all of that is read
    off the TPs: recall first reaches r at the q-th TP, q the least count whose quotient q / #gt is >= r (the
    float pycocotools compares), and the envelope there is the largest precision at this or a later TP. Per
    category and maxDets, every (area range, IoU threshold) column is done at once. A category without gt in
    an area range stays -1.
    """
    T, R = len(iou_thresholds), len(RECALL_THRESHOLDS)
    K, A, M = len(matched.category_ids), matched.codes.shape[1], len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    order = matched.by_score
    rank = matched.rank[order]
    chosen = [np.flatnonzero(rank < max_det) for max_det in max_dets]   # each maxDets' detections, score order
    positions = [order[c] for c in chosen]
    starts = [np.searchsorted(c, matched.category_start) for c in chosen]
    by_detection = matched.codes.reshape(len(matched.codes), A * T)                        # [D, A * T]
    eps = np.spacing(1)
    for k in range(K):
        areas = np.flatnonzero(matched.num_gt[k] > 0)
        if len(areas) == 0:
            continue
        positives = matched.num_gt[k, areas]                                                # [A']
        columns = (areas[:, None] * T + np.arange(T)).ravel()                             # [C] (a, t) pairs
        needed = np.stack([np.searchsorted(np.arange(g + 1) / g, RECALL_THRESHOLDS, side="left")
                           for g in positives.tolist()])                                     # [A', R]
        needed = np.repeat(needed, T, axis=0)                                               # [C, R]
        shape = (len(areas), T, R)
        for m in range(M):
            rows = positions[m][starts[m][k]:starts[m][k + 1]]                              # [n] in score order
            if len(rows) == 0:
                precision[:, :, k, areas, m] = 0.0
                scores[:, :, k, areas, m] = 0.0
                recall[:, k, areas, m] = 0.0
                continue
            n = len(rows)
            codes = by_detection[rows].T                                # rows gathered whole: 40 bytes each
            codes = np.ascontiguousarray(codes if len(columns) == A * T else codes[columns])   # [C, n]
            counted = np.cumsum(codes != 2, axis=1, dtype=np.int32)                          # TP + FP so far
            tp_column, tp_row = np.divmod(np.flatnonzero(codes == 1), n)  # every TP, by column then row
            num_tp = np.bincount(tp_column, minlength=len(columns))                          # [C]
            first_tp = np.cumsum(num_tp) - num_tp
            count = np.arange(1, len(tp_column) + 1) - first_tp[tp_column]                 # q of each TP
            at_tp = np.full((len(columns), max(int(num_tp.max()), 1)), -np.inf)              # [C, Q] precision
            at_tp[tp_column, count - 1] = count / (counted[tp_column, tp_row] + eps)
            envelope = np.maximum.accumulate(at_tp[:, ::-1], axis=1)[:, ::-1]
            recall[:, k, areas, m] = (num_tp.reshape(len(areas), T) / positives[:, None]).T
            # sample r is the needed[r]-th TP (the first detection for needed 0), if there are that many
            q = needed
            reached = q <= num_tp[:, None]
            which = np.minimum(np.maximum(q, 1), np.maximum(num_tp[:, None], 1)) - 1        # [C, R] TP index
            column = np.arange(len(columns))[:, None]
            value = np.where(reached, np.maximum(envelope[column, which], 0.0), 0.0)
            tp_index = np.minimum(first_tp[:, None] + which, max(len(tp_row) - 1, 0))
            row = np.where(q == 0, 0, tp_row[tp_index] if len(tp_row) else 0)
            score = np.where(reached, matched.score[rows][row], 0.0)
            precision[:, :, k, areas, m] = value.reshape(shape).transpose(1, 2, 0)
            scores[:, :, k, areas, m] = score.reshape(shape).transpose(1, 2, 0)
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


@_gc_paused()
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
    res = _load_results(results, ground_truth.image_ids, ground_truth.category_ids, ground_truth.file_names)
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


@_gc_paused()
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
    res = _load_results(results, ground_truth.image_ids, ground_truth.category_ids, ground_truth.file_names)
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
    figure, axes = plt.subplots(figsize=(8.5, 5))              # 850 x 500 px, the legend beside the axes
    for category, curve in curves.items():
        name = (names or {}).get(category, str(category))
        recall = np.r_[0.0, curve.recall]
        precision = np.r_[curve.precision[0] if len(curve.precision) else 0.0, curve.precision]
        axes.step(recall, precision, where="post", label=f"{name} (AP {curve.ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ================================================================================================ Pascal VOC
def _voc_match(dt_boxes, g_start, g_count, gt_boxes, gt_difficult, iou_threshold, one):
    """VOCevaldet.m's loop over detections in decreasing confidence: 1 TP, 0 FP, 2 ignored (difficult).

    Each detection's best gt (largest overlap among the gts of its image and class, the first of equal ones)
    does not depend on the other detections; only whether it was already detected does. So the overlaps of
    all (detection, gt) pairs are computed at once, and of the detections whose best gt is a regular one with
    overlap >= the threshold, the first (most confident) of each gt is its TP, the later ones duplicates (FP).
    """
    num_d = len(dt_boxes)
    offset, pair_d, pair_g = _pair_indices(np.arange(num_d), np.ones(num_d, np.int64), g_start, g_count)
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
    ground = _load_ground_truth(gt, "bbox")
    xyxy = ground.boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    return _VocGroundTruth(ground.image_ids, ground.file_names, ground.category_ids, ground.ann_image,
                           ground.ann_category, xyxy, ground.difficult | ground.iscrowd)


@_gc_paused()
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
    res = _load_results(results, ground.image_ids, ground.category_ids, ground.file_names)
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
