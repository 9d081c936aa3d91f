"""COCO detection and instance-segmentation evaluation: AP / AR (bbox and segm) and precision-recall curves
(Lin et al. 2014, "Microsoft COCO: Common Objects in Context"; the evaluation of cocodataset.org).

`coco_evaluate` returns the 12 summary numbers pycocotools' `COCOeval.summarize()` prints - AP averaged over
IoU 0.50:0.05:0.95, AP50, AP75, AP for small/medium/large objects, AR with 1/10/100 detections per image and
AR for small/medium/large - and equals pycocotools to the last bit, because it repeats its decisions exactly:

- per (image, category) the detections are sorted by score (stable, so ties keep file order) and only the 100
  best are kept; gts are ordered non-ignored first;
- a gt is *ignored* if it is a crowd region (`iscrowd`, which overrides any `ignore` field, as in pycocotools)
  or its `area` is outside the area range; each detection in score order takes the unmatched gt of highest IoU
  >= the threshold, preferring non-ignored gts; crowd gts can absorb any number of detections and their IoU
  is intersection over the *detection's* area. Detections matched to ignored gts, and unmatched ones outside
  the area range, are ignored (neither TP nor FP);
- per category, the detections of all images (each image's best `maxDets`) are sorted by score (stable
  mergesort), precision is made monotone (the envelope: p(r) = max over r' >= r), and sampled at the 101
  recall thresholds 0:0.01:1 with `searchsorted(side='left')`; AP is the mean over thresholds, categories and
  IoUs of the categories that have gts.
Also as in pycocotools (loadRes): if the first result has a `bbox`, every result's area (used for the area
ranges) is its box area - even for segm - and a result without a segmentation is its box as a polygon; if it
has none, areas and boxes come from the masks. A gt whose annotation `id` is 0 cannot count a match
(pycocotools stores matches as gt ids, 0 meaning "unmatched"), so a detection on it is a false positive; this
quirk is kept for fidelity, with a warning.

How it is fast: JSON is parsed by orjson when installed (else the standard library) with the cyclic garbage
collector paused, and checked by columns (`reading`); detections and gts are grouped by (image, category) with
numpy sorts; the IoUs of all (detection, gt) pairs are one vectorised expression; the greedy matching steps
through the detections by rank, the k-th detection of every group (and every area range and IoU threshold) at
once; the curves of a category come from cumulative sums, one per (area range, maxDets, IoU threshold) column.
Plain numpy throughout, so the command does not pay numba's import and cache loading (only segm's mask IoUs use
the numba kernels of `scenekit.masks`). `benchmarks/metrics.py` measures it against pycocotools and
faster-coco-eval, in process and as whole commands.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from scenekit.errors import DataError
from scenekit.metrics.detection.reading import GroundTruth, Results, gc_paused, load_ground_truth, load_results

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Built exactly as pycocotools' Params does (linspace, not arange: arange drifts past the end points).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)     # [10]
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)  # [101]
MAX_DETS = (1, 10, 100)
AREA_RANGES = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
               "large": (96 ** 2, 1e5 ** 2)}
IOU_TYPES = ("bbox", "segm")


# ======================================================================================== the vectorised steps
def pair_indices(d_start, d_count, g_start, g_count):
    """All (detection, gt) index pairs of each group, detection-major: group k's pairs start at offset[k]."""
    sizes = d_count * g_count
    offset = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offset[1:])
    group = np.repeat(np.arange(len(sizes)), sizes)                    # [P] the group of each pair
    local = np.arange(offset[-1]) - offset[group]
    per_detection = g_count[group]
    return offset, d_start[group] + local // per_detection, g_start[group] + local % per_detection


def _box_iou_pairs(dt_boxes, gt_boxes, gt_crowd):
    """maskApi.c `bbIou` for each pair of `[x, y, w, h]` boxes (rows of `dt_boxes` and `gt_boxes`): intersection
    over union, over the detection's area for a crowd gt, 0 without overlap. The same operations in the same
    order as the C code, so the same doubles."""
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da = dw * dh
    union = np.where(gt_crowd, da, da + gw * gh - inter)
    overlapping = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping, inter / np.where(overlapping, union, 1.0), 0.0)


