"""Fast R-CNN (Girshick 2015): one CNN pass per image, RoI max-pooling, and a multitask head.

R-CNN ran the CNN once per warped proposal. Fast R-CNN runs it once per *image* and cuts each proposal's
features out of the shared feature map with RoI max-pooling (sec. 2.1, `scenekit.roi.roi_pool`) to a fixed
h x w grid; fully connected layers then give, per region of interest (RoI),

- p = softmax over K + 1 classes (class 0 is background), and
- t^k = (t_x, t_y, t_w, t_h), a class-specific box regression offset for each of the K object classes,

trained together with the multitask loss of eq. (1):  L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v),
where L_cls = -log p_u, L_loc = sum_i smooth_L1(t^u_i - v_i) (eq. 2) with smooth_L1(x) = 0.5 x^2 if |x| < 1
else |x| - 0.5 (eq. 3), and lambda = 1. Mini-batches hold R RoIs from N images (R / N per image, sec. 2.3),
25% of them foreground (IoU >= 0.5 with a ground-truth box), the rest background (IoU in [0.1, 0.5)); images
are flipped horizontally with probability 1/2. Regression targets are normalised to roughly unit variance
(box-coder weights 10, 10, 5, 5, the authors' code). At test time each class's boxes are decoded, clipped and
suppressed with per-class NMS (sec. 3).

The proposals are Selective Search's (`scenekit.proposals.selective_search`, "fast" mode as in the paper),
computed once per image and cached (`ProposalCache`); the ground-truth boxes are added to a training image's
proposals, as in the authors' code.

This file also holds what the three two-stage detectors share: the backbone, the box head, the data pipeline
(images fitted into S x S), the inference loop that maps detections back to the image, and the evaluation
(Pascal VOC mAP@0.5, COCO AP, time per image split into convolutions, proposals and region-wise work, the
break-down of Ren et al. 2015, Table 10). `faster_rcnn.py` and `mask_rcnn.py` extend `FastRCNN`.

Photographs larger than the input (`scenekit.data.tiling`). An image whose longer side exceeds `slice_factor`
x S is not shrunk into S x S: training cuts a random S x S window from it (`RandomWindow`; boxes clipped,
slivers dropped), and prediction runs the detector on overlapping S x S tiles at the photograph's own
resolution and merges them (`detect_any_size`: each object from the tile that sees it whole, then class-aware
NMS; SAHI, Akyon et al. 2022). Selective Search runs once per photograph, and a window or tile takes the
proposals that lie in it. The recipes' `slice_factor` is 2.5 (`SLICE_FACTOR`), not tiling's 1.5: the world
draws its images up to 320 px, 2.5 x the smallest input a world recipe uses (128 px) and 2 x the detectors'
160 px, and its benchmark figures are of those images fitted whole; a factor of 2.5 keeps every world image
fitted whole as before, while a 2,500 px photograph is sliced at any input up to 1,000 px. Photographs of
small objects do better with `slice_factor=1.5` (objects shrink by at most a third); 0 never slices.
`max_detections` (100, COCO's per-image limit) caps the detections per image, after merging for a
photograph; raise it for photographs of hundreds of objects. An epoch shows a sliced photograph once per tile
prediction would cut from it (`tiled_epoch`), each time a random window, so one photograph is not one step.

Augmentation (`augment`, the two-stage recipes' option): "world" is the horizontal flip the world recipes have
always used (`flip`); "user", "top-down" and "none" run `scenekit.data.augment`'s presets (USER_DATA_DEFAULTS,
TOP_DOWN_DEFAULTS, nothing) on each training image after its window is cut and before it is fitted into S x S
(`DetectionData(pairs=...)`). Mask R-CNN then decodes a photograph's instance masks whole before the window.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.boxes import clip_boxes_to_image, decode_boxes, encode_boxes
from scenekit.data.tiling import RandomWindow, crop_target, needs_slicing, sliced_predict, tile_windows
from scenekit.data.transforms import Compose, load_image
from scenekit.errors import DataError
from scenekit.models.backbones import SmallCNN, build_backbone, freeze_stages, inference_copy
from scenekit.models.detection import coco_records, evaluate_detections
from scenekit.models.detection_targets import label_regions, sample_labels
from scenekit.nms import batched_nms
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options
from scenekit.roi import paste_masks, roi_align, roi_pool


@dataclass
class FastRCNNConfig:
    num_classes: int                       # K object classes (the head has K + 1 outputs)
    image_size: int = 160                  # S: images are scaled so the longer side is S, then padded to S x S
    backbone: str = "small"                # "small" | "vgg16" | "resnet18" | "resnet50"
    channels: tuple[int, ...] = (16, 32, 64)    # small backbone: one conv + 2x2 pool per stage (stride 8)
    extra_convs: int = 2                   # small backbone: 3x3 convs after the last stage (receptive field)
    norm: str = "batch"                    # "batch" | "group" | "none"
    backbone_weights: str | None = None    # torchvision-format state dict for vgg16 / resnet*
    freeze_stages: int = 0                 # the backbone's first stages kept fixed (backbones.freeze_stages)
    roi_size: int = 7                      # h = w of the pooled RoI features
    roi_op: str = "pool"                   # "pool" (RoI max-pooling, Fast R-CNN) | "align" (RoIAlign)
    hidden: int = 256                      # width of the two fully connected layers (4096 in the paper)
    rois_per_image: int = 64               # R / N (the paper: 128 / 2)
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_low: float = 0.1                    # background IoU in [bg_low, fg_iou)
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.05          # test time: drop class scores below this
    nms_threshold: float = 0.3             # test time: per-class NMS (the authors' code uses 0.3)
    detections_per_image: int = 100        # the recipes' `max_detections`, which overrides it at test time
    max_proposals: int = 1000              # proposals per image fed to the head (Selective Search's best)


# ------------------------------------------------------------------------------------------------ backbone
class ConvFeatures(nn.Module):
    """The small CNN with "same" padding (stride 2 ** len(channels)) plus `extra_convs` 3x3 convolutions.

    The extra convolutions keep the stride (small objects stay several cells wide) and enlarge the receptive
    field so that the RPN's 3x3 window sees the large objects too.
    """

    def __init__(self, channels=(16, 32, 64), extra_convs: int = 2, norm: str = "batch"):
        super().__init__()
        self.body = SmallCNN(channels=tuple(channels), padding=1, norm=norm)
        width = self.body.out_channels
        layers: list[nn.Module] = []
        for _ in range(extra_convs):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif norm == "group":
                layers.append(nn.GroupNorm(min(8, width), width))
            layers.append(nn.ReLU(inplace=True))
        self.extra = nn.Sequential(*layers)
        self.out_channels, self.stride = width, self.body.stride
        # Channels-last memory ([B, H, W, C] order, the same numbers): PyTorch's CPU convolutions, batch norms and
        # max-pools run faster on it, and the RoI pooling reads one row of C values per cell anyway.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=torch.channels_last)
        return self.extra(self.body(images))       # [B, 3, H, W] -> [B, C, H / stride, W / stride]

    def levels(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The map after each stage's pooling (strides 2, 4, ..., stride) and the final map (= `forward`), for
        heads that read a finer level, as FPN's do (Lin et al. 2017)."""
        x = images.contiguous(memory_format=torch.channels_last)
        stages = []
        for layer in self.body.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(x)                   # [B, C_i, H / 2^i, W / 2^i]
        return stages, self.extra(x)


