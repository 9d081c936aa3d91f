"""Photographs larger than a detector's input: training on windows cut from them, predicting them by tiles.

A 2,500 px aerial photograph with 600 tree crowns of 10-100 px, letterboxed whole into a 416 px input, would
shrink every crown six times. Instead, as in slicing-aided inference (Akyon et al. 2022, "Slicing Aided Hyper
Inference and Fine-tuning for Small Object Detection", SAHI) and the tiling of aerial-image detectors
(DOTA, Xia et al. 2018), the network sees the photograph at its own resolution, a window at a time:

- training: `RandomWindow` cuts a random `size` x `size` window (often around an object) from each large
  image, its targets cut by `crop_target` (boxes clipped and shifted, slivers dropped by a visible-fraction
  rule);
- prediction: `sliced_predict` runs the detector on overlapping tiles (`tile_windows`), maps the detections
  back to image pixels, keeps each object from the tile that sees it whole (`merge_tiles`, the *core rule*
  below) and merges what is left across tiles with class-aware NMS;
- `needs_slicing` is the one rule, shared by both, for "larger than the input": the longer side more than
  `SLICE_FACTOR` (1.5) times the input side. Smaller images are letterboxed whole, as before.

The core rule. Neighbouring tiles overlap by at least `overlap` px; the midline of each overlap splits the
image into one *core* per tile (a tile's core reaches the image border where the tile does). A detection is
kept only from a tile whose core, widened by `margin` px on its interior sides, contains the detection's
centre. For an object at most `overlap - 2 * margin` px wide and high this keeps it exactly from tiles that
see it whole, and drops every cut-off part of it: a part cut by a tile edge has its centre less than half
the object's size from that edge, hence outside the core (proof in `merge_tiles`). The margin makes the
cores of neighbours overlap, so an object whose predicted centre wobbles across a midline is kept by at
least one of them (and NMS merges the two), rather than lost by both. Larger objects may come back in parts:
choose `overlap` >= the largest object (plus twice the margin).

Boxes are xyxy in continuous pixel coordinates (scenekit.boxes), windows xyxy integer pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scenekit.data.transforms import RandomTransform, clip_boxes, select_instances
from scenekit.errors import DataError

SLICE_FACTOR = 1.5      # images up to 1.5 x the input side are letterboxed whole (see `needs_slicing`)


# ------------------------------------------------------------------------------------------------- windows
def _check_tiling(tile, overlap) -> None:
    for name, value in (("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{name} must be a whole number of pixels, got {value!r}", field=name)
    if tile < 1 or overlap < 0:
        raise DataError(f"tile must be >= 1 and overlap >= 0 px, got tile={tile}, overlap={overlap}",
                        field="tile/overlap")
    if overlap >= tile:
        raise DataError(f"overlap ({overlap} px) must be smaller than the tile ({tile} px): neighbouring tiles "
                        f"would not advance", field="overlap")


def _axis_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Starts of the tiles along one axis: the fewest tiles of side `tile` whose neighbours overlap by at least
    `overlap`, spread evenly from 0 to `length - tile` (so the last is flush with the border)."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    count = math.ceil((length - overlap) / (tile - overlap))          # (count - 1) * (tile - overlap) >= length - tile
    # Steps floor((i + 1) a) - floor(i a) with a = (length - tile) / (count - 1) <= tile - overlap, an integer,
    # so no step exceeds tile - overlap: every overlap is at least `overlap`.
    return (np.arange(count, dtype=np.int64) * (length - tile)) // (count - 1)


def tile_windows(height: int, width: int, tile: int, overlap: int) -> np.ndarray:
    """Windows [K, 4] int64 xyxy of `tile` x `tile` px covering a `height` x `width` image, row by row.

    `overlap` is in pixels: neighbouring windows share at least that many columns (rows). The windows of a row
    are spread evenly, the first at x = 0 and the last flush with the right border (the same down the
    columns), so every window lies inside the image. A side shorter than `tile` gets one window of its own
    length; an image that fits gets the single window (0, 0, width, height).
    """
    _check_tiling(tile, overlap)
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{name} must be a positive whole number of pixels, got {value!r}", field=name)
    ys, xs = _axis_starts(int(height), tile, overlap), _axis_starts(int(width), tile, overlap)
    y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))                # row-major: y, then x
    return np.stack([x0, y0, np.minimum(x0 + tile, width), np.minimum(y0 + tile, height)], axis=1)


def needs_slicing(image_shape, input_size: int, factor: float = SLICE_FACTOR) -> bool:
    """Whether an image of `image_shape` (H, W, ...) is predicted by tiles rather than letterboxed whole:
    its longer side exceeds `factor` x `input_size`.

    Up to 1.5 x, letterboxing shrinks objects to no less than two thirds of their size, about the range of
    scales YOLOv2's multi-scale training covers (inputs 0.75-1.5 x the nominal side); beyond it small objects
    shrink past what the network saw in training, and tiles at full resolution keep them as they are.
    `factor=1` slices everything larger than the input.
    """
    if not factor >= 1:
        raise DataError(f"factor must be >= 1, got {factor!r}", field="factor")
    return max(int(image_shape[0]), int(image_shape[1])) > factor * input_size


# ------------------------------------------------------------------------------------------------- targets
def _where(target: dict) -> str | None:
    return f"image id {target['image_id']}" if "image_id" in target else None


def _check_window(window) -> tuple[int, int, int, int]:
    values = np.asarray(window, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all() or (values != np.round(values)).any() \
            or values[2] <= values[0] or values[3] <= values[1] or values.min() < 0:
        raise DataError(f"window must be 4 whole pixel coordinates x0, y0, x1, y1 with x1 > x0 >= 0 and "
                        f"y1 > y0 >= 0, got {np.asarray(window).tolist()}", field="window")
    return tuple(int(v) for v in values)


def crop_target(target: dict, window, min_visible: float = 0.5) -> dict:
    """The target of the image cut to `window` (x0, y0, x1, y1): what a detector should find in that crop.

    Boxes are clipped to the window and shifted into it; instance masks [N, H, W] and the semantic map [H, W]
    are cut to it, and labels and every other per-object field (`transforms.INSTANCE_KEYS`: iscrowd,
    difficult, ann_ids, ...) follow their objects; fields of the image (image_id, captions) are copied.

    The visible-fraction rule: an object stays when at least `min_visible` of its box area lies inside the
    window (RandomCrop's rule, the seed's "keeping crops with >= 50% overlap"), and its clipped box has a
    positive width and height (so `min_visible=0` keeps every sliver, but not a box that only touches the
    window). A kept object cut by the window gets `truncated = True` when the target records truncation
    (Pascal VOC's meaning: the object extends outside the image).
    """
    x0, y0, x1, y1 = _check_window(window)
    if not 0 <= min_visible <= 1:
        raise DataError(f"min_visible must be a fraction in [0, 1], got {min_visible!r}", field="min_visible")
    boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)                      # [N, 4]
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        bad = int(np.flatnonzero(~np.isfinite(boxes).all(1) | (boxes[:, 2:] < boxes[:, :2]).any(1))[0])
        raise DataError(f"box {bad} is {boxes[bad].tolist()}: boxes must be finite xyxy with x2 >= x1, y2 >= y1",
                        record=_where(target), field="boxes")
    clipped = clip_boxes(boxes - [x0, y0, x0, y0], x1 - x0, y1 - y0)                          # [N, 4] in the window
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sides = clipped[:, 2:] - clipped[:, :2]                                                     # [N, 2] w, h
    visible = sides[:, 0] * sides[:, 1]
    keep = (sides > 0).all(1) & (visible >= min_visible * area)
    out = select_instances(target, keep)
    out["boxes"] = clipped[keep]
    if "truncated" in target:
        cut = (clipped[keep] + [x0, y0, x0, y0] != boxes[keep]).any(1)
        out["truncated"] = np.asarray(out["truncated"], dtype=bool) | cut
    if "masks" in target:
        out["masks"] = np.ascontiguousarray(np.asarray(out["masks"])[:, y0:y1, x0:x1])        # [M, h, w]
    if "semantic" in target:
        out["semantic"] = np.ascontiguousarray(np.asarray(target["semantic"])[y0:y1, x0:x1])
    return out


class RandomWindow(RandomTransform):
    """Training on large photographs: a random `size` x `size` window of each image that `needs_slicing`
    (with the same `factor` prediction uses), its target cut by `crop_target(min_visible)`. Other images,
    which prediction letterboxes whole, pass untouched; a side shorter than `size` is kept whole.

    With probability `object_bias` (and when the image has objects) the window is placed around an object
    drawn uniformly: uniformly among the windows that hold it whole, or that hold its centre when it is larger
    than the window. Otherwise the window is uniform over the image. Tiles with few objects in a sparse
    photograph would otherwise be mostly background; the uniform draws keep background and the object's
    position in the window varied (the network must not learn "objects sit in the middle").
    Put it before the Letterbox / Resize that fits the window to the network.
    """

    def __init__(self, size: int, *, factor: float = SLICE_FACTOR, object_bias: float = 0.5,
                 min_visible: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise DataError(f"size must be a positive whole number of pixels, got {size!r}", field="size")
        for name, value in (("object_bias", object_bias), ("min_visible", min_visible)):
            if not 0 <= value <= 1:
                raise DataError(f"{name} must be a fraction in [0, 1], got {value!r}", field=name)
        needs_slicing((1, 1), size, factor)                                                    # checks factor
        self.size, self.factor, self.object_bias, self.min_visible = int(size), factor, object_bias, min_visible

    def _start(self, length: int, side: int, low: float, high: float) -> int:
        """A start in [0, length - side] drawn uniformly among those whose window [s, s + side] holds the
        interval [low, high] (or its midpoint when it is longer than the window)."""
        if high - low > side:
            low = high = (low + high) / 2
        first = min(max(math.ceil(high) - side, 0), length - side)
        last = max(min(math.floor(low), length - side), first)
        return int(self.rng.integers(first, last + 1))

    def __call__(self, image, target):
        height, width = image.shape[:2]
        if not needs_slicing(image.shape, self.size, self.factor):
            return image, target
        win_h, win_w = min(self.size, height), min(self.size, width)
        boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
        if len(boxes) and self.rng.random() < self.object_bias:
            x1, y1, x2, y2 = boxes[int(self.rng.integers(len(boxes)))]
            x0, y0 = self._start(width, win_w, x1, x2), self._start(height, win_h, y1, y2)
        else:
            x0 = int(self.rng.integers(0, width - win_w + 1))
            y0 = int(self.rng.integers(0, height - win_h + 1))
        window = (x0, y0, x0 + win_w, y0 + win_h)
        crop = np.ascontiguousarray(image[y0:y0 + win_h, x0:x0 + win_w])      # not a view pinning the photo
        return crop, crop_target(target, window, self.min_visible)

    def __repr__(self):
        return (f"RandomWindow(size={self.size}, factor={self.factor}, object_bias={self.object_bias}, "
                f"min_visible={self.min_visible}, seed={self.seed})")


# ------------------------------------------------------------------------------------------------- prediction
def _as_array(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _axis_cores(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[low, high) of each window's core along one axis: the midlines of its overlaps with the neighbours
    (-inf / inf where the window reaches the image border). `starts`, `ends`: every window's interval."""
    columns = np.unique(np.stack([starts, ends], 1), axis=0)                        # [C, 2] sorted by start
    middles = (columns[:-1, 1] + columns[1:, 0]) / 2                                # midline of each overlap
    low, high = np.concatenate([[-np.inf], middles]), np.concatenate([middles, [np.inf]])
    index = np.searchsorted(columns[:, 0], starts)                                  # each window's column
    return low[index], high[index]


def merge_tiles(found: list[dict], windows, *, iou_threshold: float, max_detections: int,
                class_agnostic: bool = False, margin: float = 0.0) -> dict:
    """One image's detections from the detections of its tiles: the core rule (module docstring), then NMS.

    `found[k]`: the detections in tile `windows[k]` (from `tile_windows`, so the last windows end at the image
    border, which gives the image size), {"boxes" [N, 4] xyxy in tile pixels, "scores" [N], "labels" [N] and
    optionally "masks" [N, h, w] of the tile}, numpy or torch. Boxes are shifted to image pixels, those whose
    centre lies outside their tile's core (widened by `margin` px) are dropped, the rest go through NMS per
    label (`scenekit.nms.batched_nms_numpy`; one group when `class_agnostic`), and the `max_detections` best are
    returned as {"boxes" float64 [M, 4] image pixels, "scores" float64 [M], "labels" int64 [M], and "masks"
    uint8 [M, H, W] pasted into the image}, best first (torch, as the detectors' `predict` returns them).

    Why the core rule keeps exactly the whole objects: along one axis let tile i span [s, e] and its core
    [lo, hi), with lo = s + O/2 (O >= overlap: its overlap with the previous tile) and hi = e - O'/2. An
    object [a, b] of size d <= O - 2 * margin whose centre c >= lo - margin has a = c - d/2 >= s, and c < hi +
    margin gives b < e: it is whole in the tile. A part cut by the edge s (a < s < b) is seen as [s, b] with
    b = a + d < s + d, so its centre is < s + d/2 <= lo - margin: dropped (likewise at e). Each object's
    centre lies in some core, so one tile keeps it whole. Both axes hold at once in the tile of its row and
    column.
    """
    from scenekit.nms import batched_nms_numpy

    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    if len(found) != len(windows):
        raise DataError(f"got detections for {len(found)} tiles but {len(windows)} windows", field="found")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise DataError(f"margin must be a number of pixels >= 0, got {margin!r}", field="margin")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold <= 1:
        raise DataError(f"iou_threshold must be an IoU in [0, 1], got {iou_threshold!r}", field="iou_threshold")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 0:
        raise DataError(f"max_detections must be an integer >= 0, got {max_detections!r}", field="max_detections")
    height, width = int(windows[:, 3].max()), int(windows[:, 2].max())
    x_low, x_high = _axis_cores(windows[:, 0], windows[:, 2])
    y_low, y_high = _axis_cores(windows[:, 1], windows[:, 3])
    boxes, scores, labels, owners, masks = [], [], [], [], {}          # masks: tile -> [N, h, w]
    for k, (result, (x0, y0, x1, y1)) in enumerate(zip(found, windows)):
        tile_boxes = _as_array(result["boxes"], np.float64).reshape(-1, 4)                     # [N, 4] tile px
        tile_scores = _as_array(result["scores"], np.float64).reshape(-1)
        tile_labels = _as_array(result["labels"], np.int64).reshape(-1)
        if not np.isfinite(tile_boxes).all() or not np.isfinite(tile_scores).all():
            raise DataError(f"the detector returned NaN or infinite boxes or scores for tile {k} "
                            f"{[int(x0), int(y0), int(x1), int(y1)]}", field="boxes")
        if not len(tile_scores) == len(tile_labels) == len(tile_boxes):
            raise DataError(f"tile {k}: {len(tile_boxes)} boxes, {len(tile_scores)} scores and "
                            f"{len(tile_labels)} labels", field="scores/labels")
        shifted = tile_boxes + [x0, y0, x0, y0]                                                 # [N, 4] image px
        cx, cy = (shifted[:, 0] + shifted[:, 2]) / 2, (shifted[:, 1] + shifted[:, 3]) / 2
        core = (cx >= x_low[k] - margin) & (cx < x_high[k] + margin) \
            & (cy >= y_low[k] - margin) & (cy < y_high[k] + margin)
        boxes.append(shifted[core])
        scores.append(tile_scores[core])
        labels.append(tile_labels[core])
        owners.append(np.stack([np.full(int(core.sum()), k), np.flatnonzero(core)], 1))        # [n, 2] tile, row
        if "masks" in result:
            tile_masks = result["masks"]
            if tuple(tile_masks.shape[1:]) != (y1 - y0, x1 - x0) or len(tile_masks) != len(tile_boxes):
                raise DataError(f"tile {k}: masks have shape {list(tile_masks.shape)}, expected "
                                f"[{len(tile_boxes)}, {y1 - y0}, {x1 - x0}]", field="masks")
            masks[k] = tile_masks
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)                              # [D, 4], [D]
    labels, owners = np.concatenate(labels), np.concatenate(owners)
    groups = np.zeros_like(labels) if class_agnostic else labels
    keep = batched_nms_numpy(boxes, scores, groups, iou_threshold)[:max_detections]            # best first
    boxes = np.minimum(np.maximum(boxes[keep], 0.0), [width, height, width, height])
    out = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores[keep]),
           "labels": torch.from_numpy(labels[keep])}
    if masks:
        pasted = torch.zeros(len(keep), height, width, dtype=torch.uint8)                   # [M, H, W]
        for m, (k, row) in enumerate(owners[keep]):
            if k not in masks:
                raise DataError(f"tile {k} has no masks while other tiles have them", field="masks")
            x0, y0, x1, y1 = (int(v) for v in windows[k])
            pasted[m, y0:y1, x0:x1] = torch.as_tensor(_as_array(masks[k][row], np.uint8))
        out["masks"] = pasted
    return out