def _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt_area, gt_crowd, gt_id,
           area_lo, area_hi, iou_thresholds):
    """COCOeval.evaluateImg for every group, area range and IoU threshold: codes[detection, a, t] is 1 for a true
    positive, 0 for a false positive, 2 for an ignored detection.

    Inside a group the detections go in score order, each taking the gt of highest IoU >= the threshold among
    those not yet taken (crowd gts are never used up), a regular gt before any ignored one, the later of equal
    IoUs. A detection matched to an ignored gt is ignored, so is an unmatched one outside the area range, and
    one matched to a gt of id 0 counts as unmatched (pycocotools stores a match as the gt's id, 0 meaning none).
    """
    thresholds = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)             # [T]
    outside = (dt_area[:, None] < area_lo) | (dt_area[:, None] > area_hi)                  # [D, A]
    unmatched = np.where(outside, 2, 0).astype(np.int8)                                      # [D, A]
    codes = np.empty((len(dt_area), len(area_lo), len(thresholds)), np.int8)                  # [D, A, T]
    codes[...] = unmatched[:, :, None]
    busy = (d_count > 0) & (g_count > 0)
    gt_range = (area_lo, area_hi)
    _match_single_gt(np.flatnonzero(busy & (g_count == 1)), offset, d_start, d_count, g_start, ious, gt_area,
                     gt_crowd, gt_id, gt_range, thresholds, unmatched, codes)
    several = np.flatnonzero(busy & (g_count > 1))
    width = np.ceil(np.log2(g_count[several])).astype(np.int64)                              # 2**width gt slots
    for bucket in np.unique(width).tolist():
        _match_stepwise(several[width == bucket], 1 << bucket, offset, d_start, d_count, g_start, g_count, ious,
                        gt_area, gt_crowd, gt_id, gt_range, thresholds, unmatched, codes)
    return codes


def _match_single_gt(groups, offset, d_start, d_count, g_start, ious, gt_area, gt_crowd, gt_id, gt_range,
                     thresholds, unmatched, codes) -> None:
    """`_match` for groups of one gt: at each threshold the first detection reaching it takes the gt (every one
    reaching it, for a crowd gt)."""
    if len(groups) == 0:
        return
    num_d = d_count[groups]
    first = np.cumsum(num_d) - num_d                        # where each group starts among the N detections
    within = np.arange(num_d.sum()) - np.repeat(first, num_d)                              # [N] rank in group
    detections = np.repeat(d_start[groups], num_d) + within
    gt = np.repeat(g_start[groups], num_d)                                                # [N] its gt's row
    crowd = gt_crowd[gt][:, None]
    reaches = ious[np.repeat(offset[groups], num_d) + within][:, None] >= thresholds       # [N, T]
    so_far = np.cumsum(reaches, axis=0)                     # running counts over all groups, less each group's
    takes = reaches & ((so_far - np.repeat((so_far - reaches)[first], num_d, axis=0) == 1) | crowd)   # start
    area = gt_area[gt][:, None]
    ignored = crowd | (area < gt_range[0]) | (area > gt_range[1])                        # [N, A]
    code = np.where(ignored, 2, np.where((gt_id[gt] != 0)[:, None], 1, unmatched[detections]))     # [N, A]
    some = np.flatnonzero(takes.any(axis=1))                # most detections take no gt at any threshold
    codes[detections[some]] = np.where(takes[some][:, None, :], code[some][:, :, None], codes[detections[some]])


def _last_best(ious, allowed):
    """Per (group, area range, IoU threshold): the last slot of greatest IoU among the `allowed` ones (the gt a
    pycocotools scan keeps: an equal IoU later in the order replaces the earlier), and whether there is one.

    ious [G, S]; allowed [G, S, A, T] -> slot [G, A, T], found [G, A, T].
    """
    values = np.where(allowed, ious[:, :, None, None], -np.inf)
    best = values.max(axis=1, keepdims=True)
    at_best = allowed & (values == best)
    slots = ious.shape[1]
    return slots - 1 - np.argmax(at_best[:, ::-1], axis=1), allowed.any(axis=1)


