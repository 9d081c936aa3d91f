"""ONNX export of trained models, and inference with onnxruntime.

What goes into the ONNX graph is the part of a model that is a fixed computation on the image tensor: the
backbone and the heads, with their raw outputs. What stays in Python is the part whose control flow depends on
the data -- decoding, thresholds, non-maximum suppression, Overfeat's greedy merge, proposal selection, word
by word decoding -- so that part runs the *same* code as `scenekit predict` on the raw outputs onnxruntime
returns. Which graph each family exports:

  localizer            images [B, 3, S, S]        -> class logits [B, K], boxes [B, R, 4]
  overfeat             images [B, 3, H, W]        -> logits [B, K, H', W'], boxes [B, R, 4, H', W'] (the
                                                     localizer as a fully convolutional network, dense windows)
  yolo1                images [B, 3, S, S]        -> output [B, S_g, S_g, 5B + C]
  yolo2                images [B, 3, H, W]        -> output [B, G_h, G_w, A, 5 + C]   (H, W multiples of 32)
  fcn*, deconvnet      images [B, 3, H, W]        -> scores [B, K + 1, H, W]
  fast-rcnn            images [B, 3, H, W]        -> features (RoI pooling, the head and NMS stay in PyTorch)
  faster/mask-rcnn     images [B, 3, H, W]        -> features, RPN objectness [B, HWA], RPN deltas [B, HWA, 4]
  captioners           images [B, 3, S, S]        -> the encoder: the decoder's initial state and context

The first five run end to end with `predict_onnx` (`scenekit predict --onnx`): the model's own inference code is
handed an `OnnxModule`, a stand-in that answers `model(images)` from onnxruntime and everything else (its
configuration, anchors) from a weightless copy of the model. For the two-stage detectors and the captioners the
file is the network part only; their proposal layer, RoI head and word decoder need the checkpoint.

The checkpoint's model name, categories, options and configuration travel in the ONNX file's metadata
(key "scenekit"), so the file alone rebuilds the pre- and post-processing. onnx and onnxruntime are optional
extras (`pip install 'scenekit[export]'`), imported only here, when needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
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
    """Wrap `function(images) -> tensors` as a module whose forward returns a tuple (what the exporter traces)."""

    def __init__(self, owner: nn.Module, function):
        super().__init__()
        self.owner, self.function = owner, function

    def forward(self, images: torch.Tensor):
        out = self.function(images)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@dataclass
class ExportGraph:
    """What one family exports: the module to trace, an example input, the names of its outputs, which input
    axes may vary, and whether `predict_onnx` can run the file end to end."""

    family: str
    network: nn.Module
    example: torch.Tensor                 # [B, 3, H, W]
    output_names: list[str]
    dynamic_size: bool                    # height and width may vary (batch always may)
    runnable: bool

    def __post_init__(self):
        # The exporter restores the mode the network had, recursively: it must be eval, or the model's
        # BatchNorm and dropout layers are left in training mode after the export.
        self.network.eval()


def export_graph(recipe, model: nn.Module) -> ExportGraph:
    """The traceable part of `model` (built by `recipe`), see the module docstring."""
    from scenekit.models import localizer as localizer_module

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
            return ExportGraph("overfeat", _Tupled(dense, dense_windows), example, ["logits", "boxes"], True, True)

        def localize(images):                  # Localizer.forward, batch left symbolic (it uses len(images))
            features = model.features(images)                          # [B, 3, S, S] -> [B, C, h, w]
            return model.classifier(features), model.regressor(features).unflatten(1, (rows, 4))
        return ExportGraph("localizer", _Tupled(model, localize), torch.rand(2, 3, size, size),
                           ["logits", "boxes"], False, True)
    if name == "Yolo1":
        grid = model.config.grid

        def yolo1(images):                     # Yolo1.forward, batch left symbolic
            _, features = model.features(images)
            return model.head(features).unflatten(1, (grid, grid, -1))      # -> [B, S, S, 5B + C]
        size = model.config.image_size
        return ExportGraph("yolo1", _Tupled(model, yolo1), torch.rand(2, 3, size, size), ["output"], False, True)
    if name == "Yolo2":
        size = model.config.image_size
        return ExportGraph("yolo2", model, torch.rand(2, 3, size, size), ["output"], True, True)
    if name in ("FCN", "DeconvNet"):
        size = recipe.options.get("image_size") or 128
        # Max-unpooling scatters into a map whose size the tracer records as constants: fixed size there.
        unpooling = name == "DeconvNet" and model.config.upsample == "unpool"
        return ExportGraph("segmenter", model, torch.rand(2, 3, size, size), ["scores"], not unpooling, True)
    if name in ("FasterRCNN", "MaskRCNN"):
        def backbone_and_rpn(images):
            features = model.features(images)                         # [B, 3, H, W] -> [B, C, H/s, W/s]
            objectness, deltas = model.rpn(features)                   # -> [B, HWA], [B, HWA, 4]
            return features, objectness, deltas
        size = model.config.image_size
        return ExportGraph("two-stage", _Tupled(model, backbone_and_rpn), torch.rand(1, 3, size, size),
                           ["features", "objectness", "deltas"], True, False)
    if name == "FastRCNN":
        size = model.config.image_size
        return ExportGraph("fast-rcnn", _Tupled(model, model.features), torch.rand(1, 3, size, size),
                           ["features"], True, False)
    if name == "Captioner":
        kind, hidden = model.config.kind, model.config.hidden

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
        size = model.config.image_size
        names = {"deepimagesent": ["h", "image_bias"], "showtell": ["h", "c"],
                 "showattendtell": ["h", "c", "annotations", "projected_annotations"]}[kind]
        return ExportGraph("captioner-encoder", _Tupled(model, encoder), torch.rand(2, 3, size, size), names,
                           False, False)
    raise ScenekitError(f"exporting {recipe.model_name!r} ({name}) to ONNX is not supported; supported: localizer, "
                        "overfeat, yolo1, yolo2, fcn*, deconvnet*, fast-rcnn, faster-rcnn, mask-rcnn and the "
                        "captioners' encoders")


@contextlib.contextmanager
def _traceable_fcn(model: nn.Module):
    """FCN's fixed bilinear upsampling builds its [C, 1, 2f, 2f] kernel with `expand` from the traced channel
    count, which the TorchScript exporter cannot give a static shape. While tracing, the same kernel is built
    from the configuration's class count (same values, so the same outputs)."""
    from scenekit.models import fcn

    original = fcn.upsample_bilinear
    channels = getattr(getattr(model, "config", None), "num_classes", None)
    if channels is None:
        yield
        return

    def upsample_bilinear(scores: torch.Tensor, factor: int) -> torch.Tensor:
        if factor == 1:
            return scores
        kernel = fcn.bilinear_kernel(2 * factor).to(scores)[None, None].repeat(channels + 1, 1, 1, 1)
        return torch.nn.functional.conv_transpose2d(scores, kernel, stride=factor, padding=factor // 2,
                                                    groups=channels + 1)

    fcn.upsample_bilinear = upsample_bilinear
    try:
        yield
    finally:
        fcn.upsample_bilinear = original


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _small_buffers(model: nn.Module) -> dict:
    """Buffers the post-processing may read (YOLOv2's anchors): small, and not BatchNorm statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return {name: buffer.detach().cpu().tolist() for name, buffer in model.named_buffers()
            if not name.endswith(skip) and buffer.numel() <= 4096}


def export_onnx(recipe, model: nn.Module, path, *, opset: int = OPSET) -> Path:
    """Write `model`'s traceable part (`export_graph`) to `path` as ONNX, batch (and, where the model allows,
    height and width) dynamic, with the recipe's configuration in the metadata. Returns the path."""
    onnx = _require("onnx")
    graph = export_graph(recipe, model)
    axes = {0: "batch", 2: "height", 3: "width"} if graph.dynamic_size else {0: "batch"}
    with torch.no_grad():
        ranks = [o.dim() for o in _as_tuple(graph.network(graph.example))]
    # Every output axis is named, so onnxruntime expects no fixed output shape when the input varies.
    output_axes = {n: ({i: f"{n}_{i}" for i in range(r)} if graph.dynamic_size else {0: "batch"})
                   for n, r in zip(graph.output_names, ranks)}
    buffer = io.BytesIO()
    context = _traceable_fcn(model) if graph.family == "segmenter" else contextlib.nullcontext()
    with context, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")            # tracer warnings about Python values taken as constants
        # The TorchScript exporter (dynamo=False) works offline with plain onnx; the dynamo one needs onnxscript.
        torch.onnx.export(graph.network, (graph.example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=graph.output_names,
                          dynamic_axes={"images": axes, **output_axes})
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {"model_name": recipe.model_name, "categories": {str(k): v for k, v in recipe.categories.items()},
                "options": recipe.options, "model_config": recipe.model_config, "family": graph.family,
                "outputs": graph.output_names, "dynamic_size": graph.dynamic_size, "runnable": graph.runnable,
                "buffers": _small_buffers(model), "input_size": list(graph.example.shape[2:])}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, default=str)
    proto.producer_name = "scenekit"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def export_checkpoint(checkpoint_path, path, make_recipe, *, opset: int = OPSET) -> Path:
    """Export the model saved at `checkpoint_path`. `make_recipe(name, categories, options)` rebuilds its recipe
    (the CLI passes its table's function)."""
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.evaluate import restore_model

    checkpoint = load_checkpoint(checkpoint_path)
    recipe = make_recipe(checkpoint["model_name"], checkpoint["categories"], checkpoint["options"])
    model = restore_model(recipe, checkpoint, torch.device("cpu"))
    return export_onnx(recipe, model, path, opset=opset)


