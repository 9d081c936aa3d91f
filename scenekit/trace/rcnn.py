"""The R-CNN family step by step: R-CNN (Girshick et al. 2014), Fast R-CNN (Girshick 2015), Faster R-CNN (Ren et
al. 2015) and Mask R-CNN (He et al. 2017).

R-CNN: Selective Search proposals, each warped with context to the CNN's input, scored by the class SVMs, moved by
the box regressors, suppressed per class. Fast R-CNN: the proposals on one shared feature map, RoI max-pooling
(against RoIAlign) on one RoI, the head's class scores and refined boxes, per-class NMS. Faster R-CNN: the anchors at
one location labelled against the ground truth, the labelled anchors and the sampled mini-batch, the objectness map,
the proposals before and after NMS, then Fast R-CNN's steps. Mask R-CNN adds the mask head's m x m masks and the
masks pasted into the image.

Boxes are drawn in the network's input: the image scaled so its longer side is S, at the top-left of an S x S
canvas (`fit_image`); the ground truth (or the stand-in detections) is scaled into it the same way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from scenekit.boxes import box_iou, decode_boxes
from scenekit.models.detection_targets import label_anchors, sample_labels
from scenekit.models.fast_rcnn import ProposalCache, fit_image, postprocess_detections, select_proposals
from scenekit.models.faster_rcnn import propose
from scenekit.models.rcnn import ProposalStore, apply_regression, context_boxes, usable_proposals
from scenekit.models.rcnn import detect as rcnn_detect
from scenekit.roi import _pool_bins, _round_half_away, paste_masks, roi_align, roi_pool
from scenekit.trace.inputs import stand_in_note
from scenekit.trace.pictures import (IGNORED, NEGATIVE, POSITIVE, WHITE, blend, draw_box, draw_boxes, enlarge,
                                     heat_image, labelled, legend, rank_colours, sheet, side_by_side, stacked,
                                     text_picture)
from scenekit.trace.report import Step
from scenekit.viz import colour_for, draw_masks

RCNN, FAST, FASTER, MASK = "Girshick et al. 2014", "Girshick 2015", "Ren et al. 2015", "He et al. 2017"


def _truth_in_input(recipe, request, scale: float):
    """The ground truth scaled into the network input: (boxes [N, 4] float32, class indices [N] 1..K) or None."""
    truth = request.truth()
    if truth is None:
        return None
    index = {cid: i + 1 for i, cid in enumerate(sorted(recipe.categories))}
    keep = np.array([int(c) in index for c in truth[1]], dtype=bool)
    return (torch.as_tensor(truth[0][keep] * scale, dtype=torch.float32),
            torch.as_tensor([index[int(c)] for c in truth[1][keep]], dtype=torch.int64))


def _truth_drawn(picture, factor, truth):
    if truth is None or not len(truth[0]):
        return picture
    return draw_boxes(picture, truth[0].numpy(), factor, colours=[WHITE] * len(truth[0]), width=3, dashed=True)


def _detection_picture(tensor, found, names, class_ids, truth=None, top: int = 10):
    """Detections (class indices 1..K, best first) on the input, the best `top` tagged with name and score."""
    picture, factor = enlarge(tensor.cpu())
    picture = _truth_drawn(picture, factor, truth)
    n = min(top, len(found["scores"]))
    labels = [class_ids[int(c) - 1] for c in found["labels"][:n]][::-1]
    return draw_boxes(picture, found["boxes"][:n].cpu().numpy()[::-1], factor, labels=labels, width=3,
                      texts=[f"{names[c]} {float(s):.2f}" for c, s in zip(labels, found["scores"][:n].flip(0))])


def _proposal_step(name, tensor, proposals, title, source, caption, top: int = 50):
    picture, factor = enlarge(tensor.cpu())
    shown = proposals[:top].cpu().numpy()
    colours = rank_colours(len(shown))
    picture = draw_boxes(picture, shown[::-1], factor, colours=colours, width=1,
                         texts=[str(k) if k <= 10 else "" for k in range(len(shown), 0, -1)])
    return Step(name, title, source, picture, caption)


# ------------------------------------------------------------------------------------------------ RoI pooling
def roi_comparison(features: torch.Tensor, roi: torch.Tensor, stride: int, size: int, used: str) -> Step:
    """One RoI on the feature map: RoI max-pooling's snapped sub-windows (the op's own rounding and bins) and the
    max cell of each, beside RoIAlign's continuous bins and their 2 x 2 bilinear sampling points (aligned)."""
    scale = 1.0 / stride
    height, width = features.shape[-2:]
    rois = torch.cat([roi.new_zeros(1), roi])[None].to(features)                          # [1, 5]
    x1, y1, x2, y2 = (_round_half_away(rois[:, j] * scale) for j in (1, 2, 3, 4))          # snapped cells
    h_lo, h_hi = _pool_bins(y1, y2, size, height)                                          # [1, size]
    w_lo, w_hi = _pool_bins(x1, x2, size, width)
    pooled = roi_pool(features, rois, size, scale)[0]                                      # [C, size, size]
    aligned = roi_align(features, rois, size, scale, sampling_ratio=2, aligned=True)[0]
    channel = int(pooled.flatten(1).mean(dim=1).argmax())        # the channel with the strongest pooled response
    plane = features[0, channel].float().cpu().numpy()
    continuous = (roi.double() * scale).tolist()
    r0 = max(0, int(math.floor(min(continuous[1], float(y1)))) - 1)
    r1 = min(height, int(math.ceil(max(continuous[3], float(y2) + 1))) + 1)
    c0 = max(0, int(math.floor(min(continuous[0], float(x1)))) - 1)
    c1 = min(width, int(math.ceil(max(continuous[2], float(x2) + 1))) + 1)
    cell = max(8, 420 // max(r1 - r0, c1 - c0))
    crop = plane[r0:r1, c0:c1]

    def at(u, v):                                    # feature-map coordinates (cell j spans [j, j + 1)) -> pixels
        return (u - c0) * cell, (v - r0) * cell

    def base():
        return heat_image(crop, ((c1 - c0) * cell, (r1 - r0) * cell))

    pool_picture = base()
    draw = ImageDraw.Draw(pool_picture)
    for p in range(size):
        for q in range(size):
            top, bottom, left, right = int(h_lo[0, p]), int(h_hi[0, p]), int(w_lo[0, q]), int(w_hi[0, q])
            if bottom <= top or right <= left:
                continue
            draw.rectangle([*at(left, top), at(right, bottom)[0] - 1, at(right, bottom)[1] - 1],
                           outline=(255, 160, 40), width=1)
            window = plane[top:bottom, left:right]
            r, c = np.unravel_index(int(np.argmax(window)), window.shape)      # the max, first in row-major order
            assert np.isclose(window[r, c], float(pooled[channel, p, q]), atol=1e-5), "bins disagree with roi_pool"
            u, v = at(left + c + 0.5, top + r + 0.5)
            draw.rectangle([u - 3, v - 3, u + 3, v + 3], fill=WHITE)
    draw_box(draw, [*at(float(x1), float(y1)), *at(float(x2) + 1, float(y2) + 1)], NEGATIVE, width=3)
    draw_box(draw, [*at(continuous[0], continuous[1]), *at(continuous[2], continuous[3])], WHITE, 2, dashed=True)

    align_picture = base()
    draw = ImageDraw.Draw(align_picture)
    bin_w, bin_h = (continuous[2] - continuous[0]) / size, (continuous[3] - continuous[1]) / size
    for p in range(size + 1):
        draw.line([*at(continuous[0] + p * bin_w, continuous[1]), *at(continuous[0] + p * bin_w, continuous[3])],
                  fill=(255, 160, 40), width=1)
        draw.line([*at(continuous[0], continuous[1] + p * bin_h), *at(continuous[2], continuous[1] + p * bin_h)],
                  fill=(255, 160, 40), width=1)
    for p in range(size):
        for i in range(2):                           # sampling_ratio 2: samples at (i + 0.5) / 2 of each bin
            v = continuous[1] + p * bin_h + (i + 0.5) * bin_h / 2
            for q in range(size):
                for j in range(2):
                    u = continuous[0] + q * bin_w + (j + 0.5) * bin_w / 2
                    x, y = at(u, v)
                    draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=WHITE)
    draw_box(draw, [*at(continuous[0], continuous[1]), *at(continuous[2], continuous[3])], WHITE, width=2)
    body = side_by_side(
        labelled(pool_picture, f"RoI max-pooling: {size} x {size} bins, max of channel {channel} = "
                               f"{float(pooled[channel].mean()):.2f} (mean)"),
        labelled(align_picture, f"RoIAlign: 2 x 2 samples per bin, mean = {float(aligned[channel].mean()):.2f}"))
    return Step(
        "roi-pool-vs-roialign", f"One RoI on the stride-{stride} feature map: RoI max-pooling against RoIAlign",
        f"{FAST}, sec. 2.1; {MASK}, sec. 3", body,
        f"Left: the RoI (dashed) is snapped to whole cells (red) and split into {size} x {size} sub-windows of "
        "whole cells (orange), each max-pooled (white square: the max of the channel shown). Right: RoIAlign keeps "
        "the RoI's continuous edges and averages four bilinear samples per bin (dots). This model's head uses "
        f"{'RoI max-pooling' if used == 'pool' else 'RoIAlign'}.")


