"""ONNX export of trained models, and inference with onnxruntime, end to end for every model that exports.

What goes into ONNX graphs is the part of a model that is a fixed computation on tensors: the backbone, the
heads, a decoder step, with their raw outputs. What stays in Python is the part whose control flow depends on
the data -- decoding, thresholds, non-maximum suppression, Overfeat's greedy merge, the RPN's proposal layer,
word by word decoding and beam search -- so that part runs the *same* code as `scenekit predict` on the raw
outputs onnxruntime returns. The main file (`model.onnx`) holds the graph on the images; models with a second
tensor stage after such a Python step get one more file per stage beside it (`model.head.onnx`, ...):

  localizer        images [B, 3, S, S]  -> class logits [B, K], boxes [B, R, 4]
  overfeat         images [B, 3, H, W]  -> logits [B, K, H', W'], boxes [B, R, 4, H', W'] (the localizer as a
                                           fully convolutional network, dense windows)
  yolo1            images [B, 3, S, S]  -> output [B, S_g, S_g, 5B + C]
  yolo2            images [B, 3, H, W]  -> output [B, G_h, G_w, A, 5 + C]   (H, W multiples of 32)
  fcn*, deconvnet  images [B, 3, H, W]  -> scores [B, K + 1, H, W]
  fast-rcnn        images [B, 3, H, W]  -> features [B, C, h, w]
  faster/mask-rcnn images [B, 3, H, W]  -> features, RPN objectness [B, hwA], RPN deltas [B, hwA, 4]
    .head          features, rois [R, 5] -> class logits [R, K + 1], box deltas [R, K, 4]   (RoI pooling in
                                           the graph: ONNX MaxRoiPool, or RoiAlign for roi_op="align")
    .mask_head     features, rois [R, 5] -> mask logits [R, K, m, m]   (ONNX RoiAlign; Mask R-CNN only)
  captioners       images [B, 3, S, S]  -> the decoder's state before the first word and the image context
    .step          previous words [N], state, context -> next-word logits [N, V], new state (, alpha [N, L])

ONNX's MaxRoiPool is Caffe's RoI pooling (coordinates rounded half away from zero, floor/ceil bins, empty bins
0) and its RoiAlign with coordinate_transformation_mode="half_pixel" and sampling_ratio=2 is RoIAlign with
aligned=True: the same definitions as `scenekit.roi` (tests/test_export.py compares them on random RoIs).

`load_onnx` rebuilds the model's Python side from the file alone: the checkpoint's model name, categories,
options and configuration (image size, anchors, proposal and NMS settings, thresholds, vocabulary) travel in
the metadata (key "scenekit"). A weightless copy of the model (its parameters NaN, so any slip shows) gets its
tensor stages swapped for onnxruntime sessions -- `features`/`rpn`, `classify_regions`, `mask_logits`, `start`
and `step` -- and the model's own inference code then runs unchanged. onnx and onnxruntime are optional extras
(`pip install 'scenekit[export]'`), imported only here, when needed.

DeconvNet's max-unpooling traces with a dynamic image size: the padded input makes every pooled map exactly
half the map it came from, so the unpooled zeros are built from the pooled values' shape (`_traceable_segmenter`)
instead of the recorded size, which the tracer would freeze into constants.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scenekit.errors import DataError, ScenekitError

OPSET = 17
METADATA_KEY = "scenekit"


def _require(module: str):
    """Import an optional dependency of export/ONNX inference, with an actionable message when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScenekitError(f"ONNX export and inference need {module}: pip install 'scenekit[export]' "
                            "(onnx and onnxruntime)") from None


# ================================================================================================ the graphs
class _Tupled(nn.Module):
    """Wrap `function(*inputs) -> tensors` as a module whose forward returns a tuple (what the exporter traces)."""

    def __init__(self, owner: nn.Module, function):
        super().__init__()
        self.owner, self.function = owner, function

    def forward(self, *inputs: torch.Tensor):
        out = self.function(*inputs)
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
    which input axes may vary, and the further graphs (`parts`) the model's inference needs."""

    family: str
    network: nn.Module
    example: torch.Tensor                 # [B, 3, H, W]
    output_names: list[str]
    dynamic_size: bool                    # height and width may vary (batch always may)
    parts: list[ExportPart] = field(default_factory=list)

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


