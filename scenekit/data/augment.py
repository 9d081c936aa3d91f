"""Augmentations for small data that keep boxes and masks exact, their options, and YOLO's mosaic.

Every transform here follows `transforms.py`: a callable `(image [H, W, 3] uint8, target) -> (image, target)`
moving `boxes` (xyxy, pixel-edge coordinates: pixel column c spans [c, c + 1)), `masks` [N, H, W] and the
`semantic` map together. In those coordinates a flip or a quarter turn maps the tight box of a mask exactly onto
the tight box of the moved mask: `HorizontalFlip`'s x' = W - x, `VerticalFlip`'s y' = H - y, and `Rotate90`'s
(x, y) -> (y, W - x) per counter-clockwise quarter turn (as `np.rot90`). Resizing moves boxes by the exact
factor and masks by nearest neighbour: no resized mask reaches more than half a pixel past its box, and a
rectangle's stays within a pixel of it (nearest sampling can skip the outermost pixels of other shapes). Crops
clip boxes to the window and drop the objects of which less than a fraction stays visible; a clipped box
contains the visible part of its mask and equals its tight box for rectangular objects.

The pipeline (`build_augmentation`, in this order):
  1. `RandomCrop`                 zoom into a window at the image's own resolution, before anything resamples it;
  2. `HorizontalFlip`, `VerticalFlip`, `Rotate90`   exact; before any fixed output size, which a quarter turn
     of a non-square output would transpose;
  3. `ScaleJitter` (+ `FixedSizeCrop` when the network input size is given, so the recipe's own fit to that
     size does not undo the jitter);
  4. `ColorJitter`                pixels only, last, so it sees the final image.
`MosaicDataset` (Bochkovskiy et al. 2020, YOLOv4 sec. 3.3) needs other samples, so it wraps a dataset of
(image, target) pairs instead, ahead of that pipeline (its `transform`); it mixes half the items by default, so
the other half keep the look of whole test images (Ultralytics mixes all and stops for the last epochs instead).

What to switch on is `AugmentOptions`; `WORLD_DEFAULTS` is what the world recipes have always used (a horizontal
flip), `USER_DATA_DEFAULTS` adds scale and colour jitter, crops and mosaic, and `TOP_DOWN_DEFAULTS` also vertical
flips and quarter turns: right for aerial and microscope images, where "up" is arbitrary, wrong for street,
indoor or product photographs, where gravity fixes it (an upside-down car or person never appears at test time
and costs capacity; classes told apart by orientation, such as 6 and 9, become ambiguous). So vertical flips and
rotations are on only when asked for, through `TOP_DOWN_DEFAULTS` or the `vflip` / `rot90` switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scenekit.data.records import Dataset
from scenekit.data.transforms import (INSTANCE_KEYS, ColorJitter, Compose, HorizontalFlip, RandomCrop,
                                      RandomTransform, Resize, clip_boxes, load_image, record_masks,
                                      record_target, select_instances)

__all__ = ["HorizontalFlip", "VerticalFlip", "Rotate90", "rotate90", "ScaleJitter", "FixedSizeCrop", "RandomCrop",
           "crop_window", "ColorJitter", "Compose", "mosaic", "MosaicDataset", "RecordPairs", "AugmentOptions",
           "OwnStream", "build_augmentation", "WORLD_DEFAULTS", "USER_DATA_DEFAULTS", "TOP_DOWN_DEFAULTS"]


# ------------------------------------------------------------------------------------------------- helpers
def _refuse_text(target: dict, name: str) -> None:
    # "left of" survives a mirror with its words swapped (HorizontalFlip does it); "above" under a quarter turn
    # has no faithful rewrite, so text-bearing data must not reach these transforms.
    if "captions" in target or "questions" in target:
        raise ValueError(f"{name} would make the spatial words of captions and questions false; "
                         f"leave vflip and rot90 off for captioning and VQA data")


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def crop_window(image: np.ndarray, target: dict, x0: int, y0: int, width: int, height: int,
                min_visible: float) -> tuple[np.ndarray, dict]:
    """The window [x0, x0 + width) x [y0, y0 + height) (inside the image) and its target: boxes shifted and
    clipped to it, and only the objects with a visible box area > 0 and >= `min_visible` of their whole area."""
    boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(boxes - [x0, y0, x0, y0], width, height)                     # [N, 4] in the window
    visible = _box_areas(clipped)
    keep = (visible > 0) & (visible >= min_visible * _box_areas(boxes))
    out = select_instances(target, keep)
    out["boxes"] = clipped[keep]
    if "masks" in out:
        out["masks"] = np.ascontiguousarray(out["masks"][:, y0:y0 + height, x0:x0 + width])
    if "semantic" in out:
        out["semantic"] = np.ascontiguousarray(np.asarray(out["semantic"])[y0:y0 + height, x0:x0 + width])
    return np.ascontiguousarray(image[y0:y0 + height, x0:x0 + width]), out


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, stream]).generate_state(1, np.uint64)[0] % 2 ** 63)


# ------------------------------------------------------------------------------------------------- flips, turns
class VerticalFlip(RandomTransform):
    """Mirror top-bottom with probability `p`: y' = H - y, so box [x1, y1, x2, y2] -> [x1, H - y2, x2, H - y1]
    (the vertical twin of `transforms.HorizontalFlip`). Refuses targets with captions or questions."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, target):
        _refuse_text(target, "VerticalFlip")
        if self.rng.random() >= self.p:
            return image, target
        height = image.shape[0]
        out = dict(target)
        boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        out["boxes"] = np.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], 1)
        if "masks" in target:
            out["masks"] = np.ascontiguousarray(np.asarray(target["masks"])[:, ::-1])
        if "semantic" in target:
            out["semantic"] = np.ascontiguousarray(np.asarray(target["semantic"])[::-1])
        return np.ascontiguousarray(image[::-1]), out


