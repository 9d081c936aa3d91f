"""Anchor boxes: Faster R-CNN's grids of scales x aspect ratios, and YOLOv2's k-means priors.

Anchors are reference boxes that a detection head regresses from (with the deltas of ``scenekit.boxes``).
Faster R-CNN places the same A = |sizes| x |ratios| boxes at every feature-map position (Ren et al. 2015,
sec. 3.1.1); YOLOv2 instead learns its k priors' shapes by clustering the training boxes with an IoU-based
distance (Redmon & Farhadi 2017, sec. "Dimension Clusters").
"""

from __future__ import annotations

import math

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------- grids
def _positive_numbers(values, name: str) -> list[float]:
    values = list(values) if not isinstance(values, (int, float)) else [values]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                             for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive finite numbers, got {values!r}")
    return [float(v) for v in values]


def cell_anchors(sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), dtype=torch.float32) -> torch.Tensor:
    """The A = len(ratios) * len(sizes) anchors of one position, centred on (0, 0), xyxy -> ``[A, 4]``.

    An anchor of size s and aspect ratio r = height / width has area s^2: w = s / sqrt(r), h = s * sqrt(r)
    (Ren et al. 2015, sec. 3.1.1; 3 sizes x 3 ratios = 9 anchors). Order: ratio-major, size-minor, the order
    of the original py-faster-rcnn ``generate_anchors`` and of torchvision. Unlike those, coordinates are
    not rounded to integers.
    """
    sizes = torch.tensor(_positive_numbers(sizes, "sizes"), dtype=torch.float64)
    ratios = torch.tensor(_positive_numbers(ratios, "ratios"), dtype=torch.float64)
    h_factor = ratios.sqrt()                                      # [R]
    widths = (sizes[None, :] / h_factor[:, None]).reshape(-1)     # [R, S] -> [A]
    heights = (sizes[None, :] * h_factor[:, None]).reshape(-1)
    return (torch.stack((-widths, -heights, widths, heights), dim=1) / 2).to(dtype)


def anchors_for_feature_map(feature_size: tuple[int, int], stride: float | tuple[float, float],
                            sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), *, center_offset: float = 0.5,
                            dtype=torch.float32) -> torch.Tensor:
    """All anchors of an ``(H, W)`` feature map with the given stride, in image pixels -> ``[H * W * A, 4]`` xyxy.

    Position (y, x) of the feature map is centred at image point ((x + center_offset) * stride_x,
    (y + center_offset) * stride_y); 0.5 puts anchors at the centre of each stride x stride cell, 0.0
    reproduces torchvision's ``AnchorGenerator``. ``stride`` is one number or (stride_y, stride_x).

    Order is position-major, anchor-minor: row ``(y * W + x) * A + a`` is anchor a (see :func:`cell_anchors`)
    at (y, x). That is the layout of a conv head's ``[B, A * 4, H, W]`` output after
    ``.permute(0, 2, 3, 1).reshape(B, H * W * A, 4)`` (and ``[B, A, H, W]`` objectness after
    ``.permute(0, 2, 3, 1).reshape(B, -1)``).
    """
    if len(feature_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                         for v in feature_size):
        raise ValueError(f"feature_size must be (height, width) non-negative ints, got {feature_size!r}")
    strides = _positive_numbers(stride, "stride")
    if len(strides) == 1:
        strides = strides * 2
    if len(strides) != 2:
        raise ValueError(f"stride must be one number or (stride_y, stride_x), got {stride!r}")
    if not (isinstance(center_offset, (int, float)) and math.isfinite(center_offset)):
        raise ValueError(f"center_offset must be a finite number, got {center_offset!r}")
    height, width = feature_size
    stride_y, stride_x = strides
    base = cell_anchors(sizes, ratios, torch.float64)                               # [A, 4]
    ys = (torch.arange(height, dtype=torch.float64) + center_offset) * stride_y     # [H]
    xs = (torch.arange(width, dtype=torch.float64) + center_offset) * stride_x      # [W]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")                                  # [H, W] each
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)              # [H*W, 1, 4]
    return (centres + base[None]).reshape(-1, 4).to(dtype)                          # [H*W*A, 4]


