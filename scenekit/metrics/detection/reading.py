"""Reading what a detection evaluation compares: COCO ground truth and COCO result records, checked and turned
into arrays.

Both come as Python objects or as JSON files (`read_json`: orjson when installed, with the cyclic garbage
collector paused). Each loader has a fast path that reads whole columns with numpy and checks them vectorised,
and a slow pass that runs only when a check fails, to name the first bad record and field (a one-line
`DataError`). The slow pass checks a box and a segmentation as `scenekit.data.coco` checks them when it reads
and writes COCO files (`check_xywh`, `check_segmentation_form`); it imports them only then, so an evaluation
does not pay for importing the data package. What the evaluation reads beyond the COCO format - a `difficult`
flag (VOC), result records that name their image by `file_name` (`scenekit.metrics.result_images`) - is
described where it is read.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np

from scenekit.errors import DataError
from scenekit.metrics.result_images import result_image_ids

try:                                    # a runtime dependency; the standard library's parser when absent
    import orjson
except ImportError:                     # pragma: no cover - exercised by tests that hide the module
    orjson = None


# ======================================================================================================== JSON
@contextlib.contextmanager
def gc_paused():
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
    with gc_paused():
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


# ===================================================================================================== columns
def _is_int(value) -> bool:
    """An integer, Python's or numpy's, not a bool (the images' and categories' ids, read one by one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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


# ================================================================================================ ground truth
@dataclass
class GroundTruth:
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


def load_ground_truth(gt, iou_type: str) -> GroundTruth:
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
    return GroundTruth(source, image_ids, [file_names[i] for i in image_ids.tolist()], sizes[:, 0], sizes[:, 1],
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
    """The slow pass: the first annotation the fast path refused, and why."""
    from scenekit.data.coco import check_segmentation_form, check_xywh
    from scenekit.data.files import is_number

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
            check_xywh(ann.get("bbox"), error_at("annotation", index, "bbox"))
        for key in ("iscrowd", "difficult"):
            value = ann.get(key, 0)
            if not (is_number(value) or isinstance(value, bool)):
                raise error_at("annotation", index, key)(f"must be 0 or 1, got {value!r}")
        if "area" in ann:
            area = ann["area"]
            if not is_number(area) or area < 0:
                raise error_at("annotation", index, "area")(f"must be a finite number >= 0, got {area!r}")
        if "segmentation" in ann:
            check_segmentation_form(ann["segmentation"], error_at("annotation", index, "segmentation"))
        elif iou_type == "segm":
            raise error_at("annotation", index, "segmentation")("missing (needed for segm evaluation)")


def _segmentation_runs(segmentation, height, width, source, record) -> np.ndarray:
    from scenekit import masks

    try:
        return masks.annotation_runs(segmentation, height, width)[0]
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=source, record=record, field="segmentation") from None


# ===================================================================================================== results
@dataclass
class Results:
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


def load_results(results, image_ids: np.ndarray, category_ids: np.ndarray, file_names=None) -> Results:
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
                from scenekit.data.coco import check_xywh

                check_xywh(record["bbox"], _result_error(source, index, "bbox"))
                boxes[index] = record["bbox"]
    return Results(source, image_id, category_id, score, boxes, box_mode, results)


def _result_error(source, index, field_name):
    return lambda message: DataError(message, file=source, record=f"record {index}", field=field_name)


def _find_bad_result(results, image_ids, category_ids, box_mode, source, named_ids=None) -> None:
    """The slow pass: the first result record the fast path refused, and why."""
    from scenekit.data.coco import check_segmentation_form, check_xywh
    from scenekit.data.files import is_number

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
        if not is_number(value):
            raise _result_error(source, index, "score")(f"must be a finite number, got {value!r}")
        if box_mode:
            if "bbox" not in r:
                raise _result_error(source, index, "bbox")("missing (the first result has a bbox, so all must)")
            check_xywh(r["bbox"], _result_error(source, index, "bbox"))
        elif "segmentation" not in r:
            raise _result_error(source, index, "segmentation")("missing: a result needs a bbox or a segmentation")
        if "segmentation" in r:
            check_segmentation_form(r["segmentation"], _result_error(source, index, "segmentation"))


# ============================================================================================= Dataset -> COCO
def dataset_to_coco_dict(dataset) -> dict:
    """A `Dataset` as a COCO instances dict, so its models are evaluated by the same code as COCO files: the
    dict `scenekit.data.coco.to_coco_dict` writes, with `"difficult": 1` on difficult objects (read by
    `voc_evaluate`; COCO ignores it)."""
    from scenekit.data.coco import to_coco_dict

    return to_coco_dict(dataset, difficult=True)
