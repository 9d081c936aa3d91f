"""R-CNN: regions with CNN features (Girshick, Donahue, Darrell & Malik 2014).

Test time (sec. 2.2), per image:

1. Selective Search proposals ("fast" mode, ~2000 per image in the paper; `scenekit.proposals`).
2. Every proposal is warped, whatever its aspect ratio, to the CNN's S x S input with p pixels of context
   around the box (App. A: "warp with context padding", p = 16 at S = 227); image parts the dilated box takes
   from outside the image are the image mean, i.e. zero after the mean is subtracted.
3. The CNN computes each region's features on its own: one forward pass per region, the cost Fast R-CNN removes.
4. One linear SVM per class scores the fc7 features; a class-specific ridge regressor on the pool5 features
   moves each scored box (App. C); greedy NMS per class rejects a box overlapping a higher-scoring one of its
   class by IoU > 0.3 (the authors' code).

Training (sec. 2.3) runs in four stages, each reading what the previous one wrote (`train_rcnn`):

1. Fine-tune the CNN as a (K + 1)-way classifier on warped proposals: a proposal with IoU >= 0.5 with a
   ground-truth box is a positive of that box's class, every other one background; each mini-batch samples
   32 positive windows (over all classes) and 96 background windows, because positives are rare.
2. Extract every training region's features with the fine-tuned CNN and cache them on disk, one file per image
   (the paper's pipeline did the same, at hundreds of gigabytes for VOC).
3. Train one linear SVM per class: positives are the ground-truth boxes only, negatives the proposals with
   IoU < 0.3 with every box of the class (App. B explains why these differ from fine-tuning's labels), with
   the standard hard negative mining (Felzenszwalb et al. 2010): train on a cache of negatives, add the
   negatives that violate the margin (score > -1), drop the easy ones (score < -1.2), repeat until no negative
   outside the cache violates the margin -- then the cache's SVM is the SVM of all negatives.
4. Fit the box regressors: ridge regression from pool5 features of proposals with IoU >= 0.6 with a ground-truth
   box of the class to the targets t_x, t_y, t_w, t_h of that box (App. C, eqs. 6-9).

Scaled for a CPU: the network is a small CNN trained from scratch on the regions (the paper fine-tuned an
ImageNet-trained AlexNet); S defaults to 32 instead of 227 and p is scaled with it (p = round(16 S / 227) = 2);
fc6/fc7 have 256 units instead of 4096. Features are scaled so their mean L2 norm is 20 before the SVMs and the
regressors, as in the authors' code. The SVMs minimise the squared hinge (an L2-SVM) with full-batch L-BFGS
where the paper used liblinear's hinge loss; positives weigh 2 as there, C = 0.01 (0.001 in the paper) and the
ridge lambda = 1000 as in the paper were picked on the world's validation split, as was the test-time score
threshold -1 (the mining margin: weaker detections still add to AP).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.boxes import box_iou, clip_boxes_to_image, decode_boxes, encode_boxes
from scenekit.data.transforms import load_image
from scenekit.errors import DataError, ScenekitError
from scenekit.models.backbones import build_backbone
from scenekit.models.detection import coco_records, evaluate_detections
from scenekit.nms import batched_nms
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options

FEATURE_NORM = 20.0          # target mean L2 norm of features fed to SVMs / regressors (authors' code)


@dataclass
class RCNNConfig:
    num_classes: int                       # K object classes
    input_size: int = 32                   # S: side of the warped region (227 in the paper)
    padding: int | None = None             # p: context pixels around the box at size S; None: round(16 S / 227)
    backbone: str = "small"                # "small" | "vgg16" | "resnet18" | "resnet50"
    channels: tuple[int, ...] = (16, 32, 64)   # small backbone: [3x3 conv, norm, ReLU, 2x2 pool] per stage
    norm: str = "batch"
    backbone_weights: str | None = None
    hidden: int = 256                      # fc6 and fc7 width (4096 in the paper)
    dropout: float = 0.5                   # after fc6 and fc7, as in the paper's network
    proposal_mode: str = "fast"            # Selective Search mode
    proposal_max_side: int | None = None   # search a downscaled copy of larger images (None: as given)
    max_proposals: int = 2000              # best-ranked proposals kept per image
    score_threshold: float = -1.0          # test time: keep SVM scores above this (the mining margin)
    nms_threshold: float = 0.3             # test time: per-class greedy NMS
    detections_per_image: int = 100

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.padding is None:
            self.padding = round(16 * self.input_size / 227)
        if not 0 <= 2 * self.padding < self.input_size:
            raise ValueError(f"padding must satisfy 0 <= 2 p < input_size, got p = {self.padding}, "
                             f"S = {self.input_size}")


# ------------------------------------------------------------------------------------------------ warping
def context_boxes(boxes: torch.Tensor, size: int, padding: float) -> torch.Tensor:
    """The image rectangle warped to the S x S input so the box lands p pixels inside each edge (App. A).

    A box of width w becomes S - 2p pixels wide, so the crop is the box scaled about its centre by
    S / (S - 2p) in both directions (the authors' rcnn_im_crop.m, in continuous coordinates):
    [N, 4] xyxy -> [N, 4] xyxy, possibly reaching outside the image.
    """
    if not 0 <= 2 * padding < size:
        raise ValueError(f"padding must satisfy 0 <= 2 p < size, got p = {padding}, size = {size}")
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2                      # [N, 2]
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (size / (size - 2 * padding))
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(image: torch.Tensor, boxes: torch.Tensor, size: int, padding: float = 0) -> torch.Tensor:
    """Crop each box with context and warp it anisotropically to size x size (R-CNN's region input, App. A).

    image: [C, H, W] float, mean already subtracted; boxes: [N, 4] xyxy pixels with continuous edges.
    Output pixel (i, j) samples the crop at its own centre, bilinearly (the authors resize without
    antialiasing too); samples whose centre falls outside the image are 0 = the image mean. -> [N, C, S, S].
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4], got shape {tuple(boxes.shape)}")
    channels, height, width = image.shape
    if boxes.shape[0] == 0:
        return image.new_zeros(0, channels, size, size)
    crops = context_boxes(boxes.to(torch.float32), size, padding)                  # [N, 4]
    centres = torch.arange(size, dtype=torch.float32, device=image.device) + 0.5   # [S] output pixel centres
    step = (crops[:, 2:] - crops[:, :2]) / size                                    # [N, 2] pixels per output px
    xs = crops[:, 0:1] + centres[None] * step[:, 0:1]                              # [N, S] continuous x
    ys = crops[:, 1:2] + centres[None] * step[:, 1:2]                              # [N, S] continuous y
    inside = (((ys >= 0) & (ys < height))[:, :, None]
              & ((xs >= 0) & (xs < width))[:, None, :])                            # [N, S, S]
    # Pixel i covers [i, i + 1); bilinear weights are taken between pixel centres, clamped at the border.
    xs = (xs - 0.5).clamp(0, width - 1)
    ys = (ys - 0.5).clamp(0, height - 1)
    x0, y0 = xs.floor().long(), ys.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = (xs - x0)[:, None, :], (ys - y0)[:, :, None]                           # [N, 1, S], [N, S, 1]

    def tap(rows, cols):                                                           # -> [C, N, S, S]
        return image[:, rows[:, :, None], cols[:, None, :]]

    warped = ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x1))
              + wy * ((1 - wx) * tap(y1, x0) + wx * tap(y1, x1)))
    warped = warped * inside
    return warped.permute(1, 0, 2, 3).contiguous()                                 # [N, C, S, S]


