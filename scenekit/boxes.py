"""Axis-aligned boxes: formats, area, clipping, IoU / GIoU matrices, and the R-CNN box-delta coding.

Conventions (fixed once, here):

- A box is 4 numbers in the last dimension of a float tensor. Formats, named as torchvision names them:
  ``"xyxy"`` = (x1, y1, x2, y2) corners; ``"xywh"`` = (left, top, width, height), COCO's bbox;
  ``"cxcywh"`` = (centre x, centre y, width, height).
- Coordinates are **continuous**: a box's width is ``x2 - x1`` (no "+1" pixel-count convention), so a
  box with x1 == x2 has zero area. This is what torchvision and COCO use.
- Every function validates its inputs (shape ``[..., 4]``, floating dtype, finite values, x2 >= x1 and
  y2 >= y1, matching dtype/device for pairs) and raises ``ValueError`` naming the argument. Empty inputs give
  empty outputs of the right shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

# torchvision's default clamp on dw, dh before exp(): a box may grow at most 1000/16 times per decode.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------------------------------------- validation
def as_numpy(x: torch.Tensor):
    """A zero-copy numpy view of a CPU float32/float64 tensor, else ``None``.

    Validation and the numba kernels work on these views: numpy and numba run single-threaded, while each
    small torch op may start a parallel region, which costs milliseconds when the cores are busy.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return x.detach().numpy()
    return None


def _check_tensor(x, name: str, *, last_dim: int = 4, ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32/float64), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have shape {'[N, 4]' if ndim == 2 else f'{ndim}-D'}, "
                         f"got {list(x.shape)}")
    if x.dim() == 0 or x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have shape [..., {last_dim}], got {list(x.shape)}")
    view = as_numpy(x)
    finite = bool(np.isfinite(view).all()) if view is not None else bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")


def check_boxes(boxes, name: str = "boxes", *, fmt: str = "xyxy", ndim: int | None = None) -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``boxes`` is a finite float ``[..., 4]`` tensor of valid boxes.

    "Valid" means non-negative extent: x2 >= x1 and y2 >= y1 for ``xyxy``, w >= 0 and h >= 0 otherwise.
    """
    if fmt not in BOX_FORMATS:
        raise ValueError(f"box format must be one of {BOX_FORMATS}, got {fmt!r}")
    _check_tensor(boxes, name, ndim=ndim)
    view = as_numpy(boxes)
    values = view if view is not None else boxes
    if fmt == "xyxy":
        bad = (values[..., 2] < values[..., 0]) | (values[..., 3] < values[..., 1])
        rule = "x2 >= x1 and y2 >= y1"
    else:
        bad = (values[..., 2] < 0) | (values[..., 3] < 0)
        rule = "width >= 0 and height >= 0"
    if bool(bad.any()):
        first = tuple(int(i) for i in np.argwhere(np.asarray(bad.cpu() if view is None else bad))[0])
        raise ValueError(f"{name} has an invalid {fmt} box at index {first}: "
                         f"{boxes[first].tolist()} (need {rule})")


def _check_same(a, b, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise ValueError(f"{name_b} has dtype {b.dtype} but {name_a} has dtype {a.dtype}; they must match")
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; they must match")


# ---------------------------------------------------------------------------------------------- formats
def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert ``[..., 4]`` boxes between ``"xyxy"``, ``"xywh"`` (left, top, w, h) and ``"cxcywh"``."""
    for fmt, arg in ((in_fmt, "in_fmt"), (out_fmt, "out_fmt")):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{arg} must be one of {BOX_FORMATS}, got {fmt!r}")
    check_boxes(boxes, "boxes", fmt=in_fmt)
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    # Go through xyxy: two small conversions instead of six.
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = 0.5 * (a + c), 0.5 * (b + d), c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[..., 4]`` xyxy boxes -> ``[...]``: (x2 - x1) * (y2 - y1)."""
    check_boxes(boxes, "boxes")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes_to_image(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip ``[..., 4]`` xyxy boxes to an image of ``size = (height, width)`` (torchvision's order).

    x is clamped to [0, width] and y to [0, height]: with continuous coordinates the image's right edge is at
    x = width. A box entirely outside the image collapses to a zero-area box on the border.
    """
    check_boxes(boxes, "boxes")
    if len(size) != 2 or not all(isinstance(s, (int, float)) and s >= 0 and math.isfinite(s) for s in size):
        raise ValueError(f"size must be (height, width) with non-negative finite values, got {size!r}")
    height, width = size
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