def rotate90(image: np.ndarray, target: dict, k: int) -> tuple[np.ndarray, dict]:
    """`k` counter-clockwise quarter turns, as `np.rot90(image, k)`: an H x W image becomes W x H for odd k.
    One turn moves pixel (row r, column c) to (W - 1 - c, r), i.e. the point (x, y) to (y, W - x), so box
    [x1, y1, x2, y2] -> [y1, W - x2, y2, W - x1]."""
    k = int(k) % 4
    if k == 0:
        return image, target
    out = dict(target)
    boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
    height, width = image.shape[:2]
    for _ in range(k):
        boxes = np.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], 1)
        height, width = width, height
    out["boxes"] = boxes
    if "masks" in target:
        out["masks"] = np.ascontiguousarray(np.rot90(np.asarray(target["masks"]), k, axes=(1, 2)))
    if "semantic" in target:
        out["semantic"] = np.ascontiguousarray(np.rot90(np.asarray(target["semantic"]), k))
    return np.ascontiguousarray(np.rot90(image, k)), out


class Rotate90(RandomTransform):
    """Rotate by `k` counter-clockwise quarter turns (`rotate90`); `k=None` draws k from {0, 1, 2, 3} uniformly,
    so with a horizontal flip every one of the square's 8 symmetries is equally likely (the usual augmentation of
    aerial and microscope images). Refuses targets with captions or questions."""

    def __init__(self, k: int | None = None, seed: int | None = None):
        super().__init__(seed)
        if k is not None and k not in (0, 1, 2, 3):
            raise ValueError(f"k must be None or one of 0, 1, 2, 3, got {k}")
        self.k = k

    def __call__(self, image, target):
        _refuse_text(target, "Rotate90")
        k = int(self.rng.integers(4)) if self.k is None else self.k
        return rotate90(image, target, k)


# ------------------------------------------------------------------------------------------------- scale
def _pair(size, name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in pair):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


class ScaleJitter(RandomTransform):
    """Resize by a factor drawn from `scale_range`, keeping the aspect ratio: boxes by the exact factor, masks
    and the semantic map by nearest neighbour (`transforms.Resize`), so boxes stay within a pixel of the
    masks' tight boxes. With `target_size` (int or (h, w)), the factor multiplies the scale that fits the image
    inside it, as torchvision's detection reference `ScaleJitter(target_size, scale_range)` (the large-scale
    jitter of Ghiasi et al. 2021, "Simple Copy-Paste", sec. 3); follow it by `FixedSizeCrop(target_size)`."""

    def __init__(self, target_size=None, scale_range=(0.75, 1.25), seed: int | None = None):
        super().__init__(seed)
        self.target_size = None if target_size is None else _pair(target_size, "target_size")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def __call__(self, image, target):
        height, width = image.shape[:2]
        scale = self.rng.uniform(*self.scale_range)
        if self.target_size is not None:
            scale *= min(self.target_size[0] / height, self.target_size[1] / width)
        new_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
        return Resize(new_hw)(image, target)