# ------------------------------------------------------------------------------------------------ network
class RCNN(nn.Module):
    """The region network plus the detectors trained on its features.

    Parameters: `features` (conv layers, ending in "pool5"), `fc` (fc6, fc7) and `classifier` (the (K + 1)-way
    softmax layer used only for fine-tuning; the SVMs replace it at test time). Buffers: the pixel mean, the
    feature scales, the SVMs (`svm_weight [K, D7]`, `svm_bias [K]`) and the box regressors
    (`box_weight [K, 4, D5]`, `box_bias [K, 4]`), so one state dict holds the whole detector.
    """

    def __init__(self, config: RCNNConfig):
        super().__init__()
        self.config = config
        if config.backbone == "small":
            self.features = build_backbone("small", channels=config.channels, norm=config.norm)
        else:
            self.features = build_backbone(config.backbone, weights=config.backbone_weights)
        with torch.no_grad():
            self.features.eval()
            pool5_dim = self.features(torch.zeros(1, 3, config.input_size, config.input_size)).numel()
            self.features.train()
        self.pool5_dim = pool5_dim
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(pool5_dim, config.hidden), nn.ReLU(inplace=True),
                                nn.Dropout(config.dropout), nn.Linear(config.hidden, config.hidden),
                                nn.ReLU(inplace=True), nn.Dropout(config.dropout))
        self.classifier = nn.Linear(config.hidden, config.num_classes + 1)
        k = config.num_classes
        self.register_buffer("pixel_mean", torch.full((3,), 0.5))
        self.register_buffer("fc7_scale", torch.ones(()))
        self.register_buffer("pool5_scale", torch.ones(()))
        self.register_buffer("svm_weight", torch.zeros(k, config.hidden))
        self.register_buffer("svm_bias", torch.zeros(k))
        self.register_buffer("box_weight", torch.zeros(k, 4, pool5_dim))
        self.register_buffer("box_bias", torch.zeros(k, 4))

    def region_features(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, 3, S, S] warped regions -> (pool5 [R, D5], fc7 [R, D7])."""
        pool5 = self.features(windows).flatten(1)          # [R, C, h, w] -> [R, D5]
        return pool5, self.fc(pool5)                       # -> [R, D7]

    def forward(self, windows: torch.Tensor, labels: torch.Tensor | None = None):
        """Fine-tuning: [R, 3, S, S] -> logits [R, K + 1]; with `labels` [R] (0 = background) the loss dict."""
        logits = self.classifier(self.region_features(windows)[1])
        if labels is None:
            return logits
        return {"classification": F.cross_entropy(logits, labels)}

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 -> [3, H, W] float in [0, 1] minus the training pixel mean."""
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return tensor.sub_(self.pixel_mean.cpu()[:, None, None])

    def warp(self, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
        return warp_regions(self.image_tensor(image), boxes, self.config.input_size, self.config.padding)


def weights_fingerprint(model: RCNN) -> str:
    """A short hash of everything that determines a region's features (weights, pixel mean, S, p)."""
    digest = hashlib.sha1()
    state = model.state_dict()
    for name in sorted(state):
        if name.startswith(("features.", "fc.")) or name == "pixel_mean":
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    digest.update(f"{model.config.input_size}/{model.config.padding}".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ proposals
def image_key(image: np.ndarray) -> str:
    """Content hash of an image, so caches find it whatever record or file it came from."""
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


class ProposalStore:
    """Selective Search boxes per image, computed once: in memory, and as .npz files in `directory` if given.

    Each entry keeps the seconds the search took, so inference timings stay honest when proposals are cached.
    """

    def __init__(self, mode: str = "fast", max_side: int | None = None, directory: str | Path | None = None):
        self.mode, self.max_side = mode, max_side
        self.directory = Path(directory) if directory else None
        self.memory: dict[str, tuple[torch.Tensor, float]] = {}
        self.searches = 0                                  # how many times Selective Search actually ran

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, float]:
        """[H, W, 3] uint8 -> (boxes [P, 4] float32 xyxy, best first; seconds of the search)."""
        key = f"{image_key(image)}-{self.mode}-{self.max_side}"
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.npz" if self.directory else None
        if path is not None and path.is_file():
            with np.load(path) as stored:
                entry = (torch.from_numpy(stored["boxes"]), float(stored["seconds"]))
        else:
            from scenekit.proposals import selective_search

            started = time.perf_counter()
            boxes = selective_search(image, mode=self.mode, max_side=self.max_side)
            entry = (boxes.to(torch.float32), time.perf_counter() - started)
            self.searches += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_name(path.stem + ".tmp.npz")
                np.savez(temporary, boxes=entry[0].numpy(), seconds=entry[1])
                temporary.replace(path)
        self.memory[key] = entry
        return entry


def usable_proposals(boxes: torch.Tensor, limit: int) -> torch.Tensor:
    """The best `limit` proposals at least 1 pixel wide and high."""
    boxes = boxes.reshape(-1, 4).to(torch.float32)
    wide = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes[wide][:limit]


# ------------------------------------------------------------------------------------------------ SVMs
@dataclass
class LinearSVM:
    weight: torch.Tensor        # [D]
    bias: torch.Tensor          # []

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight + self.bias      # [N, D] -> [N]


def train_linear_svm(features: torch.Tensor, labels: torch.Tensor, *, C: float = 1e-3,
                     positive_weight: float = 2.0, init: LinearSVM | None = None,
                     max_iter: int = 500) -> LinearSVM:
    """Primal L2-regularised squared-hinge SVM by full-batch L-BFGS.

    Minimises 0.5 ||w||^2 + C sum_i c_i max(0, 1 - y_i (w . x_i + b))^2 with c_i = `positive_weight` for
    positives (liblinear's -w1, as in the authors' code) and 1 for negatives; the bias is not regularised.
    features [N, D], labels [N] in {+1, -1}.
    """
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)}, "
                         f"{tuple(labels.shape)}")
    x = features.to(torch.float64)
    y = labels.to(torch.float64)
    cost = C * torch.where(y > 0, torch.full_like(y, positive_weight), torch.ones_like(y))
    w = (init.weight.clone() if init is not None else torch.zeros(x.shape[1], dtype=torch.float64))
    b = (init.bias.clone() if init is not None else torch.zeros((), dtype=torch.float64))
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        slack = (1 - y * (x @ w + b)).clamp(min=0)
        loss = 0.5 * (w * w).sum() + (cost * slack * slack).sum()
        loss.backward()
        return loss

    if len(y):
        optimizer.step(objective)
    return LinearSVM(w.detach(), b.detach())


