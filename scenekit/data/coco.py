"""COCO JSON: instances, captions and detection-result files, read and written (Lin et al. 2014).

An instances file is `{"images": [...], "annotations": [...], "categories": [...]}`; each annotation holds
`bbox` as `[x, y, w, h]` (continuous pixel edges: the box covers x..x+w), `area` (the *mask* area, which COCO's
small/medium/large ranges use), `iscrowd`, and `segmentation` as polygons (`[[x1, y1, x2, y2, ...], ...]`) or
as RLE (`{"size": [h, w], "counts": ...}`, always for crowd regions). A captions file has the same `images`
and annotations `{"id", "image_id", "caption"}`. A result file is a bare list of
`{"image_id", "category_id", "bbox", "score"[, "segmentation"]}`.

The reader checks what pycocotools and the evaluation silently assume: unique ids, known categories and
images, boxes of positive size inside the image (up to `files.BORDER_TOLERANCE` = 1 px past the border, kept
unchanged), well-formed polygons and RLEs, and that the image files exist and decode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scenekit.data.files import Problems, check_box, check_image, export_image, is_number, load_json
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError


# ------------------------------------------------------------------------------------------------- reading
def read_coco(json_path, image_root=None, *, skip_invalid: bool = False, report_path=None,
              check_images: bool | str = True, captions_path=None) -> Dataset:
    """Read a COCO instances (or captions) file into a `Dataset`.

    image_root: folder that `file_name`s are relative to; default the JSON file's folder.
    skip_invalid: drop invalid images/annotations instead of raising, listing each in the report
        (`report_path`, JSON) and in a warning.
    check_images: True checks each image file's header (exists, PIL can open it, size matches `width` and
        `height`); "full" also decodes every pixel (catches truncated files); False checks nothing on disk.
    captions_path: a COCO captions file whose captions are attached to the same image ids.
    """
    json_path = Path(json_path)
    problems = Problems(json_path, skip_invalid, report_path)
    data = load_json(json_path)
    if isinstance(data, list):
        raise DataError("holds a list, not an object with 'images': this looks like a detection results "
                        "file; read it with read_coco_results", file=str(json_path))
    if not isinstance(data, dict):
        raise DataError(f"top level must be a JSON object, got {type(data).__name__}", file=str(json_path))
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise problems.error(f"must be a list, got {type(data[key]).__name__}", field=key)
    if "images" not in data:
        raise problems.error("missing the 'images' list", field="images")

    image_root = Path(image_root) if image_root is not None else json_path.parent
    categories = _read_categories(data.get("categories", []), problems)
    images = _read_images(data["images"], image_root, problems, check_images)
    annotations = _read_annotations(data.get("annotations", []), images, categories, problems)

    records = []
    for image_id, info in images.items():
        anns = annotations.get(image_id, {"instances": [], "captions": []})
        records.append(_make_record(image_id, info, anns["instances"], anns["captions"]))
    dataset = Dataset(records, categories, image_root, name=json_path.stem, skipped=problems.skipped)
    problems.finish(len(records), sum(len(a["instances"]) for a in annotations.values()))
    if captions_path is not None:
        attach_captions(dataset, captions_path)
    return dataset


def attach_captions(dataset: Dataset, captions_path) -> Dataset:
    """Add the captions of a COCO captions file to the records with the same image ids (in place)."""
    captions_path = Path(captions_path)
    problems = Problems(captions_path)
    data = load_json(captions_path, "captions file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError("a captions file must be an object with an 'annotations' list", file=str(captions_path),
                        field="annotations")
    by_id = {record.image_id: record for record in dataset.records}
    dropped = {s["id"] for s in dataset.skipped if s["kind"] == "image"}   # skipped with their image
    for index, ann in enumerate(data["annotations"]):
        where = _where("annotation", ann, index)
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            raise problems.error("caption must be a non-empty string", record=where, field="caption")
        if ann.get("image_id") in dropped:
            continue
        if ann.get("image_id") not in by_id:
            raise problems.error(f"image_id {ann.get('image_id')!r} is not an image of {dataset.name or 'the dataset'}",
                                 record=where, field="image_id")
        by_id[ann["image_id"]].captions.append(caption.strip())
    return dataset


def attach_questions(dataset: Dataset, questions_path) -> Dataset:
    """Add multiple-choice questions from a JSON list of `{image_id, question, choices, answer, kind}` (the
    world's `questions_<split>.json`; Visual7W-style telling questions, Zhu et al. 2016) to the records."""
    from scenekit.data.records import Question

    questions_path = Path(questions_path)
    problems = Problems(questions_path)
    data = load_json(questions_path, "questions file")
    if not isinstance(data, list):
        raise DataError("a questions file must be a JSON list", file=str(questions_path))
    by_id = {record.image_id: record for record in dataset.records}
    dropped = {s["id"] for s in dataset.skipped if s["kind"] == "image"}   # skipped with their image
    for index, entry in enumerate(data):
        where = f"questions[{index}]"
        if isinstance(entry, dict) and entry.get("image_id") in dropped:
            continue
        if not isinstance(entry, dict) or entry.get("image_id") not in by_id:
            raise problems.error("image_id is missing or not an image of the dataset", record=where, field="image_id")
        if not isinstance(entry.get("question"), str) or not entry["question"].strip():
            raise problems.error("question must be a non-empty string", record=where, field="question")
        choices = entry.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise problems.error("choices must be a list of at least 2 strings", record=where, field="choices")
        if not _is_int(entry.get("answer")) or not 0 <= entry["answer"] < len(choices):
            raise problems.error(f"answer must index choices (0..{len(choices) - 1}), got {entry.get('answer')!r}",
                                 record=where, field="answer")
        by_id[entry["image_id"]].questions.append(
            Question(entry["question"], list(choices), entry["answer"], str(entry.get("kind", "other"))))
    return dataset


def _where(kind: str, entry, index: int) -> str:
    """'annotation id 7' when the entry has a usable id, else 'annotations[3]'."""
    if isinstance(entry, dict) and isinstance(entry.get("id"), int) and not isinstance(entry.get("id"), bool):
        return f"{kind} id {entry['id']}"
    return f"{kind}s[{index}]"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_categories(entries: list, problems: Problems) -> dict[int, str]:
    categories: dict[int, str] = {}
    for index, entry in enumerate(entries):
        where = _where("category", entry, index)
        try:
            if not isinstance(entry, dict) or not _is_int(entry.get("id")):
                raise problems.error("category needs an integer 'id'", record=where, field="id")
            if not isinstance(entry.get("name"), str):
                raise problems.error("category needs a string 'name'", record=where, field="name")
            if entry["id"] in categories:
                raise problems.error(f"duplicate category id {entry['id']}", record=where, field="id")
        except DataError as error:
            problems.handle(error, kind="category", ident=entry.get("id") if isinstance(entry, dict) else None)
            continue
        categories[entry["id"]] = entry["name"]
    return categories


def _read_images(entries: list, image_root: Path, problems: Problems, check_images) -> dict[int, dict]:
    images: dict[int, dict] = {}
    seen: dict[int, int] = {}                     # id -> index of its first entry
    for index, entry in enumerate(entries):
        where = _where("image", entry, index)
        ident = entry.get("id") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict) or not _is_int(ident):
                raise problems.error("image needs an integer 'id'", record=where, field="id")
            if ident in seen:
                raise problems.error(f"duplicate image id {ident} (first at images[{seen[ident]}])",
                                     record=f"images[{index}]", field="id")
            seen[ident] = index
            if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
                raise problems.error("image needs a non-empty string 'file_name'", record=where, field="file_name")
            for key in ("width", "height"):
                value = entry.get(key)
                if not is_number(value) or float(value) != int(value) or int(value) <= 0:
                    raise problems.error(f"{key} must be a positive integer, got {value!r}", record=where, field=key)
            width, height = int(entry["width"]), int(entry["height"])
            if check_images:
                path = Path(entry["file_name"])
                path = path if path.is_absolute() else image_root / path
                check_image(path, width, height, problems, record=where, decode=check_images == "full")
        except DataError as error:
            problems.handle(error, kind="image", ident=ident)
            continue
        images[ident] = {"file_name": entry["file_name"], "width": width, "height": height}
    return images