class FixedSizeCrop(RandomTransform):
    """Make the image exactly `size` (int or (h, w)): a random window where it is larger (objects kept as in
    `crop_window`, by `min_visible`), then padding at the bottom and right where it is smaller (image `fill`,
    masks 0, semantic `semantic_fill`), as torchvision's detection reference `FixedSizeCrop(size, fill)` and
    the top-left placement of the two-stage detectors' `fit_image`."""

    def __init__(self, size, fill: int = 0, semantic_fill: int = 0, min_visible: float = 0.25,
                 seed: int | None = None):
        super().__init__(seed)
        self.size, self.min_visible = _pair(size, "size"), min_visible
        self.fill, self.semantic_fill = fill, semantic_fill

    def __call__(self, image, target):
        (height, width), (out_h, out_w) = image.shape[:2], self.size
        if height > out_h or width > out_w:
            x0 = int(self.rng.integers(0, max(width - out_w, 0) + 1))
            y0 = int(self.rng.integers(0, max(height - out_h, 0) + 1))
            image, target = crop_window(image, target, x0, y0, min(width, out_w), min(height, out_h),
                                        self.min_visible)
        height, width = image.shape[:2]
        if (height, width) == (out_h, out_w):
            return image, target
        canvas = np.full((out_h, out_w, 3), self.fill, dtype=np.uint8)
        canvas[:height, :width] = image
        out = dict(target)
        out["boxes"] = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        if "masks" in target:
            masks = np.asarray(target["masks"])
            out["masks"] = np.zeros((len(masks), out_h, out_w), dtype=masks.dtype)
            out["masks"][:, :height, :width] = masks
        if "semantic" in target:
            semantic = np.asarray(target["semantic"])
            out["semantic"] = np.full((out_h, out_w), self.semantic_fill, dtype=semantic.dtype)
            out["semantic"][:height, :width] = semantic
        return canvas, out


# ------------------------------------------------------------------------------------------------- mosaic
def mosaic(pairs, size: int, centre, *, fill: int = 114, semantic_fill: int = 0,
           min_visible: float = 0.25) -> tuple[np.ndarray, dict]:
    """Four (image, target) pairs in a `size` x `size` canvas meeting at `centre` (cx, cy): top-left,
    top-right, bottom-left, bottom-right, in that order (Bochkovskiy et al. 2020, YOLOv4 sec. 3.3, "Mosaic
    represents a new data augmentation method that mixes 4 training images").

    As in Ultralytics' YOLOv5 `load_mosaic`, each image is first resized so its longer side is `size` (the
    scale it would have alone) and put with its inner corner on the centre, so the canvas shows the part of it
    nearest that corner; uncovered canvas is `fill`. (Ultralytics builds a 2 x size canvas and then cuts a
    size x size view from it with a random affine map; here the canvas is the view.)

    Boxes are clipped to their quarter, and an object is kept if the visible part of its box has area > 0 and at
    least `min_visible` of its whole area (Ultralytics keeps 0.1, `RandomCrop` 0.5). The target holds boxes, masks
    [N, size, size] and the semantic map when all four have them (else ValueError), the per-object fields all four
    have, and the first pair's `image_id`; captions and other per-image fields are dropped, since no one of them
    describes the mosaic.
    """
    if len(pairs) != 4:
        raise ValueError(f"a mosaic takes 4 (image, target) pairs, got {len(pairs)}")
    cx, cy = int(centre[0]), int(centre[1])
    if not (0 <= cx <= size and 0 <= cy <= size):
        raise ValueError(f"centre {tuple(centre)} is outside the {size} x {size} canvas")
    targets = [target for _, target in pairs]
    for key in ("masks", "semantic"):
        if len({key in target for target in targets}) > 1:
            raise ValueError(f"all four targets or none must have {key!r}")
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    out = {"boxes": [], **{key: [] for key in INSTANCE_KEYS[1:] if all(key in t for t in targets)}}
    if "semantic" in targets[0]:
        out["semantic"] = np.full((size, size), semantic_fill, dtype=np.asarray(targets[0]["semantic"]).dtype)
    for quarter, (image, target) in enumerate(pairs):
        height, width = image.shape[:2]
        scale = size / max(height, width)
        image, target = Resize((max(1, round(height * scale)), max(1, round(width * scale))))(image, target)
        height, width = image.shape[:2]
        right, bottom = quarter in (1, 3), quarter in (2, 3)
        left_x, top_y = (cx if right else cx - width), (cy if bottom else cy - height)   # image corner on canvas
        x0, x1 = max(left_x, cx if right else 0), min(left_x + width, size if right else cx)
        y0, y1 = max(top_y, cy if bottom else 0), min(top_y + height, size if bottom else cy)
        if x1 <= x0 or y1 <= y0:
            continue                                        # the centre sits on the canvas edge: no quarter
        piece, kept = crop_window(image, target, x0 - left_x, y0 - top_y, x1 - x0, y1 - y0, min_visible)
        canvas[y0:y1, x0:x1] = piece
        out["boxes"].append(kept["boxes"] + [x0, y0, x0, y0])
        if "masks" in out:
            masks = np.zeros((len(kept["masks"]), size, size), dtype=np.uint8)
            masks[:, y0:y1, x0:x1] = kept["masks"]
            kept["masks"] = masks
        if "semantic" in out:
            out["semantic"][y0:y1, x0:x1] = kept["semantic"]
        for key in INSTANCE_KEYS[1:]:
            if key in out:
                out[key].append(np.asarray(kept[key]))
    out["boxes"] = np.concatenate(out["boxes"]).reshape(-1, 4) if out["boxes"] else np.zeros((0, 4))
    for key in INSTANCE_KEYS[1:]:
        if key in out:
            out[key] = np.concatenate(out[key]) if out[key] else np.asarray(targets[0][key])[:0]
    if "image_id" in targets[0]:
        out["image_id"] = targets[0]["image_id"]
    return canvas, out