def _match_stepwise(groups, slots, offset, d_start, d_count, g_start, g_count, ious, gt_area, gt_crowd, gt_id,
                    gt_range, thresholds, unmatched, codes) -> None:
    """`_match` for groups of up to `slots` gts. Sequential within a group but independent across groups: step
    k handles the k-th detection of every group at once (groups sorted by their number of detections, so those
    still going are a prefix), the gts of a group padded to `slots`."""
    groups = groups[np.argsort(-d_count[groups], kind="stable")]
    num_d, num_g = d_count[groups], g_count[groups]
    slot = np.arange(slots)
    real = slot < num_g[:, None]                                                             # [G, S]
    clamped = np.minimum(slot, num_g[:, None] - 1)
    rows = g_start[groups][:, None] + clamped                                                # [G, S] gt rows
    area = gt_area[rows][:, :, None]
    crowd = gt_crowd[rows] & real
    ignored = crowd[:, :, None] | (area < gt_range[0]) | (area > gt_range[1])               # [G, S, A]
    regular_slot = (real[:, :, None] & ~ignored)[..., None]                                  # [G, S, A, 1]
    ignored_slot = (real[:, :, None] & ignored)[..., None]
    countable = gt_id[rows] != 0
    num_areas = ignored.shape[2]
    taken = np.zeros((len(groups), slots, num_areas, len(thresholds)), bool)
    area_index = np.arange(num_areas)[None, :, None]
    for k in range(int(num_d[0]) if len(groups) else 0):
        going = int(np.count_nonzero(num_d > k))
        pair_rows = (offset[groups[:going]] + k * num_g[:going])[:, None] + clamped[:going]
        iou = ious[pair_rows]                                                                # [G', S]
        free = (iou[:, :, None, None] >= thresholds) & ~taken[:going]                       # [G', S, A, T]
        regular, found_regular = _last_best(iou, free & regular_slot[:going])
        other, found_other = _last_best(iou, free & ignored_slot[:going])
        slot_of = np.where(found_regular, regular, other)                                   # [G', A, T]
        matched = found_regular | found_other
        group_index = np.arange(going)[:, None, None]
        detections = d_start[groups[:going]] + k
        code = np.where(ignored[group_index, slot_of, area_index], 2,
                        np.where(countable[group_index, slot_of], 1, unmatched[detections][:, :, None]))
        codes[detections] = np.where(matched, code, codes[detections])
        g, a, t = np.nonzero(matched & ~crowd[group_index, slot_of])
        taken[g, slot_of[g, a, t], a, t] = True


# ======================================================================================================== COCO
@dataclass
class CocoEvaluation:
    """Everything COCOeval.accumulate() computes, plus the 12 summary stats.

    precision[t, r, k, a, m]: interpolated precision at IoU threshold t, recall threshold r, category k, area
    range a, max detections m (-1 where category k has no gt in that setting); recall[t, k, a, m] likewise;
    scores: the detection score at which each precision sample is reached.
    """

    stats: dict[str, float]
    precision: np.ndarray            # [T, R, K, A, M]
    recall: np.ndarray               # [T, K, A, M]
    scores: np.ndarray               # [T, R, K, A, M]
    category_ids: np.ndarray         # [K]
    image_ids: np.ndarray            # [I]
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())
    recall_thresholds: np.ndarray = field(default_factory=lambda: RECALL_THRESHOLDS.copy())
    area_names: tuple = tuple(AREA_RANGES)
    max_dets: tuple = MAX_DETS

    def category_ap(self, iou_threshold: float | None = None, area: str = "all", max_dets: int = 100) -> dict:
        """Per-category AP (mean over recall thresholds and IoUs, or at one IoU); NaN for absent categories."""
        s = self.precision
        if iou_threshold is not None:
            s = s[np.where(iou_threshold == self.iou_thresholds)[0]]
        s = s[:, :, :, self.area_names.index(area), self.max_dets.index(max_dets)]     # [T', R, K]
        out = {}
        for k, category in enumerate(self.category_ids.tolist()):
            values = s[:, :, k]
            out[category] = float(np.mean(values[values > -1])) if (values > -1).any() else float("nan")
        return out


