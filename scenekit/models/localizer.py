"""Classification + localization, and Overfeat's fully convolutional sliding window.

The simple recipe (as taught with Overfeat and VGG's ILSVRC localization entries):
  1. train a classifier (features + fully connected classification head, cross-entropy);
  2. attach a regression head to the same features that outputs a box;
  3. train the regression head alone (features and classifier frozen) with SGD and the L2 loss;
  4. at test time use both heads: the classifier's top classes, each with the box the regressor gives it.
The regressor is class-agnostic (one box, 4 outputs) or class-specific (one box per class, K x 4 outputs, of
which the true class's row is trained), as compared by Sermanet et al. 2013 (sec. 4.6) and Simonyan &
Zisserman 2015 (sec. A.1: "per-class regression" localises better than "single-class").

A box is predicted as its corners relative to the input window, divided by the window size:
`(x1 / S, y1 / S, x2 / S, y2 / S)`, like Overfeat's regressor, which outputs box edges per window.

Overfeat (Sermanet et al. 2013, sec. 3.5): a fully connected layer on a C x h x w feature map is a convolution
with an h x w kernel, and a following fully connected layer is a 1 x 1 convolution. The converted network gives
identical outputs on a training-size input and, on a larger image, a map of class scores and boxes for every
window at the network's stride, in one pass that shares the convolutions of overlapping windows. Run at several
scales, the per-window predictions are merged greedily (sec. 4.3, `scenekit.nms.greedy_merge`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.data.transforms import load_image, prepare_image
from scenekit.models.backbones import build_backbone
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options


@dataclass
class LocalizerConfig:
    num_classes: int
    image_size: int = 64                  # S: training input is S x S
    class_specific: bool = True           # K x 4 box outputs (True) or 4 (False)
    backbone: str = "small"               # "small" | "vgg16" | "resnet18" | "resnet50"
    channels: tuple[int, ...] = (16, 32, 64)   # small backbone widths
    norm: str = "batch"                   # small backbone normalisation: "batch" | "group" | "none"
    hidden: int = 256                     # width of each head's hidden fully connected layer
    backbone_weights: str | None = None   # torchvision-format state dict for vgg16 / resnet*


class Localizer(nn.Module):
    """Features -> {classification head [B, K], regression head [B, R, 4]}, R = K (class-specific) or 1."""

    def __init__(self, config: LocalizerConfig):
        super().__init__()
        self.config = config
        if config.backbone == "small":
            self.features = build_backbone("small", channels=tuple(config.channels), norm=config.norm)
            size = self.features.output_size(config.image_size)
        else:
            self.features = build_backbone(config.backbone, weights=config.backbone_weights)
            size = config.image_size // self.features.stride
        if size < 1:
            raise ValueError(f"image_size {config.image_size} is too small for backbone {config.backbone!r}")
        self.feature_size = size                                        # h = w of the feature map
        flat = self.features.out_channels * size * size
        k, r = config.num_classes, config.num_classes if config.class_specific else 1
        self.num_box_rows = r
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.hidden), nn.ReLU(inplace=True),
                                        nn.Linear(config.hidden, k))
        self.regressor = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.hidden), nn.ReLU(inplace=True),
                                       nn.Linear(config.hidden, 4 * r))

    def forward(self, images: torch.Tensor, targets: dict | None = None):
        """`images` [B, 3, S, S] in [0, 1] -> (class logits [B, K], boxes [B, R, 4]); with targets, the losses."""
        features = self.features(images)                                # [B, 3, S, S] -> [B, C, h, w]
        logits = self.classifier(features)                              # -> [B, K]
        boxes = self.regressor(features).view(len(images), self.num_box_rows, 4)   # -> [B, R, 4]
        if targets is None:
            return logits, boxes
        return {"classification": F.cross_entropy(logits, targets["labels"]),
                "box_regression": box_l2_loss(self.box_for_class(boxes, targets["labels"]), targets["boxes"])}

    def box_for_class(self, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The box each image's regressor gives to `classes` [B]: [B, R, 4] -> [B, 4]."""
        if self.num_box_rows == 1:
            return boxes[:, 0]
        return boxes[torch.arange(len(boxes), device=boxes.device), classes]


