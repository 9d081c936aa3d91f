"""Semantic-segmentation metrics from a confusion matrix, and IoU between dense binary masks.

The four scores are those of the FCN paper (Long et al. 2015, sec. 5): with n_ij the number of pixels of
class i predicted as class j and t_i = sum_j n_ij the pixels of class i,

    pixel accuracy           sum_i n_ii / sum_i t_i
    mean accuracy            (1 / n_cl) sum_i n_ii / t_i
    mean IoU                 (1 / n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted IoU   (1 / sum_k t_k) sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Which classes n_cl counts: a class is left out of a mean where its term is 0 / 0, as the FCN authors' code
does (``np.nanmean``). So mean accuracy averages over classes present in the target (t_i > 0), and mean IoU
over classes present in the target *or* the prediction; a class predicted but absent from the target counts
with IoU 0. Classes absent from both get IoU NaN in `per_class_iou`. Scores of an empty confusion matrix
(no labelled pixels) are NaN.

Pixels whose target equals ``ignore_index`` (255 by default, the VOC "void" label) are left out entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------- confusion
def _check_labels(values, valid, num_classes: int, name: str, ignore_index) -> None:
    """Raise naming `name` if any value in `values` (where `valid`) lies outside [0, num_classes)."""
    outside = valid & ((values < 0) | (values >= num_classes))
    if bool(outside.any()):
        example = int(values[outside][0])
        allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if name == "target" and
                                              ignore_index is not None else "")
        raise ValueError(f"{name} has {int(outside.sum())} pixel(s) with labels outside {allowed}, e.g. {example}")


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Count pixels by (target class, predicted class): ``[num_classes, num_classes]`` int64, rows = target.

    `pred` and `target` are class maps of the same shape (any shape: ``[H, W]``, ``[B, H, W]``, ...), numpy
    arrays or torch tensors of integer (or bool) dtype. Pixels whose target is `ignore_index` are skipped
    (pass None to keep all). Every other target value and every prediction at a kept pixel must lie in
    ``[0, num_classes)``, otherwise ValueError naming the argument. Two torch tensors are counted on their
    device and only the small matrix is copied back.
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    num_classes = int(num_classes)
    use_torch = isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor)
    if use_torch:
        if pred.device != target.device:
            raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    else:
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        target = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    for name, labels in (("pred", pred), ("target", target)):
        floating = labels.is_floating_point() or labels.is_complex() if use_torch else \
            not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_)
        if floating:
            raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype} "
                             f"(take the argmax over class scores first)")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")

    if use_torch:
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    else:
        pred, target = pred.reshape(-1).astype(np.int64), target.reshape(-1).astype(np.int64)
    if ignore_index is None:
        kept = torch.ones_like(target, dtype=torch.bool) if use_torch else np.ones(target.shape, dtype=bool)
    else:
        kept = target != ignore_index                                     # [P] pixels that count
    _check_labels(target, kept, num_classes, "target", ignore_index)
    _check_labels(pred, kept, num_classes, "pred", ignore_index)

    # One bincount over the pair index t * C + p fills the whole matrix at once (as the FCN authors' score.py).
    pair = target[kept] * num_classes + pred[kept]                        # [P]
    if use_torch:
        counts = torch.bincount(pair, minlength=num_classes ** 2).cpu().numpy()
    else:
        counts = np.bincount(pair, minlength=num_classes ** 2)
    return counts.astype(np.int64).reshape(num_classes, num_classes)     # [C*C] -> [C, C]


def _check_confusion(confusion) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {confusion.shape}")
    if not np.isfinite(confusion).all() or (confusion < 0).any():
        raise ValueError("confusion must hold finite, non-negative pixel counts")
    return confusion.astype(np.float64)


# ---------------------------------------------------------------------------------------------- scores
def pixel_accuracy(confusion) -> float:
    """Fraction of labelled pixels predicted correctly, sum_i n_ii / sum_i t_i (Long et al. 2015, sec. 5)."""
    confusion = _check_confusion(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")


def per_class_accuracy(confusion) -> np.ndarray:
    """Recall of each class, n_ii / t_i: ``[C]``, NaN for classes absent from the target."""
    confusion = _check_confusion(confusion)
    class_pixels = confusion.sum(axis=1)                                  # t_i
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(class_pixels > 0, np.diag(confusion) / class_pixels, np.nan)


def mean_accuracy(confusion) -> float:
    """Mean of `per_class_accuracy` over the classes present in the target (Long et al. 2015, sec. 5)."""
    return _mean_present(per_class_accuracy(confusion))


def per_class_iou(confusion) -> np.ndarray:
    """IoU of each class, n_ii / (t_i + sum_j n_ji - n_ii): ``[C]``, NaN for classes absent from both maps."""
    confusion = _check_confusion(confusion)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(confusion) -> float:
    """Mean of `per_class_iou` over the classes present in the target or the prediction."""
    return _mean_present(per_class_iou(confusion))


def frequency_weighted_iou(confusion) -> float:
    """IoU of each class weighted by its share of the target pixels (Long et al. 2015, sec. 5)."""
    confusion = _check_confusion(confusion)
    total = confusion.sum()
    if total == 0:
        return float("nan")
    frequency = confusion.sum(axis=1) / total                             # t_i / sum_k t_k
    present = frequency > 0                                               # then the union is > 0 too
    return float((frequency[present] * per_class_iou(confusion)[present]).sum())


def _mean_present(values: np.ndarray) -> float:
    present = ~np.isnan(values)
    return float(values[present].mean()) if present.any() else float("nan")


def segmentation_scores(confusion) -> dict:
    """All scores of a confusion matrix: pixel_accuracy, mean_accuracy, mean_iou, fw_iou and per_class_iou."""
    return {"pixel_accuracy": pixel_accuracy(confusion), "mean_accuracy": mean_accuracy(confusion),
            "mean_iou": mean_iou(confusion), "fw_iou": frequency_weighted_iou(confusion),
            "per_class_iou": per_class_iou(confusion)}


@dataclass
class SegmentationMeter:
    """Accumulates one confusion matrix over batches, so scores are over the whole set, not a mean of batches.

    >>> meter = SegmentationMeter(num_classes=3)
    >>> meter.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 255]]))
    >>> meter.compute()["pixel_accuracy"]
    1.0
    """

    num_classes: int
    ignore_index: int | None = 255
    confusion: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        """Add a batch of predicted and target class maps (see `confusion_matrix`)."""
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.confusion[:] = 0

    def compute(self) -> dict:
        return segmentation_scores(self.confusion)


# ---------------------------------------------------------------------------------------------- masks
def _check_masks(masks, name: str):
    if masks.ndim != 3:
        raise ValueError(f"{name} must be [N, H, W], got shape {tuple(masks.shape)}")
    is_bool = masks.dtype == torch.bool if isinstance(masks, torch.Tensor) else masks.dtype == np.bool_
    if not is_bool and bool(((masks != 0) & (masks != 1)).any()):
        raise ValueError(f"{name} must be binary (bool or 0/1 values); threshold soft masks first")


def mask_iou(masks_a, masks_b):
    """IoU of every pair of binary masks, ``[N, H, W] x [M, H, W] -> [N, M]``.

    numpy in, float64 numpy out; torch in, float32 torch out on the same device. Two empty masks have
    IoU 0. Intersections are one matrix product of the flattened masks; as the entries are pixel counts below
    2^24 (float32) or 2^53 (float64) they are exact.
    """
    use_torch = isinstance(masks_a, torch.Tensor) and isinstance(masks_b, torch.Tensor)
    if not use_torch:
        masks_a = masks_a.detach().cpu().numpy() if isinstance(masks_a, torch.Tensor) else np.asarray(masks_a)
        masks_b = masks_b.detach().cpu().numpy() if isinstance(masks_b, torch.Tensor) else np.asarray(masks_b)
    _check_masks(masks_a, "masks_a")
    _check_masks(masks_b, "masks_b")
    if tuple(masks_a.shape[1:]) != tuple(masks_b.shape[1:]):
        raise ValueError(f"masks_a and masks_b must have the same [H, W], got {tuple(masks_a.shape[1:])} and "
                         f"{tuple(masks_b.shape[1:])}")
    num_pixels = int(np.prod(masks_a.shape[1:]))
    if use_torch:
        dtype = torch.float32 if num_pixels < 2 ** 24 else torch.float64
        a = masks_a.reshape(masks_a.shape[0], num_pixels).to(dtype)      # [N, H*W]
        b = masks_b.reshape(masks_b.shape[0], num_pixels).to(dtype)      # [M, H*W]
        intersection = a @ b.T                                            # [N, M]
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
        return (intersection / union.clamp(min=1)).to(torch.float32)
    dtype = np.float32 if num_pixels < 2 ** 24 else np.float64
    a = masks_a.reshape(masks_a.shape[0], num_pixels).astype(dtype)      # [N, H*W]
    b = masks_b.reshape(masks_b.shape[0], num_pixels).astype(dtype)      # [M, H*W]
    intersection = (a @ b.T).astype(np.float64)                           # [N, M]
    union = a.sum(1, dtype=np.float64)[:, None] + b.sum(1, dtype=np.float64)[None, :] - intersection
    return intersection / np.maximum(union, 1)
