"""Box-, mask- and caption-aware transforms, the detection `Dataset` and its batching.

A transform is a callable `(image [H, W, 3] uint8, target) -> (image, target)`, where `target` is a dict of
numpy arrays: `boxes` [N, 4] xyxy float, `labels` [N], optional `masks` [N, H, W] uint8, `semantic` [H, W],
per-instance `iscrowd` / `difficult` / `truncated` / `ann_ids`, and `captions` / `questions` (text). Every
transform moves boxes, masks and maps together and returns boxes clipped to the new image, so a box never
leaves the image and the box of a rectangular mask stays the transformed box (within a pixel after resizing).

Random transforms draw from their own generator: seeded by `seed` (and the DataLoader worker id, so workers
differ), or, with `seed=None`, by `torch.initial_seed()`, which `torch.manual_seed` and DataLoader control.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from scenekit.data.records import Dataset, Question, Record
from scenekit.errors import DataError

INSTANCE_KEYS = ("boxes", "labels", "masks", "iscrowd", "difficult", "truncated", "ann_ids")


# ------------------------------------------------------------------------------------------------- records
def load_image(dataset: Dataset, record: Record) -> np.ndarray:
    """The record's pixels as [H, W, 3] uint8: the in-memory image, else the decoded file (RGB)."""
    where = f"image id {record.image_id}"
    if record.image is not None:
        image = np.asarray(record.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"in-memory image must be [H, W, 3] uint8, got {image.dtype} {image.shape}",
                            record=where, field="image")
        return image
    path = dataset.image_path(record)
    try:
        with Image.open(path) as picture:
            image = np.array(picture.convert("RGB"))             # grey, palette, RGBA, CMYK -> RGB (writable)
    except FileNotFoundError:
        raise DataError("image file not found", file=str(path), record=where, field="file_name") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"PIL cannot decode the image: {error}", file=str(path), record=where,
                        field="file_name") from None
    if image.shape[:2] != (record.height, record.width):
        raise DataError(f"annotation says {record.width}x{record.height} but the image is "
                        f"{image.shape[1]}x{image.shape[0]}", file=str(path), record=where, field="width/height")
    return image


def prepare_image(image: np.ndarray, size: int | None = None) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, S, S] float32 in [0, 1], resized bilinearly (antialiased when shrinking) to
    `size` x `size`; `size=None` keeps H x W. The one image-to-tensor step of the models' data loaders."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an [H, W, 3] uint8 array, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    if size is not None and tensor.shape[1:] != (size, size):
        tensor = torch.nn.functional.interpolate(tensor[None], size=(size, size), mode="bilinear",
                                                 align_corners=False, antialias=True)[0]
    return tensor


