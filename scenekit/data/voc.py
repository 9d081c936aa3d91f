"""Pascal VOC: one XML file per image, read and written (Everingham et al. 2010).

Layout of a VOC root (e.g. `VOCdevkit/VOC2007`):

    Annotations/<stem>.xml        <filename>, <size>, and per <object>: <name>, <difficult>, <truncated>, <bndbox>
    JPEGImages/<stem>.jpg
    ImageSets/Main/<split>.txt    one <stem> per line (train, val, trainval, test)

Coordinates. VOC counts pixels from 1 and its boxes are *inclusive*: `xmin=1, xmax=3` covers pixels 1, 2 and 3,
three pixels wide. scenekit's continuous xyxy puts pixel `i` (0-based) between edges `i` and `i + 1`, so

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax        (width = xmax - xmin + 1)

and back `xmin = x1 + 1, xmax = x2`. Integers map to integers, so VOC -> scenekit -> VOC is exact; a box off the
pixel grid (from COCO, say) is written with decimals (shortest repr) rather than rounded, so its round trip is
exact up to the float rounding of the +-1 (~1e-15 px; tools that parse with `int()` would truncate those).

VOC has neither category ids nor crowd regions: `write_voc` writes `classes.txt` ("<id> <name>" per line) so
ids survive a round trip, and crowd objects as `difficult` with an extra `<iscrowd>1</iscrowd>` element.
Without `classes.txt`, ids follow the 20 VOC classes (alphabetical, 1-based) when every name is one of them,
else the sorted names found.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from scenekit.data.files import Problems, check_box, check_image, export_image, image_size, unique_stems
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


# ------------------------------------------------------------------------------------------------- reading
def read_voc(root, split: str | None = "trainval", *, classes: dict[int, str] | list[str] | None = None,
             skip_invalid: bool = False, report_path=None, check_images: bool | str = True) -> Dataset:
    """Read the images of `ImageSets/Main/<split>.txt` (every XML in Annotations/ when `split` is None).

    classes: the category table ({id: name}, or names numbered from 1); default `classes.txt`, else as above.
    Image ids are the file stems when all are integers ("000005" -> 5), else 1..N in split-file order.
    """
    root = Path(root)
    problems = Problems(root, skip_invalid, report_path)
    stems = _split_stems(root, split)
    parsed = []
    for stem in stems:
        try:
            parsed.append(_parse_xml(root, stem, problems, check_images))
        except DataError as error:
            problems.handle(error, kind="image", ident=stem)

    categories = _categories(root, classes, [o["name"] for p in parsed for o in p["objects"]])
    name_to_id = {name: i for i, name in categories.items()}
    all_int = all(p["stem"].isdigit() for p in parsed) and len({int(p["stem"]) for p in parsed}) == len(parsed)
    records, num_objects = [], 0
    for number, item in enumerate(parsed, start=1):
        objects = []
        for k, obj in enumerate(item["objects"]):
            if obj["name"] not in name_to_id:
                problems.handle(problems.error(f"unknown class name {obj['name']!r}", file=item["xml"],
                                               record=f"object {k}", field="name"), kind="annotation",
                                ident=f"{item['stem']}/{k}")
                continue
            objects.append(obj)
        num_objects += len(objects)
        records.append(Record(
            image_id=int(item["stem"]) if all_int else number, file_name=item["file_name"],
            width=item["width"], height=item["height"],
            boxes=np.array([o["box"] for o in objects], dtype=np.float64).reshape(-1, 4),
            labels=[name_to_id[o["name"]] for o in objects], ann_ids=np.arange(1, len(objects) + 1),
            iscrowd=[o["iscrowd"] for o in objects], difficult=[o["difficult"] for o in objects],
            truncated=[o["truncated"] for o in objects]))
    problems.finish(len(records), num_objects)
    return Dataset(records, categories, root / "JPEGImages", name=f"{root.name}-{split or 'all'}", skipped=problems.skipped)


def _split_stems(root: Path, split: str | None) -> list[str]:
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError("no Annotations/ folder: not a VOC root (expected Annotations/, JPEGImages/, "
                        "ImageSets/Main/)", file=str(root))
    if split is None:
        return sorted(p.stem for p in annotations.glob("*.xml"))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"split file not found (available splits: {available or 'none'})", file=str(split_file))
    stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    duplicates = sorted({s for s in stems if stems.count(s) > 1}) if len(set(stems)) != len(stems) else []
    if duplicates:
        raise DataError(f"image {duplicates[0]!r} is listed twice", file=str(split_file), record=duplicates[0])
    return stems


def _text(element, tag: str, default=None):
    child = element.find(tag)
    return child.text.strip() if child is not None and child.text is not None else default


def _number(element, tag: str, problems: Problems, file, record: str) -> float:
    value = _text(element, tag)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise problems.error(f"must be a number, got {value!r}", file=file, record=record, field=tag) from None
    if not np.isfinite(number):
        raise problems.error(f"must be finite, got {value!r}", file=file, record=record, field=tag)
    return number


def _flag(element, tag: str, problems: Problems, file, record: str) -> bool:
    value = _text(element, tag, "0")                  # optional fields: absent means 0
    if value not in ("0", "1"):
        raise problems.error(f"must be 0 or 1, got {value!r}", file=file, record=record, field=tag)
    return value == "1"


def _parse_xml(root: Path, stem: str, problems: Problems, check_images) -> dict:
    xml_path = root / "Annotations" / f"{stem}.xml"
    if not xml_path.is_file():
        raise problems.error("annotation file not found", file=xml_path, record=f"image {stem}")
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise problems.error(f"not well-formed XML: {error}", file=xml_path, record=f"image {stem}") from None
    record = f"image {stem}"
    file_name = _text(tree, "filename") or f"{stem}.jpg"
    image_path = root / "JPEGImages" / file_name
    size = tree.find("size")
    width = height = 0
    if size is not None and _text(size, "width") and _text(size, "height"):
        width = int(_number(size, "width", problems, xml_path, record))
        height = int(_number(size, "height", problems, xml_path, record))
    if width <= 0 or height <= 0:                    # some VOC-style files omit <size> or write 0: ask the image
        if not check_images:
            raise problems.error("missing or zero <size> and image checks are off", file=xml_path, record=record,
                                 field="size")
        width, height = image_size(image_path, problems, record=record, decode=check_images == "full",
                                   file=xml_path)
    elif check_images:
        check_image(image_path, width, height, problems, record=record, decode=check_images == "full",
                    file=xml_path)

    objects = []
    for k, obj in enumerate(tree.findall("object")):
        where = f"{record} object {k}"
        name = _text(obj, "name")
        if not name:
            raise problems.error("object has no <name>", file=xml_path, record=where, field="name")
        box = obj.find("bndbox")
        if box is None:
            raise problems.error("object has no <bndbox>", file=xml_path, record=where, field="bndbox")
        xmin, ymin, xmax, ymax = (_number(box, t, problems, xml_path, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        xyxy = (xmin - 1.0, ymin - 1.0, xmax, ymax)                     # 1-based inclusive -> continuous edges
        check_box(xyxy, width, height, problems, record=where, field="bndbox", file=xml_path)
        objects.append({"name": name, "box": xyxy, "difficult": _flag(obj, "difficult", problems, xml_path, where),
                        "truncated": _flag(obj, "truncated", problems, xml_path, where),
                        "iscrowd": _flag(obj, "iscrowd", problems, xml_path, where)})
    return {"stem": stem, "xml": xml_path, "file_name": file_name, "width": width, "height": height,
            "objects": objects}


def _categories(root: Path, classes, names_found: list[str]) -> dict[int, str]:
    if isinstance(classes, dict):
        return {int(i): str(n) for i, n in classes.items()}
    if classes is not None:
        return {i: str(n) for i, n in enumerate(classes, start=1)}
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        categories = {}
        for number, line in enumerate(classes_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise DataError(f"expected '<id> <name>', got {line!r}", file=str(classes_file),
                                record=f"line {number}")
            categories[int(parts[0])] = parts[1]
        return categories
    found = sorted(set(names_found))
    if set(found) <= set(VOC_CLASSES):
        return {i: n for i, n in enumerate(VOC_CLASSES, start=1)}
    return {i: n for i, n in enumerate(found, start=1)}


# ------------------------------------------------------------------------------------------------- writing
def _coordinate(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_voc(dataset: Dataset, root, split: str = "trainval") -> Path:
    """Write a VOC root: Annotations/, JPEGImages/ (copies, or PNGs of in-memory images), the split file and
    classes.txt. The split file lists exactly this dataset's images (it is replaced if present)."""
    root = Path(root)
    stems = unique_stems(dataset)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for record, stem in zip(dataset.records, stems):
        image_path = export_image(dataset, record, root / "JPEGImages", stem)
        tree = ET.Element("annotation")
        ET.SubElement(tree, "folder").text = root.name
        ET.SubElement(tree, "filename").text = image_path.name
        size = ET.SubElement(tree, "size")
        for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        ET.SubElement(tree, "segmented").text = "0"
        for k, (x1, y1, x2, y2) in enumerate(record.boxes.tolist()):
            label = int(record.labels[k])
            if label not in dataset.categories:
                raise DataError(f"label {label} is not in the category table", record=f"image id {record.image_id}",
                                field=f"labels[{k}]")
            obj = ET.SubElement(tree, "object")
            ET.SubElement(obj, "name").text = dataset.categories[label]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = str(int(record.truncated[k]))
            ET.SubElement(obj, "difficult").text = str(int(record.difficult[k] or record.iscrowd[k]))
            if record.iscrowd[k]:
                ET.SubElement(obj, "iscrowd").text = "1"
            box = ET.SubElement(obj, "bndbox")
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(box, tag).text = _coordinate(value)
        ET.indent(tree)
        ET.ElementTree(tree).write(root / "Annotations" / f"{stem}.xml", encoding="utf-8")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in sorted(dataset.categories.items())))
    return root
