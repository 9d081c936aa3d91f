"""Where datasets come from and go to: one spec string per source, and a summary of what a dataset holds.

A spec names a format and a path: `world` (the generated scene world, in memory; `world:N` for N images),
`coco:PATH` (an instances JSON, or a folder holding `instances_<split>.json`), `voc:PATH` (a VOC root) or
`yolo:PATH` (a dataset YAML, or a folder holding `data.yaml`). Next to a COCO `instances_<tag>.json`, the
files `captions_<tag>.json` and `questions_<tag>.json` are attached when present (COCO's own naming).
Annotation tools' folders read too: `voc:FOLDER` of images with their XMLs side by side (LabelImg) and
`yolo:FOLDER` of images, same-stem .txt labels and a classes.txt (see the readers).

A split in the spec. `voc:ROOT:val`, `coco:FOLDER:val` (its instances_val.json), `yolo:data.yaml:val` read
that split whatever split the caller asks for, so `--data` and `--val-data` can name theirs. The rule
(`split_spec`): the last `:NAME` is a split when NAME holds no '/' or '\\', the whole path does not exist and
the path without `:NAME` does; otherwise the colon belongs to the path (`coco:a:b.json`, `coco:C:\\x.json`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scenekit.data.records import Dataset
from scenekit.errors import DataError

FORMATS = ("world", "coco", "voc", "yolo")
WORLD_IMAGES = 200                  # images of `world` when the spec gives no count
COCO_SMALL, COCO_MEDIUM = 32 ** 2, 96 ** 2     # COCO's area ranges: small < 32^2 <= medium < 96^2 <= large


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'coco:path/x.json' -> ('coco', 'path/x.json'); 'world' -> ('world', None). A split in the spec stays
    in the path here; `split_spec` separates it."""
    kind, sep, path = str(spec).partition(":")
    if kind not in FORMATS or (kind != "world" and not path):
        raise DataError(f"bad data spec {spec!r}: expected world, world:N, coco:PATH, voc:PATH or yolo:PATH "
                        f"(optionally :SPLIT)", field="spec")
    return kind, (path or None)