def build_features(config) -> nn.Module:
    if config.backbone == "small":
        features = ConvFeatures(config.channels, config.extra_convs, config.norm)
        freeze_stages(features.body, config.freeze_stages)
        return features
    return build_backbone(config.backbone, weights=config.backbone_weights, freeze=config.freeze_stages)


# ------------------------------------------------------------------------------------------------ head
class BoxHead(nn.Module):
    """RoI features -> two fully connected layers -> (class logits [R, K + 1], class-specific deltas [R, K, 4])."""

    def __init__(self, in_channels: int, roi_size: int, hidden: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * roi_size * roi_size, hidden),
                                nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        # The paper's initialisation: zero-mean Gaussians of std 0.01 (scores) and 0.001 (boxes), biases 0.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, roi_features: torch.Tensor):
        x = self.fc(roi_features)                                    # [R, C, h, w] -> [R, hidden]
        deltas = self.bbox_pred(x).view(-1, self.num_classes, 4)     # -> [R, K, 4]
        return self.cls_score(x), deltas                             # [R, K + 1], [R, K, 4]


# ------------------------------------------------------------------------------------------------ losses
def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Girshick 2015, eq. (3), summed: smooth_L1(x) = 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta.

    beta = 1 is the paper's function; a smaller beta (the RPN's 1/9 in the authors' code) makes it closer to L1.
    """
    diff = (input - target).abs()
    return torch.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).sum()


def fast_rcnn_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
                   box_targets: torch.Tensor, box_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The multitask loss of eq. (1), averaged over the R RoIs of the mini-batch -> (L_cls, lambda L_loc).

    class_logits [R, K + 1], box_deltas [R, K, 4], labels u [R] (0 = background), box_targets v [R, 4] (read for
    foreground RoIs only). L_loc uses the deltas of the true class u only, and only when u >= 1 (eq. 1's
    Iverson bracket); its sum is divided by R too, so lambda = 1 balances the two terms as in the paper.
    """
    num = max(1, labels.numel())
    classification = F.cross_entropy(class_logits, labels, reduction="sum") / num
    foreground = torch.nonzero(labels >= 1).flatten()
    own = box_deltas[foreground, labels[foreground] - 1]             # [F, 4]: t^u of each foreground RoI
    localisation = box_weight * smooth_l1_loss(own, box_targets[foreground], beta=1.0) / num
    return classification, localisation


@dataclass
class RegionSample:
    """A training mini-batch of RoIs: rows (image index, x1, y1, x2, y2), class labels, box targets, and the
    index of each RoI's matched object within its image's ground truth."""

    rois: torch.Tensor           # [R, 5]
    labels: torch.Tensor         # [R] int64, 0 = background
    box_targets: torch.Tensor    # [R, 4] (zeros for background)
    matched: torch.Tensor        # [R] int64


# ------------------------------------------------------------------------------------------------ model
class FastRCNN(nn.Module):
    """Backbone + RoI pooling + box head; `model(images, targets)` -> losses, `model.detect(...)` -> detections.

    Training targets per image: {"boxes" [N, 4] in input pixels, "labels" [N] class indices 1..K,
    "proposals" [P, 4], "size" (height, width) of the image inside the padded input}.
    """

    def __init__(self, config: FastRCNNConfig):
        super().__init__()
        if config.roi_op not in ("pool", "align"):
            raise ValueError(f"roi_op must be 'pool' or 'align', got {config.roi_op!r}")
        self.config = config
        self.features = build_features(config)
        self.box_head = BoxHead(self.features.out_channels, config.roi_size, config.hidden, config.num_classes)

    # -- shared pieces
    def pool(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] features, rois [R, 5] -> [R, C, h, w] (RoI max-pooling, or RoIAlign for Mask R-CNN)."""
        scale, size = 1.0 / self.features.stride, self.config.roi_size
        if self.config.roi_op == "pool":
            return roi_pool(features, rois, size, scale)
        return roi_align(features, rois, size, scale, sampling_ratio=2, aligned=True)

    def sample_regions(self, proposals: list[torch.Tensor], targets: list[dict]) -> RegionSample:
        """Label every image's proposals (plus its gt boxes) and sample R / N of them, 25% foreground."""
        c = self.config
        rois, labels, box_targets, matched = [], [], [], []
        for index, (regions, target) in enumerate(zip(proposals, targets)):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            regions = torch.cat([regions.detach().to(gt_boxes.dtype), gt_boxes])      # the gt are RoIs too
            region_labels, region_match, _ = label_regions(regions, gt_boxes, gt_labels, fg_iou=c.fg_iou,
                                                           bg_low=c.bg_low)
            positive, negative = sample_labels(region_labels, c.rois_per_image, c.fg_fraction)
            keep = torch.cat([positive, negative])
            chosen, chosen_labels, chosen_match = regions[keep], region_labels[keep], region_match[keep]
            targets_here = torch.zeros_like(chosen)
            if positive.numel():
                fg = slice(0, positive.numel())
                targets_here[fg] = encode_boxes(gt_boxes[chosen_match[fg]], chosen[fg], c.box_weights)
            rois.append(torch.cat([torch.full_like(chosen[:, :1], index), chosen], dim=1))
            labels.append(chosen_labels)
            box_targets.append(targets_here)
            matched.append(chosen_match)
        return RegionSample(torch.cat(rois), torch.cat(labels), torch.cat(box_targets), torch.cat(matched))

    def classify_regions(self, features: torch.Tensor, rois: torch.Tensor):
        """RoI pooling + box head: features [B, C, H, W], rois [R, 5] -> (logits [R, K + 1], deltas [R, K, 4])."""
        return self.box_head(self.pool(features, rois))

    def head_losses(self, features: torch.Tensor, proposals: list[torch.Tensor], targets: list[dict]):
        sample = self.sample_regions(proposals, targets)
        class_logits, box_deltas = self.classify_regions(features, sample.rois)
        classification, localisation = fast_rcnn_loss(class_logits, box_deltas, sample.labels, sample.box_targets)
        return {"classification": classification, "box_regression": localisation}, sample

    def detect_regions(self, features: torch.Tensor, proposals: list[torch.Tensor],
                       image_sizes: list[tuple[int, int]], max_detections: int | None = None) -> list[dict]:
        """Score and refine every proposal, then per-class NMS (sec. 3) -> per image {"boxes", "scores",
        "labels" (class indices 1..K)} in input pixels, at most `max_detections` (default: the config's)."""
        counts = [len(p) for p in proposals]
        rois = torch.cat([torch.cat([torch.full_like(p[:, :1], i), p], dim=1) for i, p in enumerate(proposals)])
        class_logits, box_deltas = self.classify_regions(features, rois.to(features.dtype))
        results = []
        for p, logits, deltas, size in zip(proposals, class_logits.split(counts), box_deltas.split(counts),
                                           image_sizes):
            results.append(postprocess_detections(logits, deltas, p, size, self.config, max_detections))
        return results

    # -- the engine's contract
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if targets is None:
            raise ValueError("FastRCNN needs proposals at test time: call model.detect(images, sizes, proposals)")
        features = self.features(images)                                   # [B, 3, S, S] -> [B, C, S/8, S/8]
        losses, _ = self.head_losses(features, [t["proposals"] for t in targets], targets)
        return losses

    @torch.no_grad()
    def detect(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
               proposals: list[torch.Tensor] | None = None, max_detections: int | None = None) -> list[dict]:
        """Test time (sec. 3): one pass of the CNN over each image, then every proposal's RoI scored and refined,
        per-class NMS -> per image {"boxes", "scores", "labels"} in input pixels (`timed_detect` times the steps)."""
        if proposals is None:
            raise ValueError("FastRCNN.detect needs the proposals of every image")
        features = self.features(images)                                   # [B, 3, S, S] -> [B, C, S/8, S/8]
        return self.detect_regions(features, [p.to(features.dtype) for p in proposals], image_sizes,
                                   max_detections)


