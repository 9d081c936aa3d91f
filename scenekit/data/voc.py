"""Pascal VOC: one XML file per image, read and written (Everingham et al. 2010).

Layout of a VOC root (e.g. `VOCdevkit/VOC2007`):

    Annotations/<stem>.xml        <filename>, <size>, and per <object>: <name>, <difficult>, <truncated>, <bndbox>
    JPEGImages/<stem>.jpg
    ImageSets/Main/<split>.txt    one <stem> per line (train, val, trainval, test)

Annotation-tool folders. LabelImg (and other tools' Pascal VOC export) saves each image's XML beside it, with
no Annotations/ or ImageSets/: a folder without Annotations/ that holds .xml files is read as such a flat
folder. Every XML there is one image, found by the XML's <filename> in the same folder (else the XML's stem
with an image suffix, as old LabelImg versions wrote <filename> without one; the same fallback applies to a
VOC root's JPEGImages/). Its split: `<split>.txt` (one stem per line) when the folder has that list, else every
XML -- unless the folder holds other split lists, or the caller requires the list (`split_required`, a split
named in the data spec, `voc:FOLDER:val`): then a missing list is an error naming the ones there.
`classes.txt` may also be LabelImg's plain list of names (one per line, none a number; numbered from 1).

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

Masks. VOC keeps them as palette PNGs whose pixel *indices* are the labels:

    SegmentationObject/<stem>.png   0 background, k + 1 the k-th <object> of the XML, 255 "void" (ignored)
    SegmentationClass/<stem>.png    0 background, the class index, 255 void
    ImageSets/Segmentation/<split>.txt   the images that have them

`read_voc` turns each object's pixels of SegmentationObject into its mask (objects matched by order, as VOC
does; an object whose index is absent has none). `write_voc` writes both PNGs for every image with a mask, so
COCO -> VOC -> COCO keeps the masks: class indices are the VOC class numbers when every category is a VOC
class, else the category ids (what `scenekit.models.fcn` reads back), crowd regions are void in the class map,
and no void boundaries are added. One index per pixel cannot hold overlapping masks: where masks overlap the
smaller object keeps the pixel (it is usually in front) and a warning counts the masks that lost pixels.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from scenekit.data.files import Problems, check_box, check_image, export_image, image_size, unique_stems
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOID = 255                          # the PNG index VOC leaves out of every mask and class
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")   # tried in this order


def voc_palette() -> list[int]:
    """The 256 colours of VOC's PNGs (devkit `VOClabelcolormap.m`): the bits of index i spread over R, G, B."""
    palette = []
    for index in range(256):
        rgb, code = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette += rgb
    return palette


VOC_PALETTE = voc_palette()


# ------------------------------------------------------------------------------------------------- reading
def read_voc(root, split: str | None = "trainval", *, classes: dict[int, str] | list[str] | None = None,
             skip_invalid: bool = False, report_path=None, check_images: bool | str = True,
             split_required: bool = False) -> Dataset:
    """Read the images of `ImageSets/Main/<split>.txt` (every XML in Annotations/ when `split` is None), or of
    a flat annotation-tool folder (module docstring).

    classes: the category table ({id: name}, or names numbered from 1); default `classes.txt`, else as above.
    Image ids are the file stems when all are integers ("000005" -> 5), else 1..N in split-file order.
    """
    root = Path(root)
    problems = Problems(root, skip_invalid, report_path)
    annotations, images = _layout(root)
    stems = _split_stems(root, annotations, split, split_required)
    parsed = []
    for stem in stems:
        try:
            parsed.append(_parse_xml(root, stem, problems, check_images, annotations, images))
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
        segmentations = [o["segmentation"] for o in objects] if item["segmented"] else None
        records.append(Record(
            image_id=int(item["stem"]) if all_int else number, file_name=item["file_name"],
            width=item["width"], height=item["height"],
            boxes=np.array([o["box"] for o in objects], dtype=np.float64).reshape(-1, 4),
            labels=[name_to_id[o["name"]] for o in objects], ann_ids=np.arange(1, len(objects) + 1),
            iscrowd=[o["iscrowd"] for o in objects], difficult=[o["difficult"] for o in objects],
            truncated=[o["truncated"] for o in objects], segmentations=segmentations))
    problems.finish(len(records), num_objects)
    return Dataset(records, categories, images, name=f"{root.name}-{split or 'all'}", skipped=problems.skipped)