def roi_features(features: torch.Tensor, rois: torch.Tensor, size: int, scale: float, align: bool) -> torch.Tensor:
    """`scenekit.roi.roi_pool` (or `roi_align(..., sampling_ratio=2, aligned=True)`) that exports as ONNX's
    MaxRoiPool (RoiAlign): features [B, C, H, W], rois [R, 5] -> [R, C, size, size]."""
    return (_RoIAlignOp if align else _RoIPoolOp).apply(features, rois, size, scale)


def _two_stage_graph(model: nn.Module) -> ExportGraph:
    """Fast/Faster/Mask R-CNN: the images' graph, then the RoI heads on features + RoIs."""
    from scenekit.models.mask_rcnn import MaskRCNN

    c, scale = model.config, 1.0 / model.features.stride
    images = torch.rand(1, 3, c.image_size, c.image_size)
    # Mask R-CNN whose mask branch reads FPN's finer level: the images' graph gives that map as a fourth output.
    fine_mask_map = isinstance(model, MaskRCNN) and model.mask_stride != model.features.stride
    if hasattr(model, "rpn"):
        def backbone_and_rpn(images):
            if fine_mask_map:
                features, mask_map = model.feature_maps(images)        # [B, C, H/8, W/8], [B, C, H/4, W/4]
            else:
                features = model.features(images)                     # [B, 3, H, W] -> [B, C, H/s, W/s]
            objectness, deltas = model.rpn(features)                   # -> [B, HWA], [B, HWA, 4]
            return (features, objectness, deltas) + ((mask_map,) if fine_mask_map else ())
        graph = ExportGraph("two-stage", _Tupled(model, backbone_and_rpn), images,
                            ["features", "objectness", "deltas"] + (["mask_features"] if fine_mask_map else []),
                            True)
    else:
        graph = ExportGraph("fast-rcnn", _Tupled(model, model.features), images, ["features"], True)
    with torch.no_grad():
        features = model.features(images).contiguous()
        mask_map = model.feature_maps(images)[1].contiguous() if fine_mask_map else features
    boxes = torch.tensor([[4.0, 6.0, 60.0, 90.0], [30.0, 10.0, 150.0, 120.0], [0.0, 0.0, 12.0, 9.0]])
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)         # [R, 5] (image index, x1, y1, x2, y2)
    inputs = {"features": {0: "batch", 2: "height", 3: "width"}, "rois": {0: "rois"}}

    def classify_regions(features, rois):      # FastRCNN.classify_regions, its RoI operator as ONNX's
        return model.box_head(roi_features(features, rois, c.roi_size, scale, c.roi_op == "align"))
    graph.parts.append(ExportPart("head", _Tupled(model, classify_regions), (features, rois), ["features", "rois"],
                                  ["class_logits", "box_deltas"],
                                  {**inputs, "class_logits": {0: "rois"}, "box_deltas": {0: "rois"}}))
    if isinstance(model, MaskRCNN):
        def mask_logits(mask_map, rois):       # MaskRCNN.mask_logits, its RoIAlign as ONNX's
            return model.mask_head(roi_features(mask_map, rois, c.mask_size // 2, 1.0 / model.mask_stride,
                                                 True))
        graph.parts.append(ExportPart("mask_head", _Tupled(model, mask_logits), (mask_map, rois),
                                      ["features", "rois"], ["mask_logits"], {**inputs, "mask_logits": {0: "rois"}}))
    return graph


