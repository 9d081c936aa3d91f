"""Semantic segmentation step by step: FCN-32s/16s/8s (Long et al. 2015), DeconvNet (Noh et al. 2015) and the
sliding-window baseline they replace.

FCN: the encoder's maps, the stride-32 scores of the convolutionalized classifier, each skip's 1 x 1 scores and
what adding them to the 2x upsampled coarser scores changes, the final bilinear upsampling. DeconvNet: the
max-pooling switches, the decoder's sparse unpooled maps and the convolutions that densify them, the output. The
sliding window: the windows centred on a few pixels and their classes, the label map of one window per pixel.
Each network runs through its own submodules in the order of its `forward`, so every intermediate map is there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scenekit.data.transforms import prepare_image
from scenekit.models.fcn import channels_last, max_unpool2d, pad_to_multiple, sliding_window_segment, upsample_bilinear
from scenekit.trace.pictures import (class_map_picture, draw_boxes, draw_grid, enlarge, heat_image, labelled, legend,
                                     sheet, side_by_side, stacked)
from scenekit.trace.report import Step
from scenekit.viz import colour_for, draw_semantic

FCN, DECONVNET = "Long et al. 2015", "Noh et al. 2015"


def _input(recipe, request) -> torch.Tensor:
    """The image as the recipe's `segment_images` feeds it: resized to image_size x image_size -> [1, 3, S, S]."""
    return prepare_image(request.image, recipe.options.get("image_size"))[None].to(request.device)


def _category_map(scores: torch.Tensor, stride: int, height: int, width: int, class_ids) -> np.ndarray:
    """Scores [1, K+1, h, w] at `stride` -> [height, width] category ids of the argmax, each cell a stride block."""
    index = scores[0].argmax(dim=0).cpu().numpy()
    blocks = np.repeat(np.repeat(index, stride, axis=0), stride, axis=1)[:height, :width]
    return np.array([0] + list(class_ids))[blocks]


