"""Mask R-CNN (He et al. 2017): Faster R-CNN plus a branch that predicts a binary mask for every detection.

What it adds to Faster R-CNN (sec. 3):

- RoIAlign (`scenekit.roi.roi_align`) instead of RoI max-pooling, for the box head and the mask head: no
  rounding of the region to the feature grid, each bin the mean of 2 x 2 bilinearly interpolated samples
  (the paper's "four regularly sampled locations"). We use the half-pixel-corrected ("aligned") sampling.
- A small fully convolutional mask head on each RoI: 3x3 convolutions, a 2x2 stride-2 transposed convolution
  and a 1x1 convolution to K masks of m x m (m = 14 by default, 28 as in the paper's FPN head; RoIAlign at
  m / 2). One mask per class, so classes do not compete (sec. 3: "decouples mask and class prediction").
- L = L_cls + L_box + L_mask; L_mask is the mean per-pixel sigmoid binary cross-entropy of the mask of the
  RoI's ground-truth class only, over foreground RoIs. Its target is the matched object's mask cropped to the
  RoI and resampled to m x m (here with RoIAlign on the full-image mask, thresholded at 0.5).
- At test time the mask branch runs on the final detection boxes (the 100 best); the m x m mask of the
  predicted class is resized to the box in the image and thresholded at 0.5 (`paste_masks`). Results leave as
  COCO RLE, evaluated with COCO segm AP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scenekit.models.fast_rcnn import config_from_dict, two_stage_recipe
from scenekit.models.faster_rcnn import WORLD_ANCHOR_SIZES, FasterRCNN, FasterRCNNConfig
from scenekit.recipes import Recipe
from scenekit.roi import paste_masks, roi_align  # noqa: F401  (paste_masks: part of this model's API)


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    roi_op: str = "align"
    mask_size: int = 14                    # m: the mask head's output (RoIAlign at m / 2, then upsampled x2)
    # m = 28 (the paper's FPN head) lifts the ceiling (gt mask -> 28 x 28 -> pasted back: IoU 0.955 vs 0.886 at
    # 14) but gave the same test mask AP after 6 epochs (0.283 vs 0.282, benchmarks/rcnn_family.py): the gap to
    # box AP comes from the mask head's errors on large objects (mask IoU 0.54 at box IoU 0.81), not resolution.
    mask_convs: int = 4
    mask_channels: int = 64                # 256 in the paper


class MaskHead(nn.Module):
    """[R, C, m/2, m/2] RoI features -> [R, K, m, m] mask logits (He et al. 2017, Fig. 4, right)."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        width = channels if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(width, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = self.convs(roi_features)                      # [R, C, m/2, m/2] -> [R, D, m/2, m/2]
        x = F.relu(self.upsample(x))                      # -> [R, D, m, m]
        return self.predictor(x)                          # -> [R, K, m, m]