def record_masks(record: Record, box_fallback: bool = False) -> np.ndarray:
    """Instance masks [N, H, W] uint8 from the record's polygons / RLEs.

    An instance without an outline is an error unless `box_fallback`, which fills its box (rounded to pixels).
    """
    from scenekit.masks import rle_decode

    n, height, width = record.num_objects, record.height, record.width
    masks = np.zeros((n, height, width), dtype=np.uint8)
    segmentations = record.segmentations if record.segmentations is not None else [None] * n
    for k, segmentation in enumerate(segmentations):
        where, field = f"image id {record.image_id}", f"segmentations[{k}]"
        if segmentation is None:
            if not box_fallback:
                raise DataError("instance has no mask (pass box_fallback=True to use its box)", record=where,
                                field=field)
            x1, y1, x2, y2 = np.round(record.boxes[k]).astype(int)
            masks[k, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
        elif isinstance(segmentation, dict):
            if list(segmentation["size"]) != [height, width]:
                raise DataError(f"RLE size {segmentation['size']} is not [{height}, {width}]", record=where,
                                field=field)
            masks[k] = rle_decode(segmentation)
        else:
            from scenekit.masks import polygons_to_rle           # rasterised exactly as pycocotools does

            masks[k] = rle_decode(polygons_to_rle(segmentation, height, width))
    return masks


def record_target(record: Record, with_masks: bool = False) -> dict:
    """The transform target of a record; boxes are clipped to the image (files may hold boxes up to
    `files.BORDER_TOLERANCE` px past the border)."""
    target = {"boxes": clip_boxes(record.boxes, record.width, record.height), "labels": record.labels.copy(),
              "iscrowd": record.iscrowd.copy(), "image_id": int(record.image_id)}
    if with_masks:
        target["masks"] = record_masks(record)
    if record.semantic is not None:
        target["semantic"] = np.asarray(record.semantic)
    if record.captions:
        target["captions"] = list(record.captions)
    return target


# ------------------------------------------------------------------------------------------------- helpers
def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def select_instances(target: dict, keep: np.ndarray) -> dict:
    """The target with only the instances where `keep` (bool [N]) is true."""
    out = dict(target)
    for key in INSTANCE_KEYS:
        if key in out:
            out[key] = np.asarray(out[key])[keep]
    return out


def _nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Source pixel of each output pixel under nearest-neighbour resizing by pixel centres (as PIL)."""
    return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64), in_size - 1)


def _resize_target(target: dict, old_hw, new_hw) -> dict:
    (h, w), (nh, nw) = old_hw, new_hw
    out = dict(target)
    out["boxes"] = clip_boxes(np.asarray(target["boxes"], dtype=np.float64) * [nw / w, nh / h, nw / w, nh / h], nw, nh)
    rows, cols = _nearest_indices(nh, h), _nearest_indices(nw, w)
    if "masks" in target:
        out["masks"] = np.asarray(target["masks"])[:, rows][:, :, cols]          # [N, H, W] -> [N, nh, nw]
    if "semantic" in target:
        out["semantic"] = np.asarray(target["semantic"])[rows][:, cols]
    return out


def _resize_image(image: np.ndarray, new_hw) -> np.ndarray:
    if image.shape[:2] == tuple(new_hw):
        return image
    return np.asarray(Image.fromarray(image).resize((new_hw[1], new_hw[0]), Image.BILINEAR))


class RandomTransform:
    """Base of the random transforms: a numpy generator per process and DataLoader worker."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._rng, self._owner = None, None

    @property
    def rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.id)
        if self._rng is None or self._owner != owner:
            base = int(torch.initial_seed() if self.seed is None else self.seed) % 2 ** 63
            self._rng = np.random.default_rng(base if owner[1] is None else [base, owner[1]])
            self._owner = owner
        return self._rng


# ------------------------------------------------------------------------------------------------- transforms
class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self):
        return f"Compose({self.transforms})"


class Resize:
    """Resize to `size`: an (h, w) pair exactly, or an int for the shorter side keeping the aspect ratio with
    the longer side capped at `max_size` (Fast/Faster R-CNN train at shorter side 600, longer <= 1000)."""

    def __init__(self, size, max_size: int | None = None):
        self.size, self.max_size = size, max_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return int(self.size[0]), int(self.size[1])
        scale = self.size / min(height, width)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, image, target):
        new_hw = self.output_size(*image.shape[:2])
        return _resize_image(image, new_hw), _resize_target(target, image.shape[:2], new_hw)