@dataclass
class _Matched:
    """Detections sorted by (image, category, score) and cut to maxDets[-1] per group, with their match codes."""

    category_ids: np.ndarray         # [K]
    image_ids: np.ndarray            # [I]
    score: np.ndarray                # [D]
    rank: np.ndarray                 # [D] position within its (image, category) by score
    by_score: np.ndarray             # [D] detection indices by category, then score (ties: image order)
    category_start: np.ndarray       # [K + 1] category k is by_score[category_start[k]:category_start[k+1]]
    codes: np.ndarray                # [D, A, T] int8: 1 TP, 0 FP, 2 ignored
    num_gt: np.ndarray               # [K, A] non-ignored gts


def _select(ids, chosen):
    return ids if chosen is None else np.unique(np.asarray(list(chosen), dtype=np.int64))


def _match_all(gt: GroundTruth, res: Results, iou_type: str, img_ids, cat_ids, iou_thresholds,
               area_ranges, max_det: int) -> _Matched:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    images = _select(gt.image_ids, img_ids)
    categories = _select(gt.category_ids, cat_ids)
    num_categories = len(categories)
    area_lo = np.array([r[0] for r in area_ranges], np.float64)
    area_hi = np.array([r[1] for r in area_ranges], np.float64)

    # ground truth of the selected images and categories, grouped by (image, category), file order inside
    keep = np.isin(gt.ann_image, images) & np.isin(gt.ann_category, categories)
    g_rows = np.flatnonzero(keep)
    g_key = (np.searchsorted(images, gt.ann_image[g_rows]) * num_categories
             + np.searchsorted(categories, gt.ann_category[g_rows]))
    order = np.argsort(g_key, kind="stable")
    g_rows, g_key = g_rows[order], g_key[order]
    if (gt.ann_id[g_rows] == 0).any():
        warnings.warn("ground truth has an annotation with id 0: as in pycocotools, a detection matched to it "
                      "counts as a false positive; number annotations from 1", stacklevel=3)

    # detections likewise, by score inside each group (stable: ties keep file order), the best max_det kept.
    # One float sort serves twice: by score, then group, then file order; re-sorted by group (stable, by radix)
    # that is the group order, and it is the order COCOeval.accumulate wants (see below).
    keep = np.isin(res.image_id, images) & np.isin(res.category_id, categories)
    d_rows = np.flatnonzero(keep)
    d_key = (np.searchsorted(images, res.image_id[d_rows]) * num_categories
             + np.searchsorted(categories, res.category_id[d_rows]))
    by_key = np.argsort(d_key, kind="stable")               # quick: result files are usually grouped by image
    by_score = by_key[np.argsort(-res.score[d_rows][by_key], kind="stable")]
    order = by_score[_radix_argsort(d_key[by_score])]                # by group, then score, then file order
    d_rows, d_key = d_rows[order], d_key[order]
    group_start = _run_starts(d_key)
    group_end = np.r_[group_start[1:], len(d_key)].astype(np.int64)
    rank = np.arange(len(d_key)) - np.repeat(group_start, group_end - group_start)
    cut = rank < max_det
    kept, place = np.empty(len(order), bool), np.empty(len(order), np.int64)
    kept[order], place[order] = cut, np.cumsum(cut) - 1           # by kept detection: its place after the cut
    by_score = place[by_score[kept[by_score]]]
    d_rows, d_key, rank = d_rows[cut], d_key[cut], rank[cut]

    # groups: every (image, category) with a detection or a gt
    keys = np.sort(np.concatenate([_sorted_unique(d_key), _sorted_unique(g_key)]))
    keys = _sorted_unique(keys)
    d_start = np.searchsorted(d_key, keys, "left")
    d_count = np.searchsorted(d_key, keys, "right") - d_start
    g_start = np.searchsorted(g_key, keys, "left")
    g_count = np.searchsorted(g_key, keys, "right") - g_start
    offset, pair_dt, pair_gt = pair_indices(d_start, d_count, g_start, g_count)

    gt_crowd = gt.iscrowd[g_rows]
    dt_mask_list, dt_masks = None, None
    if iou_type == "segm" or not res.box_mode:
        dt_mask_list = [_result_mask(res, gt, row) for row in d_rows.tolist()]
        dt_masks = _pack(dt_mask_list)
    if iou_type == "bbox":                                              # [sum over groups of D_k * G_k]
        dt_boxes = res.boxes[d_rows]
        missing = np.isnan(dt_boxes[:, 0])     # segmentation-only results: the box of the mask (loadRes)
        if missing.any():
            dt_boxes[missing] = dt_masks.boxes[missing]
        ious = _box_iou_pairs(dt_boxes[pair_dt], gt.boxes[g_rows][pair_gt], gt_crowd[pair_gt])
    else:
        from scenekit import masks

        packed = _pack(dt_mask_list + [_gt_mask(gt, row) for row in g_rows.tolist()])
        ious = np.empty(len(pair_dt), np.float64)
        masks._rle_iou_pairs(packed.counts, packed.starts, packed.lengths, packed.heights, packed.widths,
                             packed.boxes, pair_dt, pair_gt + len(d_rows), gt_crowd[pair_gt], ious)

    # detection areas as loadRes sets them: box area if the first result has a box, else the mask area
    if res.box_mode:
        dt_area = res.boxes[d_rows, 2] * res.boxes[d_rows, 3]
    else:
        dt_area = dt_masks.areas().astype(np.float64)
    codes = _match(offset, d_start, d_count, g_start, g_count, ious, dt_area, gt.areas[g_rows], gt_crowd,
                   gt.ann_id[g_rows], area_lo, area_hi, iou_thresholds)

    # non-ignored gts per (category, area range)
    g_category = g_key % num_categories if num_categories else g_key
    num_gt = np.zeros((len(categories), len(area_ranges)), np.int64)
    for a in range(len(area_ranges)):
        regular = ~gt_crowd & (gt.areas[g_rows] >= area_lo[a]) & (gt.areas[g_rows] <= area_hi[a])
        num_gt[:, a] = np.bincount(g_category[regular], minlength=len(categories))
    # COCOeval.accumulate sorts each category's detections, concatenated in image order, by score with a
    # stable mergesort: by (category, score, image, rank). `by_score` is by (score, image, category, rank)
    # already (group keys are image-major; in a group, file order is rank order among equal scores), so one
    # stable sort by category gives every category's order at once; for maxDets 1 and 10 it is the subsequence.
    score = res.score[d_rows]
    d_category = d_key % num_categories if num_categories else d_key
    by_score = by_score[_radix_argsort(d_category[by_score])]
    category_start = np.searchsorted(d_category[by_score], np.arange(len(categories) + 1))
    return _Matched(categories, images, score, rank, by_score, category_start, codes, num_gt)


