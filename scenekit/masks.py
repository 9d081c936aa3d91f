"""Instance masks in COCO's run-length encoding (RLE), shared by the data readers and the metrics.

COCO stores a binary mask of an `h x w` image as run lengths over the mask flattened in **column-major** order
(down the first column, then the next), starting with a run of zeros (possibly of length 0). The "compressed"
form packs the counts into a string: each count (from the fourth on, as the difference to the count two places
before) is written as 5-bit groups, least significant first, with a continuation bit (0x20) and the sign carried
by the last group's 0x10 bit, each group offset by 48 to be a printable character. These functions produce the
exact strings pycocotools' `mask.encode` does, so files round-trip between the two.

Polygons are rasterised (`polygons_to_rle`), masks merged (`rle_merge`), boxed (`rle_to_bbox`) and compared
(`rle_iou`) exactly as pycocotools' C mask API does, so that COCO's segm metrics computed from them are
bit-identical to pycocotools'.
"""

from __future__ import annotations

import numba
import numpy as np


def rle_encode(mask: np.ndarray) -> dict:
    """Encode a binary `[H, W]` mask as a COCO RLE `{"size": [H, W], "counts": [int, ...]}` (uncompressed)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {tuple(mask.shape)}")
    height, width = mask.shape
    flat = (mask != 0).ravel(order="F").astype(np.int8)                   # [H*W], column-major as COCO
    if flat.size == 0:
        return {"size": [int(height), int(width)], "counts": [0]}
    change = np.flatnonzero(np.diff(flat)) + 1                             # where a run ends
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:                                                       # COCO always starts with a zero run
        counts = [0] + counts
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string or list of counts) to an `[H, W]` uint8 mask."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height * width} for size "
                         f"{height}x{width}")
    values = np.arange(len(counts)) % 2                                    # 0, 1, 0, 1, ... runs
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape((height, width), order="F")


def rle_area(rle: dict) -> int:
    """Number of foreground pixels: the sum of the odd-position runs."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    return int(np.asarray(counts, dtype=np.int64)[1::2].sum())


def counts_to_string(counts) -> str:
    """Pack run lengths into COCO's compressed RLE string (maskApi.c `rleToString`)."""
    out = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:                       # COCO's delta coding starts at the fourth count
            x -= counts[i - 2]
        more = True
        while more:
            group = x & 0x1F
            x >>= 5                     # arithmetic shift keeps the sign
            more = (x != -1) if (group & 0x10) else (x != 0)
            if more:
                group |= 0x20
            out.append(chr(group + 48))
    return "".join(out)


def string_to_counts(string: str | bytes) -> list[int]:
    """Unpack COCO's compressed RLE string into run lengths (maskApi.c `rleFrString`)."""
    if isinstance(string, bytes):
        string = string.decode("ascii")
    counts: list[int] = []
    position = 0
    while position < len(string):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(string):
                raise ValueError("truncated RLE string")
            group = ord(string[position]) - 48
            value |= (group & 0x1F) << (5 * shift)
            more = bool(group & 0x20)
            position += 1
            shift += 1
            if not more and (group & 0x10):
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def compress(rle: dict) -> dict:
    """Uncompressed RLE -> compressed (string counts), as pycocotools writes results."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return {"size": list(rle["size"]), "counts": counts if isinstance(counts, str) else counts.decode()}
    return {"size": list(rle["size"]), "counts": counts_to_string(counts)}


def decompress(rle: dict) -> dict:
    """Compressed RLE -> uncompressed (list of counts)."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = string_to_counts(counts)
    return {"size": list(rle["size"]), "counts": [int(c) for c in counts]}


# ------------------------------------------------------------------------------------------ polygons, merge, IoU
# The functions below reproduce pycocotools' C mask API (maskApi.c: rleFrPoly, rleMerge, rleToBbox, rleIou, bbIou)
# operation for operation, so that masks, areas and IoUs - and through them COCO's segm metrics - come out
# bit-identical. The kernels work on plain int64 run-length arrays; a "counts" array is always a valid RLE here:
# non-negative runs summing to h * w, starting with a (possibly empty) run of zeros.