# ================================================================================================ inference
def read_metadata(path) -> dict:
    """The scenekit metadata of an ONNX file written by `export_onnx`; DataError for other files."""
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
    metadata = json.loads(entries[METADATA_KEY])
    metadata["categories"] = {int(k): v for k, v in metadata["categories"].items()}
    return metadata


class OnnxSession:
    """An onnxruntime session on one exported file: `run(images [B, 3, H, W]) -> [numpy arrays]` in the order of
    the metadata's output names."""

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

    def run(self, images) -> list[np.ndarray]:
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        return self.session.run(None, {"images": np.ascontiguousarray(array, dtype=np.float32)})


class OnnxModule(nn.Module):
    """A stand-in for the trained model inside the model's own inference code: `module(images)` runs the ONNX
    graph, any other attribute (configuration, anchors, strides) comes from `skeleton`, the same model built
    from the stored configuration without its trained weights -- which are never used."""

    def __init__(self, session: OnnxSession, skeleton: nn.Module):
        super().__init__()
        self.session = session
        self.skeleton = skeleton

    def forward(self, images: torch.Tensor, targets=None):
        if targets is not None:
            raise ScenekitError("an ONNX model runs inference only")
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(images))
        return outputs[0] if len(outputs) == 1 else outputs

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["skeleton"], name)