def box_l2_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between predicted and true (normalised) box corners, averaged over the batch."""
    return ((predicted - target) ** 2).sum(dim=1).mean()     # [B, 4] -> [B] -> scalar


# ------------------------------------------------------------------------------------------------ data
class LocalizationData(torch.utils.data.Dataset):
    """Images resized to S x S with their *main object* (the largest box, ILSVRC style) as the target.

    Item: (image [3, S, S], {"labels": class index 0..K-1, "boxes": [4] corners / S, "image_id"}).
    Images without objects are left out. `flip` mirrors an image and its box with probability 1/2, drawing
    from torch's global generator (which the engine seeds and checkpoints).
    """

    def __init__(self, dataset, class_ids: list[int], image_size: int, flip: bool = False):
        self.dataset, self.size, self.flip = dataset, image_size, flip
        self.index_of = {cid: i for i, cid in enumerate(class_ids)}
        self.records = [r for r in dataset.records if len(r.boxes) > 0]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        main = int(np.argmax((record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])))
        scale = np.array([record.width, record.height, record.width, record.height], dtype=np.float64)
        box = torch.tensor(record.boxes[main] / scale, dtype=torch.float32)        # corners / image size
        image = prepare_image(load_image(self.dataset, record), self.size)
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
            box = torch.stack([1 - box[2], box[1], 1 - box[0], box[3]])
        label = self.index_of[int(record.labels[main])]
        return image, {"labels": torch.tensor(label), "boxes": box, "image_id": record.image_id}


def collate(batch):
    images = torch.stack([image for image, _ in batch])
    targets = {"labels": torch.stack([t["labels"] for _, t in batch]),
               "boxes": torch.stack([t["boxes"] for _, t in batch]),
               "image_id": torch.tensor([t["image_id"] for _, t in batch])}
    return images, targets


# ------------------------------------------------------------------------------------------------ inference
def _ordered_corners(boxes: torch.Tensor) -> torch.Tensor:
    """A regressor may output x2 < x1; the box it means is the one spanned by the two corners."""
    x1, x2 = torch.minimum(boxes[..., 0], boxes[..., 2]), torch.maximum(boxes[..., 0], boxes[..., 2])
    y1, y2 = torch.minimum(boxes[..., 1], boxes[..., 3]), torch.maximum(boxes[..., 1], boxes[..., 3])
    return torch.stack([x1, y1, x2, y2], dim=-1)


@torch.no_grad()
def top_guesses(model: Localizer, images: torch.Tensor, k: int = 5):
    """Both heads at test time: the top-k classes and the box for each. -> classes [B, k], scores [B, k],
    boxes [B, k, 4] in [0, 1] units of the input."""
    logits, boxes = model(images)
    probabilities = logits.float().softmax(dim=1)
    scores, classes = probabilities.topk(min(k, probabilities.shape[1]), dim=1)     # [B, k]
    if model.num_box_rows == 1:
        guessed = boxes[:, :1].expand(-1, classes.shape[1], 4)
    else:
        guessed = boxes.gather(1, classes[..., None].expand(-1, -1, 4))             # [B, k, 4]
    return classes, scores, _ordered_corners(guessed.float()).clamp(0, 1)


@torch.no_grad()
def evaluate_localizer(model: Localizer, dataset, device, batch_size: int = 64) -> dict:
    """ILSVRC classification and localization errors, IoU statistics and inference speed on `dataset`.

    A guess (class, box) is right when the class is the image's and the box overlaps one of that class's
    boxes with IoU >= 0.5; the top-k localization error is the fraction of images none of whose k guesses is
    right (Russakovsky et al. 2015, sec. 4.1; `scenekit.metrics.localization`). `mean_iou` is the IoU of the
    box given to the *true* class with the main object's box: the regressor's quality on its own.
    """
    from scenekit.metrics.localization import localization_error, top_k_error

    data = LocalizationData(dataset, _category_ids(dataset, model.config.num_classes), model.config.image_size)
    model.eval()
    guessed_classes, guessed_boxes, own_boxes, main_boxes, elapsed = [], [], [], [], 0.0
    for start in range(0, len(data), batch_size):
        images, targets = collate([data[i] for i in range(start, min(len(data), start + batch_size))])
        images = images.to(device)
        began = time.perf_counter()
        classes, _, boxes = top_guesses(model, images, k=5)                     # [B, 5], [B, 5, 4]
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - began
        _, all_boxes = model(images)
        own = model.box_for_class(all_boxes, targets["labels"].to(device))      # [B, 4]
        guessed_classes.append(classes.cpu())
        guessed_boxes.append(boxes.cpu().double())
        own_boxes.append(_ordered_corners(own.float()).clamp(0, 1).cpu().double())
        main_boxes.append(targets["boxes"].double())
    if not guessed_classes:
        raise ValueError("evaluate_localizer: the dataset has no image with an object")
    classes, boxes = torch.cat(guessed_classes).numpy(), torch.cat(guessed_boxes).numpy()
    gt_boxes, gt_labels = [], []
    for record in data.records:
        scale = np.array([record.width, record.height, record.width, record.height], dtype=np.float64)
        gt_boxes.append(record.boxes / scale)                                   # same [0, 1] units as guesses
        gt_labels.append(np.array([data.index_of[int(c)] for c in record.labels]))
    iou = _paired_iou(torch.cat(own_boxes), torch.cat(main_boxes))             # [N]
    return {
        "top1_loc_error": localization_error(classes, boxes, gt_labels, gt_boxes, k=1),
        "top5_loc_error": localization_error(classes, boxes, gt_labels, gt_boxes, k=5),
        "top1_cls_error": top_k_error(classes, gt_labels, k=1),
        "top5_cls_error": top_k_error(classes, gt_labels, k=5),
        "mean_iou": float(iou.mean()),
        "iou_at_0.5": float((iou >= 0.5).double().mean()),
        "images": len(data),
        "images_per_s": len(data) / max(elapsed, 1e-9),
    }


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i]: [N, 4], [N, 4] -> [N]."""
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(dim=1)
    union = (a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def _category_ids(dataset, num_classes: int) -> list[int]:
    ids = sorted(dataset.categories)
    if len(ids) != num_classes:
        from scenekit.errors import DataError
        raise DataError(f"the data has {len(ids)} categories, the model {num_classes}", field="categories")
    return ids


@torch.no_grad()
def predict_whole_image(model: Localizer, images: list[np.ndarray], device, class_ids: list[int],
                        k: int = 5) -> list[dict]:
    """Resize each image to S x S and take the top-k guesses, boxes mapped back to the image's pixels."""
    model.eval()
    results = []
    for image in images:
        height, width = image.shape[:2]
        tensor = prepare_image(image, model.config.image_size)[None].to(device)
        classes, scores, boxes = top_guesses(model, tensor, k)
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        results.append({"boxes": boxes[0].cpu().double() * scale, "scores": scores[0].cpu().double(),
                        "labels": torch.tensor([class_ids[int(c)] for c in classes[0]])})
    return results


# ------------------------------------------------------------------------------------------------ Overfeat
class FullyConvolutionalLocalizer(nn.Module):
    """The localizer with its fully connected layers turned into convolutions (Sermanet et al. 2013, sec. 3.5).

    `Linear(C*h*w -> D)` on the flattened [C, h, w] map becomes `Conv2d(C, D, kernel=(h, w))` with the same
    weights viewed as [D, C, h, w]; `Linear(D -> E)` becomes a 1 x 1 convolution. On an S x S input the outputs
    equal the localizer's; on an H x W input, output cell (i, j) is the localizer applied to the window whose
    top-left corner is (j * stride, i * stride) -- exactly, because the small backbone has no padding.
    """

    def __init__(self, localizer: Localizer):
        super().__init__()
        self.config = localizer.config
        self.features = localizer.features
        self.window, self.stride = localizer.config.image_size, localizer.features.stride
        self.num_box_rows = localizer.num_box_rows
        self.classifier = _as_convolutions(localizer.classifier, localizer.features.out_channels,
                                           localizer.feature_size)
        self.regressor = _as_convolutions(localizer.regressor, localizer.features.out_channels,
                                          localizer.feature_size)

    def forward(self, images: torch.Tensor):
        """[B, 3, H, W] -> class logits [B, K, H', W'], boxes [B, R, 4, H', W'] (window units)."""
        features = self.features(images)                                # [B, C, H/8 - ..., W/8 - ...]
        logits = self.classifier(features)                              # -> [B, K, H', W']
        boxes = self.regressor(features)                                # -> [B, 4R, H', W']
        return logits, boxes.view(len(images), self.num_box_rows, 4, *boxes.shape[-2:])


def _as_convolutions(head: nn.Sequential, channels: int, size: int) -> nn.Sequential:
    """[Flatten, Linear, ReLU, Linear] -> [Conv size x size, ReLU, Conv 1 x 1] with the same weights."""
    first, last = head[1], head[3]
    conv1 = nn.Conv2d(channels, first.out_features, kernel_size=size)
    conv1.weight.data.copy_(first.weight.data.view(first.out_features, channels, size, size))
    conv1.bias.data.copy_(first.bias.data)
    conv2 = nn.Conv2d(last.in_features, last.out_features, kernel_size=1)
    conv2.weight.data.copy_(last.weight.data.view(last.out_features, last.in_features, 1, 1))
    conv2.bias.data.copy_(last.bias.data)
    return nn.Sequential(conv1, nn.ReLU(inplace=True), conv2)


@torch.no_grad()
def dense_predictions(network: FullyConvolutionalLocalizer, image: torch.Tensor, scales=(1.0, 1.25)):
    """Every window's best class and box at every scale, in the image's pixel coordinates.

    `image` is [3, H, W] in [0, 1]; at scale s it is resized so its shorter side is s * S (S the training size),
    so s = 1 shows the whole image to one window, as in training. The default scales stay near 1: a localizer
    trained on whole-object views only regresses poorly from windows that see part of an object (scales 1.5
    and 2 raise the world's top-1 localization error from ~0.05 to ~0.8; see benchmarks/localizer.py); Overfeat
    trained on multi-scale crops for that. Returns boxes [M, 4] xyxy, scores [M]
    (softmax probability of the window's top class), classes [M] (indices 0..K-1).
    """
    if len(scales) == 0 or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {tuple(scales)}")
    height, width = image.shape[-2:]
    all_boxes, all_scores, all_classes = [], [], []
    for s in scales:
        factor = s * network.window / min(height, width)
        size = (max(network.window, round(height * factor)), max(network.window, round(width * factor)))
        resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
        logits, boxes = network(resized)                          # [1, K, H', W'], [1, R, 4, H', W']
        probabilities = logits[0].softmax(dim=0)
        scores, classes = probabilities.max(dim=0)                # [H', W']
        grid_y, grid_x = torch.meshgrid(torch.arange(scores.shape[0]), torch.arange(scores.shape[1]),
                                        indexing="ij")
        row = classes if network.num_box_rows > 1 else torch.zeros_like(classes)
        window_boxes = boxes[0][row, :, grid_y, grid_x]           # [H', W', 4] in window units
        offsets = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).to(window_boxes) * network.stride
        pixel_boxes = (offsets + _ordered_corners(window_boxes) * network.window)
        # Back to the original image: undo the resize (per axis, as rounding differs slightly).
        undo = torch.tensor([width / size[1], height / size[0], width / size[1], height / size[0]])
        all_boxes.append((pixel_boxes * undo.to(pixel_boxes)).reshape(-1, 4))
        all_scores.append(scores.reshape(-1))
        all_classes.append(classes.reshape(-1))
    return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes)


