"""What a model family gives `scenekit.export`: its ONNX graphs, and how onnxruntime stands in for its tensor stages.

A family's recipe carries two hooks (`scenekit.recipes.Recipe`):

- `export(model) -> ExportGraph`: the graph on the images (`ExportGraph.network`) and the further graphs its
  inference needs after a step that stays in Python (`ExportPart`: the RoI heads after the proposal layer, the
  decoder step inside the decoding loop). The family writes them next to its model, so the graph code reads
  against the model it restates; `scenekit.export` traces them, whatever the family.
- `from_onnx(skeleton, graphs: OnnxGraphs) -> nn.Module`: the module the recipe's `predict` (and the family's
  own inference code) runs, built from `skeleton` -- the model rebuilt from the exported configuration, its
  weights NaN, so any use of them shows -- with its tensor stages answered by onnxruntime sessions (`graphs`).
  None: the whole `model(images)` is the main graph (`OnnxModule(graphs.main, skeleton)`).

Here are the pieces both sides share: the dataclasses, the RoI operators as functions that trace to ONNX's
operators of the same definition, and the stand-ins for a module or a method. This module imports neither
onnx nor onnxruntime (they are optional extras, loaded by `scenekit.export`).

ONNX's MaxRoiPool is Caffe's RoI pooling (coordinates rounded half away from zero, floor/ceil bins, empty bins
0) and its RoiAlign with coordinate_transformation_mode="half_pixel" and sampling_ratio=2 is RoIAlign with
aligned=True: the same definitions as `scenekit.roi` (tests/test_export.py compares them on random RoIs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


# ================================================================================================ the graphs
class Tupled(nn.Module):
    """Wrap `function(*inputs) -> tensors` as a module whose forward returns a tuple (what the exporter traces).
    `owner` is the module whose parameters the function reads, registered so the exporter finds them."""

    def __init__(self, owner: nn.Module, function):
        super().__init__()
        self.owner, self.function = owner, function

    def forward(self, *inputs: torch.Tensor):
        return as_tuple(self.function(*inputs))


def as_tuple(out) -> tuple:
    """A network's output as a tuple of tensors: one tensor, or a tuple or list of them."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@dataclass
class ExportPart:
    """A second graph of a model, written beside the main file as `<stem>.<name>.onnx`: what runs after a step
    that stays in Python (the RoI heads after the proposal layer, the decoder step inside the decoding loop)."""

    name: str                             # "head" | "mask_head" | "step"
    network: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]

    def __post_init__(self):
        self.network.eval()


@dataclass
class ExportGraph:
    """What one family exports: the module to trace on the images, an example input, the names of its outputs,
    which input axes may vary, and the further graphs (`parts`) the model's inference needs.

    `family` is a label written into the file's metadata ("localizer", "two-stage", ...); `min_opset` the lowest
    ONNX opset the graphs' operators need, `min_opset_reason` which operators those are."""

    family: str
    network: nn.Module
    example: torch.Tensor                 # [B, 3, H, W]
    output_names: list[str]
    dynamic_size: bool                    # height and width may vary (batch always may)
    parts: list[ExportPart] = field(default_factory=list)
    min_opset: int = 1
    min_opset_reason: str = ""

    def __post_init__(self):
        # The exporter restores the mode the network had, recursively: it must be eval, or the model's
        # BatchNorm and dropout layers are left in training mode after the export.
        self.network.eval()


# RoI pooling as ONNX operators. scenekit.roi's operators build sparse matrices that do not trace; these
# functions compute with them in PyTorch and tell the exporter the ONNX operator of the same definition.
class _RoIPoolOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, size: int, scale: float):
        from scenekit.roi import roi_pool

        return roi_pool(features, rois, size, scale)

    @staticmethod
    def symbolic(g, features, rois, size, scale):
        return g.op("MaxRoiPool", features, rois, pooled_shape_i=[size, size], spatial_scale_f=scale)


class _RoIAlignOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, size: int, scale: float):
        from scenekit.roi import roi_align

        return roi_align(features, rois, size, scale, sampling_ratio=2, aligned=True)

    @staticmethod
    def symbolic(g, features, rois, size, scale):
        def constant(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))
        batch = g.op("Cast", g.op("Gather", rois, constant(0), axis_i=1), to_i=7)          # INT64 [R]
        boxes = g.op("Slice", rois, constant([1]), constant([5]), constant([1]))            # [R, 4]
        return g.op("RoiAlign", features, boxes, batch, mode_s="avg", output_height_i=size, output_width_i=size,
                    sampling_ratio_i=2, spatial_scale_f=scale, coordinate_transformation_mode_s="half_pixel")


ROI_ALIGN_OPSET = 16                      # RoiAlign's coordinate_transformation_mode="half_pixel"


def roi_features(features: torch.Tensor, rois: torch.Tensor, size: int, scale: float, align: bool) -> torch.Tensor:
    """`scenekit.roi.roi_pool` (or `roi_align(..., sampling_ratio=2, aligned=True)`) that exports as ONNX's
    MaxRoiPool (RoiAlign, opset >= ROI_ALIGN_OPSET): features [B, C, H, W], rois [R, 5] -> [R, C, size, size]."""
    return (_RoIAlignOp if align else _RoIPoolOp).apply(features, rois, size, scale)


# ================================================================================================ inference
class Session(Protocol):
    """An onnxruntime session on one exported file (`scenekit.export.OnnxSession`)."""

    def tensors(self, *inputs) -> tuple[torch.Tensor, ...]: ...


@dataclass
class OnnxGraphs:
    """The sessions of one exported model, for a family's `from_onnx` hook: `main` on the images, `parts` by
    name ("head", "step", ...), and the main file's metadata (`outputs`: the main graph's output names)."""

    main: Session
    parts: dict[str, Session]
    metadata: dict


class OnnxModule(nn.Module):
    """A stand-in for the trained model (or one of its modules) inside the model's own inference code:
    `module(images)` runs the ONNX graph, any other attribute (configuration, anchors, strides) comes from
    `skeleton`, the same module built from the stored configuration without its trained weights -- which are
    never used."""

    def __init__(self, session: Session, skeleton: nn.Module):
        super().__init__()
        self.session = session
        self.skeleton = skeleton

    def forward(self, images: torch.Tensor, targets=None):
        if targets is not None:
            from scenekit.errors import ScenekitError

            raise ScenekitError("an ONNX model runs inference only")
        outputs = self.session.tensors(images)
        return outputs[0] if len(outputs) == 1 else outputs

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["skeleton"], name)


class OnnxFunction:
    """A method of the model (`classify_regions`, `mask_logits`, ...) answered by an ONNX part: `function(*inputs)`
    -> its one output, or the tuple of its outputs. A plain callable, not a module: set on the skeleton instance,
    it takes the place of the class's method."""

    def __init__(self, session: Session):
        self.session = session

    def __call__(self, *inputs):
        outputs = self.session.tensors(*inputs)
        return outputs[0] if len(outputs) == 1 else outputs
