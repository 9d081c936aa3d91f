"""Selective Search, Uijlings, van de Sande, Gevers & Smeulders (2013), "Selective Search for Object Recognition".

The object proposals of R-CNN and Fast R-CNN. Start from a Felzenszwalb-Huttenlocher over-segmentation and
greedily merge the two most similar neighbouring regions until one region is left (Sec. 3.1, Algorithm 1);
every region ever formed is a proposal, its bounding box the proposal box. Similarity (Sec. 3.2) is a sum of
up to four terms, each in [0, 1]:

    colour   s_colour(ri, rj)  = sum_k min(c_i^k, c_j^k)    25-bin histogram per channel, L1-normalised
    texture  s_texture(ri, rj) = sum_k min(t_i^k, t_j^k)    Gaussian derivatives (sigma = 1) in 8 orientations,
                                                             10-bin histogram per orientation per channel
    size     s_size(ri, rj)    = 1 - (size(ri) + size(rj)) / size(im)        small regions merge early
    fill     s_fill(ri, rj)    = 1 - (size(BB_ij) - size(ri) - size(rj)) / size(im)
                                                             regions that fill each other's gaps merge early

A merged region's histograms are the size-weighted average of its parts' (eq. 2), so no pixel is revisited.
Diversification (Sec. 3.2) repeats the grouping over colour spaces, segmentation scales k and similarity
combinations ("CTSF" = colour + texture + size + fill, "TSF", "F", "S", ...) and pools the regions.

Ranking (Sec. 3.3, "Combining locations"): within one hierarchy the region formed last (the whole image) gets
position 1, the one before it 2, and so on; each position is multiplied by a random number in [0, 1] and all
hierarchies' regions are sorted by that value, so large regions tend to come first while every hierarchy
contributes early. Only then are duplicate boxes removed, each keeping its best (smallest) value, so a box that
several hierarchies propose has several chances of a high rank. The paper does not say where the initial
regions go; the authors' code (Image2HierarchicalGrouping.m) adds them once per segmentation (not once per
similarity), all at the position below the first merge, and so does `ranking_values`. OpenCV's implementation
ranks the other way round (depth in the merge tree times a random number, small regions first); it is
available as `ranking="depth"`.

Texture detail the paper leaves open: the derivative responses are half-wave rectified per orientation (the 8
orientations are 4 axes times 2 signs) and each response map is scaled by its maximum over the image before
binning, as in OpenCV's implementation.

Speed: per-pixel work (colour conversion, smoothing, sorted edge list, histogram bins) happens once per colour
space and is shared by every k; the edge weights are rounded to 16 bits so that a counting sort replaces a float
sort (graph_segment.sorted_graph); each grouping keeps a heap of neighbour similarities (lazy deletion), so a
merge costs only its new neighbours' similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from scenekit.proposals.colour import COLOUR_SPACES, convert_colour
from scenekit.proposals.graph_segment import _find, correlate_axis, gaussian_kernel, segment_image, sorted_graph

COLOUR_BINS = 25
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10
SIMILARITY_TERMS = "CTSF"


@dataclass(frozen=True)
class Strategy:
    """One diversification setting: the colour spaces, segmentation thresholds k and similarity combinations
    whose every combination is one hierarchical grouping (paper Sec. 5.2)."""

    colour_spaces: tuple[str, ...]
    ks: tuple[float, ...]
    similarities: tuple[str, ...]
    sigma: float = 0.8
    min_size: int | None = None  # smallest initial region in pixels; None: k, as in the authors' code


# Sec. 5.2 / Table 3. "single" is the paper's best single strategy (HSV, C+T+S+F, k = 100).
PRESETS = {
    "single": Strategy(("HSV",), (100,), ("CTSF",)),
    "fast": Strategy(("HSV", "Lab"), (50, 100), ("CTSF", "TSF")),
    "quality": Strategy(("HSV", "Lab", "rgI", "H", "I"), (50, 100, 150, 300), ("CTSF", "TSF", "F", "S")),
}


# ---------------------------------------------------------------------------------------------- per-pixel features
def colour_bins(colour: np.ndarray) -> np.ndarray:
    """`[H, W, C]` float in [0, 255] -> `[H, W, C]` uint8 bin index in 0..24 (25 equal bins over [0, 256))."""
    return np.clip(colour * (COLOUR_BINS / 256.0), 0, COLOUR_BINS - 1).astype(np.uint8)


def texture_bins(colour: np.ndarray) -> np.ndarray:
    """`[H, W, C]` float in [0, 255] -> `[H, W, C * 8]` uint8 bin index in 0..9 of each oriented derivative.

    The first-order Gaussian derivative (sigma = 1) in direction theta is cos(theta) Gx + sin(theta) Gy (steerable
    filters), so two separable convolutions give all 8 orientations theta = 0, 45, ..., 315 degrees.
    """
    image = colour.astype(np.float32)
    g, dg = gaussian_kernel(1.0, 0).astype(np.float32), gaussian_kernel(1.0, 1).astype(np.float32)
    gx = correlate_axis(correlate_axis(image, g, 0), dg, 1)  # [H, W, C]
    gy = correlate_axis(correlate_axis(image, dg, 0), g, 1)
    return _oriented_bins(gx, gy, TEXTURE_ORIENTATIONS, TEXTURE_BINS)


@njit(cache=True)
def _oriented_bins(gx, gy, orientations, num_bins):
    # Responses below a thousandth of a grey level are float rounding noise of flat areas, not texture.
    floor = 1e-3
    height, width, channels = gx.shape
    cosines = np.cos(np.arange(orientations) * (2 * np.pi / orientations))
    sines = np.sin(np.arange(orientations) * (2 * np.pi / orientations))
    # Pass 1: each (channel, orientation) map's peak of the rectified response, to scale it into the bins.
    peak = np.zeros((channels, orientations))
    for y in range(height):
        for x in range(width):
            for c in range(channels):
                for o in range(orientations):
                    r = cosines[o] * gx[y, x, c] + sines[o] * gy[y, x, c]
                    if r > peak[c, o]:
                        peak[c, o] = r
    scale = np.zeros((channels, orientations))
    for c in range(channels):
        for o in range(orientations):
            if peak[c, o] > floor:
                scale[c, o] = num_bins / peak[c, o]
    bins = np.zeros((height, width, channels * orientations), np.uint8)
    for y in range(height):
        for x in range(width):
            for c in range(channels):
                for o in range(orientations):
                    r = cosines[o] * gx[y, x, c] + sines[o] * gy[y, x, c]
                    if r > floor:
                        bins[y, x, c * orientations + o] = min(int(r * scale[c, o]), num_bins - 1)
    return bins


# ---------------------------------------------------------------------------------------------- initial regions
@njit(cache=True)
def region_statistics(labels, num_regions, colour_bin, texture_bin):
    """One pass over the pixels: per region its size, box (x1, y1, x2, y2; x2, y2 exclusive) and L1-normalised
    colour and texture histograms. Shapes: labels [H, W]; colour_bin [H, W, C]; texture_bin [H, W, 8C]."""
    height, width = labels.shape
    nc, nt = colour_bin.shape[2], texture_bin.shape[2]
    sizes = np.zeros(num_regions, np.int64)
    boxes = np.empty((num_regions, 4), np.int64)
    boxes[:, 0] = width
    boxes[:, 1] = height
    boxes[:, 2] = 0
    boxes[:, 3] = 0
    colour_hist = np.zeros((num_regions, nc * 25), np.float32)
    texture_hist = np.zeros((num_regions, nt * 10), np.float32)
    for y in range(height):
        for x in range(width):
            r = labels[y, x]
            sizes[r] += 1
            boxes[r, 0] = min(boxes[r, 0], x)
            boxes[r, 1] = min(boxes[r, 1], y)
            boxes[r, 2] = max(boxes[r, 2], x + 1)
            boxes[r, 3] = max(boxes[r, 3], y + 1)
            for c in range(nc):
                colour_hist[r, c * 25 + colour_bin[y, x, c]] += 1.0
            for t in range(nt):
                texture_hist[r, t * 10 + texture_bin[y, x, t]] += 1.0
    for r in range(num_regions):
        colour_hist[r] /= sizes[r] * nc
        texture_hist[r] /= sizes[r] * nt
    return sizes, boxes, colour_hist, texture_hist


def neighbour_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[H, W]` labels -> unique region pairs `(a [P], b [P])`, a < b, touching in the 8-connected grid."""
    n = int(labels.max()) + 1
    pairs = [(labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1]),
             (labels[1:, 1:], labels[:-1, :-1]), (labels[:-1, 1:], labels[1:, :-1])]
    keys = []
    for p, q in pairs:
        differ = p != q
        lo, hi = np.minimum(p[differ], q[differ]), np.maximum(p[differ], q[differ])
        keys.append(lo.astype(np.int64) * n + hi)
    keys = np.unique(np.concatenate(keys))
    return keys // n, keys % n


