"""Semantic segmentation: fully convolutional networks, the encoder-decoder, and the sliding window they replace.

Every pixel gets a softmax over K classes + background (Long et al. 2015, "FCN"). Three ways to label pixels:

1. **Sliding window** (the patchwise baseline FCN is contrasted with; Ciresan et al. 2012, Farabet et al. 2013):
   a small CNN classifies the centre pixel of a w x w window; run on every pixel, neighbouring windows share
   almost all their input but nothing of their computation.
2. **FCN** (Long et al. 2015): a classification network whose fully connected layers are convolutions
   ("convolutionalization", sec. 3.1) outputs a coarse score map in one pass; upsampling by *transposed
   convolution* ("deconvolution", sec. 3.3) brings it back to pixels. FCN-32s upsamples the stride-32 scores
   in one step; FCN-16s first adds scores predicted from the stride-16 pool4 features to the 2x upsampled
   stride-32 scores, FCN-8s adds pool3's too (sec. 4.2, Fig. 3). The 2x upsamplings are learned and start as
   bilinear interpolation; the last one stays fixed bilinear, as in the authors' nets; skip scorers start at
   zero, so a fresh FCN-8s is an FCN-32s. We train all at once (Shelhamer et al. 2017, sec. 4.1), not in stages.
   FCN-4s fuses pool2's scores the same way: the step the paper stops before (sec. 4.2: on VOC's ~500 px images
   fusing had met diminishing returns, so lower layers were not fused). On the world's small images
   it lifts the resolution ceiling: a perfect stride-8 score map, upsampled as FCN's last layer does, labels the
   world at 96 px input with only ~0.85 mean IoU, a stride-4 map with ~0.93 (benchmarks/fcn.py --ceiling).
3. **Encoder-decoder** (Noh et al. 2015, "DeconvNet"): a mirrored decoder grows the coarse map back stage by
   stage. Its upsampling is *max-unpooling*, which puts each value back where the max of its pooling window
   came from (the "switch variables", sec. 3.2.1), then convolutions fill in the sparse map. The same decoder
   with a learned stride-2 transposed convolution instead of unpooling is the comparison benchmarks/fcn.py runs.

Options beyond the papers' nets, each off by default: residual encoder stages (`block="residual"`, He et al.
2016), deep supervision of the coarser FCNs inside a finer one (`aux_weight`, Lee et al. 2015), and, at
inference, averaging the class distributions within each superpixel of a Felzenszwalb-Huttenlocher
over-segmentation (`superpixel_average`, as Farabet et al. 2013 label scenes), which snaps the labels to the
image's edges and makes each uniformly coloured region take one class.

Downsampling is 2 x 2 max-pooling (with indices, for unpooling) or a stride-2 convolution. Inputs of any size
are padded at the bottom and right to a multiple of the network's stride and the scores are cropped back, so the
output is exactly H x W. Our small encoder uses BatchNorm, which lets it learn from scratch in CPU minutes; the
paper's FCNs are VGG-16 without it (`backbone="vgg16"` builds that encoder, with torchvision-format weights).

Class maps hold 0 = background, 1..K = the categories in sorted id order, and 255 = ignore (VOC's "void"),
which the loss and the metrics skip.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from scenekit.data.transforms import load_image, prepare_image
from scenekit.errors import DataError
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options

IGNORE_INDEX = 255
ARCHITECTURES = ("fcn32s", "fcn16s", "fcn8s", "fcn4s", "deconvnet")


# ------------------------------------------------------------------------------------------------ operations
def max_unpool2d(values: torch.Tensor, indices: torch.Tensor, output_size) -> torch.Tensor:
    """Max-unpooling (Noh et al. 2015, sec. 3.2.1; Zeiler & Fergus 2014): the inverse route of max-pooling.

    `values` [B, C, h, w] and `indices` [B, C, h, w] from `F.max_pool2d(x, ..., return_indices=True)` (flat
    positions in each H x W plane of x); returns [B, C, H, W] that is zero except at the positions the maxima
    came from, which get the values. Values landing on one position (overlapping pooling windows) add, so
    unpooling is exactly the adjoint of "gather the pooled positions": <unpool(v), y> = <v, gather(y)>, which
    is also the gradient max-pooling passes back to its input.
    """
    if values.shape != indices.shape:
        raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} must have one shape")
    # Not int(): under the ONNX exporter's tracer the size stays symbolic, so DeconvNet exports for any image size.
    height, width = output_size[-2], output_size[-1]
    batch, channels = values.shape[:2]
    out = values.new_zeros(batch, channels, height * width)
    out.scatter_add_(2, indices.flatten(2), values.flatten(2))       # [B, C, h*w] -> [B, C, H*W]
    return out.view(batch, channels, height, width)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The [size, size] kernel that makes a stride-`(size + 1) // 2` transposed convolution interpolate
    bilinearly (the FCN authors' `upsample_filt`): a tent 1 - |i - centre| / factor per axis."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    tent = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    return (tent[:, None] * tent[None, :]).float()


def bilinear_upsampling_weight(channels: int, size: int) -> torch.Tensor:
    """ConvTranspose2d weight [C, C, size, size] that upsamples each channel on its own (a diagonal of kernels)."""
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = bilinear_kernel(size)
    return weight


def transposed_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 2, padding: int = 1) -> torch.Tensor:
    """Transposed convolution written out: each input value paints the kernel, scaled by itself, into the output
    at `stride` steps, overlaps add, then `padding` pixels are cut from each border.

    x [B, Cin, h, w], weight [Cin, Cout, k, k] (ConvTranspose2d's layout) -> [B, Cout, (h-1)s - 2p + k, ...].
    This is the gradient of `F.conv2d(., weight, stride, padding)` with respect to its input, hence FCN's
    "deconvolution" (Long et al. 2015, sec. 3.3: "upsampling is backwards strided convolution"). Same values as
    `F.conv_transpose2d`, which the models use because it is faster.
    """
    batch, _, h, w = x.shape
    cout, k = weight.shape[1], weight.shape[-1]
    painted = torch.einsum("bihw,iokl->boklhw", x, weight)              # [B, Cout, k, k, h, w]
    full = ((h - 1) * stride + k, (w - 1) * stride + k)
    out = F.fold(painted.reshape(batch, cout * k * k, h * w), full, kernel_size=k, stride=stride)   # overlaps add
    return out[..., padding:full[0] - padding, padding:full[1] - padding]


def upsample_bilinear(scores: torch.Tensor, factor: int) -> torch.Tensor:
    """Fixed bilinear upsampling by an even `factor` as FCN's last layer: a transposed convolution with kernel
    2f, stride f, padding f/2, each channel on its own: [B, C, h, w] -> [B, C, f h, f w]. Output pixel j lies
    at f j + (f - 1) / 2 in input units, the centre of the f x f block it came from."""
    if factor == 1:
        return scores
    channels = int(scores.shape[1])         # a constant for the ONNX exporter: the kernel's shape must be static
    kernel = bilinear_kernel(2 * factor).to(scores)[None, None].expand(channels, 1, -1, -1)   # [C, 1, 2f, 2f]
    return F.conv_transpose2d(scores, kernel, stride=factor, padding=factor // 2, groups=channels)


def superpixel_average(probabilities: torch.Tensor, segments) -> torch.Tensor:
    """Every pixel takes the mean class distribution of its superpixel (Farabet et al. 2013, "Learning
    Hierarchical Features for Scene Labeling", the superpixel method: the network's per-pixel predictions are
    averaged within each segment of an over-segmentation, whose borders follow the image's edges, and the
    segment labelled by the argmax of the average).

    probabilities [K+1, H, W] (each pixel's distribution), segments [H, W] non-negative integer labels (e.g. from
    `scenekit.proposals.felzenszwalb`) -> [K+1, H, W], constant on each segment and still summing to 1 per pixel.
    """
    segments = torch.as_tensor(np.asarray(segments), dtype=torch.int64)
    if probabilities.ndim != 3 or segments.shape != probabilities.shape[1:]:
        raise ValueError(f"segments {tuple(segments.shape)} must be the [H, W] of probabilities "
                         f"{tuple(probabilities.shape)}")
    if segments.numel() == 0:
        return probabilities.clone()
    if int(segments.min()) < 0:
        raise ValueError("segments must be non-negative labels")
    classes, flat = probabilities.shape[0], segments.reshape(-1)
    count = int(flat.max()) + 1
    pixels = probabilities.reshape(classes, -1).T.double()                          # [H*W, K+1]
    sums = pixels.new_zeros(count, classes).index_add_(0, flat, pixels)             # [S, K+1] per segment
    sizes = torch.bincount(flat, minlength=count).clamp(min=1).double()[:, None]
    return (sums / sizes)[flat].T.reshape(probabilities.shape).to(probabilities.dtype)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """The same numbers in [B, H, W, C] memory order: PyTorch's CPU convolutions run faster on it than on
    [B, C, H, W] order (~1.3x for these encoders), so the networks are built channels-last too."""
    return images.contiguous(memory_format=torch.channels_last)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad at the bottom and right so H and W are multiples of `multiple` (every pooling then halves exactly)."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, (-width) % multiple, 0, (-height) % multiple))


def segmentation_loss(scores: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Per-pixel softmax cross-entropy averaged over the labelled pixels (Long et al. 2015, sec. 3.2).

    scores [B, K+1, H, W], target [B, H, W] class indices or `ignore_index`. A batch with no labelled pixel
    gives 0 (with a gradient of zeros), not NaN.
    """
    if scores.shape[0] != target.shape[0] or scores.shape[2:] != target.shape[1:]:
        raise ValueError(f"scores {tuple(scores.shape)} and target {tuple(target.shape)} disagree in size")
    total = F.cross_entropy(scores.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


# ------------------------------------------------------------------------------------------------ models
@dataclass
class FCNConfig:
    num_classes: int                              # K categories; the networks score K + 1 (0 = background)
    architecture: str = "fcn8s"                   # "fcn32s" | "fcn16s" | "fcn8s" | "fcn4s" | "deconvnet"
    upsample: str = "unpool"                      # deconvnet's decoder: "unpool" | "transposed"
    downsample: str = "pool"                      # "pool" (2x2 max-pool) | "stride" (stride-2 3x3 convolution)
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)  # encoder widths; stride 2 ** len(channels)
    convs_per_stage: int | tuple[int, ...] | None = None   # 3x3 convs per stage; None: 1, 1, 2, 2, ... (VGG-16
                                                          # has 2, 2, 3, 3, 3; the cheap full-resolution stages get 1)
    head: int = 128                               # width of the convolutionalized fc6 / fc7
    backbone: str = "small"                       # "small" | "vgg16" (the paper's encoder; slow on a CPU)
    backbone_weights: str | None = None           # torchvision-format VGG-16 state dict
    freeze_stages: int = 0                        # vgg16: its first blocks kept fixed (backbones.freeze_stages)
    # Defaults below keep checkpoints written before they existed loading as they were trained (LEGACY).
    block: str = "plain"                          # small encoder's units: "plain" conv-BN-ReLU | "residual"
    aux_weight: float = 0.0                       # FCN: weight of the coarser nets' losses (deep supervision)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.upsample not in ("unpool", "transposed"):
            raise ValueError(f"upsample must be 'unpool' or 'transposed', got {self.upsample!r}")
        if self.downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', got {self.downsample!r}")
        if self.backbone not in ("small", "vgg16"):
            raise ValueError(f"backbone must be 'small' or 'vgg16', got {self.backbone!r}")
        if self.block not in ("plain", "residual"):
            raise ValueError(f"block must be 'plain' or 'residual', got {self.block!r}")
        if not self.aux_weight >= 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight!r}")
        if self.architecture == "deconvnet" and self.upsample == "unpool" and self.downsample != "pool":
            raise ValueError("unpooling needs the pooling indices: use downsample='pool' with upsample='unpool'")
        if self.backbone == "small" and len(self.channels) < 3:
            raise ValueError(f"channels needs at least 3 stages (pool3 is FCN-8s's skip), got {self.channels}")
        if self.backbone == "small" and self.architecture == "fcn4s" and len(self.channels) < 4:
            raise ValueError(f"fcn4s needs at least 4 stages (its third skip is from the stage before FCN-8s's "
                             f"two), got {self.channels}")
        if isinstance(self.convs_per_stage, (list, tuple)):
            self.convs_per_stage = tuple(int(n) for n in self.convs_per_stage)
            if len(self.convs_per_stage) != len(self.channels):
                raise ValueError(f"convs_per_stage {self.convs_per_stage} needs one count per stage of "
                                 f"channels {self.channels}")
        if self.num_classes < 1 or min(self.stage_convs) < 1 or self.head < 1:
            raise ValueError("num_classes, convs_per_stage and head must be >= 1")

    @property
    def stage_convs(self) -> tuple[int, ...]:
        if isinstance(self.convs_per_stage, tuple):
            return self.convs_per_stage
        if self.convs_per_stage is None:
            return tuple(1 if i < 2 else 2 for i in range(len(self.channels)))
        return (int(self.convs_per_stage),) * len(self.channels)


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """He et al. 2016's basic block: relu(x + BN(conv(relu(BN(conv(x)))))), two 3x3 convolutions whose sum with
    the input lets every stage start as (nearly) the identity, so a deeper encoder still trains quickly. When the
    width or the stride changes, the shortcut is a 1x1 convolution + BN ("projection shortcut", option B).
    [B, Cin, H, W] -> [B, Cout, H / stride, W / stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_block(in_channels, out_channels, stride),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity() if in_channels == out_channels and stride == 1 else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Encoder(nn.Module):
    """Stages of 3x3 conv-BN-ReLU (or of residual blocks, `block="residual"`), each ending in a 2x downsampling;
    returns every stage's output.

    forward: [B, 3, H, W] (H, W multiples of the stride) -> (features, switches): features[i] is
    [B, C_i, H / 2^(i+1), W / 2^(i+1)] (features[2] is pool3, [3] pool4, [4] pool5 with five stages);
    switches[i] = (pooling indices, size before pooling) for max-unpooling, or None after strided convolution.
    """

    def __init__(self, config: FCNConfig):
        super().__init__()
        self.pool = config.downsample == "pool"
        if config.backbone == "vgg16":
            from scenekit.models.backbones import build_backbone

            self.vgg = build_backbone("vgg16", weights=config.backbone_weights, freeze=config.freeze_stages)
            self.channels, self.pool = (64, 128, 256, 512, 512), True
            return
        self.vgg = None
        stages, previous = [], 3
        for width, convs in zip(config.channels, config.stage_convs):
            layers = []
            for j in range(convs):                  # block="residual": `convs` counts blocks of two convolutions
                stride = 2 if j == convs - 1 and not self.pool else 1
                unit = ResidualBlock if config.block == "residual" else conv_block
                layers.append(unit(previous, width, stride=stride))
                previous = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(config.channels)

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)

    def forward(self, x: torch.Tensor):
        features, switches = [], []
        if self.vgg is not None:                    # torchvision's module list, its max-pools made to keep indices
            for layer in self.vgg.features:
                if isinstance(layer, nn.MaxPool2d):
                    size = x.shape[-2:]
                    x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
                    features.append(x)
                    switches.append((indices, size))
                else:
                    x = layer(x)
            return features, switches
        for stage in self.stages:
            x = stage(x)
            if self.pool:
                size = x.shape[-2:]
                x, indices = F.max_pool2d(x, 2, 2, return_indices=True)     # [B, C, h, w] -> [B, C, h/2, w/2]
                switches.append((indices, size))
            else:
                switches.append(None)
            features.append(x)
        return features, switches


class FCN(nn.Module):
    """FCN-32s / 16s / 8s (Long et al. 2015, sec. 4.2) and FCN-4s: `model(images)` -> scores [B, K+1, H, W];
    `model(images, {"semantic": [B, H, W]})` -> {"segmentation": loss}."""

    def __init__(self, config: FCNConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        channels, classes = self.encoder.channels, config.num_classes + 1
        self.num_skips = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2, "fcn4s": 3}[config.architecture]
        # fc6 and fc7 as convolutions (sec. 3.1), then the class scorer, at the coarsest stride.
        self.classifier = nn.Sequential(
            nn.Conv2d(channels[-1], config.head, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
            nn.Conv2d(config.head, config.head, 1), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
            nn.Conv2d(config.head, classes, 1))
        # pool4, pool3 (and pool2) scorers, zero at the start (the FCN authors' initialisation) ...
        self.skip_scorers = nn.ModuleList(nn.Conv2d(channels[-2 - k], classes, 1) for k in range(self.num_skips))
        for scorer in self.skip_scorers:
            nn.init.zeros_(scorer.weight)
            nn.init.zeros_(scorer.bias)
        # ... and the learned 2x upsamplings that bring the coarser scores to them, bilinear at the start.
        self.upsamplers = nn.ModuleList(nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
                                        for _ in range(self.num_skips))
        for upsampler in self.upsamplers:
            upsampler.weight.data.copy_(bilinear_upsampling_weight(classes, 4))
        self.final_factor = self.encoder.stride // 2 ** self.num_skips
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, targets: dict | None = None):
        height, width = images.shape[-2:]
        features, _ = self.encoder(channels_last(pad_to_multiple(images, self.encoder.stride)))
        scores = self.classifier(features[-1])                        # [B, K+1, H/32, W/32]
        coarser = []                                                  # the FCN-32s (16s, 8s) scores on the way
        for k in range(self.num_skips):                               # 32s -> 16s -> 8s (-> 4s)
            coarser.append(scores)
            scores = self.upsamplers[k](scores) + self.skip_scorers[k](features[-2 - k])
        scores = upsample_bilinear(scores, self.final_factor)[..., :height, :width]     # -> [B, K+1, H, W]
        if targets is None:
            return scores
        losses = {"segmentation": segmentation_loss(scores, targets["semantic"])}
        if self.config.aux_weight > 0 and coarser:
            losses["auxiliary"] = self.config.aux_weight * self.auxiliary_loss(coarser, targets["semantic"])
        return losses

    def auxiliary_loss(self, coarser: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Deep supervision (Lee et al. 2015, "Deeply-Supervised Nets": companion losses at hidden layers,
        added to the output's loss with a weight): each coarser score map on the way, upsampled by FCN's fixed
        bilinear layer to the image, is scored like the net's output, the mean of these losses returned. It is the loss of the FCN-32s (16s, ...)
        inside this net, so all the nets of Long et al.'s stage-wise training (sec. 4.2: 32s, then 16s, then 8s)
        learn at once, and the deep scores are taught the classes directly, not only through the finer sum."""
        height, width = target.shape[-2:]
        total = 0.0
        for k, scores in enumerate(coarser):                 # [B, K+1, H / (final_factor 2^(skips - k)), ...]
            factor = self.final_factor * 2 ** (self.num_skips - k)
            total = total + segmentation_loss(upsample_bilinear(scores, factor)[..., :height, :width], target)
        return total / len(coarser)


