"""Graph-based image segmentation, Felzenszwalb & Huttenlocher (2004), "Efficient Graph-Based Image Segmentation".

The image is an 8-connected grid graph whose edge weights are the colour distances between neighbouring pixels
of the Gaussian-smoothed image. Edges are visited once, in increasing weight; two components C1, C2 joined by
an edge of weight w are merged when (paper, Sec. 3.1, eq. 3-5)

    w <= MInt(C1, C2) = min(Int(C1) + k / |C1|, Int(C2) + k / |C2|)

where Int(C) is the largest weight in C's minimum spanning tree, which is simply the weight of the edge that
last merged into C, because edges arrive sorted (Kruskal). The k / |C| term lets small components merge more
easily; `k` (`scale`) sets the scale of observation. A last pass over the same sorted edges merges every
component smaller than `min_size` into its neighbour across the cheapest edge (the authors' code).

Colour: like the authors' released code, scikit-image and OpenCV, the weight is the Euclidean distance between
the pixels' colour vectors (one joint graph), not the paper's per-channel segmentations intersected.

The result is an "over-segmentation" into super-pixels; Selective Search starts from it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# scipy.ndimage's default: the Gaussian kernel reaches 4 sigma on each side.
_TRUNCATE = 4.0


def gaussian_kernel(sigma: float, order: int = 0) -> np.ndarray:
    """1-D Gaussian (order 0) or Gaussian first derivative (order 1) correlation weights, radius 4 sigma.

    The derivative weights are `x / sigma^2 * g(x)`, so correlating with them gives d/dx of the smoothed signal
    (positive where the signal increases), the same as scipy.ndimage.gaussian_filter1d(order=1).
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    if order == 0:
        return g
    if order == 1:
        return x / sigma ** 2 * g
    raise ValueError(f"order must be 0 or 1, got {order}")


def correlate_axis(image: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Correlate `image` with 1-D `weights` along `axis`, edges mirrored (d c b a | a b c d, scipy's "reflect")."""
    radius = len(weights) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="symmetric")
    n = image.shape[axis]
    window = [slice(None)] * image.ndim
    out = np.zeros_like(image)
    for i, w in enumerate(weights):
        window[axis] = slice(i, i + n)
        out += w * padded[tuple(window)]
    return out


def gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth the two spatial axes of an `[H, W, C]` float image; sigma = 0 returns it unchanged."""
    if sigma <= 0:
        return image
    g = gaussian_kernel(sigma).astype(image.dtype)
    return correlate_axis(correlate_axis(image, g, 0), g, 1)


def grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The 8-connected grid's edges as pixel-index pairs `(a [E], b [E])`, each pixel pair once.

    Four blocks, in this order: horizontal (y, x+1)-(y, x), vertical (y+1, x)-(y, x), diagonal (y+1, x+1)-(y, x),
    anti-diagonal (y, x+1)-(y+1, x); `edge_costs` yields the weights in the same order. The order only decides
    ties between equal weights; it is scikit-image's, so that the two agree pixel for pixel.
    """
    index = np.arange(height * width, dtype=np.int32).reshape(height, width)
    a = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel(), index[1:, 1:].ravel(), index[:-1, 1:].ravel()])
    b = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel(), index[:-1, :-1].ravel(),
                        index[1:, :-1].ravel()])
    return a, b


def edge_costs(image: np.ndarray) -> np.ndarray:
    """`[H, W, C]` smoothed image -> `[E]` Euclidean colour distances along the edges of `grid_edges`."""
    pairs = [(image[:, 1:], image[:, :-1]), (image[1:, :], image[:-1, :]),
             (image[1:, 1:], image[:-1, :-1]), (image[:-1, 1:], image[1:, :-1])]
    return np.concatenate([np.sqrt(((p - q) ** 2).sum(axis=-1)).ravel() for p, q in pairs])


@njit(cache=True)
def _find(parent, x):
    # Path halving: every visited node skips to its grandparent, keeping trees flat.
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True)
def _union(parent, size, ra, rb):
    # Union by size; returns the new root.
    if size[ra] < size[rb]:
        ra, rb = rb, ra
    parent[rb] = ra
    size[ra] += size[rb]
    return ra


@njit(cache=True)
def segment_sorted_edges(a, b, costs, num_pixels, k, min_size):
    """Felzenszwalb-Huttenlocher merging over edges `(a, b, costs)` already sorted by increasing cost.

    Returns `[num_pixels]` int64 labels 0..n-1, numbered in raster order of each segment's first pixel.
    """
    parent = np.arange(num_pixels, dtype=np.int32)
    size = np.ones(num_pixels, np.int32)
    internal = np.zeros(num_pixels, np.float64)  # Int(C): the largest MST weight inside each component
    for e in range(costs.shape[0]):
        ra = _find(parent, a[e])
        rb = _find(parent, b[e])
        if ra == rb:
            continue
        w = costs[e]
        if w <= internal[ra] + k / size[ra] and w <= internal[rb] + k / size[rb]:
            root = _union(parent, size, ra, rb)
            internal[root] = w  # edges arrive sorted, so w is the new maximum
    if min_size > 1:
        for e in range(costs.shape[0]):
            ra = _find(parent, a[e])
            rb = _find(parent, b[e])
            if ra != rb and (size[ra] < min_size or size[rb] < min_size):
                _union(parent, size, ra, rb)
    labels = np.empty(num_pixels, np.int64)
    label_of_root = np.full(num_pixels, -1, np.int64)
    count = 0
    for p in range(num_pixels):
        r = _find(parent, p)
        if label_of_root[r] < 0:
            label_of_root[r] = count
            count += 1
        labels[p] = label_of_root[r]
    return labels