# ---------------------------------------------------------------------------------------------- grouping
@njit(cache=True)
def _similarity(i, j, sizes, boxes, colour_hist, texture_hist, image_size, use_c, use_t, use_s, use_f):
    s = 0.0
    if use_c:
        acc = 0.0
        for d in range(colour_hist.shape[1]):
            acc += min(colour_hist[i, d], colour_hist[j, d])
        s += acc
    if use_t:
        acc = 0.0
        for d in range(texture_hist.shape[1]):
            acc += min(texture_hist[i, d], texture_hist[j, d])
        s += acc
    if use_s:
        s += 1.0 - (sizes[i] + sizes[j]) / image_size
    if use_f:
        bw = max(boxes[i, 2], boxes[j, 2]) - min(boxes[i, 0], boxes[j, 0])
        bh = max(boxes[i, 3], boxes[j, 3]) - min(boxes[i, 1], boxes[j, 1])
        s += 1.0 - (bw * bh - sizes[i] - sizes[j]) / image_size
    return s


@njit(cache=True)
def _heap_less(keys, a, b, i, j):
    # Order (key, a, b) lexicographically so ties break the same way on every run.
    if keys[i] != keys[j]:
        return keys[i] < keys[j]
    if a[i] != a[j]:
        return a[i] < a[j]
    return b[i] < b[j]