def _captioner_graph(model: nn.Module) -> ExportGraph:
    """A captioner: `start` (the encoder) on the images, and `step` (one word of the decoder) as a part."""
    kind, hidden, size = model.config.kind, model.config.hidden, model.config.image_size

    def encoder(images):                   # Captioner.start, batch left symbolic (it uses len(images))
        if kind == "showattendtell":
            state, context = model.start(images)
            return tuple(state) + tuple(context)                   # h, c [B, H]; a, W_a a [B, L, D], [B, L, A]
        grid = model.encoder(images)                                # [B, 3, S, S] -> [B, C, g, g]
        feature = model.image_feature(grid)                         # CNN(I) [B, F]
        if kind == "deepimagesent":
            bias = model.image_bias(feature)                        # b_v [B, H]
            return torch.zeros_like(bias), bias
        x = model.image_embed(feature)                              # x_{-1} [B, E]
        zeros = torch.zeros_like(x[:, :1]) * torch.zeros(1, hidden)  # [B, H]
        return tuple(model.cell(model.drop(x), (zeros, zeros)))    # the image step, t = -1
    names = {"deepimagesent": ["h", "image_bias"], "showtell": ["h", "c"],
             "showattendtell": ["h", "c", "annotations", "projected_annotations"]}[kind]
    images = torch.rand(2, 3, size, size)
    graph = ExportGraph("captioner", _Tupled(model, encoder), images, names, False)

    def step(tokens, *tensors):            # Captioner.step with its (state, context) tuples flattened
        logits, state, alpha = model.step(tokens, tuple(tensors[:2]), tuple(tensors[2:]))
        return (logits, *state) + (() if alpha is None else (alpha,))
    with torch.no_grad():
        encoded = tuple(o.contiguous() for o in graph.network(images))
    tokens = torch.full((2,), model.start_id, dtype=torch.int64)
    outputs = ["logits", f"{names[0]}_next", f"{names[1]}_next"] + (["alpha"] if kind == "showattendtell" else [])
    graph.parts.append(ExportPart("step", _Tupled(model, step), (tokens, *encoded), ["tokens", *names], outputs,
                                  {n: {0: "rows"} for n in ["tokens", *names, *outputs]}))
    return graph


def export_graph(recipe, model: nn.Module) -> ExportGraph:
    """The traceable parts of `model` (built by `recipe`), see the module docstring."""
    from scenekit.models import localizer as localizer_module
    from scenekit.models.fast_rcnn import FastRCNN

    model = model.eval()
    name = type(model).__name__
    if isinstance(model, localizer_module.Localizer):
        size, rows = model.config.image_size, model.num_box_rows
        if recipe.options.get("inference") == "overfeat":
            dense = localizer_module.FullyConvolutionalLocalizer(model).eval()

            def dense_windows(images):         # FullyConvolutionalLocalizer.forward, batch left symbolic
                features = dense.features(images)
                return dense.classifier(features), dense.regressor(features).unflatten(1, (rows, 4))
            example = torch.rand(1, 3, size + 2 * dense.stride, size + dense.stride)
            return ExportGraph("overfeat", _Tupled(dense, dense_windows), example, ["logits", "boxes"], True)

        def localize(images):                  # Localizer.forward, batch left symbolic (it uses len(images))
            features = model.features(images)                          # [B, 3, S, S] -> [B, C, h, w]
            return model.classifier(features), model.regressor(features).unflatten(1, (rows, 4))
        return ExportGraph("localizer", _Tupled(model, localize), torch.rand(2, 3, size, size),
                           ["logits", "boxes"], False)
    if name == "Yolo1":
        grid = model.config.grid

        def yolo1(images):                     # Yolo1.forward, batch left symbolic
            _, features = model.features(images)
            return model.head(features).unflatten(1, (grid, grid, -1))      # -> [B, S, S, 5B + C]
        size = model.config.image_size
        return ExportGraph("yolo1", _Tupled(model, yolo1), torch.rand(2, 3, size, size), ["output"], False)
    if name == "Yolo2":
        size = model.config.image_size
        return ExportGraph("yolo2", model, torch.rand(2, 3, size, size), ["output"], True)
    if name in ("FCN", "DeconvNet"):
        size = recipe.options.get("image_size") or 128
        return ExportGraph("segmenter", model, torch.rand(2, 3, size, size), ["scores"], True)
    if isinstance(model, FastRCNN):
        return _two_stage_graph(model)
    if name == "Captioner":
        return _captioner_graph(model)
    raise ScenekitError(f"exporting {recipe.model_name!r} ({name}) to ONNX is not supported; supported: localizer, "
                        "overfeat, yolo1, yolo2, fcn*, deconvnet*, fast-rcnn, faster-rcnn, mask-rcnn and the "
                        "captioners")