@dataclass
class MiningRound:
    svm: LinearSVM              # the SVM trained on the cache at the start of this round
    mined: torch.Tensor         # indices of negatives added: outside the cache with score > hard_threshold
    evicted: torch.Tensor       # indices dropped from the cache: score < easy_threshold
    cache_size: int             # negatives in the cache the SVM was trained on


def train_svm_hard_negatives(positives: torch.Tensor, negatives: torch.Tensor, *, C: float = 1e-3,
                             positive_weight: float = 2.0, initial_negatives: int = 2000,
                             hard_threshold: float = -1.0, easy_threshold: float = -1.2,
                             max_rounds: int = 20, generator: torch.Generator | None = None
                             ) -> tuple[LinearSVM, list[MiningRound]]:
    """One class's SVM with hard negative mining (Girshick et al. 2014, sec. 2.3; Felzenszwalb et al. 2010).

    The cache starts with `initial_negatives` random negatives. Each round trains on positives + cache, then
    scores every negative: those outside the cache that violate the margin (score > -1) are added, cached
    ones that are easy (score < -1.2, zero loss and gradient) are dropped. When no negative outside the cache
    violates the margin, the last SVM minimises the objective over *all* negatives too (the others add zero
    loss and zero gradient), and mining stops. positives [P, D], negatives [N, D] ->
    (the SVM, one `MiningRound` per round).
    """
    num_negatives = negatives.shape[0]
    in_cache = torch.zeros(num_negatives, dtype=torch.bool)
    start = torch.randperm(num_negatives, generator=generator)[:initial_negatives]
    in_cache[start] = True
    rounds: list[MiningRound] = []
    svm = None
    for _ in range(max_rounds):
        cache = torch.nonzero(in_cache).flatten()
        features = torch.cat([positives, negatives[cache]])
        labels = torch.cat([torch.ones(len(positives)), -torch.ones(len(cache))])
        svm = train_linear_svm(features, labels, C=C, positive_weight=positive_weight, init=svm)
        scores = svm.score(negatives)                                           # [N]
        mined = torch.nonzero(~in_cache & (scores > hard_threshold)).flatten()
        evicted = torch.nonzero(in_cache & (scores < easy_threshold)).flatten()
        rounds.append(MiningRound(svm, mined, evicted, int(len(cache))))
        if len(mined) == 0:
            break
        in_cache[mined] = True
        in_cache[evicted] = False
    return svm, rounds