def _layout(root: Path) -> tuple[Path, Path]:
    """(folder of the XMLs, folder of the images): Annotations/ and JPEGImages/ of a VOC root, or the folder
    itself when it holds the XMLs beside the images (an annotation tool's folder)."""
    if (root / "Annotations").is_dir():
        return root / "Annotations", root / "JPEGImages"
    if root.is_dir() and any(root.glob("*.xml")):
        return root, root
    if root.is_file():
        raise DataError("not a VOC root: voc: names a folder (Annotations/, JPEGImages/, ImageSets/Main/, or images "
                        "with their .xml files side by side), not a file", file=str(root))
    raise DataError("not a VOC root (expected Annotations/, JPEGImages/, ImageSets/Main/) nor a folder of images "
                    "with their .xml files" if root.is_dir() else "folder not found", file=str(root))


def _split_stems(root: Path, annotations: Path, split: str | None, required: bool = False) -> list[str]:
    if split is None:
        return sorted(p.stem for p in annotations.glob("*.xml"))
    flat = annotations == root
    lists = root if flat else root / "ImageSets" / "Main"
    split_file = lists / f"{split}.txt"
    # VOC's per-class lists (cat_train.txt) are not splits; nor, in a flat folder, classes.txt or an image's
    # YOLO labels (<stem>.txt beside <stem>.xml, when the tool saved both)
    others = {"classes"} | ({p.stem for p in annotations.glob("*.xml")} if flat else set())
    available = sorted(p.stem for p in lists.glob("*.txt") if (flat or "_" not in p.stem) and p.stem not in others)
    if flat and not available and not required:
        return sorted(p.stem for p in annotations.glob("*.xml"))      # a flat folder without split lists: all
    if not split_file.is_file():
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


def _image_file(images: Path, stem: str, file_name: str | None) -> str:
    """The image an XML describes: its <filename> in `images`, else the first of <filename>'s stem or the XML's
    stem with an image suffix that exists; <filename> (or <stem>.jpg) when none does, so the error names it."""
    if file_name and (images / file_name).is_file():
        return file_name
    for base in dict.fromkeys(b for b in (Path(file_name).stem if file_name else None, stem) if b):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (base + suffix, base + suffix.upper()):
                if (images / candidate).is_file():
                    return candidate
    return file_name or f"{stem}.jpg"


def _parse_xml(root: Path, stem: str, problems: Problems, check_images, annotations: Path, images: Path) -> dict:
    xml_path = annotations / f"{stem}.xml"
    if not xml_path.is_file():
        raise problems.error("annotation file not found", file=xml_path, record=f"image {stem}")
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise problems.error(f"not well-formed XML: {error}", file=xml_path, record=f"image {stem}") from None
    record = f"image {stem}"
    file_name = _image_file(images, stem, _text(tree, "filename"))
    image_path = images / file_name
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
    masks = _read_object_masks(root / "SegmentationObject" / f"{stem}.png", len(objects), width, height, problems,
                               record)
    for obj, mask in zip(objects, masks or []):
        obj["segmentation"] = mask
    return {"stem": stem, "xml": xml_path, "file_name": file_name, "width": width, "height": height,
            "objects": objects, "segmented": masks is not None}


