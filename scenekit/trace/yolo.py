"""YOLO v1 and YOLOv2 step by step (Redmon et al. 2016; Redmon & Farhadi 2017).

YOLO v1: the S x S grid and the cell responsible for each object, that cell's B boxes and their confidences, the
class-probability map, every box of the grid, the detections. YOLOv2: the anchor priors, the cell and prior each
object is assigned to, the A predictions of that cell (centres kept inside it), the objectness map, the detections.
Drawn on the letterboxed network input; the ground truth (or the stand-in detections) is letterboxed the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from scenekit.data.transforms import letterbox_image
from scenekit.models.yolo import decode_yolo1, decode_yolo2, detect, elementwise_iou, encode_yolo1, encode_yolo2
from scenekit.trace.inputs import stand_in_note
from scenekit.trace.pictures import (WHITE, blend, class_map_picture, draw_boxes, draw_grid, enlarge, labelled,
                                     legend, ramp_colours, side_by_side, stacked)
from scenekit.trace.report import Step
from scenekit.viz import colour_for

YOLO1, YOLO2 = "Redmon et al. 2016", "Redmon & Farhadi 2017"


def _network_input(request, size: int):
    canvas, undo = letterbox_image(request.image, size)                          # [S, S, 3], (sx, sy, left, top)
    tensor = torch.from_numpy(canvas).permute(2, 0, 1).float().div(255.0)[None].to(request.device)
    return canvas, undo, tensor


def _objects(recipe, model, request, size: int, undo) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Objects in input pixels with class indices 0..K-1: the ground truth, or the model's 3 best detections."""
    class_ids = sorted(recipe.categories)
    truth, note = request.truth(), ""
    if truth is None:
        found = detect(model, [request.image], request.device, class_ids, size=size)[0]
        n = min(3, len(found["scores"]))
        truth, note = (found["boxes"][:n].numpy(), found["labels"][:n].numpy()), stand_in_note(n)
    index = {cid: i for i, cid in enumerate(class_ids)}
    keep = np.array([int(c) in index for c in truth[1]], dtype=bool)
    boxes = truth[0][keep] * np.array([undo[0], undo[1], undo[0], undo[1]]) + np.array([undo[2], undo[3]] * 2)
    boxes = np.clip(boxes, 0, size)
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = np.array([index[int(c)] for c in truth[1][keep]], dtype=np.int64)
    return torch.as_tensor(boxes[real], dtype=torch.float32), torch.as_tensor(labels[real]), note


def _detection_step(recipe, model, request, size: int, threshold: float, source: str) -> Step:
    names, class_ids = recipe.categories, sorted(recipe.categories)
    found = detect(model, [request.image], request.device, class_ids, size=size,
                   nms_threshold=threshold)[0]
    picture, factor = enlarge(request.image)
    truth = request.truth()
    if truth is not None:
        picture = draw_boxes(picture, truth[0], factor, colours=[WHITE] * len(truth[0]), width=3, dashed=True)
    n = min(10, len(found["scores"]))
    labels = [int(c) for c in found["labels"][:n]][::-1]
    picture = draw_boxes(picture, found["boxes"][:n].numpy()[::-1], factor, labels=labels, width=3,
                         texts=[f"{names[c]} {float(s):.2f}" for c, s in zip(labels, found["scores"][:n].flip(0))])
    return Step(
        "detections", f"Detections: class-specific scores, per-class NMS at IoU {threshold}; {len(found['scores'])} "
        "kept, the best 10 drawn", source, picture,
        "Score of (box, class) = P(class | object) x the box's confidence; boxes mapped back from the letterbox "
        "to the image." + (" Dashed white: the ground truth." if truth is not None else ""))


def _cells_picture(canvas, rows: int, cols: int, cells, boxes, labels, names, class_ids):
    """The input with its grid, each object's box and centre, and the cells in `cells` [(row, col, label)] lit."""
    picture, factor = enlarge(canvas)
    pixels = np.asarray(picture, dtype=np.float64).copy()
    cell_h, cell_w = picture.height / rows, picture.width / cols
    for row, col, _ in cells:                                     # responsible cells tinted yellow
        window = pixels[round(row * cell_h):round((row + 1) * cell_h), round(col * cell_w):round((col + 1) * cell_w)]
        window[:] = 0.6 * window + 0.4 * np.array([255, 230, 0])
    picture = Image.fromarray(pixels.round().astype(np.uint8))
    picture = draw_grid(picture, rows, cols, colour=(235, 235, 235))
    picture = draw_boxes(picture, boxes.numpy(), factor, labels=[class_ids[int(c)] for c in labels], width=3,
                         texts=[str(names[class_ids[int(c)]]) for c in labels])
    draw = ImageDraw.Draw(picture)
    for box in boxes.numpy():
        cx, cy = (box[0] + box[2]) / 2 * factor, (box[1] + box[3]) / 2 * factor
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=WHITE, outline=(0, 0, 0))
    cell = picture.width / cols
    for row, col, label in cells:
        draw.rectangle([col * cell, row * cell, (col + 1) * cell, (row + 1) * cell], outline=colour_for(label),
                       width=4)
    return picture, factor