# ------------------------------------------------------------------------------------------------ box regression
def regression_targets(proposals: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """App. C, eqs. (6)-(9): t_x = (G_x - P_x) / P_w, t_y = (G_y - P_y) / P_h, t_w = log(G_w / P_w),
    t_h = log(G_h / P_h), with (x, y) the centres. [N, 4], [N, 4] xyxy -> [N, 4]."""
    return encode_boxes(gt_boxes, proposals)


def apply_regression(proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """App. C, eqs. (1)-(4), the inverse of `regression_targets`: [N, 4] boxes, [N, 4] deltas -> [N, 4]."""
    return decode_boxes(deltas, proposals)


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_W,b ||T - X W^T - b||^2 + ridge ||W||^2, the bias unregularised (App. C's regularised least
    squares): X [N, D], T [N, 4] -> (W [4, D], b [4]). Solved on centred data in float64."""
    x = features.to(torch.float64)
    t = targets.to(torch.float64)
    x_mean, t_mean = x.mean(0), t.mean(0)
    xc, tc = x - x_mean, t - t_mean
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64)     # [D, D]
    weight = torch.linalg.solve(gram, xc.T @ tc).T                             # [4, D]
    return weight, t_mean - weight @ x_mean


# ------------------------------------------------------------------------------------------------ detection
def _chunks(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


@torch.no_grad()
def detect(model: RCNN, image: np.ndarray, proposals: torch.Tensor, device=None,
           chunk: int = 512, max_detections: int | None = None) -> tuple[dict, dict]:
    """R-CNN's test pass on one image (sec. 2.2) -> ({"boxes" [N, 4] float64 xyxy, "scores" [N] (SVM margins),
    "labels" [N] class indices 1..K}, seconds spent {"warp", "cnn", "post"}).

    Every proposal is warped and run through the CNN on its own; SVMs score its fc7 features; for each
    (region, class) scoring above the threshold the class's regressor moves the box; per-class NMS follows and
    keeps the `max_detections` best (default: the config's `detections_per_image`).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an [H, W, 3] uint8 array, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    config = model.config
    device = device or next(model.parameters()).device
    height, width = image.shape[:2]
    proposals = usable_proposals(proposals, config.max_proposals)
    empty = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "scores": torch.zeros(0, dtype=torch.float64),
             "labels": torch.zeros(0, dtype=torch.int64)}
    seconds = {"warp": 0.0, "cnn": 0.0, "post": 0.0}
    if len(proposals) == 0:
        return empty, seconds
    model.eval()
    began = time.perf_counter()
    windows = model.warp(image, proposals)                                     # [P, 3, S, S]
    seconds["warp"] = time.perf_counter() - began
    began = time.perf_counter()
    pool5_parts, score_parts = [], []
    for part in _chunks(len(windows), chunk):
        pool5, fc7 = model.region_features(windows[part].to(device))
        pool5_parts.append(pool5)
        score_parts.append((fc7 * model.fc7_scale) @ model.svm_weight.T + model.svm_bias)   # [p, K]
    pool5, scores = torch.cat(pool5_parts), torch.cat(score_parts)            # [P, D5], [P, K]
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds["cnn"] = time.perf_counter() - began
    began = time.perf_counter()
    region, klass = torch.nonzero(scores > config.score_threshold, as_tuple=True)   # pairs above threshold
    if len(region) == 0:
        seconds["post"] = time.perf_counter() - began
        return empty, seconds
    features = pool5[region] * model.pool5_scale                               # [M, D5]
    deltas = torch.einsum("md,mjd->mj", features, model.box_weight[klass]) + model.box_bias[klass]   # [M, 4]
    boxes = apply_regression(proposals.to(deltas)[region], deltas).double().cpu()
    boxes = clip_boxes_to_image(boxes, (height, width))
    found_scores = scores[region, klass].double().cpu()
    labels = (klass + 1).cpu()
    wide = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    boxes, found_scores, labels = boxes[wide], found_scores[wide], labels[wide]
    limit = config.detections_per_image if max_detections is None else max_detections
    keep = batched_nms(boxes, found_scores, labels, config.nms_threshold, max_output=limit)
    seconds["post"] = time.perf_counter() - began
    return {"boxes": boxes[keep], "scores": found_scores[keep], "labels": labels[keep]}, seconds


def run_rcnn(model: RCNN, images: list[np.ndarray], class_ids: list[int], proposals: ProposalStore,
             device=None, max_detections: int | None = None) -> tuple[list[dict], dict]:
    """Detect in [H, W, 3] uint8 images -> (per image {"boxes", "scores", "labels" category ids}, at most
    `max_detections` each, seconds over all images {"proposals", "warp", "cnn", "post"}, and "regions", the
    number of regions run)."""
    results, totals = [], {"proposals": 0.0, "warp": 0.0, "cnn": 0.0, "post": 0.0, "regions": 0}
    ids = torch.tensor(class_ids, dtype=torch.int64)
    for image in images:
        boxes, searched = proposals(image)
        totals["proposals"] += searched
        totals["regions"] += len(usable_proposals(boxes, model.config.max_proposals))
        found, seconds = detect(model, image, boxes, device, max_detections=max_detections)
        for key, value in seconds.items():
            totals[key] += value
        found["labels"] = ids[found["labels"] - 1] if len(found["labels"]) else found["labels"]
        results.append(found)
    return results, totals


def evaluate_rcnn(model: RCNN, dataset, device, class_ids: list[int], proposals: ProposalStore,
                  max_detections: int | None = None) -> dict:
    """Every detector's metrics (`scenekit.models.detection.evaluate_detections`: VOC mAP50, COCO AP, AP50, ...)
    and milliseconds per image: `proposal_ms` (Selective Search), `warp_ms` (cropping and warping every region),
    `cnn_ms` (the per-region CNN and the SVMs), `post_ms` (regression and NMS), `total_ms`; and
    `regions_per_image`, the number of CNN passes per image. At most `max_detections` per image (default: the
    config's), all of which VOC's mAP takes."""
    images = [load_image(dataset, record) for record in dataset.records]
    found, seconds = run_rcnn(model, images, class_ids, proposals, device, max_detections=max_detections)
    results = [r for record, f in zip(dataset.records, found) for r in coco_records(f, record.image_id)]
    count = max(1, len(images))
    metrics = evaluate_detections(dataset, results)
    for name in ("proposals", "warp", "cnn", "post"):
        metrics[f"{name.rstrip('s')}_ms"] = 1000 * seconds[name] / count
    metrics["total_ms"] = sum(metrics[f"{n}_ms"] for n in ("proposal", "warp", "cnn", "post"))
    metrics["regions_per_image"] = seconds["regions"] / count
    metrics["detections_per_image"] = len(results) / count
    return metrics


