"""Region-of-interest feature extraction: RoI max-pooling (Fast R-CNN) and RoIAlign (Mask R-CNN).

Both ops turn a feature map ``input [B, C, H, W]`` and ``K`` regions into fixed-size features
``[K, C, oh, ow]`` that a fully connected head can consume, whatever the regions' sizes.

- ``roi_pool``: Girshick 2015, sec. 2.1. The region is snapped to the feature grid, split into an
  ``oh x ow`` grid of sub-windows of about ``h/oh x w/ow`` cells, and each sub-window is max-pooled.
- ``roi_align``: He et al. 2017, sec. 3. No snapping: each bin is sampled at regularly spaced points
  by bilinear interpolation and the samples are averaged.

Regions are given as torchvision gives them: a ``[K, 5]`` tensor of rows ``(batch index, x1, y1, x2, y2)``
or a list of ``[Ni, 4]`` tensors, one per image, in input-image coordinates; ``spatial_scale`` maps them
onto the feature map (1/16 for a stride-16 backbone). The rounding and boundary rules are those of
torchvision's CPU kernels (which follow the Caffe / Detectron code), so the features match torchvision's:
exactly for max-pooling, up to float rounding for RoIAlign.

Implementation, vectorised over RoIs, bins and channels:

- RoIAlign is linear in the features, and its sampling grid is a product of y positions and x positions,
  so each bin's weights over the map factor into (weights over rows) x (weights over columns). We build
  these per-axis weights for all RoIs at once, multiply them into one sparse matrix ``A`` of shape
  ``[K*oh*ow, B*H*W]``, and compute ``output = A @ features``; the backward pass is ``A^T @ grad``,
  the exact adjoint of bilinear sampling.
- RoI max-pooling groups the bins of all RoIs by the size of their window, gathers each group's windows
  (channels last) and lets ``max_pool2d`` take every window's max and argmax in one call per group; the
  backward pass adds each output gradient into its argmax cell, as Fast R-CNN's eq. (4) says.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["roi_pool", "roi_align", "RoIPool", "RoIAlign"]


# ---------------------------------------------------------------------------------------------- validation
def _check_input(input) -> None:
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must have shape [B, C, H, W], got {list(input.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"input must be float32 or float64, got {input.dtype}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"input must have a non-empty spatial size, got {list(input.shape)}")


def _output_size(output_size) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(7, 5) -> (7, 5)``; anything else (or a size < 1) is a ValueError."""
    if _is_int(output_size):
        size = (int(output_size), int(output_size))
    elif isinstance(output_size, Sequence) and len(output_size) == 2 and all(map(_is_int, output_size)):
        size = (int(output_size[0]), int(output_size[1]))
    else:
        raise ValueError(f"output_size must be an int or a pair of ints (h, w), got {output_size!r}")
    if min(size) < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return size


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_scale(spatial_scale) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real) \
            or not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    return float(spatial_scale)


