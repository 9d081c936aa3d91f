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
- At test time the mask branch runs on the final detection boxes (the `max_detections` best, 100 by default);
  the m x m mask of the predicted class is resized to the box in the image and thresholded at 0.5
  (`paste_masks`). Results leave as COCO RLE, evaluated with COCO segm AP.

Where the mask head reads its RoIs (`mask_stride`): 8 is the shared stride-8 map, as the paper's C4 head reads
the backbone's last shared stage; 4 is a finer map built as FPN builds its P2 level (Lin et al. 2017, sec. 3, the
backbone the paper's best masks use): the stride-4 stage's map through a 1x1 lateral convolution, plus the shared
map (1x1) upsampled x2 by nearest neighbour, then a 3x3 convolution. FPN gives RoIs of up to 112 px (224 / 2) to
P2 and larger ones to coarser levels; the world's objects are at most ~145 px, so every RoI reads P2 here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from scenekit.errors import DataError
from scenekit.models.fast_rcnn import (ConvFeatures, RegionSample, check_max_detections, config_from_dict,
                                       two_stage_recipe)
from scenekit.models.faster_rcnn import FasterRCNN, FasterRCNNConfig, RPNOptions
from scenekit.recipes import Recipe, option, read_options
from scenekit.roi import paste_masks, roi_align  # noqa: F401  (paste_masks: part of this model's API)


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    roi_op: str = "align"
    mask_size: int = 14                    # m: the mask head's output (RoIAlign at m / 2, then upsampled x2)
    mask_convs: int = 4
    mask_channels: int = 64                # 256 in the paper
    mask_stride: int | None = None         # None: the shared map; half its stride: FPN's P2 (small backbone only)


class MaskHead(nn.Module):
    """Mask R-CNN's branch (He et al. 2017, sec. 3), which Faster R-CNN runs beside its box head when it has one
    (`FasterRCNN.mask_head`): each RoI's features by RoIAlign at m/2 x m/2 on the head's map (stride `stride`),
    then a small FCN to K mask logits of m x m (Fig. 4, right). `loss` in training, on the foreground RoIs of the
    box head's sample; `add_mask_probs` at test time, on the final detections.
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int, mask_size: int = 14,
                 stride: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        width = channels if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(width, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        self.mask_size, self.stride = mask_size, stride

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = self.convs(roi_features)                      # [R, C, m/2, m/2] -> [R, D, m/2, m/2]
        x = F.relu(self.upsample(x))                      # -> [R, D, m, m]
        return self.predictor(x)                          # -> [R, K, m, m]

    def logits(self, mask_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIAlign + the FCN: the head's map [B, C, H, W], rois [R, 5] -> mask logits [R, K, m, m]."""
        roi_features = roi_align(mask_map, rois, self.mask_size // 2, 1.0 / self.stride,
                                 sampling_ratio=2, aligned=True)                 # [R, C, m/2, m/2]
        return self(roi_features)

    def loss(self, mask_map: torch.Tensor, sample: RegionSample, targets: list[dict]) -> torch.Tensor:
        """L_mask over the foreground RoIs of Fast R-CNN's sample."""
        foreground = torch.nonzero(sample.labels >= 1).flatten()
        rois, labels, matched = sample.rois[foreground], sample.labels[foreground], sample.matched[foreground]
        # RoIs are grouped by image in order, so per-image targets concatenate in the RoIs' order.
        wanted = [mask_targets(target["masks"], rois[rois[:, 0] == b, 1:], matched[rois[:, 0] == b],
                               self.mask_size) for b, target in enumerate(targets)]
        return mask_loss(self.logits(mask_map, rois), labels, torch.cat(wanted))     # logits [F, K, m, m]

    @staticmethod
    def add_mask_probs(mask_logits: torch.Tensor, detections: list[dict]) -> list[dict]:
        """Each detection's "mask_probs" [n, m, m]: the sigmoid of its predicted class's mask (classes do not
        compete, sec. 3), from the logits [N, K, m, m] of all detections in order."""
        labels = torch.cat([d["labels"] for d in detections])
        own = mask_logits[torch.arange(labels.numel(), device=labels.device), labels - 1].sigmoid()
        for d, probs in zip(detections, own.split([len(d["boxes"]) for d in detections])):
            d["mask_probs"] = probs                                                  # [n, m, m]
        return detections