def _radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers, 16 bits at a time from the lowest (numpy sorts 16-bit
    integers by radix: a few linear passes instead of a comparison sort)."""
    order = np.arange(len(keys))
    top, shift = int(keys.max()) if len(keys) else 0, 0
    while True:
        order = order[np.argsort(((keys[order] >> shift) & 0xFFFF).astype(np.uint16), kind="stable")]
        shift += 16
        if top >> shift == 0:
            return order


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _sorted_unique(sorted_keys: np.ndarray) -> np.ndarray:
    return sorted_keys[_run_starts(sorted_keys)]


def _pack(mask_list):
    from scenekit import masks

    return masks.PackedRLEs([m[0] for m in mask_list], [m[1] for m in mask_list], [m[2] for m in mask_list])


def _result_mask(res: Results, gt: GroundTruth, row: int):
    """(runs, height, width) of one result's mask, as COCO.annToRLE reads it (the box polygon if it has none)."""
    record = res.records[row]
    image = np.searchsorted(gt.image_ids, res.image_id[row])
    height, width = int(gt.heights[image]), int(gt.widths[image])
    segmentation = record.get("segmentation")
    if segmentation is None:
        x, y, w, h = record["bbox"]
        x2, y2 = x + w, y + h
        segmentation = [[x, y, x, y2, x2, y2, x2, y]]
    from scenekit import masks

    try:
        return masks.annotation_runs(segmentation, height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=res.source, record=f"record {row}", field="segmentation") from None