def _as_float_image(image) -> np.ndarray:
    """Validate and convert like scikit-image's img_as_float: uint8 / 255, uint16 / 65535, bool -> 0/1."""
    if hasattr(image, "mode") and hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL image
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must have shape [H, W] or [H, W, C], got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float64) / 65535.0
    if image.dtype == bool:
        return image.astype(np.float64)
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("image has NaN or infinite values")
        return image.astype(np.float64)
    raise ValueError(f"image dtype must be uint8, uint16, bool or float, got {image.dtype}")


def sorted_graph(image: np.ndarray, sigma: float, quantise: bool = False):
    """Smooth, weigh the grid edges and sort them by weight: `(a [E], b [E], costs [E])`, contiguous.

    quantise: round the weights to 1/65535 of their range and counting-sort those 16-bit keys (stable, O(E),
        several times faster than sorting floats). The algorithm then runs exactly on weights perturbed by under
        0.01 grey levels; Selective Search uses it, `felzenszwalb` does not, to stay identical to scikit-image.
    """
    if quantise:
        smoothed = gaussian_smooth(image.astype(np.float32), sigma)
        return _quantised_sorted_edges(np.ascontiguousarray(smoothed))
    costs = edge_costs(gaussian_smooth(image, sigma))
    a, b = grid_edges(*image.shape[:2])
    order = np.argsort(costs)
    return a[order], b[order], costs[order]


@njit(cache=True)
def _distance(image, y1, x1, y2, x2):
    total = 0.0
    for c in range(image.shape[2]):
        d = image[y1, x1, c] - image[y2, x2, c]
        total += d * d
    return np.sqrt(total)


@njit(cache=True)
def _quantised_sorted_edges(image):
    """The edges of `grid_edges` (same order) weighted by `edge_costs`, counting-sorted on 16-bit keys."""
    height, width = image.shape[:2]
    num_edges = height * (width - 1) + (height - 1) * width + 2 * (height - 1) * (width - 1)
    a = np.empty(num_edges, np.int32)
    b = np.empty(num_edges, np.int32)
    cost = np.empty(num_edges, np.float32)
    e = 0
    for y in range(height):                       # horizontal
        for x in range(width - 1):
            a[e], b[e], cost[e] = y * width + x + 1, y * width + x, _distance(image, y, x + 1, y, x)
            e += 1
    for y in range(height - 1):                   # vertical
        for x in range(width):
            a[e], b[e], cost[e] = (y + 1) * width + x, y * width + x, _distance(image, y + 1, x, y, x)
            e += 1
    for y in range(height - 1):                   # diagonal
        for x in range(width - 1):
            a[e], b[e], cost[e] = (y + 1) * width + x + 1, y * width + x, _distance(image, y + 1, x + 1, y, x)
            e += 1
    for y in range(height - 1):                   # anti-diagonal
        for x in range(width - 1):
            a[e], b[e], cost[e] = y * width + x + 1, (y + 1) * width + x, _distance(image, y, x + 1, y + 1, x)
            e += 1
    top = 0.0
    for e in range(num_edges):
        top = max(top, cost[e])
    step = top / 65535.0 if top > 0 else 1.0
    keys = np.empty(num_edges, np.int32)
    slot = np.zeros(65537, np.int64)
    for e in range(num_edges):
        keys[e] = int(cost[e] / step + 0.5)
        slot[keys[e] + 1] += 1
    for k in range(1, 65537):
        slot[k] += slot[k - 1]
    sorted_a = np.empty(num_edges, np.int32)
    sorted_b = np.empty(num_edges, np.int32)
    sorted_cost = np.empty(num_edges, np.float64)
    for e in range(num_edges):
        pos = slot[keys[e]]
        slot[keys[e]] += 1
        sorted_a[pos], sorted_b[pos], sorted_cost[pos] = a[e], b[e], keys[e] * step
    return sorted_a, sorted_b, sorted_cost


def segment_image(image: np.ndarray, k: float, sigma: float, min_size: int, graph: tuple | None = None) -> np.ndarray:
    """`[H, W, C]` float image -> `[H, W]` int64 labels; `k` is in the image's own intensity units.

    `graph = sorted_graph(image, sigma)` may be passed in: it does not depend on k, which Selective Search
    exploits to segment one colour space at several k.
    """
    height, width = image.shape[:2]
    a, b, costs = graph if graph is not None else sorted_graph(image, sigma)
    labels = segment_sorted_edges(a, b, costs, height * width, float(k), int(min_size))
    return labels.reshape(height, width)


def felzenszwalb(image, scale: float = 1, sigma: float = 0.8, min_size: int = 20) -> np.ndarray:
    """Felzenszwalb & Huttenlocher (2004) segmentation, with scikit-image's signature and conventions.

    image: `[H, W]` or `[H, W, C]` (channels last) uint8, uint16, bool or float array, or a PIL image; integer
        images are scaled to [0, 1] and `scale` is divided by 255, so `scale` means the paper's `k` on 0..255
        intensities, as in scikit-image and the authors' code.
    scale: the threshold constant k; larger gives larger segments.
    sigma: standard deviation of the Gaussian pre-smoothing (0 disables it).
    min_size: components smaller than this are merged into a neighbour afterwards.
    Returns an `[H, W]` int64 label map, labels 0..n-1 in raster order of each segment's first pixel.
    """
    for name, value in (("scale", scale), ("sigma", sigma)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if min_size < 0 or int(min_size) != min_size:
        raise ValueError(f"min_size must be an integer >= 0, got {min_size}")
    pixels = _as_float_image(image)
    return segment_image(pixels, float(scale) / 255.0, float(sigma), int(min_size))
