"""Classification + localization and Overfeat, step by step (Sermanet et al. 2013; Simonyan & Zisserman 2015).

The localizer: the whole image as one S x S window, the shared features, the classifier's top classes, the
regressor's box for every class (or its one box), the top-5 (class, box) guesses. Overfeat: the same network made
fully convolutional (its windows at the network's stride in one pass), every window's class and box at every
scale, then the greedy merge, stopped after fewer and fewer of its merges, and the final detections.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from scenekit.data.transforms import prepare_image
from scenekit.models.localizer import (FullyConvolutionalLocalizer, dense_predictions, overfeat_detect,
                                       predict_whole_image, top_guesses)
from scenekit.nms import greedy_merge
from scenekit.trace.pictures import WHITE, bars, draw_boxes, enlarge, heat_image, labelled, side_by_side
from scenekit.trace.report import Step
from scenekit.viz import colour_for

OVERFEAT = "Sermanet et al. 2013"
MERGE_THRESHOLD = 0.8                  # `overfeat_detect`'s default, which the recipe's predict uses


def _with_truth(picture, factor, request):
    truth = request.truth()
    if truth is None:
        return picture
    return draw_boxes(picture, truth[0], factor, colours=[WHITE] * len(truth[0]), width=2, dashed=True)


def trace_localizer(recipe, model, request) -> list[Step]:
    rgb, device = request.image, request.device
    names, class_ids = recipe.categories, sorted(recipe.categories)
    size = model.config.image_size
    tensor = prepare_image(rgb, size)[None].to(device)                     # [1, 3, S, S]
    features = model.features(tensor)                                      # [1, C, h, w]
    steps = []
    window, factor = enlarge(tensor[0].cpu())
    activity = features[0].float().mean(dim=0).cpu().numpy()
    heat = labelled(heat_image(activity, window.size), f"features {tuple(features.shape[1:])}, mean over channels")
    steps.append(Step(
        "window-and-features", f"The whole image as one {size} x {size} window and its shared features",
        f"{OVERFEAT}, sec. 4.1", side_by_side(labelled(window, "input window"), heat),
        "Classification and box regression read the same feature map: the two heads share every convolution."))

    classes, scores, boxes = top_guesses(model, tensor, k=len(class_ids))  # every class, best first
    classes, scores, boxes = classes[0].cpu(), scores[0].cpu(), boxes[0].cpu()
    top = [(str(names[class_ids[int(c)]]), float(s)) for c, s in zip(classes[:5], scores[:5])]
    steps.append(Step(
        "classifier", "Classifier head: softmax over the classes, the top 5", f"{OVERFEAT}, sec. 3 and 4.1",
        bars(top, colours=[colour_for(class_ids[int(c)]) for c in classes[:5]], maximum=1.0),
        f"Trained first (phase 'classify'), with cross-entropy; {len(class_ids)} classes."))

    specific = model.num_box_rows > 1
    shown = boxes if specific else boxes[:1]
    labels = [class_ids[int(c)] for c in classes[:len(shown)]]
    texts = [str(names[c]) for c in labels] if specific else ["one box for every class"]
    picture = draw_boxes(window, shown.numpy() * size, factor, labels=labels, texts=texts)
    steps.append(Step(
        "regressor", "Regression head: " + ("one box per class (per-class regression)" if specific else
                                             "one box for all classes (single-class regression)"),
        f"{OVERFEAT}, sec. 4.2; Simonyan & Zisserman 2015, sec. A.1", picture,
        "Box corners are predicted as fractions of the window and trained alone with the L2 loss (phase "
        "'regress'), features and classifier frozen." + (" Each class's row is trained on images of that class."
                                                         if specific else "")))

    found = predict_whole_image(model, [rgb], device, class_ids, k=5)[0]
    picture, factor = enlarge(rgb)
    picture = _with_truth(picture, factor, request)
    order = list(range(len(found["scores"])))[::-1]                        # best drawn last, on top
    picture = draw_boxes(picture, found["boxes"].numpy()[order], factor,
                         labels=[int(found["labels"][k]) for k in order],
                         texts=[f"{k + 1}. {names[int(found['labels'][k])]} {float(found['scores'][k]):.2f}"
                                for k in order])
    steps.append(Step(
        "top-5-guesses", "Top-5 guesses: the classifier's 5 best classes, each with the box the regressor gives it",
        "Simonyan & Zisserman 2015, sec. A.1; ILSVRC's localization error (Russakovsky et al. 2015)", picture,
        "A guess is right when its class is the image's and its box overlaps that object by IoU >= 0.5 (ILSVRC "
        "localization)." + (" Dashed white: the ground truth." if request.targets is not None else "")))
    return steps


def _resized(network, image: torch.Tensor, scale: float) -> torch.Tensor:
    """The image as `dense_predictions` resizes it at `scale`: shorter side scale x S, at least S per side."""
    height, width = image.shape[-2:]
    factor = scale * network.window / min(height, width)
    size = (max(network.window, round(height * factor)), max(network.window, round(width * factor)))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)


def _merged_per_class(boxes, scores, classes, threshold):
    """`overfeat_detect`'s merge loop, stopped at `threshold`: per class, (merged boxes, member counts)."""
    out = []
    for c in classes.unique():
        mine = classes == c
        merged, _, groups = greedy_merge(boxes[mine], scores[mine].double(), threshold)
        out.append((int(c), merged, torch.bincount(groups, minlength=len(merged))))
    return out