def _read_object_masks(path: Path, count: int, width: int, height: int, problems: Problems,
                       record: str) -> list | None:
    """The mask of each of `count` objects (compressed RLE; None where its index k + 1 is absent) from a
    SegmentationObject PNG, or None when the image has no such file."""
    from scenekit.masks import compress, rle_encode

    if not path.is_file():
        return None
    try:
        with Image.open(path) as picture:
            if picture.mode not in ("P", "L"):
                raise problems.error(f"expected a palette (P) or grey (L) PNG of instance indices, got mode "
                                     f"{picture.mode}", file=path, record=record)
            indices = np.array(picture, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise problems.error(f"PIL cannot decode the PNG: {error}", file=path, record=record) from None
    if indices.shape != (height, width):
        raise problems.error(f"PNG is {indices.shape[1]}x{indices.shape[0]}, the image {width}x{height}",
                             file=path, record=record)
    present = set(np.unique(indices).tolist()) - {0, VOID}
    if present and max(present) > count:
        raise problems.error(f"instance index {max(present)} but the XML has {count} objects", file=path,
                             record=record)
    return [compress(rle_encode(indices == k + 1)) if k + 1 in present else None for k in range(count)]


def _categories(root: Path, classes, names_found: list[str]) -> dict[int, str]:
    if isinstance(classes, dict):
        return {int(i): str(n) for i, n in classes.items()}
    if classes is not None:
        return {i: str(n) for i, n in enumerate(classes, start=1)}
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        lines = [(n, line.strip()) for n, line in enumerate(classes_file.read_text().splitlines(), start=1)
                 if line.strip()]
        if lines and not any(line.split(maxsplit=1)[0].isdigit() for _, line in lines):
            return {i: name for i, (_, name) in enumerate(lines, start=1)}      # LabelImg's list of names
        categories = {}
        for number, line in lines:
            parts = line.split(maxsplit=1)
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
    classes.txt; for the images with masks, SegmentationObject/ and SegmentationClass/ PNGs and
    ImageSets/Segmentation/<split>.txt. The split files list exactly this dataset's images (they are replaced
    if present)."""
    root = Path(root)
    stems = unique_stems(dataset)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    class_index = _class_indices(dataset.categories)
    segmented, overlapped = [], []
    for record, stem in zip(dataset.records, stems):
        image_path = export_image(dataset, record, root / "JPEGImages", stem)
        lost = _write_masks(record, root, stem, class_index)
        if lost is not None:
            segmented.append(stem)
            overlapped += [(record.image_id, k) for k in lost]
        tree = ET.Element("annotation")
        ET.SubElement(tree, "folder").text = root.name
        ET.SubElement(tree, "filename").text = image_path.name
        size = ET.SubElement(tree, "size")
        for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        ET.SubElement(tree, "segmented").text = "0" if lost is None else "1"
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
    segmentation_split = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if segmented:
        segmentation_split.parent.mkdir(parents=True, exist_ok=True)
        segmentation_split.write_text("".join(f"{s}\n" for s in segmented))
    else:
        segmentation_split.unlink(missing_ok=True)
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in sorted(dataset.categories.items())))
    if overlapped:
        image_id, k = overlapped[0]
        warnings.warn(f"{root}: the masks of {len(overlapped)} objects in {len({i for i, _ in overlapped})} images "
                      f"overlap other masks and lost those pixels in SegmentationObject/ (one object per pixel; "
                      f"first: image id {image_id} object {k})", stacklevel=2)
    return root


def _class_indices(categories: dict[int, str]) -> dict[int, int]:
    """Category id -> SegmentationClass index: the VOC class number when every category is a VOC class, else the
    category id (as `scenekit.models.fcn.record_class_map` reads them back)."""
    if set(categories.values()) <= set(VOC_CLASSES):
        return {int(i): VOC_CLASSES.index(name) + 1 for i, name in categories.items()}
    return {int(i): int(i) for i in categories}


def _decode_mask(record: Record, k: int) -> np.ndarray:
    """Object k's mask as [H, W] bool (polygons rasterised as pycocotools does)."""
    from scenekit.masks import annotation_to_rle, rle_decode

    where, field = f"image id {record.image_id}", f"segmentations[{k}]"
    try:
        rle = annotation_to_rle(record.segmentations[k], record.height, record.width)
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot decode the mask: {error}", record=where, field=field) from None
    if list(rle["size"]) != [record.height, record.width]:
        raise DataError(f"RLE size {rle['size']} is not [{record.height}, {record.width}]", record=where,
                        field=field)
    return rle_decode(rle).astype(bool)


def _write_masks(record: Record, root: Path, stem: str, class_index: dict[int, int]) -> list[int] | None:
    """Write the record's SegmentationObject and SegmentationClass PNGs. Returns the objects whose masks lost
    pixels to overlapping ones, or None when the record has no mask (PNGs of an earlier write are removed, so
    they cannot be read back as this image's masks)."""
    paths = (root / "SegmentationObject" / f"{stem}.png", root / "SegmentationClass" / f"{stem}.png")
    masked = [k for k, s in enumerate(record.segmentations or []) if s is not None]
    if not masked:
        for path in paths:
            path.unlink(missing_ok=True)
        return None
    where = f"image id {record.image_id}"
    if masked[-1] + 1 >= VOID:
        raise DataError(f"a SegmentationObject PNG numbers at most {VOID - 1} objects, this mask is object "
                        f"{masked[-1] + 1}", record=where, field=f"segmentations[{masked[-1]}]")
    masks = {k: _decode_mask(record, k) for k in masked}
    objects = np.zeros((record.height, record.width), dtype=np.uint8)
    classes = np.zeros((record.height, record.width), dtype=np.uint8)
    for k in sorted(masked, key=lambda k: -int(masks[k].sum())):   # larger first: the smaller stays on top
        label = int(record.labels[k])
        if label not in class_index:
            raise DataError(f"label {label} is not in the category table", record=where, field=f"labels[{k}]")
        index = VOID if record.iscrowd[k] else class_index[label]           # crowd regions are void, as in VOC
        if not record.iscrowd[k] and not 0 < index < VOID:
            raise DataError(f"category id {label} does not fit a SegmentationClass PNG (indices 1..{VOID - 1})",
                            record=where, field=f"labels[{k}]")
        objects[masks[k]] = k + 1
        classes[masks[k]] = index
    for path, indices in zip(paths, (objects, classes)):
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(indices)                                  # "L", made a palette image below
        picture.putpalette(VOC_PALETTE)
        picture.save(path)
    return [k for k in masked if not np.array_equal(objects == k + 1, masks[k])]