@torch.no_grad()
def overfeat_detect(network: FullyConvolutionalLocalizer, image: torch.Tensor, scales=(1.0, 1.25),
                    merge_threshold: float = 0.8, score_threshold: float = 0.0) -> dict:
    """Multi-scale dense predictions merged per class with Overfeat's greedy merge (sec. 4.3).

    A merged box's score is the summed confidence of the windows merged into it (Overfeat accumulates
    evidence), divided by the number of windows looked at, so it lies in [0, 1] and ranks like the sum.
    Returns {"boxes" [N, 4], "scores" [N], "labels" [N] class indices}, best first.
    """
    from scenekit.nms import greedy_merge

    boxes, scores, classes = dense_predictions(network, image, scales)
    total = max(1, len(scores))
    height, width = image.shape[-2:]
    boxes = boxes.double()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = scores > score_threshold
    out_boxes, out_scores, out_labels = [], [], []
    for c in classes[keep].unique():
        mine = keep & (classes == c)
        merged, mean_scores, groups = greedy_merge(boxes[mine], scores[mine].double(), merge_threshold)
        evidence = mean_scores * torch.bincount(groups, minlength=len(merged)).double() / total
        out_boxes.append(merged)
        out_scores.append(evidence)
        out_labels.append(torch.full((len(merged),), int(c), dtype=torch.int64))
    if not out_boxes:
        return {"boxes": torch.zeros(0, 4, dtype=torch.float64), "scores": torch.zeros(0, dtype=torch.float64),
                "labels": torch.zeros(0, dtype=torch.int64)}
    boxes, scores, labels = torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)
    order = scores.argsort(descending=True)
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


