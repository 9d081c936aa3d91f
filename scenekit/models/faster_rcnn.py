"""Faster R-CNN (Ren et al. 2015): a Region Proposal Network shares the convolutions with Fast R-CNN.

Selective Search costs seconds per image on a CPU, more than the detector itself. The RPN makes proposals
nearly free: a small network slides a 3x3 window over the last shared feature map (sec. 3.1), and at every
position predicts, for each of k = 9 anchors (3 sizes x 3 aspect ratios, `scenekit.anchors`; the sizes here
fit the world's objects), an objectness score and a box regression from the anchor to the object (the paper's
cls layer is a 2-way softmax; "alternatively one may use logistic regression", which is what we do: one logit
per anchor).

Training (sec. 3.1.2, `detection_targets.label_anchors`): anchors with IoU > 0.7 with a ground-truth box, or the
highest IoU for one, are positive; IoU < 0.3 negative; the rest, and anchors crossing the image border, are
ignored. Each image contributes 256 sampled anchors, up to half positive. The RPN loss is eq. (1):
(1 / N_cls) sum L_cls(p_i, p*_i) + lambda (1 / N_reg) sum p*_i L_reg(t_i, t*_i); with lambda = 10 and N_reg
~ 2400 anchor positions the regression term weighs about as much as normalising by the 256 sampled anchors,
which we do (as the authors' code and torchvision do), with the code's smooth L1 of beta = 1/9.

Proposals (sec. 3.3): anchors moved by the predicted deltas, clipped to the image, boxes smaller than a
minimum size removed, the top-scoring pre-NMS set kept, NMS at IoU 0.7, then the top-N go to the Fast R-CNN
head (`FastRCNN.head_losses` / `detect_regions`). Training is end to end ("approximate joint training",
sec. 3.2): the four losses are summed and back-propagated together, the proposal boxes treated as constants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from scenekit.anchors import anchors_for_feature_map
from scenekit.boxes import clip_boxes_to_image, decode_boxes, encode_boxes
from scenekit.models.detection_targets import label_anchors, sample_labels
from scenekit.models.fast_rcnn import (FastRCNN, FastRCNNConfig, TwoStageOptions, check_max_detections,
                                       config_from_dict, smooth_l1_loss, two_stage_recipe)
from scenekit.nms import nms
from scenekit.recipes import Recipe, option, read_options

# Sizes of the world's objects in a 160 px image run from ~11 px (small) to ~145 px (large, median ~54 px);
# three sizes a factor ~2.3 apart cover them as the paper's 128/256/512 cover PASCAL's objects in a 600 px
# image. Four octave sizes (16, 32, 64, 128) match more objects at IoU >= 0.5 (97% vs 83%) but trained worse
# (test mAP@0.5 0.69 vs 0.75 after 12 epochs, benchmarks/rcnn_family.py), so the three stay.
WORLD_ANCHOR_SIZES = (20.0, 46.0, 106.0)


@dataclass
class FasterRCNNConfig(FastRCNNConfig):
    bg_low: float = 0.0                    # the authors' end-to-end setting: every IoU < 0.5 is background
    anchor_sizes: tuple[float, ...] = WORLD_ANCHOR_SIZES
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 64                 # width of the 3x3 sliding-window layer (256 for ZF, 512 for VGG)
    rpn_batch: int = 256                   # sampled anchors per image
    rpn_positive_fraction: float = 0.5
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    allowed_border: float = 0.0            # training ignores anchors crossing the border by more than this
    pre_nms_train: int = 1000
    post_nms_train: int = 300
    pre_nms_test: int = 600
    post_nms_test: int = 100
    rpn_nms: float = 0.7
    min_proposal_size: float = 2.0         # pixels, in the input image


class RegionProposalNetwork(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs: objectness [B, A, H, W] and deltas [B, 4A, H, W] (sec. 3.1)."""

    def __init__(self, in_channels: int, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):   # the paper: Gaussian, std 0.01, bias 0
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor):
        x = F.relu(self.conv(features))
        batch = features.shape[0]
        # Position-major, anchor-minor, the order of anchors_for_feature_map.
        objectness = self.objectness(x).permute(0, 2, 3, 1).reshape(batch, -1)        # [B, A, H, W] -> [B, HWA]
        deltas = self.deltas(x).permute(0, 2, 3, 1).reshape(batch, -1, 4)             # [B, 4A, H, W] -> [B, HWA, 4]
        return objectness, deltas