_UINT32 = 0xFFFFFFFF


@numba.njit(cache=True)
def _polygon_counts(xy, height, width):
    """Rasterise one polygon `[x1, y1, x2, y2, ...]` to RLE counts exactly as maskApi.c `rleFrPoly` does.

    The boundary is traced on a 5x upsampled integer grid (Bresenham-like stepping along the longer axis); every
    crossing of a pixel-column centre becomes a boundary point, and the sorted column-major positions of those
    points are the run boundaries. A pixel is inside when its centre is.
    """
    scale = 5.0
    k = xy.shape[0] // 2
    if k == 0:
        out = np.empty(1, np.int64)
        out[0] = height * width
        return out
    x = np.empty(k + 1, np.int64)
    y = np.empty(k + 1, np.int64)
    for j in range(k):
        x[j] = int(scale * xy[2 * j] + 0.5)           # C's (int) cast truncates toward zero
        y[j] = int(scale * xy[2 * j + 1] + 0.5)
    x[k] = x[0]
    y[k] = y[0]
    m = 0
    for j in range(k):
        m += max(abs(x[j] - x[j + 1]), abs(y[j] - y[j + 1])) + 1
    u = np.empty(m, np.int64)
    v = np.empty(m, np.int64)
    m = 0
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx = abs(xe - xs)
        dy = abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe = xe, xs
            ys, ye = ye, ys
        if dx == 0 and dy == 0:                        # a repeated vertex: one point (C computes 0/0 here,
            u[m] = xs                                   # but that point's v is never read)
            v[m] = ys
            m += 1
        elif dx >= dy:
            s = (ye - ys) / dx
            for d in range(dx + 1):
                t = dx - d if flip else d
                u[m] = t + xs
                v[m] = int(ys + s * t + 0.5)
                m += 1
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v[m] = t + ys
                u[m] = int(xs + s * t + 0.5)
                m += 1
    # keep the points where the boundary crosses a column centre, downsampled back to pixels
    a = np.empty(m + 1, np.int64)
    n = 0
    for j in range(1, m):
        if u[j] != u[j - 1]:
            xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
            xd = (xd + 0.5) / scale - 0.5
            if np.floor(xd) != xd or xd < 0 or xd > width - 1:
                continue
            yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
            yd = (yd + 0.5) / scale - 0.5
            if yd < 0:
                yd = 0.0
            elif yd > height:
                yd = float(height)
            yd = np.ceil(yd)
            a[n] = (int(xd) * height + int(yd)) & _UINT32
            n += 1
    a[n] = height * width
    n += 1
    a = np.sort(a[:n])
    previous = 0
    for j in range(n):                                  # positions -> run lengths
        current = a[j]
        a[j] = (current - previous) & _UINT32
        previous = current
    b = np.empty(n, np.int64)                          # two toggles at one position cancel: fold zero runs
    j = 0
    mb = 0
    b[mb] = a[j]
    mb += 1
    j += 1
    while j < n:
        if a[j] > 0:
            b[mb] = a[j]
            mb += 1
            j += 1
        else:
            j += 1
            if j < n:
                b[mb - 1] += a[j]
                j += 1
    return b[:mb].copy()


@numba.njit(cache=True)
def _merge_two(ca_runs, cb_runs, intersect):
    """Union (or intersection) of two RLEs of the same size, as maskApi.c `rleMerge` walks them."""
    out = np.empty(len(ca_runs) + len(cb_runs) + 1, np.int64)
    ca = ca_runs[0]
    cb = cb_runs[0]
    v = False
    va = False
    vb = False
    m = 0
    a = 1
    b = 1
    cc = 0
    ct = 1
    while ct > 0:
        c = min(ca, cb)
        cc += c
        ct = 0
        ca -= c
        if ca == 0 and a < len(ca_runs):
            ca = ca_runs[a]
            a += 1
            va = not va
        ct += ca
        cb -= c
        if cb == 0 and b < len(cb_runs):
            cb = cb_runs[b]
            b += 1
            vb = not vb
        ct += cb
        vp = v
        v = (va and vb) if intersect else (va or vb)
        if v != vp or ct == 0:
            out[m] = cc
            m += 1
            cc = 0
    return out[:m].copy()


