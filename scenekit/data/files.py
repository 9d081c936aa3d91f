"""What the COCO, VOC and YOLO readers and writers share: checks, the `--skip-invalid` report, image export.

Every problem is a `DataError` naming the file, the record (an id or an index) and the field. A reader either
raises the first one (the default: bad data stops the run where it is) or, with `skip_invalid=True`, drops the
offending image or annotation, keeps going, and lists every drop in a JSON report so nothing is lost silently.

Border tolerance: real annotation files (COCO among them) hold boxes that poke past the image edge by a
fraction of a pixel, from floating-point rounding of polygon bounds. Boxes may extend past the border by up
to `BORDER_TOLERANCE` = 1.0 pixel and are kept unchanged (readers never edit coordinates, so round trips stay
exact; `transforms` clip them to the image). Anything further out is an error.
"""

from __future__ import annotations

import json
import shutil
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scenekit.errors import DataError

BORDER_TOLERANCE = 1.0      # pixels a box may extend past the image border


class Problems:
    """Collects the errors of one read: raises at once, or records them when skipping invalid input."""

    def __init__(self, file, skip_invalid: bool = False, report_path=None):
        self.file = str(file)
        self.skip_invalid = skip_invalid
        self.report_path = report_path
        self.skipped: list[dict] = []

    def error(self, message: str, *, record: str | None = None, field: str | None = None, file=None) -> DataError:
        return DataError(message, file=str(file) if file is not None else self.file, record=record, field=field)

    def handle(self, error: DataError, *, kind: str, ident=None) -> None:
        """Raise `error`, or (skip mode) note that the `kind` ("image" | "annotation") `ident` was dropped."""
        if not self.skip_invalid:
            raise error
        self.skipped.append({"kind": kind, "id": ident, "file": error.file, "record": error.record,
                             "field": error.field, "reason": error.reason, "message": str(error)})

    def finish(self, num_images: int, num_annotations: int) -> None:
        """Write the report (skip mode) and warn once when anything was dropped."""
        if not self.skip_invalid:
            return
        report = {
            "file": self.file,
            "images_loaded": num_images,
            "annotations_loaded": num_annotations,
            "images_skipped": sum(s["kind"] == "image" for s in self.skipped),
            "annotations_skipped": sum(s["kind"] == "annotation" for s in self.skipped),
            "skipped": self.skipped,
        }
        if self.report_path is not None:
            path = Path(self.report_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1))
        if self.skipped:
            where = f"; report: {self.report_path}" if self.report_path is not None else ""
            warnings.warn(f"{self.file}: skipped {report['images_skipped']} images and "
                          f"{report['annotations_skipped']} annotations as invalid (first: "
                          f"{self.skipped[0]['message']}){where}", stacklevel=3)


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def check_box(box_xyxy, width: float, height: float, problems: Problems, *, record: str, field: str,
              file=None, tolerance: float = BORDER_TOLERANCE) -> None:
    """Raise (via `problems.error`) for a box with negative/zero size or outside the image beyond tolerance."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise problems.error(f"box has non-positive size (width {x2 - x1:g}, height {y2 - y1:g})",
                             record=record, field=field, file=file)
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise problems.error(f"box xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} "
                             f"image by more than {tolerance:g} px", record=record, field=field, file=file)


def image_size(path: Path, problems: Problems, *, record: str, decode: bool = False, file=None) -> tuple[int, int]:
    """(width, height) of an image file; DataError when it is missing or PIL cannot read it.

    `decode=False` reads only the header (fast: catches missing files, non-images and wrong sizes);
    `decode=True` decodes every pixel (also catches truncated files).
    """
    path = Path(path)
    if not path.is_file():
        raise problems.error(f"image file not found: {path}", record=record, field="file_name", file=file)
    try:
        with Image.open(path) as picture:
            size = picture.size
            if decode:
                picture.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise problems.error(f"PIL cannot decode image {path}: {error}", record=record, field="file_name",
                             file=file) from None
    return int(size[0]), int(size[1])


def check_image(path: Path, width: int, height: int, problems: Problems, *, record: str, decode: bool = False,
                file=None) -> None:
    """The image exists, decodes, and has the width and height the annotation claims."""
    actual = image_size(path, problems, record=record, decode=decode, file=file)
    if actual != (int(width), int(height)):
        raise problems.error(f"annotation says {width}x{height} but image {path} is {actual[0]}x{actual[1]}",
                             record=record, field="width/height", file=file)


def load_json(path, what: str = "annotation file"):
    """Parse a JSON file; a missing, truncated or non-JSON file is a DataError naming the line and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found", file=str(path))
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        hint = " (the file looks truncated)" if error.pos >= len(error.doc.rstrip()) else ""
        raise DataError(f"not valid JSON at line {error.lineno} column {error.colno}: {error.msg}{hint}",
                        file=str(path)) from None
    except UnicodeDecodeError as error:
        raise DataError(f"not a UTF-8 text file: {error}", file=str(path)) from None


def unique_stems(dataset) -> list[str]:
    """File stems of the dataset's images, which VOC and YOLO use as keys: they must be unique."""
    stems = [Path(record.file_name).stem for record in dataset.records]
    seen: dict[str, int] = {}
    for record, stem in zip(dataset.records, stems):
        if stem in seen:
            raise DataError(f"two images share the file stem {stem!r} (image ids {seen[stem]} and "
                            f"{record.image_id}); VOC and YOLO name labels by stem",
                            record=f"image id {record.image_id}", field="file_name")
        seen[stem] = record.image_id
    return stems


def export_image(dataset, record, directory: Path, stem: str | None = None) -> Path:
    """Put the record's image into `directory`: an in-memory image as `<stem>.png`, a file as a copy.

    Returns the new path. A file already at the destination is left alone.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(record.file_name).stem
    if record.image is not None:
        target = directory / f"{stem}.png"
        Image.fromarray(np.asarray(record.image, dtype=np.uint8)).save(target, compress_level=1)  # fast, lossless
        return target
    source = dataset.image_path(record)
    target = directory / f"{stem}{source.suffix}"
    if not source.is_file():
        raise DataError(f"image file not found: {source}", record=f"image id {record.image_id}", field="file_name")
    if not target.exists() or not target.samefile(source):
        shutil.copyfile(source, target)
    return target