def _pick_roi(rois: torch.Tensor, stride: int) -> torch.Tensor:
    """The best-ranked RoI at least two feature cells wide and high (else the first one)."""
    wide = ((rois[:, 2] - rois[:, 0]) >= 2 * stride) & ((rois[:, 3] - rois[:, 1]) >= 2 * stride)
    return rois[int(torch.nonzero(wide)[0])] if bool(wide.any()) else rois[0]


# ------------------------------------------------------------------------------------------------ shared steps
def _feature_step(tensor, features, proposals, stride) -> Step:
    activity = features[0].float().mean(dim=0).cpu().numpy()
    picture, factor = enlarge(tensor.cpu())
    heat = blend(picture, activity, alpha=0.55)
    heat = draw_boxes(heat, proposals[:20].cpu().numpy(), factor, colours=[WHITE] * min(20, len(proposals)),
                      width=1)
    return Step(
        "shared-features", f"The whole image through the convolutions once: a {activity.shape[0]} x "
        f"{activity.shape[1]} feature map at stride {stride}, the RoIs projected onto it", f"{FAST}, sec. 2 (Fig. 1)",
        side_by_side(labelled(picture, "network input"), labelled(heat, "mean activation, 20 RoIs")),
        "R-CNN ran the CNN once per region; Fast R-CNN runs it once per image and cuts every region's features "
        "out of this map.")


