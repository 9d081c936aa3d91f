"""Training targets of the R-CNN family: which anchor or region is an object, which is background, which to sample.

Two labelling rules and one sampler, shared by Fast R-CNN, Faster R-CNN and Mask R-CNN:

- `label_anchors`: the RPN's rule (Ren et al. 2015, sec. 3.1.2). An anchor is *positive* if its IoU with some
  ground-truth box is > 0.7, or if it has the highest IoU of all anchors for some ground-truth box (so every
  object gets at least one anchor); *negative* if its IoU is < 0.3 with every ground-truth box and it is not
  positive; anchors in between (and, in training, anchors crossing the image border, sec. 3.3) are ignored.
- `label_regions`: the detection head's rule (Girshick 2015, sec. 2.3). A region of interest is foreground
  (labelled with its best-matching object's class) if its IoU with that object is >= 0.5, background (class 0)
  if its maximum IoU lies in [bg_low, 0.5) -- the paper's bg_low = 0.1 acts as hard-example mining -- and
  ignored otherwise.
- `sample_labels`: a random mini-batch of at most `num_samples` labelled items with at most `positive_fraction`
  of them positive (RPN: 256 anchors, up to 1:1; Fast R-CNN: R / N regions per image, 25% foreground); the
  remainder is filled with negatives.

Labels use one convention everywhere: >= 1 positive (for regions, the class index), 0 negative/background,
-1 ignored. Randomness comes from torch's global generator (which the training engine seeds and checkpoints)
unless a `generator` is passed.
"""

from __future__ import annotations

import torch

from scenekit.boxes import box_iou

IGNORE = -1


def _check_boxes_2d(boxes: torch.Tensor, name: str) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be a [N, 4] tensor, got {getattr(boxes, 'shape', type(boxes).__name__)}")


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, *, positive_iou: float = 0.7,
                  negative_iou: float = 0.3, image_size: tuple[int, int] | None = None,
                  allowed_border: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RPN anchor labels (Ren et al. 2015, sec. 3.1.2): `anchors [A, 4]`, `gt_boxes [G, 4]` xyxy ->
    (labels [A] int64 in {1, 0, -1}, matched gt index [A] int64, the best-IoU gt of each anchor; 0 when G = 0).

    `image_size = (height, width)` turns on the training rule of sec. 3.3: anchors reaching more than
    `allowed_border` pixels outside the image are ignored. The highest-IoU rule counts ties (every anchor
    sharing a gt's highest IoU is positive, as in the authors' code) and needs that IoU to be > 0, so an
    object no anchor touches does not make every anchor positive.
    """
    _check_boxes_2d(anchors, "anchors")
    _check_boxes_2d(gt_boxes, "gt_boxes")
    if not 0 <= negative_iou <= positive_iou <= 1:
        raise ValueError(f"need 0 <= negative_iou <= positive_iou <= 1, got {negative_iou}, {positive_iou}")
    num_anchors = anchors.shape[0]
    labels = torch.full((num_anchors,), IGNORE, dtype=torch.int64, device=anchors.device)
    matched = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
    inside = torch.ones(num_anchors, dtype=torch.bool, device=anchors.device)
    if image_size is not None:
        height, width = image_size
        b = allowed_border
        inside = ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
                  & (anchors[:, 2] <= width + b) & (anchors[:, 3] <= height + b))
    if gt_boxes.shape[0] == 0:
        labels[inside] = 0                                                # no object: every anchor is negative
        return labels, matched
    iou = box_iou(anchors, gt_boxes.to(anchors.dtype))                    # [A, G]
    iou = torch.where(inside[:, None], iou, torch.full_like(iou, -1.0))   # outside anchors never win
    best_iou, matched = iou.max(dim=1)                                    # [A]
    labels[(best_iou >= 0) & (best_iou < negative_iou)] = 0
    labels[best_iou > positive_iou] = 1
    best_for_gt = iou.max(dim=0).values                                   # [G]
    is_best = (iou == best_for_gt[None, :]) & (best_for_gt[None, :] > 0)  # [A, G]
    labels[is_best.any(dim=1)] = 1
    return labels, matched


def label_regions(regions: torch.Tensor, gt_boxes: torch.Tensor, gt_classes: torch.Tensor, *,
                  fg_iou: float = 0.5, bg_low: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detection-head labels (Girshick 2015, sec. 2.3): `regions [R, 4]`, `gt_boxes [G, 4]`, `gt_classes [G]`
    (class indices >= 1) -> (labels [R] int64: gt class if IoU >= fg_iou, 0 if IoU in [bg_low, fg_iou), -1
    otherwise; matched gt index [R]; best IoU [R]). Without objects every region with bg_low == 0 is background.
    """
    _check_boxes_2d(regions, "regions")
    _check_boxes_2d(gt_boxes, "gt_boxes")
    if gt_classes.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_classes must have shape [{gt_boxes.shape[0]}], got {list(gt_classes.shape)}")
    if not 0 <= bg_low <= fg_iou <= 1:
        raise ValueError(f"need 0 <= bg_low <= fg_iou <= 1, got {bg_low}, {fg_iou}")
    num = regions.shape[0]
    if gt_boxes.shape[0] == 0:
        best_iou = torch.zeros(num, dtype=regions.dtype, device=regions.device)
        matched = torch.zeros(num, dtype=torch.int64, device=regions.device)
    else:
        best_iou, matched = box_iou(regions, gt_boxes.to(regions.dtype)).max(dim=1)    # [R, G] -> [R]
    labels = torch.full((num,), IGNORE, dtype=torch.int64, device=regions.device)
    labels[(best_iou >= bg_low) & (best_iou < fg_iou)] = 0
    if gt_boxes.shape[0]:
        foreground = best_iou >= fg_iou
        labels[foreground] = gt_classes.to(torch.int64)[matched[foreground]]
    return labels, matched, best_iou


def sample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positive and negative indices of `labels [N]` (>= 1 positive, 0 negative, -1 ignored):
    at most `round(num_samples * positive_fraction)` positives, negatives filling up to `num_samples` (fewer
    when there are not enough). Returns (positive indices, negative indices), each int64."""
    if num_samples < 0 or not 0 <= positive_fraction <= 1:
        raise ValueError(f"need num_samples >= 0 and 0 <= positive_fraction <= 1, got {num_samples}, "
                         f"{positive_fraction}")
    positive = torch.nonzero(labels >= 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(positive.numel(), int(round(num_samples * positive_fraction)))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pick_pos = torch.randperm(positive.numel(), generator=generator)[:num_pos].to(labels.device)
    pick_neg = torch.randperm(negative.numel(), generator=generator)[:num_neg].to(labels.device)
    return positive[pick_pos], negative[pick_neg]