@numba.njit(cache=True)
def _rle_bbox(counts, start, m, height, width, out):
    """maskApi.c `rleToBbox` (with its uint32 arithmetic) for the runs counts[start:start + m] -> out [4] xywh."""
    m2 = (m // 2) * 2
    if m2 == 0:
        out[0] = 0.0
        out[1] = 0.0
        out[2] = 0.0
        out[3] = 0.0
        return
    xs = width
    ys = height
    xe = 0
    ye = 0
    cc = 0
    xp = 0
    for j in range(m2):
        cc = (cc + counts[start + j]) & _UINT32
        t = (cc - (j % 2)) & _UINT32
        yy = t % height
        xx = (t - yy) // height
        if j % 2 == 0:
            xp = xx
        elif xp < xx:                                   # a run wraps to the next column: full height
            ys = 0
            ye = height - 1
        xs = min(xs, xx)
        xe = max(xe, xx)
        ys = min(ys, yy)
        ye = max(ye, yy)
    out[0] = xs
    out[2] = (xe - xs + 1) & _UINT32
    out[1] = ys
    out[3] = (ye - ys + 1) & _UINT32


@numba.njit(cache=True)
def _box_iou_xywh(d, g, crowd):
    """maskApi.c `bbIou` for one pair of `[x, y, w, h]` boxes; a crowd gt divides by the detection's area."""
    ga = g[2] * g[3]
    da = d[2] * d[3]
    w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
    if w <= 0:
        return 0.0
    h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
    if h <= 0:
        return 0.0
    i = w * h
    u = da if crowd else da + ga - i
    return i / u


@numba.njit(cache=True)
def _rle_iou_pair(counts, d_start, d_len, g_start, g_len, crowd):
    """Intersection over union (over the detection's area for a crowd gt) of two same-size RLEs (rleIou)."""
    ca = counts[d_start]
    cb = counts[g_start]
    va = False
    vb = False
    a = 1
    b = 1
    inter = 0
    union = 0
    ct = 1
    while ct > 0:
        c = min(ca, cb)
        if va or vb:
            union += c
            if va and vb:
                inter += c
        ct = 0
        ca -= c
        if ca == 0 and a < d_len:
            ca = counts[d_start + a]
            a += 1
            va = not va
        ct += ca
        cb -= c
        if cb == 0 and b < g_len:
            cb = counts[g_start + b]
            b += 1
            vb = not vb
        ct += cb
    if inter == 0:
        union = 1
    elif crowd:
        union = 0
        for j in range(1, d_len, 2):
            union += counts[d_start + j]
    return inter / union


@numba.njit(cache=True)
def _rle_iou_pairs(counts, starts, lengths, heights, widths, boxes, dt_index, gt_index, gt_crowd, out):
    """IoU of the RLE pairs (dt_index[p], gt_index[p]) -> out[p]; gt_crowd[p] marks a crowd gt.

    As in maskApi.c, masks are compared only where their run-length bounding boxes overlap, and a size mismatch
    there gives -1.
    """
    for p in range(len(dt_index)):
        d = dt_index[p]
        g = gt_index[p]
        o = _box_iou_xywh(boxes[d], boxes[g], gt_crowd[p])
        if o > 0:
            if heights[d] != heights[g] or widths[d] != widths[g]:
                o = -1.0
            else:
                o = _rle_iou_pair(counts, starts[d], lengths[d], starts[g], lengths[g], gt_crowd[p])
        out[p] = o


@numba.njit(cache=True)
def _string_counts(chars):
    """maskApi.c `rleFrString` on the bytes of a compressed RLE string -> int64 counts (may be invalid)."""
    counts = np.empty(len(chars), np.int64)
    m = 0
    p = 0
    while p < len(chars):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(chars):
                return counts[:0].copy(), False
            c = np.int64(chars[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            p += 1
            k += 1
            if not more and (c & 0x10) != 0:
                x |= np.int64(-1) << (5 * k)
        if m > 2:
            x += counts[m - 2]
        counts[m] = x
        m += 1
    return counts[:m].copy(), True


class PackedRLEs:
    """Many RLEs in flat arrays, the form the IoU kernels read: runs `counts[starts[i]:starts[i] + lengths[i]]`
    of an image `heights[i] x widths[i]`, plus each one's run-length bounding box `boxes[i]` (xywh)."""

    def __init__(self, runs: list, heights, widths):
        self.lengths = np.array([len(r) for r in runs], dtype=np.int64)
        self.starts = np.zeros(len(runs), dtype=np.int64)
        if len(runs):
            np.cumsum(self.lengths[:-1], out=self.starts[1:])
        self.counts = np.concatenate(runs).astype(np.int64) if len(runs) else np.zeros(0, np.int64)
        self.heights = np.asarray(heights, dtype=np.int64).reshape(-1)
        self.widths = np.asarray(widths, dtype=np.int64).reshape(-1)
        self.boxes = _packed_boxes(self.counts, self.starts, self.lengths, self.heights, self.widths)

    def __len__(self) -> int:
        return len(self.lengths)

    def areas(self) -> np.ndarray:
        """Foreground pixel count of each RLE (the odd runs), as int64."""
        position = np.arange(len(self.counts)) - np.repeat(self.starts, self.lengths)   # index inside its RLE
        odd = position % 2 == 1
        owner = np.repeat(np.arange(len(self)), self.lengths)
        return np.bincount(owner[odd], weights=self.counts[odd], minlength=len(self)).astype(np.int64)


@numba.njit(cache=True)
def _packed_boxes(counts, starts, lengths, heights, widths):
    boxes = np.zeros((len(starts), 4), np.float64)
    for i in range(len(starts)):
        _rle_bbox(counts, starts[i], lengths[i], heights[i], widths[i], boxes[i])
    return boxes


def rle_runs(rle: dict) -> np.ndarray:
    """The run lengths of a COCO RLE (compressed or not) as an int64 array, checked to cover the image exactly."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError("an RLE must be a dict with 'size' [h, w] and 'counts'")
    height, width = _rle_size(rle)
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        runs, ok = _string_counts(np.frombuffer(raw, dtype=np.uint8))
        if not ok:
            raise ValueError("truncated RLE string")
    else:
        runs = np.asarray(counts)
        if runs.ndim != 1 or (runs.size and runs.dtype.kind not in "iu"):
            raise ValueError("RLE counts must be a list of integers")
        runs = runs.astype(np.int64)
    if runs.size == 0:
        raise ValueError("RLE counts are empty")
    if (runs < 0).any():
        raise ValueError("RLE counts contain a negative run")
    if int(runs.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {height * width} for size "
                         f"{height}x{width}")
    return runs


def _rle_size(rle: dict) -> tuple[int, int]:
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"RLE size must be [height, width] of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def polygon_runs(polygons, height: int, width: int) -> np.ndarray:
    """Run lengths of the union of polygons (pycocotools `frPyObjects` then `merge`), as an int64 array."""
    if not isinstance(polygons, (list, tuple)):
        raise ValueError("polygons must be a list of [x1, y1, x2, y2, ...] lists")
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if len(polygons) == 0:                 # pycocotools fails on []; an empty mask is the only sensible reading
        return np.array([height * width], dtype=np.int64)
    merged = None
    for polygon in polygons:
        xy = np.asarray(polygon, dtype=np.float64)
        if xy.ndim != 1:
            raise ValueError("each polygon must be a flat list [x1, y1, x2, y2, ...]")
        if not np.isfinite(xy).all():
            raise ValueError("polygon coordinates must be finite")
        runs = _polygon_counts(xy, height, width)
        merged = runs if merged is None else _merge_two(merged, runs, False)
    return merged


def polygons_to_rle(polygons, height: int, width: int) -> dict:
    """Rasterise COCO polygons to a compressed RLE, exactly as pycocotools' `frPyObjects` + `merge` do.

    Each polygon is `[x1, y1, x2, y2, ...]` in pixel coordinates; several polygons (the parts of one object) are
    merged into one mask. Matches pycocotools' counts string byte for byte, including its 5x-upsampled boundary
    tracing. One difference: pycocotools rejects `[]` and a first polygon of exactly 4 numbers (it takes that for
    a box and fails); here `[]` is an empty mask and a 4-number polygon is a 2-vertex (degenerate) polygon.
    """
    runs = polygon_runs(polygons, height, width)
    return {"size": [int(height), int(width)], "counts": counts_to_string(runs.tolist())}


def annotation_runs(segmentation, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """Run lengths and size `(runs, h, w)` of a COCO segmentation (polygons or RLE), like `COCO.annToRLE`.

    Polygons are rasterised at the image size `height x width`; an RLE keeps its own `size`, as pycocotools does.
    """
    if isinstance(segmentation, dict):
        h, w = _rle_size(segmentation) if "size" in segmentation else (0, 0)
        return rle_runs(segmentation), h, w
    return polygon_runs(segmentation, height, width), int(height), int(width)


def annotation_to_rle(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) -> compressed RLE (`COCO.annToRLE`)."""
    runs, h, w = annotation_runs(segmentation, height, width)
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], (str, bytes)):
        return compress(segmentation)
    return {"size": [h, w], "counts": counts_to_string(runs.tolist())}


def rle_merge(rles: list, intersect: bool = False) -> dict:
    """Union (or intersection) of same-size RLEs -> compressed RLE, as pycocotools `mask.merge`."""
    if len(rles) == 0:
        raise ValueError("rle_merge needs at least one RLE")
    size = _rle_size(rles[0])
    merged = rle_runs(rles[0])
    for rle in rles[1:]:
        if _rle_size(rle) != size:
            raise ValueError(f"cannot merge RLEs of sizes {list(size)} and {list(_rle_size(rle))}")
        merged = _merge_two(merged, rle_runs(rle), bool(intersect))
    return {"size": list(size), "counts": counts_to_string(merged.tolist())}


def rle_to_bbox(rle: dict) -> np.ndarray:
    """Bounding box `[x, y, w, h]` of an RLE mask, as pycocotools `mask.toBbox` computes it."""
    packed = PackedRLEs([rle_runs(rle)], [_rle_size(rle)[0]], [_rle_size(rle)[1]])
    return packed.boxes[0].copy()


def rle_iou(dt_rles: list, gt_rles: list, iscrowd) -> np.ndarray:
    """`[D, G]` mask IoU between detection and ground-truth RLEs, as pycocotools `mask.iou`.

    For a crowd ground truth (`iscrowd[g]` true) the overlap is divided by the detection's area instead of the
    union, so a detection inside a crowd region scores 1 (Lin et al. 2014, COCO evaluation). Masks of different
    sizes that overlap by bounding box give -1, as in pycocotools.
    """
    iscrowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    if len(iscrowd) != len(gt_rles):
        raise ValueError(f"iscrowd has {len(iscrowd)} entries for {len(gt_rles)} ground-truth RLEs")
    num_dt, num_gt = len(dt_rles), len(gt_rles)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt), dtype=np.float64)
    rles = list(dt_rles) + list(gt_rles)
    sizes = np.array([_rle_size(r) for r in rles], dtype=np.int64)
    packed = PackedRLEs([rle_runs(r) for r in rles], sizes[:, 0], sizes[:, 1])
    dt_index = np.repeat(np.arange(num_dt), num_gt)                      # [D*G], dt-major
    gt_index = np.tile(np.arange(num_gt), num_dt) + num_dt
    out = np.empty(num_dt * num_gt, dtype=np.float64)
    _rle_iou_pairs(packed.counts, packed.starts, packed.lengths, packed.heights, packed.widths, packed.boxes,
                   dt_index, gt_index, np.tile(iscrowd, num_dt), out)
    return out.reshape(num_dt, num_gt)