@dataclass
class OnnxPredictor:
    """`predict(images)` on [H, W, 3] uint8 images -> the recipe's predictions (boxes/scores/labels, "semantic"
    for segmenters), computed by onnxruntime plus the model's own post-processing."""

    recipe: object
    module: OnnxModule
    metadata: dict

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        if self.metadata["family"] == "overfeat":
            return _predict_overfeat(self, images)
        return self.recipe.predict(self.module, list(images), torch.device("cpu"))


def load_onnx(path, make_recipe, threads: int | None = None) -> OnnxPredictor:
    """An `OnnxPredictor` for an exported file; DataError if its family cannot run from the file alone."""
    session = OnnxSession(path, threads)
    metadata = session.metadata
    if not metadata["runnable"]:
        raise DataError(f"this file holds only the network part of {metadata['model_name']!r} "
                        f"({', '.join(metadata['outputs'])}); its {_missing_part(metadata['family'])} needs the "
                        "checkpoint: run `scenekit predict --checkpoint`", file=str(path))
    recipe = make_recipe(metadata["model_name"], metadata["categories"], metadata["options"])
    skeleton = recipe.build_model(metadata["model_config"]).eval()
    with torch.no_grad():
        # The skeleton's weights must never be used: NaN makes any slip show instead of a plausible answer.
        for tensor in list(skeleton.parameters()) + list(skeleton.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        for name, values in metadata.get("buffers", {}).items():
            buffer = skeleton.get_buffer(name)
            buffer.copy_(torch.tensor(values, dtype=buffer.dtype).view_as(buffer))
    if metadata["family"] == "overfeat":
        from scenekit.models.localizer import FullyConvolutionalLocalizer

        skeleton = FullyConvolutionalLocalizer(skeleton).eval()
    return OnnxPredictor(recipe, OnnxModule(session, skeleton).eval(), metadata)


def _missing_part(family: str) -> str:
    return {"two-stage": "proposal layer, RoI head and NMS", "fast-rcnn": "RoI head and NMS",
            "captioner-encoder": "word decoder"}.get(family, "post-processing")


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
