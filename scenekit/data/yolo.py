"""YOLO txt labels and their dataset YAML (the Darknet / Ultralytics layout), read and written.

    data.yaml                  path: (optional base folder), train: images/train, val: images/val, names: ...
    images/<split>/<stem>.png
    labels/<split>/<stem>.txt  one object per line: "<class> <cx> <cy> <w> <h>", normalised by the image size

A label file sits where its image is with the last `images` folder swapped for `labels` (next to the image
when the path has no `images` folder). A missing or empty label file means an image without objects. Lines
with more than 5 fields are Ultralytics segment labels "<class> x1 y1 x2 y2 ..." (a normalised polygon),
whose box is the polygon's bounds. A split entry may be a folder, a .txt list of image paths, or a list.

Annotation-tool folders (what LabelImg writes in YOLO mode): images and their same-stem .txt label files side
by side in one folder, with `classes.txt` (one class name per line, the line order giving the indices) and no
YAML; `read_yolo_folder` reads every image there. An image without a .txt has no objects; a .txt without an
image is an error naming it. Such a folder holds one set of images, no splits.

Class indices are 0..K-1; scenekit's category ids are `category_ids[index]` when the YAML has that list (written
by `write_yolo`, ignored by other tools), else `index + 1` (as COCO and the world number them from 1).
Normalised coordinates are written with 10 significant digits, so boxes round-trip to ~1e-9 relative.

The YAML is parsed by PyYAML when installed, else by `parse_yaml`, a small strict parser for the subset
dataset files use (scalars, flow lists/maps, one level of block lists/maps, block text), which rejects the
rest with the line number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from scenekit.data.files import Problems, check_box, export_image, image_size, unique_stems
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


# ------------------------------------------------------------------------------------------------- YAML
def _scalar(text: str, file, line: int):
    text = text.strip()
    if not text:
        return None
    if text[0] in "'\"":
        if len(text) < 2 or text[-1] != text[0]:
            raise DataError(f"unterminated quoted string {text!r}", file=str(file), record=f"line {line}")
        if text[0] == "'":
            return text[1:-1].replace("''", "'")
        try:
            return json.loads(text)                        # YAML's double-quoted escapes include JSON's
        except json.JSONDecodeError:
            raise DataError(f"bad escape in {text!r}", file=str(file), record=f"line {line}") from None
    if text in ("null", "Null", "NULL", "~"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text[0] in "[]{}&*!|>%@`":
        raise DataError(f"unsupported YAML value {text!r}", file=str(file), record=f"line {line}")
    return text


def _split_flow(body: str, file, line: int) -> list[str]:
    """Split 'a, "b, c", d' at top-level commas, respecting quotes."""
    items, current, quote = [], "", None
    for char in body:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        elif char in "[]{}":
            raise DataError("nested flow collections are not supported", file=str(file), record=f"line {line}")
        current += char
    if quote:
        raise DataError("unterminated quoted string", file=str(file), record=f"line {line}")
    items.append(current)
    return [item for item in items if item.strip()]


def _value(text: str, file, line: int):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(item, file, line) for item in _split_flow(text[1:-1], file, line)]
    if text.startswith("{") and text.endswith("}"):
        mapping = {}
        for item in _split_flow(text[1:-1], file, line):
            key, sep, value = item.partition(":")
            if not sep:
                raise DataError(f"expected 'key: value' in {item!r}", file=str(file), record=f"line {line}")
            mapping[_scalar(key, file, line)] = _scalar(value, file, line)
        return mapping
    return _scalar(text, file, line)


def _strip_comment(line: str) -> str:
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


_KEY = re.compile(r"^([A-Za-z0-9_.\-]+|'[^']*'|\"[^\"]*\")\s*:(\s+.*|)$")


def parse_yaml(text: str, file="<yaml>") -> dict:
    """Parse the YAML subset of dataset files into a dict; anything else is a DataError naming the line."""
    result: dict = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = _strip_comment(lines[i])
        number = i + 1
        i += 1
        if not raw.strip() or raw.strip() in ("---", "..."):
            continue
        if raw[0].isspace():
            raise DataError(f"unexpected indentation: {raw.strip()!r}", file=str(file), record=f"line {number}")
        match = _KEY.match(raw)
        if not match:
            raise DataError(f"expected 'key: value', got {raw!r}", file=str(file), record=f"line {number}")
        key, rest = _scalar(match.group(1), file, number), match.group(2).strip()
        if key in result:
            raise DataError(f"duplicate key {key!r}", file=str(file), record=f"line {number}", field=str(key))
        block = []                                         # the indented lines that belong to this key
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            block.append((i + 1, lines[i]))
            i += 1
        if rest and rest[0] in "|>":                       # block text, e.g. Ultralytics' `download: |`
            result[key] = "\n".join(line.strip() for _, line in block)
            continue
        if rest:
            if any(_strip_comment(line).strip() for _, line in block):
                raise DataError("a key with a value cannot have an indented block", file=str(file),
                                record=f"line {number}", field=str(key))
            result[key] = _value(rest, file, number)
            continue
        result[key] = _block(block, file, key)
    return result


def _block(block, file, key):
    lines = [(n, _strip_comment(line)) for n, line in block if _strip_comment(line).strip()]
    if not lines:
        return None
    indent = len(lines[0][1]) - len(lines[0][1].lstrip())
    for n, line in lines:
        if len(line) - len(line.lstrip()) != indent:
            raise DataError("inconsistent indentation (only one nesting level is supported)", file=str(file),
                            record=f"line {n}", field=str(key))
    entries = [(n, line.strip()) for n, line in lines]
    if all(text.startswith("- ") or text == "-" for _, text in entries):
        return [_value(text[1:], file, n) for n, text in entries]
    mapping = {}
    for n, text in entries:
        match = _KEY.match(text)
        if not match or not match.group(2).strip():
            raise DataError(f"expected 'key: value' or '- item' (one nesting level), got {text!r}", file=str(file),
                            record=f"line {n}", field=str(key))
        mapping[_scalar(match.group(1), file, n)] = _value(match.group(2), file, n)
    return mapping


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError("dataset YAML not found", file=str(path))
    text = path.read_text()
    try:
        import yaml                                          # PyYAML handles full YAML when it is installed
    except ImportError:
        config = parse_yaml(text, path)
    else:
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DataError(f"not valid YAML: {error}", file=str(path)) from None
    if not isinstance(config, dict):
        raise DataError("a dataset YAML must be a mapping of keys to values", file=str(path))
    return config


# ------------------------------------------------------------------------------------------------- reading
def _names(config: dict, path: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"names keys must be 0..{len(names) - 1}, got {sorted(names)}", file=str(path),
                            field="names")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError("needs 'names': a list of class names or a map {index: name}", file=str(path), field="names")
    if "nc" in config and config["nc"] != len(names):
        raise DataError(f"nc is {config['nc']} but names has {len(names)} entries", file=str(path), field="nc")
    return [str(n) for n in names]


def _category_ids(config: dict, count: int, path: Path) -> list[int]:
    ids = config.get("category_ids")
    if ids is None:
        return list(range(1, count + 1))
    if not isinstance(ids, list) or len(ids) != count or len(set(ids)) != count or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"category_ids must be {count} distinct integers", file=str(path), field="category_ids")
    return ids


def _split_images(base: Path, entry, path: Path, split: str) -> list[Path]:
    images = []
    for item in entry if isinstance(entry, list) else [entry]:
        location = Path(str(item))
        location = location if location.is_absolute() else base / location
        if location.is_dir():
            images += sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif location.suffix == ".txt" and location.is_file():
            for line in location.read_text().splitlines():
                if line.strip():
                    image = Path(line.strip())
                    images.append(image if image.is_absolute() else location.parent / image)
        else:
            raise DataError(f"split {split!r} points to {location}, which is neither a folder nor a .txt list",
                            file=str(path), field=split)
    return images


def label_path(image: Path) -> Path:
    """labels/ next to images/: swap the last `images` folder of the path for `labels`, suffix -> .txt."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo(yaml_path, split: str = "train", *, skip_invalid: bool = False, report_path=None,
              check_images: bool | str = True) -> Dataset:
    """Read one split of a YOLO dataset. Image sizes come from the image headers (labels are normalised),
    so images are always opened; `check_images="full"` also decodes them."""
    yaml_path = Path(yaml_path)
    config = load_yaml(yaml_path)
    names = _names(config, yaml_path)
    ids = _category_ids(config, len(names), yaml_path)
    base = yaml_path.parent / str(config["path"]) if config.get("path") else yaml_path.parent  # (absolute wins)
    if config.get(split) is None:
        available = [k for k in ("train", "val", "test") if config.get(k) is not None]
        raise DataError(f"no split {split!r} (available: {available})", file=str(yaml_path), field=split)
    images = _split_images(base, config[split], yaml_path, split)
    problems = Problems(yaml_path, skip_invalid, report_path)
    pairs = [(image, label_path(image)) for image in images]
    return _read_images(pairs, base, names, ids, problems, check_images, yaml_path, f"{yaml_path.stem}-{split}")


