"""ILSVRC classification and classification-with-localization error (top-5 error, top-5 localization error).

A model makes up to k = 5 guesses per image, best first: a class label, and for localization a box with it.
The ILSVRC 2012+ development kit (``evaluation/eval_clsloc.m``; Russakovsky et al. 2015, sec. 4.1-4.2)
scores one image with ground-truth classes C_1..C_n (n = 1 for every CLS-LOC image) as

    classification  e = (1/n) sum_k min_j d(c_j, C_k)
    localization    e = (1/n) sum_k min_j max(d(c_j, C_k), min_m f(b_j, B_km))

with d(c, C) = 0 if the labels agree else 1, B_km the ground-truth boxes of class C_k, and f(b, B) = 0 if
IoU(b, B) >= 0.5 else 1. So a guess localizes an object class when its label is right *and* its box overlaps
*any* ground-truth box of that class by half; the image's error is the fraction of its classes that no guess
gets right (the devkit's mean over n). The reported error is the mean over images.

Boxes are ``[x1, y1, x2, y2]`` in continuous coordinates (area = (x2 - x1) * (y2 - y1)). The devkit reads
integer pixel boxes and adds 1 to widths and heights; convert such boxes with ``x2 + 1, y2 + 1`` first to
reproduce it exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of every pair of xyxy boxes, ``[N, 4] x [M, 4] -> [N, M]``; two empty boxes have IoU 0."""
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])             # [N, M, 2]
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])         # [N, M, 2]
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)      # [N, M]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])       # [N]
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])       # [M]
    union = area1[:, None] + area2[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def _check_boxes(boxes, name: str, shape: str) -> np.ndarray:
    """`boxes` as float64, checked to be finite xyxy boxes with as many axes as `shape` (e.g. "[N, K, 4]")."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != shape.count(",") + 1 or boxes.shape[-1] != 4:
        if boxes.size == 0 and boxes.ndim == 1:          # [] -> no boxes
            return boxes.reshape(0, 4)
        raise ValueError(f"{name} must have shape {shape}, got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} holds NaN or inf")
    if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
        raise ValueError(f"{name} has boxes with x2 < x1 or y2 < y1 (boxes must be [x1, y1, x2, y2])")
    return boxes


def _check_guesses(pred_labels, k: int) -> np.ndarray:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    pred_labels = np.asarray(pred_labels)
    if pred_labels.ndim != 2:
        raise ValueError(f"pred_labels must be [N, K] (K guesses per image, best first), got shape "
                         f"{pred_labels.shape}")
    if pred_labels.size and not np.issubdtype(pred_labels.dtype, np.integer):
        raise ValueError(f"pred_labels must hold integer class labels, got dtype {pred_labels.dtype}")
    return pred_labels[:, :k]                        # the devkit ignores guesses past the k-th


def _image_labels(gt_labels, num_images: int) -> list[np.ndarray]:
    """`gt_labels` as one label array per image: ``[N]`` ints (one class per image) or N sequences."""
    if len(gt_labels) != num_images:
        raise ValueError(f"gt_labels has {len(gt_labels)} images but the predictions have {num_images}")
    labels = []
    for i, image_labels in enumerate(gt_labels):
        image_labels = np.atleast_1d(np.asarray(image_labels))
        if image_labels.ndim != 1 or image_labels.size == 0:
            raise ValueError(f"gt_labels[{i}] must be a label or a non-empty 1-D sequence of labels")
        if not np.issubdtype(image_labels.dtype, np.integer):
            raise ValueError(f"gt_labels[{i}] must hold integer class labels, got dtype {image_labels.dtype}")
        labels.append(image_labels)
    return labels


def top_k_error(pred_labels, gt_labels, k: int = 5) -> float:
    """ILSVRC classification error with k guesses (top-5 error for k = 5).

    `pred_labels` is ``[N, K]`` integer labels, best first (only the first k are used); `gt_labels` is
    ``[N]`` (one class per image, as in ILSVRC 2012+) or N sequences of labels. An image with several classes
    scores the fraction of them missing from its guesses (devkit rule, see the module docstring).
    """
    guesses = _check_guesses(pred_labels, k)
    labels = _image_labels(gt_labels, len(guesses))
    if len(guesses) == 0:
        return float("nan")
    errors = [np.mean([label not in guesses[i] for label in np.unique(image_labels)])
              for i, image_labels in enumerate(labels)]
    return float(np.mean(errors))


def localization_errors(pred_labels, pred_boxes, gt_labels, gt_boxes: Sequence, k: int = 5,
                        iou_threshold: float = 0.5) -> np.ndarray:
    """Per-image ILSVRC classification-with-localization error, ``[N]`` values in [0, 1] (0 or 1 if n = 1).

    `pred_labels` ``[N, K]`` and `pred_boxes` ``[N, K, 4]`` (xyxy) are the guesses, best first; `gt_boxes[i]`
    is image i's ``[G_i, 4]`` ground-truth boxes and `gt_labels[i]` their ``[G_i]`` labels, or a single label
    for all of them (so ``[N]`` labels work for CLS-LOC, where all boxes of an image share its class).
    """
    guesses = _check_guesses(pred_labels, k)
    num_images, num_guesses = guesses.shape
    boxes = _check_boxes(pred_boxes, "pred_boxes", "[N, K, 4]")
    if boxes.shape[:2] != np.asarray(pred_labels).shape:
        raise ValueError(f"pred_boxes {boxes.shape} must be [N, K, 4] for pred_labels {np.shape(pred_labels)}")
    boxes = boxes[:, :num_guesses]
    if len(gt_boxes) != num_images:
        raise ValueError(f"gt_boxes has {len(gt_boxes)} images but the predictions have {num_images}")
    labels = _image_labels(gt_labels, num_images)
    errors = np.zeros(num_images)
    for i in range(num_images):
        image_boxes = _check_boxes(gt_boxes[i], f"gt_boxes[{i}]", "[G, 4]")
        if len(image_boxes) == 0:
            raise ValueError(f"gt_boxes[{i}] is empty: every image needs at least one ground-truth box")
        image_labels = labels[i]
        if image_labels.size == 1:
            image_labels = np.full(len(image_boxes), image_labels[0])
        elif len(image_labels) != len(image_boxes):
            raise ValueError(f"gt_labels[{i}] has {len(image_labels)} labels for {len(image_boxes)} boxes")
        overlaps = _box_iou(boxes[i], image_boxes)                                # [K, G]
        missed = []
        for label in np.unique(image_labels):
            # A guess j localizes class `label` if its label is right and it overlaps one box of that class.
            right_class = guesses[i] == label                                     # [K]
            overlaps_one = (overlaps[:, image_labels == label] >= iou_threshold).any(axis=1)  # [K]
            missed.append(not (right_class & overlaps_one).any())
        errors[i] = np.mean(missed)                                               # devkit: mean over classes
    return errors


def localization_error(pred_labels, pred_boxes, gt_labels, gt_boxes: Sequence, k: int = 5,
                       iou_threshold: float = 0.5) -> float:
    """ILSVRC top-k localization error: the mean over images of `localization_errors` (NaN for no images)."""
    errors = localization_errors(pred_labels, pred_boxes, gt_labels, gt_boxes, k, iou_threshold)
    return float(errors.mean()) if len(errors) else float("nan")


def top1_box_iou(pred_boxes, gt_boxes: Sequence) -> float:
    """Mean over images of the IoU between the first (best) guessed box and its closest ground-truth box.

    `pred_boxes` is ``[N, 4]`` or ``[N, K, 4]`` (then the first guess is used); classes are not looked at, so
    this measures box quality alone, the quantity a localization regressor is trained to raise.
    """
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64)
    if pred_boxes.ndim == 3:
        pred_boxes = pred_boxes[:, 0]                                            # [N, K, 4] -> [N, 4]
    pred_boxes = _check_boxes(pred_boxes, "pred_boxes", "[N, 4]")
    num_images = len(pred_boxes)
    if len(gt_boxes) != num_images:
        raise ValueError(f"gt_boxes has {len(gt_boxes)} images but pred_boxes has {num_images}")
    if num_images == 0:
        return float("nan")
    best = np.zeros(num_images)
    for i in range(num_images):
        image_boxes = _check_boxes(gt_boxes[i], f"gt_boxes[{i}]", "[G, 4]")
        if len(image_boxes) == 0:
            raise ValueError(f"gt_boxes[{i}] is empty: every image needs at least one ground-truth box")
        best[i] = _box_iou(pred_boxes[i:i + 1], image_boxes).max()
    return float(best.mean())