def _letterbox_geometry(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """(new height, new width, top, left) of an h x w image scaled to fit out_h x out_w, aspect kept, centred."""
    scale = min(out_h / h, out_w / w)
    nh, nw = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
    return nh, nw, (out_h - nh) // 2, (out_w - nw) // 2


def letterbox_image(image: np.ndarray, size, fill: int = 114) -> tuple[np.ndarray, np.ndarray]:
    """The image half of `Letterbox`: ([out_h, out_w, 3] canvas, [scale_x, scale_y, left, top]) for an
    [H, W, 3] image and `size` (int or (h, w)); x_original = (x - left) / scale_x."""
    (h, w), (out_h, out_w) = image.shape[:2], ((size, size) if isinstance(size, int) else size)
    nh, nw, top, left = _letterbox_geometry(h, w, out_h, out_w)
    canvas = np.full((out_h, out_w, 3), fill, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = _resize_image(image, (nh, nw))
    return canvas, np.array([nw / w, nh / h, left, top], dtype=np.float64)


class Letterbox:
    """Scale to fit inside `size` (int or (h, w)) keeping the aspect ratio, then pad the rest with `fill`,
    centred (as YOLO's letterbox). `target["letterbox"] = [scale_x, scale_y, left, top]` undoes it:
    x_original = (x - left) / scale_x."""

    def __init__(self, size, fill: int = 114, semantic_fill: int = 0):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.fill, self.semantic_fill = fill, semantic_fill

    def __call__(self, image, target):
        (h, w), (out_h, out_w) = image.shape[:2], self.size
        canvas, undo = letterbox_image(image, self.size, self.fill)
        nh, nw, top, left = _letterbox_geometry(h, w, out_h, out_w)
        target = _resize_target(target, (h, w), (nh, nw))
        target["boxes"] = target["boxes"] + [left, top, left, top]
        if "masks" in target:
            masks = np.zeros((len(target["masks"]), out_h, out_w), dtype=np.uint8)
            masks[:, top:top + nh, left:left + nw] = target["masks"]
            target["masks"] = masks
        if "semantic" in target:
            semantic = np.full((out_h, out_w), self.semantic_fill, dtype=np.asarray(target["semantic"]).dtype)
            semantic[top:top + nh, left:left + nw] = target["semantic"]
            target["semantic"] = semantic
        target["letterbox"] = undo
        return canvas, target


_SIDE = re.compile(r"\b(left|right)(?=(most|ward|wards|-hand)?\b)", re.IGNORECASE)


def flip_text(text: str) -> str:
    """Swap the words "left" and "right" (keeping their case), so a description stays true of the mirrored
    image: "a star to the left of a ring" -> "a star to the right of a ring"."""
    def swap(match):
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other
    return _SIDE.sub(swap, text)


class HorizontalFlip(RandomTransform):
    """Mirror left-right with probability `p`; captions and questions swap "left" and "right"."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, target):
        if self.rng.random() >= self.p:
            return image, target
        width = image.shape[1]
        out = dict(target)
        boxes = np.asarray(target["boxes"], dtype=np.float64)
        out["boxes"] = clip_boxes(np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1),
                                  width, image.shape[0])
        if "masks" in target:
            out["masks"] = np.ascontiguousarray(np.asarray(target["masks"])[:, :, ::-1])
        if "semantic" in target:
            out["semantic"] = np.ascontiguousarray(np.asarray(target["semantic"])[:, ::-1])
        if "captions" in target:
            out["captions"] = [flip_text(c) for c in target["captions"]]
        if "questions" in target:                       # the answer index stays: choices swap words in place
            out["questions"] = [Question(flip_text(q.question), [flip_text(c) for c in q.choices], q.answer, q.kind)
                                for q in target["questions"]]
        return np.ascontiguousarray(image[:, ::-1]), out


class RandomCrop(RandomTransform):
    """Crop a random window (each side a `scale` fraction of the image's, anywhere inside it).

    Boxes are clipped to the window, and a box is kept only if at least `min_overlap` of its area stays inside
    (the seed's random shifts and scales "keeping crops with >= 50% overlap"; SSD, Liu et al. 2016, instead
    keeps boxes whose centre lies in the crop). Up to `max_trials` windows are drawn until one keeps an object; an image
    whose objects all fall out of every window is returned unchanged. Captions are kept as they are, though
    a crop can cut away an object they mention.
    """

    def __init__(self, min_overlap: float = 0.5, scale=(0.5, 1.0), max_trials: int = 50, seed: int | None = None):
        super().__init__(seed)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        self.min_overlap, self.scale, self.max_trials = min_overlap, scale, max_trials

    def __call__(self, image, target):
        height, width = image.shape[:2]
        boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        for _ in range(self.max_trials):
            crop_w = max(1, round(width * self.rng.uniform(*self.scale)))
            crop_h = max(1, round(height * self.rng.uniform(*self.scale)))
            x0 = int(self.rng.integers(0, width - crop_w + 1))
            y0 = int(self.rng.integers(0, height - crop_h + 1))
            clipped = clip_boxes(boxes - [x0, y0, x0, y0], crop_w, crop_h)                 # [N, 4] in the crop
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            keep = (inside >= self.min_overlap * area) & (inside > 0)
            if len(boxes) and not keep.any():
                continue
            out = select_instances(target, keep)
            out["boxes"] = clipped[keep]
            if "masks" in target:
                out["masks"] = out["masks"][:, y0:y0 + crop_h, x0:x0 + crop_w]
            if "semantic" in target:
                out["semantic"] = np.asarray(target["semantic"])[y0:y0 + crop_h, x0:x0 + crop_w]
            return image[y0:y0 + crop_h, x0:x0 + crop_w], out
        return image, target


class ColorJitter(RandomTransform):
    """Random brightness, contrast, saturation (factors in [1 - x, 1 + x]) and hue (shift in [-hue, hue] of
    the colour circle), applied in random order, as torchvision's ColorJitter. Hue shifts change the colours
    that captions and questions name, so `hue` defaults to 0."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.0,
                 seed: int | None = None):
        super().__init__(seed)
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, image, target):
        pixels = image.astype(np.float32)                                                   # [H, W, 3]
        for op in self.rng.permutation(4):
            if op == 0 and self.brightness:
                pixels = pixels * self.rng.uniform(1 - self.brightness, 1 + self.brightness)
            elif op == 1 and self.contrast:
                mean = _grey(pixels).mean()
                pixels = (pixels - mean) * self.rng.uniform(1 - self.contrast, 1 + self.contrast) + mean
            elif op == 2 and self.saturation:
                grey = _grey(pixels)[..., None]
                pixels = (pixels - grey) * self.rng.uniform(1 - self.saturation, 1 + self.saturation) + grey
            elif op == 3 and self.hue:
                shift = round(self.rng.uniform(-self.hue, self.hue) * 255)
                hsv = np.asarray(Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)).convert("HSV")).copy()
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 256
                pixels = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"), dtype=np.float32)
            pixels = pixels.clip(0, 255)
        return pixels.round().astype(np.uint8), target


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)                      # ITU-R 601 luma