def read_yolo_folder(folder, *, skip_invalid: bool = False, report_path=None,
                     check_images: bool | str = True) -> Dataset:
    """Read an annotation tool's folder: images, same-stem .txt labels and classes.txt (module docstring)."""
    folder = Path(folder)
    classes = folder / "classes.txt"
    if not classes.is_file():
        raise DataError("no classes.txt (one class name per line) beside the images and their .txt labels",
                        file=str(folder))
    names, seen = [], {}
    lines = classes.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()                                       # trailing blank lines are not classes
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DataError("blank line: every line up to the last names a class (its index is the line's)",
                            file=str(classes), record=f"line {number}")
        if name in seen:
            raise DataError(f"class {name!r} is already on line {seen[name]}", file=str(classes),
                            record=f"line {number}")
        seen[name] = number
        names.append(name)
    if not names:
        raise DataError("names no class", file=str(classes))
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise DataError(f"{stems[image.stem].name} and {image.name} would share the label file "
                            f"{image.stem}.txt", file=str(folder / image.name))
        stems[image.stem] = image
    for labels in sorted(folder.glob("*.txt")):
        if labels != classes and labels.stem not in stems:
            raise DataError(f"label file without an image (no {labels.stem}.* image in the folder)",
                            file=str(labels))
    problems = Problems(folder, skip_invalid, report_path)
    pairs = [(image, image.with_suffix(".txt")) for image in images]
    return _read_images(pairs, folder, names, list(range(1, len(names) + 1)), problems, check_images, folder,
                        folder.name)