def _map_picture(scores, stride, tensor, class_ids, grid: bool = True):
    height, width = tensor.shape[-2:]
    picture = enlarge(tensor[0].cpu())[0]
    coloured = class_map_picture(_category_map(scores, stride, height, width, class_ids), picture.size)
    if grid and stride > 1:
        coloured = draw_grid(coloured, -(-height // stride), -(-width // stride), colour=(90, 90, 90),
                             extent=(coloured.width * (-(-width // stride) * stride) / width,
                                     coloured.height * (-(-height // stride) * stride) / height))
    return coloured


def _with_legend(body, recipe, *scores):
    """`body` above a legend of the categories the argmax of any of `scores` [1, K+1, h, w] picks."""
    class_ids = sorted(recipe.categories)
    present = sorted({int(c) for t in scores for c in t[0].argmax(dim=0).unique().tolist()})
    entries = [((40, 40, 40), "background") if c == 0 else (colour_for(class_ids[c - 1]),
                                                              str(recipe.categories[class_ids[c - 1]]))
               for c in present]
    return stacked(body, legend(entries, width=body.width))


def _output_step(recipe, tensor, scores, name, title, source, caption) -> Step:
    """Scores [1, K+1, H, W] at the input's resolution -> the argmax categories tinted over the enlarged input."""
    category = np.array([0] + sorted(recipe.categories))[scores[0].argmax(dim=0).cpu().numpy()]     # [H, W]
    picture = enlarge(tensor[0].cpu())[0]
    rows = np.arange(picture.height) * category.shape[0] // picture.height            # nearest neighbour
    columns = np.arange(picture.width) * category.shape[1] // picture.width
    body = draw_semantic(picture, category[rows][:, columns], recipe.categories)
    present = sorted(int(c) for c in np.unique(category) if c)
    return Step(name, title, source, body,
                caption + f" Categories present: {', '.join(str(recipe.categories[c]) for c in present) or 'none'}.")


def _activity_sheet(maps: list[tuple[str, torch.Tensor]], columns: int = 3, side: int = 200):
    panels = []
    for label, tensor in maps:
        activity = tensor[0].float().abs().mean(dim=0).cpu().numpy()
        height = max(1, round(side * activity.shape[0] / activity.shape[1]))
        panels.append((label, heat_image(activity, (side, height))))
    return sheet(panels, columns)


# ------------------------------------------------------------------------------------------------ FCN
def trace_fcn(recipe, model, request) -> list[Step]:
    class_ids = sorted(recipe.categories)
    tensor = _input(recipe, request)
    height, width = tensor.shape[-2:]
    encoder = model.encoder
    features, _ = encoder(channels_last(pad_to_multiple(tensor, encoder.stride)))
    n = len(features)
    steps = [Step(
        "encoder", f"The encoder: {n} stages, each ending in 2 x 2 max-pooling (strides 2 .. {encoder.stride})",
        f"{FCN}, sec. 3.1 and 4.1", _activity_sheet([(f"pool{i + 1}: {tuple(f.shape[1:])}, stride {2 ** (i + 1)}", f)
                                                     for i, f in enumerate(features)]),
        "Mean absolute activation of each stage's output. The classification net without its classifier: every "
        "later layer is a convolution, so any input size works.")]

    scores = model.classifier(features[-1])                                    # [1, K+1, H/32, W/32]
    stride = encoder.stride
    steps.append(Step(
        "coarse-scores", f"FCN-32s scores: fc6 and fc7 as convolutions score each of the {scores.shape[-2]} x "
        f"{scores.shape[-1]} stride-{stride} cells", f"{FCN}, sec. 3.1 and 4.2",
        _with_legend(side_by_side(labelled(enlarge(tensor[0].cpu())[0], "input"),
                                  labelled(_map_picture(scores, stride, tensor, class_ids),
                                           "most probable class per cell")), recipe, scores),
        "The fully connected layers become convolutions (fc6 a 3 x 3, fc7 and the class scorer 1 x 1): a coarse "
        "map of class scores in one pass. Dark: background."))

    for k in range(model.num_skips):
        up = model.upsamplers[k](scores)                                       # learned 2x, bilinear at the start
        skip = model.skip_scorers[k](features[-2 - k])                         # 1 x 1 scores of the finer stage
        fused = up + skip
        stride //= 2
        contribution = skip[0].float().abs().amax(dim=0).cpu().numpy()
        panels = [(f"2x upsampled stride-{2 * stride} scores", _map_picture(up, stride, tensor, class_ids)),
                  (f"pool{n - 1 - k} scores (max |score| {float(contribution.max()):.3f})",
                   heat_image(contribution, _map_picture(up, stride, tensor, class_ids).size)),
                  (f"sum: FCN-{stride}s", _map_picture(fused, stride, tensor, class_ids))]
        changed = float((fused[0].argmax(dim=0) != up[0].argmax(dim=0)).float().mean())
        steps.append(Step(
            f"skip-pool{n - 1 - k}", f"Skip from pool{n - 1 - k}: its 1 x 1 class scores added to the 2x upsampled "
            f"coarser scores -> FCN-{stride}s", f"{FCN}, sec. 4.2 (Fig. 3)",
            _with_legend(sheet(panels, columns=3), recipe, up, fused),
            f"The skip changes the most probable class of {changed:.0%} of the stride-{stride} cells. Skip scorers "
            "start at zero (the authors' initialisation), so an untrained net's skips add nothing yet."))
        scores = fused
    output = upsample_bilinear(scores, model.final_factor)[..., :height, :width]   # -> [1, K+1, H, W]
    steps.append(_output_step(
        recipe, tensor, output, "upsampled-output", f"Output: the stride-{stride} scores upsampled x"
        f"{model.final_factor} by fixed bilinear interpolation, then the per-pixel argmax", f"{FCN}, sec. 3.3",
        "Upsampling is a transposed convolution with a bilinear kernel (\"backwards strided convolution\")."
        + (" The recipe then averages the class distributions within superpixels (Farabet et al. 2013), not shown."
           if recipe.options.get("superpixel_scale") else "")))
    return steps


# ------------------------------------------------------------------------------------------------ DeconvNet
def trace_deconvnet(recipe, model, request) -> list[Step]:
    tensor = _input(recipe, request)
    height, width = tensor.shape[-2:]
    features, switches = model.encoder(channels_last(pad_to_multiple(tensor, model.encoder.stride)))
    unpool = model.config.upsample == "unpool"
    steps = []
    if switches and switches[0] is not None:
        panels = []
        for i, ((indices, size), pooled) in enumerate(zip(switches, features)):
            channel = int(pooled[0].float().mean(dim=(1, 2)).argmax())
            chosen = max_unpool2d(torch.ones_like(pooled[:, channel:channel + 1]), indices[:, channel:channel + 1],
                                  size)[0, 0].cpu().numpy()                   # 1 where each window's max came from
            shown = chosen[:-(-height // 2 ** i), :-(-width // 2 ** i)]
            panels.append((f"pool{i + 1}, channel {channel}: {tuple(size)} -> {tuple(pooled.shape[-2:])}",
                           heat_image(shown, (200, max(1, round(200 * shown.shape[0] / shown.shape[1]))), 0, 1)))
        steps.append(Step(
            "switches", "Max-pooling switches: where the maximum of each 2 x 2 window came from",
            f"{DECONVNET}, sec. 3.2.1", sheet(panels, columns=3),
            "Yellow: the position that won its window (one per window) for the channel shown. "
            + ("Unpooling puts values back at exactly these positions." if unpool else
               "This variant ignores them: it upsamples with learned transposed convolutions.")))

    x = model.centre(features[-1])                                            # [1, C, H/32, W/32]
    rows = []
    for k, stage in enumerate(model.decoder):
        if unpool:
            indices, size = switches[-1 - k]
            up = max_unpool2d(x, indices, size)                               # sparse, 2x
        else:
            up = model.upsamplers[k](x)                                       # learned stride-2 transposed conv
        x = stage(up)
        sparse = float((up[0] == 0).float().mean())
        rows += [(f"{'unpooled' if unpool else 'upsampled'} to {tuple(up.shape[-2:])}: {sparse:.0%} zeros", up),
                 (f"after {len(stage)} 3 x 3 conv(s): {tuple(x.shape[1:])}", x)]
    steps.append(Step(
        "decoder", "Decoder: " + ("unpooling puts each value back at its switch (sparse), convolutions densify it"
                                  if unpool else "learned stride-2 transposed convolutions, then convolutions"),
        f"{DECONVNET}, sec. 3.2.1 and 3.2.2" if unpool else f"{DECONVNET}, sec. 3.2.2; {FCN}, sec. 3.3",
        _activity_sheet(rows, columns=2, side=220),
        "Mean absolute activation, deepest stage first. " + ("Unpooling keeps where things were; the "
                                                              "convolutions fill in their shape." if unpool else
                                                              "The transposed convolutions start as bilinear.")))
    scores = model.scorer(x)[..., :height, :width]                            # [1, K+1, H, W]
    steps.append(_output_step(recipe, tensor, scores, "output", "Output: 1 x 1 class scores on the full-resolution "
                              "map, per-pixel argmax", f"{DECONVNET}, sec. 3.1", "The decoder mirrors the encoder "
                              "stage by stage, back to the input's resolution."))
    return steps


# ------------------------------------------------------------------------------------------------ sliding window
def trace_sliding_window(recipe, model, request) -> list[Step]:
    names, class_ids = recipe.categories, sorted(recipe.categories)
    tensor = _input(recipe, request)
    height, width = tensor.shape[-2:]
    w, before = model.window, model.window // 2
    padded = F.pad(tensor, (before, w - 1 - before, before, w - 1 - before))    # as `sliding_window_segment`
    pixels = [(height // 2, width // 2), (height // 4, width // 4), (height // 4, 3 * width // 4),
              (3 * height // 4, width // 4), (3 * height // 4, 3 * width // 4)]
    crops = torch.cat([padded[:, :, y:y + w, x:x + w] for y, x in pixels])   # [5, 3, w, w], centred on (y, x)
    probabilities = model(crops).softmax(dim=1)
    picture, factor = enlarge(tensor[0].cpu())
    windows = [[x - before, y - before, x - before + w, y - before + w] for y, x in pixels]
    picture = draw_boxes(picture, windows, factor, labels=list(range(len(pixels))),
                         texts=[str(k + 1) for k in range(len(pixels))])
    tiles = []
    for k, p in enumerate(probabilities):
        c = int(p.argmax())
        name = "background" if c == 0 else str(names[class_ids[c - 1]])
        tiles.append((f"{k + 1}: {name} {float(p[c]):.2f}", enlarge(crops[k].cpu(), 120)[0]))
    steps = [Step(
        "windows", f"Each pixel is labelled by classifying the {w} x {w} window centred on it (five shown)",
        f"Ciresan et al. 2012; Farabet et al. 2013; {FCN}, sec. 2", side_by_side(picture, sheet(tiles, columns=2)),
        "The window is zero-padded at the border; its class is the centre pixel's label.")]
    scores = sliding_window_segment(model, tensor)                            # [1, K+1, H, W]
    steps.append(_output_step(
        recipe, tensor, scores, "label-map", f"{height * width} windows, one network pass each: the label map",
        f"{FCN}, sec. 3.1", f"Neighbouring windows share {(w - 1) / w:.0%} of their pixels but none of their "
        "computation; FCN computes the shared convolutions once for the whole image."))
    maps = scores[0].softmax(dim=0).cpu().numpy()
    panels = [("background" if c == 0 else str(names[class_ids[c - 1]]), heat_image(maps[c], (160, 160), 0, 1))
              for c in range(len(maps))]
    steps.append(Step("class-probabilities", "The window classifier's probability of each class at every pixel",
                      f"{FCN}, sec. 3.1", sheet(panels, columns=4), "0 dark .. 1 yellow."))
    return steps