# ---------------------------------------------------------------------------------------------- overlap
def _intersection_union(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise intersection and union areas, ``[N, 4] x [M, 4] -> [N, M], [N, M]``, in torch (differentiable)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])  # [N]
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])  # [M]
    x1, y1, x2, y2 = (c[:, None] for c in boxes1.unbind(1))                  # [N, 1] each
    u1, v1, u2, v2 = (c[None, :] for c in boxes2.unbind(1))                  # [1, M] each
    inter_w = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0)   # [N, M]
    inter_h = (torch.minimum(y2, v2) - torch.maximum(y1, v1)).clamp(min=0)
    inter = inter_w * inter_h
    return inter, area1[:, None] + area2[None, :] - inter


@numba.njit(cache=True, nogil=True)
def _box_iou_kernel(boxes1, boxes2, out):  # pragma: no cover - numba
    """IoU into ``out [N, M]``; the inner loop over boxes2 is branch-free, so LLVM vectorises it."""
    m = boxes2.shape[0]
    u1, v1 = np.ascontiguousarray(boxes2[:, 0]), np.ascontiguousarray(boxes2[:, 1])
    u2, v2 = np.ascontiguousarray(boxes2[:, 2]), np.ascontiguousarray(boxes2[:, 3])
    area2 = (u2 - u1) * (v2 - v1)
    for i in range(boxes1.shape[0]):
        x1, y1, x2, y2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area1 = (x2 - x1) * (y2 - y1)
        row = out[i]
        for j in range(m):
            inter = max(min(x2, u2[j]) - max(x1, u1[j]), 0.0) * max(min(y2, v2[j]) - max(y1, v1[j]), 0.0)
            union = area1 + area2[j] - inter
            row[j] = inter / union if union > 0.0 else 0.0


def _check_pair(boxes1, boxes2) -> None:
    check_boxes(boxes1, "boxes1", ndim=2)
    check_boxes(boxes2, "boxes2", ndim=2)
    _check_same(boxes1, boxes2, "boxes1", "boxes2")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair, ``[N, 4] x [M, 4] -> [N, M]``, xyxy boxes.

    IoU = |A ∩ B| / |A ∪ B| (the PASCAL VOC overlap criterion, Everingham et al. 2010). Two zero-area
    boxes have union 0; their IoU is defined as 0 here rather than NaN. On CPU float32/float64 tensors
    that need no gradient it runs as one numba loop (single-threaded, no [N, M] temporaries); otherwise
    as differentiable torch ops.
    """
    _check_pair(boxes1, boxes2)
    view1, view2 = as_numpy(boxes1), as_numpy(boxes2)
    needs_grad = torch.is_grad_enabled() and (boxes1.requires_grad or boxes2.requires_grad)
    if view1 is None or needs_grad:             # GPU, half precision, or autograd: plain torch
        inter, union = _intersection_union(boxes1, boxes2)
        return inter / union.clamp(min=torch.finfo(union.dtype).tiny)
    out = np.empty((view1.shape[0], view2.shape[0]), dtype=view1.dtype)          # [N, M]
    _box_iou_kernel(view1, view2, out)
    return torch.from_numpy(out)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of every pair, ``[N, 4] x [M, 4] -> [N, M]`` in [-1, 1] (Rezatofighi et al. 2019, Alg. 1).

    GIoU = IoU - |C \\ (A ∪ B)| / |C|, with C the smallest box enclosing A and B. Unlike IoU it still varies
    (and has a gradient) when the boxes do not overlap, which is why DETR uses it as a loss.
    """
    _check_pair(boxes1, boxes2)
    inter, union = _intersection_union(boxes1, boxes2)
    tiny = torch.finfo(boxes1.dtype).tiny
    iou = inter / union.clamp(min=tiny)
    enclose_w = torch.maximum(boxes1[:, None, 2], boxes2[None, :, 2]) - torch.minimum(boxes1[:, None, 0],
                                                                                      boxes2[None, :, 0])
    enclose_h = torch.maximum(boxes1[:, None, 3], boxes2[None, :, 3]) - torch.minimum(boxes1[:, None, 1],
                                                                                      boxes2[None, :, 1])
    enclose = enclose_w * enclose_h  # [N, M]
    return iou - (enclose - union) / enclose.clamp(min=tiny)