def mask_targets(gt_masks: torch.Tensor, rois: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """Each RoI's matched object mask, cropped to the RoI and resampled to size x size by RoIAlign, >= 0.5.

    gt_masks [G, H, W] (one image), rois [R, 4] in the same pixels, matched [R] indices into G -> [R, size, size].
    """
    if rois.shape[0] == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    rows = torch.cat([matched.to(rois.dtype)[:, None], rois], dim=1)                      # [R, 5]
    crops = roi_align(gt_masks[:, None].to(rois.dtype), rows, size, 1.0, sampling_ratio=2, aligned=True)
    return (crops[:, 0] >= 0.5).to(torch.float32)                                          # [R, size, size]


def mask_loss(mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel binary cross-entropy of each RoI's own-class mask: [R, K, m, m], labels [R] (>= 1),
    targets [R, m, m] -> scalar (0 with a gradient path when there is no foreground RoI)."""
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    own = mask_logits[torch.arange(labels.numel(), device=labels.device), labels - 1]      # [R, m, m]
    return F.binary_cross_entropy_with_logits(own, targets)


class MaskRCNN(FasterRCNN):
    """Faster R-CNN with RoIAlign and a mask branch; losses: the four of Faster R-CNN plus "mask"."""

    def __init__(self, config: MaskRCNNConfig):
        if config.mask_size % 2:
            raise ValueError(f"mask_size must be even (RoIAlign at mask_size / 2, then x2), got {config.mask_size}")
        super().__init__(config)
        self.mask_head = MaskHead(self.features.out_channels, config.mask_channels, config.mask_convs,
                                  config.num_classes)

    def mask_features(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_align(features, rois, self.config.mask_size // 2, 1.0 / self.features.stride,
                         sampling_ratio=2, aligned=True)                       # [R, C, m/2, m/2]

    def mask_logits(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIAlign + mask head: features [B, C, H, W], rois [R, 5] -> mask logits [R, K, m, m]."""
        return self.mask_head(self.mask_features(features, rois))

    def head_losses(self, features, proposals, targets):
        losses, sample = super().head_losses(features, proposals, targets)
        foreground = torch.nonzero(sample.labels >= 1).flatten()
        rois, labels, matched = sample.rois[foreground], sample.labels[foreground], sample.matched[foreground]
        # RoIs are grouped by image in order, so per-image targets concatenate in the RoIs' order.
        wanted = [mask_targets(target["masks"], rois[rois[:, 0] == b, 1:], matched[rois[:, 0] == b],
                               self.config.mask_size) for b, target in enumerate(targets)]
        mask_logits = self.mask_logits(features, rois)                        # [F, K, m, m]
        losses["mask"] = mask_loss(mask_logits, labels, torch.cat(wanted))
        return losses, sample

    def detect_regions(self, features, proposals, image_sizes):
        """Fast R-CNN's detections, then the mask branch on the final boxes -> "mask_probs" [n, m, m] of each
        detection's predicted class."""
        detections = super().detect_regions(features, proposals, image_sizes)
        rois = torch.cat([torch.cat([torch.full_like(d["boxes"][:, :1], i), d["boxes"]], dim=1)
                          for i, d in enumerate(detections)])
        labels = torch.cat([d["labels"] for d in detections])
        mask_logits = self.mask_logits(features, rois.to(features.dtype))                     # [N, K, m, m]
        own = mask_logits[torch.arange(labels.numel(), device=labels.device), labels - 1].sigmoid()
        for d, probs in zip(detections, own.split([len(d["boxes"]) for d in detections])):
            d["mask_probs"] = probs                                                  # [n, m, m]
        return detections


def recipe(categories: dict, *, name: str = "mask-rcnn", image_size: int = 160, backbone: str = "small",
           backbone_weights: str | None = None, channels=(16, 32, 64), extra_convs: int = 2, norm: str = "batch",
           hidden: int = 256, rois_per_image: int = 64, bg_low: float = 0.0, anchor_sizes=WORLD_ANCHOR_SIZES,
           anchor_ratios=(0.5, 1.0, 2.0), mask_size: int = 14, mask_convs: int = 4, mask_channels: int = 64,
           epochs: int | None = None, lr: float | None = None, flip: bool = True) -> Recipe:
    """Mask R-CNN trained end to end: RPN losses + box head losses + the mask loss."""
    config = MaskRCNNConfig(num_classes=len(categories), image_size=image_size, backbone=backbone,
                            channels=tuple(channels), extra_convs=extra_convs, norm=norm,
                            backbone_weights=backbone_weights, hidden=hidden, rois_per_image=rois_per_image,
                            bg_low=bg_low, anchor_sizes=tuple(anchor_sizes), anchor_ratios=tuple(anchor_ratios),
                            mask_size=mask_size, mask_convs=mask_convs, mask_channels=mask_channels)
    epochs = 12 if epochs is None else epochs       # as Faster R-CNN's recipe (see there)
    lr = 1e-3 if lr is None else lr
    options = {"image_size": image_size, "backbone": backbone, "backbone_weights": backbone_weights,
               "channels": list(channels), "extra_convs": extra_convs, "norm": norm, "hidden": hidden,
               "rois_per_image": rois_per_image, "bg_low": bg_low, "anchor_sizes": list(anchor_sizes),
               "anchor_ratios": list(anchor_ratios), "mask_size": mask_size, "mask_convs": mask_convs,
               "mask_channels": mask_channels, "epochs": epochs, "lr": lr, "flip": flip}
    return two_stage_recipe(name, categories, config, epochs=epochs, lr=lr, flip=flip,
                            build=lambda values: MaskRCNN(config_from_dict(MaskRCNNConfig, values)),
                            with_masks=True, options=options, world={"image_size": image_size})