@torch.no_grad()
def predict_overfeat(model: Localizer, images: list[np.ndarray], device, class_ids: list[int],
                     scales=(1.0, 1.25), max_detections: int = 5) -> list[dict]:
    model.eval()
    # A Localizer, or its dense network already (the ONNX stand-in of `overfeat_from_onnx`)
    network = FullyConvolutionalLocalizer(model).to(device).eval() if isinstance(model, Localizer) else model
    results = []
    for image in images:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0).to(device)
        found = overfeat_detect(network, tensor, scales)
        n = min(max_detections, len(found["scores"]))
        results.append({"boxes": found["boxes"][:n].cpu(), "scores": found["scores"][:n].cpu(),
                        "labels": torch.tensor([class_ids[int(c)] for c in found["labels"][:n]],
                                               dtype=torch.int64)})
    return results


# ------------------------------------------------------------------------------------------------ ONNX export
def localizer_graph(model: Localizer):
    """The localizer's ONNX graph (`scenekit.export`): images [B, 3, S, S] -> logits [B, K], boxes [B, R, 4]."""
    from scenekit.models.export_parts import ExportGraph, Tupled

    size, rows = model.config.image_size, model.num_box_rows

    def localize(images):                  # Localizer.forward, batch left symbolic (it uses len(images))
        features = model.features(images)                          # [B, 3, S, S] -> [B, C, h, w]
        return model.classifier(features), model.regressor(features).unflatten(1, (rows, 4))
    return ExportGraph("localizer", Tupled(model, localize), torch.rand(2, 3, size, size), ["logits", "boxes"],
                       False)