def _gt_mask(gt: GroundTruth, row: int):
    image = np.searchsorted(gt.image_ids, gt.ann_image[row])
    height, width = int(gt.heights[image]), int(gt.widths[image])
    from scenekit import masks

    try:
        return masks.annotation_runs(gt.segmentations[row], height, width)
    except (ValueError, TypeError) as error:
        raise DataError(str(error), file=gt.source, record=f"annotation {row} (id {gt.ann_id[row]})",
                        field="segmentation") from None


def _ranked(matched: _Matched, k: int, max_det: int) -> np.ndarray:
    """Detections of category k among each image's best max_det, in COCOeval.accumulate's score order."""
    chosen = matched.by_score[matched.category_start[k]:matched.category_start[k + 1]]
    return chosen[matched.rank[chosen] < max_det]


def _accumulate(matched: _Matched, iou_thresholds, max_dets):
    """COCOeval.accumulate: precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M].

    pycocotools walks each (category, area range, maxDets, IoU threshold) curve over the detections in score
    order: recall TP / #gt, precision TP / (TP + FP + eps) (ignored detections count as neither), made monotone
    from the right, sampled where recall first reaches each of the 101 thresholds (searchsorted side='left';
    0 where never reached). Recall only moves at a TP, and precision only rises at one, so all of that is read
    off the TPs: recall first reaches r at the q-th TP, q the least count whose quotient q / #gt is >= r (the
    float pycocotools compares), and the envelope there is the largest precision at this or a later TP. Per
    category and maxDets, every (area range, IoU threshold) column is done at once. A category without gt in
    an area range stays -1.
    """
    T, R = len(iou_thresholds), len(RECALL_THRESHOLDS)
    K, A, M = len(matched.category_ids), matched.codes.shape[1], len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    order = matched.by_score
    rank = matched.rank[order]
    chosen = [np.flatnonzero(rank < max_det) for max_det in max_dets]   # each maxDets' detections, score order
    positions = [order[c] for c in chosen]
    starts = [np.searchsorted(c, matched.category_start) for c in chosen]
    by_detection = matched.codes.reshape(len(matched.codes), A * T)                        # [D, A * T]
    eps = np.spacing(1)
    for k in range(K):
        areas = np.flatnonzero(matched.num_gt[k] > 0)
        if len(areas) == 0:
            continue
        positives = matched.num_gt[k, areas]                                                # [A']
        columns = (areas[:, None] * T + np.arange(T)).ravel()                             # [C] (a, t) pairs
        needed = np.stack([np.searchsorted(np.arange(g + 1) / g, RECALL_THRESHOLDS, side="left")
                           for g in positives.tolist()])                                     # [A', R]
        needed = np.repeat(needed, T, axis=0)                                               # [C, R]
        shape = (len(areas), T, R)
        for m in range(M):
            rows = positions[m][starts[m][k]:starts[m][k + 1]]                              # [n] in score order
            if len(rows) == 0:
                precision[:, :, k, areas, m] = 0.0
                scores[:, :, k, areas, m] = 0.0
                recall[:, k, areas, m] = 0.0
                continue
            n = len(rows)
            codes = by_detection[rows].T                                # rows gathered whole: 40 bytes each
            codes = np.ascontiguousarray(codes if len(columns) == A * T else codes[columns])   # [C, n]
            counted = np.cumsum(codes != 2, axis=1, dtype=np.int32)                          # TP + FP so far
            tp_column, tp_row = np.divmod(np.flatnonzero(codes == 1), n)  # every TP, by column then row
            num_tp = np.bincount(tp_column, minlength=len(columns))                          # [C]
            first_tp = np.cumsum(num_tp) - num_tp
            count = np.arange(1, len(tp_column) + 1) - first_tp[tp_column]                 # q of each TP
            at_tp = np.full((len(columns), max(int(num_tp.max()), 1)), -np.inf)              # [C, Q] precision
            at_tp[tp_column, count - 1] = count / (counted[tp_column, tp_row] + eps)
            envelope = np.maximum.accumulate(at_tp[:, ::-1], axis=1)[:, ::-1]
            recall[:, k, areas, m] = (num_tp.reshape(len(areas), T) / positives[:, None]).T
            # sample r is the needed[r]-th TP (the first detection for needed 0), if there are that many
            q = needed
            reached = q <= num_tp[:, None]
            which = np.minimum(np.maximum(q, 1), np.maximum(num_tp[:, None], 1)) - 1        # [C, R] TP index
            column = np.arange(len(columns))[:, None]
            value = np.where(reached, np.maximum(envelope[column, which], 0.0), 0.0)
            tp_index = np.minimum(first_tp[:, None] + which, max(len(tp_row) - 1, 0))
            row = np.where(q == 0, 0, tp_row[tp_index] if len(tp_row) else 0)
            score = np.where(reached, matched.score[rows][row], 0.0)
            precision[:, :, k, areas, m] = value.reshape(shape).transpose(1, 2, 0)
            scores[:, :, k, areas, m] = score.reshape(shape).transpose(1, 2, 0)
    return precision, recall, scores