def postprocess_detections(class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor,
                           image_size: tuple[int, int], config, max_detections: int | None = None) -> dict:
    """One image: [P, K + 1] logits, [P, K, 4] deltas, [P, 4] proposals -> the kept (box, score, class) triples.

    Every (proposal, class) pair is a candidate with that class's probability and its own refined box; pairs
    scoring < score_threshold or with a degenerate box are dropped, then NMS runs per class and the
    `max_detections` best survive (default: the config's `detections_per_image`).
    """
    limit = config.detections_per_image if max_detections is None else max_detections
    num_classes = box_deltas.shape[1]
    scores = class_logits.float().softmax(dim=1)[:, 1:]                           # [P, K] (no background)
    boxes = decode_boxes(box_deltas.float(), proposals.float()[:, None, :], config.box_weights)   # [P, K, 4]
    boxes = clip_boxes_to_image(boxes, tuple(int(v) for v in image_size))
    classes = torch.arange(1, num_classes + 1, device=scores.device).expand_as(scores)
    boxes, scores, classes = boxes.reshape(-1, 4), scores.reshape(-1), classes.reshape(-1)
    wide = (boxes[:, 2] - boxes[:, 0] >= 1e-2) & (boxes[:, 3] - boxes[:, 1] >= 1e-2)
    keep = torch.nonzero((scores >= config.score_threshold) & wide).flatten()
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    keep = batched_nms(boxes, scores, classes, config.nms_threshold, max_output=limit)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": classes[keep]}


# ------------------------------------------------------------------------------------------------ proposals
class ProposalCache:
    """Selective Search boxes per image, computed once: in memory, and in `directory` (.npz files) if given.

    Keyed by a hash of the pixels, so the same image is found whatever record or file it came from. Each entry
    also keeps the seconds the search took, so timings stay honest when proposals come from the cache.
    """

    def __init__(self, mode: str = "fast", max_side: int | None = None, directory: str | Path | None = None):
        self.mode, self.max_side = mode, max_side
        self.directory = Path(directory) if directory else None
        self.memory: dict[str, tuple[np.ndarray, float]] = {}

    def key(self, image: np.ndarray) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        digest.update(f"{image.shape}/{self.mode}/{self.max_side}".encode())
        return digest.hexdigest()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """[H, W, 3] uint8 -> (boxes [P, 4] float32 xyxy in image pixels, best first; seconds of the search)."""
        key = self.key(image)
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.npz" if self.directory else None
        if path is not None and path.is_file():
            with np.load(path) as stored:
                entry = (stored["boxes"], float(stored["seconds"]))
        else:
            from scenekit.proposals import selective_search

            started = time.perf_counter()
            boxes = selective_search(image, mode=self.mode, max_side=self.max_side).numpy()
            entry = (boxes.astype(np.float32), time.perf_counter() - started)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(".tmp.npz")
                np.savez(temporary, boxes=entry[0], seconds=entry[1])
                temporary.replace(path)
        self.memory[key] = entry
        return entry


def select_proposals(boxes: np.ndarray, scale: float, limit: int) -> torch.Tensor:
    """Scale proposals into the fitted image, drop those under 1 pixel wide or high, keep the best `limit`."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
    wide = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes[wide][:limit]


def window_proposals(boxes: np.ndarray, window) -> np.ndarray:
    """The proposals of a whole photograph that lie in `window` (x0, y0, x1, y1), in its pixels, best first:
    `crop_target`'s rule, as for objects (at least half of the box inside, clipped to the window)."""
    return crop_target({"boxes": boxes}, window)["boxes"].astype(np.float32)


class PhotoProposals:
    """Proposals for the tiles of one photograph from one Selective Search of the whole photograph.

    `sliced_predict` asks for its tiles in `tile_windows` order, so the k-th call gets the proposals lying in
    window k (`window_proposals`), as a training window does; searching each tile instead would cost one search
    per tile. The search's seconds are counted once, with the first tile.
    """

    def __init__(self, search: ProposalCache, photo: np.ndarray, windows: np.ndarray):
        self.boxes, self.seconds = search(photo)
        self.windows, self.served = windows, 0

    def __call__(self, tile: np.ndarray) -> tuple[np.ndarray, float]:
        x0, y0, x1, y1 = (int(v) for v in self.windows[self.served])
        assert tile.shape[:2] == (y1 - y0, x1 - x0), "tiles must come in tile_windows order"
        seconds = self.seconds if self.served == 0 else 0.0
        self.served += 1
        return window_proposals(self.boxes, (x0, y0, x1, y1)), seconds