def _region_step(model, features, proposals, tensor, names, class_ids, top: int = 8) -> tuple[Step, tuple]:
    """The head on every RoI: class probabilities and class-specific box offsets; the `top` most confident
    (RoI, class) pairs drawn before (dashed) and after (solid) their refinement."""
    rois = torch.cat([proposals.new_zeros(len(proposals), 1), proposals], dim=1)
    logits, deltas = model.classify_regions(features, rois.to(features.dtype))              # [P, K+1], [P, K, 4]
    probabilities = logits.float().softmax(dim=1)
    best, klass = probabilities[:, 1:].max(dim=1)                                           # no background
    order = best.argsort(descending=True)[:top]
    refined = decode_boxes(deltas[order, klass[order]].float(), proposals[order].float(), model.config.box_weights)
    labels = [class_ids[int(c)] for c in klass[order]]
    picture, factor = enlarge(tensor.cpu())
    picture = draw_boxes(picture, proposals[order].cpu().numpy(), factor, labels=labels, width=1, dashed=True)
    picture = draw_boxes(picture, refined.cpu().numpy(), factor, labels=labels, width=3,
                         texts=[f"{names[c]} {float(p):.2f}" for c, p in zip(labels, best[order])])
    background = float((probabilities.argmax(dim=1) == 0).float().mean())
    step = Step(
        "head-scores-and-boxes", f"The head on all {len(proposals)} RoIs: softmax over K + 1 classes and a box "
        f"offset per class; the {len(order)} most confident", f"{FAST}, sec. 2 (Fig. 1) and eq. (1)", picture,
        "Dashed: the RoI; solid: the box moved by the offsets of its best class (box-coder weights "
        f"{tuple(model.config.box_weights)}). {background:.0%} of the RoIs score background highest.")
    return step, (logits, deltas)