def _read_annotations(entries: list, images: dict, categories: dict, problems: Problems) -> dict[int, dict]:
    """Group valid annotations by image id: {image_id: {"instances": [...], "captions": [...]}}."""
    grouped: dict[int, dict] = {}
    seen: dict[int, int] = {}                     # id -> index of its first entry
    for index, ann in enumerate(entries):
        where = _where("annotation", ann, index)
        ident = ann.get("id") if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict) or not _is_int(ident):
                raise problems.error("annotation needs an integer 'id'", record=where, field="id")
            if ident in seen:
                raise problems.error(f"duplicate annotation id {ident} (first at annotations[{seen[ident]}])",
                                     record=f"annotations[{index}]", field="id")
            seen[ident] = index
            image_id = ann.get("image_id")
            if image_id not in images:
                reason = "was skipped as invalid" if problems.skip_invalid else "is not in 'images'"
                raise problems.error(f"image_id {image_id!r} {reason}", record=where, field="image_id")
            slot = grouped.setdefault(image_id, {"instances": [], "captions": []})
            if "caption" in ann and "bbox" not in ann:
                if not isinstance(ann["caption"], str) or not ann["caption"].strip():
                    raise problems.error("caption must be a non-empty string", record=where, field="caption")
                slot["captions"].append(ann["caption"].strip())
                continue
            slot["instances"].append(_check_instance(ann, images[image_id], categories, problems, where))
        except DataError as error:
            problems.handle(error, kind="annotation", ident=ident)
    return grouped