def overfeat_graph(model: Localizer):
    """Overfeat's ONNX graph: the dense network (`FullyConvolutionalLocalizer`) on images of any size ->
    logits [B, K, H', W'], boxes [B, R, 4, H', W']; the multi-scale merge stays in Python."""
    from scenekit.models.export_parts import ExportGraph, Tupled

    dense = FullyConvolutionalLocalizer(model).eval()
    size, rows = model.config.image_size, model.num_box_rows

    def dense_windows(images):             # FullyConvolutionalLocalizer.forward, batch left symbolic
        features = dense.features(images)
        return dense.classifier(features), dense.regressor(features).unflatten(1, (rows, 4))
    example = torch.rand(1, 3, size + 2 * dense.stride, size + dense.stride)
    return ExportGraph("overfeat", Tupled(dense, dense_windows), example, ["logits", "boxes"], True)


def overfeat_from_onnx(skeleton: Localizer, graphs) -> nn.Module:
    """The dense network with onnxruntime running it, for `predict_overfeat` (its merge code runs as is)."""
    from scenekit.models.export_parts import OnnxModule

    return OnnxModule(graphs.main, FullyConvolutionalLocalizer(skeleton).eval())


# ------------------------------------------------------------------------------------------------ recipe
@dataclass
class LocalizerOptions:
    """The options of `recipe` (`--option KEY=VALUE`, `scenekit train localizer --list-options`)."""

    class_specific: bool = option(True, "one box per class (K x 4 outputs) or one box for all classes (4)")
    image_size: int = option(64, "network input side S, px: images are resized to S x S")
    backbone: str = option("small", "'small' | 'vgg16' | 'resnet18' | 'resnet50'")
    backbone_weights: str | None = option(None, "torchvision-format state dict of the backbone (None: from scratch)")
    channels: tuple[int, ...] = option((16, 32, 64), "small backbone: stage widths")
    norm: str = option("batch", "small backbone: normalisation, 'batch' | 'group' | 'none'")
    hidden: int = option(256, "width of each head's hidden fully connected layer")
    epochs: int | None = option(None, "phase 1 (classify) epochs (None: 8)")
    lr: float | None = option(None, "phase 1 peak learning rate (None: 0.05)")
    regress_epochs: int | None = option(None, "phase 2 (regress) epochs (None: as epochs)")
    regress_lr: float = option(0.03, "phase 2 peak learning rate")
    flip: bool = option(True, "random horizontal flip in training")
    inference: str = option("whole", "'whole' (the image at S x S) | 'overfeat' (the dense multi-scale pass)")
    scales: tuple[float, ...] = option((1.0, 1.25), "overfeat: image scales of the dense pass, x S")
    max_detections: int = option(5, "guesses per image, best first (ILSVRC's five)")