def _summarize(precision, recall) -> dict[str, float]:
    """COCOeval.summarize's 12 numbers, averaged exactly as it does (mean of the entries > -1)."""
    areas, dets = list(AREA_RANGES), list(MAX_DETS)

    def mean(ap, iou=None, area="all", max_dets=100):
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        aind, mind = [areas.index(area)], [dets.index(max_dets)]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    values = [mean(1), mean(1, .5), mean(1, .75), mean(1, area="small"), mean(1, area="medium"),
              mean(1, area="large"), mean(0, max_dets=1), mean(0, max_dets=10), mean(0),
              mean(0, area="small"), mean(0, area="medium"), mean(0, area="large")]
    return dict(zip(STAT_NAMES, values))


@gc_paused()
def coco_evaluation(gt, results, iou_type: str = "bbox", *, img_ids=None, cat_ids=None) -> CocoEvaluation:
    """COCO evaluation with everything accumulated (see `CocoEvaluation`); `coco_evaluate` keeps the 12 stats.

    gt: a COCO instances dict, a `Dataset`, or the path of an instances JSON file.
    results: a list of COCO result dicts (`image_id, category_id, bbox [x, y, w, h], score[, segmentation]`)
        or the path of a results JSON file. Result image and category ids must exist in `gt`.
    iou_type: "bbox" (box IoU) or "segm" (mask IoU; gt polygons/RLE, result RLE - compressed or not - or polygons).
    img_ids, cat_ids: evaluate only these images / categories (pycocotools' params.imgIds / catIds).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    ground_truth = load_ground_truth(gt, iou_type)
    res = load_results(results, ground_truth.image_ids, ground_truth.category_ids, ground_truth.file_names)
    matched = _match_all(ground_truth, res, iou_type, img_ids, cat_ids, IOU_THRESHOLDS,
                         list(AREA_RANGES.values()), MAX_DETS[-1])
    precision, recall, scores = _accumulate(matched, IOU_THRESHOLDS, MAX_DETS)
    return CocoEvaluation(_summarize(precision, recall), precision, recall, scores, matched.category_ids,
                          matched.image_ids)


def coco_evaluate(gt, results, iou_type: str = "bbox", *, img_ids=None, cat_ids=None) -> dict[str, float]:
    """The 12 COCO summary stats `{"AP", "AP50", ..., "ARl"}`, equal to pycocotools' `COCOeval.stats`.

    A stat with no ground truth to measure (e.g. APs without small objects) is -1, as in pycocotools.
    See `coco_evaluation` for the arguments.
    """
    return coco_evaluation(gt, results, iou_type, img_ids=img_ids, cat_ids=cat_ids).stats


def format_coco_stats(stats: dict[str, float]) -> str:
    """The 12 stats as the table pycocotools' summarize() prints."""
    rows = [("Precision", "(AP)", None, "all", 100), ("Precision", "(AP)", .5, "all", 100),
            ("Precision", "(AP)", .75, "all", 100), ("Precision", "(AP)", None, "small", 100),
            ("Precision", "(AP)", None, "medium", 100), ("Precision", "(AP)", None, "large", 100),
            ("Recall", "(AR)", None, "all", 1), ("Recall", "(AR)", None, "all", 10),
            ("Recall", "(AR)", None, "all", 100), ("Recall", "(AR)", None, "small", 100),
            ("Recall", "(AR)", None, "medium", 100), ("Recall", "(AR)", None, "large", 100)]
    lines = []
    for name, (kind, short, iou, area, dets) in zip(STAT_NAMES, rows):
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {'Average ' + kind:<18} {short} @[ IoU={iou_text:<9} | area={area:>6s} | "
                     f"maxDets={dets:>3d} ] = {stats[name]:0.3f}")
    return "\n".join(lines)