# ---------------------------------------------------------------------------------------------- k-means
def _check_wh(wh, name: str = "wh") -> None:
    if not isinstance(wh, torch.Tensor) or not wh.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {getattr(wh, 'dtype', type(wh).__name__)}")
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2] (width, height), got {list(wh.shape)}")
    if not bool(torch.isfinite(wh).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not bool((wh > 0).all()):
        raise ValueError(f"{name} must have positive widths and heights")


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes given only by (w, h), all aligned at one common centre: ``[N, 2] x [K, 2] -> [N, K]``.

    This is YOLOv2's IoU(box, centroid) for clustering: only shape matters, not position.
    """
    _check_wh(wh1, "wh1")
    _check_wh(wh2, "wh2")
    if wh1.dtype != wh2.dtype or wh1.device != wh2.device:
        raise ValueError(f"wh2 ({wh2.dtype}, {wh2.device}) must match wh1 ({wh1.dtype}, {wh1.device})")
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    area1 = wh1[:, 0] * wh1[:, 1]
    area2 = wh2[:, 0] * wh2[:, 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def anchor_mean_iou(wh: torch.Tensor, anchors: torch.Tensor) -> float:
    """Mean over boxes of the IoU with their best anchor: YOLOv2's "Avg IOU" (Redmon & Farhadi 2017, Table 1)."""
    _check_wh(wh)
    if wh.shape[0] == 0:
        raise ValueError("wh must contain at least one box to average over")
    return float(wh_iou(wh, anchors).max(dim=1).values.mean())


def kmeans_anchors(wh: torch.Tensor, k: int = 5, seed: int = 0, max_iter: int = 300) -> torch.Tensor:
    """Anchor priors by k-means on box shapes with d(box, centroid) = 1 - IoU(box, centroid) -> ``[k, 2]``.

    Redmon & Farhadi 2017, sec. "Dimension Clusters": Euclidean k-means on (w, h) lets large boxes dominate
    the error, so the distance is 1 - IoU of the two shapes placed at a common centre (:func:`wh_iou`).
    Lloyd iterations: assign each box to its nearest centroid, move each centroid to the mean (w, h) of its
    boxes, until the assignment stops changing or ``max_iter`` iterations.

    Initialisation is k-means++ (Arthur & Vassilvitskii 2007) under the same distance, drawn with a
    ``numpy`` generator seeded by ``seed``, so the result is deterministic for a given seed. A centroid that
    loses all its boxes is moved to the box farthest from its own centroid. Returned sorted by area
    (smallest first), in ``wh``'s dtype; :func:`anchor_mean_iou` gives their average IoU with the data.
    """
    _check_wh(wh)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > wh.shape[0]:
        raise ValueError(f"k = {k} clusters need at least {k} boxes in wh, got {wh.shape[0]}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    data = wh.detach().to("cpu", torch.float64)
    rng = np.random.default_rng(seed)
    n = data.shape[0]

    # k-means++: each next centroid is a box drawn with probability proportional to d^2 to its nearest centroid.
    chosen = [int(rng.integers(n))]
    nearest = 1.0 - wh_iou(data, data[chosen[-1]][None])[:, 0]      # [N] distance to the nearest centroid
    for _ in range(1, k):
        weights = (nearest.clamp(min=0) ** 2).numpy()
        total = weights.sum()
        # All boxes coincide with a centroid (fewer distinct shapes than k): pick any box not chosen yet.
        pick = int(rng.choice(n, p=weights / total)) if total > 0 else \
            int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        chosen.append(pick)
        nearest = torch.minimum(nearest, 1.0 - wh_iou(data, data[pick][None])[:, 0])
    centroids = data[chosen].clone()                                 # [k, 2]

    assignment = None
    for _ in range(max_iter):
        distance = 1.0 - wh_iou(data, centroids)                     # [N, k]
        new_assignment = distance.argmin(dim=1)                      # [N]
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for c in range(k):
            members = assignment == c
            if bool(members.any()):
                centroids[c] = data[members].mean(dim=0)
            else:
                far = int(distance.gather(1, assignment[:, None])[:, 0].argmax())
                centroids[c] = data[far]
                assignment[far] = c
    order = torch.argsort(centroids[:, 0] * centroids[:, 1], stable=True)
    return centroids[order].to(wh.dtype)