def _set_stream(random: RandomTransform, seed: int | None, stream: int) -> None:
    # Read torch's seed at call time: it differs in each DataLoader worker and epoch, which is what seed=None means.
    random.seed = _stream_seed(torch.initial_seed() if seed is None else seed, stream)


class MosaicDataset(torch.utils.data.Dataset):
    """A dataset of (image, target) pairs where, with probability `p`, item i is `mosaic` of image i and three
    others drawn at random, in random quarters around a centre drawn uniformly in `centre_range` x `size`
    (Ultralytics draws it over the whole canvas; the default keeps every image at least a quarter of each side).
    Other items are dataset[i] unchanged (any size: the recipe's fit follows). `transform` then runs on every item.

    `dataset` is any indexable of numpy (image [H, W, 3] uint8, target) pairs, such as `RecordPairs`. Random draws
    follow `seed`, or, with seed=None, torch's seed, which the engine sets and DataLoader varies per worker
    and epoch; for a given seed the items depend on the order they are read in.
    """

    def __init__(self, dataset, size: int, p: float = 0.5, seed: int | None = None, *, transform=None,
                 centre_range=(0.25, 0.75), fill: int = 114, semantic_fill: int = 0, min_visible: float = 0.25):
        if not 0 <= p <= 1 or not 0 <= centre_range[0] <= centre_range[1] <= 1:
            raise ValueError(f"need 0 <= p <= 1 and 0 <= low <= high <= 1, got p={p}, centre_range={centre_range}")
        self.dataset, self.size, self.p, self.seed, self.transform = dataset, int(size), p, seed, transform
        self.centre_range, self.min_visible = centre_range, min_visible
        self.fill, self.semantic_fill = fill, semantic_fill
        self._random = RandomTransform()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        _set_stream(self._random, self.seed, _STREAMS.index("mosaic"))
        rng = self._random.rng
        if rng.random() >= self.p:
            image, target = self.dataset[index]
        else:
            indices = np.array([int(index), *rng.integers(len(self.dataset), size=3)])[rng.permutation(4)]
            low, high = round(self.centre_range[0] * self.size), round(self.centre_range[1] * self.size)
            centre = rng.integers(low, high + 1, size=2)
            pairs = [self.dataset[int(i)] for i in indices]
            image, target = mosaic(pairs, self.size, centre, fill=self.fill, semantic_fill=self.semantic_fill,
                                   min_visible=self.min_visible)
            primary = pairs[int(np.flatnonzero(indices == index)[0])][1]
            if "image_id" in primary:
                target["image_id"] = primary["image_id"]
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class RecordPairs(torch.utils.data.Dataset):
    """A `records.Dataset` as (image [H, W, 3] uint8, target) pairs for the augmentations: `transforms.record_target`
    plus `difficult` (VOC), and with `with_masks` the instance masks (`box_fallback` fills the box of an instance
    without an outline, as the two-stage detectors do). Captions and questions are left out: detectors do not read
    them, and a vertical flip or a quarter turn would falsify them. `transform` runs on each pair."""

    def __init__(self, dataset: Dataset, with_masks: bool = False, box_fallback: bool = False, transform=None):
        self.dataset, self.with_masks, self.box_fallback, self.transform = dataset, with_masks, box_fallback, transform

    def __len__(self) -> int:
        return len(self.dataset.records)

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        target = record_target(record)
        target.pop("captions", None)
        target["difficult"] = record.difficult.copy()
        if self.with_masks:
            target["masks"] = record_masks(record, box_fallback=self.box_fallback)
        image = load_image(self.dataset, record)
        return (image, target) if self.transform is None else self.transform(image, target)