# ===================================================================================== precision-recall curves
@dataclass
class PRCurve:
    """One category's precision-recall curve at one IoU threshold (COCO matching rules).

    recall, precision, scores: one point per counted detection (ignored ones left out), in decreasing score
    order; `precision` is the interpolated one (max precision at this recall or beyond, monotone
    non-increasing), `raw_precision` the plain TP / (TP + FP).
    interpolated: precision sampled at COCO's 101 recall thresholds; its mean is the category's AP.
    """

    recall: np.ndarray               # [N]
    precision: np.ndarray            # [N]
    raw_precision: np.ndarray        # [N]
    scores: np.ndarray               # [N]
    interpolated: np.ndarray         # [101]
    num_gt: int

    @property
    def ap(self) -> float:
        return float(np.mean(self.interpolated))


@gc_paused()
def precision_recall_curves(gt, results, iou_type: str = "bbox", *, iou_threshold: float = 0.5,
                            area: str = "all", max_dets: int = 100, img_ids=None, cat_ids=None
                            ) -> dict[int, PRCurve]:
    """Per-category precision-recall curves `{category_id: PRCurve}` for categories with ground truth.

    Matching follows COCO (crowd and out-of-range gts ignored, best `max_dets` detections per image) at one
    `iou_threshold`; `curve.ap` equals COCO's per-category AP at that threshold.
    """
    if area not in AREA_RANGES:
        raise ValueError(f"area must be one of {tuple(AREA_RANGES)}, got {area!r}")
    ground_truth = load_ground_truth(gt, iou_type)
    res = load_results(results, ground_truth.image_ids, ground_truth.category_ids, ground_truth.file_names)
    matched = _match_all(ground_truth, res, iou_type, img_ids, cat_ids, [iou_threshold], [AREA_RANGES[area]],
                         max_dets)
    precision, _, _ = _accumulate(matched, [iou_threshold], [max_dets])
    curves = {}
    for k, category in enumerate(matched.category_ids.tolist()):
        num_gt = int(matched.num_gt[k, 0])
        if num_gt == 0:
            continue
        ranked = _ranked(matched, k, max_dets)
        codes = matched.codes[ranked, 0, 0]                             # [N] in score order
        tp = np.cumsum(codes == 1).astype(np.float64)
        fp = np.cumsum(codes == 0).astype(np.float64)
        recall, raw = tp / num_gt, tp / (fp + tp + np.spacing(1))
        counted = codes != 2
        envelope = np.maximum.accumulate(raw[::-1])[::-1]
        curves[category] = PRCurve(recall[counted], envelope[counted], raw[counted],
                                   matched.score[ranked][counted], precision[0, :, k, 0, 0].copy(), num_gt)
    return curves