def sliced_predict(predict_one, image: np.ndarray, *, tile: int, overlap: int, iou_threshold: float,
                   max_detections: int, class_agnostic: bool = False, margin: float | None = None,
                   batch_size: int = 8) -> dict:
    """Detections in a whole `image` [H, W, 3] uint8 from a detector run on its overlapping tiles (SAHI's
    sliced inference, Akyon et al. 2022, with the core rule of this module instead of keeping every cut part).

    `predict_one(tiles)`: a list of [h, w, 3] uint8 tiles (at most `batch_size`, in `tile_windows` order) ->
    one detections dict per tile, {"boxes" [N, 4] xyxy tile pixels, "scores", "labels"[, "masks" [N, h, w]]}:
    a recipe's `predict` bound to its model and device. The tiles are `tile` x `tile` px with neighbours
    overlapping by >= `overlap` px; `margin` (default overlap / 8) widens the cores, so objects up to
    `overlap - 2 * margin` px come back whole and once. Returns `merge_tiles`'s dict for the image: boxes in
    image pixels, the `max_detections` best after NMS at `iou_threshold` (per label unless `class_agnostic`).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image must be an [H, W, 3] uint8 array, got {getattr(image, 'dtype', type(image))} "
                        f"{getattr(image, 'shape', '')}", field="image")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}", field="batch_size")
    windows = tile_windows(image.shape[0], image.shape[1], tile, overlap)
    found = []
    for start in range(0, len(windows), batch_size):
        tiles = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows[start:start + batch_size]]
        results = list(predict_one(tiles))
        if len(results) != len(tiles):
            raise DataError(f"predict_one returned {len(results)} results for {len(tiles)} tiles", field="predict_one")
        found += results
    return merge_tiles(found, windows, iou_threshold=iou_threshold, max_detections=max_detections,
                       class_agnostic=class_agnostic, margin=overlap / 8 if margin is None else margin)


def predict_any_size(predict_one, images, *, input_size: int, iou_threshold: float, max_detections: int,
                     tile: int | None = None, overlap: int | None = None, factor: float = SLICE_FACTOR,
                     class_agnostic: bool = False, batch_size: int = 8) -> list[dict]:
    """`predict_one` on a list of images, each large one (`needs_slicing` against the tile) by `sliced_predict`:
    what a recipe's `predict(model, images, device)` returns. The images that fit go to `predict_one` together,
    in one call, as before. `tile` defaults to `input_size` (tiles at the photograph's own resolution, as the
    windows of `RandomWindow(input_size)` in training) and `overlap` to a quarter of the tile."""
    tile = int(input_size if tile is None else tile)
    overlap = tile // 4 if overlap is None else overlap
    images = list(images)
    large = [needs_slicing(image.shape, tile, factor) for image in images]
    small = [image for image, big in zip(images, large) if not big]
    whole = iter(list(predict_one(small)) if small else [])
    return [sliced_predict(predict_one, image, tile=tile, overlap=overlap, iou_threshold=iou_threshold,
                           max_detections=max_detections, class_agnostic=class_agnostic, batch_size=batch_size)
            if big else next(whole) for image, big in zip(images, large)]