# ------------------------------------------------------------------------------------------------ training data
@dataclass
class TrainingImage:
    """One training image with its regions: ground-truth boxes first, then the proposals."""

    image: np.ndarray           # [H, W, 3] uint8
    key: str                    # content hash (cache file name)
    gt_boxes: torch.Tensor      # [G, 4] float32
    gt_classes: torch.Tensor    # [G] int64, class indices 1..K
    proposals: torch.Tensor     # [P, 4] float32

    @property
    def regions(self) -> torch.Tensor:
        return torch.cat([self.gt_boxes, self.proposals])                   # [G + P, 4]

    def overlaps(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(IoU of every region with every gt box [G + P, G], best IoU per region and class [G + P, K + 1];
        column 0, background, stays 0)."""
        regions = self.regions
        per_class = torch.zeros(len(regions), num_classes + 1)
        if len(self.gt_boxes) == 0:
            return torch.zeros(len(regions), 0), per_class
        iou = box_iou(regions, self.gt_boxes)                                 # [R, G]
        per_class.scatter_reduce_(1, self.gt_classes[None].expand(len(regions), -1), iou, reduce="amax")
        return iou, per_class


def training_images(dataset, class_ids: list[int], proposals: ProposalStore, max_proposals: int
                    ) -> list[TrainingImage]:
    index_of = {cid: i + 1 for i, cid in enumerate(class_ids)}
    items = []
    for record in dataset.records:
        image = load_image(dataset, record)
        boxes = torch.as_tensor(np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4))
        try:
            classes = torch.tensor([index_of[int(c)] for c in record.labels], dtype=torch.int64)
        except KeyError as error:
            raise DataError(f"category id {error.args[0]} is not one of the model's {class_ids}",
                            record=f"image id {record.image_id}", field="labels") from None
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        if record.iscrowd is not None and len(record.iscrowd):
            keep &= ~torch.as_tensor(np.asarray(record.iscrowd, dtype=bool))
        found = usable_proposals(proposals(image)[0], max_proposals)
        items.append(TrainingImage(image, image_key(image), boxes[keep], classes[keep], found))
    return items


# ------------------------------------------------------------------------------------------------ stage 1
def finetune(model: RCNN, images: list[TrainingImage], *, epochs: int, lr: float, batch_size: int = 128,
             positive_fraction: float = 0.25, positive_iou: float = 0.5, momentum: float = 0.9,
             weight_decay: float = 5e-4, flip: bool = True, device=None, log: Callable | None = None,
             generator: torch.Generator | None = None) -> list[dict]:
    """Stage 1 (sec. 2.3): train the CNN as a (K + 1)-way classifier of warped regions.

    A region with IoU >= 0.5 with a gt box is a positive of that box's class, any other one background.
    Each batch samples `positive_fraction` positives uniformly over all positive windows (32 of 128 in the
    paper) and background windows for the rest; warped windows are mirrored with probability 1/2 (the authors'
    window data layer). An epoch is one pass over the positives. SGD with momentum, cosine-decayed rate.
    Returns one row per epoch {"epoch", "loss", "accuracy", "seconds"}.
    """
    device = device or torch.device("cpu")
    image_index, boxes, labels = [], [], []
    for i, item in enumerate(images):
        regions = item.regions
        iou, _ = item.overlaps(model.config.num_classes)
        label = torch.zeros(len(regions), dtype=torch.int64)
        if iou.shape[1]:
            best, match = iou.max(dim=1)
            label = torch.where(best >= positive_iou, item.gt_classes[match], label)
        image_index.append(torch.full((len(regions),), i, dtype=torch.int64))
        boxes.append(regions)
        labels.append(label)
    image_index, boxes, labels = torch.cat(image_index), torch.cat(boxes), torch.cat(labels)
    positives = torch.nonzero(labels > 0).flatten()
    negatives = torch.nonzero(labels == 0).flatten()
    if len(positives) == 0 or len(negatives) == 0:
        raise DataError(f"fine-tuning needs positive and background regions, found {len(positives)} and "
                        f"{len(negatives)}: the training data has no objects or no proposals", field="data")
    per_batch = max(1, round(batch_size * positive_fraction))
    steps_per_epoch = math.ceil(len(positives) / per_batch)
    total = max(1, epochs * steps_per_epoch)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    warmup = min(100, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (0.1 + 0.9 * s / warmup if s < warmup else 1.0) * 0.5 * (1 + math.cos(math.pi * s / total)))
    tensors = [model.image_tensor(item.image) for item in images]             # [3, H, W] each, mean subtracted
    size, padding = model.config.input_size, model.config.padding
    history = []
    step = 0
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        order = positives[torch.randperm(len(positives), generator=generator)]
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), per_batch):
            chosen = torch.cat([order[start:start + per_batch],
                                negatives[torch.randint(len(negatives), (batch_size - per_batch,),
                                                        generator=generator)]])
            windows = torch.empty(len(chosen), 3, size, size)
            owner = image_index[chosen]
            for i in owner.unique().tolist():
                mine = torch.nonzero(owner == i).flatten()
                windows[mine] = warp_regions(tensors[i], boxes[chosen[mine]], size, padding)
            if flip:
                mirrored = torch.rand(len(chosen), generator=generator) < 0.5
                windows[mirrored] = windows[mirrored].flip(-1)
            target = labels[chosen].to(device)
            logits = model(windows.to(device))
            loss = F.cross_entropy(logits, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}; lower the rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += float(loss.detach()) * len(chosen)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(chosen)
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if log:
            log(f"[finetune] epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f} window accuracy "
                f"{row['accuracy']:.3f} ({row['seconds']:.1f} s, {steps_per_epoch} batches of {batch_size})")
    model.eval()
    return history


# ------------------------------------------------------------------------------------------------ stage 2
class FeatureCache:
    """Stage 2: every training region's features, one torch file per image under `directory/<fingerprint>/`.

    The fingerprint hashes the network's weights, so features of another network are never read back. A file
    holds the regions' boxes, fc7 (all regions, float16) and pool5 (float16) of the regions that can train a
    box regressor (IoU >= `pool5_iou` with a gt box; nothing else reads pool5). `computed` / `loaded` count
    images whose features were computed / read from disk.
    """

    def __init__(self, directory: str | Path, model: RCNN, *, pool5_iou: float = 0.6, chunk: int = 512):
        self.model, self.pool5_iou, self.chunk = model, pool5_iou, chunk
        self.folder = Path(directory) / weights_fingerprint(model)
        self.computed = 0
        self.loaded = 0

    def __call__(self, item: TrainingImage, device=None) -> dict:
        path = self.folder / f"{item.key}.pt"
        if path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if entry["boxes"].shape[0] == len(item.regions) and torch.equal(entry["boxes"], item.regions):
                    self.loaded += 1
                    return entry
            except Exception:          # a torn or foreign file: compute again and overwrite it
                pass
        entry = self.compute(item, device)
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        torch.save(entry, temporary)
        temporary.replace(path)
        self.computed += 1
        return entry

    @torch.no_grad()
    def compute(self, item: TrainingImage, device=None) -> dict:
        model = self.model.eval()
        device = device or next(model.parameters()).device
        regions = item.regions
        iou, _ = item.overlaps(model.config.num_classes)
        keep_pool5 = torch.nonzero(iou.max(dim=1).values >= self.pool5_iou).flatten() if iou.shape[1] else \
            torch.zeros(0, dtype=torch.int64)
        windows = model.warp(item.image, regions)                                # [R, 3, S, S]
        fc7, pool5 = [], []
        for part in _chunks(len(windows), self.chunk):
            p5, f7 = model.region_features(windows[part].to(device))
            fc7.append(f7.cpu().half())
            pool5.append(p5.cpu())
        fc7 = torch.cat(fc7) if fc7 else torch.zeros(0, model.config.hidden, dtype=torch.float16)
        pool5 = torch.cat(pool5)[keep_pool5].half() if pool5 else torch.zeros(0, model.pool5_dim,
                                                                             dtype=torch.float16)
        return {"boxes": regions.clone(), "fc7": fc7, "pool5_rows": keep_pool5, "pool5": pool5}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.pt")) if self.folder.is_dir() else 0


# ------------------------------------------------------------------------------------------------ stages 3, 4
def train_svms(model: RCNN, images: list[TrainingImage], entries: list[dict], *, negative_iou: float = 0.3,
               C: float = 1e-3, positive_weight: float = 2.0, initial_negatives: int = 2000,
               log: Callable | None = None, generator: torch.Generator | None = None) -> list[dict]:
    """Stage 3: one SVM per class on scaled fc7 features, with hard negative mining; writes the model's
    `fc7_scale`, `svm_weight` and `svm_bias`. Returns one summary row per class."""
    k = model.config.num_classes
    fc7 = torch.cat([e["fc7"] for e in entries]).float()                        # [T, D7]
    norm = fc7.norm(dim=1).mean()
    scale = FEATURE_NORM / float(norm) if norm > 0 else 1.0
    model.fc7_scale.fill_(scale)
    fc7 = fc7 * scale
    is_gt, gt_class, class_overlap = [], [], []
    for item in images:
        class_overlap.append(item.overlaps(k)[1])                              # [R, K + 1]
        flags = torch.zeros(len(item.regions), dtype=torch.bool)
        flags[:len(item.gt_boxes)] = True
        is_gt.append(flags)
        gt_class.append(torch.cat([item.gt_classes, torch.zeros(len(item.proposals), dtype=torch.int64)]))
    is_gt, gt_class, class_overlap = torch.cat(is_gt), torch.cat(gt_class), torch.cat(class_overlap)
    rows = []
    for c in range(1, k + 1):
        positives = fc7[is_gt & (gt_class == c)]
        negatives = fc7[~is_gt & (class_overlap[:, c] < negative_iou)]
        if len(positives) == 0:
            model.svm_weight[c - 1].zero_()
            model.svm_bias[c - 1].fill_(-10.0)      # a class never seen in training is never detected
            rows.append({"class": c, "positives": 0, "negatives": len(negatives), "rounds": 0})
            continue
        svm, rounds = train_svm_hard_negatives(positives, negatives, C=C, positive_weight=positive_weight,
                                               initial_negatives=initial_negatives, generator=generator)
        model.svm_weight[c - 1] = svm.weight.float()
        model.svm_bias[c - 1] = svm.bias.float()
        rows.append({"class": c, "positives": len(positives), "negatives": len(negatives), "rounds": len(rounds),
                     "mined": int(sum(len(r.mined) for r in rounds)), "final_cache": rounds[-1].cache_size})
        if log:
            log(f"[svm] class {c}: {len(positives)} positives, {len(negatives)} negatives, {len(rounds)} mining "
                f"rounds, final cache {rounds[-1].cache_size} negatives")
    return rows


def train_box_regressors(model: RCNN, images: list[TrainingImage], entries: list[dict], *, ridge: float = 1000.0,
                         min_iou: float = 0.6, log: Callable | None = None) -> list[dict]:
    """Stage 4 (App. C): per class, ridge regression from scaled pool5 features of proposals whose best gt box
    (IoU >= 0.6) is of that class to the targets moving them onto it; writes `pool5_scale`, `box_weight`,
    `box_bias`. Returns one summary row per class."""
    k = model.config.num_classes
    features, targets, classes = [], [], []
    for item, entry in zip(images, entries):
        rows = entry["pool5_rows"]
        is_proposal = rows >= len(item.gt_boxes)                                # App. C learns from proposals P
        rows, pool5 = rows[is_proposal], entry["pool5"][is_proposal].float()
        if len(rows) == 0:
            continue
        iou = box_iou(item.regions[rows], item.gt_boxes)                       # [M, G]
        best, match = iou.max(dim=1)
        good = best >= min_iou
        features.append(pool5[good])
        targets.append(regression_targets(item.regions[rows][good], item.gt_boxes[match[good]]))
        classes.append(item.gt_classes[match[good]])
    if not features:
        if log:
            log("[bbox] no proposal overlaps a gt box enough: no box regression")
        return []
    features, targets, classes = torch.cat(features), torch.cat(targets), torch.cat(classes)
    norm = features.norm(dim=1).mean()
    scale = FEATURE_NORM / float(norm) if norm > 0 else 1.0
    model.pool5_scale.fill_(scale)
    features = features * scale
    summary = []
    for c in range(1, k + 1):
        mine = classes == c
        if int(mine.sum()) < 2:
            model.box_weight[c - 1].zero_()
            model.box_bias[c - 1].zero_()
            summary.append({"class": c, "examples": int(mine.sum())})
            continue
        weight, bias = fit_ridge(features[mine], targets[mine], ridge)
        model.box_weight[c - 1] = weight.float()
        model.box_bias[c - 1] = bias.float()
        residual = targets[mine] - (features[mine].double() @ weight.T + bias).float()
        summary.append({"class": c, "examples": int(mine.sum()),
                        "target_rms": float(targets[mine].pow(2).mean().sqrt()),
                        "residual_rms": float(residual.pow(2).mean().sqrt())})
    if log:
        log(f"[bbox] ridge {ridge}: " + ", ".join(f"class {s['class']} {s['examples']} examples"
                                                  for s in summary))
    return summary


# ------------------------------------------------------------------------------------------------ train_rcnn
def train_rcnn(recipe: "RCNNRecipe", train_data, val_data=None, config=None, *, resume: bool = False):
    """R-CNN's four training stages on `train_data` (a Dataset), then evaluation on `val_data`.

    Writes OUT/finetuned.pt (after stage 1), OUT/last.pt and OUT/best.pt (the whole detector, loadable by
    `scenekit predict`), OUT/metrics.csv (one row per stage with its seconds) and caches under OUT/cache
    (proposals/ and features/<weights fingerprint>/). `resume=True` reuses OUT/finetuned.pt; the proposal and
    feature caches are reused whenever they match. Returns the engine's `TrainResult`.
    """
    import csv
    import json

    from scenekit.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
    from scenekit.engine.train import TrainConfig, TrainResult, resolve_device

    config = config or TrainConfig()
    options = recipe.options
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    say = (lambda text: print(text, flush=True)) if config.log_every else None
    class_ids = sorted(int(c) for c in recipe.categories)
    model = recipe.build_model(recipe.model_config).to(device)
    cache = Path(options.get("cache") or out / "cache")
    proposals = ProposalStore(model.config.proposal_mode, model.config.proposal_max_side, cache / "proposals")
    (out / "config.json").write_text(json.dumps({"recipe": recipe.describe(), "train": asdict(config)},
                                                indent=2, default=str))
    history: list[dict] = []

    def stage(name, started, **values):
        row = {"stage": name, "seconds": round(time.perf_counter() - started, 3), **values}
        history.append(row)
        if say:
            say(f"[{name}] done in {row['seconds']:.1f} s")

    started = time.perf_counter()
    images = training_images(train_data, class_ids, proposals, model.config.max_proposals)
    stage("proposals", started, images=len(images), searched=proposals.searches,
          regions_per_image=sum(len(i.proposals) for i in images) / max(1, len(images)))

    finetuned = out / "finetuned.pt"
    started = time.perf_counter()
    if resume and finetuned.is_file():
        model.load_state_dict(load_checkpoint(finetuned)["model"])
        stage("finetune", started, reused=True)
    else:
        pixels = np.concatenate([i.image.reshape(-1, 3) for i in images]) if images else np.zeros((1, 3))
        model.pixel_mean.copy_(torch.as_tensor(pixels.mean(0) / 255.0, dtype=torch.float32))
        rows = finetune(model, images, epochs=options["epochs"], lr=options["lr"],
                        batch_size=options["regions_per_batch"], flip=options["flip"], device=device, log=say,
                        generator=generator)
        save_checkpoint(finetuned, _checkpoint_state(recipe, model, stage="finetune"))
        stage("finetune", started, epochs=len(rows), final_loss=rows[-1]["loss"] if rows else None,
              window_accuracy=rows[-1]["accuracy"] if rows else None)

    started = time.perf_counter()
    features = FeatureCache(cache / "features", model)
    entries = [features(item, device) for item in images]
    stage("features", started, computed=features.computed, loaded=features.loaded,
          cache_mb=round(features.size_bytes() / 2 ** 20, 2))

    started = time.perf_counter()
    svm_rows = train_svms(model, images, entries, C=options["svm_C"], positive_weight=options["svm_positive_weight"],
                          log=say, generator=generator)
    stage("svm", started, mining_rounds=sum(r["rounds"] for r in svm_rows))

    started = time.perf_counter()
    train_box_regressors(model, images, entries, ridge=options["ridge"], log=say)
    stage("bbox", started)

    best = None
    if val_data is not None:
        started = time.perf_counter()
        metrics = recipe.evaluate(model, val_data, device)
        stage("evaluate", started, **{k: round(float(v), 6) for k, v in metrics.items()})
        best = float(metrics[recipe.best_metric])
        if say:
            say("[evaluate] " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    state = _checkpoint_state(recipe, model, stage="done", best=best, history=history)
    save_checkpoint(out / "last.pt", state)
    save_checkpoint(out / "best.pt", state)
    header: list[str] = []
    for row in history:
        header += [k for k in row if k not in header]
    with open(out / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(history)
    return TrainResult(model=model, history=history, best=best, last_checkpoint=out / "last.pt",
                       best_checkpoint=out / "best.pt")


def _checkpoint_state(recipe, model: RCNN, **extra) -> dict:
    return {"model_name": recipe.model_name, "options": recipe.options, "categories": recipe.categories,
            "model_config": recipe.model_config, "model": model.state_dict(), **extra}


# ------------------------------------------------------------------------------------------------ recipe
@dataclass
class RCNNRecipe(Recipe):
    """A Recipe whose training is its own multi-stage function (`fit`), not the engine's epoch loop:
    `fit(recipe, train_data, val_data, config, resume=...) -> TrainResult`."""

    fit: Callable | None = field(default=None)


def _engine_cannot_train(dataset, train):
    raise ScenekitError("R-CNN trains in stages (fine-tune, cache features, SVMs, box regression): "
                        "use scenekit.models.rcnn.train_rcnn (the CLI's `scenekit train rcnn` does)")


@dataclass
class RCNNOptions:
    """R-CNN's options (`--option KEY=VALUE`, `scenekit train rcnn --list-options`)."""

    image_size: int = option(160, "the world's image side, px (R-CNN uses images of any size as they are)")
    input_size: int = option(32, "S: side of each warped region, px (227 in the paper)")
    padding: int | None = option(None, "p: context pixels around each box at size S (None: round(16 S / 227))")
    backbone: str = option("small", "'small' | 'vgg16' | 'resnet18' | 'resnet50'")
    backbone_weights: str | None = option(None, "torchvision-format state dict of the backbone (None: from scratch)")
    channels: tuple[int, ...] = option((16, 32, 64), "small backbone: stage widths")
    norm: str = option("batch", "small backbone: normalisation, 'batch' | 'group' | 'none'")
    hidden: int = option(256, "fc6 and fc7 width (4096 in the paper)")
    dropout: float = option(0.5, "dropout after fc6 and fc7")
    epochs: int | None = option(None, "fine-tuning epochs (None: 10)")
    lr: float | None = option(None, "fine-tuning peak learning rate of SGD (None: 0.02)")
    regions_per_batch: int = option(128, "warped regions per fine-tuning batch (32 positive, 96 background)")
    flip: bool = option(True, "random horizontal flip of the regions in fine-tuning")
    svm_C: float = option(1e-2, "the class SVMs' C (0.001 in the paper)")
    svm_positive_weight: float = option(2.0, "weight of the SVMs' positives (as in the paper)")
    ridge: float = option(1000.0, "lambda of the box regressors' ridge regression")
    proposal_mode: str = option("fast", "Selective Search mode: 'fast' (as in the paper) | 'quality' | 'single'")
    proposal_max_side: int | None = option(None, "search a copy downscaled to this longer side (None: as given)")
    max_proposals: int = option(2000, "best-ranked proposals kept per image")
    score_threshold: float = option(-1.0, "test time: keep SVM scores above this (the mining margin)")
    nms_threshold: float = option(0.3, "test time: IoU of the per-class greedy NMS")
    cache: str | None = option(None, "folder for proposals and features (None: OUT/cache)")
    max_detections: int = option(100, "detections per image in predict and evaluate")


def recipe(categories: dict[int, str], *, name: str = "rcnn", **options) -> RCNNRecipe:
    """R-CNN's recipe; `train_rcnn` runs it (`recipe.fit`). `image_size` is the world's image size only:
    R-CNN warps regions, so images of any size are used as they are. `cache`: the folder for proposals and
    features (default OUT/cache). `max_detections`: detections per image in predict and evaluate (100; a
    recipe rebuilt with another value caps a restored model at that)."""
    o = read_options(RCNNOptions, options, name)
    if o.max_detections < 1:
        raise DataError(f"max_detections must be a positive integer, got {o.max_detections!r}", field="max_detections")
    o = replace(o, epochs=10 if o.epochs is None else o.epochs, lr=0.02 if o.lr is None else o.lr)
    class_ids = sorted(int(c) for c in categories)
    config = RCNNConfig(num_classes=len(class_ids), input_size=o.input_size, padding=o.padding, backbone=o.backbone,
                        channels=tuple(o.channels), norm=o.norm, backbone_weights=o.backbone_weights, hidden=o.hidden,
                        dropout=o.dropout, proposal_mode=o.proposal_mode, proposal_max_side=o.proposal_max_side,
                        max_proposals=o.max_proposals, score_threshold=o.score_threshold,
                        nms_threshold=o.nms_threshold, detections_per_image=o.max_detections)
    model_config = asdict(config)
    model_config["channels"] = list(config.channels)
    proposals = ProposalStore(o.proposal_mode, o.proposal_max_side, Path(o.cache) / "proposals" if o.cache else None)

    def build(values: dict) -> RCNN:
        return RCNN(RCNNConfig(**{**values, "channels": tuple(values["channels"])}))

    def predict(model, images, device):
        return run_rcnn(model, list(images), class_ids, proposals, device, max_detections=o.max_detections)[0]

    def evaluate(model, dataset, device):
        return evaluate_rcnn(model, dataset, device, class_ids, proposals, max_detections=o.max_detections)

    # For `describe()` only: the engine does not run these phases, `train_rcnn` does.
    phases = [Phase("finetune", epochs=o.epochs, lr=o.lr, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                    schedule="cosine")]
    return RCNNRecipe(model_name=name, categories=dict(categories), options=stored_options(o),
                      model_config=model_config, build_model=build, phases=phases,
                      make_dataset=_engine_cannot_train, collate=None,
                      evaluate=evaluate, predict=predict, best_metric="mAP50", best_mode="max",
                      world={"image_size": o.image_size}, fit=train_rcnn)
