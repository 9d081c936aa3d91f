"""Turning many overlapping detections into one per object: greedy NMS, class-aware NMS, Overfeat's merge.

Greedy non-maximum suppression, as every detector since Felzenszwalb et al. 2010 (DPM) and R-CNN
(Girshick et al. 2014, sec. 2.2) uses it:

1. drop the boxes whose score is below a score threshold;
2. pick the highest-scoring remaining box (it is kept);
3. discard the remaining boxes whose IoU with it is greater than the IoU threshold;
4. repeat from 2 until no box remains.

Semantics follow torchvision's ``nms``: IoU with continuous coordinates (width = x2 - x1, no "+1"), a box is
suppressed when IoU > threshold (strictly), and the kept indices come back sorted by decreasing score. Equal
scores are ordered by index (a stable sort), as OpenCV's ``cv2.dnn.NMSBoxes`` does.

The suppression loop runs in numba (compiled lazily on first call and cached on disk, ``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from scenekit.boxes import _check_same, as_numpy, check_boxes


# ---------------------------------------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True)
def _suppress_segments(x1, y1, x2, y2, seg_starts, iou_threshold, max_output, cell):  # pragma: no cover
    """Greedy NMS inside each segment ``[seg_starts[s], seg_starts[s + 1])`` of score-sorted boxes.

    Returns a boolean keep mask over the sorted positions; ``max_output >= 0`` stops after that many kept
    boxes (only meaningful with one segment). Needs ``iou_threshold >= 0``.

    Steps 2-4 visit boxes in score order; a box is kept iff no already-kept box overlaps it with IoU > t
    (exactly the boxes that the seed's "pick, then discard" passes leave). Only kept boxes that can overlap
    the box at all are tested: kept boxes are filed in a uniform grid of ``cell``-sized squares (every cell
    a box touches lists it), and two boxes with a positive intersection share at least one cell. With
    clustered detections this tests a handful of neighbours per box instead of every kept box.
    """
    n = x1.shape[0]
    area = (x2 - x1) * (y2 - y1)
    keep = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return keep
    ox, oy = x1.min(), y1.min()
    # Cell ranges [cx0, cx1] x [cy0, cy1] of every box; floor() is monotone, so overlaps map to shared cells.
    cx0 = np.floor((x1 - ox) / cell).astype(np.int64)
    cx1 = np.floor((x2 - ox) / cell).astype(np.int64)
    cy0 = np.floor((y1 - oy) / cell).astype(np.int64)
    cy1 = np.floor((y2 - oy) / cell).astype(np.int64)
    grid_w, grid_h = cx1.max() + 1, cy1.max() + 1
    # Each cell owns a fixed slot range big enough for every box touching it, so its kept boxes sit
    # contiguously (coordinates copied in) and are scanned without pointer chasing, oldest (best) first.
    cell_start = np.zeros(grid_w * grid_h + 1, dtype=np.int64)
    for i in range(n):
        for gy in range(cy0[i], cy1[i] + 1):
            for gx in range(cx0[i], cx1[i] + 1):
                cell_start[gy * grid_w + gx + 1] += 1
    for g in range(grid_w * grid_h):
        cell_start[g + 1] += cell_start[g]
    slots = np.empty((cell_start[-1], 5))                       # kept boxes: x1, y1, x2, y2, area
    cell_used = np.zeros(grid_w * grid_h, dtype=np.int64)
    cell_segment = np.full(grid_w * grid_h, -1, dtype=np.int64)  # a cell filled in another segment is empty
    kept = 0
    for s in range(seg_starts.shape[0] - 1):
        for i in range(seg_starts[s], seg_starts[s + 1]):     # score order within the segment
            ix1, iy1, ix2, iy2, iarea = x1[i], y1[i], x2[i], y2[i], area[i]
            suppressed = False
            for gy in range(cy0[i], cy1[i] + 1):
                for gx in range(cx0[i], cx1[i] + 1):
                    g = gy * grid_w + gx
                    if cell_segment[g] != s:
                        continue
                    for e in range(cell_start[g], cell_start[g] + cell_used[g]):
                        w = min(ix2, slots[e, 2]) - max(ix1, slots[e, 0])
                        h = min(iy2, slots[e, 3]) - max(iy1, slots[e, 1])
                        if w > 0.0 and h > 0.0:
                            inter = w * h
                            if inter / (iarea + slots[e, 4] - inter) > iou_threshold:
                                suppressed = True
                                break
                    if suppressed:
                        break
                if suppressed:
                    break
            if suppressed:
                continue
            keep[i] = True
            kept += 1
            if kept == max_output:
                return keep
            for gy in range(cy0[i], cy1[i] + 1):
                for gx in range(cx0[i], cx1[i] + 1):
                    g = gy * grid_w + gx
                    if cell_segment[g] != s:
                        cell_segment[g] = s
                        cell_used[g] = 0
                    e = cell_start[g] + cell_used[g]
                    slots[e, 0], slots[e, 1], slots[e, 2], slots[e, 3], slots[e, 4] = ix1, iy1, ix2, iy2, iarea
                    cell_used[g] += 1
    return keep


@numba.njit(cache=True, nogil=True)
def _match_score(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):  # pragma: no cover - numba
    """Overfeat-style match score of two boxes: normalised centre distance + (1 - IoU); 0 for identical boxes."""
    # Centres first, then differences: keeps the score exactly symmetric in (a, b) under rounding.
    dx = 0.5 * (ax1 + ax2) - 0.5 * (bx1 + bx2)
    dy = 0.5 * (ay1 + ay2) - 0.5 * (by1 + by2)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    scale = 0.5 * (np.sqrt(wa * wa + ha * ha) + np.sqrt(wb * wb + hb * hb))   # mean diagonal
    dist = np.sqrt(dx * dx + dy * dy)
    dist = dist / scale if scale > 0.0 else (0.0 if dist == 0.0 else np.inf)
    w = min(ax2, bx2) - max(ax1, bx1)
    h = min(ay2, by2) - max(ay1, by1)
    inter = w * h if (w > 0.0 and h > 0.0) else 0.0
    union = wa * ha + wb * hb - inter
    iou = inter / union if union > 0.0 else 0.0
    return dist + (1.0 - iou)


@numba.njit(cache=True, nogil=True)
def _best_partner(c, active, i):  # pragma: no cover - numba
    best, partner = np.inf, -1
    for k in range(c.shape[0]):
        if active[k] and k != i:
            m = _match_score(c[i, 0], c[i, 1], c[i, 2], c[i, 3], c[k, 0], c[k, 1], c[k, 2], c[k, 3])
            if m < best:
                best, partner = m, k
    return best, partner


@numba.njit(cache=True, nogil=True)
def _greedy_merge_kernel(boxes, scores, threshold, weighted):  # pragma: no cover - numba
    """Overfeat's merge loop; returns ``group[n]``: the index of the surviving box each input was merged into.

    Each box's best partner and match score are cached; after a merge only the rows that pointed at one of
    the two merged boxes are rescanned, and every other row just compares against the new box.
    """
    n = boxes.shape[0]
    c = boxes.copy()                       # current coordinates: weighted mean of the members
    weight = scores.copy() if weighted else np.ones(n)
    group = np.arange(n)
    active = np.ones(n, dtype=np.bool_)
    best = np.empty(n)
    partner = np.empty(n, dtype=np.int64)
    for i in range(n):
        best[i], partner[i] = _best_partner(c, active, i)
    for _ in range(n - 1):
        i = -1
        for k in range(n):                 # step 5: the closest pair overall
            if active[k] and (i < 0 or best[k] < best[i]):
                i = k
        if partner[i] < 0 or best[i] > threshold:
            break                          # step 6: the closest pair is too far apart: done
        j = partner[i]
        lo, hi = min(i, j), max(i, j)      # the merged box keeps the lower index (deterministic)
        w_lo, w_hi = weight[lo], weight[hi]
        total = w_lo + w_hi
        for d in range(4):                 # step 7: replace the pair by its (weighted) mean
            if total > 0.0:
                c[lo, d] = (w_lo * c[lo, d] + w_hi * c[hi, d]) / total
            else:
                c[lo, d] = 0.5 * (c[lo, d] + c[hi, d])
        weight[lo] = total
        active[hi] = False
        for k in range(n):
            if group[k] == hi:
                group[k] = lo
        best[lo], partner[lo] = _best_partner(c, active, lo)
        for k in range(n):
            if not active[k] or k == lo:
                continue
            if partner[k] == lo or partner[k] == hi:
                best[k], partner[k] = _best_partner(c, active, k)
            else:
                m = _match_score(c[k, 0], c[k, 1], c[k, 2], c[k, 3], c[lo, 0], c[lo, 1], c[lo, 2], c[lo, 3])
                if m < best[k]:
                    best[k], partner[k] = m, lo
    return group, c


# ---------------------------------------------------------------------------------------------- inputs
def _check_scores(boxes, scores) -> None:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point torch.Tensor, got "
                         f"{getattr(scores, 'dtype', type(scores).__name__)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape [N] = [{boxes.shape[0]}] to match boxes, got {list(scores.shape)}")
    _check_same(boxes, scores, "boxes", "scores")
    view = as_numpy(scores)
    if not (bool(np.isfinite(view).all()) if view is not None else bool(torch.isfinite(scores).all())):
        raise ValueError("scores contains NaN or infinite values")


def _check_threshold(value, name: str, *, optional: bool = False, unit: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if unit and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (an IoU), got {value!r}")


def _check_max_output(max_output) -> None:
    if max_output is not None and (isinstance(max_output, bool) or not isinstance(max_output, int)
                                   or max_output < 0):
        raise ValueError(f"max_output must be None or a non-negative int, got {max_output!r}")


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """float64 numpy copy (or view) of a tensor; numpy converts CPU tensors without a torch parallel region."""
    view = as_numpy(x)
    return np.asarray(view, dtype=np.float64) if view is not None else x.detach().to("cpu", torch.float64).numpy()


def _score_order(scores: np.ndarray, score_threshold) -> np.ndarray:
    """Indices of the boxes at or above ``score_threshold`` by decreasing score, ties by index (step 1 + sort)."""
    candidates = np.arange(scores.shape[0]) if score_threshold is None \
        else np.flatnonzero(scores >= score_threshold)
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def _sorted_coordinates(boxes: np.ndarray, order: np.ndarray):
    # Contiguous per-coordinate arrays in score order: the kernel streams through them.
    return tuple(np.ascontiguousarray(boxes[order, d]) for d in range(4))


SMALL_NMS = 128          # up to this many boxes the kernel's grid is a single cell


def _grid_cell(x1, y1, x2, y2) -> float:
    """Side of the kernel's grid cells: about a typical box, so most boxes touch at most 4 cells.

    At most 512 cells per axis, and doubled until all boxes together touch at most 16 cells each on
    average, so a few huge boxes cannot blow up the grid's memory.
    """
    extent = max(x2.max() - x1.min(), y2.max() - y1.min())
    if x1.size <= SMALL_NMS:
        # A handful of boxes (a one-stage detector's candidates for one image): one cell holding them all,
        # i.e. plain pairwise tests, is cheaper than sizing a grid (a median and a loop of array passes).
        return max(float(extent), 1.0)
    cell = max(float(np.median(np.maximum(x2 - x1, y2 - y1))), extent / 512, 1e-12 * max(extent, 1.0))
    if not cell > 0:
        return 1.0
    while True:
        touched = (np.floor((x2 - x1.min()) / cell) - np.floor((x1 - x1.min()) / cell) + 1) \
            * (np.floor((y2 - y1.min()) / cell) - np.floor((y1 - y1.min()) / cell) + 1)
        if touched.sum() <= 16 * x1.size:
            return cell
        cell *= 2


# ---------------------------------------------------------------------------------------------- public API
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, *,
        score_threshold: float | None = None, max_output: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression -> int64 indices of the kept boxes, by decreasing score.

    ``boxes [N, 4]`` xyxy, ``scores [N]`` (same dtype and device). A box is suppressed when its IoU with a
    higher-scoring kept box is > ``iou_threshold``. Boxes scoring below ``score_threshold`` are dropped first
    (step 1; ``None`` keeps all), and ``max_output`` stops after that many kept boxes (``None``: no limit) --
    the same result as truncating the full output, computed faster.
    """
    check_boxes(boxes, "boxes", ndim=2)
    _check_scores(boxes, scores)
    _check_threshold(iou_threshold, "iou_threshold", unit=True)
    _check_threshold(score_threshold, "score_threshold", optional=True)
    _check_max_output(max_output)
    scores_np = _to_numpy(scores)
    order = _score_order(scores_np, score_threshold)
    if order.size == 0 or max_output == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = _sorted_coordinates(_to_numpy(boxes), order)
    seg_starts = np.array([0, order.size], dtype=np.int64)
    keep = _suppress_segments(x1, y1, x2, y2, seg_starts, float(iou_threshold),
                              -1 if max_output is None else max_output, _grid_cell(x1, y1, x2, y2))
    return torch.from_numpy(order[keep]).to(boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, *,
                score_threshold: float | None = None, max_output: int | None = None) -> torch.Tensor:
    """Class-aware NMS: greedy NMS run independently per value of ``idxs [N]`` (class or image id).

    A box is never suppressed by a box of another ``idxs`` value. Returns int64 indices of the kept boxes of
    all groups together, sorted by decreasing score (ties by index). Instead of torchvision's trick of
    offsetting each class's coordinates (which perturbs IoU by float rounding), the boxes are grouped by
    class and each group is suppressed on its own, which also makes every pass scan only its own class.
    """
    check_boxes(boxes, "boxes", ndim=2)
    _check_scores(boxes, scores)
    if not isinstance(idxs, torch.Tensor) or idxs.is_floating_point() or idxs.is_complex() \
            or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must be an integer torch.Tensor, got {getattr(idxs, 'dtype', type(idxs).__name__)}")
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"idxs must have shape [N] = [{boxes.shape[0]}] to match boxes, got {list(idxs.shape)}")
    if idxs.device != boxes.device:
        raise ValueError(f"idxs is on {idxs.device} but boxes is on {boxes.device}; they must match")
    _check_threshold(iou_threshold, "iou_threshold", unit=True)
    _check_threshold(score_threshold, "score_threshold", optional=True)
    _check_max_output(max_output)
    if max_output == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = batched_nms_numpy(_to_numpy(boxes), _to_numpy(scores), idxs.detach().cpu().numpy(), iou_threshold,
                             score_threshold=score_threshold)
    if max_output is not None:
        kept = kept[:max_output]
    return torch.from_numpy(kept).to(boxes.device)