def _read_images(pairs, base: Path, names: list[str], ids: list[int], problems: Problems, check_images,
                 source: Path, name: str) -> Dataset:
    """Records of (image, label file) pairs: image sizes from the headers, boxes from the labels."""
    parsed = []
    for image, labels in pairs:
        try:
            width, height = image_size(image, problems, record=f"image {image.name}",
                                       decode=check_images == "full", file=source)
        except DataError as error:
            problems.handle(error, kind="image", ident=str(image))
            continue
        objects = _read_labels(labels, width, height, len(names), problems)
        parsed.append((image, width, height, objects))

    stems = [image.stem for image, *_ in parsed]
    numbered = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    records = []
    for number, (image, width, height, objects) in enumerate(parsed, start=1):
        try:
            file_name = image.relative_to(base).as_posix()
        except ValueError:
            file_name = str(image)
        segmentations = [o["polygon"] for o in objects]
        records.append(Record(
            image_id=int(image.stem) if numbered else number, file_name=file_name, width=width, height=height,
            boxes=np.array([o["box"] for o in objects], dtype=np.float64).reshape(-1, 4),
            labels=[ids[o["class"]] for o in objects], ann_ids=np.arange(1, len(objects) + 1),
            segmentations=segmentations if any(s is not None for s in segmentations) else None))
    problems.finish(len(records), sum(r.num_objects for r in records))
    return Dataset(records, dict(zip(ids, names)), base, name=name, skipped=problems.skipped)