def _rois(boxes, input: Tensor) -> Tensor:
    """Validate ``boxes`` and return them as one ``[K, 5]`` tensor ``(batch index, x1, y1, x2, y2)``."""
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            name = f"boxes[{i}]"
            if not isinstance(b, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {list(b.shape)}")
            _check_same_kind(b, input, name)
            index = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
            parts.append(torch.cat([index, b], dim=1))  # [Ni, 4] -> [Ni, 5]
        rois = (torch.cat(parts, dim=0) if parts
                else torch.zeros(0, 5, dtype=input.dtype, device=input.device))
        name = "boxes"
    elif isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError("boxes must be a [K, 5] tensor (batch index, x1, y1, x2, y2) or a list of "
                             f"[N, 4] tensors, got a tensor of shape {list(boxes.shape)}")
        _check_same_kind(boxes, input, "boxes")
        rois, name = boxes, "boxes"
    else:
        raise ValueError("boxes must be a [K, 5] tensor or a list of [N, 4] tensors, "
                         f"got {type(boxes).__name__}")

    rois = rois.detach()  # no gradient flows to box coordinates (as in torchvision)
    if rois.shape[0] == 0:
        return rois
    if not bool(torch.isfinite(rois).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    index = rois[:, 0]
    if bool((index != index.round()).any()):
        raise ValueError(f"{name}: batch index (column 0) must hold integers, got {index.tolist()[:8]}")
    if bool(((index < 0) | (index >= input.shape[0])).any()):
        bad = index[(index < 0) | (index >= input.shape[0])][0].item()
        raise ValueError(f"{name}: batch index {bad:g} is out of range for an input of batch size "
                         f"{input.shape[0]}")
    bad = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise ValueError(f"{name} has a box with x2 < x1 or y2 < y1 at row {k}: {rois[k, 1:].tolist()}")
    return rois


def _check_same_kind(boxes: Tensor, input: Tensor, name: str) -> None:
    if boxes.dtype != input.dtype:
        raise ValueError(f"{name} must have the same dtype as input ({input.dtype}), got {boxes.dtype}")
    if boxes.device != input.device:
        raise ValueError(f"{name} must be on the same device as input ({input.device}), got {boxes.device}")


# ---------------------------------------------------------------------------------------------- RoIAlign
def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int):
    """Bilinear weights of RoIAlign's sampling points along one axis (rows or columns).

    For RoI k and bin p, the samples sit at ``start + p*bin_size + (i + 0.5) * bin_size / grid`` for
    ``i < grid`` (He et al. 2017, sec. 3: regularly spaced points in each bin). Each sample spreads weight
    ``1 - f`` / ``f`` over the two cells around it, with torchvision's boundary rules: a sample beyond
    ``[-1, size]`` counts zero; one in ``[-1, 0]`` is moved to 0; one past ``size - 1`` reads the last cell.

    Returns ``first [K, bins]`` (the first cell a bin touches) and ``weights [K, bins, L]``: the summed
    weight of the bin's samples on cells ``first, first + 1, ..., first + L - 1`` (not yet divided by the
    sample count).
    """
    K, device = start.shape[0], start.device
    max_grid = max(int(grid.max()), 1)
    p = torch.arange(bins, device=device, dtype=start.dtype)
    i = torch.arange(max_grid, device=device, dtype=start.dtype)
    grid_div = grid.clamp(min=1).to(start.dtype)                                      # [K]
    # The same order of operations as torchvision's kernel, so the floats agree to the last bit.
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
           + (i[None, None, :] + 0.5) * bin_size[:, None, None] / grid_div[:, None, None])  # [K, bins, G]
    used = (i[None, None, :] < grid[:, None, None]) & (pos >= -1) & (pos <= size)

    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    w_low = (1 - frac) * used
    w_high = frac * used

    # Samples are ordered along the axis, so a bin's cells run from its first used sample's low cell to its
    # last used sample's high cell.
    big = torch.iinfo(torch.long).max
    first = torch.where(used, low, big).amin(dim=2)
    first = torch.where(first == big, 0, first)                                       # [K, bins]
    last = torch.where(used, high, -1).amax(dim=2)
    length = max(int((last - first).max()) + 1, 1)

    weights = torch.zeros(K, bins, length, dtype=start.dtype, device=device)
    weights.scatter_add_(2, (low - first[..., None]).clamp(0, length - 1), w_low)
    weights.scatter_add_(2, (high - first[..., None]).clamp(0, length - 1), w_high)
    return first, weights


