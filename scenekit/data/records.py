"""The in-memory record: one image and everything annotated on it.

Every reader (COCO, VOC, YOLO, the embedded world) produces a `Dataset` of `Record`s and every writer consumes
one, so converting between formats is read-then-write. Conventions, fixed once here:

- boxes are `[N, 4]` float64 arrays in **xyxy pixel coordinates** with continuous edges, as COCO uses
  (a COCO bbox `[x, y, w, h]` is `[x, y, x + w, y + h]`); `labels` are category ids (keys of
  `Dataset.categories`), not contiguous indices.
- instance masks stay in their file form until asked for: per instance `None`, a list of polygons
  (`[[x1, y1, x2, y2, ...], ...]`) or a COCO RLE dict (`{"size": [h, w], "counts": str | list[int]}`).
- an in-memory image (`image`, `[H, W, 3]` uint8) is set by the generated world; file-backed records leave it
  `None` and name the file in `file_name` (relative to `Dataset.image_root`, or absolute).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _empty(shape, dtype):
    return np.zeros(shape, dtype=dtype)


@dataclass
class Question:
    """A multiple-choice question about an image, Visual7W style (Zhu et al. 2016)."""

    question: str
    choices: list[str]          # the candidate answers, usually 4
    answer: int                 # index of the right one in `choices`
    kind: str = "other"         # "colour" | "count" | "position" | "existence" | ...


@dataclass
class Record:
    """One image and its annotations."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: _empty((0, 4), np.float64))   # [N, 4] xyxy
    labels: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))      # [N] category ids
    ann_ids: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))     # [N] annotation ids
    iscrowd: np.ndarray = field(default_factory=lambda: _empty((0,), bool))         # [N]
    difficult: np.ndarray = field(default_factory=lambda: _empty((0,), bool))       # [N] (VOC)
    truncated: np.ndarray = field(default_factory=lambda: _empty((0,), bool))       # [N] (VOC)
    areas: np.ndarray | None = None            # [N] COCO "area" (mask area), None -> box area
    segmentations: list | None = None          # [N] polygons / RLE dict / None
    captions: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    image: np.ndarray | None = None            # [H, W, 3] uint8 when held in memory
    semantic: np.ndarray | None = None         # [H, W] int class map (0 = background) when known

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        for name in ("ann_ids", "iscrowd", "difficult", "truncated"):
            value = np.asarray(getattr(self, name)).reshape(-1)
            if len(value) == 0 and n > 0:
                value = np.arange(n, dtype=np.int64) if name == "ann_ids" else np.zeros(n, dtype=bool)
            setattr(self, name, value.astype(np.int64 if name == "ann_ids" else bool))
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float64).reshape(-1)
        for name in ("labels", "ann_ids", "iscrowd", "difficult", "truncated", "areas", "segmentations"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Record {self.image_id}: {name} has {len(value)} entries for {n} boxes")

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


@dataclass
class Dataset:
    """A list of records plus the category table (`{id: name}`) and where the image files live."""

    records: list[Record]
    categories: dict[int, str]
    image_root: Path | None = None
    name: str = ""
    skipped: list[dict] = field(default_factory=list)   # what a `skip_invalid` read dropped, with the reasons

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def image_path(self, record: Record) -> Path:
        path = Path(record.file_name)
        if not path.is_absolute() and self.image_root is not None:
            path = Path(self.image_root) / path
        return path