@contextlib.contextmanager
def _traceable_segmenter(model: nn.Module):
    """Trace-friendly stand-ins for two operations of `scenekit.models.fcn`, with the same values:

    - FCN's fixed bilinear upsampling builds its [C, 1, 2f, 2f] kernel with `expand` from the traced channel
      count, which the TorchScript exporter cannot give a static shape: here it is built from the
      configuration's class count.
    - `max_unpool2d` allocates its output from `output_size` as Python ints, which the tracer records as
      constants (a fixed image size). The encoder pads the image to a multiple of its stride, so every map it
      pools is even-sized and exactly twice the pooled one: the zeros come from the pooled values' own
      (symbolic) shape, and ScatterElements(reduction="add") puts the values back, as `scatter_add_` does.
    """
    from scenekit.models import fcn

    originals = fcn.upsample_bilinear, fcn.max_unpool2d
    channels = getattr(getattr(model, "config", None), "num_classes", None)

    def upsample_bilinear(scores: torch.Tensor, factor: int) -> torch.Tensor:
        if factor == 1:
            return scores
        kernel = fcn.bilinear_kernel(2 * factor).to(scores)[None, None].repeat(channels + 1, 1, 1, 1)
        return torch.nn.functional.conv_transpose2d(scores, kernel, stride=factor, padding=factor // 2,
                                                    groups=channels + 1)

    def max_unpool2d(values: torch.Tensor, indices: torch.Tensor, output_size) -> torch.Tensor:
        if tuple(int(v) for v in output_size[-2:]) != (2 * values.shape[-2], 2 * values.shape[-1]):
            raise ScenekitError("the traceable max-unpooling needs maps of twice the pooled size")
        out = torch.zeros_like(values).repeat(1, 1, 2, 2)                       # [B, C, 2h, 2w], symbolic
        flat = out.flatten(2).scatter_add(2, indices.flatten(2), values.flatten(2))
        return flat.view_as(out)

    if channels is not None:
        fcn.upsample_bilinear = upsample_bilinear
    fcn.max_unpool2d = max_unpool2d
    try:
        yield
    finally:
        fcn.upsample_bilinear, fcn.max_unpool2d = originals


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _small_buffers(model: nn.Module) -> dict:
    """Buffers the post-processing may read (YOLOv2's anchors): small, and not BatchNorm statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return {name: buffer.detach().cpu().tolist() for name, buffer in model.named_buffers()
            if not name.endswith(skip) and buffer.numel() <= 4096}


def _trace(network: nn.Module, example: tuple, input_names: list[str], output_names: list[str],
           dynamic_axes: dict, opset: int, metadata: dict):
    """One module -> an onnx ModelProto with `metadata` under METADATA_KEY."""
    onnx = _require("onnx")
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")            # tracer warnings about Python values taken as constants
        # The TorchScript exporter (dynamo=False) works offline with plain onnx; the dynamo one needs onnxscript.
        torch.onnx.export(network, example, buffer, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)
    proto.producer_name = "scenekit"
    return proto


def part_path(path, name: str) -> Path:
    """Where the part `name` of the main file `path` lives: model.onnx -> model.head.onnx."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{name}{path.suffix}")