def _roi_align_matrix(rois: Tensor, shape: torch.Size, output_size: tuple[int, int], spatial_scale: float,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """The sparse ``[K*oh*ow, B*H*W]`` matrix ``A`` with ``roi_align(...) = A @ features``."""
    B, _, H, W = shape
    oh, ow = output_size
    if rois.shape[0] == 0:
        return _sparse_csr(torch.zeros(1, dtype=torch.long, device=rois.device),
                           torch.zeros(0, dtype=torch.long, device=rois.device), rois.new_zeros(0), (0, B * H * W))
    offset = 0.5 if aligned else 0.0  # aligned=True: pixel centres sit at +0.5, so shift by half a pixel
    x1, y1, x2, y2 = (rois[:, j] * spatial_scale - offset for j in (1, 2, 3, 4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the original Mask R-CNN code forces malformed RoIs to be at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / oh, roi_w / ow
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:  # adaptive: about one sample per feature cell, ceil(roi_size / output_size) per bin and axis
        grid_h, grid_w = torch.ceil(bin_h).long(), torch.ceil(bin_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)                            # [K]

    first_y, wy = _axis_weights(y1, bin_h, grid_h, oh, H)   # [K, oh], [K, oh, Ly]
    first_x, wx = _axis_weights(x1, bin_w, grid_w, ow, W)   # [K, ow], [K, ow, Lx]
    batch = rois[:, 0].long()

    # Weight of cell (first_y + j, first_x + i) in bin (ph, pw): the outer product of the axis weights.
    # Built for a chunk of RoIs at a time, trimmed to the chunk's largest window, to bound the memory that
    # a few large RoIs would otherwise claim for every RoI.
    chunk = max(1, _MATRIX_CHUNK // (oh * ow * wy.shape[2] * wx.shape[2]))
    per_row, cols, values = [], [], []
    for k in torch.arange(rois.shape[0], device=rois.device).split(chunk):
        wy_k, wx_k = _trim(wy[k]), _trim(wx[k])                                          # [k, oh, Ly], [k, ow, Lx]
        Ly, Lx = wy_k.shape[2], wx_k.shape[2]
        value = wy_k[:, :, None, :, None] * wx_k[:, None, :, None, :] / count[k, None, None, None, None]
        row = first_y[k][:, :, None, None, None] + torch.arange(Ly, device=rois.device)[:, None]
        col = first_x[k][:, None, :, None, None] + torch.arange(Lx, device=rois.device)
        cell = (batch[k, None, None, None, None] * H + row) * W + col                    # [k, oh, ow, Ly, Lx]
        keep = value != 0  # cells no sample reaches (window padding) carry zero weight: leave them out
        per_row.append(keep.view(-1, Ly * Lx).sum(dim=1))
        cols.append(cell.expand_as(value)[keep])
        values.append(value[keep])

    per_row = torch.cat(per_row)                                                          # [K*oh*ow]
    crow = torch.zeros(per_row.numel() + 1, dtype=torch.long, device=rois.device)
    torch.cumsum(per_row, dim=0, out=crow[1:])
    # Row-major order of [K, oh, ow, Ly, Lx] lists each output row's cells with increasing column index,
    # which is exactly the CSR layout, so no sorting is needed.
    return _sparse_csr(crow, torch.cat(cols), torch.cat(values), (rois.shape[0] * oh * ow, B * H * W))


# Entries (bins x window cells) of RoIAlign's matrix built at once.
_MATRIX_CHUNK = 1 << 22


def _trim(weights: Tensor) -> Tensor:
    """Drop the trailing window cells that no bin in ``weights [k, bins, L]`` reaches."""
    reached = weights.ne(0).any(dim=1) * torch.arange(1, weights.shape[2] + 1, device=weights.device)
    return weights[:, :, :max(int(reached.max()), 1)]


def _sparse_csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _SparseLinearMap(torch.autograd.Function):
    """``output = matrix @ features`` for a constant sparse ``matrix``; the backward is ``matrix^T @ grad``."""

    @staticmethod
    def forward(ctx, matrix: Tensor, features: Tensor) -> Tensor:   # [M, N] @ [N, C] -> [M, C]
        ctx.matrix = matrix
        return matrix @ features

    @staticmethod
    def backward(ctx, grad: Tensor):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            transposed = ctx.matrix.t().to_sparse_csr()             # [N, M]
        return None, transposed @ grad.contiguous()                 # [N, M] @ [M, C] -> [N, C]


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """RoIAlign (He et al. 2017, sec. 3): ``[B, C, H, W]`` features and K boxes -> ``[K, C, oh, ow]``.

    Each box is mapped to the feature map by ``spatial_scale`` without rounding and divided into
    ``oh x ow`` bins; each bin is the mean of ``sampling_ratio x sampling_ratio`` bilinearly interpolated
    samples at regularly spaced points (``sampling_ratio <= 0``: ``ceil(bin size)`` samples per axis, chosen
    per box). ``aligned=True`` shifts the box by -0.5 cell so that continuous coordinates line up with
    cell centres (Detectron2's "ROIAlignV2"); ``aligned=False`` reproduces the original Mask R-CNN code,
    which also stretches boxes smaller than one cell to 1x1.

    ``boxes`` is a ``[K, 5]`` tensor ``(batch index, x1, y1, x2, y2)`` or a list of ``[Ni, 4]`` tensors, one
    per image, with the dtype and device of ``input``. The gradient flows to ``input`` only.
    """
    _check_input(input)
    oh, ow = _output_size(output_size)
    spatial_scale = _check_scale(spatial_scale)
    if not _is_int(sampling_ratio):
        raise ValueError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    sampling_ratio = int(sampling_ratio)
    rois = _rois(boxes, input)
    B, C, H, W = input.shape
    # (No shortcut for K = 0: going through the autograd function keeps the empty output in the graph.)
    matrix = _roi_align_matrix(rois, input.shape, (oh, ow), spatial_scale, sampling_ratio, bool(aligned))
    features = input.permute(0, 2, 3, 1).reshape(B * H * W, C)      # [B, C, H, W] -> [B*H*W, C]
    out = _SparseLinearMap.apply(matrix, features)                  # [K*oh*ow, C]
    return out.view(rois.shape[0], oh, ow, C).permute(0, 3, 1, 2).contiguous()  # -> [K, C, oh, ow]


# ---------------------------------------------------------------------------------------------- RoI pooling
def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round()``: halves go away from zero (``torch.round`` sends them to the even neighbour)."""
    whole = x.trunc()
    return whole + ((x - whole).abs() >= 0.5).to(x.dtype) * x.sign()


def _pool_bins(start: Tensor, end: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """Fast R-CNN's sub-windows along one axis: cells ``[lo, hi)`` of each of the ``bins`` bins, ``[K, bins]``.

    The region (already snapped to cells ``start..end`` inclusive) is ``max(end - start + 1, 1)`` cells
    long; bin p covers ``floor(p * len / bins) .. ceil((p + 1) * len / bins)``, clipped to the map.
    """
    length = (end - start + 1).clamp(min=1)                          # [K]
    bin_size = length / bins
    p = torch.arange(bins, device=start.device, dtype=start.dtype)
    lo = torch.floor(p * bin_size[:, None]) + start[:, None]
    hi = torch.ceil((p + 1) * bin_size[:, None]) + start[:, None]
    return lo.clamp(0, size).long(), hi.clamp(0, size).long()


class _RoIMaxPool(torch.autograd.Function):
    """Max over each bin's window; remembers the argmax so that the backward routes gradients to it."""

    @staticmethod
    def forward(ctx, input: Tensor, batch: Tensor, h_lo: Tensor, h_hi: Tensor, w_lo: Tensor,
                w_hi: Tensor) -> Tensor:
        B, C, H, W = input.shape
        K, oh, ow = batch.shape[0], h_lo.shape[1], w_lo.shape[1]
        cells = input.permute(0, 2, 3, 1).reshape(B * H * W, C)    # channels last: one row per cell
        # Every bin (k, ph, pw) as one row: the top-left cell of its window and the window's size.
        corner = ((batch[:, None, None] * H + h_lo[:, :, None]) * W + w_lo[:, None, :]).reshape(-1)
        win_h = (h_hi - h_lo)[:, :, None].expand(K, oh, ow).reshape(-1)
        win_w = (w_hi - w_lo)[:, None, :].expand(K, oh, ow).reshape(-1)

        output = input.new_empty(K * oh * ow, C)
        # Argmax as a row of `cells`; empty bins point at a spare row B*H*W that the backward throws away.
        argmax = torch.empty(K * oh * ow, C, dtype=torch.long, device=input.device)
        empty = (win_h == 0) | (win_w == 0)  # the window was clipped away: Fast R-CNN's bin value is 0
        output[empty] = 0
        argmax[empty] = B * H * W
        for bins, Lh, Lw in (_bins_by_window_size(win_h, win_w, C) if C > 0 else ()):
            # [n, Lh, Lw] cells of each window, gathered as an [n, C, Lh, Lw] channels-last batch, so
            # that max_pool2d takes each window's max and argmax (the first max in row-major order, as
            # torchvision's loop does), vectorised over channels.
            offsets = (torch.arange(Lh, device=input.device)[:, None] * W
                       + torch.arange(Lw, device=input.device))              # [Lh, Lw]
            window = corner[bins][:, None, None] + offsets                     # [n, Lh, Lw]
            values = cells.index_select(0, window.reshape(-1)).view(len(bins), Lh, Lw, C)
            best, where = F.max_pool2d(values.permute(0, 3, 1, 2), (Lh, Lw), return_indices=True)
            output[bins] = best.view(len(bins), C)
            argmax[bins] = window.view(len(bins), Lh * Lw).gather(1, where.view(len(bins), C))

        ctx.save_for_backward(argmax)
        ctx.input_shape = input.shape
        return output.view(K, oh, ow, C).permute(0, 3, 1, 2).contiguous()      # -> [K, C, oh, ow]

    @staticmethod
    def backward(ctx, grad: Tensor):
        """Girshick 2015, eq. (4): each input cell collects the gradients of the outputs it was the max of."""
        (argmax,) = ctx.saved_tensors                                          # [K*oh*ow, C]
        B, C, H, W = ctx.input_shape
        grad_cells = grad.new_zeros(B * H * W + 1, C)                         # + the spare row
        grad_cells.scatter_add_(0, argmax, grad.permute(0, 2, 3, 1).reshape(argmax.shape))
        grad_input = grad_cells[:-1].view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return grad_input, None, None, None, None, None


# Elements (window cells x channels) gathered at once by the max-pool forward: a few MB that stay in cache.
_GATHER_CHUNK = 1 << 20


def _bins_by_window_size(win_h: Tensor, win_w: Tensor, channels: int):
    """Yield ``(bin indices, Lh, Lw)``: the non-empty bins grouped by window size, in chunks of bounded size."""
    span = int(win_w.max()) + 1 if win_w.numel() else 1
    keys, group = torch.unique(win_h * span + win_w, return_inverse=True)   # one key per window size
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=keys.shape[0])
    for key, bins in zip(keys.tolist(), order.split(counts.tolist())):
        Lh, Lw = divmod(key, span)
        if Lh == 0 or Lw == 0:  # empty windows are filled in by the caller
            continue
        yield from ((chunk, Lh, Lw) for chunk in bins.split(max(1, _GATHER_CHUNK // (Lh * Lw * channels))))


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoI max-pooling (Girshick 2015, sec. 2.1): ``[B, C, H, W]`` features and K boxes -> ``[K, C, oh, ow]``.

    Each box is snapped to the feature grid (``round(x * spatial_scale)``, halves away from zero, as in
    Caffe and torchvision), its ``h x w`` cells are split into ``oh x ow`` sub-windows of about
    ``h/oh x w/ow`` cells (``floor`` of the start, ``ceil`` of the end, clipped to the map), and each
    sub-window is max-pooled; a sub-window with no cell gives 0. The backward pass sends each output's
    gradient to the cell that was the max (the first one in row-major order on ties).

    ``boxes`` is a ``[K, 5]`` tensor ``(batch index, x1, y1, x2, y2)`` or a list of ``[Ni, 4]`` tensors, one
    per image, with the dtype and device of ``input``. The gradient flows to ``input`` only.
    """
    _check_input(input)
    oh, ow = _output_size(output_size)
    spatial_scale = _check_scale(spatial_scale)
    rois = _rois(boxes, input)
    H, W = input.shape[2:]
    x1, y1, x2, y2 = (_round_half_away(rois[:, j] * spatial_scale) for j in (1, 2, 3, 4))
    h_lo, h_hi = _pool_bins(y1, y2, oh, H)                          # [K, oh] each
    w_lo, w_hi = _pool_bins(x1, x2, ow, W)                          # [K, ow] each
    return _RoIMaxPool.apply(input, rois[:, 0].long(), h_lo, h_hi, w_lo, w_hi)


# ---------------------------------------------------------------------------------------------- modules
class RoIPool(nn.Module):
    """``roi_pool`` as a layer, like ``torchvision.ops.RoIPool(output_size, spatial_scale)``."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(nn.Module):
    """``roi_align`` as a layer, like ``torchvision.ops.RoIAlign(output_size, spatial_scale, sampling_ratio)``."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


# ---------------------------------------------------------------------------------------------------- paste
def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """[N, m, m] probabilities and [N, 4] xyxy boxes -> [N, H, W] uint8 binary masks in the image.

    Each mask is resampled bilinearly onto the pixels whose centres lie inside its box (mask cell i spans
    [i / m, (i + 1) / m] of the box) and thresholded at 0.5, as the paper does at test time (He et al. 2017, sec. 3: "the m x m floating-number mask output is
    then resized to the RoI size, and binarized at a threshold of 0.5"). The inverse of cropping with RoIAlign.
    """
    height, width = (int(v) for v in image_size)
    out = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for k, (probs, box) in enumerate(zip(mask_probs.float(), boxes.double())):
        x1, y1, x2, y2 = box.tolist()
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        c0, c1 = max(0, int(x1)), min(width, int(-(-x2 // 1)))     # columns whose pixels the box touches
        r0, r1 = max(0, int(y1)), min(height, int(-(-y2 // 1)))
        if c1 <= c0 or r1 <= r0:
            continue
        u = (torch.arange(c0, c1, dtype=torch.float64) + 0.5 - x1) / (x2 - x1)     # [w'] in box units
        v = (torch.arange(r0, r1, dtype=torch.float64) + 0.5 - y1) / (y2 - y1)     # [h']
        grid = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], dim=-1) * 2 - 1    # [h', w', 2] as (x, y)
        sampled = F.grid_sample(probs[None, None], grid[None].float(), mode="bilinear", padding_mode="border",
                                align_corners=False)[0, 0]                     # [h', w']
        inside = ((v >= 0) & (v <= 1))[:, None] & ((u >= 0) & (u <= 1))[None, :]
        out[k, r0:r1, c0:c1] = ((sampled >= threshold) & inside).to(torch.uint8)
    return out