class DeconvNet(nn.Module):
    """Encoder-decoder (Noh et al. 2015): the decoder mirrors the encoder, each stage an upsampling (max-unpooling
    with the encoder's switches, or a learned stride-2 transposed convolution) and 3x3 convolutions."""

    def __init__(self, config: FCNConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        channels = self.encoder.channels
        self.centre = conv_block(channels[-1], channels[-1])           # the fc6 / fc7 of DeconvNet, kept small
        self.upsamplers = nn.ModuleList()
        stages = []
        for i in reversed(range(len(channels))):
            if config.upsample == "transposed":
                upsampler = nn.ConvTranspose2d(channels[i], channels[i], 4, stride=2, padding=1, bias=False)
                upsampler.weight.data.copy_(bilinear_upsampling_weight(channels[i], 4))
                self.upsamplers.append(upsampler)
            out = channels[max(i - 1, 0)]
            convs = config.stage_convs[i] if config.backbone == "small" else 2
            layers = [conv_block(channels[i], channels[i]) for _ in range(convs - 1)]
            stages.append(nn.Sequential(*layers, conv_block(channels[i], out)))
        self.decoder = nn.ModuleList(stages)
        self.scorer = nn.Conv2d(channels[0], config.num_classes + 1, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, targets: dict | None = None):
        height, width = images.shape[-2:]
        features, switches = self.encoder(channels_last(pad_to_multiple(images, self.encoder.stride)))
        x = self.centre(features[-1])                                 # [B, C_last, H/32, W/32]
        for k, stage in enumerate(self.decoder):                      # from the deepest stage up
            if self.config.upsample == "unpool":
                indices, size = switches[-1 - k]
                x = max_unpool2d(x, indices, size)                    # [B, C, h, w] -> [B, C, 2h, 2w], sparse
            else:
                x = self.upsamplers[k](x)                             # [B, C, h, w] -> [B, C, 2h, 2w]
            x = stage(x)                                              # -> [B, C_previous, 2h, 2w]
        scores = self.scorer(x)[..., :height, :width]                 # -> [B, K+1, H, W]
        if targets is None:
            return scores
        return {"segmentation": segmentation_loss(scores, targets["semantic"])}


def build_segmenter(config: FCNConfig) -> nn.Module:
    return DeconvNet(config) if config.architecture == "deconvnet" else FCN(config)


# ------------------------------------------------------------------------------------------------ sliding window
class WindowClassifier(nn.Module):
    """The patchwise baseline: a small CNN that labels the centre pixel of a `window` x `window` crop.

    `model(windows [N, 3, w, w])` -> scores [N, K+1]; with targets {"labels": [N]} -> {"classification": loss}.
    """

    def __init__(self, num_classes: int, window: int = 32, channels=(16, 32, 64), hidden: int = 128):
        super().__init__()
        if window < 2 ** len(channels):
            raise ValueError(f"window {window} is smaller than the network's stride {2 ** len(channels)}")
        self.num_classes, self.window = num_classes, window
        layers, previous = [], 3
        for width in channels:
            layers += [conv_block(previous, width), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        cells = window // 2 ** len(channels)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(previous * cells * cells, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, num_classes + 1))

    def forward(self, windows: torch.Tensor, targets: dict | None = None):
        scores = self.classifier(self.features(windows))             # [N, 3, w, w] -> [N, K+1]
        if targets is None:
            return scores
        return {"classification": F.cross_entropy(scores, targets["labels"], ignore_index=IGNORE_INDEX)}


@torch.no_grad()
def sliding_window_segment(model: WindowClassifier, images: torch.Tensor, rows_per_step: int = 8) -> torch.Tensor:
    """Label every pixel by classifying the window centred on it: [B, 3, H, W] -> scores [B, K+1, H, W].

    The image is zero-padded by w/2 and cut into all H x W windows with `F.unfold`, a band of rows at a time
    (all windows at once would take 3 w^2 H W floats). Each window runs through the whole network on its own.
    """
    model.eval()
    w, (batch, _, height, width) = model.window, images.shape
    before = w // 2                                                   # window of pixel (y, x): rows y - w/2 ...
    padded = F.pad(images, (before, w - 1 - before, before, w - 1 - before))
    out = images.new_zeros(batch, model.num_classes + 1, height, width)
    for b in range(batch):
        for top in range(0, height, rows_per_step):
            rows = min(rows_per_step, height - top)
            band = padded[b:b + 1, :, top:top + rows + w - 1]             # [1, 3, rows + w - 1, W + w - 1]
            windows = F.unfold(band, w)                                   # [1, 3 w w, rows * W]
            windows = windows[0].T.reshape(rows * width, 3, w, w)         # [rows * W, 3, w, w]
            out[b, :, top:top + rows] = model(windows).T.reshape(-1, rows, width)
    return out


# ------------------------------------------------------------------------------------------------ class maps
def read_voc_class_map(path) -> np.ndarray:
    """A VOC `SegmentationClass/*.png` as [H, W] uint8 class indices: 0 background, 1..20 the classes of
    `VOC_CLASSES` in order, 255 "void" (object borders and unlabelled parts, ignored).

    The PNGs are palette images whose pixel *indices* are the labels (the palette only colours them), so the
    indices are read as they are; an RGB image, whose colours would have to be matched back, is refused.
    """
    path = Path(path)
    try:
        with Image.open(path) as picture:
            if picture.mode not in ("P", "L"):
                raise DataError(f"expected a palette (P) or grey (L) PNG of class indices, got mode {picture.mode}",
                                file=str(path))
            return np.array(picture, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError("segmentation PNG not found", file=str(path)) from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"PIL cannot decode the PNG: {error}", file=str(path)) from None


def voc_class_map_path(dataset, record) -> Path | None:
    """Where a VOC root keeps the record's SegmentationClass PNG (`<root>/SegmentationClass/<stem>.png`)."""
    if getattr(dataset, "image_root", None) is None:
        return None
    path = Path(dataset.image_root).parent / "SegmentationClass" / f"{Path(record.file_name).stem}.png"
    return path if path.is_file() else None


def class_map_from_instances(record, class_index: dict[int, int], box_masks: bool = False) -> np.ndarray:
    """[H, W] int64 class map painted from the record's instance masks (COCO style annotations).

    Larger instances are painted first so smaller ones, usually in front, stay visible; crowd regions and the
    boxes of instances without an outline become 255 (ignored), as does a category the model does not know.
    With `box_masks` the boxes of instances without an outline are painted with their class instead.
    """
    from scenekit.data.transforms import record_masks

    height, width = record.height, record.width
    semantic = np.zeros((height, width), dtype=np.int64)
    segmentations = record.segmentations if record.segmentations is not None else [None] * record.num_objects
    with_outline = [k for k, s in enumerate(segmentations) if s is not None]
    masks = np.zeros((record.num_objects, height, width), dtype=np.uint8)
    if with_outline:
        masks[with_outline] = record_masks(record, box_fallback=True)[with_outline]
    for k, segmentation in enumerate(segmentations):
        if segmentation is None:
            x1, y1, x2, y2 = np.round(record.boxes[k]).astype(int)
            masks[k, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    for k in np.argsort(-areas, kind="stable"):
        known = (segmentations[k] is not None or box_masks) and not bool(record.iscrowd[k])
        semantic[masks[k] > 0] = class_index.get(int(record.labels[k]), IGNORE_INDEX) if known else IGNORE_INDEX
    return semantic


def record_class_map(dataset, record, class_index: dict[int, int], box_masks: bool = False) -> np.ndarray | None:
    """The record's [H, W] int64 class map (0 background, 1..K, 255 ignore), or None if nothing gives one.

    Sources, in order: the record's own semantic map (the world), a VOC SegmentationClass PNG beside the
    images, the instance masks (COCO), with `box_masks` the boxes of the instances without one filled with their
    class (else they are ignored, and an image with boxes only has no class map); an image without objects is
    all background. VOC indices map to categories by name when every category is a VOC class name, else an index
    is taken as the category id.
    """
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)               # category id -> class index
    for category_id, index in class_index.items():
        if 0 <= category_id < 255:
            lookup[category_id] = index
    lookup[0] = 0
    if record.semantic is not None:
        semantic = np.asarray(record.semantic).astype(np.int64)
        if semantic.shape != (record.height, record.width):
            raise DataError(f"semantic map is {semantic.shape}, the image {record.height}x{record.width}",
                            record=f"image id {record.image_id}", field="semantic")
        return lookup[np.clip(semantic, 0, 255)]
    png = voc_class_map_path(dataset, record)
    if png is not None:
        from scenekit.data.voc import VOC_CLASSES

        indices = read_voc_class_map(png)
        if indices.shape != (record.height, record.width):
            raise DataError(f"PNG is {indices.shape[1]}x{indices.shape[0]}, the image {record.width}x"
                            f"{record.height}", file=str(png))
        names = {name: cid for cid, name in dataset.categories.items()}
        if set(names) <= set(VOC_CLASSES):
            voc_lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
            voc_lookup[0] = 0
            for v, name in enumerate(VOC_CLASSES, start=1):
                if name in names:
                    voc_lookup[v] = class_index[names[name]]
            return voc_lookup[indices]
        return lookup[indices]
    if record.num_objects == 0:
        return np.zeros((record.height, record.width), dtype=np.int64)
    if not box_masks and (record.segmentations is None or all(s is None for s in record.segmentations)):
        return None                                                   # boxes only: no pixel labels
    return class_map_from_instances(record, class_index, box_masks)


# ------------------------------------------------------------------------------------------------ data
def resize_class_map(class_map: np.ndarray, size: int | None) -> np.ndarray:
    """Nearest-neighbour by pixel centres, so labels are never blended into classes they are not."""
    if size is None or class_map.shape == (size, size):
        return class_map
    rows = np.minimum(((np.arange(size) + 0.5) * class_map.shape[0] / size).astype(np.int64), class_map.shape[0] - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * class_map.shape[1] / size).astype(np.int64), class_map.shape[1] - 1)
    return class_map[rows][:, cols]


class SegmentationData(torch.utils.data.Dataset):
    """(image [3, S, S], {"semantic": [S, S] int64, "image_id"}) for every record that has a class map.

    `flip` mirrors image and map with probability 1/2 (torch's global generator, which the engine seeds).
    Class maps are built once and kept (an [S, S] uint8 per image). Images with boxes but no pixel labels are
    left out, and said so on stderr; `box_masks` trains on their boxes filled with the class instead (counted on
    stderr too). When no image has pixel labels it is an error.
    """

    def __init__(self, dataset, class_ids: list[int], image_size: int | None, flip: bool = False,
                 box_masks: bool = False):
        self.dataset, self.size, self.flip = dataset, image_size, flip
        self.class_index = {cid: i + 1 for i, cid in enumerate(class_ids)}
        self.records, self.maps = [], []
        box_filled = 0
        for record in dataset.records:
            class_map = record_class_map(dataset, record, self.class_index, box_masks)
            if class_map is not None:
                self.records.append(record)
                self.maps.append(resize_class_map(class_map, image_size).astype(np.uint8))
                box_filled += _box_filled_objects(dataset, record) if box_masks else 0
        name = getattr(dataset, "name", None) or "the data"
        if dataset.records and not self.records:
            raise DataError("no image has pixel labels (a semantic map, a VOC SegmentationClass PNG or instance "
                            "masks); pass --option box_masks=true to train on the objects' boxes filled as masks",
                            file=getattr(dataset, "name", None))
        if len(self.records) < len(dataset.records):
            print(f"{name}: {len(dataset.records) - len(self.records)} of {len(dataset.records)} images have boxes "
                  f"but no pixel labels and are left out (--option box_masks=true trains on their boxes filled as "
                  f"masks)", file=sys.stderr, flush=True)
        if box_filled:
            print(f"{name}: box_masks: {box_filled} objects have no mask and train on their boxes filled as masks",
                  file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        image = prepare_image(load_image(self.dataset, self.records[index]), self.size)
        semantic = torch.from_numpy(self.maps[index].astype(np.int64))
        if self.flip and bool(torch.rand(()) < 0.5):
            image, semantic = image.flip(-1), semantic.flip(-1)
        return image, {"semantic": semantic, "image_id": self.records[index].image_id}


def _box_filled_objects(dataset, record) -> int:
    """How many of the record's objects `record_class_map(..., box_masks=True)` paints as their filled box."""
    if record.semantic is not None or voc_class_map_path(dataset, record) is not None:
        return 0                                                      # the class map comes from elsewhere
    segmentations = record.segmentations if record.segmentations is not None else [None] * record.num_objects
    return sum(s is None and not crowd for s, crowd in zip(segmentations, record.iscrowd.tolist()))


def _box_scored(dataset, box_masks: bool, said: list) -> bool:
    """`box_masks`, saying on stderr (the first time, `said` empty) how many objects of evaluation data are scored
    against their filled boxes."""
    if box_masks and not said:
        filled = sum(_box_filled_objects(dataset, record) for record in dataset.records)
        if filled:
            said.append(filled)
            print(f"{getattr(dataset, 'name', '') or 'the data'}: box_masks: {filled} objects have no mask and are "
                  f"scored against their boxes filled as masks", file=sys.stderr, flush=True)
    return box_masks


def collate(batch):
    images = torch.stack([image for image, _ in batch])
    return images, {"semantic": torch.stack([t["semantic"] for _, t in batch]),
                    "image_id": torch.tensor([t["image_id"] for _, t in batch])}


class WindowData(torch.utils.data.Dataset):
    """Training windows of the sliding-window baseline: `per_image` windows per image, each centred on a pixel
    drawn uniformly (torch's global generator, so every epoch sees new pixels), labelled with that pixel's class.
    Images are zero-padded like `sliding_window_segment` pads them."""

    def __init__(self, segmentation: SegmentationData, window: int, per_image: int = 64, flip: bool = False):
        self.data, self.window, self.per_image, self.flip = segmentation, window, per_image, flip

    def __len__(self) -> int:
        return len(self.data) * self.per_image

    def __getitem__(self, index: int):
        image, target = self.data[index // self.per_image]
        height, width = image.shape[-2:]
        y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
        before = self.window // 2
        padded = F.pad(image, (before, self.window - 1 - before, before, self.window - 1 - before))
        crop = padded[:, y:y + self.window, x:x + self.window]                # centred on (y, x)
        if self.flip and bool(torch.rand(()) < 0.5):
            crop = crop.flip(-1)
        return crop, {"labels": target["semantic"][y, x]}


def collate_windows(batch):
    return torch.stack([w for w, _ in batch]), {"labels": torch.stack([t["labels"] for _, t in batch])}


# ------------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def segment_images(model: nn.Module, images: list[np.ndarray], device, image_size: int | None,
                   batch_size: int = 16, superpixels: tuple | None = None) -> list[torch.Tensor]:
    """Class probabilities [K+1, H, W] for each [H, W, 3] uint8 image, at its own size.

    The image is resized to S x S (the training size; None: as it is), labelled, and the scores resized back.
    `superpixels = (scale, sigma, min_size)`: then each image is over-segmented by Felzenszwalb & Huttenlocher's
    graph method with these parameters and the probabilities averaged within each segment (`superpixel_average`).
    """
    if superpixels is not None:
        from scenekit.proposals.graph_segment import felzenszwalb
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        tensors = [prepare_image(image, image_size) for image in chunk]
        same = all(t.shape == tensors[0].shape for t in tensors)
        groups = [torch.stack(tensors)] if same else [t[None] for t in tensors]
        scores = []
        for group in groups:
            group = group.to(device)
            if isinstance(model, WindowClassifier):
                scores += list(sliding_window_segment(model, group))
            else:
                scores += list(model(group))
        for image, score in zip(chunk, scores):
            size = image.shape[:2]
            if tuple(score.shape[-2:]) != tuple(size):
                score = F.interpolate(score[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            probabilities = score.float().softmax(dim=0).cpu()
            if superpixels is not None:
                scale, sigma, min_size = superpixels
                segments = felzenszwalb(image, scale=scale, sigma=sigma, min_size=int(min_size))
                probabilities = superpixel_average(probabilities, segments)
            out.append(probabilities)
    return out


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, device, class_ids: list[int], image_size: int | None,
                          batch_size: int = 16, max_images: int | None = None,
                          superpixels: tuple | None = None, box_masks: bool = False) -> dict:
    """Pixel accuracy, mean accuracy, mean IoU and frequency-weighted IoU over all pixels of `dataset` (one
    confusion matrix, Long et al. 2015 sec. 5), each image scored at its own resolution against its class map
    (with `box_masks`, objects without a mask count as their filled box: `record_class_map`); also the IoU of
    each class and images/s of the model (with its superpixel averaging, if any: see `segment_images`)."""
    from scenekit.metrics.segmentation import SegmentationMeter

    class_index = {cid: i + 1 for i, cid in enumerate(class_ids)}
    meter = SegmentationMeter(num_classes=len(class_ids) + 1, ignore_index=IGNORE_INDEX)
    pairs = []
    for record in dataset.records:
        class_map = record_class_map(dataset, record, class_index, box_masks)
        if class_map is not None:
            pairs.append((record, class_map))
    pairs = pairs[:max_images] if max_images is not None else pairs
    if not pairs:
        raise DataError("no image has pixel labels to evaluate against", file=getattr(dataset, "name", None))
    elapsed = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = [load_image(dataset, record) for record, _ in chunk]
        began = time.perf_counter()
        probabilities = segment_images(model, images, device, image_size, batch_size, superpixels)
        elapsed += time.perf_counter() - began
        for (_, class_map), p in zip(chunk, probabilities):
            meter.update(p.argmax(dim=0).numpy(), class_map)
    scores = meter.compute()
    result = {key: float(scores[key]) for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")}
    names = getattr(dataset, "categories", {}) or {}
    for index, iou in enumerate(scores["per_class_iou"]):
        name = "background" if index == 0 else names.get(class_ids[index - 1], str(class_ids[index - 1]))
        result[f"iou_{name}"] = float(iou)
    result["images"] = len(pairs)
    result["images_per_s"] = len(pairs) / max(elapsed, 1e-9)
    return result


def class_regions(class_map: np.ndarray, probabilities: torch.Tensor) -> dict:
    """One box per predicted category, around all its pixels, scored by their mean probability (so `scenekit
    predict` can draw and list a segmentation like detections): {"boxes" [N, 4], "scores" [N], "labels" [N]}."""
    boxes, scores, labels = [], [], []
    top = probabilities.max(dim=0).values.numpy()
    for category in np.unique(class_map):
        if category == 0:
            continue
        ys, xs = np.nonzero(class_map == category)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        scores.append(float(top[ys, xs].mean()))
        labels.append(int(category))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return {"boxes": torch.tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order]),
            "scores": torch.tensor(np.asarray(scores, dtype=np.float64)[order]),
            "labels": torch.tensor(np.asarray(labels, dtype=np.int64)[order])}


@torch.no_grad()
def predict_semantic(model: nn.Module, images: list[np.ndarray], device, class_ids: list[int],
                     image_size: int | None, superpixels: tuple | None = None) -> list[dict]:
    """Per image: {"semantic" [H, W] int64 category ids (0 background), "probabilities" [K+1, H, W], and the
    per-category "boxes", "scores", "labels" of `class_regions`}."""
    lookup = torch.tensor([0] + list(class_ids), dtype=torch.int64)
    results = []
    for probabilities in segment_images(model, images, device, image_size, superpixels=superpixels):
        class_map = lookup[probabilities.argmax(dim=0)]                 # [K+1, H, W] -> [H, W] category ids
        results.append({"semantic": class_map, "probabilities": probabilities,
                        **class_regions(class_map.numpy(), probabilities)})
    return results


# ------------------------------------------------------------------------------------------------ pictures
def draw_semantic(image, class_map, names: dict | None = None, alpha: float = 0.5) -> Image.Image:
    """The image with each category's pixels tinted in its colour (`scenekit.viz.colour_for`, as boxes of that
    category are drawn) and a legend of the categories present on the right; 255 (ignore) is shown white.

    image [H, W, 3] uint8 (or PIL), class_map [H, W] of category ids (0 = background, left untinted).
    """
    from scenekit.viz import colour_for, to_pil

    picture = np.asarray(to_pil(image), dtype=np.float32)
    class_map = np.asarray(class_map)
    if class_map.shape != picture.shape[:2]:
        raise ValueError(f"class_map {class_map.shape} must match the image {picture.shape[:2]}")
    present = [int(c) for c in np.unique(class_map) if c != 0]
    for category in present:
        colour = (255, 255, 255) if category == IGNORE_INDEX else colour_for(category)
        where = class_map == category
        picture[where] = (1 - alpha) * picture[where] + alpha * np.asarray(colour, dtype=np.float32)
    overlay = Image.fromarray(picture.round().astype(np.uint8), mode="RGB")

    font = ImageFont.load_default()
    entries = [(c, "ignore" if c == IGNORE_INDEX else str((names or {}).get(c, c))) for c in present]
    line, swatch = 14, 10
    text_width = max([int(font.getlength(name)) for _, name in entries] + [int(font.getlength("background"))])
    legend_width = swatch + 8 + text_width + 8
    height = max(overlay.height, line * (len(entries) + 1) + 6)
    canvas = Image.new("RGB", (overlay.width + legend_width, height), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = overlay.width + 4
    for row, (category, name) in enumerate([(0, "background")] + entries):
        y = 4 + row * line
        colour = (255, 255, 255) if category in (0, IGNORE_INDEX) else colour_for(category)
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y - 1), name, fill=(0, 0, 0), font=font)
    return canvas


# ------------------------------------------------------------------------------------------------ ONNX export
def segmenter_graph(model: nn.Module, image_size: int):
    """An FCN's or DeconvNet's ONNX graph (`scenekit.export`): the model itself, images [B, 3, H, W] of any size
    -> scores [B, K + 1, H, W]. Max-unpooling scatters with ONNX's ScatterElements(reduction="add")."""
    from scenekit.models.export_parts import ExportGraph

    graph = ExportGraph("segmenter", model, torch.rand(2, 3, image_size, image_size), ["scores"], True)
    if isinstance(model, DeconvNet) and model.config.upsample == "unpool":
        graph.min_opset, graph.min_opset_reason = 16, "ScatterElements' reduction"
    return graph


# ------------------------------------------------------------------------------------------------ recipes
@dataclass
class FCNOptions:
    """The options of `recipe` (`--option KEY=VALUE`, `scenekit train fcn --list-options`)."""

    architecture: str = option("fcn8s", "'fcn32s' | 'fcn16s' | 'fcn8s' | 'fcn4s' | 'deconvnet'")
    upsample: str = option("unpool", "deconvnet's decoder: 'unpool' | 'transposed'")
    downsample: str = option("pool", "encoder: 'pool' (2x2 max-pool) | 'stride' (stride-2 3x3 convolution)")
    image_size: int = option(96, "network input side, px: images are resized to it, scores back to the image")
    world_size: int = option(128, "side of the images `--data world` draws, px")
    channels: tuple[int, ...] = option((16, 32, 64, 128, 128), "small encoder: stage widths (stride 2 ** len)")
    convs_per_stage: Any = option(None, "3x3 convolutions per stage: one count or one per stage (None: 1, 1, 2, "
                                        "2, ...)")
    head: int = option(128, "width of the convolutionalized fc6 / fc7")
    backbone: str = option("small", "encoder: 'small' | 'vgg16' (the paper's)")
    backbone_weights: str | None = option(None, "torchvision-format VGG-16 state dict (None: from scratch)")
    freeze_stages: int = option(0, "vgg16: its first blocks kept fixed, e.g. 2 with pretrained weights (0: none)")
    block: str = option("plain", "small encoder's units: 'plain' conv-BN-ReLU | 'residual'")
    aux_weight: float = option(0.0, "FCN: weight of the coarser nets' losses (deep supervision; 0: off)")
    epochs: int | None = option(None, "training epochs (None: 25)")
    lr: float | None = option(None, "peak learning rate (None: 3e-3)")
    warmup_steps: int = option(20, "linear warm-up, iterations")
    superpixel_scale: float = option(0.0, "Felzenszwalb-Huttenlocher k: average the class scores within each "
                                          "segment before the argmax (0: off)")
    superpixel_sigma: float = option(0.5, "superpixels: Gaussian smoothing before segmenting, px")
    superpixel_min_size: int = option(20, "superpixels: smallest segment, px")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    flip: bool = option(True, "random horizontal flip in training")
    box_masks: bool = option(False, "train images with boxes but no pixel labels on their boxes filled as masks")


def recipe(categories: dict[int, str], *, name: str = "fcn", **options) -> Recipe:
    """Train an FCN or DeconvNet: one phase, AdamW with warm-up and a cosine schedule, per-pixel cross-entropy.

    Images are resized to `image_size` x `image_size` for the network, in training and in inference, and the
    scores resized back to each image, so metrics are taken at the image's own resolution. `world_size` is the
    side of the images `--data world` generates (the world's objects have fixed pixel areas, so it is kept at
    the world's 128 px while the network input shrinks).

    What the defaults rest on (benchmarks/README.md, the world at 128 px, equal CPU time): the errors are mostly
    shape confusions (star vs cross, ring vs circle), few are edges. A network input of 96 px learns a little more
    per CPU second than 128 px in short runs (1.8x the images per second, a stride-32 cell sees more of each shape,
    edges blur a little more); after 10 CPU-minutes both reach ~0.72 test mIoU with FCN-8s. A stride-16 encoder
    (finer grid, smaller receptive field) learnt clearly slower and a 1.5x wider or deeper one no faster. The
    stride of the finest scores caps what any training can reach: perfect stride-8 scores upsampled bilinearly
    label the world at 96 px input with ~0.85 mean IoU, stride-4 scores with ~0.93; `architecture="fcn4s"`
    (pool2's skip) lifts FCN-8s's test mIoU from 0.724 to 0.747 in the same 532 CPU-s (it trails FCN-8s in
    short runs, where pool2's shallow scores add noise before the shapes are learnt). Early on the net underfits
    (it cannot fit 200 images in 40 epochs: train mIoU 0.66; learning rates 1e-3 to 1e-2 change little), but 25
    epochs over 2000 images overfit them (train 0.85, val 0.77): the same CPU time over 5000 world images x 10
    epochs gives FCN-4s 0.768 test mIoU in 473 CPU-s (train 0.80, val 0.79), so pass `--train-images 5000
    --option epochs=10`; the defaults here stay 25 epochs for the CLI's 2000 images. The paper trains
    VGG-16 FCNs from ImageNet weights with SGD, momentum 0.99 and batch 1; here AdamW with BatchNorm trains the
    small encoder from scratch (no pre-training phase). Small batches (4-8) learn the most per CPU second. 25
    epochs of 2000 images fit 10 CPU-minutes on one thread. Best checkpoint by validation mean IoU.

    `superpixel_scale` > 0 averages the predicted class distributions within each Felzenszwalb-Huttenlocher
    segment (k = scale, `superpixel_sigma`, `superpixel_min_size`) before the argmax, in evaluation and
    prediction (Farabet et al. 2013; training is unchanged). On the world, whose objects are flat colours, this
    fixes most of the FCN's errors (patches of a shape labelled as another, ragged edges): FCN-4s trained on
    5000 images x 10 epochs (491 CPU-s) scores 0.876 test mIoU with scale 800, sigma 0.5, min_size 20 (chosen
    on the val split; ~7 ms per 128 px image), 0.768 without: `scenekit train fcn --train-images 5000 --option
    architecture=fcn4s --option epochs=10 --option superpixel_scale=800`. `block="residual"` and `aux_weight`
    (deep supervision) did not learn faster per CPU second in short runs. Defaults stay the paper's nets (no
    superpixels), also for checkpoints saved before these options existed.

    Training images need pixel labels: those with boxes only are left out (an error when none has any), unless
    `box_masks=True`, which trains on their boxes filled with the class and says how many (`SegmentationData`).
    """
    o = read_options(FCNOptions, options, name)
    if o.backbone not in ("small", "vgg16"):
        raise DataError(f"FCN encoders are 'small' or 'vgg16' (the paper's), got {o.backbone!r}", field="backbone")
    class_ids = sorted(int(c) for c in categories)
    if not (np.isfinite(o.superpixel_scale) and o.superpixel_scale >= 0):
        raise DataError(f"superpixel_scale must be >= 0 (0: no superpixel averaging), got {o.superpixel_scale!r}",
                        field="superpixel_scale")
    superpixels = (float(o.superpixel_scale), float(o.superpixel_sigma), int(o.superpixel_min_size)) \
        if o.superpixel_scale > 0 else None
    config = FCNConfig(num_classes=len(class_ids), architecture=o.architecture, upsample=o.upsample,
                       downsample=o.downsample, channels=tuple(o.channels), head=o.head,
                       convs_per_stage=tuple(o.convs_per_stage) if isinstance(o.convs_per_stage, (list, tuple))
                       else o.convs_per_stage,
                       backbone=o.backbone, backbone_weights=o.backbone_weights, freeze_stages=o.freeze_stages,
                       block=o.block,
                       aux_weight=float(o.aux_weight))
    if o.freeze_stages and o.backbone != "vgg16":
        raise DataError("freeze_stages keeps a pretrained encoder's first blocks fixed: it needs --backbone vgg16 "
                        "(the small encoder trains from scratch)", field="freeze_stages")
    o = replace(o, epochs=25 if o.epochs is None else o.epochs)          # as resolved, as checkpoints store it
    phases = [Phase("segment", epochs=o.epochs, lr=3e-3 if o.lr is None else o.lr, optimizer="adamw",
                    weight_decay=o.weight_decay, schedule="cosine", warmup_steps=o.warmup_steps,
                    clip_grad_norm=10.0)]

    def build(model_config: dict) -> nn.Module:
        return build_segmenter(FCNConfig(**{**model_config, "channels": tuple(model_config["channels"])}))

    model_config = {**asdict(config), "channels": list(config.channels),
                    "convs_per_stage": list(config.stage_convs)}
    said: list = []                                     # evaluation says once that it scores filled boxes
    return Recipe(
        model_name=name, categories=dict(categories), options=stored_options(o), model_config=model_config,
        build_model=build, phases=phases,
        make_dataset=lambda dataset, train: SegmentationData(dataset, class_ids, o.image_size,
                                                             flip=o.flip and train, box_masks=o.box_masks),
        collate=collate,
        evaluate=lambda model, dataset, device: evaluate_segmentation(
            model, dataset, device, class_ids, o.image_size, superpixels=superpixels,
            box_masks=_box_scored(dataset, o.box_masks, said)),
        predict=lambda model, images, device: predict_semantic(model, images, device, class_ids, o.image_size,
                                                               superpixels),
        best_metric="mean_iou", best_mode="max",
        world={"image_size": o.world_size},
        batch_size=4,                  # small batches learned far more per CPU-second (benchmarks/fcn.py)
        export=lambda model: segmenter_graph(model, o.image_size or 128),
    )


@dataclass
class WindowOptions:
    """The options of `window_recipe` (`scenekit train sliding-window --list-options`)."""

    image_size: int = option(128, "side images are resized to, px")
    window: int = option(32, "side of the window whose centre pixel is labelled, px")
    channels: tuple[int, ...] = option((16, 32, 64), "stage widths of the window classifier")
    hidden: int = option(128, "width of its hidden fully connected layer")
    windows_per_image: int = option(64, "random windows drawn from each training image")
    val_images: int = option(10, "images the (slow) dense sliding window scores in validation")
    epochs: int | None = option(None, "training epochs (None: 10)")
    lr: float | None = option(None, "peak learning rate (None: 3e-3)")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    flip: bool = option(True, "random horizontal flip in training")
    backbone: str = option("small", "checked only: the baseline has its own small CNN ('small')")
    backbone_weights: str | None = option(None, "checked only: no pretrained weights (None)")
    box_masks: bool = option(False, "train images with boxes but no pixel labels on their boxes filled as masks")


def window_recipe(categories: dict[int, str], *, name: str = "sliding-window", **options) -> Recipe:
    """The sliding-window baseline: train on random windows, label images window by window.

    Validation runs the dense sliding window, which is slow by nature: it scores the first `val_images` images.
    """
    o = read_options(WindowOptions, options, name)
    if o.backbone != "small" or o.backbone_weights is not None:
        raise DataError("the sliding-window baseline has its own small CNN (no --backbone)", field="backbone")
    class_ids = sorted(int(c) for c in categories)
    o = replace(o, epochs=10 if o.epochs is None else o.epochs)          # as resolved, as checkpoints store it
    phases = [Phase("classify", epochs=o.epochs, lr=3e-3 if o.lr is None else o.lr, optimizer="adamw",
                    weight_decay=o.weight_decay, schedule="cosine", warmup_steps=20, clip_grad_norm=10.0)]
    model_config = {"num_classes": len(class_ids), "window": o.window, "channels": list(o.channels),
                    "hidden": o.hidden}
    # backbone and backbone_weights are only checked (the baseline has its own CNN), never stored
    stored = {key: value for key, value in stored_options(o).items() if key not in ("backbone", "backbone_weights")}

    def make_dataset(dataset, train):
        pixels = SegmentationData(dataset, class_ids, o.image_size, flip=o.flip and train, box_masks=o.box_masks)
        return WindowData(pixels, o.window, o.windows_per_image, flip=False)

    said: list = []

    return Recipe(
        model_name=name, categories=dict(categories), options=stored, model_config=model_config,
        build_model=lambda c: WindowClassifier(c["num_classes"], c["window"], tuple(c["channels"]), c["hidden"]),
        phases=phases, make_dataset=make_dataset, collate=collate_windows,
        evaluate=lambda model, dataset, device: evaluate_segmentation(
            model, dataset, device, class_ids, o.image_size, max_images=o.val_images,
            box_masks=_box_scored(dataset, o.box_masks, said)),
        predict=lambda model, images, device: predict_semantic(model, images, device, class_ids, o.image_size),
        best_metric="mean_iou", best_mode="max",
        world={"image_size": o.image_size},
    )