def batched_nms_numpy(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float, *,
                      score_threshold: float | None = None) -> np.ndarray:
    """`batched_nms` on numpy arrays that are already checked: float64 ``boxes [N, 4]`` xyxy, ``scores [N]``,
    integer ``idxs [N]``. Returns the kept indices (int64) by decreasing score, ties by index.

    For callers that hold numpy arrays already (a detector's post-processing), without the checks and the
    tensor round trips, which are most of the cost on a few dozen boxes.
    """
    order = _score_order(scores, score_threshold)               # global score order
    if order.size == 0:
        return order.astype(np.int64)
    classes = idxs[order]
    by_class = np.argsort(classes, kind="stable")              # grouped by class, by score within a class
    grouped = order[by_class]
    class_sorted = classes[by_class]
    seg_starts = np.concatenate(([0], np.flatnonzero(np.diff(class_sorted)) + 1, [grouped.size])).astype(np.int64)
    x1, y1, x2, y2 = _sorted_coordinates(boxes, grouped)
    keep = _suppress_segments(x1, y1, x2, y2, seg_starts, float(iou_threshold), -1,
                              _grid_cell(x1, y1, x2, y2))
    kept_rank = np.sort(by_class[keep])                        # back to global score order
    return order[kept_rank].astype(np.int64)


