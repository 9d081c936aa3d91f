"""ONNX export of trained models, and inference with onnxruntime, end to end for every family whose recipe exports.

What goes into ONNX graphs is the part of a model that is a fixed computation on tensors: the backbone, the
heads, a decoder step, with their raw outputs. What stays in Python is the part whose control flow depends on
the data -- decoding, thresholds, non-maximum suppression, Overfeat's greedy merge, the RPN's proposal layer,
word by word decoding and beam search -- so that part runs the *same* code as `scenekit predict` on the raw
outputs onnxruntime returns.

Each family says what that is through its recipe (`scenekit.recipes.Recipe.export`, types in
`scenekit.models.export_parts`); this module names no family. The main file (`model.onnx`) holds the graph on
the images; models with a second tensor stage after such a Python step get one more file per stage beside it
(`model.head.onnx`, ...). What the families give today:

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

`load_onnx` rebuilds the model's Python side from the file alone: the checkpoint's model name, categories,
options and configuration (image size, anchors, proposal and NMS settings, thresholds, vocabulary) travel in
the metadata (key "scenekit"). A weightless copy of the model (its parameters NaN, so any slip shows) and the
onnxruntime sessions of the main file and its parts go to the recipe's `from_onnx` hook, which gives the module
whose tensor stages onnxruntime answers; the recipe's own `predict` then runs on it unchanged. onnx and
onnxruntime are optional extras (`pip install 'scenekit[export]'`), imported only here, when needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scenekit.errors import DataError, ScenekitError
# The hooks' types, for callers that build or inspect graphs (ExportGraph.network, ExportPart.example, ...).
from scenekit.models.export_parts import (ExportGraph, ExportPart, OnnxGraphs, OnnxModule,  # noqa: F401
                                          as_tuple, roi_features)

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


def _recipe_maker(make_recipe):
    """`make_recipe(name, categories, stored=..., source=...)`: the caller's, or the registry's."""
    if make_recipe is not None:
        return make_recipe
    from scenekit.models.registry import make_recipe

    return make_recipe


# ================================================================================================ the graphs
def export_graph(recipe, model: nn.Module) -> ExportGraph:
    """The traceable parts of `model` (built by `recipe`): what the recipe's `export` hook gives."""
    if recipe.export is None:
        raise ScenekitError(f"exporting {recipe.model_name!r} ({type(model).__name__}) to ONNX is not supported: "
                            "its recipe gives no export graph")
    return recipe.export(model.eval())


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
    if opset < graph.min_opset:
        raise ScenekitError(f"{recipe.model_name} needs ONNX opset >= {graph.min_opset} "
                            f"({graph.min_opset_reason}), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part in graph.parts:
        proto = _trace(part.network, part.example, part.input_names, part.output_names, part.dynamic_axes,
                       opset, {"model_name": recipe.model_name, "part": part.name, "main": path.name,
                               "inputs": part.input_names, "outputs": part.output_names})
        data = proto.SerializeToString()
        part_path(path, part.name).write_bytes(data)
        parts[part.name] = {"file": part_path(path, part.name).name, "sha256": hashlib.sha256(data).hexdigest()}
    axes = {0: "batch", 2: "height", 3: "width"} if graph.dynamic_size else {0: "batch"}
    with torch.no_grad():
        ranks = [o.dim() for o in as_tuple(graph.network(graph.example))]
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


def export_checkpoint(checkpoint_path, path, make_recipe=None, *, opset: int = OPSET) -> Path:
    """Export the model saved at `checkpoint_path`. `make_recipe(name, categories, stored=options, source=file)`
    rebuilds its recipe (default: `scenekit.models.registry.make_recipe`)."""
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.evaluate import restore_model

    checkpoint = load_checkpoint(checkpoint_path)
    recipe = _recipe_maker(make_recipe)(checkpoint["model_name"], checkpoint["categories"],
                                        stored=checkpoint["options"], source=str(checkpoint_path))
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


@dataclass
class OnnxPredictor:
    """`predict(images)` on [H, W, 3] uint8 images -> the recipe's predictions (boxes/scores/labels, "semantic"
    for segmenters, "masks" for Mask R-CNN, "caption" for captioners), computed by onnxruntime plus the model's
    own post-processing. `module` is what stands in for the model (a Captioner for `caption_images`)."""

    recipe: object
    module: nn.Module
    metadata: dict

    def predict(self, images: list[np.ndarray]) -> list[dict]:
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


def load_onnx(path, make_recipe=None, threads: int | None = None) -> OnnxPredictor:
    """An `OnnxPredictor` for an exported main file (its parts are read from beside it). `make_recipe(name,
    categories, stored=options, source=file)` rebuilds the recipe (default: `scenekit.models.registry`'s)."""
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
    recipe = _recipe_maker(make_recipe)(metadata["model_name"], metadata["categories"], stored=metadata["options"],
                                        source=str(path))
    skeleton = _skeleton(recipe, metadata)
    graphs = OnnxGraphs(session, parts, metadata)
    module = recipe.from_onnx(skeleton, graphs) if recipe.from_onnx is not None else OnnxModule(session, skeleton)
    return OnnxPredictor(recipe, module.eval(), metadata)


def _skeleton(recipe, metadata: dict) -> nn.Module:
    """The model built from the exported configuration, its weights NaN (they must never be used: NaN makes any
    slip show instead of a plausible answer), its small buffers (YOLOv2's anchors) as exported."""
    skeleton = recipe.build_model(metadata["model_config"]).eval()
    with torch.no_grad():
        for tensor in list(skeleton.parameters()) + list(skeleton.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
        for name, values in metadata.get("buffers", {}).items():
            buffer = skeleton.get_buffer(name)
            buffer.copy_(torch.tensor(values, dtype=buffer.dtype).view_as(buffer))
    # Its convolutions never run (onnxruntime runs the graphs), so there is nothing to fold for inference.
    skeleton.fold_for_inference = False
    return skeleton


def predict_onnx(path, images: list[np.ndarray], make_recipe=None) -> list[dict]:
    """Predictions of the exported model at `path` on [H, W, 3] uint8 images (see `OnnxPredictor`)."""
    return load_onnx(path, make_recipe).predict(images)