# ------------------------------------------------------------------------------------------------ data
def fit_image(image: np.ndarray, size: int) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """[H, W, 3] uint8 -> ([3, S, S] float32 in [0, 1], scale, (h, w)): scaled so the longer side is S, placed at
    the top-left corner of a zero canvas, so a box maps into the input by a multiplication by `scale`."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)   # a copy
    h, w = min(size, round(height * scale)), min(size, round(width * scale))
    if (h, w) != (height, width):
        tensor = F.interpolate(tensor[None], size=(h, w), mode="bilinear", align_corners=False,
                               antialias=scale < 1)[0]
    canvas = torch.zeros(3, size, size)
    canvas[:, :h, :w] = tensor
    return canvas, scale, (h, w)


class DetectionData(torch.utils.data.Dataset):
    """(image [3, S, S], target) pairs for the two-stage detectors.

    target: {"boxes" [N, 4] float32 in input pixels, "labels" [N] int64 class indices 1..K, "size" [2] (h, w),
    "image_id"} plus "masks" [N, S, S] uint8 (with_masks) and "proposals" [P, 4] (with a ProposalCache).
    `flip` mirrors the image and everything in its target with probability 1/2 (torch's global generator, which
    the engine seeds and checkpoints). `window` (a `tiling.RandomWindow`, training only) first cuts a window
    from each image that needs slicing, before it is fitted into S x S; other images pass untouched.

    With `pairs` (an indexable of augmented (image [H, W, 3] uint8, target) pairs of the same records, such as
    `augment.RecordPairs` with the window and augmentation as its transform), item i is fitted from pairs[i]
    instead; `window`, `flip` and `proposals` are then the pairs' business (proposals are refused).
    """

    def __init__(self, dataset, class_ids: list[int], image_size: int, *, flip: bool = False,
                 with_masks: bool = False, proposals: ProposalCache | None = None, max_proposals: int = 1000,
                 window: RandomWindow | None = None, pairs=None):
        if pairs is not None and proposals is not None:
            raise DataError("augmented images have no precomputed proposals: augment needs a detector with an "
                            "RPN (faster-rcnn, mask-rcnn)", field="augment")
        self.dataset, self.size, self.flip, self.with_masks = dataset, image_size, flip, with_masks
        self.proposals, self.max_proposals, self.window, self.pairs = proposals, max_proposals, window, pairs
        self.index_of = {cid: i + 1 for i, cid in enumerate(class_ids)}

    def __len__(self) -> int:
        return len(self.dataset.records)

    def _labels(self, record, category_ids) -> np.ndarray:
        try:
            return np.array([self.index_of[int(c)] for c in category_ids], dtype=np.int64).reshape(-1)
        except KeyError as error:
            raise DataError(f"category id {error.args[0]} is not one of the model's {sorted(self.index_of)}",
                            record=f"image id {record.image_id}", field="labels") from None

    def _fit_pair(self, record, image: np.ndarray, objects: dict):
        """An augmented pair fitted into S x S, as `__getitem__` fits a record."""
        tensor, scale, (h, w) = fit_image(image, self.size)
        boxes = clip_boxes_to_image(torch.as_tensor(np.asarray(objects["boxes"], dtype=np.float32).reshape(-1, 4))
                                    * scale, (h, w))
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        keep &= ~torch.as_tensor(np.asarray(objects["iscrowd"], dtype=bool).reshape(-1))
        target = {"boxes": boxes[keep], "labels": torch.from_numpy(self._labels(record, objects["labels"]))[keep],
                  "size": torch.tensor([h, w]), "image_id": int(record.image_id)}
        if self.with_masks:
            masks = torch.from_numpy(np.asarray(objects["masks"])[keep.numpy()]).float()       # [N, H', W']
            fitted = torch.zeros(masks.shape[0], self.size, self.size, dtype=torch.uint8)
            if masks.shape[0]:
                fitted[:, :h, :w] = (F.interpolate(masks[None], size=(h, w), mode="bilinear",
                                                   align_corners=False)[0] >= 0.5).to(torch.uint8)
            target["masks"] = fitted
        return tensor, target

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        if self.pairs is not None:
            return self._fit_pair(record, *self.pairs[index])
        photo = load_image(self.dataset, record)
        labels = self._labels(record, record.labels)
        # "ann_ids" is each object's row in the record here, so masks can be decoded for the objects kept.
        objects = {"boxes": record.boxes, "labels": labels, "iscrowd": record.iscrowd,
                   "ann_ids": np.arange(record.num_objects)}
        image, window = photo, None
        if self.window is not None and needs_slicing(photo.shape, self.window.size, self.window.factor):
            image, objects, window = cut_window(self.window, photo, objects)
        tensor, scale, (h, w) = fit_image(image, self.size)
        boxes = torch.as_tensor(np.asarray(objects["boxes"], dtype=np.float32).reshape(-1, 4)) * scale
        boxes = clip_boxes_to_image(boxes, (h, w))
        # Degenerate boxes (zero width or height after fitting) cannot be regression targets, and crowd
        # regions are not single objects to learn.
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        keep &= ~torch.as_tensor(np.asarray(objects["iscrowd"], dtype=bool).reshape(-1))
        target = {"boxes": boxes[keep], "labels": torch.from_numpy(objects["labels"])[keep],
                  "size": torch.tensor([h, w]), "image_id": int(record.image_id)}
        if self.with_masks:
            rows = np.asarray(objects["ann_ids"])[keep.numpy()]
            masks = torch.from_numpy(window_masks(record, rows, window)).float()          # [N, h', w']
            fitted = torch.zeros(masks.shape[0], self.size, self.size, dtype=torch.uint8)
            if masks.shape[0]:
                fitted[:, :h, :w] = (F.interpolate(masks[None], size=(h, w), mode="bilinear",
                                                   align_corners=False)[0] >= 0.5).to(torch.uint8)
            target["masks"] = fitted
        if self.proposals is not None:
            found = self.proposals(photo)[0]                   # searched (and cached) once per photograph
            target["proposals"] = select_proposals(found if window is None else window_proposals(found, window),
                                                   scale, self.max_proposals)
        if self.flip and bool(torch.rand(()) < 0.5):
            tensor, target = flip_horizontally(tensor, target, w)
        return tensor, target


def cut_window(window: RandomWindow, image: np.ndarray, target: dict) -> tuple[np.ndarray, dict, tuple]:
    """`window(image, target)` and the window (x0, y0, x1, y1) it cut, for what must be cut the same way
    (proposals, masks) but does not ride in the target.

    `RandomWindow` does not report where it cut. A map of pixel indices rides through it as the target's
    "semantic" map, which `crop_target` cuts with the image: its first entry is the window's top-left pixel.
    """
    height, width = image.shape[:2]
    dtype = np.int32 if height * width < 2 ** 31 else np.int64
    crop, cut = window(image, {**target, "semantic": np.arange(height * width, dtype=dtype).reshape(height, width)})
    y0, x0 = divmod(int(cut.pop("semantic")[0, 0]), width)
    return crop, cut, (x0, y0, x0 + crop.shape[1], y0 + crop.shape[0])


def window_masks(record, rows: np.ndarray, window=None) -> np.ndarray:
    """Masks [n, h, w] uint8 of the record's objects `rows`, cut to `window` (x0, y0, x1, y1; None: the whole
    image). An object without an outline gets its filled box (`record_masks(box_fallback=True)`). With a window
    the masks are decoded one object at a time: a photograph of hundreds of objects never holds all of them at
    full size ([N, H, W], 5.7 MB each on a 2300 x 2500 photograph)."""
    from dataclasses import replace

    from scenekit.data.transforms import record_masks

    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if window is None:
        return record_masks(record, box_fallback=True)[rows]
    x0, y0, x1, y1 = window
    out = np.zeros((len(rows), y1 - y0, x1 - x0), dtype=np.uint8)
    for n, k in enumerate(rows.tolist()):
        one = replace(record, boxes=record.boxes[k:k + 1], labels=record.labels[k:k + 1],
                      ann_ids=record.ann_ids[k:k + 1], iscrowd=record.iscrowd[k:k + 1],
                      difficult=record.difficult[k:k + 1], truncated=record.truncated[k:k + 1], areas=None,
                      segmentations=None if record.segmentations is None else [record.segmentations[k]])
        out[n] = record_masks(one, box_fallback=True)[0, y0:y1, x0:x1]
    return out


def flip_horizontally(image: torch.Tensor, target: dict, width: int) -> tuple[torch.Tensor, dict]:
    """Mirror the image part [0, width) of the canvas and every box (x -> width - x) and mask in the target."""
    image = image.clone()
    image[:, :, :width] = image[:, :, :width].flip(-1)
    target = dict(target)
    for key in ("boxes", "proposals"):
        if key in target:
            b = target[key]
            target[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        masks = target["masks"].clone()
        masks[:, :, :width] = masks[:, :, :width].flip(-1)
        target["masks"] = masks
    return image, target


def collate(batch):
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


# ------------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def run_detector(model: FastRCNN, images: list[np.ndarray], device, class_ids: list[int], *,
                 proposals=None, batch_size: int = 8, max_detections: int | None = None,
                 lazy_masks: bool = False) -> tuple[list[dict], dict]:
    """Detect objects in [H, W, 3] uint8 images, each fitted whole into S x S -> (per image {"boxes" [N, 4]
    float64 xyxy in image pixels, "scores" [N], "labels" [N] category ids, and "masks" [N, H, W] uint8 for Mask
    R-CNN}, seconds spent in {"conv", "proposals", "region", "paste"} over all images).

    `proposals`: a `ProposalCache` (Fast R-CNN), or any callable image -> (boxes, seconds) such as
    `PhotoProposals`. `max_detections` per image (default: the config's). `lazy_masks` gives masks as
    `TileMasks`, pasted when read (the tiles of a sliced photograph)."""
    if model.training:
        model.eval()
    size = model.config.image_size
    results, seconds = [], {"conv": 0.0, "proposals": 0.0, "region": 0.0, "paste": 0.0}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        fitted = [fit_image(image, size) for image in chunk]
        batch = torch.stack([tensor for tensor, _, _ in fitted]).to(device)
        sizes = [hw for _, _, hw in fitted]
        given = None
        if proposals is not None:
            given = []
            for image, (_, scale, _) in zip(chunk, fitted):
                boxes, spent = proposals(image)
                seconds["proposals"] += spent
                given.append(select_proposals(boxes, scale, model.config.max_proposals).to(device))
        # Batch norms folded into the convolutions: the same detections, one pass fewer per layer.
        detections, spent = timed_detect(inference_copy(model), batch, sizes, given, max_detections)
        for key, value in spent.items():
            seconds[key] += value
        for image, (_, scale, _), found in zip(chunk, fitted, detections):
            height, width = image.shape[:2]
            boxes = clip_boxes_to_image(found["boxes"].double().cpu() / scale, (height, width))
            labels = torch.as_tensor([class_ids[int(c) - 1] for c in found["labels"]], dtype=torch.int64)
            result = {"boxes": boxes, "scores": found["scores"].double().cpu(), "labels": labels}
            if "mask_probs" in found:
                masks = TileMasks(found["mask_probs"].float().cpu(), boxes, (height, width), seconds)
                result["masks"] = masks if lazy_masks else masks.paste()
            results.append(result)
    return results, seconds


@torch.no_grad()
def timed_detect(model: FastRCNN, images: torch.Tensor, image_sizes, proposals=None,
                 max_detections: int | None = None) -> tuple[list[dict], dict]:
    """`model.detect`'s steps, each timed -> (its detections, seconds in {"conv": the shared convolutions,
    "proposals": the RPN and its proposal layer (0 with given proposals: the caller times Selective Search),
    "region": RoI pooling, the head, NMS and the mask head}): the break-down of Ren et al. 2015, Table 10, that
    the evaluation reports. The clocks live here, not in the models, so that `detect` reads as the papers' steps.
    """
    clock = Stopwatch(images)
    if hasattr(model, "rpn"):                                       # FasterRCNN.detect (and Mask R-CNN's)
        features, mask_map = model.feature_maps(images)
        conv = clock.lap()
        if proposals is None:
            _, _, proposals = model.region_proposals(features, image_sizes, training=False)
        proposed = clock.lap()
        detections = model.detect_regions(features, proposals, image_sizes, max_detections)
        if model.mask_head is not None:
            detections = model.add_masks(mask_map, detections)
    else:                                                           # FastRCNN.detect
        if proposals is None:
            raise ValueError("FastRCNN.detect needs the proposals of every image")
        features = model.features(images)
        conv, proposed = clock.lap(), 0.0
        detections = model.detect_regions(features, [p.to(features.dtype) for p in proposals], image_sizes,
                                          max_detections)
    return detections, {"conv": conv, "proposals": proposed, "region": clock.lap()}


class Stopwatch:
    """Seconds between laps, read after the device has finished its queued work (CUDA runs asynchronously)."""

    def __init__(self, tensor: torch.Tensor):
        self.device = tensor.device if tensor.is_cuda else None
        self.last = self.now()

    def now(self) -> float:
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last lap (or the start)."""
        now = self.now()
        seconds, self.last = now - self.last, now
        return seconds