def recipe(categories: dict[int, str], *, name: str = "localizer", **options) -> Recipe:
    """The classification + localization recipe; `inference="overfeat"` predicts with the dense FCN pass.

    Phase 1 "classify": features + classifier, cross-entropy, SGD with momentum, cosine schedule, warm-up.
    Phase 2 "regress": the regression head alone, SGD and the L2 loss (features and classifier frozen).

    `max_detections`: the guesses `predict` returns per image, best first: the top classes with their boxes
    (at most the number of classes) or Overfeat's merged boxes. 5, ILSVRC's five guesses, not the detectors'
    100: these models are scored by the top-1 and top-5 localization errors, which `evaluate` keeps measuring
    on five guesses whatever this is.
    """
    o = read_options(LocalizerOptions, options, name)
    if o.inference not in ("whole", "overfeat"):
        raise ValueError(f"inference must be 'whole' or 'overfeat', got {o.inference!r}")
    if o.max_detections < 1:
        from scenekit.errors import DataError
        raise DataError(f"max_detections must be a positive integer, got {o.max_detections!r}",
                        field="max_detections")
    epochs = 8 if o.epochs is None else o.epochs                        # as resolved, as checkpoints store it
    o = replace(o, epochs=epochs, regress_epochs=epochs if o.regress_epochs is None else o.regress_epochs)
    class_ids = sorted(int(c) for c in categories)
    config = LocalizerConfig(num_classes=len(class_ids), image_size=o.image_size, class_specific=o.class_specific,
                             backbone=o.backbone, channels=tuple(o.channels), norm=o.norm, hidden=o.hidden,
                             backbone_weights=o.backbone_weights)
    phases = [
        Phase("classify", epochs=o.epochs, lr=0.05 if o.lr is None else o.lr, optimizer="sgd", momentum=0.9,
              weight_decay=5e-4, schedule="cosine", warmup_steps=20, clip_grad_norm=10.0,
              trains=("features", "classifier"), loss_terms=("classification",)),
        Phase("regress", epochs=o.regress_epochs, lr=o.regress_lr, optimizer="sgd", momentum=0.9,
              schedule="cosine", trains=("regressor",), loss_terms=("box_regression",)),
    ]

    def build(model_config: dict) -> Localizer:
        values = dict(model_config)
        values["channels"] = tuple(values["channels"])
        return Localizer(LocalizerConfig(**values))

    def predict(model, images, device):
        if o.inference == "overfeat":
            return predict_overfeat(model, images, device, class_ids, scales=tuple(o.scales),
                                    max_detections=o.max_detections)
        return predict_whole_image(model, images, device, class_ids, k=o.max_detections)

    model_config = asdict(config)
    model_config["channels"] = list(config.channels)
    return Recipe(
        model_name=name, categories=dict(categories), options=stored_options(o), model_config=model_config,
        build_model=build, phases=phases,
        make_dataset=lambda dataset, train: LocalizationData(dataset, class_ids, o.image_size,
                                                             flip=o.flip and train),
        collate=collate,
        evaluate=lambda model, dataset, device: evaluate_localizer(model, dataset, device),
        predict=predict, best_metric="top1_loc_error", best_mode="min",
        world={"single_object": True, "image_size": max(64, o.image_size)},   # the world draws >= 64 px
        export=overfeat_graph if o.inference == "overfeat" else localizer_graph,
        from_onnx=overfeat_from_onnx if o.inference == "overfeat" else None,
    )