class TopDownLevel(nn.Module):
    """FPN's top-down step (Lin et al. 2017, sec. 3, Fig. 3): a coarse map upsampled x2 plus a 1x1 lateral of the
    backbone's finer stage, then a 3x3 convolution "to reduce the aliasing effect of upsampling"."""

    def __init__(self, fine_channels: int, coarse_channels: int, channels: int):
        super().__init__()
        self.lateral = nn.Conv2d(fine_channels, channels, 1)
        self.top = nn.Conv2d(coarse_channels, channels, 1)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)
        self.to(memory_format=torch.channels_last)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.top(coarse), size=fine.shape[2:], mode="nearest")  # [B, D, H/8, W/8] -> [B, D, H/4, W/4]
        return self.smooth(self.lateral(fine) + up)                                # [B, D, H/4, W/4]


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
    """Faster R-CNN with RoIAlign and a mask head (`MaskHead`, which `FasterRCNN.forward` and `detect` run), reading
    FPN's stride-4 level (`TopDownLevel`) when `mask_stride` is half the backbone's stride; losses: the four of
    Faster R-CNN plus "mask"."""

    def __init__(self, config: MaskRCNNConfig):
        if config.mask_size % 2:
            raise ValueError(f"mask_size must be even (RoIAlign at mask_size / 2, then x2), got {config.mask_size}")
        super().__init__(config)
        stride, width = self.features.stride, self.features.out_channels
        self.mask_stride = config.mask_stride or stride
        if self.mask_stride not in (stride, stride // 2):
            raise ValueError(f"mask_stride must be the backbone's stride {stride} or half of it, got "
                             f"{config.mask_stride}")
        if self.mask_stride != stride:
            if not isinstance(self.features, ConvFeatures):
                raise ValueError(f"mask_stride={config.mask_stride} (FPN's finer level) needs the small backbone, "
                                 f"not {config.backbone!r}")
            self.fine_level = TopDownLevel(config.channels[-2], width, width)
        self.mask_head = MaskHead(width, config.mask_channels, config.mask_convs, config.num_classes,
                                  config.mask_size, self.mask_stride)


@dataclass
class MaskRCNNOptions(RPNOptions):
    """Mask R-CNN's options: Faster R-CNN's (RoIAlign always) and the mask branch's."""

    mask_size: int = option(14, "m: the mask head's output side (RoIAlign at m / 2, then x2; 28 in the paper)")
    mask_convs: int = option(4, "the mask head's 3x3 convolutions")
    mask_channels: int = option(64, "the mask head's width (256 in the paper)")
    mask_stride: int | None = option(None, "the map the mask head reads: 8 (shared) | 4 (FPN's finer level; "
                                           "None: 4 with the small backbone)")
    box_masks: bool = option(False, "train objects without a mask on their boxes filled as masks (else stop)")


def recipe(categories: dict, *, name: str = "mask-rcnn", **options) -> Recipe:
    """Mask R-CNN trained end to end: RPN losses + box head losses + the mask loss.

    Every object it trains on needs a mask: training data with objects that have none stops with an error,
    unless `box_masks=True`, which trains on their boxes filled as masks and says how many (see `require_masks`).

    `max_detections`, `augment` and `slice_factor` as Faster R-CNN's (2.5 keeps every world image whole; larger photographs
    train on windows and are predicted by tiles). Masks of a large photograph, bounded: a window in training
    decodes only the masks of the objects in it, one at a time (`fast_rcnn.window_masks`); a tile keeps its m x m
    mask probabilities until the merge and pastes only the masks it keeps (`fast_rcnn.TileMasks`); the result
    holds [M, H, W] uint8 masks for its M <= `max_detections` detections: 5.7 MB each on a 2300 x 2500 photograph,
    ~575 MB at the default 100 (lower `max_detections` to hold less). Evaluation turns each batch's masks into
    RLE before the next batch.

    With the small backbone the mask branch reads FPN's stride-4 level by default (`mask_stride=None` -> 4;
    `mask_stride=8` reads the shared map like the paper's C4 head). On 800 world images, 16 epochs, 28 x 28 masks
    (benchmarks/rcnn_family.py), the stride-8 map left mask AP 11.8 points below box AP: its RoIAlign cannot
    resolve the arms and points of stars and crosses (benchmarks/mask_quality.py); the stride-4 level closes most
    of that gap (figures in benchmarks/README.md). Other backbones read their shared map.
    """
    o = read_options(MaskRCNNOptions, options, name)
    mask_stride = 2 ** len(o.channels) // 2 if o.mask_stride is None and o.backbone == "small" else o.mask_stride
    o = replace(o, epochs=12 if o.epochs is None else o.epochs,        # as Faster R-CNN's recipe (see there)
                lr=1e-3 if o.lr is None else o.lr, mask_stride=mask_stride)
    config = MaskRCNNConfig(num_classes=len(categories), image_size=o.image_size, backbone=o.backbone,
                            channels=tuple(o.channels), extra_convs=o.extra_convs, norm=o.norm,
                            backbone_weights=o.backbone_weights, freeze_stages=o.freeze_stages, hidden=o.hidden, rois_per_image=o.rois_per_image,
                            bg_low=o.bg_low, anchor_sizes=tuple(o.anchor_sizes),
                            anchor_ratios=tuple(o.anchor_ratios), mask_size=o.mask_size, mask_convs=o.mask_convs,
                            mask_channels=o.mask_channels, mask_stride=o.mask_stride,
                            detections_per_image=check_max_detections(o.max_detections))
    box_masks = o.box_masks
    recipe = two_stage_recipe(name, categories, config, o, augment=o.augment, with_masks=True,
                              build=lambda values: MaskRCNN(config_from_dict(MaskRCNNConfig, values)))
    make_dataset, evaluate, announced = recipe.make_dataset, recipe.evaluate, []

    def checked_make_dataset(dataset, train):
        if train:
            require_masks(dataset, box_masks, name)
        return make_dataset(dataset, train)

    def box_mask_evaluate(model, dataset, device):       # mask AP against the same filled boxes it trained on
        filled = with_box_masks(dataset)
        if filled is not dataset and not announced:
            announced.append(True)
            print(f"{name}: box_masks: mask AP is measured against filled boxes for the objects of "
                  f"{getattr(dataset, 'name', '') or 'the evaluation data'} that have no mask", file=sys.stderr,
                  flush=True)
        return evaluate(model, filled, device)

    recipe.make_dataset = checked_make_dataset
    recipe.evaluate = box_mask_evaluate if box_masks else evaluate
    return recipe


def require_masks(dataset, box_masks: bool, name: str = "mask-rcnn") -> int:
    """Stop when objects of the training data have no mask, rather than learn masks filled from their boxes
    without a word; with `box_masks`, say on stderr how many objects get their filled box as mask. Crowd regions
    are not trained on and not counted. Returns the number of objects without a mask."""
    missing = total = 0
    for record in dataset.records:
        segmentations = record.segmentations if record.segmentations is not None else [None] * record.num_objects
        for segmentation, crowd in zip(segmentations, record.iscrowd.tolist()):
            total += not crowd
            missing += segmentation is None and not crowd
    if missing and not box_masks:
        raise DataError(f"{missing} of {total} objects have no mask, and {name} learns masks; pass --option "
                        f"box_masks=true to train on their boxes filled as masks",
                        file=getattr(dataset, "name", None) or None, field="segmentations")
    if missing:
        print(f"{name}: box_masks: {missing} of {total} objects have no mask and train on their boxes filled as "
              f"masks", file=sys.stderr, flush=True)
    return missing


def with_box_masks(dataset):
    """The dataset with each object that has no mask given its filled box as one (compressed RLE, the mask it
    trains on: `record_masks(..., box_fallback=True)`); the dataset itself when every object has a mask."""
    from dataclasses import replace

    from scenekit.data.records import Dataset
    from scenekit.data.transforms import record_masks
    from scenekit.masks import compress, rle_encode

    records, changed = [], False
    for record in dataset.records:
        segmentations = record.segmentations if record.segmentations is not None else [None] * record.num_objects
        if any(s is None for s in segmentations):
            masks = record_masks(record, box_fallback=True)
            segmentations = [s if s is not None else compress(rle_encode(masks[k]))
                             for k, s in enumerate(segmentations)]
            record, changed = replace(record, segmentations=segmentations), True
        records.append(record)
    if not changed:
        return dataset
    return Dataset(records, dataset.categories, dataset.image_root, name=dataset.name, skipped=dataset.skipped)