# ------------------------------------------------------------------------------------------------ YOLO v1
def trace_yolo1(recipe, model, request) -> list[Step]:
    config, names, class_ids = model.config, recipe.categories, sorted(recipe.categories)
    size, s, b = config.image_size, config.grid, config.boxes_per_cell
    canvas, undo, tensor = _network_input(request, size)
    output = model(tensor).float()                                                  # [1, S, S, 5B + C]
    boxes, confidence, probabilities = decode_yolo1(output, b)                      # [1, S, S, B, 4], ...
    objects, labels, note = _objects(recipe, model, request, size, undo)
    encoded = encode_yolo1(objects / size, labels, s, config.num_classes)
    rows, cols = torch.nonzero(encoded["has_object"], as_tuple=True)
    cells = [(int(r), int(c), class_ids[int(encoded["classes"][r, c].argmax())]) for r, c in zip(rows, cols)]
    picture, factor = _cells_picture(canvas, s, s, cells, objects, labels, names, class_ids)
    steps = [Step(
        "grid-and-responsible-cells", f"The {s} x {s} grid: the cell holding an object's centre is responsible for "
        "detecting it", f"{YOLO1}, sec. 2", picture,
        f"{len(cells)} responsible cell(s) (outlined in the object's colour) for {len(objects)} object(s); when two "
        "centres share a cell only the larger object keeps it (sec. 2.4). " + note)]

    picture, factor = enlarge(canvas)
    picture = draw_grid(picture, s, s, colour=(235, 235, 235))
    picture = draw_boxes(picture, (encoded["boxes"][rows, cols] * size).numpy(), factor,
                         colours=[WHITE] * len(cells), width=2, dashed=True)
    for row, col, label in cells:
        predicted = boxes[0, row, col].cpu()                                         # [B, 4]
        iou = elementwise_iou(predicted, encoded["boxes"][row, col][None])
        best = int(iou.argmax())
        texts = [f"{j + 1}: conf {float(confidence[0, row, col, j]):.2f} IoU {float(iou[j]):.2f}" for j in range(b)]
        picture = draw_boxes(picture, (predicted * size).numpy(), factor, colours=[colour_for(label)] * b,
                             texts=texts, width=1)
        picture = draw_boxes(picture, (predicted[best:best + 1] * size).numpy(), factor,
                             colours=[colour_for(label)], width=4)
    steps.append(Step(
        "boxes-of-responsible-cells", f"Each responsible cell's {b} boxes (x, y in the cell, sqrt w, sqrt h) and "
        "confidences", f"{YOLO1}, sec. 2 and 2.2 (eq. 3)", picture,
        "Thick: the predictor whose box overlaps the object most, the one the loss makes responsible (its "
        "confidence is trained towards that IoU); dashed white: the object. " + note))

    class_map = probabilities[0].argmax(dim=-1).cpu().numpy() + 1                   # [S, S] class index + 1
    picture = enlarge(canvas)[0]
    coloured = class_map_picture(np.array([0] + class_ids)[class_map], picture.size)
    body = side_by_side(labelled(picture, "input"), labelled(coloured, "most probable class per cell"))
    present = sorted({class_ids[int(c) - 1] for c in np.unique(class_map)})
    steps.append(Step(
        "class-probability-map", f"Class probability map: P(class | object) of each of the {s} x {s} cells",
        f"{YOLO1}, sec. 2 (Fig. 2)", stacked(body, legend([(colour_for(c), str(names[c])) for c in present],
                                                           width=body.width)),
        "One set of class probabilities per cell, shared by its B boxes."))

    picture, factor = enlarge(canvas)
    flat_boxes = (boxes[0].reshape(-1, 4).cpu() * size).numpy()
    flat_conf = confidence[0].reshape(-1).cpu().numpy()
    order = np.argsort(flat_conf)
    colours = ramp_colours(flat_conf[order], 0, max(1e-6, float(flat_conf.max())))
    picture = draw_boxes(picture, flat_boxes[order], factor, colours=colours, width=1)
    picture = draw_boxes(picture, flat_boxes[order][-10:], factor, colours=colours[-10:], width=3)
    steps.append(Step(
        "all-boxes", f"All {s * s * b} boxes of the grid, coloured by confidence (dark .. yellow)",
        f"{YOLO1}, sec. 2 (Fig. 2)", picture,
        f"Confidence = Pr(object) x IoU; the 10 most confident are thick. Highest confidence {flat_conf.max():.2f}."))
    steps.append(_detection_step(recipe, model, request, size, float(recipe.options.get("nms_threshold", 0.5)),
                                 f"{YOLO1}, sec. 2 and 2.3"))
    return steps


