"""Backbones: small CNNs that train from scratch on a CPU, and VGG-16 / ResNet-18 / ResNet-50 in torchvision's layout.

The small CNN is the default everywhere: a few 3x3 convolutions and 2x2 max-pools, enough for the embedded world
and fast on two cores. It uses *unpadded* ("valid") convolutions by default, as Overfeat does (Sermanet et al.
2013, Table 1): then a window cropped at a multiple of the network's stride gives exactly the features that the
same window has inside a larger image, which is what makes the fully convolutional sliding window exact.

VGG-16 (Simonyan & Zisserman 2015, configuration D) and ResNet-18/50 (He et al. 2016) are defined with module
names that reproduce torchvision's state-dict keys exactly (`features.0.weight` ... `classifier.6.bias`;
`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `fc.weight`), so
weights a user has downloaded for torchvision load with `load_backbone_weights(model, path)`.
"""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import torch
from torch import nn

from scenekit.errors import DataError


# ------------------------------------------------------------------------------------------------ inference
_FOLDED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference with each batch norm folded into the convolution before it.

    At test time batch norm is a fixed per-channel affine map, y = g (x - mu) / sqrt(var + eps) + b, so the
    convolution w * x + c followed by it equals one convolution with weights w g / sqrt(var + eps) and bias
    (c - mu) g / sqrt(var + eps) + b. Darknet folds its layers this way for inference; the outputs are the
    same up to float rounding, one pass over the feature map fewer per layer.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)            # [C_out]
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight = nn.Parameter((conv.weight.detach() * scale[:, None, None, None])
                                           .contiguous(memory_format=torch.channels_last), requires_grad=False)
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)
                setattr(module, bn_name, nn.Identity())
    return folded