def _check_instance(ann: dict, image: dict, categories: dict, problems: Problems, where: str) -> dict:
    if ann.get("category_id") not in categories:
        raise problems.error(f"unknown category_id {ann.get('category_id')!r} (known: "
                             f"{sorted(categories)[:20]})", record=where, field="category_id")
    bbox = ann.get("bbox")
    check_xywh(bbox, lambda message: problems.error(message, record=where, field="bbox"))
    x, y, w, h = (float(v) for v in bbox)
    check_box((x, y, x + w, y + h), image["width"], image["height"], problems, record=where, field="bbox")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):          # True/False compare equal to 1/0 and are accepted
        raise problems.error(f"iscrowd must be 0 or 1, got {iscrowd!r}", record=where, field="iscrowd")
    area = ann.get("area")
    if area is not None and (not is_number(area) or area < 0):
        raise problems.error(f"area must be a finite number >= 0, got {area!r}", record=where, field="area")
    segmentation = ann.get("segmentation")
    if segmentation is not None:
        _check_segmentation(segmentation, image, problems, where)
    return {"id": ann["id"], "box": (x, y, x + w, y + h), "category_id": ann["category_id"],
            "iscrowd": bool(iscrowd), "area": None if area is None else float(area), "segmentation": segmentation}


def check_xywh(box, error) -> None:
    """A COCO box `[x, y, w, h]`: 4 finite numbers, w and h >= 0; else `error(message)` is raised (a DataError
    that names the file, record and field). Shared with the evaluation's reading of results and ground truth
    (`scenekit.metrics.detection.reading`)."""
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4 or not all(is_number(v) for v in box):
        raise error(f"must be 4 finite numbers [x, y, w, h], got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise error(f"has negative size (w {box[2]:g}, h {box[3]:g})")


def check_segmentation_form(segmentation, error) -> None:
    """A COCO segmentation's form: polygons (a list of lists of finite numbers) or an RLE (a dict with `size`
    and `counts`, a string or a list); else `error(message)` is raised. What only rasterising can tell (and,
    reading a file, the sizes: `_check_segmentation`) is checked elsewhere."""
    if isinstance(segmentation, dict):
        if "size" not in segmentation or "counts" not in segmentation:
            raise error("an RLE needs 'size' and 'counts'")
        if not isinstance(segmentation["counts"], (str, list)):
            raise error("RLE counts must be a string or a list of integers")
    elif isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
                raise error("polygons must be lists of finite numbers [x1, y1, x2, y2, ...]")
    else:
        raise error(f"must be polygons (a list) or an RLE (a dict), got {type(segmentation).__name__}")


def _check_segmentation(segmentation, image: dict, problems: Problems, where: str) -> None:
    """Its form, then what an instances file adds: polygons of >= 3 points, an RLE of the image's size."""
    def error(message):
        return problems.error(message, record=where, field="segmentation")

    check_segmentation_form(segmentation, error)
    if isinstance(segmentation, list):
        if not segmentation:
            raise error("empty polygon list")
        for k, polygon in enumerate(segmentation):
            if not polygon:
                raise error(f"polygon {k} is empty")
            if len(polygon) < 6 or len(polygon) % 2:
                raise error(f"polygon {k} must be an even number (>= 6) of finite coordinates x1, y1, x2, y2, ..., "
                            f"got {len(polygon)} values")
        return
    if list(segmentation["size"]) != [image["height"], image["width"]]:
        raise problems.error(f"RLE size {segmentation['size']} differs from the image's "
                             f"[height, width] = [{image['height']}, {image['width']}]", record=where,
                             field="segmentation")
    counts = segmentation["counts"]
    try:
        if isinstance(counts, str):
            from scenekit.masks import string_to_counts
            counts = string_to_counts(counts)
        total = sum(int(c) for c in counts) if all(_is_int(c) and c >= 0 for c in counts) else -1
    except (TypeError, ValueError):
        total = -1
    if total != image["height"] * image["width"]:
        raise problems.error(f"RLE counts must be non-negative integers summing to height * width = "
                             f"{image['height'] * image['width']}", record=where, field="segmentation")


def _make_record(image_id: int, info: dict, instances: list, captions: list) -> Record:
    boxes = np.array([a["box"] for a in instances], dtype=np.float64).reshape(-1, 4)
    areas = [a["area"] if a["area"] is not None else (a["box"][2] - a["box"][0]) * (a["box"][3] - a["box"][1])
             for a in instances]       # a missing "area" falls back to the box area
    has_masks = any(a["segmentation"] is not None for a in instances)
    return Record(
        image_id=image_id, file_name=info["file_name"], width=info["width"], height=info["height"],
        boxes=boxes, labels=[a["category_id"] for a in instances], ann_ids=[a["id"] for a in instances],
        iscrowd=[a["iscrowd"] for a in instances], areas=areas,
        segmentations=[a["segmentation"] for a in instances] if has_masks else None, captions=list(captions))


# ------------------------------------------------------------------------------------------------- writing
def to_coco_dict(dataset: Dataset, file_names: dict | None = None, *, difficult: bool = False) -> dict:
    """The COCO instances dict of a dataset (what `write_coco` writes; the evaluation reads a Dataset as this).

    Boxes become `[x1, y1, x2 - x1, y2 - y1]`; `area` is the record's (mask) area when given, else the box area.
    Annotation ids are the records' `ann_ids` when they are unique across the dataset and >= 1, else they are
    renumbered 1..M in order (pycocotools' evaluation treats id 0 as "unmatched"). `difficult`: mark difficult
    objects `"difficult": 1` (VOC's flag, which `scenekit.metrics.detection.voc_evaluate` honours).
    """
    file_names = file_names or {}
    all_ids = np.concatenate([r.ann_ids for r in dataset.records]) if dataset.records else np.zeros(0)
    keep_ids = len(np.unique(all_ids)) == len(all_ids) and (len(all_ids) == 0 or all_ids.min() >= 1)
    images, annotations, next_id = [], [], 1
    for index, record in enumerate(dataset.records):
        images.append({"id": int(record.image_id), "file_name": file_names.get(index, record.file_name),
                       "width": int(record.width), "height": int(record.height)})
        for k, (x1, y1, x2, y2) in enumerate(record.boxes.tolist()):
            ann = {"id": int(record.ann_ids[k]) if keep_ids else next_id, "image_id": int(record.image_id),
                   "category_id": int(record.labels[k]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                   "area": float(record.areas[k]) if record.areas is not None else (x2 - x1) * (y2 - y1),
                   "iscrowd": int(record.iscrowd[k])}
            segmentation = record.segmentations[k] if record.segmentations is not None else None
            if segmentation is not None:
                ann["segmentation"] = _plain(segmentation)
            if difficult and record.difficult[k]:
                ann["difficult"] = 1
            annotations.append(ann)
            next_id += 1
    categories = [{"id": int(i), "name": name, "supercategory": ""} for i, name in sorted(dataset.categories.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


def _copy_stems(dataset: Dataset) -> list[str]:
    """Names for the images' copies: their file stems, with `_<image id>` added where two images share one
    (COCO, unlike VOC and YOLO, does not key annotations by file name, so such a set stays writable)."""
    from collections import Counter

    stems = [Path(record.file_name).stem for record in dataset.records]
    shared = {stem for stem, count in Counter(stems).items() if count > 1}
    return [f"{stem}_{record.image_id}" if stem in shared else stem for stem, record in zip(stems, dataset.records)]


def write_coco(dataset: Dataset, json_path, image_dir=None) -> Path:
    """Write a COCO instances file; with `image_dir`, also put every image there (in-memory ones as PNG,
    files as copies) and point `file_name` at them, relative to the JSON's folder.

    Without `image_dir`, file-backed images stay where they are and `file_name` is rewritten relative to the
    new JSON's folder, so the file reads back from anywhere.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    file_names = {}
    stems = _copy_stems(dataset) if image_dir is not None else []
    for index, record in enumerate(dataset.records):
        if image_dir is not None:
            path = export_image(dataset, record, Path(image_dir), stems[index])
        elif record.image is None:
            path = dataset.image_path(record)
        else:
            continue
        file_names[index] = Path(os.path.relpath(Path(path).resolve(), json_path.parent.resolve())).as_posix()
    json_path.write_text(json.dumps(to_coco_dict(dataset, file_names)))
    return json_path


def write_coco_captions(dataset: Dataset, json_path) -> Path:
    """Write the records' captions as a COCO captions file (`{"images", "annotations": [{id, image_id, caption}]}`)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"id": int(r.image_id), "file_name": r.file_name, "width": int(r.width), "height": int(r.height)}
              for r in dataset.records]
    pairs = [(int(r.image_id), c) for r in dataset.records for c in r.captions]
    annotations = [{"id": number, "image_id": image_id, "caption": caption}
                   for number, (image_id, caption) in enumerate(pairs, start=1)]
    json_path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return json_path


def _plain(value):
    """numpy scalars/arrays and bytes -> JSON-able Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------------- results
def read_coco_results(path) -> list[dict]:
    """Read and check a COCO detection results file: a list of `{image_id, category_id, bbox, score}`
    (optionally `segmentation` as RLE); caption results `{image_id, caption}` are accepted too."""
    path = Path(path)
    results = load_json(path, "results file")
    if isinstance(results, dict) and "annotations" in results:
        raise DataError("is an object with 'annotations' (a ground-truth file?); a results file is a bare list",
                        file=str(path))
    if not isinstance(results, list):
        raise DataError(f"a results file must be a JSON list, got {type(results).__name__}", file=str(path))
    for index, result in enumerate(results):
        _check_result(result, index, str(path))
    return results


def write_coco_results(results, path) -> Path:
    """Check and write detection (or caption) results as a COCO results file."""
    path = Path(path)
    results = [_plain(dict(r)) for r in results]
    for index, result in enumerate(results):
        _check_result(result, index, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def _check_result(result, index: int, file) -> None:
    where = f"results[{index}]"
    if not isinstance(result, dict):
        raise DataError("each result must be an object", file=file, record=where)
    if not _is_int(result.get("image_id")):
        raise DataError(f"image_id must be an integer, got {result.get('image_id')!r}", file=file, record=where,
                        field="image_id")
    if "caption" in result:
        if not isinstance(result["caption"], str):
            raise DataError("caption must be a string", file=file, record=where, field="caption")
        return
    if not _is_int(result.get("category_id")):
        raise DataError(f"category_id must be an integer, got {result.get('category_id')!r}", file=file,
                        record=where, field="category_id")
    if not is_number(result.get("score")):
        raise DataError(f"score must be a finite number, got {result.get('score')!r}", file=file, record=where,
                        field="score")
    bbox = result.get("bbox")
    if bbox is None and "segmentation" in result:
        return                                              # segm results may omit bbox (pycocotools derives it)
    check_xywh(bbox, lambda message: DataError(message, file=file, record=where, field="bbox"))
    segmentation = result.get("segmentation")
    if segmentation is not None and not (isinstance(segmentation, dict) and {"size", "counts"} <= set(segmentation)):
        raise DataError("segmentation must be an RLE {'size', 'counts'}", file=file, record=where,
                        field="segmentation")