def _nms_step(found, total, tensor, names, class_ids, truth, threshold, source, regions: str = "RoI") -> Step:
    return Step(
        "detections", f"Per-class NMS at IoU {threshold}: {total} ({regions}, class) candidates -> "
        f"{len(found['scores'])} detections, the best 10 drawn", source,
        _detection_picture(tensor, found, names, class_ids, truth),
        f"Every ({regions}, class) pair with its own refined box is a candidate; those below the score threshold go, "
        "then NMS runs independently for each class." + (" Dashed white: the ground truth." if truth else ""))


# ------------------------------------------------------------------------------------------------ R-CNN
def trace_rcnn(recipe, model, request) -> list[Step]:
    rgb, device = request.image, request.device
    names, class_ids, config = recipe.categories, sorted(recipe.categories), model.config
    boxes, seconds = ProposalStore(config.proposal_mode, config.proposal_max_side)(rgb)
    proposals = usable_proposals(boxes, config.max_proposals)
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    steps = [_proposal_step("proposals", image, proposals, f"Selective Search: {len(proposals)} region proposals "
                            "(the best 50 drawn)", f"{RCNN}, sec. 2.1; Uijlings et al. 2013",
                            f"'{config.proposal_mode}' mode, {seconds:.2f} s; number = rank, yellow = best.")]

    shown = proposals[:8]
    crops = context_boxes(shown, config.input_size, config.padding)
    picture, factor = enlarge(rgb)
    colours = [colour_for(k) for k in range(len(shown))]
    picture = draw_boxes(picture, shown.numpy(), factor, colours=colours, texts=[str(k + 1) for k in
                                                                                  range(len(shown))])
    picture = draw_boxes(picture, crops.numpy(), factor, colours=colours, width=1, dashed=True)
    windows = (model.warp(rgb, shown) + model.pixel_mean.cpu()[None, :, None, None]).clamp(0, 1)   # [8, 3, S, S]
    tiles = [(str(k + 1), enlarge(w, 110)[0]) for k, w in enumerate(windows)]
    steps.append(Step(
        "warped-regions", f"Each region warped to {config.input_size} x {config.input_size}, with {config.padding} "
        "px of context", f"{RCNN}, sec. 2.1 and App. A", side_by_side(picture, sheet(tiles, columns=2)),
        "Solid: the proposal; dashed: the crop that lands the proposal p pixels inside the warped window. Warping "
        "ignores the aspect ratio; crop parts outside the image are the pixel mean. Each window then runs through "
        "the CNN on its own."))

    windows = model.warp(rgb, proposals).to(device)                                       # [P, 3, S, S]
    pool5, fc7 = zip(*(model.region_features(windows[k:k + 512]) for k in range(0, len(windows), 512)))
    pool5, fc7 = torch.cat(pool5), torch.cat(fc7)
    scores = (fc7 * model.fc7_scale) @ model.svm_weight.T + model.svm_bias                 # [P, K], as `detect`
    flat = scores.flatten().argsort(descending=True)[:10]
    region, klass = flat // scores.shape[1], flat % scores.shape[1]
    labels = [class_ids[int(k)] for k in klass]
    picture, factor = enlarge(rgb)
    picture = draw_boxes(picture, proposals[region.cpu()].numpy(), factor, labels=labels, width=2,
                         texts=[f"{names[c]} {float(s):+.2f}" for c, s in zip(labels, scores[region, klass])])
    above = int((scores > config.score_threshold).sum())
    steps.append(Step(
        "svm-scores", "Class-specific linear SVMs score every region's fc7 features: the 10 best (region, class) "
        "pairs", f"{RCNN}, sec. 2.2", picture,
        f"{above} of {scores.numel()} (region, class) pairs score above the threshold {config.score_threshold:g} "
        "(the hard-negative mining margin) and go on."))

    features = pool5[region] * model.pool5_scale                                          # [10, D5]
    deltas = torch.einsum("md,mjd->mj", features, model.box_weight[klass]) + model.box_bias[klass]
    moved = apply_regression(proposals[region.cpu()].to(deltas.dtype), deltas.cpu())
    picture, factor = enlarge(rgb)
    picture = draw_boxes(picture, proposals[region.cpu()].numpy(), factor, labels=labels, width=1, dashed=True)
    picture = draw_boxes(picture, moved.numpy(), factor, labels=labels, width=3)
    steps.append(Step(
        "box-regression", "Bounding-box regression: each scored region moved by its class's ridge regressor on "
        "pool5", f"{RCNN}, App. C", picture,
        "Dashed: the proposal P; solid: G = (P_w d_x + P_x, P_h d_y + P_y, P_w exp(d_w), P_h exp(d_h)) with "
        "d = w_k^T pool5 (eqs. 1-4)."))

    found, _ = rcnn_detect(model, rgb, boxes, device)
    truth = request.truth()
    truth = None if truth is None else (torch.as_tensor(truth[0]), None)
    steps.append(_nms_step(found, above, torch.from_numpy(rgb).permute(2, 0, 1), names, class_ids, truth,
                           config.nms_threshold, f"{RCNN}, sec. 2.2", regions="region"))
    return steps


