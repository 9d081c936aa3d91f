"""Selective Search step by step (Uijlings et al. 2013): the initial over-segmentation, the hierarchical grouping
merge after merge, the diversification over colour spaces, thresholds and similarities, and the ranked proposals.

The grouping is `scenekit.proposals.selective_search.hierarchies` itself; the initial regions are computed with
the same three calls it makes (colour conversion, sorted graph, segmentation), which it does not return.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from scenekit.proposals.colour import convert_colour
from scenekit.proposals.graph_segment import segment_image, sorted_graph
from scenekit.proposals.selective_search import PRESETS, hierarchies, selective_search
from scenekit.trace.pictures import draw_boxes, enlarge, rank_colours, sheet
from scenekit.trace.report import Step

SOURCE = "Uijlings et al. 2013"


def initial_regions(rgb: np.ndarray, space: str, k: float, sigma: float, min_size: int | None) -> np.ndarray:
    """[H, W] labels of the Felzenszwalb-Huttenlocher segmentation one grouping starts from (as `hierarchies`)."""
    colour = convert_colour(rgb, space)                                      # [H, W, C] in [0, 255]
    graph = sorted_graph(colour / np.float32(255.0), sigma, quantise=True)
    return segment_image(colour, k / 255.0, sigma, int(k) if min_size is None else int(min_size), graph=graph)


def regions_picture(rgb: np.ndarray, labels: np.ndarray, side: int = 512) -> Image.Image:
    """Each region tinted in its own colour, its border drawn black, the image showing through."""
    colours = np.random.default_rng(0).integers(40, 255, (int(labels.max()) + 1, 3))
    tinted = (0.45 * rgb + 0.55 * colours[labels]).round().astype(np.uint8)
    border = np.zeros(labels.shape, dtype=bool)
    border[:-1] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    tinted[border] = 0
    return enlarge(tinted, side)[0]


def grouping_stage(rgb: np.ndarray, boxes: np.ndarray, first: int, start: int, stop: int) -> Image.Image:
    """The boxes of merges [start, stop) (dark = early, yellow = late, the last one thick) over the grey boxes of
    the merges before them; `first` is the index of the first merge in `boxes` (= the number of initial regions)."""
    picture, factor = enlarge(rgb)
    before = boxes[first:first + start]
    picture = draw_boxes(picture, before, factor, colours=[(190, 190, 190)] * len(before), width=1)
    stage = boxes[first + start:first + stop]
    colours = rank_colours(len(stage))
    picture = draw_boxes(picture, stage, factor, colours=colours, width=2)
    if len(stage):
        picture = draw_boxes(picture, stage[-1:], factor, colours=[(255, 40, 40)], width=5)
    return picture


def trace_selective_search(recipe, model, request, mode: str = "fast", top: int = 30) -> list[Step]:
    rgb = request.image
    strategy = PRESETS[mode]
    groupings = list(hierarchies(rgb, strategy))
    first = groupings[0]
    labels = initial_regions(rgb, first.colour_space, first.k, strategy.sigma, strategy.min_size)
    steps = [Step(
        "initial-regions",
        f"Initial regions: Felzenszwalb-Huttenlocher segmentation in {first.colour_space}, k = {first.k:g} "
        f"({first.num_initial} regions)", f"{SOURCE}, sec. 3.1; Felzenszwalb & Huttenlocher 2004",
        regions_picture(rgb, labels),
        "Grouping starts from these regions, each a proposal already. Its threshold k sets the scale: larger k, "
        "larger regions.")]
    merges = len(first.boxes) - first.num_initial
    cuts = [0, max(1, merges // 4), max(1, merges // 2), merges]
    for number, (start, stop) in enumerate(zip(cuts, cuts[1:]), start=1):
        if stop <= start:
            continue
        steps.append(Step(
            f"grouping-{number}",
            f"Hierarchical grouping ({first.colour_space}, k = {first.k:g}, similarity {first.similarity}): "
            f"merges {start + 1}-{stop} of {merges}", f"{SOURCE}, sec. 3.1 (Algorithm 1) and 3.2",
            grouping_stage(rgb, first.boxes, first.num_initial, start, stop),
            "At each step the two most similar neighbouring regions merge (similarity = colour + texture + size + "
            "fill); the merged region's box is a new proposal. This stage's merges run dark to yellow, the last "
            "one in red; earlier merges are grey. The last merge covers the whole image."))
    panels = []
    seen = set()
    for g in groupings:
        if (g.colour_space, g.k) in seen:
            continue
        seen.add((g.colour_space, g.k))
        similarities = ", ".join(f"{h.similarity}: {len(h.boxes) - h.num_initial} merges" for h in groupings
                                 if (h.colour_space, h.k) == (g.colour_space, g.k))
        segmentation = initial_regions(rgb, g.colour_space, g.k, strategy.sigma, strategy.min_size)
        panels.append((f"{g.colour_space}, k = {g.k:g}: {g.num_initial} regions; {similarities}",
                       regions_picture(rgb, segmentation, side=300)))
    steps.append(Step(
        "diversification", f"Diversification: {len(groupings)} groupings over colour spaces x thresholds k x "
        f"similarity measures (mode '{mode}')", f"{SOURCE}, sec. 3.2 and 5.2", sheet(panels, columns=2),
        "Each colour space and k gives its own initial regions; each similarity measure grouped on top of them "
        "gives its own hierarchy. All regions of all hierarchies are pooled."))
    proposals = selective_search(rgb, mode=mode, seed=0).numpy()
    shown = proposals[:top]
    picture, factor = enlarge(rgb)
    picture = draw_boxes(picture, shown[::-1], factor, texts=[str(k) for k in range(len(shown), 0, -1)],
                         colours=rank_colours(len(shown)))
    steps.append(Step(
        "ranked-proposals", f"Ranked proposals: the best {len(shown)} of {len(proposals)} distinct boxes",
        f"{SOURCE}, sec. 3.3", picture,
        "Within a hierarchy the region formed last ranks first; each position is multiplied by a random number "
        "in [0, 1] and all hierarchies sorted together, then duplicate boxes dropped. Number = rank (1 best, "
        "yellow)."))
    return steps