def export_onnx(recipe, model: nn.Module, path, *, opset: int = OPSET) -> Path:
    """Write `model`'s graphs (`export_graph`) as ONNX: the main file at `path`, batch (and, where the model
    allows, height and width) dynamic, with the recipe's configuration in the metadata, and each part beside it
    (`part_path`). Returns the main file's path."""
    onnx = _require("onnx")
    graph = export_graph(recipe, model)
    unpooling = type(model).__name__ == "DeconvNet" and model.config.upsample == "unpool"
    if opset < 16 and (unpooling or getattr(model.config, "roi_op", "") == "align"
                       or any(p.name == "mask_head" for p in graph.parts)):
        raise ScenekitError(f"{recipe.model_name} needs ONNX opset >= 16 (RoiAlign's half_pixel mode, "
                            f"ScatterElements' reduction), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = {}
    with _traceable_segmenter(model) if graph.family == "segmenter" else contextlib.nullcontext():
        for part in graph.parts:
            proto = _trace(part.network, part.example, part.input_names, part.output_names, part.dynamic_axes,
                           opset, {"model_name": recipe.model_name, "part": part.name, "main": path.name,
                                   "inputs": part.input_names, "outputs": part.output_names})
            data = proto.SerializeToString()
            part_path(path, part.name).write_bytes(data)
            parts[part.name] = {"file": part_path(path, part.name).name, "sha256": hashlib.sha256(data).hexdigest()}
        axes = {0: "batch", 2: "height", 3: "width"} if graph.dynamic_size else {0: "batch"}
        with torch.no_grad():
            ranks = [o.dim() for o in _as_tuple(graph.network(graph.example))]
        # Every output axis is named, so onnxruntime expects no fixed output shape when the input varies.
        output_axes = {n: ({i: f"{n}_{i}" for i in range(r)} if graph.dynamic_size else {0: "batch"})
                       for n, r in zip(graph.output_names, ranks)}
        metadata = {"model_name": recipe.model_name,
                    "categories": {str(k): v for k, v in recipe.categories.items()},
                    "options": recipe.options, "model_config": recipe.model_config, "family": graph.family,
                    "outputs": graph.output_names, "dynamic_size": graph.dynamic_size, "runnable": True,
                    "parts": parts, "buffers": _small_buffers(model), "input_size": list(graph.example.shape[2:])}
        proto = _trace(graph.network, (graph.example,), ["images"], graph.output_names,
                       {"images": axes, **output_axes}, opset, metadata)
    onnx.save(proto, str(path))
    return path


def export_checkpoint(checkpoint_path, path, make_recipe, *, opset: int = OPSET) -> Path:
    """Export the model saved at `checkpoint_path`. `make_recipe(name, categories, stored=options, source=file)`
    rebuilds its recipe (the CLI passes its table's function)."""
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.evaluate import restore_model

    checkpoint = load_checkpoint(checkpoint_path)
    recipe = make_recipe(checkpoint["model_name"], checkpoint["categories"], stored=checkpoint["options"],
                         source=str(checkpoint_path))
    model = restore_model(recipe, checkpoint, torch.device("cpu"))
    return export_onnx(recipe, model, path, opset=opset)


# ================================================================================================ inference
REQUIRED_KEYS = ("model_name", "categories", "options", "model_config", "family", "outputs")


def read_metadata(path) -> dict:
    """The scenekit metadata of an ONNX file written by `export_onnx` (a main file or a part); DataError for
    other files, and for main files whose metadata lacks what `load_onnx` needs."""
    onnx = _require("onnx")
    path = Path(path)
    if not path.is_file():
        raise DataError("ONNX file not found", file=str(path))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise DataError(f"cannot read ONNX file ({type(error).__name__}: {error})", file=str(path)) from None
    entries = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in entries:
        raise DataError("not an ONNX file exported by scenekit (no 'scenekit' metadata)", file=str(path))
    try:
        metadata = json.loads(entries[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise DataError(f"the 'scenekit' metadata is not JSON ({error})", file=str(path)) from None
    if not isinstance(metadata, dict):
        raise DataError("the 'scenekit' metadata is not a JSON object", file=str(path))
    if "part" not in metadata:
        missing = [key for key in REQUIRED_KEYS if key not in metadata]
        if missing:
            raise DataError("the 'scenekit' metadata lacks what prediction needs; export the model again",
                            file=str(path), field=", ".join(missing))
        metadata["categories"] = {int(k): v for k, v in metadata["categories"].items()}
    return metadata


class OnnxSession:
    """An onnxruntime session on one exported file: `run(*inputs) -> [numpy arrays]`, the inputs in the order of
    the graph's inputs (`run(images [B, 3, H, W])` for a main file), the outputs in the order of its outputs."""

    def __init__(self, path, threads: int | None = None):
        ort = _require("onnxruntime")
        self.path = Path(path)
        self.metadata = read_metadata(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise DataError(f"onnxruntime cannot load the file ({error})", file=str(path)) from None
        self.inputs = [(i.name, np.int64 if i.type == "tensor(int64)" else np.float32)
                       for i in self.session.get_inputs()]

    def run(self, *inputs) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.path.name} takes {len(self.inputs)} inputs "
                             f"({', '.join(n for n, _ in self.inputs)}), got {len(inputs)}")
        feeds = {}
        for (name, dtype), value in zip(self.inputs, inputs):
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feeds[name] = np.ascontiguousarray(array, dtype=dtype)
        return self.session.run(None, feeds)

    def tensors(self, *inputs) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in self.run(*inputs))


class OnnxModule(nn.Module):
    """A stand-in for the trained model (or one of its modules) inside the model's own inference code:
    `module(images)` runs the ONNX graph, any other attribute (configuration, anchors, strides) comes from
    `skeleton`, the same module built from the stored configuration without its trained weights -- which are
    never used."""

    def __init__(self, session: OnnxSession, skeleton: nn.Module):
        super().__init__()
        self.session = session
        self.skeleton = skeleton

    def forward(self, images: torch.Tensor, targets=None):
        if targets is not None:
            raise ScenekitError("an ONNX model runs inference only")
        outputs = self.session.tensors(images)
        return outputs[0] if len(outputs) == 1 else outputs

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["skeleton"], name)