# ------------------------------------------------------------------------------------------------ Fast R-CNN
def _fitted(model, request):
    tensor, scale, hw = fit_image(request.image, model.config.image_size)
    return tensor, scale, hw, tensor[None].to(request.device)


def trace_fast_rcnn(recipe, model, request) -> list[Step]:
    names, class_ids, config = recipe.categories, sorted(recipe.categories), model.config
    tensor, scale, hw, batch = _fitted(model, request)
    boxes, seconds = ProposalCache(recipe.options.get("proposal_mode", "fast"))(request.image)
    proposals = select_proposals(boxes, scale, config.max_proposals).to(request.device)
    features = model.features(batch)                                                        # [1, C, S/8, S/8]
    stride = model.features.stride
    steps = [
        _proposal_step("proposals", tensor, proposals, f"Selective Search: {len(proposals)} object proposals (the "
                       "best 50 drawn)", f"{FAST}, sec. 2 (Fig. 1); Uijlings et al. 2013",
                       f"Computed once per image ({seconds:.2f} s) on the CPU; number = rank, yellow = best."),
        _feature_step(tensor, features, proposals, stride),
        roi_comparison(features, _pick_roi(proposals, stride), stride, config.roi_size, config.roi_op),
    ]
    step, (logits, deltas) = _region_step(model, features, proposals, tensor, names, class_ids)
    steps.append(step)
    found = postprocess_detections(logits, deltas, proposals, hw, config)
    total = int((logits.float().softmax(dim=1)[:, 1:] >= config.score_threshold).sum())
    steps.append(_nms_step(found, total, tensor, names, class_ids, _truth_in_input(recipe, request, scale),
                           config.nms_threshold, f"{FAST}, sec. 3"))
    return steps


