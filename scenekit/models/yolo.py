"""YOLO v1 (Redmon et al. 2016) and YOLOv2 (Redmon & Farhadi 2017): detection as one regression over a grid.

**YOLO v1** divides the input into an S x S grid. "If the center of an object falls into a grid cell, that grid
cell is responsible for detecting that object" (sec. 2). Each cell predicts B boxes (x, y, w, h, confidence) and
C class probabilities, so the network outputs S x S x (5B + C) (7 x 7 x 30 for VOC's 20 classes). x, y are the
box centre relative to the cell, w, h are relative to the image and predicted as square roots (sec. 2.2, so a
small error matters more in a small box). Convolutions extract features and two fully connected layers predict
the whole tensor. The loss is eq. (3), sum-squared error with lambda_coord = 5 and lambda_noobj = 0.5; of a
cell's B predictors the one whose current box has the highest IoU with the ground truth is "responsible", and
its confidence target is that IoU. At test time a box's class-specific score is P(class | object) x confidence
(eq. 2 ... "class-specific confidence scores"), followed by non-maximum suppression.

**YOLOv2** keeps the grid but predicts from a fully convolutional map ("we remove the fully connected layers
from YOLO and use anchor boxes"). Each of the A anchors per cell predicts t_x, t_y, t_w, t_h, t_o and C class
scores (softmax). Its ingredients, each a switch here so the paper's Table 2 ("the path from YOLO to YOLOv2")
can be rebuilt on any data (`benchmarks/yolo.py` does it on the embedded world):
- batch normalization on every convolution (dropout removed);
- anchor priors from k-means with the distance 1 - IoU on the training boxes' shapes ("Dimension Clusters",
  `scenekit.anchors.kmeans_anchors`), instead of hand-picked ones (Faster R-CNN's 3 scales x 3 ratios);
- direct location prediction: b_x = sigmoid(t_x) + c_x, b_y = sigmoid(t_y) + c_y, b_w = p_w e^{t_w},
  b_h = p_h e^{t_h}, objectness sigmoid(t_o); switched off, the offsets are RPN's unconstrained
  x = x_a + t_x w_a, which the paper found unstable early in training;
- the passthrough layer: the stride-16 map, stacked space-to-depth (2 x 2 neighbours into channels,
  `F.pixel_unshuffle`) to the stride-32 grid and concatenated with the final features;
- multi-scale training: every 10 batches a new input size, a multiple of the stride (32), is drawn.

Units: images are letterboxed (aspect kept, padded) to a square input of `size` pixels; boxes inside the model and
its losses are fractions of that side (0..1), and anchor priors (p_w, p_h) are fractions too, so one set of
priors serves every input size of multi-scale training. (Darknet stores priors in cells of a 13 x 13 grid.)

The YOLOv2 paper gives no loss formula; `yolo2_loss` keeps eq. (3)'s sum-squared form on the new parameters,
weighted as the authors' released `yolo-voc` configuration (object 5, no-object 1, class 1, coordinates 1 x
(2 - w h)), where a prediction that overlaps some ground truth by more than 0.6 is not pushed towards background,
and classes are a softmax trained with cross-entropy.

Small by default, to train in minutes on a CPU: a darknet-style stack of 3 x 3 convolutions + leaky ReLU (0.1)
+ 2 x 2 max-pools (widths 16 ... 256 instead of Darknet-19's 32 ... 1024), trained from scratch with AdamW.
Two choices for speed on a CPU, neither changing the method: `strided_stem` lets the first convolution stride 2
instead of being followed by a max-pool (Darknet-53's downsampling, YOLOv3), which removes most of the cost of
the full-resolution layer; and `detect` suppresses a whole batch in one class-aware NMS call, grouped by
(image, class), which gives the per-image result.

Multi-scale training and batch norm: the running statistics end up those of the last sizes drawn, not of the
test size (on the world: 0.68 VOC mAP@0.5 at 160 px, 0.84 once they are re-estimated at 160 px with
`recompute_batch_norm`, 0.86 after 10 more epochs at 160 px only). Test at the size the statistics are of.

Photographs larger than the input (`scenekit.data.tiling`): an image whose longer side exceeds `slice_factor`
x the input side is not letterboxed whole, which would shrink its objects past what the network learnt.
Training cuts a random input-size window from it (`RandomWindow`, before the letterbox; boxes clipped,
slivers dropped), and prediction runs `detect` on overlapping input-size tiles at the photograph's own
resolution, merged by `tiling.predict_any_size` (each object from the tile that sees it whole, then
class-aware NMS; SAHI, Akyon et al. 2022). The recipe's `slice_factor` is 2.5, not tiling's 1.5: the world
draws images up to 320 px, 2.5 x yolo1's 128 px input and 2 x yolo2's 160 px, and its figures are of those
letterboxed whole; 2.5 keeps all of them whole while a 2,500 px photograph is still sliced at any input up to
1,000 px. `max_detections` (100) caps each image's detections, after the merge for a photograph. An epoch shows
a sliced photograph once per tile prediction would cut from it (`fast_rcnn.tiled_epoch`), a random window each.

Augmentation (`augment`): "world" is the horizontal flip (`flip`) the world recipes have always used; "user",
"top-down" and "none" run `scenekit.data.augment`'s presets on each training image after its window is cut
(`build_augmentation`), with YOLOv4's mosaic of four such windows first for half the items (`MosaicDataset`;
Bochkovskiy et al. 2020, sec. 3.3), before the letterbox.
"""

from __future__ import annotations

import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.anchors import kmeans_anchors, wh_iou
from scenekit.data.tiling import RandomWindow, predict_any_size
from scenekit.data.transforms import Compose, Letterbox, clip_boxes, letterbox_image, load_image
from scenekit.errors import DataError
from scenekit.data.augment import MosaicDataset, RecordPairs, build_augmentation
from scenekit.data.image_files import read_rgb
from scenekit.models.backbones import inference_copy
from scenekit.models.detection import coco_records, evaluate_detections
from scenekit.models.fast_rcnn import augment_options, tiled_epoch
from scenekit.nms import batched_nms_numpy
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options

LEAKY_SLOPE = 0.1                      # "leaky rectified linear activation" phi(x) = x if x > 0 else 0.1 x
# Faster R-CNN's hand-picked anchors (3 areas x aspect ratios 1:2, 1:1, 2:1) as fractions of the input side:
# the "9 anchor boxes" YOLOv2's Table 1 compares k-means priors against.
HAND_PICKED_ANCHORS = tuple((round(s * math.sqrt(1 / r), 4), round(s * math.sqrt(r), 4))
                            for s in (0.125, 0.25, 0.5) for r in (0.5, 1.0, 2.0))
# Images up to 2.5 x the input side are letterboxed whole: every world image (<= 320 px) at every world input
# (>= 128 px), so the world's figures stand; larger photographs are sliced (module docstring).
SLICE_FACTOR = 2.5