class _OnnxBackboneAndRPN(OnnxModule):
    """`model.features` of Faster/Mask R-CNN: one onnxruntime call gives the features and the RPN's outputs;
    it returns the features and keeps the RPN's outputs for `_RPNOutputs`, which `model.rpn` becomes (per
    thread: the web demo may predict in several at once)."""

    def __init__(self, session: OnnxSession, skeleton: nn.Module):
        super().__init__(session, skeleton)
        self.kept = threading.local()

    def forward(self, images: torch.Tensor):
        self.kept.outputs = self.session.tensors(images)           # features, objectness, deltas
        return self.kept.outputs[0]


class _RPNOutputs(nn.Module):
    """`model.rpn(features)` answered from the backbone's onnxruntime call on the same images."""

    def __init__(self, backbone: _OnnxBackboneAndRPN):
        super().__init__()
        self.backbone = [backbone]                                  # a list: not registered as a child module

    def forward(self, features: torch.Tensor):
        last = getattr(self.backbone[0].kept, "outputs", ())
        if not last or features is not last[0]:
            raise ScenekitError("the ONNX RPN answers only for the features its backbone call just returned")
        return last[1], last[2]


class _OnnxFeatureMaps:
    """`MaskRCNN.feature_maps(images)` (shared map, FPN's finer map for the mask branch) from one backbone call."""

    def __init__(self, backbone: _OnnxBackboneAndRPN):
        self.backbone = backbone

    def __call__(self, images: torch.Tensor):
        features = self.backbone(images)
        return features, self.backbone.kept.outputs[3]


class _OnnxFunction:
    """A method of the model (`classify_regions`, `mask_logits`, `step`, ...) answered by an ONNX part. A plain
    callable, not a module: set on the instance, it takes the place of the class's method."""

    def __init__(self, session: OnnxSession):
        self.session = session

    def __call__(self, *inputs):
        outputs = self.session.tensors(*inputs)
        return outputs[0] if len(outputs) == 1 else outputs


class _OnnxCaptionerStart(_OnnxFunction):
    def __call__(self, images):                                     # Captioner.start
        outputs = self.session.tensors(images)
        return outputs[:2], outputs[2:]                             # (state, context)


class _OnnxCaptionerStep(_OnnxFunction):
    def __call__(self, tokens, state, context):                     # Captioner.step
        outputs = self.session.tensors(tokens, *state, *context)
        return outputs[0], outputs[1:3], (outputs[3] if len(outputs) > 3 else None)


@dataclass
class OnnxPredictor:
    """`predict(images)` on [H, W, 3] uint8 images -> the recipe's predictions (boxes/scores/labels, "semantic"
    for segmenters, "masks" for Mask R-CNN, "caption" for captioners), computed by onnxruntime plus the model's
    own post-processing. `module` is what stands in for the model (a Captioner for `caption_images`)."""

    recipe: object
    module: nn.Module
    metadata: dict

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        if self.metadata["family"] == "overfeat":
            return _predict_overfeat(self, images)
        with torch.no_grad():
            return self.recipe.predict(self.module, list(images), torch.device("cpu"))