# ------------------------------------------------------------------------------------------------- dataset
class DetectionDataset(torch.utils.data.Dataset):
    """A torch Dataset of (image float32 [3, H, W] in [0, 1], target) pairs for detection and segmentation.

    target: boxes float32 [N, 4] xyxy, labels int64 [N] (category ids), iscrowd bool [N], image_id int,
    masks uint8 [N, H, W] (with_masks), semantic int64 [H, W] (when known), captions (when any).
    Indexing with `(index, size)`, as `MultiScaleBatchSampler` does, fits the image to `size` with `fit(size)`
    (default `Letterbox`) after `transform`.
    """

    def __init__(self, dataset: Dataset, transform=None, with_masks: bool = False, fit=Letterbox):
        self.dataset, self.transform, self.with_masks, self.fit = dataset, transform, with_masks, fit

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, size = key if isinstance(key, tuple) else (key, None)
        record = self.dataset.records[index]
        image, target = load_image(self.dataset, record), record_target(record, self.with_masks)
        if self.transform is not None:
            image, target = self.transform(image, target)
        if size is not None:
            image, target = self.fit(size)(image, target)
        out = {"boxes": torch.as_tensor(np.asarray(target["boxes"]).reshape(-1, 4), dtype=torch.float32),
               "labels": torch.as_tensor(np.asarray(target["labels"]), dtype=torch.int64),
               "iscrowd": torch.as_tensor(np.asarray(target["iscrowd"]), dtype=torch.bool),
               "image_id": int(target["image_id"])}
        if "masks" in target:
            out["masks"] = torch.as_tensor(np.ascontiguousarray(target["masks"]), dtype=torch.uint8)
        if "semantic" in target:
            out["semantic"] = torch.as_tensor(np.ascontiguousarray(target["semantic"]), dtype=torch.int64)
        for key_name in ("captions", "letterbox"):
            if key_name in target:
                out[key_name] = target[key_name]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)  # [3, H, W]
        return pixels, out


def collate_detection(batch):
    """[(image, target), ...] -> (images [B, 3, H, W] when all share a size, else a list; targets list)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    if images and all(image.shape == images[0].shape for image in images):
        return torch.stack(images), targets
    return images, targets


def multiscale_sizes(smallest: int = 320, largest: int = 608, step: int = 32) -> list[int]:
    """YOLOv2's input sizes {320, 352, ..., 608} (Redmon & Farhadi 2017, "Multi-Scale Training")."""
    return list(range(smallest, largest + 1, step))


class MultiScaleBatchSampler(torch.utils.data.Sampler):
    """Batches of `(index, size)` keys where one size, drawn from `sizes`, holds for `every` batches in a row
    ("every 10 batches our network randomly chooses a new image dimension size", YOLOv2). Use with
    `DetectionDataset` as `DataLoader(ds, batch_sampler=..., collate_fn=collate_detection)`. The sampling runs
    in the main process, so all workers agree on the size; `set_epoch` reshuffles deterministically."""

    def __init__(self, num_items: int, batch_size: int, sizes=None, every: int = 10, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0):
        if batch_size < 1 or every < 1:
            raise ValueError(f"batch_size and every must be >= 1, got {batch_size}, {every}")
        self.num_items, self.batch_size, self.every = int(num_items), int(batch_size), int(every)
        self.sizes = list(sizes) if sizes is not None else multiscale_sizes()
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
        size = None
        for number in range(len(self)):
            if number % self.every == 0:
                size = self.sizes[int(rng.integers(len(self.sizes)))]
            chunk = order[number * self.batch_size:(number + 1) * self.batch_size]
            yield [(int(i), size) for i in chunk]