class TileMasks:
    """A tile's instance masks [n, h, w] as `tiling.merge_tiles` reads them, kept as the mask head's [n, m, m]
    probabilities and pasted one at a time when read (`masks[row]`). A photograph cut into hundreds of tiles
    would otherwise hold every tile's pasted masks at once before the merge keeps a few of them."""

    def __init__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], seconds: dict):
        self.mask_probs, self.boxes, self.size, self.seconds = mask_probs, boxes, size, seconds
        self.shape = (len(boxes), *size)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.paste(slice(int(row), int(row) + 1))[0]                 # [h, w]

    def paste(self, rows=slice(None)) -> torch.Tensor:
        """The masks of `rows` pasted into the tile, [n, h, w] uint8 (`roi.paste_masks`)."""
        began = time.perf_counter()
        masks = paste_masks(self.mask_probs[rows], self.boxes[rows], self.size)
        self.seconds["paste"] += time.perf_counter() - began
        return masks


def detect_any_size(model: FastRCNN, images: list[np.ndarray], device, class_ids: list[int], *,
                    proposals: ProposalCache | None = None, max_detections: int | None = None,
                    factor: float = math.inf, seconds: dict | None = None, batch_size: int = 8) -> list[dict]:
    """`run_detector` on images of any size: what the recipes' predict and evaluation run.

    Images whose longer side is at most `factor` x S are fitted whole, together, as `run_detector` does. Each
    larger one is predicted by S x S tiles at its own resolution overlapping by S / 4 (`tiling.sliced_predict`:
    detections mapped back to the photograph, each object kept from the tile that sees it whole, then
    class-aware NMS at the head's threshold), the `max_detections` best (default: the config's). This is
    `tiling.predict_any_size` with two differences: Fast R-CNN searches the whole photograph once and gives each
    tile the proposals lying in it (`PhotoProposals`), and Mask R-CNN's tiles keep their masks unpasted until
    the merge (`TileMasks`). `seconds`, when given, accumulates run_detector's timings.
    """
    size = model.config.image_size
    limit = model.config.detections_per_image if max_detections is None else max_detections
    totals = {} if seconds is None else seconds

    def detect(chunk, source=proposals, lazy_masks=False):
        found, spent = run_detector(model, chunk, device, class_ids, proposals=source, batch_size=batch_size,
                                    max_detections=limit, lazy_masks=lazy_masks)
        for key, value in spent.items():
            totals[key] = totals.get(key, 0.0) + value
        return found

    images = list(images)
    large = [needs_slicing(image.shape, size, factor) for image in images]
    whole = iter(detect([image for image, big in zip(images, large) if not big]))
    results = []
    for image, big in zip(images, large):
        if not big:
            results.append(next(whole))
            continue
        overlap = size // 4
        windows = tile_windows(image.shape[0], image.shape[1], size, overlap)
        source = None if proposals is None else PhotoProposals(proposals, image, windows)
        results.append(sliced_predict(lambda tiles: detect(tiles, source, lazy_masks=True), image, tile=size,
                                      overlap=overlap, iou_threshold=model.config.nms_threshold,
                                      max_detections=limit, batch_size=batch_size))
    return results


