"""Which ground-truth image a detection result, or an image file, stands for: matching by file name.

A COCO result record names its image by `image_id`, a number that only means something next to the ground truth
it was made for. `scenekit predict` therefore writes each record's `file_name` too (and, given the dataset, the
dataset's image id), and `scenekit evaluate` maps file names onto the ground truth's image ids here, refusing
names it cannot match, so a score never depends on the order in which the images were given.

The rule (`FileNames.lookup`): a name is compared with the ground truth's file names of the same base name, and
the one sharing the longest run of trailing path components with it wins, so `val2017/000139.jpg` finds
`images/val2017/000139.jpg`, and `/tmp/copy/000139.jpg` finds it by its base name when that is unique. Equally
good candidates are ambiguous, and refused.
"""

from __future__ import annotations

import itertools
import operator
import os

from scenekit.errors import DataError

SHOWN = 5                               # names listed in one error line before "and N more"


def path_parts(name) -> tuple[str, ...]:
    """A file name's components, `/` and `\\` both separators, empty and `.` components dropped.

    >>> path_parts("./images\\\\val/0001.jpg")
    ('images', 'val', '0001.jpg')
    """
    return tuple(p for p in str(name).replace("\\", "/").split("/") if p not in ("", "."))


def _common_tail(a: tuple, b: tuple) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class FileNames:
    """The images of a ground truth (or a dataset) by file name: `lookup(name)` -> the best-matching images."""

    def __init__(self, image_ids, file_names):
        self._by_base: dict[str, list] = {}
        for image_id, file_name in zip(image_ids, file_names):
            if isinstance(file_name, str) and path_parts(file_name):
                parts = path_parts(file_name)
                self._by_base.setdefault(parts[-1], []).append((parts, int(image_id), file_name))

    def __bool__(self) -> bool:
        return bool(self._by_base)

    def lookup(self, name) -> list[tuple[int, str]]:
        """`[(image_id, file_name)]` of the images `name` stands for: one when it is matched, none when no image
        has its base name, several when the match is ambiguous."""
        parts = path_parts(name)
        found = self._by_base.get(parts[-1], []) if parts else []
        if len(found) > 1:
            tails = [_common_tail(parts, candidate) for candidate, _, _ in found]
            found = [entry for entry, tail in zip(found, tails) if tail == max(tails)]
        return [(image_id, file_name) for _, image_id, file_name in found]


def _listed(names) -> str:
    names = [repr(str(n)) for n in names]
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _resolve(names, index: FileNames, what: str, against: str, source: str | None, field: str) -> dict:
    """{name: (image_id, file_name)} for every name, or one DataError listing those unmatched or ambiguous."""
    matched, missing, ambiguous = {}, [], []
    for name in names:
        found = index.lookup(name)
        if len(found) == 1:
            matched[name] = found[0]
        elif found:
            ambiguous.append(f"{str(name)!r} (could be {_listed(f for _, f in found)})")
        else:
            missing.append(name)
    if missing:
        raise DataError(f"{what} not in {against}: {_listed(missing)}", file=source, field=field)
    if ambiguous:
        raise DataError(f"{what} matching several images of {against} (give more of the path): "
                        f"{', '.join(ambiguous[:SHOWN])}", file=source, field=field)
    return matched


def result_image_ids(results: list, image_ids, file_names, source: str = "results") -> list | None:
    """The image id each result record stands for, from its `file_name` where it has one; None when no record
    has one (a standard COCO result file: its `image_id`s are taken as they are).

    image_ids, file_names: the ground truth's images (aligned). A record with a `file_name` gets the id of the
    ground-truth image of that file name (see the module's rule); one DataError, naming the result file and the
    file names, refuses names that match no image or several, and records whose own `image_id` disagrees with
    their file name. Records without a `file_name` keep their `image_id` (possibly missing: checked later).
    """
    if set(map(type, results)) <= {dict}:          # the usual case, in C: which records have a file name
        if not any(map(operator.contains, results, itertools.repeat("file_name"))):
            return None
    named = [i for i, r in enumerate(results) if isinstance(r, dict) and "file_name" in r]
    if not named:
        return None
    for i in named:
        if not isinstance(results[i]["file_name"], str) or not path_parts(results[i]["file_name"]):
            raise DataError(f"must be a non-empty string, got {results[i]['file_name']!r}", file=source,
                            record=f"record {i}", field="file_name")
    index = FileNames(image_ids, file_names)
    if not index:
        raise DataError("the results name their images by file_name, but the ground truth's images have no "
                        "file_name to match them with", file=source, field="file_name")
    matched = _resolve(dict.fromkeys(results[i]["file_name"] for i in named), index, "file names",
                       "the ground truth's images", source, "file_name")
    ids = [r.get("image_id") if isinstance(r, dict) else None for r in results]
    for i in named:
        name = results[i]["file_name"]
        image_id, _ = matched[name]
        if "image_id" in results[i] and results[i]["image_id"] != image_id:
            raise DataError(f"image_id {results[i]['image_id']!r} disagrees with its file_name {name!r}, which is "
                            f"image {image_id} of the ground truth", file=source, record=f"record {i}",
                            field="image_id")
        ids[i] = image_id
    return ids


def dataset_image_ids(paths, dataset, spec: str | None = None) -> list[tuple[int, str]]:
    """The dataset's `(image_id, file_name)` of each image file in `paths`.

    A path is the dataset's image when it is the same file (same absolute path), else when the file names match
    (the module's rule against the records' `file_name`s). One DataError names every path that is not an image
    of the dataset, or that matches several.
    """
    by_path = {os.path.normpath(os.path.abspath(dataset.image_path(r))): (int(r.image_id), r.file_name)
               for r in dataset.records}
    index = FileNames([r.image_id for r in dataset.records], [r.file_name for r in dataset.records])
    rest = [p for p in paths if os.path.normpath(os.path.abspath(p)) not in by_path]
    against = f"the dataset {spec}" if spec else "the dataset"
    matched = _resolve(list(dict.fromkeys(str(p) for p in rest)), index, "images", against, None, "data")
    out = []
    for p in paths:
        key = os.path.normpath(os.path.abspath(p))
        out.append(by_path[key] if key in by_path else matched[str(p)])
    return out


def data_image_ids(paths, spec: str, split: str = "val") -> list[tuple[int, str]]:
    """`dataset_image_ids` against the dataset of a spec (`coco:PATH`, `voc:PATH`, `yolo:PATH`, read as
    `scenekit.data.load_data` reads it, without opening the images)."""
    from scenekit.data.sources import load_data, parse_spec

    if parse_spec(spec)[0] == "world":
        raise DataError("the world is generated in memory and has no image files to match; write it with "
                        "`scenekit data world --out DIR` and give coco:DIR", field="data")
    return dataset_image_ids(paths, load_data(spec, split, check_images=False), f"{spec} (split {split})")