@njit(cache=True)
def _heap_swap(keys, a, b, i, j):
    keys[i], keys[j] = keys[j], keys[i]
    a[i], a[j] = a[j], a[i]
    b[i], b[j] = b[j], b[i]


@njit(cache=True)
def _sift_up(keys, a, b, i):
    while i > 0:
        parent = (i - 1) // 2
        if not _heap_less(keys, a, b, i, parent):
            break
        _heap_swap(keys, a, b, i, parent)
        i = parent


@njit(cache=True)
def _sift_down(keys, a, b, n):
    i = 0
    while True:
        left, smallest = 2 * i + 1, i
        if left < n and _heap_less(keys, a, b, left, smallest):
            smallest = left
        if left + 1 < n and _heap_less(keys, a, b, left + 1, smallest):
            smallest = left + 1
        if smallest == i:
            break
        _heap_swap(keys, a, b, i, smallest)
        i = smallest


@njit(cache=True)
def hierarchical_grouping(pair_a, pair_b, sizes0, boxes0, colour0, texture0, image_size,
                          use_c, use_t, use_s, use_f):
    """Algorithm 1 of the paper: merge the most similar neighbours until one region is left.

    Inputs describe the n initial regions (sizes [n], boxes [n, 4], histograms [n, D]) and their neighbour pairs.
    Returns `[m, 4]` boxes of all m regions in the order they were formed: the n initial regions, then each
    merge (m = 2n - 1 for a connected image), and `[m]` levels, each region's depth in the merge tree (initial
    regions 1), which OpenCV's ranking uses.
    """
    n0 = sizes0.shape[0]
    cap = 2 * n0 - 1
    sizes = np.empty(cap, np.float64)
    sizes[:n0] = sizes0
    boxes = np.empty((cap, 4), np.int64)
    boxes[:n0] = boxes0
    colour_hist = np.empty((cap, colour0.shape[1]), np.float32)
    colour_hist[:n0] = colour0
    texture_hist = np.empty((cap, texture0.shape[1]), np.float32)
    texture_hist[:n0] = texture0
    alive = np.zeros(cap, np.bool_)
    alive[:n0] = True
    merged_into = np.arange(cap)  # dead region -> the region it became part of
    levels = np.ones(cap, np.int64)  # depth in the merge tree: initial regions 1, a merge 1 + its deeper part
    stamp = np.full(cap, -1, np.int64)

    # Neighbour lists in one pool; a list may name dead regions, resolved through merged_into when read.
    num_pairs = pair_a.shape[0]
    degree = np.zeros(n0, np.int64)
    for p in range(num_pairs):
        degree[pair_a[p]] += 1
        degree[pair_b[p]] += 1
    start = np.zeros(cap, np.int64)
    length = np.zeros(cap, np.int64)
    for r in range(1, n0):
        start[r] = start[r - 1] + degree[r - 1]
    pool = np.empty(max(4 * num_pairs, 16), np.int64)
    for p in range(num_pairs):
        i, j = pair_a[p], pair_b[p]
        pool[start[i] + length[i]] = j
        length[i] += 1
        pool[start[j] + length[j]] = i
        length[j] += 1
    pool_end = 2 * num_pairs

    # Min-heap on -similarity, with lazy deletion of pairs whose regions were merged away.
    heap_cap = max(2 * num_pairs, 16)
    keys = np.empty(heap_cap, np.float64)
    ha = np.empty(heap_cap, np.int64)
    hb = np.empty(heap_cap, np.int64)
    heap_n = 0
    for p in range(num_pairs):
        i, j = pair_a[p], pair_b[p]
        keys[heap_n] = -_similarity(i, j, sizes, boxes, colour_hist, texture_hist, image_size,
                                    use_c, use_t, use_s, use_f)
        ha[heap_n] = i
        hb[heap_n] = j
        heap_n += 1
        _sift_up(keys, ha, hb, heap_n - 1)

    n = n0
    while heap_n > 0:
        i, j = ha[0], hb[0]
        heap_n -= 1
        _heap_swap(keys, ha, hb, 0, heap_n)
        _sift_down(keys, ha, hb, heap_n)
        if not (alive[i] and alive[j]):
            continue
        t = n
        n += 1
        size_i, size_j = sizes[i], sizes[j]
        sizes[t] = size_i + size_j
        boxes[t, 0] = min(boxes[i, 0], boxes[j, 0])
        boxes[t, 1] = min(boxes[i, 1], boxes[j, 1])
        boxes[t, 2] = max(boxes[i, 2], boxes[j, 2])
        boxes[t, 3] = max(boxes[i, 3], boxes[j, 3])
        # Eq. (2): the merged histogram is the size-weighted average.
        wi, wj = size_i / sizes[t], size_j / sizes[t]
        for d in range(colour_hist.shape[1]):
            colour_hist[t, d] = wi * colour_hist[i, d] + wj * colour_hist[j, d]
        for d in range(texture_hist.shape[1]):
            texture_hist[t, d] = wi * texture_hist[i, d] + wj * texture_hist[j, d]
        alive[i] = False
        alive[j] = False
        alive[t] = True
        merged_into[i] = t
        merged_into[j] = t
        levels[t] = max(levels[i], levels[j]) + 1

        # t's neighbours: those of i and j, resolved to living regions, without t itself and repeats.
        need = pool_end + length[i] + length[j]
        if need > pool.shape[0]:
            bigger = np.empty(max(2 * pool.shape[0], need), np.int64)
            bigger[:pool_end] = pool[:pool_end]
            pool = bigger
        start[t] = pool_end
        stamp[t] = t
        for r in (i, j):
            for q in range(start[r], start[r] + length[r]):
                y = _find(merged_into, pool[q])
                if stamp[y] == t:
                    continue
                stamp[y] = t
                pool[pool_end] = y
                pool_end += 1
                if heap_n == keys.shape[0]:
                    keys = np.concatenate((keys, np.empty(heap_n, np.float64)))
                    ha = np.concatenate((ha, np.empty(heap_n, np.int64)))
                    hb = np.concatenate((hb, np.empty(heap_n, np.int64)))
                keys[heap_n] = -_similarity(t, y, sizes, boxes, colour_hist, texture_hist, image_size,
                                            use_c, use_t, use_s, use_f)
                ha[heap_n] = t
                hb[heap_n] = y
                heap_n += 1
                _sift_up(keys, ha, hb, heap_n - 1)
        length[t] = pool_end - start[t]
    return boxes[:n], levels[:n]


