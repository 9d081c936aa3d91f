"""Seeing inside a model: `trace` writes one picture per step of its method, each titled with the paper and
section it implements, and an index.html that lists them in order.

    from scenekit.trace import trace
    trace(recipe, model, "photo.png", "trace_out/")          # a checkpoint's (recipe, model), or an untrained one
    trace(None, None, "photo.png", "ss_out/")                 # Selective Search alone

One small module per family group draws the steps from the tensors the model itself computes, calling its own
submodules and functions (or reading them with forward hooks), never a re-implementation:

    proposals.py     Selective Search (Uijlings et al. 2013)
    localization.py  localizer / localizer-agnostic, Overfeat (Sermanet et al. 2013)
    rcnn.py          R-CNN, Fast R-CNN, Faster R-CNN, Mask R-CNN (Girshick et al. 2014, Girshick 2015, Ren et al.
                     2015, He et al. 2017)
    yolo.py          YOLO v1, YOLOv2 (Redmon et al. 2016, Redmon & Farhadi 2017)
    segmentation.py  FCN-32s/16s/8s, DeconvNet, the sliding-window baseline (Long et al. 2015, Noh et al. 2015)
    language.py      the character LSTM, DeepImageSent, Show and Tell, Show Attend and Tell, VQA
"""

from __future__ import annotations

from pathlib import Path

import torch

from scenekit.errors import DataError
from scenekit.trace import language, localization, proposals, rcnn, segmentation, yolo
from scenekit.trace.inputs import Request, as_rgb
from scenekit.trace.report import Step, write_trace

__all__ = ["trace", "FAMILIES", "Step"]

# Model name (scenekit.models.registry's table of families) -> the function that lists its steps.
FAMILIES = {
    "selective-search": proposals.trace_selective_search,
    "localizer": localization.trace_localizer,
    "localizer-agnostic": localization.trace_localizer,
    "overfeat": localization.trace_overfeat,
    "fcn": segmentation.trace_fcn,
    "fcn-32s": segmentation.trace_fcn,
    "fcn-16s": segmentation.trace_fcn,
    "fcn-8s": segmentation.trace_fcn,
    "deconvnet": segmentation.trace_deconvnet,
    "deconvnet-transposed": segmentation.trace_deconvnet,
    "sliding-window": segmentation.trace_sliding_window,
    "rcnn": rcnn.trace_rcnn,
    "fast-rcnn": rcnn.trace_fast_rcnn,
    "faster-rcnn": rcnn.trace_faster_rcnn,
    "mask-rcnn": rcnn.trace_mask_rcnn,
    "yolo1": yolo.trace_yolo1,
    "yolo2": yolo.trace_yolo2,
    "charlm": language.trace_charlm,
    "deepimagesent": language.trace_captioner,
    "showtell": language.trace_captioner,
    "showattendtell": language.trace_captioner,
    "vqa": language.trace_vqa,
}


def family_of(recipe, model) -> str:
    """The FAMILIES key for a (recipe, model): the recipe's model name, or for a renamed one, its model's class
    and options."""
    if recipe is None or recipe == "selective-search":
        return "selective-search"
    name = recipe.model_name
    if name in FAMILIES:
        return name
    kind = type(model).__name__
    options = recipe.options
    by_class = {
        "Localizer": "overfeat" if options.get("inference") == "overfeat" else "localizer",
        "FCN": "fcn", "DeconvNet": "deconvnet", "WindowClassifier": "sliding-window", "RCNN": "rcnn",
        "FastRCNN": "fast-rcnn", "FasterRCNN": "faster-rcnn", "MaskRCNN": "mask-rcnn", "Yolo1": "yolo1",
        "Yolo2": "yolo2", "CharLM": "charlm", "Captioner": "showtell", "VQAModel": "vqa",
    }
    if kind in by_class:
        return by_class[kind]
    raise DataError(f"no trace for model {name!r} ({kind}); known: {', '.join(FAMILIES)}", field="model")


def trace(recipe, model, image, out_dir, *, question: str | None = None, choices=None, text: str | None = None,
          device="cpu", targets: dict | None = None) -> list[Path]:
    """Write the pictures of every step of `model`'s method on `image` into `out_dir`, and `out_dir/index.html`.

    recipe, model: a `scenekit.load(checkpoint)`'s `.recipe` and `.module`, or scenekit.models.registry's
        `make_recipe(name, ...)` + `build_model` (an untrained model); `recipe=None` (or "selective-search") traces
        Selective Search.
    image: a path, PIL image or [H, W, 3] array; the character model (`charlm`) reads `text` instead.
    question, choices: the question and candidate answers for `vqa` (defaults: a colour question).
    text: the text the character model reads (default: a sentence of the world's captions).
    targets: the ground truth {"boxes" [N, 4] xyxy image pixels, "labels" [N] category ids} that detectors' steps
        label anchors, cells and regions against; without it their own best detections stand in (captions say so).
    Returns the paths of the PNG pictures, in the order of the steps.
    """
    family = family_of(recipe, model)
    device = torch.device(device)
    if model is not None:
        model.to(device).eval()
    rgb = None if image is None else as_rgb(image)
    if rgb is None and family != "charlm":
        raise DataError(f"tracing {family} needs an image", field="image")
    request = Request(rgb, device, question, list(choices) if choices is not None else None, text, targets)
    with torch.no_grad():
        steps = FAMILIES[family](recipe, model, request)
    name = "Selective Search" if family == "selective-search" else recipe.model_name
    return write_trace(steps, out_dir, f"scenekit trace: {name}",
                       f"{len(steps)} steps of {name} on one input, in the order the method runs them.")