def split_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'voc:ROOT:val' -> ('voc', 'ROOT', 'val') when ROOT exists (module docstring); else (kind, path, None)."""
    kind, path = parse_spec(spec)
    cut = None if kind == "world" or Path(path).exists() else _split_suffix(path)
    if cut is not None and Path(cut[0]).exists():
        return kind, *cut
    return kind, path, None


def _split_suffix(path: str) -> tuple[str, str] | None:
    """'ROOT:NAME' -> (ROOT, NAME) when NAME could be a split (no path separator in it), else None."""
    head, sep, name = path.rpartition(":")
    return (head, name) if sep and head and name and "/" not in name and "\\" not in name else None


def split_target_spec(spec: str) -> tuple[str, str | None, str | None]:
    """A spec to write to, which need not exist yet: 'voc:out/VOC:val' -> ('voc', 'out/VOC', 'val').

    A last ':NAME' is a split when NAME holds no '/', '\\' or '.', so 'coco:out/x.json:val' writes x.json as the
    val split while 'coco:out/x.json' and 'yolo:out/data.yaml' are plain paths. An existing path is read as a whole
    (as `split_spec` does), so a folder whose name holds a colon still works.
    """
    kind, path = parse_spec(spec)
    cut = None if kind == "world" or Path(path).exists() else _split_suffix(path)
    if cut is not None and "." not in cut[1]:
        return kind, *cut
    return kind, path, None


def _coco_file(path: Path, split: str) -> Path:
    """A folder stands for its `instances_<split>.json`, or its only `instances*.json`."""
    if not path.is_dir():
        return path
    if (path / f"instances_{split}.json").is_file():
        return path / f"instances_{split}.json"
    instances = sorted(path.glob("instances*.json"))
    if len(instances) == 1:
        return instances[0]
    raise DataError(f"expected instances_{split}.json or a single instances*.json in the folder, found "
                    f"{[p.name for p in instances]}", file=str(path))


def load_data(spec: str, split: str = "train", *, skip_invalid: bool = False, report_path=None,
              check_images: bool | str = True, **world_kwargs) -> Dataset:
    """Load a dataset from a spec. `world_kwargs` go to `scenekit.data.world.make_world` (e.g. `num_images`,
    `seed`, `image_size`); the reader options go to the file readers. A split named in the spec wins over
    `split`."""
    kind, path, named = split_spec(spec)
    split = named or split
    if kind == "world":
        from scenekit.data.world import make_world

        if path is not None:
            if not path.isdigit():
                raise DataError(f"world:N needs a number of images, got {path!r}", field="spec")
            world_kwargs["num_images"] = int(path)
        num_images = world_kwargs.pop("num_images", WORLD_IMAGES)
        return make_world(num_images, split=split, **world_kwargs)
    if world_kwargs:
        raise TypeError(f"options {sorted(world_kwargs)} only apply to the world")
    options = {"skip_invalid": skip_invalid, "report_path": report_path, "check_images": check_images}
    if kind == "coco":
        from scenekit.data.coco import attach_captions, attach_questions, read_coco

        if named and not Path(path).is_dir():
            raise DataError(f"a COCO JSON file holds one split; {named!r} names a split of a folder "
                            f"(coco:FOLDER:{named} reads FOLDER/instances_{named}.json)", file=path, field="spec")
        json_path = _coco_file(Path(path), split)
        dataset = read_coco(json_path, **options)
        if json_path.name.startswith("instances"):
            tag = json_path.name[len("instances"):]
            if (json_path.parent / f"captions{tag}").is_file():
                attach_captions(dataset, json_path.parent / f"captions{tag}")
            if (json_path.parent / f"questions{tag}").is_file():
                attach_questions(dataset, json_path.parent / f"questions{tag}")
        return dataset
    if kind == "voc":
        from scenekit.data.voc import read_voc

        return read_voc(path, split, split_required=named is not None, **options)
    from scenekit.data.yolo import read_yolo, read_yolo_folder

    yaml_path = Path(path)
    if yaml_path.is_dir():
        found = [yaml_path / "data.yaml"] if (yaml_path / "data.yaml").is_file() else sorted(yaml_path.glob("*.yaml"))
        if not found and (yaml_path / "classes.txt").is_file():         # an annotation tool's flat folder
            if named:
                raise DataError(f"a folder of images, labels and classes.txt holds no splits, so not {named!r}",
                                file=path, field="spec")
            return read_yolo_folder(yaml_path, **options)
        if len(found) != 1:
            raise DataError(f"expected one data.yaml in the folder (or classes.txt beside images and their .txt "
                            f"labels), found {[f.name for f in found]}", file=str(yaml_path))
        yaml_path = found[0]
    elif yaml_path.suffix.lower() not in (".yaml", ".yml") and yaml_path.is_file():
        raise DataError(f"yolo: reads a dataset YAML (data.yaml) or a folder holding one, not a "
                        f"{yaml_path.suffix or 'suffix-less'} file", file=str(yaml_path), field="spec")
    return read_yolo(yaml_path, split, **options)


def save_data(dataset: Dataset, spec: str, split: str = "train") -> Path:
    """Write a dataset in the spec's format; returns the file or folder written.

    coco:PATH writes PATH (or PATH/instances_<split>.json for a folder), in-memory images to `images/` beside
    it, and the captions and questions as `captions_<tag>.json` / `questions_<tag>.json` when there are any.
    voc:DIR and yolo:DIR write folders (yolo:DIR/data.yaml names the same folder). A split named in the spec
    (`voc:out/VOC:val`, `split_target_spec`) wins over `split`. A path that does not fit its format is an error
    before anything is written.

    Every format gets its own copies of the images (COCO: `images/` beside the JSON; VOC: JPEGImages/; YOLO:
    images/<split>/), and file names relative to the written folder: the output is self-contained, so it still
    reads back after it is moved or the source is deleted.
    """
    kind, path, named = split_target_spec(spec)
    split = named or split
    if kind == "world":
        raise DataError("the world is generated, not written to; use `scenekit data world --out DIR`", field="spec")
    target = Path(path)
    check_target(kind, target)
    if kind == "voc":
        from scenekit.data.voc import write_voc

        return write_voc(dataset, target, split)
    if kind == "yolo":
        from scenekit.data.yolo import write_yolo

        return write_yolo(dataset, target.parent if target.suffix in (".yaml", ".yml") else target, split)
    import json

    from scenekit.data.coco import write_coco

    json_path = target if target.suffix == ".json" else target / f"instances_{split}.json"
    write_coco(dataset, json_path, json_path.parent / "images")
    stem = json_path.stem
    tag = stem[len("instances"):] if stem.startswith("instances") else f"_{stem}"
    if any(record.captions for record in dataset.records):
        # the images as the instances file names them (relative to the same folder), so `coco-captions:` finds them
        images = json.loads(json_path.read_text())["images"]
        pairs = [(int(r.image_id), c) for r in dataset.records for c in r.captions]
        annotations = [{"id": number, "image_id": image_id, "caption": caption}
                       for number, (image_id, caption) in enumerate(pairs, start=1)]
        (json_path.parent / f"captions{tag}.json").write_text(json.dumps({"images": images,
                                                                          "annotations": annotations}))
    if any(record.questions for record in dataset.records):
        questions = [{"image_id": int(r.image_id), "question": q.question, "choices": list(q.choices),
                      "answer": int(q.answer), "kind": q.kind} for r in dataset.records for q in r.questions]
        (json_path.parent / f"questions{tag}.json").write_text(json.dumps(questions))
    return json_path


FILE_SUFFIXES = (".json", ".yaml", ".yml", ".xml", ".txt", ".csv", ".zip", ".png", ".jpg", ".jpeg")


def check_save_target(spec: str) -> None:
    """`check_target` for a spec to write (its split, if any, set aside): one line before anything is read."""
    kind, path, _ = split_target_spec(spec)
    if kind != "world":
        check_target(kind, Path(path))


def check_target(kind: str, target: Path) -> None:
    """One line (a DataError) for a write target that does not fit its format: a file where VOC and YOLO write
    folders, a COCO target that is neither a .json file nor a folder, or a path under an existing file."""
    suffix = target.suffix.lower()
    given = f"a {suffix} file" if suffix in FILE_SUFFIXES else "an existing file"
    for folder in reversed(target.parents):
        if folder.exists() and not folder.is_dir():
            raise DataError(f"is a file, so {target} cannot be written under it", file=str(folder), field="spec")
    if kind in ("voc", "yolo"):
        writes = {"voc": "a VOC root (Annotations/, JPEGImages/, ImageSets/)",
                  "yolo": "images/, labels/ and data.yaml"}[kind]
        if kind == "yolo" and suffix in (".yaml", ".yml"):
            if target.name != "data.yaml":
                raise DataError(f"yolo: writes {writes} in a folder, so the YAML is always data.yaml: give "
                                f"yolo:DIR or yolo:DIR/data.yaml", file=str(target), field="spec")
        elif target.is_file() or suffix in FILE_SUFFIXES:
            raise DataError(f"{kind}: writes {writes} in a folder, not {given}: give {kind}:DIR",
                            file=str(target), field="spec")
    if kind == "coco":
        if suffix == ".json" and target.is_dir():
            raise DataError("is a folder: coco: writes a .json file (coco:FILE.json) or instances_<split>.json in a "
                            "folder (coco:DIR)", file=str(target), field="spec")
        if suffix != ".json" and (target.is_file() or suffix in FILE_SUFFIXES):
            raise DataError(f"coco: writes a .json file (coco:FILE.json) or instances_<split>.json in a folder "
                            f"(coco:DIR), not {given}", file=str(target), field="spec")


# ------------------------------------------------------------------------------------------------- statistics
def _size_bins() -> list[tuple[float, float]]:
    edges = [0, 8, 16, 32, 64, 128, 256, 512, math.inf]
    return list(zip(edges[:-1], edges[1:]))


def statistics(dataset: Dataset) -> dict:
    """Counts a user checks before training: images, boxes per class, COCO size classes, a size histogram.

    Size classes use the annotation area (mask area when known, as COCO's evaluation does; else box area);
    the histogram bins boxes by sqrt(box area) in pixels, doubling from 8.
    """
    per_class = {cid: {"id": cid, "name": name, "boxes": 0, "images": 0}
                 for cid, name in sorted(dataset.categories.items())}
    areas, sides = [], []
    widths = [r.width for r in dataset.records]
    heights = [r.height for r in dataset.records]
    for record in dataset.records:
        for label in record.labels.tolist():
            per_class.setdefault(label, {"id": label, "name": "?", "boxes": 0, "images": 0})["boxes"] += 1
        for label in set(record.labels.tolist()):
            per_class[label]["images"] += 1
        box_area = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
        areas.append(record.areas if record.areas is not None else box_area)
        sides.append(np.sqrt(np.maximum(box_area, 0)))
    areas = np.concatenate(areas) if areas else np.zeros(0)
    sides = np.concatenate(sides) if sides else np.zeros(0)
    return {
        "name": dataset.name,
        "images": len(dataset.records),
        "images_without_objects": sum(r.num_objects == 0 for r in dataset.records),
        "objects": int(sum(r.num_objects for r in dataset.records)),
        "crowd": int(sum(r.iscrowd.sum() for r in dataset.records)),
        "difficult": int(sum(r.difficult.sum() for r in dataset.records)),
        "with_masks": int(sum(sum(s is not None for s in r.segmentations) for r in dataset.records
                              if r.segmentations is not None)),
        "captions": int(sum(len(r.captions) for r in dataset.records)),
        "questions": int(sum(len(r.questions) for r in dataset.records)),
        "image_width": [int(min(widths, default=0)), int(max(widths, default=0))],
        "image_height": [int(min(heights, default=0)), int(max(heights, default=0))],
        "per_class": list(per_class.values()),
        "coco_sizes": {"small": int((areas < COCO_SMALL).sum()),
                       "medium": int(((areas >= COCO_SMALL) & (areas < COCO_MEDIUM)).sum()),
                       "large": int((areas >= COCO_MEDIUM).sum())},
        "size_histogram": [{"min": lo, "max": None if math.isinf(hi) else hi,
                            "count": int(((sides >= lo) & (sides < hi)).sum())} for lo, hi in _size_bins()],
    }


def format_statistics(stats: dict, bar_width: int = 40) -> str:
    """The statistics as a text report with a bar histogram of box sizes."""
    lines = [f"dataset {stats['name']}: {stats['images']} images ({stats['images_without_objects']} without "
             f"objects), {stats['objects']} objects ({stats['crowd']} crowd, {stats['difficult']} difficult, "
             f"{stats['with_masks']} with masks), {stats['captions']} captions, {stats['questions']} questions",
             f"image width {stats['image_width'][0]}..{stats['image_width'][1]}, "
             f"height {stats['image_height'][0]}..{stats['image_height'][1]}", "", "boxes per class:"]
    for entry in stats["per_class"]:
        lines.append(f"  {entry['id']:>4} {entry['name']:<20} {entry['boxes']:>8} boxes in {entry['images']:>6} images")
    sizes = stats["coco_sizes"]
    lines += ["", f"COCO sizes (area < 32^2 small, < 96^2 medium): small {sizes['small']}, "
                  f"medium {sizes['medium']}, large {sizes['large']}", "", "box size sqrt(w*h) in px:"]
    peak = max([b["count"] for b in stats["size_histogram"]] + [1])
    for b in stats["size_histogram"]:
        label = f"[{b['min']:g}, {b['max']:g})" if b["max"] is not None else f"[{b['min']:g}, inf)"
        bar = "#" * int(round(bar_width * b["count"] / peak))
        lines.append(f"  {label:>12} {b['count']:>8} {bar}")
    return "\n".join(lines)