# ---------------------------------------------------------------------------------------------- the whole method
def _as_rgb(image) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        raise ValueError("image must be an [H, W, 3] uint8 numpy array or a PIL image, got a torch tensor "
                         "(use tensor.permute(1, 2, 0).numpy() for a [3, H, W] uint8 tensor)")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be an [H, W, 3] uint8 numpy array or a PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def _resolve_strategy(mode, colour_spaces, ks, similarities, sigma, min_size=None) -> Strategy:
    if mode not in PRESETS:
        raise ValueError(f"mode must be one of {sorted(PRESETS)}, got {mode!r}")
    preset = PRESETS[mode]
    strategy = Strategy(tuple(colour_spaces) if colour_spaces is not None else preset.colour_spaces,
                        tuple(ks) if ks is not None else preset.ks,
                        tuple(similarities) if similarities is not None else preset.similarities,
                        preset.sigma if sigma is None else float(sigma),
                        preset.min_size if min_size is None else min_size)
    for space in strategy.colour_spaces:
        if space not in COLOUR_SPACES:
            raise ValueError(f"colour_spaces: each must be one of {COLOUR_SPACES}, got {space!r}")
    for k in strategy.ks:
        if not np.isfinite(k) or k <= 0:
            raise ValueError(f"ks: each k must be a finite number > 0, got {k}")
    for combo in strategy.similarities:
        if not combo or any(term not in SIMILARITY_TERMS for term in combo) or len(set(combo)) != len(combo):
            raise ValueError(f"similarities: each must be a non-empty combination of the letters C, T, S, F "
                             f"(colour, texture, size, fill), got {combo!r}")
    if not (strategy.colour_spaces and strategy.ks and strategy.similarities):
        raise ValueError("colour_spaces, ks and similarities must each name at least one setting")
    if not np.isfinite(strategy.sigma) or strategy.sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {strategy.sigma}")
    if strategy.min_size is not None and (int(strategy.min_size) != strategy.min_size or strategy.min_size < 0):
        raise ValueError(f"min_size must be an integer >= 0, got {strategy.min_size}")
    return strategy