# ------------------------------------------------------------------------------------------------ Faster R-CNN
def _anchor_steps(model, features, tensor, hw, truth, note) -> list[Step]:
    config = model.config
    anchors = model.anchors(features)                                                       # [H W A, 4]
    rows, cols = features.shape[-2:]
    count = len(config.anchor_sizes) * len(config.anchor_ratios)
    gt = truth[0].to(anchors) if truth is not None else anchors.new_zeros(0, 4)
    labels, _ = label_anchors(anchors, gt, positive_iou=config.rpn_positive_iou,
                              negative_iou=config.rpn_negative_iou, image_size=hw,
                              allowed_border=config.allowed_border)
    per_location = labels.view(rows * cols, count)
    if len(gt):
        centre = ((gt[0, :2] + gt[0, 2:]) / 2 / model.features.stride).floor().long()
        distance = torch.cdist(torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"),
                                           -1).view(-1, 2).float(), centre.flip(0)[None].float().cpu())[:, 0]
        location = int(((per_location == 1).sum(dim=1).cpu().float() * 1000 - distance).argmax())
    else:
        location = (rows // 2) * cols + cols // 2
    y, x = divmod(location, cols)
    mine = anchors.view(rows * cols, count, 4)[location]
    iou = box_iou(mine, gt).max(dim=1).values if len(gt) else mine.new_zeros(count)
    colours = {1: POSITIVE, 0: NEGATIVE, -1: IGNORED}
    picture, factor = enlarge(tensor.cpu())
    picture = _truth_drawn(picture, factor, truth)
    stride = model.features.stride
    window = [(x - 1) * stride, (y - 1) * stride, (x + 2) * stride, (y + 2) * stride]
    picture = draw_boxes(picture, [window], factor, colours=[(255, 210, 0)], width=1, dashed=True)
    shapes = [(s, r) for r in config.anchor_ratios for s in config.anchor_sizes]             # cell_anchors' order
    kinds = {1: "positive", 0: "negative", -1: "ignored"}
    picture = draw_boxes(picture, mine.cpu().numpy(), factor, texts=[str(k + 1) for k in range(count)], width=2,
                         colours=[colours[int(v)] for v in per_location[location]])
    table = [f"{k + 1}: size {s:g} px, h/w {r:g}, best IoU {float(v):.2f} -> {kinds[int(label)]}"
            for k, ((s, r), v, label) in enumerate(zip(shapes, iou, per_location[location]))]
    body = stacked(picture, legend([(POSITIVE, "positive"), (NEGATIVE, "negative"), (IGNORED, "ignored"),
                                    (WHITE, "ground truth"), ((255, 210, 0), "the RPN's 3 x 3 window")],
                                   width=picture.width), text_picture(table, width=picture.width))
    steps = [Step(
        "anchors-at-one-location", f"Anchors at one location: {len(config.anchor_sizes)} scales x "
        f"{len(config.anchor_ratios)} ratios, labelled against the ground truth", f"{FASTER}, sec. 3.1.2", body,
        f"Location (row {y}, column {x}) of the {rows} x {cols} map. Positive: IoU > {config.rpn_positive_iou} with "
        f"a ground-truth box, or the highest IoU for one; negative: IoU < {config.rpn_negative_iou} with all; the "
        "rest, and anchors crossing the image border, are ignored (sec. 3.3). " + note)]

    generator = torch.Generator().manual_seed(0)
    positive, negative = sample_labels(labels.cpu(), config.rpn_batch, config.rpn_positive_fraction, generator)
    picture, factor = enlarge(tensor.cpu())
    picture = _truth_drawn(picture, factor, truth)
    draw = ImageDraw.Draw(picture)
    for index in negative.tolist():
        cx, cy = ((anchors[index, :2] + anchors[index, 2:]) / 2 * factor).tolist()
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=NEGATIVE)
    picture = draw_boxes(picture, anchors[positive].cpu().numpy(), factor, colours=[POSITIVE] * len(positive))
    counts = {name: int((labels == value).sum()) for name, value in (("positive", 1), ("negative", 0),
                                                                      ("ignored", -1))}
    steps.append(Step(
        "anchor-minibatch", f"All {len(anchors)} anchors labelled ({counts['positive']} positive, "
        f"{counts['negative']} negative, {counts['ignored']} ignored) and the {len(positive) + len(negative)}-anchor "
        "mini-batch", f"{FASTER}, sec. 3.1.2 and 3.1.3", picture,
        "Green boxes: the sampled positives; red dots: the centres of the sampled negatives. A mini-batch has "
        f"{config.rpn_batch} anchors of one image, up to {config.rpn_positive_fraction:.0%} positive. " + note))
    return steps