def evaluate_detector(model: FastRCNN, dataset, device, class_ids: list[int], *,
                      proposals: ProposalCache | None = None, batch_size: int = 8, max_detections: int | None = None,
                      factor: float = math.inf) -> dict:
    """Every detector's metrics (`scenekit.models.detection.evaluate_detections`: VOC mAP50, COCO AP, AP50, ...;
    for Mask R-CNN also its masks', `mask_AP`, ...) and milliseconds per image.

    Images are predicted as `detect_any_size` predicts them (large ones by tiles), at most `max_detections`
    each (default: the config's): VOC's mAP takes them all, COCO's stats each image's best 100 per category (its
    maxDets). `images_at_max_detections` counts the images whose detections reached that cap, where more objects
    may have been cut. Each batch's detections become COCO records (masks as RLE) before the next batch runs,
    so memory holds one batch's full-size masks, not the dataset's.

    Times: `conv_ms` (shared convolutions), `proposal_ms` (Selective Search on the CPU, or the RPN and its
    proposal layer), `region_ms` (RoI pooling, head, NMS, mask head) and `total_ms` (the three), per image.
    """
    limit = model.config.detections_per_image if max_detections is None else max_detections
    seconds = {"conv": 0.0, "proposals": 0.0, "region": 0.0, "paste": 0.0}
    results, capped, with_masks = [], 0, False
    for start in range(0, len(dataset.records), batch_size):
        chunk = dataset.records[start:start + batch_size]
        images = [load_image(dataset, record) for record in chunk]
        for record, found in zip(chunk, detect_any_size(model, images, device, class_ids, proposals=proposals,
                                                        max_detections=limit, factor=factor, seconds=seconds,
                                                        batch_size=batch_size)):
            results += coco_records(found, record.image_id)
            capped += len(found["scores"]) >= limit
            with_masks |= "masks" in found
    count = max(1, len(dataset.records))
    metrics = evaluate_detections(dataset, results, masks=with_masks)
    metrics.update({"conv_ms": 1000 * seconds["conv"] / count, "proposal_ms": 1000 * seconds["proposals"] / count,
                    "region_ms": 1000 * (seconds["region"] + seconds["paste"]) / count})
    metrics["total_ms"] = metrics["conv_ms"] + metrics["proposal_ms"] + metrics["region_ms"]
    metrics["detections_per_image"] = len(results) / count
    metrics["images_at_max_detections"] = int(capped)
    return metrics


# ------------------------------------------------------------------------------------------------ recipes
# Images up to 2.5 x the input side are fitted whole: every world image (<= 320 px) at every world input
# (>= 128 px), so the world's figures stand; larger photographs are sliced (see the module docstring).
SLICE_FACTOR = 2.5