@dataclass(frozen=True)
class Grouping:
    """One hierarchical grouping: `boxes [m, 4]` int64 of all its regions in formation order (the
    `num_initial` initial regions first, then one per merge) and `levels [m]`, each region's depth in the merge
    tree (initial regions 1)."""

    colour_space: str
    k: float
    similarity: str
    boxes: np.ndarray
    levels: np.ndarray
    num_initial: int


def hierarchies(rgb: np.ndarray, strategy: Strategy):
    """Yield a `Grouping` for every (colour space, k, similarity) of the strategy, similarities innermost."""
    height, width = rgb.shape[:2]
    for space in strategy.colour_spaces:
        colour = convert_colour(rgb, space)                                  # [H, W, C] in [0, 255]
        # The sorted edge list depends on the colour space and sigma only, so it serves every k.
        graph = sorted_graph(colour / np.float32(255.0), strategy.sigma, quantise=True)
        cbins, tbins = colour_bins(colour), texture_bins(colour)             # [H, W, C], [H, W, 8C]
        for k in strategy.ks:
            min_size = int(k) if strategy.min_size is None else int(strategy.min_size)
            labels = segment_image(colour, k / 255.0, strategy.sigma, min_size, graph=graph)
            n = int(labels.max()) + 1
            sizes, boxes, colour_hist, texture_hist = region_statistics(labels, n, cbins, tbins)
            pair_a, pair_b = neighbour_pairs(labels)
            for combo in strategy.similarities:
                merged, levels = hierarchical_grouping(pair_a, pair_b, sizes, boxes, colour_hist, texture_hist,
                                                       float(height * width), "C" in combo, "T" in combo,
                                                       "S" in combo, "F" in combo)
                yield Grouping(space, k, combo, merged, levels, n)


RANKINGS = ("paper", "depth")


