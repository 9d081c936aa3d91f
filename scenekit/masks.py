"""Instance masks in COCO's run-length encoding (RLE), shared by the data readers and the metrics.

COCO stores a binary mask of an `h x w` image as run lengths over the mask flattened in **column-major** order
(down the first column, then the next), starting with a run of zeros (possibly of length 0). The "compressed"
form packs the counts into a string: each count (from the fourth on, as the difference to the count two places
before) is written as 5-bit groups, least significant first, with a continuation bit (0x20) and the sign carried
by the last group's 0x10 bit, each group offset by 48 to be a printable character. These functions produce the
exact strings pycocotools' `mask.encode` does, so files round-trip between the two.
"""

from __future__ import annotations

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