def trace_overfeat(recipe, model, request) -> list[Step]:
    rgb, device = request.image, request.device
    names, class_ids = recipe.categories, sorted(recipe.categories)
    scales = tuple(recipe.options.get("scales", (1.0, 1.25)))
    network = FullyConvolutionalLocalizer(model).to(device).eval()
    image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0).to(device)
    height, width = rgb.shape[:2]
    steps = []

    largest = max(scales)                                                   # the most windows
    resized = _resized(network, image, largest)                             # [1, 3, H, W]
    logits, _ = network(resized)                                            # [1, K, H', W']
    rows, cols = logits.shape[-2:]
    picture, factor = enlarge(resized[0].cpu())
    corners = [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (rows // 2, cols // 2)]
    windows = np.array([[j * network.stride, i * network.stride, j * network.stride + network.window,
                         i * network.stride + network.window] for i, j in corners], dtype=np.float64)
    picture = draw_boxes(picture, windows, factor, colours=[colour_for(k) for k in range(len(windows))], width=3)
    confidence = logits[0].softmax(dim=0).max(dim=0).values.cpu().numpy()
    heat = labelled(heat_image(confidence, (picture.width, round(picture.width * rows / cols))),
                    f"top-class probability of each of the {rows} x {cols} windows")
    steps.append(Step(
        "convolutional-windows",
        f"Fully connected layers as convolutions: one pass gives {rows} x {cols} windows of {network.window} px "
        f"at stride {network.stride}", f"{OVERFEAT}, sec. 3.5",
        side_by_side(labelled(picture, f"scale {largest:g}: five of the windows"), heat),
        "fc6 becomes a convolution with the feature map's size as its kernel, fc7 a 1 x 1 convolution; on a larger "
        "image each output cell is the localizer applied to one window, overlapping windows sharing their "
        "convolutions."))

    for s in scales:
        boxes, scores, classes = dense_predictions(network, image, (s,))
        picture, factor = enlarge(rgb)
        order = scores.argsort().cpu()                                      # the most confident drawn last
        picture = draw_boxes(picture, boxes[order].cpu().numpy(), factor,
                             labels=[class_ids[int(c)] for c in classes[order]], width=1)
        steps.append(Step(
            f"windows-scale-{s:g}", f"Scale {s:g}: each of the {len(scores)} windows predicts its top class and a "
            "box for it", f"{OVERFEAT}, sec. 4.1 and 4.2", picture,
            "Box colour = the window's top class; the regressor's box is mapped from the window to the image."))

    boxes, scores, classes = (t.cpu() for t in dense_predictions(network, image, scales))   # as `overfeat_detect`
    boxes = boxes.double()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    for threshold in (MERGE_THRESHOLD / 8, MERGE_THRESHOLD / 4, MERGE_THRESHOLD / 2, MERGE_THRESHOLD):
        merged = _merged_per_class(boxes, scores, classes, threshold)
        picture, factor = enlarge(rgb)
        left = 0
        for c, kept, counts in merged:
            left += len(kept)
            big = counts.argsort(descending=True)[:6]
            picture = draw_boxes(picture, kept.numpy(), factor, labels=[class_ids[c]] * len(kept), width=1)
            picture = draw_boxes(picture, kept[big].numpy(), factor, labels=[class_ids[c]] * len(big), width=3,
                                 texts=[f"{names[class_ids[c]]} x{int(counts[k])}" for k in big])
        steps.append(Step(
            f"merge-{threshold:.2f}", f"Greedy merge stopped at match score {threshold:.2f}: {len(scores)} window "
            f"boxes -> {left}", f"{OVERFEAT}, sec. 4.3 (steps 4-7)", picture,
            "Per class, the closest pair (match score = centre distance / mean diagonal + 1 - IoU) is replaced by "
            "its mean until the closest pair scores above the threshold; with a lower threshold the same sequence "
            f"of merges stops earlier (the detector runs it to {MERGE_THRESHOLD}). Thick: the boxes merged from "
            "the most windows, x = windows merged."))

    # overfeat_detect builds its labels on the CPU, so on another device it runs on a CPU copy of the network.
    detector = network if image.device.type == "cpu" else copy.deepcopy(network).cpu()
    found = overfeat_detect(detector, image.cpu(), scales, MERGE_THRESHOLD)
    n = min(5, len(found["scores"]))
    picture, factor = enlarge(rgb)
    picture = _with_truth(picture, factor, request)
    labels = [class_ids[int(c)] for c in found["labels"][:n]]
    picture = draw_boxes(picture, found["boxes"][:n].numpy()[::-1], factor, labels=labels[::-1],
                         texts=[f"{names[c]} {float(s):.2f}" for c, s in zip(labels, found["scores"][:n])][::-1],
                         width=3)
    steps.append(Step(
        "detections", f"Detections: the {n} best merged boxes, scored by the windows' accumulated confidence",
        f"{OVERFEAT}, sec. 4.3", picture,
        "A merged box's score is the summed top-class probability of the windows merged into it, over the number "
        "of windows looked at." + (" Dashed white: the ground truth." if request.targets is not None else "")))
    return steps