def ranking_values(groupings, rng: np.random.Generator, ranking: str = "paper"):
    """Pool the groupings' boxes with their ranking values (smaller = better): `(boxes [M, 4], values [M])`.

    "paper" (Sec. 3.3, as the authors' code does it): within one grouping the merges are numbered from the
    last (the whole image, position 1) back to the first; the initial regions of a segmentation come once,
    not once per similarity, all at the position after the first merge. Each position is multiplied by its own
    random number in [0, 1], so large regions tend to come first while every grouping contributes early.
    "depth" (OpenCV's ximgproc, which its source calls inverted from the paper): every region of every grouping,
    the initial ones included, gets its depth in the merge tree (initial regions 1) times a random number, so
    small regions tend to come first.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    all_boxes, all_positions = [], []
    segmented = set()
    for g in groupings:
        if ranking == "depth":
            all_boxes.append(g.boxes)
            all_positions.append(g.levels.astype(np.float64))
            continue
        merges = g.boxes[g.num_initial:]                                 # [m - n, 4]
        all_boxes.append(merges)
        all_positions.append(np.arange(len(merges), 0, -1, dtype=np.float64))
        if (g.colour_space, g.k) not in segmented:
            segmented.add((g.colour_space, g.k))
            all_boxes.append(g.boxes[:g.num_initial])
            all_positions.append(np.full(g.num_initial, len(merges) + 1.0))
    positions = np.concatenate(all_positions)                            # [M]
    return np.concatenate(all_boxes), positions * rng.random(len(positions))


def selective_search(image, mode: str = "fast", seed: int = 0, *, max_side: int | None = None,
                     colour_spaces=None, ks=None, similarities=None, sigma: float | None = None,
                     min_size: int | None = None, ranking: str = "paper") -> torch.Tensor:
    """Selective Search object proposals (Uijlings et al. 2013), best-ranked first.

    image: `[H, W, 3]` uint8 RGB array or a PIL image.
    mode: "fast" (HSV + Lab, k in {50, 100}, similarities CTSF and TSF: 8 groupings), "quality" (HSV, Lab,
        rgI, H, I; k in {50, 100, 150, 300}; CTSF, TSF, F, S: 80 groupings) or "single" (HSV, k = 100, CTSF).
    seed: seeds the random factors of the ranking (Sec. 3.3); the set of boxes does not depend on it.
    max_side: if given and the image's longer side exceeds it, search a proportionally downscaled copy and map
        the boxes back (proposals are then coarser; the original code and OpenCV use the image as given).
    colour_spaces, ks, similarities, sigma, min_size: override the mode's settings, e.g. `similarities=("CT",)`;
        min_size (smallest initial region, pixels) defaults to each k, as in the authors' code.
    ranking: "paper" (default; large regions tend to come first) or "depth" (OpenCV's order, small regions
        tend to come first); see `ranking_values`. Only the order of the boxes depends on it.
    Returns an `[N, 4]` float32 tensor of xyxy boxes in pixels with continuous edges (x2, y2 exclusive).
    """
    rgb = _as_rgb(image)
    strategy = _resolve_strategy(mode, colour_spaces, ks, similarities, sigma, min_size)
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    height, width = rgb.shape[:2]
    factor = 1.0
    if max_side is not None:
        if int(max_side) != max_side or max_side < 1:
            raise ValueError(f"max_side must be a positive integer, got {max_side}")
        if max(height, width) > max_side:
            from PIL import Image

            factor = max_side / max(height, width)
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    boxes, values = ranking_values(hierarchies(rgb, strategy), np.random.default_rng(seed), ranking)  # [M, 4], [M]
    order = np.argsort(values, kind="stable")
    boxes = boxes[order]
    # Rank first, then drop the lower-ranked duplicates (Sec. 3.3): a box that several groupings propose gets
    # several draws at a good rank.
    _, first = np.unique(boxes, axis=0, return_index=True)  # first occurrence = best value
    boxes = boxes[np.sort(first)].astype(np.float64)
    if factor != 1.0:
        sx, sy = width / rgb.shape[1], height / rgb.shape[0]
        # Scaling is one-to-one, so the boxes stay distinct.
        boxes = np.minimum(boxes * np.array([sx, sy, sx, sy]), np.array([width, height, width, height]))
    return torch.from_numpy(boxes.astype(np.float32))