# ================================================================================================ the models
@dataclass
class YoloConfig:
    version: int = 2                                   # 1: YOLO v1, 2: YOLOv2
    num_classes: int = 20
    image_size: int = 160                              # training input side (v1: the only one)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)   # one 3x3 conv + 2x2 pool per entry: stride 2 ** len
    batch_norm: bool = True
    strided_stem: bool = False                         # first conv strides 2 instead of conv + max-pool
    # YOLO v1
    grid: int = 7                                      # S
    boxes_per_cell: int = 2                            # B
    hidden: int = 512                                  # the first fully connected layer (4096 in the paper)
    dropout: float = 0.0                               # after it (0.5 in the paper, before batch norm)
    # YOLOv2
    anchors: list | None = None                        # [[p_w, p_h], ...] fractions of the input side
    num_anchors: int = 5                               # A, used while `anchors` is None (not yet clustered)
    head_channels: int = 256                           # width of the detection convolutions
    direct_location: bool = True
    passthrough: bool = True
    passthrough_channels: int | None = None            # the 1 x 1 thinning's width; None: 1/8 of the fine map

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)


def conv_block(in_channels: int, out_channels: int, kernel: int, batch_norm: bool, stride: int = 1) -> nn.Sequential:
    """Convolution -> [batch norm] -> leaky ReLU; with batch norm the convolution needs no bias."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                                         bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    return nn.Sequential(*layers)


class DarknetFeatures(nn.Module):
    """[conv 3x3 -> (pool 2x2 -> conv 3x3) x (n - 1)] -> pool: the fine map (stride 2^(n-1)) and the output
    (stride 2^n). As in Darknet-19, the passthrough takes the last convolution's map before the last pool.

    `strided_stem`: the first convolution strides 2 and the first max-pool goes (the downsampling of
    Darknet-53, Redmon & Farhadi 2018, "YOLOv3", which has no max-pools). Same widths and strides; the first
    layer is the costliest on a CPU (full resolution, 3 input channels, then a full-resolution pool), and
    striding it cuts its multiply-adds 4x.
    """

    def __init__(self, channels, batch_norm: bool, strided_stem: bool = False):
        super().__init__()
        if strided_stem and len(channels) < 2:
            raise ValueError("strided_stem needs at least two widths in channels (the stem replaces a max-pool)")
        layers: list[nn.Module] = []
        previous = 3
        for index, width in enumerate(channels):
            if index and not (index == 1 and strided_stem):
                layers.append(nn.MaxPool2d(2))
            layers.append(conv_block(previous, width, 3, batch_norm, stride=2 if strided_stem and index == 0
                                     else 1))
            previous = width
        self.fine = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(2)
        self.out_channels, self.stride = previous, 2 ** len(channels)

    def forward(self, images: torch.Tensor):
        fine = self.fine(images)          # [B, 3, H, W] -> [B, C, H / 16, W / 16]
        return fine, self.pool(fine)      # -> [B, C, H / 32, W / 32]


def _channels_last(images: torch.Tensor) -> torch.Tensor:
    """The same numbers in [B, H, W, C] memory order: PyTorch's CPU convolutions and max-pools run 2-3x faster
    on it than on [B, C, H, W] order (the models are built channels-last too)."""
    return images.contiguous(memory_format=torch.channels_last)


def _check_images(images, stride: int, fixed: int | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    height, width = images.shape[-2:]
    if fixed is not None and (height, width) != (fixed, fixed):
        raise ValueError(f"YOLO v1's fully connected layers need {fixed} x {fixed} inputs, got {height} x {width}")
    if height % stride or width % stride:
        raise ValueError(f"input sides must be multiples of the stride {stride}, got {height} x {width}")


class Yolo1(nn.Module):
    """YOLO v1: convolutional features -> fully connected -> [B, S, S, 5B + C] (Redmon et al. 2016, sec. 2.1).

    Per cell the last axis holds B x (x, y, sqrt(w), sqrt(h), confidence), then the C class probabilities.
    The final layer is linear, as in the paper.
    """

    def __init__(self, config: YoloConfig):
        super().__init__()
        self.config = config
        if config.image_size % config.stride:
            raise ValueError(f"image_size {config.image_size} must be a multiple of the stride {config.stride}")
        self.features = DarknetFeatures(config.channels, config.batch_norm, config.strided_stem)
        side = config.image_size // config.stride
        s, b, c = config.grid, config.boxes_per_cell, config.num_classes
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(self.features.out_channels * side * side, config.hidden),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Dropout(config.dropout),
            nn.Linear(config.hidden, s * s * (5 * b + c)))
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        _check_images(images, self.config.stride, self.config.image_size)
        _, features = self.features(_channels_last(images))     # [B, 3, S_in, S_in] -> [B, C, h, w]
        s = self.config.grid
        output = self.head(features).view(len(images), s, s, -1)       # -> [B, S, S, 5B + C]
        if targets is None:
            return output
        return yolo1_loss(output, normalised_targets(targets, images.shape[-1]), self.config.boxes_per_cell)


class Yolo2(nn.Module):
    """YOLOv2: fully convolutional, A anchors per cell -> [B, G, G, A, 5 + C] (Redmon & Farhadi 2017, sec. 2).

    The last axis is (t_x, t_y, t_w, t_h, t_o, class scores). `anchors` [A, 2] is a buffer, so checkpoints
    carry the priors the model was trained with.
    """

    def __init__(self, config: YoloConfig):
        super().__init__()
        self.config = config
        anchors = config.anchors if config.anchors is not None else placeholder_anchors(config.num_anchors)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(-1, 2))
        self.features = DarknetFeatures(config.channels, config.batch_norm, config.strided_stem)
        c, d = self.features.out_channels, config.head_channels
        self.head = nn.Sequential(conv_block(c, d, 3, config.batch_norm), conv_block(d, d, 3, config.batch_norm))
        joined = d
        self.passthrough = None
        if config.passthrough:
            # The released configuration first thins the fine map with a 1 x 1 convolution (512 -> 64).
            thin = config.passthrough_channels or max(1, c // 8)
            self.passthrough = conv_block(c, thin, 1, config.batch_norm)
            joined += 4 * thin
        a, k = len(self.anchors), config.num_classes
        self.predict = nn.Sequential(conv_block(joined, d, 3, config.batch_norm), nn.Conv2d(d, a * (5 + k), 1))
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        _check_images(images, self.config.stride)
        fine, coarse = self.features(_channels_last(images))            # [B, C, 2G, 2G], [B, C, G, G]
        x = self.head(coarse)                              # -> [B, D, G, G]
        if self.passthrough is not None:
            stacked = F.pixel_unshuffle(self.passthrough(fine), 2)    # [B, c, 2G, 2G] -> [B, 4c, G, G]
            x = torch.cat([x, stacked], dim=1)                         # -> [B, D + 4c, G, G]
        x = self.predict(x)                                # -> [B, A * (5 + K), G, G]
        batch, _, rows, cols = x.shape
        output = x.view(batch, len(self.anchors), -1, rows, cols).permute(0, 3, 4, 1, 2)   # [B, G, G, A, 5+K]
        if targets is None:
            return output
        return yolo2_loss(output, normalised_targets(targets, images.shape[-1]), self.anchors,
                          direct_location=self.config.direct_location)


def build_yolo(config: YoloConfig) -> nn.Module:
    if config.version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {config.version!r}")
    return Yolo1(config) if config.version == 1 else Yolo2(config)


def placeholder_anchors(k: int) -> list[list[float]]:
    """Squares of geometric sizes, used only until k-means has seen the training boxes."""
    return [[float(s), float(s)] for s in np.geomspace(0.08, 0.6, k)]


# ================================================================================================ geometry
def normalised_targets(targets: list[dict], size: int) -> list[dict]:
    """Targets in input pixels -> boxes as fractions of the (square) input side."""
    return [{"boxes": t["boxes"].float() / size, "labels": t["labels"]} for t in targets]


def elementwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[..., i] with b[..., i] (broadcasting), xyxy: [..., 4], [..., 4] -> [...]."""
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    return inter / union.clamp(min=1e-12)