# ---------------------------------------------------------------------------------------------- deltas
def _centre_size(boxes: torch.Tensor):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def _check_broadcast(a, b, name_a: str, name_b: str) -> None:
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"{name_a} {list(a.shape)} and {name_b} {list(b.shape)} do not broadcast") from None


def _check_weights(weights) -> tuple[float, float, float, float]:
    if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"weights must be 4 positive finite numbers (wx, wy, ww, wh), got {weights!r}")
    return tuple(float(w) for w in weights)


def encode_boxes(reference_boxes: torch.Tensor, proposals: torch.Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Regression targets that move ``proposals`` P onto ``reference_boxes`` G (Girshick et al. 2014, App. C).

    t_x = wx (G_x - P_x) / P_w,  t_y = wy (G_y - P_y) / P_h,  t_w = ww log(G_w / P_w),  t_h = wh log(G_h / P_h),
    with (x, y) the box centre. The weights rescale the targets to roughly unit variance (Fast/Faster R-CNN use
    (10, 10, 5, 5) for the detection head). Argument order is torchvision's ``BoxCoder.encode_single``.

    Shapes: ``[..., 4]`` xyxy, broadcastable against each other -> ``[..., 4]`` deltas. Both need positive width
    and height (a log of zero size is not a target).
    """
    wx, wy, ww, wh = _check_weights(weights)
    check_boxes(reference_boxes, "reference_boxes")
    check_boxes(proposals, "proposals")
    _check_same(proposals, reference_boxes, "proposals", "reference_boxes")
    _check_broadcast(proposals, reference_boxes, "proposals", "reference_boxes")
    gx, gy, gw, gh = _centre_size(reference_boxes)
    px, py, pw, ph = _centre_size(proposals)
    for size, name in ((pw, "proposals"), (ph, "proposals"), (gw, "reference_boxes"), (gh, "reference_boxes")):
        if size.numel() and not bool((size > 0).all()):
            raise ValueError(f"{name} must have positive width and height to be encoded as deltas")
    return torch.stack((wx * (gx - px) / pw, wy * (gy - py) / ph,
                        ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=-1)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor,
                 weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> torch.Tensor:
    """Apply ``deltas`` to ``boxes``, the inverse of :func:`encode_boxes` (Girshick et al. 2014, App. C, eq. 1-4).

    Ĝ_x = P_w d_x + P_x,  Ĝ_y = P_h d_y + P_y,  Ĝ_w = P_w exp(d_w),  Ĝ_h = P_h exp(d_h), after dividing the
    deltas by ``weights``. ``d_w, d_h`` are clamped to at most ``scale_clamp`` (log(1000/16) like torchvision)
    so an untrained head cannot overflow exp(). Class-specific deltas: pass ``deltas [N, K, 4]`` with
    ``boxes[:, None, :]``; shapes broadcast. Returns xyxy ``[..., 4]``.
    """
    wx, wy, ww, wh = _check_weights(weights)
    _check_tensor(deltas, "deltas")
    check_boxes(boxes, "boxes")
    _check_same(boxes, deltas, "boxes", "deltas")
    _check_broadcast(boxes, deltas, "boxes", "deltas")
    px, py, pw, ph = _centre_size(boxes)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[..., 3] / wh).clamp(max=scale_clamp)
    cx, cy = px + dx * pw, py + dy * ph
    w, h = pw * torch.exp(dw), ph * torch.exp(dh)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


@dataclass(frozen=True)
class BoxCoder:
    """The weights and clamp of one regression head, bundled (torchvision's ``BoxCoder`` interface)."""

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP

    def encode(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        return encode_boxes(reference_boxes, proposals, self.weights)

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return decode_boxes(deltas, boxes, self.weights, self.scale_clamp)