# ------------------------------------------------------------------------------------------------ YOLOv2
def trace_yolo2(recipe, model, request) -> list[Step]:
    config, names, class_ids = model.config, recipe.categories, sorted(recipe.categories)
    size = int(recipe.options.get("test_size") or config.image_size)
    canvas, undo, tensor = _network_input(request, size)
    output = model(tensor).float()                                                   # [1, G, G, A, 5 + K]
    rows, cols, count = output.shape[1], output.shape[2], output.shape[3]
    boxes, objectness, _ = decode_yolo2(output, model.anchors, config.direct_location)
    anchors = model.anchors.cpu()
    objects, labels, note = _objects(recipe, model, request, size, undo)

    picture, factor = enlarge(canvas)
    picture = draw_grid(picture, rows, cols, colour=(235, 235, 235))
    centre = np.array([size / 2, size / 2])
    priors = np.concatenate([centre - anchors.numpy() * size / 2, centre + anchors.numpy() * size / 2], axis=1)
    picture = draw_boxes(picture, priors, factor, colours=[colour_for(k) for k in range(count)], width=3,
                         texts=[f"{w * size:.0f} x {h * size:.0f}" for w, h in anchors.tolist()])
    kind = recipe.options.get("anchors", "kmeans")
    origin = {"kmeans": "clustered by k-means with the distance 1 - IoU on the training boxes (placeholder squares "
                        "until the training data has been seen)",
              "hand": "Faster R-CNN's hand-picked 3 scales x 3 ratios"}.get(kind if isinstance(kind, str) else "",
                                                                            "given explicitly")
    steps = [Step(
        "priors", f"The {count} anchor priors (p_w x p_h in input pixels), drawn at the centre of the {rows} x {cols} "
        "grid", f"{YOLO2}, sec. 2 (Dimension Clusters)", picture, f"These priors were {origin}.")]

    encoded = encode_yolo2(objects / size, (rows, cols), anchors, config.direct_location) if len(objects) else None
    slots = [] if encoded is None else list(zip(encoded["row"].tolist(), encoded["col"].tolist(),
                                                encoded["anchor"].tolist(), labels.tolist()))
    cells = [(r, c, class_ids[k]) for r, c, _, k in slots]
    picture, factor = _cells_picture(canvas, rows, cols, cells, objects, labels, names, class_ids)
    cell = size / cols
    chosen = np.array([[(c + 0.5) * cell - anchors[a, 0] * size / 2, (r + 0.5) * cell - anchors[a, 1] * size / 2,
                        (c + 0.5) * cell + anchors[a, 0] * size / 2, (r + 0.5) * cell + anchors[a, 1] * size / 2]
                       for r, c, a, _ in slots]).reshape(-1, 4)
    picture = draw_boxes(picture, chosen, factor, colours=[colour_for(class_ids[k]) for *_, k in slots], width=2,
                         dashed=True, texts=[f"prior {a + 1}" for _, _, a, _ in slots])
    steps.append(Step(
        "cell-and-prior-per-object", "Each object's slot: the cell holding its centre and the prior whose shape "
        "matches it best", f"{YOLO2}, sec. 2 (Dimension Clusters, Direct location prediction)", picture,
        "Dashed: the chosen prior centred in the responsible cell; the best shape is picked by the IoU of the two "
        "boxes centred at one point. " + note))

    picture, factor = enlarge(canvas)
    picture = draw_grid(picture, rows, cols, colour=(235, 235, 235))
    draw = ImageDraw.Draw(picture)
    for r, c, a, k in slots:
        draw.rectangle([c * cell * factor, r * cell * factor, (c + 1) * cell * factor, (r + 1) * cell * factor],
                       outline=colour_for(class_ids[k]), width=4)
        predicted = (boxes[0, r, c].cpu() * size).numpy()                            # [A, 4]
        picture = draw_boxes(picture, predicted, factor, colours=[colour_for(j) for j in range(count)], width=1,
                             texts=[f"{j + 1}: obj {float(objectness[0, r, c, j]):.2f}" for j in range(count)])
        draw = ImageDraw.Draw(picture)
        for j in range(count):
            cx, cy = (predicted[j, :2] + predicted[j, 2:]) / 2 * factor
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour_for(j), outline=WHITE)
    steps.append(Step(
        "predictions-at-responsible-cells", f"The {count} predictions of each responsible cell: b_x = sigmoid(t_x) + "
        "c_x, b_w = p_w exp(t_w), objectness sigmoid(t_o)", f"{YOLO2}, sec. 2 (Direct location prediction)",
        picture, ("The sigmoid keeps every predicted centre (dot) inside its cell, which stabilised early training."
                  if config.direct_location else "Direct location prediction is off: centres move as RPN offsets "
                  "x_a + t_x w_a and may leave the cell.") + " " + note))

    best = objectness[0].max(dim=-1).values.cpu().numpy()
    picture = enlarge(canvas)[0]
    steps.append(Step(
        "objectness", f"Objectness: the highest sigmoid(t_o) of the {count} anchors in each of the {rows} x {cols} "
        "cells", f"{YOLO2}, sec. 2", side_by_side(labelled(picture, "input"),
                                                   labelled(blend(picture, best, 0.6, 0, 1), "objectness")),
        "0 dark .. 1 yellow."))
    steps.append(_detection_step(recipe, model, request, size, float(recipe.options.get("nms_threshold", 0.45)),
                                 f"{YOLO2}, sec. 2; {YOLO1}, sec. 2.3"))
    return steps