def _read_labels(path: Path, width: int, height: int, num_classes: int, problems: Problems) -> list[dict]:
    if not path.is_file():
        return []                                         # no label file: an image without objects
    objects = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            fields = line.split()
            if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
                raise problems.error(f"expected '<class> <cx> <cy> <w> <h>' or '<class> x1 y1 x2 y2 x3 y3 ...', "
                                     f"got {len(fields)} fields", file=path, record=where)
            if not re.fullmatch(r"\d+", fields[0]) or int(fields[0]) >= num_classes:
                raise problems.error(f"class must be an index 0..{num_classes - 1}, got {fields[0]!r}", file=path,
                                     record=where, field="class")
            try:
                values = np.array([float(v) for v in fields[1:]])
            except ValueError:
                raise problems.error(f"coordinates must be numbers: {line.strip()!r}", file=path, record=where,
                                     field="coordinates") from None
            if not np.isfinite(values).all():
                raise problems.error("coordinates must be finite", file=path, record=where, field="coordinates")
            polygon = None
            if len(fields) == 5:
                cx, cy, w, h = values
                box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            else:
                xs, ys = values[0::2] * width, values[1::2] * height
                box = (xs.min(), ys.min(), xs.max(), ys.max())
                polygon = [np.stack([xs, ys], axis=1).reshape(-1).tolist()]
            check_box(box, width, height, problems, record=where, field="box", file=path)
        except DataError as error:
            problems.handle(error, kind="annotation", ident=f"{path}:{number}")
            continue
        objects.append({"class": int(fields[0]), "box": tuple(float(v) for v in box), "polygon": polygon})
    return objects


# ------------------------------------------------------------------------------------------------- writing
def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def write_yolo(dataset: Dataset, root, split: str = "train") -> Path:
    """Write images/<split>/, labels/<split>/ and data.yaml (merging the split into an existing YAML with the
    same classes). Returns the YAML's path. Crowd and difficult flags and masks are not part of the format."""
    root = Path(root)
    stems = unique_stems(dataset)
    ids = sorted(dataset.categories)
    index_of = {category: index for index, category in enumerate(ids)}
    for record, stem in zip(dataset.records, stems):
        image = export_image(dataset, record, root / "images" / split, stem)
        lines = []
        for k, (x1, y1, x2, y2) in enumerate(record.boxes.tolist()):
            label = int(record.labels[k])
            if label not in index_of:
                raise DataError(f"label {label} is not in the category table", record=f"image id {record.image_id}",
                                field=f"labels[{k}]")
            cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
            w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
            lines.append(f"{index_of[label]} {cx:.10g} {cy:.10g} {w:.10g} {h:.10g}\n")
        labels = label_path(image)
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("".join(lines))

    yaml_path = root / "data.yaml"
    splits = {}
    if yaml_path.is_file():
        config = load_yaml(yaml_path)
        if _names(config, yaml_path) != [dataset.categories[i] for i in ids] or \
                _category_ids(config, len(ids), yaml_path) != ids:
            raise DataError("holds different classes than the dataset being written", file=str(yaml_path),
                            field="names")
        splits = {k: config[k] for k in ("train", "val", "test") if config.get(k) is not None}
    splits[split] = f"images/{split}"
    text = ["# YOLO dataset written by scenekit; category_ids maps class index -> scenekit category id\n"]
    text += [f"{k}: [{', '.join(_quote(str(p)) for p in v)}]\n" if isinstance(v, list) else f"{k}: {_quote(str(v))}\n"
             for k, v in splits.items()]
    text += [f"nc: {len(ids)}\n", "names:\n"] + [f"  {i}: {_quote(dataset.categories[c])}\n" for i, c in enumerate(ids)]
    text += [f"category_ids: [{', '.join(str(c) for c in ids)}]\n"]
    yaml_path.write_text("".join(text))
    return yaml_path
