"""A validation split held out of the training data, and the JSON file that records it.

Training on one's own data without separate validation data, a seeded random `fraction` of the images is held
out to validate on (at least one image, and at least one left to train on). Both sides keep the dataset's
categories and image root. The split file lists each side's images by id and file name, so a resumed run
validates on exactly the same images:

    {"seed": 0, "fraction": 0.1, "data": "coco:x.json", "train": [{"id": 1, "file_name": "a.png"}, ...],
     "val": [...]}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from scenekit.data.records import Dataset
from scenekit.errors import DataError


def subset(dataset: Dataset, indices, part: str) -> Dataset:
    """The records at `indices` (in the dataset's order), with its categories, image root and other fields."""
    records = [dataset.records[i] for i in sorted(indices)]
    return dataclasses.replace(dataset, records=records, name=f"{dataset.name} ({part})".strip(),
                               skipped=list(dataset.skipped) if part == "train" else [])


def hold_out(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, val): `round(fraction x images)` images, at least 1, drawn at random (seeded) for validation."""
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}", field="val_fraction")
    count = len(dataset)
    held = max(1, round(fraction * count))
    if count - held < 1:
        raise DataError(f"{count} image(s) are too few to hold out a validation split and still train; give "
                        "--val-data SPEC, or --val-fraction 0 to train without validation",
                        file=dataset.name or None, field="val_fraction")
    order = np.random.default_rng(seed).permutation(count)
    return subset(dataset, order[held:], "train"), subset(dataset, order[:held], "val")


def write_split(path, train: Dataset, val: Dataset, **about) -> None:
    """Write the split file (see the module docstring); `about` (seed, fraction, data) is stored beside it."""
    def side(dataset):
        return [{"id": int(r.image_id), "file_name": str(r.file_name)} for r in dataset.records]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({**about, "train": side(train), "val": side(val)}))
    temporary.replace(path)


def read_split(path, dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(train, val) of `dataset` as the split file at `path` divides it; DataError if the data changed since
    (an image of the file missing from the dataset, or an image of the dataset on neither side)."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
        sides = {part: [(int(e["id"]), str(e["file_name"])) for e in split[part]] for part in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"cannot read the split ({type(error).__name__}: {error})", file=str(path)) from None
    position = {(int(r.image_id), str(r.file_name)): i for i, r in enumerate(dataset.records)}
    indices = {}
    for part, keys in sides.items():
        missing = [key for key in keys if key not in position]
        if missing:
            raise DataError(f"{len(missing)} of its {part} images are not in the training data (first: id "
                            f"{missing[0][0]}, {missing[0][1]}); the data changed since the run started: resume "
                            "with the same --data, or start a new run", file=str(path))
        indices[part] = [position[key] for key in keys]
    left = len(dataset) - len(indices["train"]) - len(indices["val"])
    if left:
        raise DataError(f"{left} images of the training data are on neither side of the split; the data changed "
                        "since the run started: resume with the same --data, or start a new run", file=str(path))
    return subset(dataset, indices["train"], "train"), subset(dataset, indices["val"], "val")