# ------------------------------------------------------------------------------------------------ ONNX export
def two_stage_graph(model: FastRCNN):
    """Fast/Faster/Mask R-CNN's ONNX graphs (`scenekit.export`): the images' graph -- the backbone, with the RPN's
    objectness and deltas where the model has an RPN, and FPN's finer map where the mask branch reads one --
    then the RoI heads on features + RoIs as parts ("head"; "mask_head" where the model has a mask branch),
    their RoI operators as ONNX's (`export_parts.roi_features`). Proposals, NMS and mask pasting stay in Python."""
    from scenekit.models.export_parts import ROI_ALIGN_OPSET, ExportGraph, ExportPart, Tupled, roi_features

    c, scale = model.config, 1.0 / model.features.stride
    images = torch.rand(1, 3, c.image_size, c.image_size)
    masks = getattr(model, "mask_head", None) is not None
    # A mask branch that reads FPN's finer level: the images' graph gives that map as a fourth output.
    fine_mask_map = masks and model.mask_stride != model.features.stride
    if hasattr(model, "rpn"):
        def backbone_and_rpn(images):
            if fine_mask_map:
                features, mask_map = model.feature_maps(images)        # [B, C, H/8, W/8], [B, C, H/4, W/4]
            else:
                features = model.features(images)                     # [B, 3, H, W] -> [B, C, H/s, W/s]
            objectness, deltas = model.rpn(features)                   # -> [B, HWA], [B, HWA, 4]
            return (features, objectness, deltas) + ((mask_map,) if fine_mask_map else ())
        graph = ExportGraph("two-stage", Tupled(model, backbone_and_rpn), images,
                            ["features", "objectness", "deltas"] + (["mask_features"] if fine_mask_map else []),
                            True)
    else:
        graph = ExportGraph("fast-rcnn", Tupled(model, model.features), images, ["features"], True)
    with torch.no_grad():
        features = model.features(images).contiguous()
        mask_map = model.feature_maps(images)[1].contiguous() if fine_mask_map else features
    boxes = torch.tensor([[4.0, 6.0, 60.0, 90.0], [30.0, 10.0, 150.0, 120.0], [0.0, 0.0, 12.0, 9.0]])
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)         # [R, 5] (image index, x1, y1, x2, y2)
    inputs = {"features": {0: "batch", 2: "height", 3: "width"}, "rois": {0: "rois"}}

    def classify_regions(features, rois):      # FastRCNN.classify_regions, its RoI operator as ONNX's
        return model.box_head(roi_features(features, rois, c.roi_size, scale, c.roi_op == "align"))
    graph.parts.append(ExportPart("head", Tupled(model, classify_regions), (features, rois), ["features", "rois"],
                                  ["class_logits", "box_deltas"],
                                  {**inputs, "class_logits": {0: "rois"}, "box_deltas": {0: "rois"}}))
    if masks:
        def mask_logits(mask_map, rois):       # MaskRCNN.mask_logits, its RoIAlign as ONNX's
            return model.mask_head(roi_features(mask_map, rois, c.mask_size // 2, 1.0 / model.mask_stride, True))
        graph.parts.append(ExportPart("mask_head", Tupled(model, mask_logits), (mask_map, rois),
                                      ["features", "rois"], ["mask_logits"], {**inputs, "mask_logits": {0: "rois"}}))
    if masks or c.roi_op == "align":
        graph.min_opset, graph.min_opset_reason = ROI_ALIGN_OPSET, "RoiAlign's half_pixel mode"
    return graph


def two_stage_from_onnx(skeleton: FastRCNN, graphs) -> FastRCNN:
    """The model's own `detect` with onnxruntime answering its tensor stages: the backbone (+ RPN) from the main
    graph, `classify_regions` (and `mask_logits`) from the parts; proposals and NMS run here in Python."""
    from scenekit.models.export_parts import OnnxFunction, OnnxModule

    if hasattr(skeleton, "rpn"):
        skeleton.features = _OnnxBackboneAndRPN(graphs.main, skeleton.features)
        skeleton.rpn = _RPNOutputs(skeleton.features)
        if "mask_features" in graphs.metadata["outputs"]:
            skeleton.feature_maps = _OnnxFeatureMaps(skeleton.features)
    else:
        skeleton.features = OnnxModule(graphs.main, skeleton.features)
    skeleton.classify_regions = OnnxFunction(graphs.parts["head"])
    if "mask_head" in graphs.parts:
        skeleton.mask_logits = OnnxFunction(graphs.parts["mask_head"])
    return skeleton


class _OnnxBackboneAndRPN(nn.Module):
    """`model.features` of Faster/Mask R-CNN from ONNX: one onnxruntime call gives the features and the RPN's
    outputs; it returns the features and keeps the rest for `_RPNOutputs`, which `model.rpn` becomes (per thread:
    the web demo may predict in several at once). Other attributes (stride, ...) come from `skeleton`."""

    def __init__(self, session, skeleton: nn.Module):
        import threading

        super().__init__()
        self.session, self.skeleton = session, skeleton
        self.kept = threading.local()

    def forward(self, images: torch.Tensor):
        self.kept.outputs = self.session.tensors(images)           # features, objectness, deltas (, mask map)
        return self.kept.outputs[0]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["skeleton"], name)


class _RPNOutputs(nn.Module):
    """`model.rpn(features)` answered from the backbone's onnxruntime call on the same images."""

    def __init__(self, backbone: _OnnxBackboneAndRPN):
        super().__init__()
        self.backbone = [backbone]                                  # a list: not registered as a child module

    def forward(self, features: torch.Tensor):
        last = getattr(self.backbone[0].kept, "outputs", ())
        if not last or features is not last[0]:
            from scenekit.errors import ScenekitError

            raise ScenekitError("the ONNX RPN answers only for the features its backbone call just returned")
        return last[1], last[2]


class _OnnxFeatureMaps:
    """`MaskRCNN.feature_maps(images)` (shared map, FPN's finer map for the mask branch) from one backbone call."""

    def __init__(self, backbone: _OnnxBackboneAndRPN):
        self.backbone = backbone

    def __call__(self, images: torch.Tensor):
        features = self.backbone(images)
        return features, self.backbone.kept.outputs[3]


def tiled_epoch(dataset, size: int, factor: float):
    """`dataset` with each record that `needs_slicing` at `size` repeated once per tile prediction cuts from it
    (`tiling.tile_windows` at `predict_any_size`'s overlap of a quarter tile), so that an epoch of random windows
    shows about as much of a photograph as its tiles do (`scenekit.data.recommend`, rule 5). Datasets without
    such images come back as they are (the world's, at the recipes' `slice_factor`)."""
    repeats = [len(tile_windows(r.height, r.width, size, size // 4))
               if factor < math.inf and needs_slicing((r.height, r.width), size, factor) else 1
               for r in dataset.records]
    if all(count == 1 for count in repeats):
        return dataset
    # the copies go after the records, so item i < len(dataset) is still record i
    extra = [record for record, count in zip(dataset.records, repeats) for _ in range(count - 1)]
    return replace(dataset, records=[*dataset.records, *extra])


AUGMENT_PRESETS = ("world", "user", "top-down", "none")


def augment_options(augment: str):
    """The `scenekit.data.augment.AugmentOptions` of an `augment` preset; None for "world" (the recipe's own flip)."""
    from scenekit.data.augment import TOP_DOWN_DEFAULTS, USER_DATA_DEFAULTS, AugmentOptions

    if augment not in AUGMENT_PRESETS:
        raise DataError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, got {augment!r}", field="augment")
    return {"world": None, "user": USER_DATA_DEFAULTS, "top-down": TOP_DOWN_DEFAULTS,
            "none": AugmentOptions(hflip=False, scale_jitter=0.0, color_jitter=0.0, crop=False, mosaic=0.0)}[augment]


def slicing_factor(slice_factor) -> float:
    """The recipes' `slice_factor` as `tiling.needs_slicing`'s factor: 0 never slices (infinity)."""
    if isinstance(slice_factor, bool) or not isinstance(slice_factor, (int, float)) \
            or not (slice_factor == 0 or 1 <= slice_factor < math.inf):
        raise DataError(f"slice_factor must be 0 (never slice) or a number >= 1, got {slice_factor!r}",
                        field="slice_factor")
    return math.inf if slice_factor == 0 else float(slice_factor)


def check_max_detections(max_detections) -> int:
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise DataError(f"max_detections must be a positive integer, got {max_detections!r}",
                        field="max_detections")
    return max_detections


def two_stage_recipe(name: str, categories: dict, config, options: TwoStageOptions, *, build,
                     proposals: ProposalCache | None = None, with_masks: bool = False,
                     augment: str = "world") -> Recipe:
    """The recipe the three detectors share: one end-to-end phase (AdamW, warm-up, cosine decay), `options`
    resolved (epochs and lr set) and stored in the recipe as they are.

    Images larger than `slice_factor` x S train on random S x S windows and are predicted and evaluated by
    tiles (`detect_any_size`), at most `max_detections` per image; both are recipe options, stored in every
    checkpoint, so a restored model slices and caps as it was trained to (a recipe rebuilt with another
    `max_detections`, as `scenekit predict --max-detections` does, caps at that instead).
    """
    class_ids = sorted(int(c) for c in categories)
    factor, max_detections = slicing_factor(options.slice_factor), check_max_detections(options.max_detections)
    flip, augmentation = options.flip, augment_options(augment)
    phases = [Phase("detect", epochs=options.epochs, lr=options.lr, optimizer="adamw", weight_decay=1e-4,
                    schedule="cosine", warmup_steps=50, clip_grad_norm=10.0)]
    model_config = asdict(config)
    model_config = {k: list(v) if isinstance(v, tuple) else v for k, v in model_config.items()}

    def make_dataset(dataset, train):
        window = RandomWindow(config.image_size, factor=factor) if train and factor < math.inf else None
        if train:
            dataset = tiled_epoch(dataset, config.image_size, factor)
        if not train or augmentation is None:
            return DetectionData(dataset, class_ids, config.image_size, flip=flip and train, with_masks=with_masks,
                                 proposals=proposals, max_proposals=config.max_proposals, window=window)
        from scenekit.data.augment import RecordPairs, build_augmentation

        # seed=None: the engine seeds torch per run, worker and epoch (augment.OwnStream)
        steps = build_augmentation(augmentation, None, size=config.image_size, fill=0)
        pairs = RecordPairs(dataset, with_masks=with_masks, box_fallback=True,
                            transform=steps if window is None else Compose([window, steps]))
        return DetectionData(dataset, class_ids, config.image_size, with_masks=with_masks,
                             proposals=None if proposals is None else proposals, pairs=pairs,
                             max_proposals=config.max_proposals)

    def predict(model, images, device):
        return detect_any_size(model, list(images), device, class_ids, proposals=proposals,
                               max_detections=max_detections, factor=factor)

    def evaluate(model, dataset, device):
        return evaluate_detector(model, dataset, device, class_ids, proposals=proposals,
                                 max_detections=max_detections, factor=factor)

    return Recipe(model_name=name, categories=dict(categories), options=stored_options(options),
                  model_config=model_config, build_model=build, phases=phases, make_dataset=make_dataset,
                  collate=collate, evaluate=evaluate, predict=predict, best_metric="mAP50", best_mode="max",
                  world={"image_size": options.image_size},
                  batch_size=4,        # few images per step, many RoIs each (Girshick 2015 uses N = 2 images)
                  export=two_stage_graph, from_onnx=two_stage_from_onnx)


def config_from_dict(config_class, values: dict):
    """A config dataclass from a checkpoint's plain dict (lists back to tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_class(**values)


@dataclass
class TwoStageOptions:
    """The options the two-stage detectors share (Fast, Faster and Mask R-CNN's recipes, `--option KEY=VALUE`)."""

    image_size: int = option(160, "network input side S, px: the longer side is scaled to S, padded to S x S")
    backbone: str = option("small", "'small' | 'vgg16' | 'resnet18' | 'resnet50'")
    backbone_weights: str | None = option(None, "torchvision-format state dict of the backbone (None: from scratch)")
    freeze_stages: int = option(0, "the backbone's first stages kept fixed, e.g. 2 with pretrained weights (0: none)")
    channels: tuple[int, ...] = option((16, 32, 64), "small backbone: stage widths (stride 2 ** stages)")
    extra_convs: int = option(2, "small backbone: 3x3 convolutions after the last stage (receptive field)")
    norm: str = option("batch", "small backbone: normalisation, 'batch' | 'group' | 'none'")
    hidden: int = option(256, "width of the box head's two fully connected layers (4096 in the paper)")
    rois_per_image: int = option(64, "RoIs sampled per training image, 25% foreground (the paper: 128 / 2)")
    bg_low: float = option(0.1, "background RoIs have IoU in [bg_low, 0.5) with every object")
    epochs: int | None = option(None, "training epochs (None: the recipe's)")
    lr: float | None = option(None, "peak learning rate of AdamW (None: 0.001)")
    flip: bool = option(True, "random horizontal flip in training")
    max_detections: int = option(100, "detections per image (after merging the tiles of a photograph)")
    slice_factor: float = option(SLICE_FACTOR, "images longer than this x image_size are tiled (0: never)")


@dataclass
class FastRCNNOptions(TwoStageOptions):
    """Fast R-CNN's options: the shared ones, and its Selective Search proposals."""

    epochs: int | None = option(None, "training epochs (None: 6)")
    proposal_mode: str = option("fast", "Selective Search mode: 'fast' (as in the paper) | 'quality' | 'single'")
    proposal_cache: str | None = option(None, "folder where each image's proposals are kept (.npz)")
    max_proposals: int = option(1000, "Selective Search's best proposals per image fed to the head")


def recipe(categories: dict, *, name: str = "fast-rcnn", **options) -> Recipe:
    """Fast R-CNN on Selective Search proposals ("fast" mode), trained end to end with the multitask loss.

    `proposal_cache`: a folder where each image's proposals are stored (.npz), so later runs skip the search.
    `max_detections`: detections per image (100). `slice_factor`: images whose longer side is more than this
    times `image_size` train on windows and are predicted by tiles; 2.5 keeps every world image (<= 320 px)
    whole as before, 0 never slices (module docstring). Selective Search runs once per photograph.
    """
    o = read_options(FastRCNNOptions, options, name)
    o = replace(o, epochs=6 if o.epochs is None else o.epochs, lr=1e-3 if o.lr is None else o.lr)
    config = FastRCNNConfig(num_classes=len(categories), image_size=o.image_size, backbone=o.backbone,
                            channels=tuple(o.channels), extra_convs=o.extra_convs, norm=o.norm,
                            backbone_weights=o.backbone_weights, freeze_stages=o.freeze_stages, hidden=o.hidden, rois_per_image=o.rois_per_image,
                            bg_low=o.bg_low, max_proposals=o.max_proposals,
                            detections_per_image=check_max_detections(o.max_detections))
    return two_stage_recipe(name, categories, config, o,
                            build=lambda values: FastRCNN(config_from_dict(FastRCNNConfig, values)),
                            proposals=ProposalCache(o.proposal_mode, directory=o.proposal_cache))