def _rpn_steps(model, features, tensor, hw) -> tuple[list[Step], torch.Tensor]:
    config = model.config
    objectness, deltas = model.rpn(features)                                                # [1, HWA], [1, HWA, 4]
    rows, cols = features.shape[-2:]
    count = len(config.anchor_sizes) * len(config.anchor_ratios)
    best = objectness[0].sigmoid().view(rows, cols, count).max(dim=-1).values.cpu().numpy()
    picture, factor = enlarge(tensor.cpu())
    steps = [Step(
        "objectness", f"RPN objectness: the highest of the {count} anchors' scores at each of the {rows} x {cols} "
        "locations", f"{FASTER}, sec. 3.1", side_by_side(labelled(picture, "input"),
                                                          labelled(blend(picture, best, 0.6, 0, 1), "objectness")),
        "A 3 x 3 convolution slides over the shared map; sibling 1 x 1 convolutions give each anchor an objectness "
        "logit (sigmoid shown, 0 dark .. 1 yellow) and four box offsets.")]
    anchors = model.anchors(features)
    before = propose(objectness, deltas, anchors, [hw], pre_nms=config.pre_nms_test, post_nms=config.pre_nms_test,
                     nms_threshold=1.0, min_size=config.min_proposal_size)[0]               # NMS that keeps all
    after = model.region_proposals(features, [hw], training=False)[2][0]
    for name, boxes, title, caption in (
            ("proposals-before-nms", before, f"RPN proposals before NMS: the {len(before)} highest-scoring anchors, "
             "moved by their offsets and clipped", "Anchors decoded with their deltas, clipped to the image, those "
             f"under {config.min_proposal_size:g} px dropped, the top {config.pre_nms_test} by objectness kept."),
            ("proposals-after-nms", after, f"RPN proposals after NMS at IoU {config.rpn_nms}: {len(after)} left",
             f"Greedy NMS at IoU {config.rpn_nms} on the objectness scores, then the top {config.post_nms_test} go "
             "to the detection head; the 10 best are thick.")):
        picture, factor = enlarge(tensor.cpu())
        shown = boxes.cpu().numpy()
        colours = rank_colours(len(shown))
        picture = draw_boxes(picture, shown[::-1], factor, colours=colours, width=1)
        picture = draw_boxes(picture, shown[:10][::-1], factor, colours=colours[-10:], width=3)
        steps.append(Step(name, title, f"{FASTER}, sec. 3.1 and 3.3", picture, caption + " Yellow = best."))
    return steps, after


def _two_stage(recipe, model, request, masks: bool) -> list[Step]:
    names, class_ids, config = recipe.categories, sorted(recipe.categories), model.config
    tensor, scale, hw, batch = _fitted(model, request)
    if masks:
        features, mask_map = model.feature_maps(batch)
    else:
        features = model.features(batch)
    stride = model.features.stride
    proposals = model.region_proposals(features, [hw], training=False)[2]
    found = model.detect_regions(features, proposals, [hw])[0]
    truth = _truth_in_input(recipe, request, scale)
    note = ""
    if truth is None:
        n = min(3, len(found["scores"]))
        truth, note = (found["boxes"][:n].cpu().float(), found["labels"][:n].cpu()), stand_in_note(n)
    picture = enlarge(tensor.cpu())[0]
    activity = features[0].float().mean(dim=0).cpu().numpy()
    steps = [Step(
        "shared-features", f"The shared convolutional feature map: {tuple(features.shape[1:])} at stride {stride}",
        f"{FASTER}, sec. 3", side_by_side(labelled(picture, "network input"),
                                          labelled(blend(picture, activity, 0.6), "mean activation")),
        "One pass of the backbone feeds both the Region Proposal Network and the Fast R-CNN head.")]
    steps += _anchor_steps(model, features, tensor, hw, truth, note)
    rpn_steps, after = _rpn_steps(model, features, tensor, hw)
    steps += rpn_steps
    steps.append(roi_comparison(features, _pick_roi(after, stride), stride, config.roi_size, config.roi_op))
    step, (logits, _) = _region_step(model, features, after, tensor, names, class_ids)
    steps.append(step)
    total = int((logits.float().softmax(dim=1)[:, 1:] >= config.score_threshold).sum())
    shown_truth = None if note else truth
    steps.append(_nms_step(found, total, tensor, names, class_ids, shown_truth, config.nms_threshold,
                           f"{FASTER}, sec. 3.2; {FAST}, sec. 3"))
    if masks:
        steps += _mask_steps(model, features, mask_map, found, tensor, names, class_ids)
    return steps