def _load_parts(path: Path, metadata: dict, threads: int | None) -> dict[str, OnnxSession]:
    """The sessions of the main file's parts, each checked to be the very file exported with it."""
    sessions = {}
    for name, entry in metadata.get("parts", {}).items():
        file = path.with_name(entry["file"])
        if not file.is_file():
            raise DataError(f"the {name!r} graph of {path.name} is missing: keep the files `scenekit export` "
                            f"wrote beside it", file=str(file))
        if hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
            raise DataError(f"this is not the {name!r} graph exported with {path.name} (its contents differ): "
                            "export the model again", file=str(file))
        sessions[name] = OnnxSession(file, threads)
    return sessions


def load_onnx(path, make_recipe, threads: int | None = None) -> OnnxPredictor:
    """An `OnnxPredictor` for an exported main file (its parts are read from beside it)."""
    path = Path(path)
    session = OnnxSession(path, threads)
    metadata = session.metadata
    if "part" in metadata:
        raise DataError(f"this file is the {metadata['part']!r} graph of {metadata.get('main')}: give that main "
                        "file", file=str(path))
    if not metadata.get("runnable"):
        raise DataError(f"this file holds only the network part of {metadata['model_name']!r}, exported by an "
                        "older scenekit: export the checkpoint again", file=str(path))
    parts = _load_parts(path, metadata, threads)
    recipe = make_recipe(metadata["model_name"], metadata["categories"], stored=metadata["options"], source=str(path))
    skeleton = recipe.build_model(metadata["model_config"]).eval()
    with torch.no_grad():
        # The skeleton's weights must never be used: NaN makes any slip show instead of a plausible answer.
        for tensor in list(skeleton.parameters()) + list(skeleton.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        for name, values in metadata.get("buffers", {}).items():
            buffer = skeleton.get_buffer(name)
            buffer.copy_(torch.tensor(values, dtype=buffer.dtype).view_as(buffer))
    # Its convolutions never run (onnxruntime runs the graphs), so there is nothing to fold for inference.
    skeleton.fold_for_inference = False
    family = metadata["family"]
    if family == "overfeat":
        from scenekit.models.localizer import FullyConvolutionalLocalizer

        module = OnnxModule(session, FullyConvolutionalLocalizer(skeleton).eval())
    elif family in ("two-stage", "fast-rcnn"):
        # The model's own detect(): backbone (+ RPN) and RoI heads in onnxruntime, proposals and NMS in Python.
        if family == "two-stage":
            skeleton.features = _OnnxBackboneAndRPN(session, skeleton.features)
            skeleton.rpn = _RPNOutputs(skeleton.features)
            if "mask_features" in [output.name for output in session.session.get_outputs()]:
                skeleton.feature_maps = _OnnxFeatureMaps(skeleton.features)
        else:
            skeleton.features = OnnxModule(session, skeleton.features)
        skeleton.classify_regions = _OnnxFunction(parts["head"])
        if "mask_head" in parts:
            skeleton.mask_logits = _OnnxFunction(parts["mask_head"])
        module = skeleton
    elif family == "captioner":
        # The model's own decoding loops (greedy, sampling, beam search) call start() once and step() per word.
        skeleton.start, skeleton.step = _OnnxCaptionerStart(session), _OnnxCaptionerStep(parts["step"])
        module = skeleton
    else:
        module = OnnxModule(session, skeleton)
    return OnnxPredictor(recipe, module.eval(), metadata)


def _predict_overfeat(predictor: OnnxPredictor, images) -> list[dict]:
    """`localizer.predict_overfeat` with the dense network in onnxruntime (its merge code is reused as is)."""
    from scenekit.models.localizer import overfeat_detect

    options = predictor.recipe.options
    class_ids = sorted(int(c) for c in predictor.recipe.categories)
    results = []
    for image in images:
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)
        found = overfeat_detect(predictor.module, tensor, tuple(options.get("scales", (1.0, 1.5, 2.0))))
        n = min(5, len(found["scores"]))
        results.append({"boxes": found["boxes"][:n], "scores": found["scores"][:n],
                        "labels": torch.tensor([class_ids[int(c)] for c in found["labels"][:n]], dtype=torch.int64)})
    return results


def predict_onnx(path, images: list[np.ndarray], make_recipe) -> list[dict]:
    """Predictions of the exported model at `path` on [H, W, 3] uint8 images (see `OnnxPredictor`)."""
    return load_onnx(path, make_recipe).predict(images)