def greedy_merge(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, *,
                 weighted: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overfeat's greedy merge of bounding boxes (Sermanet et al. 2013, sec. 4.3, steps 4-7).

    Repeat: find the pair of boxes with the lowest match score (step 5); if that score is > ``threshold``
    stop (step 6); otherwise replace the pair by their merge (step 7).

    The paper defines the match score as "the sum of the distance between centers of the two bounding boxes
    and the intersection area of the boxes" without units or sign. Here, so that it is scale-free and
    smaller for better matches::

        match(a, b) = ||centre_a - centre_b|| / mean(diagonal_a, diagonal_b) + (1 - IoU(a, b))

    which is 0 for identical boxes, ~1 for touching boxes of equal size and grows with distance; thresholds
    around 0.5-1.0 are sensible. The merged box is the mean of the coordinates of *all* boxes merged into it
    (the paper averages pairs; tracking member weights makes the result independent of merge order), weighted
    by score if ``weighted``. Run it per class, as the paper does.

    Returns ``(merged_boxes [K, 4], merged_scores [K], groups [N])``, sorted by decreasing merged score, where
    a merged score is the mean score of its members and ``groups[i]`` is the merged row box i went into.
    Overfeat accumulates evidence; a sum of member scores is ``merged_scores * groups.bincount()``.
    """
    check_boxes(boxes, "boxes", ndim=2)
    _check_scores(boxes, scores)
    _check_threshold(threshold, "threshold")
    if weighted and bool((_to_numpy(scores) < 0).any()):
        raise ValueError("scores must be non-negative when weighted=True (they are used as weights)")
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), torch.zeros(0, dtype=torch.int64,
                                                                           device=boxes.device)
    scores_np = _to_numpy(scores)
    group, coords = _greedy_merge_kernel(np.ascontiguousarray(_to_numpy(boxes)), scores_np, float(threshold),
                                         bool(weighted))
    roots, inverse = np.unique(group, return_inverse=True)                      # roots: surviving rows
    merged_scores = np.bincount(inverse, weights=scores_np) / np.bincount(inverse)
    rank = np.argsort(-merged_scores, kind="stable")
    position = np.empty_like(rank)
    position[rank] = np.arange(rank.size)
    out_boxes = torch.from_numpy(coords[roots[rank]]).to(boxes.device, boxes.dtype)
    out_scores = torch.from_numpy(merged_scores[rank]).to(boxes.device, scores.dtype)
    return out_boxes, out_scores, torch.from_numpy(position[inverse]).to(boxes.device)