def _centre_size(boxes: torch.Tensor):
    return (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2, \
        boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]


def _corners(cx, cy, w, h) -> torch.Tensor:
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _cell_of(cx: torch.Tensor, cy: torch.Tensor, rows: int, cols: int):
    """The grid cell containing each centre (a centre on the far border belongs to the last cell)."""
    col = (cx * cols).floor().long().clamp(0, cols - 1)
    row = (cy * rows).floor().long().clamp(0, rows - 1)
    return row, col


def _check_boxes(boxes: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an [N, 4] tensor, got {getattr(boxes, 'shape', type(boxes))}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes contain NaN or infinite values")
    if not bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()):
        raise ValueError("boxes need x2 > x1 and y2 > y1 (YOLO regresses sqrt / log of the size)")
    if labels is not None and (labels.dim() != 1 or len(labels) != len(boxes)):
        raise ValueError(f"labels must have shape [{len(boxes)}], got {list(labels.shape)}")


def _one_per_cell(slot: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Indices of the objects that keep their slot when several share one: the largest (a grid cell "only
    predicts one class" and few boxes, YOLO's stated limitation, sec. 2.4)."""
    order = torch.argsort(-area, stable=True)
    _, first = np.unique(slot[order].cpu().numpy(), return_index=True)
    return order[torch.as_tensor(first, device=order.device)]


# ------------------------------------------------------------------------------------------------ YOLO v1
def encode_yolo1(boxes: torch.Tensor, labels: torch.Tensor, grid: int, num_classes: int) -> dict:
    """One image's ground truth on the S x S grid (Redmon et al. 2016, sec. 2 and 2.2).

    boxes [N, 4] xyxy as fractions of the image, labels [N] class indices. Returns dense tensors:
    "has_object" [S, S] bool, "coords" [S, S, 4] (x, y offsets of the centre in its cell, sqrt(w), sqrt(h)),
    "classes" [S, S, C] one-hot, "boxes" [S, S, 4] the cell's ground-truth box.
    """
    _check_boxes(boxes, labels)
    device = boxes.device
    out = {"has_object": torch.zeros(grid, grid, dtype=torch.bool, device=device),
           "coords": torch.zeros(grid, grid, 4, device=device),
           "classes": torch.zeros(grid, grid, num_classes, device=device),
           "boxes": torch.zeros(grid, grid, 4, device=device)}
    if len(boxes) == 0:
        return out
    cx, cy, w, h = _centre_size(boxes.float())
    row, col = _cell_of(cx, cy, grid, grid)
    keep = _one_per_cell(row * grid + col, w * h)
    row, col = row[keep], col[keep]
    out["has_object"][row, col] = True
    out["coords"][row, col] = torch.stack([cx[keep] * grid - col, cy[keep] * grid - row,
                                           w[keep].sqrt(), h[keep].sqrt()], dim=-1)
    out["classes"][row, col] = F.one_hot(labels[keep].long(), num_classes).float()
    out["boxes"][row, col] = boxes[keep].float()
    return out


def decode_yolo1(output: torch.Tensor, boxes_per_cell: int):
    """[N, S, S, 5B + C] -> boxes [N, S, S, B, 4] xyxy (fractions of the image), confidence [N, S, S, B],
    class probabilities [N, S, S, C]. The centre is (col + x, row + y) / S; the size is the square of the
    predicted square root."""
    n, s = output.shape[0], output.shape[1]
    predictors = output[..., :5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    cells = torch.arange(s, device=output.device, dtype=output.dtype)
    cx = (cells.view(1, 1, s, 1) + predictors[..., 0]) / s
    cy = (cells.view(1, s, 1, 1) + predictors[..., 1]) / s
    boxes = _corners(cx, cy, predictors[..., 2] ** 2, predictors[..., 3] ** 2)
    return boxes, predictors[..., 4], output[..., 5 * boxes_per_cell:]


def yolo1_loss(output: torch.Tensor, targets: list[dict], boxes_per_cell: int, *, lambda_coord: float = 5.0,
               lambda_noobj: float = 0.5, rescore: bool = True) -> dict:
    """YOLO v1's multi-part loss, eq. (3) of Redmon et al. 2016, summed over the grid, averaged over images.

        lambda_coord sum_ij 1obj_ij [(x_i - x^_i)^2 + (y_i - y^_i)^2]
      + lambda_coord sum_ij 1obj_ij [(sqrt w_i - sqrt w^_i)^2 + (sqrt h_i - sqrt h^_i)^2]
      + sum_ij 1obj_ij (C_i - C^_i)^2 + lambda_noobj sum_ij 1noobj_ij (C_i - C^_i)^2
      + sum_i 1obj_i sum_c (p_i(c) - p^_i(c))^2

    1obj_i: an object's centre is in cell i; 1obj_ij: predictor j of that cell has the highest IoU with the
    ground truth among the cell's predictors; 1noobj_ij is every other predictor. The confidence target C^ is
    that IoU (`rescore`; 1 otherwise). output [N, S, S, 5B + C]; targets: per image "boxes" [M, 4] xyxy
    fractions, "labels" [M] class indices.
    """
    output = output.float()                                                # AMP: the loss in full precision
    n, s = output.shape[0], output.shape[1]
    num_classes = output.shape[-1] - 5 * boxes_per_cell
    encoded = [encode_yolo1(t["boxes"], t["labels"], s, num_classes) for t in targets]
    has_object = torch.stack([e["has_object"] for e in encoded])           # [N, S, S]
    coords = torch.stack([e["coords"] for e in encoded])                   # [N, S, S, 4]
    classes = torch.stack([e["classes"] for e in encoded])                 # [N, S, S, C]
    gt_boxes = torch.stack([e["boxes"] for e in encoded])                  # [N, S, S, 4]

    predictors = output[..., :5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    boxes, confidence, probabilities = decode_yolo1(output, boxes_per_cell)
    iou = elementwise_iou(boxes.detach(), gt_boxes[..., None, :])          # [N, S, S, B]
    best = F.one_hot(iou.argmax(dim=-1), boxes_per_cell).bool()            # [N, S, S, B]
    responsible = best & has_object[..., None]                             # 1obj_ij
    coord_error = ((predictors[..., :4] - coords[..., None, :]) ** 2).sum(-1)   # [N, S, S, B]
    confidence_target = iou if rescore else torch.ones_like(iou)
    zero = output.new_zeros(())
    return {
        "coordinates": lambda_coord * torch.where(responsible, coord_error, zero).sum() / n,
        "object": torch.where(responsible, (confidence - confidence_target) ** 2, zero).sum() / n,
        "no_object": lambda_noobj * torch.where(responsible, zero, confidence ** 2).sum() / n,
        "class": torch.where(has_object[..., None], (probabilities - classes) ** 2, zero).sum() / n,
    }


# ------------------------------------------------------------------------------------------------ YOLOv2
def encode_yolo2(boxes: torch.Tensor, grid: tuple[int, int], anchors: torch.Tensor,
                 direct_location: bool = True) -> dict:
    """Each ground-truth box's slot and regression targets (Redmon & Farhadi 2017, sec. 2).

    The slot is the cell containing the centre and the anchor whose shape has the highest IoU with the box's
    (both centred at one point, `scenekit.anchors.wh_iou`). Targets: "xy" [M, 2] the offsets sigma(t_x),
    sigma(t_y) = (c_x * G - col, c_y * G - row) for direct location prediction, else RPN's t = (x - x_a) / w_a;
    "wh" [M, 2] (t_w, t_h) = log(w / p_w), log(h / p_h). Also "row", "col", "anchor" [M] and "boxes" [M, 4].
    boxes [M, 4] xyxy fractions of the input, with positive width and height.
    """
    _check_boxes(boxes)
    rows, cols = grid
    anchors = anchors.to(boxes.device, torch.float32)
    boxes = boxes.float()
    cx, cy, w, h = _centre_size(boxes)
    row, col = _cell_of(cx, cy, rows, cols)
    if len(boxes):
        anchor = wh_iou(torch.stack([w, h], dim=1), anchors).argmax(dim=1)      # [M, A] -> [M]
    else:
        anchor = torch.zeros(0, dtype=torch.long, device=boxes.device)
    prior_w, prior_h = anchors[anchor, 0], anchors[anchor, 1]
    if direct_location:
        xy = torch.stack([cx * cols - col, cy * rows - row], dim=1)
    else:
        xy = torch.stack([(cx - (col + 0.5) / cols) / prior_w, (cy - (row + 0.5) / rows) / prior_h], dim=1)
    wh = torch.stack([torch.log(w / prior_w), torch.log(h / prior_h)], dim=1)
    return {"row": row, "col": col, "anchor": anchor, "xy": xy, "wh": wh, "boxes": boxes}


MAX_LOG_SCALE = 8.0          # e^8 ~ 3000 x the prior: caps an untrained net's boxes before exp overflows


def decode_yolo2(output: torch.Tensor, anchors: torch.Tensor, direct_location: bool = True):
    """[N, G, G, A, 5 + C] -> boxes [N, G, G, A, 4] xyxy fractions of the input, objectness sigmoid(t_o)
    [N, G, G, A], class probabilities softmax [N, G, G, A, C].

    Direct: b_x = (sigmoid(t_x) + c_x) / G, b_w = p_w e^{t_w} (sec. 2, "Direct location prediction");
    otherwise b_x = x_a + t_x p_w with x_a the cell centre (the anchor-box offsets of Faster R-CNN's RPN).
    """
    rows, cols = output.shape[1], output.shape[2]
    priors = anchors.to(output)                                            # [A, 2] (p_w, p_h)
    cell, side = _cell_corners(rows, cols, output.dtype, output.device)    # [G, G, 1, 2] (c_x, c_y), [2]
    t_xy, t_wh, t_o, class_scores = output.split((2, 2, 1, output.shape[-1] - 5), dim=-1)
    if direct_location:
        centre = (cell + t_xy.sigmoid()) / side                            # [N, G, G, A, 2] (b_x, b_y)
    else:
        centre = (cell + 0.5) / side + t_xy * priors
    size = priors * t_wh.clamp(max=MAX_LOG_SCALE).exp()                    # (b_w, b_h)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)      # -> [N, G, G, A, 4] xyxy
    # softmax over the classes, taken over the first axis of the transposed view: the same values to a unit
    # in the last place, but torch's CPU softmax over a short last axis (a handful of classes) is ~5x slower.
    probabilities = class_scores.transpose(0, -1).softmax(dim=0).transpose(0, -1)       # [N, G, G, A, C]
    return boxes, t_o.squeeze(-1).sigmoid(), probabilities


@functools.lru_cache(maxsize=32)
def _cell_corners(rows: int, cols: int, dtype: torch.dtype, device: torch.device) \
        -> tuple[torch.Tensor, torch.Tensor]:
    """(c_x, c_y) of every cell's top-left corner in cells, [rows, cols, 1, 2], and (cols, rows)."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    corners = torch.stack([col, row], dim=-1).view(rows, cols, 1, 2)
    return corners.to(device, dtype), torch.tensor([cols, rows], device=device, dtype=dtype)


def yolo2_loss(output: torch.Tensor, targets: list[dict], anchors: torch.Tensor, *, direct_location: bool = True,
               lambda_coord: float = 1.0, lambda_obj: float = 5.0, lambda_noobj: float = 1.0,
               lambda_class: float = 1.0, ignore_iou: float = 0.6, rescore: bool = True) -> dict:
    """Eq. (3)'s sum-squared error on YOLOv2's parameters, averaged over images (see the module docstring).

      coordinates: lambda_coord (2 - w h) [(sigma(t_x) - x^)^2 + (sigma(t_y) - y^)^2 + (t_w - t^_w)^2 + (t_h - t^_h)^2]
                   on each ground truth's slot (t_x itself instead of sigma(t_x) without direct location);
      object:      lambda_obj (sigma(t_o) - IoU(predicted box, ground truth))^2 on those slots;
      no_object:   lambda_noobj sigma(t_o)^2 on every other slot whose box overlaps no ground truth by > 0.6;
      class:       lambda_class x cross-entropy of the softmax class scores on the responsible slots.
    """
    output = output.float()                                                # AMP: the loss in full precision
    n, rows, cols, num_anchors, _ = output.shape
    boxes, objectness, _ = decode_yolo2(output, anchors, direct_location)
    background = torch.ones(n, rows, cols, num_anchors, dtype=torch.bool, device=output.device)
    slots, picked = [], []
    for index, target in enumerate(targets):
        gt = target["boxes"].float()
        if len(gt) == 0:
            continue
        overlap = elementwise_iou(boxes[index].detach()[..., None, :], gt)      # [G, G, A, M]
        background[index] = overlap.max(dim=-1).values <= ignore_iou
        encoded = encode_yolo2(gt, (rows, cols), anchors, direct_location)
        slot = (encoded["row"] * cols + encoded["col"]) * num_anchors + encoded["anchor"]
        keep = _one_per_cell(slot, (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
        slots.append(torch.stack([torch.full_like(slot[keep], index), encoded["row"][keep], encoded["col"][keep],
                                  encoded["anchor"][keep]], dim=1))
        picked.append({key: encoded[key][keep] for key in ("xy", "wh", "boxes")}
                      | {"labels": target["labels"][keep].long()})
    zero = output.sum() * 0.0                                                  # keeps the graph when empty
    if not slots:
        return {"coordinates": zero, "object": zero, "no_object": lambda_noobj * (objectness ** 2).sum() / n,
                "class": zero}
    b, r, c, a = torch.cat(slots).unbind(1)                                    # [M] each
    xy_target, wh_target, gt_boxes, labels = (torch.cat([p[k] for p in picked]) for k in ("xy", "wh", "boxes",
                                                                                          "labels"))
    responsible = torch.zeros_like(background)
    responsible[b, r, c, a] = True
    raw = output[b, r, c, a]                                                   # [M, 5 + C]
    xy = raw[:, :2].sigmoid() if direct_location else raw[:, :2]
    scale = 2.0 - (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    coord_error = ((xy - xy_target) ** 2).sum(1) + ((raw[:, 2:4] - wh_target) ** 2).sum(1)
    iou = elementwise_iou(boxes[b, r, c, a].detach(), gt_boxes)
    object_target = iou if rescore else torch.ones_like(iou)
    negatives = background & ~responsible
    return {
        "coordinates": lambda_coord * (scale * coord_error).sum() / n,
        "object": lambda_obj * ((objectness[b, r, c, a] - object_target) ** 2).sum() / n,
        "no_object": lambda_noobj * torch.where(negatives, objectness ** 2, zero).sum() / n,
        "class": lambda_class * F.cross_entropy(raw[:, 5:], labels, reduction="sum") / n,
    }


def yolo2_priors(dataset, k: int = 5, seed: int = 0) -> list[list[float]]:
    """Anchor priors by k-means with the 1 - IoU distance on the training boxes' shapes ("Dimension
    Clusters", Redmon & Farhadi 2017), as fractions of the letterboxed input: (w, h) / longer image side."""
    shapes = []
    for record in dataset.records:
        keep = _trainable(record)
        wh = record.boxes[keep, 2:] - record.boxes[keep, :2]
        shapes.append(wh[(wh > 0).all(axis=1)] / max(record.width, record.height))
    wh = np.concatenate(shapes) if shapes else np.zeros((0, 2))
    if len(wh) < k:
        raise DataError(f"k-means priors need at least {k} boxes, the training data has {len(wh)}",
                        field="anchors")
    return kmeans_anchors(torch.from_numpy(wh), k=k, seed=seed).tolist()


# ================================================================================================ data
def _trainable(record) -> np.ndarray:
    """Objects to learn from: not crowd regions, not VOC 'difficult' ones."""
    keep = np.ones(record.num_objects, dtype=bool)
    if len(record.iscrowd):
        keep &= ~record.iscrowd.astype(bool)
    if len(record.difficult):
        keep &= ~record.difficult.astype(bool)
    return keep


def letterbox(image: np.ndarray, size: int):
    """[H, W, 3] uint8 -> ([3, size, size] float32 in [0, 1], (scale_x, scale_y, left, top)) with the aspect
    kept."""
    canvas, undo = letterbox_image(image, size)
    return _input_tensor(canvas[None])[0], tuple(float(v) for v in undo)


def _input_tensor(canvases: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float32 in [0, 1], in channels-last memory (no copy to reorder)."""
    return torch.from_numpy(canvases).permute(0, 3, 1, 2).float().div_(255.0)


class YoloData(torch.utils.data.Dataset):
    """Images letterboxed to `size` x `size`; item: (image [3, size, size], {"boxes" [N, 4] input pixels,
    "labels" [N] class indices 0..K-1, "image_id"}). `flip` mirrors with probability 1/2 using torch's global
    generator (seeded and checkpointed by the engine). Crowd and difficult objects are left out. `window` (a
    `tiling.RandomWindow`) first cuts a window from each image that needs slicing; others pass untouched.
    With `pairs` (augmented (image, target) pairs of the same records: `augment.RecordPairs` or `MosaicDataset`,
    window and augmentation included), item i is letterboxed from pairs[i] instead, without `flip`/`window`."""

    def __init__(self, dataset, class_ids: list[int], size: int, flip: bool = False,
                 window: RandomWindow | None = None, pairs=None):
        self.dataset, self.size, self.flip, self.window, self.pairs = dataset, int(size), flip, window, pairs
        self.index_of = {int(c): i for i, c in enumerate(class_ids)}

    def __len__(self) -> int:
        return len(self.dataset.records)

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        keep = _trainable(record)
        unknown = [int(c) for c in record.labels[keep] if int(c) not in self.index_of]
        if unknown:
            raise DataError(f"category id {unknown[0]} is not one of the model's {sorted(self.index_of)}",
                            record=f"image id {record.image_id}", field="labels")
        if self.pairs is not None:
            image, target = self.pairs[index]
            objects = len(target["labels"])
            learn = ~(np.asarray(target.get("iscrowd", np.zeros(objects)), dtype=bool).reshape(-1)
                      | np.asarray(target.get("difficult", np.zeros(objects)), dtype=bool).reshape(-1))
            target = {"boxes": np.asarray(target["boxes"]).reshape(-1, 4)[learn],
                      "labels": np.asarray(target["labels"]).reshape(-1)[learn]}
        else:
            image = load_image(self.dataset, record)
            target = {"boxes": clip_boxes(record.boxes[keep], record.width, record.height),
                      "labels": record.labels[keep]}
        if self.window is not None and self.pairs is None:
            image, target = self.window(image, target)
        canvas, target = Letterbox(self.size)(image, target)
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.index_of[int(c)] for c in target["labels"]], dtype=np.int64)
        real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])     # resizing can flatten tiny boxes
        image = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float().div_(255.0)
        boxes = torch.from_numpy(boxes[real])
        if self.flip and self.pairs is None and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
            boxes = torch.stack([self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], 1)
        return image, {"boxes": boxes, "labels": torch.from_numpy(labels[real]), "image_id": int(record.image_id)}


def multi_scale_sizes(image_size: int, stride: int = 32) -> list[int]:
    """Multiples of `stride` from 0.75 to 1.5 x `image_size` (the paper's {320, ..., 608} around 416)."""
    low = max(stride, math.ceil(0.75 * image_size / stride) * stride)
    high = max(low, math.floor(1.5 * image_size / stride) * stride)
    return list(range(low, high + 1, stride))


class YoloCollate:
    """Stacks a batch; with `sizes`, resizes it to a size drawn anew every `every` batches ("every 10 batches
    our network randomly chooses a new image dimension size", Redmon & Farhadi 2017, "Multi-Scale Training").

    The items come letterboxed at the largest size and are scaled down with their boxes. The size of block
    k = batch // every is drawn from a generator seeded by (seed, k), so it depends on the batch count
    alone. (The count restarts with a resumed run and is per worker process with DataLoader workers.)
    """

    def __init__(self, sizes: list[int] | None = None, every: int = 10, seed: int = 0):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.sizes, self.every, self.seed, self.batches = list(sizes or []), int(every), int(seed), 0

    def size_of_batch(self, number: int) -> int:
        block = number // self.every
        return self.sizes[int(np.random.default_rng([self.seed, block]).integers(len(self.sizes)))]

    def __call__(self, batch):
        images = torch.stack([image for image, _ in batch])                   # [B, 3, S, S]
        targets = [dict(target) for _, target in batch]
        if self.sizes:
            size = self.size_of_batch(self.batches)
            self.batches += 1
            if size != images.shape[-1]:
                factor = size / images.shape[-1]
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)                          # -> [B, 3, size, size]
                for target in targets:
                    target["boxes"] = target["boxes"] * factor
        return images, targets


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, dataset, class_ids: list[int], size: int, *, images: int = 512,
                         batch_size: int = 32, window: RandomWindow | None = None) -> nn.Module:
    """Re-estimate every batch norm's running mean and variance at one input `size`, weights untouched.

    Multi-scale training leaves the running statistics an exponential average (PyTorch's momentum 0.1, so
    mostly the last 10-20 batches) of whichever sizes were drawn last, and a convolution's activation
    statistics change with the input size (objects span more or fewer pixels, resizing smooths). A model
    tested at one size then normalises with another size's statistics: on the world a YOLOv2 at 160 px went
    from 0.67 to 0.82 VOC mAP@0.5 after this. The statistics become the plain average over the first
    `images` training images letterboxed to `size` (no flips), as "precise BN" does (Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm", sec. 3); large photographs through `window`, as the tiles they are
    predicted by. Returns `model`, left in eval mode.
    """
    data = YoloData(dataset, class_ids, size, window=window)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(data) == 0:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None                  # cumulative average over the batches below
    model.train()
    try:
        count = min(int(images), len(data))
        for start in range(0, count, batch_size):
            batch = torch.stack([data[i][0] for i in range(start, min(start + batch_size, count))])
            model(batch.to(next(model.parameters()).device))         # [B, 3, size, size]
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return model.eval()


# ================================================================================================ inference
@torch.no_grad()
def detect(model: nn.Module, images: list[np.ndarray], device, class_ids: list[int], *, size: int | None = None,
           score_threshold: float = 0.005, nms_threshold: float = 0.45, max_detections: int = 100) -> list[dict]:
    """Detections on [H, W, 3] uint8 images: letterbox, one forward pass, class-specific scores, per-class NMS.

    Score of (box, class) = P(class | object) x confidence (v1: the linear outputs, negatives clipped to 0;
    v2: softmax x sigmoid(t_o)). Returns per image {"boxes" [N, 4] xyxy image pixels (float64), "scores" [N],
    "labels" [N] category ids}, best first.
    """
    config = model.config
    size = config.image_size if (size is None or config.version == 1) else int(size)
    if not images:
        return []
    if model.training:          # eval() walks every submodule: skip it when already in eval mode
        model.eval()
    canvases, undo = zip(*(letterbox_image(image, size) for image in images))
    network = inference_copy(model)          # batch norms folded into the convolutions (as Darknet does)
    output = network(_input_tensor(np.stack(canvases)).to(device)).float()
    n = len(images)
    if config.version == 1:
        boxes, confidence, probabilities = decode_yolo1(output, config.boxes_per_cell)
        probabilities = probabilities.clamp(min=0)[..., None, :].expand(*confidence.shape, -1)
        scores = confidence.clamp(min=0)[..., None] * probabilities          # [N, S, S, B, C]
    else:
        boxes, objectness, probabilities = decode_yolo2(output, model.anchors, config.direct_location)
        scores = objectness[..., None] * probabilities                      # [N, G, G, A, C]
    # The rest is a few small arrays per image: numpy, whose calls cost a fraction of torch's.
    boxes = boxes.reshape(n, -1, 4).cpu().numpy().astype(np.float64) * size      # [N, P, 4] input pixels
    scores = scores.reshape(n, boxes.shape[1], -1).cpu().numpy().astype(np.float64)   # [N, P, C]
    broken = ~(np.isfinite(boxes).all(axis=(1, 2)) & np.isfinite(scores).all(axis=(1, 2)))
    if broken.any():
        raise ValueError(f"YOLO's outputs are NaN or infinite for image(s) {np.flatnonzero(broken).tolist()} of "
                         f"the batch (diverged weights?); no detections can be drawn from them")
    # One class-aware NMS call for the whole batch, grouped by (image, class): the same result as one call
    # per image, without paying the call's fixed cost N times.
    image_index, candidate, label = np.nonzero(scores > score_threshold)              # [K] each
    kept_boxes, kept_scores = boxes[image_index, candidate], scores[image_index, candidate, label]
    keep = batched_nms_numpy(kept_boxes, kept_scores, image_index * scores.shape[-1] + label, nms_threshold)
    # Kept boxes grouped by image (a stable sort keeps each image's best first), the letterbox undone for all
    # at once (x_original = (x - left) / scale_x, clipped to the image), then one slice per image.
    keep = keep[np.argsort(image_index[keep], kind="stable")]
    owner = image_index[keep]                                              # [K] image of each kept box
    undo = np.stack(undo)[owner]                                           # [K, 4] (scale_x, scale_y, left, top)
    found = (kept_boxes[keep] - undo[:, [2, 3, 2, 3]]) / undo[:, [0, 1, 0, 1]]
    sides = np.array([image.shape[1::-1] for image in images], dtype=np.float64)     # [N, 2] (W, H)
    found = torch.from_numpy(np.minimum(np.maximum(found, 0.0), np.tile(sides[owner], 2)))
    scores = torch.from_numpy(kept_scores[keep])
    labels = torch.from_numpy(np.asarray(class_ids, dtype=np.int64)[label[keep]])
    starts = [0] + np.cumsum(np.bincount(owner, minlength=n)).tolist()
    return [{"boxes": found[a:min(b, a + max_detections)], "scores": scores[a:min(b, a + max_detections)],
             "labels": labels[a:min(b, a + max_detections)]} for a, b in zip(starts, starts[1:])]


def detect_any_size(model: nn.Module, images: list[np.ndarray], device, class_ids: list[int], *,
                    size: int | None = None, factor: float = math.inf, score_threshold: float = 0.005,
                    nms_threshold: float = 0.45, max_detections: int = 100) -> list[dict]:
    """`detect` on images of any size (what the recipe's predict and evaluation run): the images whose longer
    side is at most `factor` x the input side go to `detect` together, letterboxed whole, as before; each larger
    one is detected on input-size tiles at its own resolution, merged by `tiling.predict_any_size` (each object
    from the tile that sees it whole, then NMS per class at `nms_threshold`), its `max_detections` best."""
    config = model.config
    side = config.image_size if (size is None or config.version == 1) else int(size)
    return predict_any_size(
        lambda chunk: detect(model, chunk, device, class_ids, size=size, score_threshold=score_threshold,
                             nms_threshold=nms_threshold, max_detections=max_detections),
        images, input_size=side, iou_threshold=nms_threshold, max_detections=max_detections, factor=factor)


@torch.no_grad()
def evaluate_yolo(model: nn.Module, dataset, device, class_ids: list[int], *, size: int | None = None,
                  batch_size: int = 16, factor: float = math.inf, **detect_options) -> dict:
    """Every detector's metrics (`scenekit.models.detection.evaluate_detections`: VOC mAP50, COCO AP, AP50, ...)
    and images per second of `detect` (letterbox, forward, decoding, NMS; not the reading of files) on `dataset`,
    images larger than `factor` x the input by tiles (`detect_any_size`); `images_at_max_detections` counts the
    images whose detections reached `max_detections`, where more objects may have been cut."""
    limit = detect_options.get("max_detections", 100)
    results, seconds, capped = [], 0.0, 0
    records = dataset.records
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = [load_image(dataset, record) for record in chunk]
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        found = detect_any_size(model, images, device, class_ids, size=size, factor=factor, **detect_options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - began
        for record, detections in zip(chunk, found):
            results += coco_records(detections, record.image_id)
            capped += len(detections["scores"]) >= limit
    return {**evaluate_detections(dataset, results), "detections": len(results),
            "images_per_s": len(records) / max(seconds, 1e-9), "images_at_max_detections": int(capped)}


# ------------------------------------------------------------------------------------------------ ONNX export
def yolo_graph(model: nn.Module):
    """YOLO's ONNX graph (`scenekit.export`). v1: images [B, 3, S, S] -> output [B, S_g, S_g, 5B + C], the forward
    restated with a symbolic batch; v2: the model itself, images [B, 3, H, W] (multiples of 32) ->
    [B, G_h, G_w, A, 5 + C]. Decoding and NMS stay in Python."""
    from scenekit.models.export_parts import ExportGraph, Tupled

    size = model.config.image_size
    if model.config.version == 2:
        return ExportGraph("yolo2", model, torch.rand(2, 3, size, size), ["output"], True)
    grid = model.config.grid

    def yolo1(images):                     # Yolo1.forward, batch left symbolic (it uses len(images))
        _, features = model.features(images)
        return model.head(features).unflatten(1, (grid, grid, -1))         # -> [B, S, S, 5B + C]
    return ExportGraph("yolo1", Tupled(model, yolo1), torch.rand(2, 3, size, size), ["output"], False)


def stream_predict(recipe: Recipe, model: nn.Module, paths: list[Path], device):
    """Run a trained model over image files as a stream of frames, in the order given (a folder's files sorted by
    name: `scenekit.data.image_files.image_files`), the real-time use YOLO was made for. Yields (path,
    detections, seconds) per frame, `seconds` being the model's time (`recipe.predict`); the next file is decoded
    on a second thread meanwhile, so frames per second are 1 / seconds when decoding keeps up. Works for any
    recipe's model."""
    model.eval()
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(read_rgb, paths[0])
        for number, path in enumerate(paths):
            image = upcoming.result()
            if number + 1 < len(paths):
                upcoming = reader.submit(read_rgb, paths[number + 1])
            began = time.perf_counter()
            found = recipe.predict(model, [image], device)[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield path, found, time.perf_counter() - began


# ================================================================================================ recipe
@dataclass
class YoloOptions:
    """The options of `recipe` (`--option KEY=VALUE`, `scenekit train yolo2 --list-options`); None: as the version
    decides (v1 as the paper, v2 with every ingredient of its Table 2 on)."""

    version: int | None = option(None, "1: YOLO v1, 2: YOLOv2 (None: from the model name)")
    image_size: int | None = option(None, "network input side, px, a multiple of the stride (None: 128 for v1, "
                                          "160 for v2)")
    channels: tuple[int, ...] = option((16, 32, 64, 128, 256), "darknet widths, one 3x3 conv + 2x2 pool each: "
                                                               "stride 2 ** len")
    batch_norm: bool | None = option(None, "batch norm on every convolution (None: v2 only)")
    strided_stem: bool = option(False, "first convolution strides 2 instead of conv + max-pool (faster on a CPU)")
    backbone: str = option("darknet", "checked only: YOLO trains its own darknet-style stack ('darknet' | 'small')")
    backbone_weights: str | None = option(None, "checked only: YOLO trains from scratch (None)")
    grid: int = option(7, "v1: the S x S grid's side, cells")
    boxes_per_cell: int = option(2, "v1: boxes B each cell predicts")
    hidden: int = option(512, "v1: width of the first fully connected layer (4096 in the paper)")
    dropout: float | None = option(None, "v1: dropout after the hidden layer (None: 0.5, or 0 with batch norm)")
    anchors: Any = option("kmeans", "v2 priors: 'kmeans' (clustered on the training boxes), 'hand' (Faster R-CNN's "
                                    "9) or [[w, h], ...] fractions of the input side")
    num_anchors: int = option(5, "v2: priors per cell that k-means finds")
    head_channels: int = option(256, "v2: width of the detection convolutions")
    direct_location: bool = option(True, "v2: sigmoid offsets within the cell (off: RPN's unconstrained offsets)")
    passthrough: bool = option(True, "v2: stack the stride-16 map onto the stride-32 grid")
    passthrough_channels: int | None = option(None, "v2: width of the 1x1 thinning before stacking (None: 1/8 of "
                                                    "the fine map)")
    multi_scale: bool | None = option(None, "v2: a new input size every `scale_every` batches (None: on for v2)")
    scale_every: int = option(10, "multi-scale: batches between input size changes")
    sizes: tuple[int, ...] | None = option(None, "multi-scale input sides, px (None: the multiples of the stride "
                                                 "from 0.75 to 1.5 x image_size)")
    test_size: int | None = option(None, "v2: input side evaluated and predicted at, px (None: image_size)")
    epochs: int | None = option(None, "training epochs (None: 30)")
    lr: float | None = option(None, "peak learning rate (None: 2e-3)")
    optimizer: str = option("adamw", "'sgd' | 'adam' | 'adamw'")
    weight_decay: float = option(5e-4, "weight decay")
    warmup_steps: int = option(50, "linear warm-up, iterations")
    flip: bool = option(True, "augment 'world': random horizontal flip")
    precise_bn: int | None = option(None, "training images the batch-norm statistics are re-estimated on at the "
                                          "test size before each evaluation (None: 512 for multi-scale v2; 0: off)")
    seed: int = option(0, "seed of k-means, multi-scale sizes and precise-BN windows")
    slice_factor: float = option(SLICE_FACTOR, "images longer than this x the input side are sliced into tiles "
                                               "(0: never)")
    augment: str = option("world", "'world' (flip only) | 'user' | 'top-down' | 'none' (scenekit.data.augment)")
    score_threshold: float = option(0.005, "detections below this class-specific score are dropped")
    nms_threshold: float | None = option(None, "non-maximum suppression IoU (None: 0.5 for v1, 0.45 for v2)")
    max_detections: int = option(100, "detections kept per image (after merging a photograph's tiles)")


def recipe(categories: dict[int, str], *, name: str = "yolo2", **options) -> Recipe:
    """The training recipe of YOLO v1 (`version=1`, name "yolo1") or YOLOv2 (`version=2`, "yolo2").

    Defaults: v1 as the paper (no batch norm, dropout 0.5, one fixed input size, NMS 0.5); v2 with every
    ingredient on (batch norm, k-means priors, direct location, passthrough, multi-scale, NMS 0.45).
    `anchors` is "kmeans" (`num_anchors` priors clustered on the training boxes), "hand" (the 9 Faster R-CNN
    shapes) or an explicit [[p_w, p_h], ...] list of fractions of the input side. `test_size` evaluates a v2
    model at another input size ("high resolution detector", e.g. 1.5 x `image_size`). `strided_stem` (see
    `DarknetFeatures`) and `passthrough_channels` (the 1 x 1 convolution that thins the fine map before it is
    stacked; None: 1/8 of its width, as 512 -> 64 in the released configuration) are off the paper's path,
    for speed and width on small inputs.

    k-means needs the training boxes, which the engine hands to `make_dataset(data, train=True)` only after
    building the model; so that call clusters them and writes the priors into the model it just built and
    into `model_config`, which every checkpoint stores.

    `precise_bn` (multi-scale v2 only; default 512, 0 turns it off): before each end-of-epoch evaluation the
    batch norms' running statistics are re-estimated on that many training images at the test size
    (`recompute_batch_norm`). Training itself normalises with batch statistics, so this changes no gradient;
    it makes the validation score, the choice of the best epoch and the saved statistics those of the size the
    model is tested at, not of the sizes multi-scale training drew last (see the module docstring).

    `max_detections`: detections per image (100; after merging the tiles of a photograph). `slice_factor`:
    images whose longer side is more than this times the input side train on random `image_size` windows and
    are predicted and evaluated by overlapping tiles of the test size (`detect_any_size`), and the precise-BN
    statistics are taken on such windows too. 2.5 keeps every world image (128-320 px) letterboxed whole at
    every default input, as the benchmark figures were measured, and slices a 2,500 px photograph at any input
    up to 1,000 px; 1.5 suits photographs of small objects, 0 never slices (module docstring). The k-means
    priors are still measured on whole images (fractions of the longer side), which misjudges the objects of
    photographs that train on windows: give such data its priors with `anchors=[[w, h], ...]`
    (`scenekit data check` recommends them).

    `augment`: "world" (the horizontal flip `flip`, as the world has always trained), "user", "top-down" or
    "none" (`scenekit.data.augment`'s presets, mosaic included; the module docstring).
    """
    o = read_options(YoloOptions, options, name)
    version = o.version if o.version is not None else (1 if "1" in name else 2)
    if version not in (1, 2):
        raise DataError(f"version must be 1 or 2, got {version!r}", field="version")
    if o.backbone not in ("darknet", "small"):
        raise DataError(f"YOLO models use their own darknet-style backbone (--option channels=[...]), "
                        f"not {o.backbone!r}", field="backbone")
    if o.backbone_weights is not None:
        raise DataError("YOLO models train their backbone from scratch; pretrained weights are not supported",
                        field="backbone_weights")
    stride = 2 ** len(o.channels)
    image_size = o.image_size if o.image_size is not None else (128 if version == 1 else 160)
    if image_size % stride:
        raise DataError(f"image_size {image_size} must be a multiple of the stride {stride}", field="image_size")
    batch_norm = (version == 2) if o.batch_norm is None else o.batch_norm
    multi_scale = (version == 2) if o.multi_scale is None else o.multi_scale
    if multi_scale and version == 1:
        raise DataError("multi-scale training needs a fully convolutional model (yolo2); YOLO v1's fully "
                        "connected layers fix the input size", field="multi_scale")
    if o.max_detections < 1:
        raise DataError(f"max_detections must be a positive integer, got {o.max_detections!r}",
                        field="max_detections")
    if not (o.slice_factor == 0 or 1 <= o.slice_factor < math.inf):
        raise DataError(f"slice_factor must be 0 (never slice) or a number >= 1, got {o.slice_factor!r}",
                        field="slice_factor")
    if isinstance(o.anchors, str) and o.anchors not in ("kmeans", "hand"):
        raise DataError(f"anchors must be 'kmeans', 'hand' or a list of [w, h], got {o.anchors!r}", field="anchors")
    explicit = None
    if o.anchors == "hand":
        explicit = [list(a) for a in HAND_PICKED_ANCHORS]
    elif not isinstance(o.anchors, str):
        explicit = [[float(w), float(h)] for w, h in o.anchors]
    augmentation = augment_options(o.augment)
    if o.passthrough_channels is not None and o.passthrough_channels < 1:
        raise DataError(f"passthrough_channels must be a positive integer or None, got {o.passthrough_channels!r}",
                        field="passthrough_channels")
    if o.strided_stem and len(o.channels) < 2:
        raise DataError("strided_stem needs at least two widths in channels", field="strided_stem")
    # The options as this recipe resolves them: what the checkpoint stores, so a restore rebuilds the same recipe.
    o = replace(o, version=version, image_size=image_size, batch_norm=batch_norm, multi_scale=multi_scale,
                dropout=(0.0 if batch_norm else 0.5) if o.dropout is None else o.dropout,
                nms_threshold=(0.5 if version == 1 else 0.45) if o.nms_threshold is None else o.nms_threshold,
                precise_bn=(512 if multi_scale and batch_norm else 0) if o.precise_bn is None else int(o.precise_bn),
                anchors=o.anchors if isinstance(o.anchors, str) else explicit,
                sizes=[int(s) for s in o.sizes] if o.sizes else multi_scale_sizes(image_size, stride))
    factor = math.inf if o.slice_factor == 0 else float(o.slice_factor)         # tiling.needs_slicing's factor
    tile = o.image_size if o.version == 1 or o.test_size is None else int(o.test_size)   # the side predicted at
    class_ids = sorted(int(c) for c in categories)
    config = YoloConfig(version=o.version, num_classes=len(class_ids), image_size=o.image_size,
                        channels=tuple(o.channels), batch_norm=o.batch_norm, strided_stem=o.strided_stem,
                        grid=o.grid, boxes_per_cell=o.boxes_per_cell, hidden=o.hidden, dropout=o.dropout,
                        anchors=explicit, num_anchors=len(explicit) if explicit else o.num_anchors,
                        head_channels=o.head_channels, direct_location=o.direct_location,
                        passthrough=o.passthrough, passthrough_channels=o.passthrough_channels)
    model_config = asdict(config)
    model_config["channels"] = list(config.channels)
    built: dict = {}

    def build(values: dict) -> nn.Module:
        values = dict(values)
        values["channels"] = tuple(values["channels"])
        built["model"] = build_yolo(YoloConfig(**values))
        return built["model"]

    def make_dataset(dataset, train: bool):
        if train and o.version == 2 and o.anchors == "kmeans":
            priors = yolo2_priors(dataset, o.num_anchors, o.seed)
            model_config["anchors"] = priors
            if "model" in built:
                built["model"].anchors.copy_(torch.tensor(priors))
        size = max(o.sizes) if (train and o.multi_scale) else o.image_size
        window = RandomWindow(o.image_size, factor=factor) if train and factor < math.inf else None
        if train:
            dataset = tiled_epoch(dataset, o.image_size, factor)
            built["train_data"] = dataset                 # for the batch-norm statistics before evaluation
        if not train or augmentation is None:
            return YoloData(dataset, class_ids, size, flip=o.flip and train, window=window)
        # seed=None: the engine seeds torch per run, worker and epoch (augment.OwnStream); grey fill as letterbox
        steps = build_augmentation(augmentation, None, size=size, fill=114)
        first = [window] if window is not None else []
        if augmentation.mosaic:
            pairs = MosaicDataset(RecordPairs(dataset, transform=Compose(first) if first else None), size,
                                  p=augmentation.mosaic, transform=steps)
        else:
            pairs = RecordPairs(dataset, transform=Compose([*first, steps]))
        return YoloData(dataset, class_ids, size, pairs=pairs)

    def evaluate(model, dataset, device):
        if o.precise_bn and "train_data" in built:        # while training (`scenekit evaluate` keeps the saved ones)
            window = RandomWindow(tile, factor=factor, seed=o.seed) if factor < math.inf else None
            recompute_batch_norm(model, built["train_data"], class_ids, tile, images=o.precise_bn, window=window)
        return evaluate_yolo(model, dataset, device, class_ids, size=o.test_size, factor=factor, **detect_options)

    detect_options = {"score_threshold": o.score_threshold, "nms_threshold": o.nms_threshold,
                      "max_detections": o.max_detections}
    # backbone and backbone_weights are only checked (YOLO trains its own network), never stored
    stored = {key: value for key, value in stored_options(o).items() if key not in ("backbone", "backbone_weights")}
    phases = [Phase("detect", epochs=30 if o.epochs is None else o.epochs, lr=2e-3 if o.lr is None else o.lr,
                    optimizer=o.optimizer, weight_decay=o.weight_decay, schedule="cosine",
                    warmup_steps=o.warmup_steps, clip_grad_norm=10.0)]
    return Recipe(
        model_name=name, categories=dict(categories), options=stored, model_config=model_config,
        build_model=build, phases=phases, make_dataset=make_dataset,
        collate=YoloCollate(o.sizes if o.multi_scale else None, o.scale_every, o.seed),
        evaluate=evaluate,
        predict=lambda model, images, device: detect_any_size(model, list(images), device, class_ids,
                                                              size=o.test_size, factor=factor, **detect_options),
        best_metric="mAP50", best_mode="max", world={"image_size": max(128, o.image_size)},
        export=yolo_graph,
    )