def rpn_loss(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, targets: list[dict],
             config: FasterRCNNConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) of Ren et al. 2015 over the images of a batch -> (objectness loss, box loss).

    objectness [B, A], deltas [B, A, 4], anchors [A, 4]; both terms are normalised by the number of sampled
    anchors (N_cls), the regression term summed over the positive ones only (the p*_i factor).
    """
    logits, labels, predicted, wanted = [], [], [], []
    for b, target in enumerate(targets):
        height, width = (int(v) for v in target["size"])
        anchor_labels, matched = label_anchors(anchors, target["boxes"], positive_iou=config.rpn_positive_iou,
                                               negative_iou=config.rpn_negative_iou, image_size=(height, width),
                                               allowed_border=config.allowed_border)
        positive, negative = sample_labels(anchor_labels, config.rpn_batch, config.rpn_positive_fraction)
        chosen = torch.cat([positive, negative])
        logits.append(objectness[b, chosen])
        labels.append((anchor_labels[chosen] == 1).to(objectness.dtype))
        predicted.append(deltas[b, positive])
        wanted.append(encode_boxes(target["boxes"][matched[positive]], anchors[positive]))
    num_sampled = max(1, sum(len(x) for x in logits))
    objectness_loss = F.binary_cross_entropy_with_logits(torch.cat(logits), torch.cat(labels),
                                                         reduction="sum") / num_sampled
    box_loss = smooth_l1_loss(torch.cat(predicted), torch.cat(wanted), beta=1 / 9) / num_sampled
    return objectness_loss, box_loss


@torch.no_grad()
def propose(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
            image_sizes: list[tuple[int, int]], *, pre_nms: int, post_nms: int, nms_threshold: float,
            min_size: float) -> list[torch.Tensor]:
    """The proposal layer (sec. 3.3): per image, decode -> clip -> drop small -> top pre_nms -> NMS -> top
    post_nms. objectness [B, A], deltas [B, A, 4] -> a list of [P, 4] boxes, best first."""
    proposals = []
    for scores, image_deltas, size in zip(objectness.float(), deltas.float(), image_sizes):
        boxes = clip_boxes_to_image(decode_boxes(image_deltas, anchors), tuple(int(v) for v in size))
        big = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
        boxes, scores = boxes[big], scores[big]
        top = scores.topk(min(pre_nms, scores.numel())).indices
        boxes, scores = boxes[top], scores[top]
        keep = nms(boxes, scores, nms_threshold, max_output=post_nms)
        proposals.append(boxes[keep])
    return proposals


class FasterRCNN(FastRCNN):
    """Backbone -> RPN -> proposals -> Fast R-CNN head; `model(images, targets)` -> the four losses.

    `mask_head`: Mask R-CNN's branch (`mask_rcnn.MaskHead`, He et al. 2017, sec. 3: "a branch for predicting an
    object mask in parallel with the existing branch"), None here; where a model has one (`mask_rcnn.MaskRCNN`),
    training adds its loss "mask" and `detect` a mask per detection. `fine_level`: the finer map the mask head
    may read (FPN's stride-4 level, `mask_rcnn.TopDownLevel`), None: it reads the shared map.
    """

    def __init__(self, config: FasterRCNNConfig):
        super().__init__(config)
        num_anchors = len(config.anchor_sizes) * len(config.anchor_ratios)
        self.rpn = RegionProposalNetwork(self.features.out_channels, config.rpn_channels, num_anchors)
        self.fine_level: nn.Module | None = None
        self.mask_head: nn.Module | None = None
        self._anchors: dict[tuple, torch.Tensor] = {}

    def anchors(self, features: torch.Tensor) -> torch.Tensor:
        """All anchors of the feature map, [H * W * A, 4] in input pixels (cached per map size)."""
        key = (tuple(features.shape[2:]), features.device, features.dtype)
        if key not in self._anchors:
            self._anchors[key] = anchors_for_feature_map(
                tuple(features.shape[2:]), self.features.stride, self.config.anchor_sizes,
                self.config.anchor_ratios, dtype=features.dtype).to(features.device)
        return self._anchors[key]

    def region_proposals(self, features: torch.Tensor, image_sizes, training: bool):
        objectness, deltas = self.rpn(features)                    # [B, HWA], [B, HWA, 4]
        c = self.config
        proposals = propose(objectness.detach(), deltas.detach(), self.anchors(features), image_sizes,
                            pre_nms=c.pre_nms_train if training else c.pre_nms_test,
                            post_nms=c.post_nms_train if training else c.post_nms_test,
                            nms_threshold=c.rpn_nms, min_size=c.min_proposal_size)
        return objectness, deltas, proposals

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if targets is None:
            return self.detect(images, [tuple(images.shape[2:])] * len(images))
        features, mask_map = self.feature_maps(images)             # [B, 3, S, S] -> [B, C, S/8, S/8] (, mask map)
        sizes = [tuple(int(v) for v in t["size"]) for t in targets]
        objectness, deltas, proposals = self.region_proposals(features, sizes, training=True)
        rpn_objectness, rpn_box = rpn_loss(objectness, deltas, self.anchors(features), targets, self.config)
        losses, sample = self.head_losses(features, proposals, targets)
        if self.mask_head is not None:                             # Mask R-CNN: L_mask on the same sample
            losses["mask"] = self.mask_head.loss(mask_map, sample, targets)
        return {"rpn_objectness": rpn_objectness, "rpn_box_regression": rpn_box, **losses}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, image_sizes, proposals=None,
               max_detections: int | None = None) -> list[dict]:
        """Test time (sec. 3.3): the shared convolutions, the RPN's proposals, the Fast R-CNN head on them (at most
        `max_detections` per image, default the config's), and Mask R-CNN's masks of the final boxes where the model
        has a mask head (`fast_rcnn.timed_detect` times these steps)."""
        features, mask_map = self.feature_maps(images)
        if proposals is None:
            _, _, proposals = self.region_proposals(features, image_sizes, training=False)
        detections = self.detect_regions(features, proposals, image_sizes, max_detections)
        if self.mask_head is not None:
            detections = self.add_masks(mask_map, detections)
        return detections

    # -- Mask R-CNN's branch, where the model has one (`mask_rcnn.MaskHead`)
    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (the shared map [B, C, S/8, S/8], the mask head's map: `fine_level` [B, C, S/4, S/4]
        where the model has it, else the shared map)."""
        if self.fine_level is None:
            features = self.features(images)
            return features, features
        stages, features = self.features.levels(images)
        return features, self.fine_level(stages[-2], features)

    def mask_logits(self, mask_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIAlign + the mask head: the mask head's map [B, C, H, W], rois [R, 5] -> mask logits [R, K, m, m]
        (a method of the model so that the ONNX stand-in, `fast_rcnn.two_stage_from_onnx`, can answer it)."""
        return self.mask_head.logits(mask_map, rois)

    def add_masks(self, mask_map: torch.Tensor, detections: list[dict]) -> list[dict]:
        """The mask head on the final boxes -> each detection's "mask_probs" [n, m, m] of its predicted class."""
        rois = torch.cat([torch.cat([torch.full_like(d["boxes"][:, :1], i), d["boxes"]], dim=1)
                          for i, d in enumerate(detections)])                        # [N, 5]
        return self.mask_head.add_mask_probs(self.mask_logits(mask_map, rois.to(mask_map.dtype)), detections)


@dataclass
class RPNOptions(TwoStageOptions):
    """The options of the detectors with a Region Proposal Network (Faster and Mask R-CNN's recipes)."""

    bg_low: float = option(0.0, "background RoIs have IoU in [bg_low, 0.5) (the authors' end-to-end 0)")
    epochs: int | None = option(None, "training epochs (None: 12)")
    anchor_sizes: tuple[float, ...] = option(WORLD_ANCHOR_SIZES, "anchor sizes s (area s^2), px in the input image")
    anchor_ratios: tuple[float, ...] = option((0.5, 1.0, 2.0), "anchor aspect ratios (height / width)")
    augment: str = option("world", "training augmentation: 'world' (the flip) | 'user' | 'top-down' | 'none'")


@dataclass
class FasterRCNNOptions(RPNOptions):
    """Faster R-CNN's options (`--option KEY=VALUE`, `scenekit train faster-rcnn --list-options`)."""

    roi_op: str = option("align", "the region head's RoI features: 'align' (RoIAlign) | 'pool' (the paper's)")


def recipe(categories: dict, *, name: str = "faster-rcnn", **options) -> Recipe:
    """Faster R-CNN trained end to end (approximate joint training) with the RPN's and the head's losses.

    `max_detections`: detections per image (100; after merging the tiles of a photograph). `slice_factor`:
    images whose longer side is more than this times `image_size` train on random windows and are predicted
    and evaluated by overlapping tiles (`fast_rcnn.detect_any_size`). Its 2.5 keeps every world image (128-320
    px) fitted whole, as the benchmark figures were measured, and slices a 2,500 px photograph at any input up to
    1,000 px; 1.5 suits photographs of small objects, 0 never slices (`fast_rcnn`'s module docstring). Note the
    RPN keeps `post_nms_test` = 100 proposals per image or tile: a busy tile finds at most that many objects.
    `augment`: "world" (the horizontal flip `flip`, as the world has always trained), "user", "top-down" or
    "none" (`scenekit.data.augment`'s presets, on the training windows; `fast_rcnn`'s module docstring).

    The region head reads its RoI features with RoIAlign (He et al. 2017, sec. 3), as torchvision's and
    Detectron2's Faster R-CNN do: Ren et al. used Fast R-CNN's RoI max-pooling, whose rounding of RoI edges to the
    stride-8 feature grid costs the world's small objects dearly (800 images, 12 epochs: validation mAP@0.5 0.78
    with pooling vs 0.83 with RoIAlign, COCO AP 0.46 vs 0.59; benchmarks/rcnn_family.py). `roi_op="pool"` gives
    the paper's RoI max-pooling back.
    """
    o = read_options(FasterRCNNOptions, options, name)
    # 12 epochs: on 800 world images (batch 4, 2,400 iterations, ~5 CPU-minutes) test mAP@0.5 rose from 0.53
    # at 6 epochs to 0.75, and validation mAP was still rising at the end (benchmarks/rcnn_family.py).
    o = replace(o, epochs=12 if o.epochs is None else o.epochs, lr=1e-3 if o.lr is None else o.lr)
    config = FasterRCNNConfig(num_classes=len(categories), image_size=o.image_size, backbone=o.backbone,
                              channels=tuple(o.channels), extra_convs=o.extra_convs, norm=o.norm,
                              backbone_weights=o.backbone_weights, freeze_stages=o.freeze_stages, hidden=o.hidden, rois_per_image=o.rois_per_image,
                              bg_low=o.bg_low, anchor_sizes=tuple(o.anchor_sizes),
                              anchor_ratios=tuple(o.anchor_ratios), roi_op=o.roi_op,
                              detections_per_image=check_max_detections(o.max_detections))
    return two_stage_recipe(name, categories, config, o, augment=o.augment,
                            build=lambda values: FasterRCNN(config_from_dict(FasterRCNNConfig, values)))