def trace_faster_rcnn(recipe, model, request) -> list[Step]:
    return _two_stage(recipe, model, request, masks=False)


# ------------------------------------------------------------------------------------------------ Mask R-CNN
def _mask_steps(model, features, mask_map, found, tensor, names, class_ids) -> list[Step]:
    config = model.config
    steps = []
    if mask_map.shape[-1] != features.shape[-1]:
        picture = enlarge(tensor.cpu())[0]
        steps.append(Step(
            "mask-feature-level", f"The mask branch's map: FPN's stride-{model.mask_stride} level (1 x 1 lateral + "
            f"upsampled stride-{model.features.stride} map, then 3 x 3)", "Lin et al. 2017, sec. 3; He et al. 2017, "
            "sec. 3", side_by_side(
                labelled(blend(picture, features[0].float().mean(dim=0).cpu().numpy(), 0.6),
                         f"shared map, stride {model.features.stride}"),
                labelled(blend(picture, mask_map[0].float().mean(dim=0).cpu().numpy(), 0.6),
                         f"mask map, stride {model.mask_stride}")),
            "The box head reads the shared map; the mask head reads this finer level, so thin parts of shapes "
            "survive RoIAlign."))
    detections = model.add_masks(mask_map, [dict(found)])[0]
    n = min(8, len(detections["scores"]))
    panels = []
    for k in range(n):
        c = class_ids[int(detections["labels"][k]) - 1]
        probs = detections["mask_probs"][k].float().cpu().numpy()
        panels.append((f"{names[c]} {float(detections['scores'][k]):.2f}", heat_image(probs, (150, 150), 0, 1)))
    steps.append(Step(
        "mask-head", f"Mask head: a {config.mask_size} x {config.mask_size} mask per detection, of its predicted "
        "class", f"{MASK}, sec. 3 (Fig. 4)", sheet(panels, columns=4) if panels else
        Image.new("RGB", (512, 60), WHITE),
        f"RoIAlign at {config.mask_size // 2} x {config.mask_size // 2} on the detection box, {config.mask_convs} "
        "3 x 3 convolutions, a 2 x 2 deconvolution, then one sigmoid mask per class: classes do not compete. "
        "0 dark .. 1 yellow."))
    size = tuple(tensor.shape[-2:])
    pasted = paste_masks(detections["mask_probs"][:n].float().cpu(), detections["boxes"][:n].double().cpu(), size)
    labels = [class_ids[int(c) - 1] for c in detections["labels"][:n]]
    picture = draw_masks((tensor.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8), pasted.numpy(),
                         labels)
    picture, factor = enlarge(picture)
    picture = draw_boxes(picture, detections["boxes"][:n].cpu().numpy(), factor, labels=labels,
                         texts=[str(names[c]) for c in labels])
    steps.append(Step(
        "masks-in-the-image", f"The {n} best masks resized to their boxes and thresholded at 0.5",
        f"{MASK}, sec. 3.1 (inference)", picture,
        "Each m x m mask is resampled bilinearly onto the pixels of its box and binarised at 0.5."))
    return steps


def trace_mask_rcnn(recipe, model, request) -> list[Step]:
    return _two_stage(recipe, model, request, masks=True)