def _tensors_of(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `model` and its submodules, by a direct walk. (`parameters()` and
    `buffers()` build dotted names and a de-duplication set: ~0.2 ms per call on a 40-module network, as
    much as a small detector's whole NMS, paid on every predict call.)"""
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        found += [t for t in module._parameters.values() if t is not None]
        found += [t for t in module._buffers.values() if t is not None]
        stack += [m for m in module._modules.values() if m is not None]
    return found


def inference_copy(model: nn.Module) -> nn.Module:
    """`fold_batch_norms(model)`, rebuilt only when the model's weights or buffers have changed since (an
    optimiser step or load_state_dict bumps the tensors' version counters)."""
    if getattr(model, "fold_for_inference", True) is False:     # e.g. the ONNX stand-in of scenekit.export
        return model
    key = tuple((t.data_ptr(), t._version) for t in _tensors_of(model))
    cached = _FOLDED.get(model)
    if cached is None or cached[0] != key:
        cached = (key, fold_batch_norms(model))
        _FOLDED[model] = cached
    return cached[1]


# ------------------------------------------------------------------------------------------------ small CNN
class SmallCNN(nn.Module):
    """`len(channels)` stages of [3x3 conv -> norm -> ReLU -> 2x2 max-pool]; output stride 2 ** len(channels).

    `padding=0` keeps every output cell a function of one fixed input window (see the module docstring);
    `norm` is "batch", "group" or "none" ("none" makes multi-process training match one process exactly,
    because BatchNorm statistics are otherwise taken over each process's share of the batch).
    """

    def __init__(self, channels=(16, 32, 64), in_channels: int = 3, padding: int = 0, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers.append(nn.Conv2d(previous, width, 3, padding=padding, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif norm == "group":
                layers.append(nn.GroupNorm(min(8, width), width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.channels, self.padding = tuple(channels), padding
        self.out_channels = previous
        self.stride = 2 ** len(channels)

    def output_size(self, size: int) -> int:
        """Spatial size of the feature map for an input of `size` pixels (per stage: conv, then floor-halving)."""
        for _ in self.channels:
            size = (size + 2 * self.padding - 2) // 2
        return size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)    # [B, 3, H, W] -> [B, C, H', W']


# ------------------------------------------------------------------------------------------------ VGG-16
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG-16 (configuration D), module indices as torchvision's `vgg16`: conv layers at features.0, 2, 5, ...

    `include_classifier=False` keeps only `features` (stride 32, 512 channels), the part detectors use; loading
    a full torchvision file into it ignores the file's `classifier.*` entries.
    """

    def __init__(self, num_classes: int = 1000, include_classifier: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(previous, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                previous = item
        self.features = nn.Sequential(*layers)
        self.out_channels, self.stride = 512, 32
        self.include_classifier = include_classifier
        if include_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)                                  # [B, 3, H, W] -> [B, 512, H/32, W/32]
        if not self.include_classifier:
            return x
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # [B, 512*7*7] -> [B, num_classes]


# ------------------------------------------------------------------------------------------------ ResNet
class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the identity (He et al. 2016, Fig. 2); ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus the identity (He et al. 2016, Fig. 5); ResNet-50.

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5").
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, width * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _projection(in_channels: int, out_channels: int, stride: int):
    """The 1x1 projection shortcut (option B of He et al. 2016) where the shape changes, else None."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    """ResNet with torchvision's module names; `include_fc=False` drops `avgpool`/`fc` (stride 32 features)."""

    def __init__(self, block, blocks_per_stage, num_classes: int = 1000, include_fc: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for i in range(count):
                layers.append(block(channels, width, stride if i == 0 else 1))
                channels = width * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.out_channels, self.stride = channels, 32
        self.include_fc = include_fc
        if include_fc:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))   # [B, 3, H, W] -> [B, 64, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # -> [B, C, H/32, W/32]
        if not self.include_fc:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))           # [B, C] -> [B, num_classes]


def resnet18(num_classes: int = 1000, include_fc: bool = True) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, include_fc)


def resnet50(num_classes: int = 1000, include_fc: bool = True) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, include_fc)


def vgg16(num_classes: int = 1000, include_classifier: bool = True) -> VGG16:
    return VGG16(num_classes, include_classifier)


def build_backbone(name: str = "small", *, weights: str | Path | None = None, freeze: int = 0,
                   **small_kwargs) -> nn.Module:
    """A feature extractor by name: "small" (SmallCNN(**small_kwargs)), "vgg16", "resnet18", "resnet50".

    The big ones come without their ImageNet classifier; `weights` loads a torchvision-format state dict, the
    file torchvision itself downloads (see `TORCHVISION_FILES`). `freeze` keeps the first stages fixed while the
    rest trains (`freeze_stages`). Every backbone has `.out_channels` and `.stride` and maps [B, 3, H, W] to
    [B, out_channels, H', W'].
    """
    if name == "small":
        model = SmallCNN(**small_kwargs)
    elif name == "vgg16":
        model = vgg16(include_classifier=False)
    elif name == "resnet18":
        model = resnet18(include_fc=False)
    elif name == "resnet50":
        model = resnet50(include_fc=False)
    else:
        raise ValueError(f"backbone must be 'small', 'vgg16', 'resnet18' or 'resnet50', got {name!r}")
    if weights is not None:
        load_backbone_weights(model, weights)
    if freeze:
        freeze_stages(model, freeze)
    return model


# ------------------------------------------------------------------------------------------------ freezing
def backbone_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages, input first: what `freeze_stages` counts.

    ResNet: the stem (conv1, bn1) and layer1 ... layer4, as Detectron2 counts them for its FREEZE_AT (1: the stem,
    2: the stem and res2, ...). VGG-16: its five blocks of convolutions between max-pools. SmallCNN: each
    [conv -> norm -> ReLU -> pool] stage.
    """
    if isinstance(model, ResNet):
        return [[model.conv1, model.bn1]] + [[getattr(model, f"layer{k}")] for k in range(1, 5)]
    layers = list(model.features)
    stages, current = [], []
    for layer in layers:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages + ([current] if current else [])


def freeze_stages(model: nn.Module, count: int) -> nn.Module:
    """Fix the first `count` stages (`backbone_stages`) of a backbone: fine-tuning only the later ones, as Fast
    R-CNN's VGG-16 keeps conv1 and conv2 fixed (Girshick 2015, sec. 4.5: "which layers to fine-tune?").

    Their parameters stop taking gradients and their modules are marked `frozen = True`, which the training
    engine honours: it never unfreezes them in a phase and keeps them in eval mode, so BatchNorm uses the loaded
    statistics (a frozen BatchNorm, as Detectron2's) instead of re-estimating them on small batches.
    """
    stages = backbone_stages(model)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= len(stages):
        raise DataError(f"freeze_stages must be an integer from 0 to {len(stages)} (the backbone's stages), "
                        f"got {count!r}", field="freeze_stages")
    for stage in stages[:count]:
        for module in stage:
            for sub in module.modules():
                sub.frozen = True
            module.requires_grad_(False)
    return model


# The files torchvision downloads for its ImageNet weights (torchvision.models, `IMAGENET1K_V1`), which
# `--backbone NAME --backbone-weights FILE` loads as they are: download them once on a machine with internet.
TORCHVISION_FILES = {
    "vgg16": "vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth)",
    "resnet18": "resnet18-f37072fd.pth (https://download.pytorch.org/models/resnet18-f37072fd.pth)",
    "resnet50": "resnet50-0676ba61.pth (https://download.pytorch.org/models/resnet50-0676ba61.pth)",
}


# ------------------------------------------------------------------------------------------------ weights
def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision-format state dict from `path` into `model`; returns the file's unused keys.

    Every key of `model.state_dict()` must be in the file with the same shape; keys the model does not have
    (an ImageNet classifier the backbone left out) are ignored and returned. A missing, unreadable or
    mismatched file raises DataError naming the file and the first offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("backbone weights file not found", file=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # torch raises several types for truncated or foreign files
        raise DataError(f"cannot read backbone weights ({type(error).__name__}: {error})", file=str(path)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError("not a state dict (a mapping of names to tensors)", file=str(path))
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise DataError("missing key in backbone weights", file=str(path), field=key)
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise DataError(f"shape {tuple(state[key].shape)} does not match the model's {tuple(tensor.shape)}",
                            file=str(path), field=key)
    model.load_state_dict({key: state[key] for key in expected})
    return [key for key in state if key not in expected]