# ------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations a recipe applies to its training images; the defaults are those for user data."""

    hflip: bool = field(default=True, metadata={"help": "mirror left-right with probability 1/2"})
    vflip: bool = field(default=False, metadata={
        "help": "mirror top-bottom with probability 1/2 (top-down images only: aerial, microscopy)"})
    rot90: bool = field(default=False, metadata={
        "help": "rotate by 0, 90, 180 or 270 degrees, uniformly (top-down images only: aerial, microscopy)"})
    scale_jitter: float = field(default=0.25, metadata={
        "help": "resize by a factor drawn from [1 - x, 1 + x]; 0 turns it off"})
    color_jitter: float = field(default=0.2, metadata={
        "help": "brightness, contrast and saturation factors drawn from [1 - x, 1 + x]; 0 turns it off"})
    crop: bool = field(default=True, metadata={
        "help": "random crop, each side 50-100% of the image's, keeping objects at least half inside"})
    mosaic: float = field(default=0.5, metadata={
        "help": "probability that a training image is a 2 x 2 mosaic of four (YOLO recipes); 0 turns it off"})

    def __post_init__(self):
        if not 0 <= self.scale_jitter < 1:
            raise ValueError(f"scale_jitter must be in [0, 1), got {self.scale_jitter}")
        if not 0 <= self.color_jitter <= 1:
            raise ValueError(f"color_jitter must be in [0, 1], got {self.color_jitter}")
        if not 0 <= self.mosaic <= 1:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {self.mosaic}")


WORLD_DEFAULTS = AugmentOptions(hflip=True, vflip=False, rot90=False, scale_jitter=0.0, color_jitter=0.0,
                                crop=False, mosaic=0.0)          # what the world recipes have always done
USER_DATA_DEFAULTS = AugmentOptions()                            # photographs taken upright: no vflip, no rot90
TOP_DOWN_DEFAULTS = AugmentOptions(vflip=True, rot90=True)       # aerial and microscope images: all 8 symmetries

# Each random transform draws from its own stream, so transforms sharing a seed do not draw the same numbers.
_STREAMS = ("mosaic", "crop", "hflip", "vflip", "rot90", "scale_jitter", "fixed_size", "color_jitter")


class OwnStream:
    """Run the random `transform` on its own stream `stream` of `seed`, or, with seed=None, of torch's seed read
    in each process (it differs per DataLoader worker and epoch). Two transforms built with one seed, or both
    with seed=None, would otherwise draw the same numbers: a horizontal and a vertical flip with p = 1/2 would
    always fire together. (An int seed restarts in each new worker process, so with non-persistent workers
    every epoch repeats the same draws: recipes pass seed=None and let the engine seed torch.)"""

    def __init__(self, transform: RandomTransform, stream: int, seed: int | None = None):
        self.transform, self.stream, self.seed = transform, stream, seed

    def __call__(self, image, target):
        _set_stream(self.transform, self.seed, self.stream)
        return self.transform(image, target)

    def __repr__(self):
        return f"OwnStream({self.transform!r}, stream={self.stream}, seed={self.seed})"


def build_augmentation(options: AugmentOptions, seed: int | None = None, *, size=None, fill: int = 0) -> Compose:
    """The per-image pipeline `options` switch on, in the module's order: crop, flips and quarter turns, scale
    jitter, colour jitter (mosaic is `MosaicDataset`'s, at the dataset level). With `size` (the network input,
    int or (h, w)), scale jitter fits the image to `size` times the drawn factor and `FixedSizeCrop(size, fill)`
    crops or pads it to exactly `size`, so a later fit to `size` changes nothing and the jitter survives."""
    steps = []
    if options.crop:
        steps.append(("crop", RandomCrop(min_overlap=0.5, scale=(0.5, 1.0))))
    if options.hflip:
        steps.append(("hflip", HorizontalFlip(p=0.5)))
    if options.vflip:
        steps.append(("vflip", VerticalFlip(p=0.5)))
    if options.rot90:
        steps.append(("rot90", Rotate90()))
    if options.scale_jitter:
        steps.append(("scale_jitter", ScaleJitter(size, (1 - options.scale_jitter, 1 + options.scale_jitter))))
        if size is not None:
            steps.append(("fixed_size", FixedSizeCrop(size, fill=fill)))
    if options.color_jitter:
        strength = options.color_jitter
        steps.append(("color_jitter", ColorJitter(brightness=strength, contrast=strength, saturation=strength)))
    return Compose([OwnStream(transform, _STREAMS.index(kind), seed) for kind, transform in steps])
