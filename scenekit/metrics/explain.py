"""Why each detection counted as it did: COCO's decision on every detection, the causes of its false positives,
a confusion matrix, per-class AP and PR curves, galleries of the worst mistakes, and what another result file
does differently (`scenekit evaluate --explain DIR [--diff OTHER.json]`).

**Decisions** repeat pycocotools' `COCOeval.evaluateImg` (cocoapi, PythonAPI/pycocotools/cocoeval.py; Lin et
al. 2014) for area range "all" and maxDets 100, at IoU 0.5 and 0.75. Per (image, category) - COCOeval
applies maxDets to each category of an image separately:

- detections are sorted by score with a stable mergesort (ties keep file order) and only the best 100 are
  evaluated; the others are `ignored` ("beyond max detections");
- a gt is ignored if it is a crowd region (`iscrowd`) or its `area` is outside [0, 1e10]; gts are ordered
  non-ignored first (stable), each part in file order;
- each detection in score order takes the gt of highest IoU >= min(t, 1 - 1e-10) not yet taken (crowd
  regions can be taken any number of times; their IoU is the intersection over the detection's area),
  stopping at the ignored gts once it holds a regular one;
- a detection on a regular gt is `tp`; on an ignored gt `ignored` ("crowd" or "area"); unmatched, it is
  `ignored` ("area") if its own area is outside the range, else `fp`. As in pycocotools a match with a gt of
  annotation id 0 reads as unmatched (`gt_id` is the matched id, 0 meaning none).

**Causes of a false positive** at threshold t (after Hoiem, Chodpathumwan and Dai 2012, "Diagnosing error in
object detectors", sec. 2: localisation error, confusion with other objects, background), the first that holds,
with IoU the COCO overlap above:

1. "duplicate": IoU >= t with a non-crowd gt of its class. Such a gt is always one a higher-scoring detection
   already matched (an untaken one would have been matched) - the detection fires twice on one object;
2. "wrong class": IoU >= t with a gt (crowds included) of another class;
3. "poor localisation": its best IoU with a gt of its class is in [0.1, t);
4. "background": none of these.

**Confusion matrix** at IoU 0.5 and a score threshold s (detections scoring below s are left out, as a user
running the detector at that threshold would never see them). Rows: the K gt classes, then "background";
columns: the K predicted classes, then "background". A counted (score >= s) `tp` of class c adds 1 to [c, c];
a counted `fp` of class c adds 1 to [g, c] if it is a "wrong class" fp (g: the class of the other-class gt it
overlaps most), else to [background, c]; every regular (non-ignored) gt of class g that no counted `tp`
matched adds 1 to [g, background]; [background, background] stays 0. So column c sums to the counted tp + fp
of class c, [g, g] + [g, background] is the number of regular gts of class g, and `ignored` detections are in
no cell.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenekit import masks
from scenekit.metrics.detection import (AREA_RANGES, coco_evaluation, dataset_to_coco_dict, precision_recall_curves,
                                        read_json)

EXPLAIN_IOUS = (0.5, 0.75)
MAX_DETS = 100
LOCALISATION_IOU = 0.1                  # Hoiem et al. 2012: a localisation error overlaps its object >= 0.1
OUTCOMES = ("tp", "fp", "ignored")
FP_REASONS = ("duplicate", "wrong class", "poor localisation", "background")
IGNORED_REASONS = ("crowd", "area", "beyond max detections")
GALLERY_SIZE = 16                       # tiles per gallery, 4 x 4
TILE = 256                              # px, the side of one tile's picture


# ============================================================================================== the instances
@dataclass
class Instances:
    """Ground-truth annotations or detections as arrays, one row each, in file order."""

    image_id: np.ndarray             # [N]
    category_id: np.ndarray          # [N]
    boxes: np.ndarray                # [N, 4] xywh
    area: np.ndarray                 # [N] the area COCO's area ranges read
    score: np.ndarray                # [N] (1 for gts)
    crowd: np.ndarray                # [N] bool (False for detections)
    ann_id: np.ndarray               # [N] annotation ids (0 for detections)
    rles: list | None                # [N] compressed RLEs for segm, else None


def _has_box(record: dict) -> bool:
    return "bbox" in record and not (isinstance(record["bbox"], list) and len(record["bbox"]) == 0)


def _box_polygon(box) -> list:
    x, y, w, h = box
    return [[x, y, x, y + h, x + w, y + h, x + w, y]]


def _gt_instances(gt: dict, iou_type: str) -> Instances:
    """The annotations as COCO.loadAnns gives them; a missing `area` is computed as scenekit's loader does."""
    anns = gt["annotations"]
    sizes = {image["id"]: (image.get("height", 0), image.get("width", 0)) for image in gt["images"]}
    rles = None
    if iou_type == "segm":
        rles = [masks.annotation_to_rle(a["segmentation"], *sizes[a["image_id"]]) for a in anns]
    boxes = np.array([a["bbox"] if "bbox" in a else masks.rle_to_bbox(rles[i]) for i, a in enumerate(anns)],
                     np.float64).reshape(-1, 4)
    area = np.array([a["area"] if "area" in a else
                     (masks.rle_area(rles[i]) if iou_type == "segm" else boxes[i, 2] * boxes[i, 3])
                     for i, a in enumerate(anns)], np.float64)
    return Instances(np.array([a["image_id"] for a in anns], np.int64),
                     np.array([a["category_id"] for a in anns], np.int64), boxes, area, np.ones(len(anns)),
                     np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
                     np.array([a["id"] for a in anns], np.int64), rles)


def _result_instances(results: list, gt: dict, iou_type: str) -> Instances:
    """The results as COCO.loadRes reads them: if the first has a bbox, every area is its box area (and a result
    without a segmentation is its box as a polygon); if not, area and box come from the masks."""
    sizes = {image["id"]: (image.get("height", 0), image.get("width", 0)) for image in gt["images"]}
    box_mode = not results or _has_box(results[0])
    rles = None
    if iou_type == "segm" or not box_mode:
        rles = [masks.annotation_to_rle(r["segmentation"] if "segmentation" in r else _box_polygon(r["bbox"]),
                                        *sizes[r["image_id"]]) for r in results]
    boxes = np.array([r["bbox"] if _has_box(r) else masks.rle_to_bbox(rles[i]) for i, r in enumerate(results)],
                     np.float64).reshape(-1, 4)
    area = boxes[:, 2] * boxes[:, 3] if box_mode else np.array([masks.rle_area(m) for m in rles], np.float64)
    n = len(results)
    return Instances(np.array([r["image_id"] for r in results], np.int64),
                     np.array([r["category_id"] for r in results], np.int64), boxes, area,
                     np.array([r["score"] for r in results], np.float64), np.zeros(n, bool), np.zeros(n, np.int64),
                     rles if iou_type == "segm" else None)


def _ious(dt: Instances, d_rows: np.ndarray, gt: Instances, g_rows: np.ndarray) -> np.ndarray:
    """[d, g] COCO overlaps, as maskApi.c's bbIou / rleIou: a crowd gt divides by the detection's area."""
    crowd = gt.crowd[g_rows]
    if gt.rles is not None:
        return masks.rle_iou([dt.rles[i] for i in d_rows], [gt.rles[j] for j in g_rows], crowd)
    d, g = dt.boxes[d_rows][:, None, :], gt.boxes[g_rows][None, :, :]           # [d, 1, 4], [1, g, 4]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    intersection = w * h
    d_area, g_area = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    union = np.where(crowd[None, :], d_area, d_area + g_area - intersection)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), intersection / union, 0.0)


# ============================================================================================== the decisions
@dataclass
class Decisions:
    """COCO's verdict on every detection of a result file at each IoU threshold (see the module docstring).

    outcome[t, d]: "tp" | "fp" | "ignored"; gt_id[t, d]: the matched gt's annotation id (pycocotools'
    dtMatches), 0 if none; reason[t, d]: "" for a tp, one of FP_REASONS or IGNORED_REASONS otherwise;
    related[t, d]: the gt row (position in the gt's annotations) the decision is about - the matched gt, the
    already matched one of a duplicate, the other-class gt of a wrong class, the poorly localised one - or -1;
    gt_matched[t, g]: the detection that matched regular gt g as a tp, -1 if it was missed (and for ignored gts).
    """

    iou_thresholds: tuple
    category_ids: np.ndarray         # [K] sorted
    names: dict                      # category id -> name
    dt: Instances                    # [D] the detections, file order
    gt: Instances                    # [G] the gt annotations, file order
    outcome: np.ndarray              # [T, D] str
    gt_id: np.ndarray                # [T, D] int64
    reason: np.ndarray               # [T, D] str
    related: np.ndarray              # [T, D] int64
    gt_ignored: np.ndarray           # [G] bool: crowd, or area outside the range "all"
    gt_matched: np.ndarray           # [T, G] int64

    def threshold_index(self, iou_threshold: float) -> int:
        if iou_threshold not in self.iou_thresholds:
            raise ValueError(f"decisions were made at IoU {self.iou_thresholds}, not {iou_threshold}")
        return self.iou_thresholds.index(iou_threshold)


def _rows_by(keys: np.ndarray) -> dict:
    """{key: row indices in file order} for an [N] integer array."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(keys) else np.zeros(0, int)
    return dict(zip(sorted_keys[starts].tolist(), np.split(order, starts[1:])))


def _greedy_match(ious: list, gt_ignore: list, gt_crowd: list, threshold: float) -> list:
    """The matching loop of COCOeval.evaluateImg, verbatim: for each detection (rows of `ious`, in score
    order) the index of the gt it takes (columns, non-ignored first), or -1."""
    taken = [False] * len(gt_ignore)
    matches = []
    for row in ious:
        best, m = min(threshold, 1 - 1e-10), -1
        for g, iou in enumerate(row):
            if taken[g] and not gt_crowd[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break                                   # holds a regular gt; the rest are ignored ones
            if iou < best:
                continue
            best, m = iou, g
        if m > -1:
            taken[m] = True
        matches.append(m)
    return matches


def _at(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows], reading 0 (False) where a row is -1."""
    return np.append(values, np.zeros(1, values.dtype))[rows]


def _decide(dt: Instances, gt: Instances, iou_thresholds, categories, names, max_dets=MAX_DETS) -> Decisions:
    T, D, G = len(iou_thresholds), len(dt.image_id), len(gt.image_id)
    lo, hi = AREA_RANGES["all"]
    gt_ignored = gt.crowd | (gt.area < lo) | (gt.area > hi)
    dt_outside = (dt.area < lo) | (dt.area > hi)

    # detections by image, category, then score (stable: ties keep file order, as evaluateImg's mergesort);
    # rank: the position in its (image, category), only the best max_dets are evaluated
    order = np.argsort(-dt.score, kind="stable")
    for key in (dt.category_id, dt.image_id):
        order = order[np.argsort(key[order], kind="stable")]
    group = np.c_[dt.image_id[order], dt.category_id[order]]
    starts = np.flatnonzero(np.r_[True, (group[1:] != group[:-1]).any(axis=1)]) if D else np.zeros(0, int)
    rank = np.empty(D, np.int64)
    rank[order] = np.arange(D) - np.repeat(starts, np.diff(np.r_[starts, D]))
    evaluated = rank < max_dets

    # per image: the greedy matching of each category, and each detection's best overlaps for the causes
    match = np.full((T, D), -1, np.int64)            # gt row each detection takes, -1 if none
    best_iou = {kind: np.full(D, -np.inf) for kind in ("same regular", "other", "same")}
    best_row = {kind: np.full(D, -1, np.int64) for kind in best_iou}
    gt_by_image = _rows_by(gt.image_id)
    image_starts = np.flatnonzero(np.r_[True, group[1:, 0] != group[:-1, 0]]) if D else np.zeros(0, int)
    for d_rows in np.split(order, image_starts[1:]) if D else []:
        g_rows = gt_by_image.get(int(dt.image_id[d_rows[0]]))
        if g_rows is None:
            continue                                  # no gt: every detection unmatched
        ious = _ious(dt, d_rows, gt, g_rows)                             # [d, g] all classes
        d_cat, g_cat = dt.category_id[d_rows], gt.category_id[g_rows]
        same = d_cat[:, None] == g_cat[None, :]                          # [d, g]
        for kind, where in (("same regular", same & ~gt.crowd[g_rows]), ("other", ~same), ("same", same)):
            masked = np.where(where, ious, -np.inf)
            j = masked.argmax(axis=1)
            best_iou[kind][d_rows], best_row[kind][d_rows] = masked[np.arange(len(d_rows)), j], g_rows[j]
        for category in np.intersect1d(d_cat, g_cat).tolist():
            mine = np.flatnonzero((d_cat == category) & evaluated[d_rows])           # in score order
            theirs = np.flatnonzero(g_cat == category)
            theirs = theirs[np.argsort(gt_ignored[g_rows[theirs]], kind="stable")]  # regular ones first
            group_ious = ious[np.ix_(mine, theirs)].tolist()
            ignore, crowd = gt_ignored[g_rows[theirs]].tolist(), gt.crowd[g_rows[theirs]].tolist()
            for t, threshold in enumerate(iou_thresholds):
                m = np.array(_greedy_match(group_ious, ignore, crowd, threshold), np.int64)
                match[t, d_rows[mine]] = np.where(m > -1, g_rows[theirs[m]], -1)

    # the decisions, as evaluateImg sets dtMatches / dtIgnore, and the causes
    outcome = np.full((T, D), "ignored", dtype=object)
    reason = np.full((T, D), "", dtype=object)
    related = np.full((T, D), -1, np.int64)
    gt_id = np.zeros((T, D), np.int64)
    gt_matched = np.full((T, G), -1, np.int64)
    for t, threshold in enumerate(iou_thresholds):
        m = match[t]
        on_ignored, on_crowd, ids = _at(gt_ignored, m), _at(gt.crowd, m), _at(gt.ann_id, m)
        tp = ~on_ignored & (ids != 0)                    # a gt of id 0 reads as unmatched, as in pycocotools
        fp = evaluated & ~tp & ~on_ignored & ~dt_outside
        gt_id[t] = ids
        gt_matched[t, m[tp]] = np.flatnonzero(tp)
        outcome[t, tp], outcome[t, fp] = "tp", "fp"
        limit = min(threshold, 1 - 1e-10)                       # evaluateImg's match test
        duplicate = fp & (best_iou["same regular"] >= limit)
        wrong = fp & ~duplicate & (best_iou["other"] >= limit)
        localisation = fp & ~duplicate & ~wrong & (best_iou["same"] >= LOCALISATION_IOU)
        none = np.full(D, -1, np.int64)
        causes = (("beyond max detections", ~evaluated, none),            # (reason, where, related gt row)
                  ("crowd", on_ignored & on_crowd, m),
                  ("area", on_ignored & ~on_crowd, m),
                  ("area", evaluated & ~tp & ~on_ignored & dt_outside, none),
                  ("", tp, m),
                  ("duplicate", duplicate, best_row["same regular"]),
                  ("wrong class", wrong, best_row["other"]),
                  ("poor localisation", localisation, best_row["same"]),
                  ("background", fp & ~duplicate & ~wrong & ~localisation, none))
        for name, where, rows in causes:
            reason[t, where], related[t, where] = name, rows[where]
    return Decisions(tuple(iou_thresholds), categories, names, dt, gt, outcome.astype(str), gt_id,
                     reason.astype(str), related, gt_ignored, gt_matched)


def _as_inputs(gt, results):
    """(COCO instances dict, results list) from paths, a Dataset, dicts and lists."""
    from scenekit.data.records import Dataset

    if isinstance(gt, Dataset):
        gt = dataset_to_coco_dict(gt)
    elif isinstance(gt, (str, Path)):
        gt = read_json(gt, "ground-truth")
    source = str(results) if isinstance(results, (str, Path)) else "results"
    if isinstance(results, (str, Path)):
        results = read_json(results, "results")
    if isinstance(results, list) and isinstance(gt, dict) and isinstance(gt.get("images"), list):
        from scenekit.metrics.result_images import result_image_ids

        images = [i for i in gt["images"] if isinstance(i, dict)]
        ids = result_image_ids(results, [i.get("id") for i in images], [i.get("file_name") for i in images],
                               source)
        if ids is not None:                        # records named by file_name (`scenekit predict`): their gt ids
            results = [{**r, "image_id": i} if isinstance(r, dict) else r for r, i in zip(results, ids)]
    return gt, results


def _decisions_of_checked(gt: dict, results: list, iou_type: str, iou_thresholds) -> Decisions:
    categories = np.array(sorted(c["id"] for c in gt["categories"]), np.int64)
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
    return _decide(_result_instances(results, gt, iou_type), _gt_instances(gt, iou_type), iou_thresholds,
                   categories, names)


def detection_decisions(gt, results, iou_type: str = "bbox", iou_thresholds=EXPLAIN_IOUS) -> Decisions:
    """COCO's decision on every detection of `results` at each of `iou_thresholds` (area "all", maxDets 100).

    gt: a COCO instances dict, a `Dataset` or a path; results: COCO result dicts or a path. Both are checked as
    `scenekit.metrics.detection.coco_evaluation` checks them (a DataError names the bad record and field).
    """
    gt, results = _as_inputs(gt, results)
    coco_evaluation(gt, results, iou_type)                       # the checks (it raises on bad input)
    return _decisions_of_checked(gt, results, iou_type, tuple(float(t) for t in iou_thresholds))


# ========================================================================================== what they add up to
def confusion_matrix(decisions: Decisions, score_threshold: float = 0.5, iou_threshold: float = 0.5) -> np.ndarray:
    """[K + 1, K + 1] counts, rows gt class then background, columns predicted class then background, as the
    module docstring defines them; classes in `decisions.category_ids` order."""
    t = decisions.threshold_index(iou_threshold)
    K = len(decisions.category_ids)
    dt, gt = decisions.dt, decisions.gt
    matrix = np.zeros((K + 1, K + 1), np.int64)
    counted = (decisions.outcome[t] != "ignored") & (dt.score >= score_threshold)
    column = np.searchsorted(decisions.category_ids, dt.category_id)
    row = np.full(len(column), K)
    tp = decisions.outcome[t] == "tp"
    row[tp] = column[tp]
    confused = decisions.reason[t] == "wrong class"
    row[confused] = np.searchsorted(decisions.category_ids, gt.category_id[decisions.related[t, confused]])
    np.add.at(matrix, (row[counted], column[counted]), 1)
    matched = decisions.gt_matched[t]
    found = np.zeros(len(matched), bool)
    found[matched > -1] = dt.score[matched[matched > -1]] >= score_threshold
    missed = ~decisions.gt_ignored & ~found
    np.add.at(matrix, (np.searchsorted(decisions.category_ids, gt.category_id[missed]), K), 1)
    return matrix


def decision_counts(decisions: Decisions, iou_threshold: float) -> dict:
    """{"tp", "fp", "ignored", each reason, "missed"}: totals at one threshold (missed: regular gts no tp found)."""
    t = decisions.threshold_index(iou_threshold)
    counts = {o: int(np.sum(decisions.outcome[t] == o)) for o in OUTCOMES}
    counts.update({r: int(np.sum(decisions.reason[t] == r)) for r in FP_REASONS + IGNORED_REASONS})
    counts["missed"] = int(np.sum(~decisions.gt_ignored & (decisions.gt_matched[t] == -1)))
    return counts


def diff_decisions(here: Decisions, other: Decisions, score_threshold: float = 0.5,
                   iou_threshold: float = 0.5) -> list[dict]:
    """Per image, what `other` (decisions on the same gt) does differently from `here` at one operating point
    (detections scoring >= score_threshold, matched at iou_threshold): the regular gts found (matched by a tp)
    by only one of them, and the numbers of tps and fps. Only images where either differs, the largest
    difference (objects found by one only, plus the change in fps) first, then by image id."""
    def per_image(decisions):
        t = decisions.threshold_index(iou_threshold)
        kept = decisions.dt.score >= score_threshold
        fp = _rows_by(decisions.dt.image_id[kept & (decisions.outcome[t] == "fp")])
        matched = decisions.gt_matched[t]
        found = np.zeros(len(matched), bool)
        found[matched > -1] = kept[matched[matched > -1]]
        return {image: len(rows) for image, rows in fp.items()}, found

    gt = here.gt
    assert np.array_equal(gt.ann_id, other.gt.ann_id), "diff_decisions compares decisions on the same gt"
    fp_here, found_here = per_image(here)
    fp_other, found_other = per_image(other)
    rows = []
    regular = ~here.gt_ignored
    gt_rows = _rows_by(gt.image_id)
    for image in sorted(set(gt_rows) | set(fp_here) | set(fp_other)):
        g = gt_rows.get(image, np.zeros(0, np.int64))
        only_here = gt.ann_id[g[found_here[g] & ~found_other[g]]].tolist()
        only_other = gt.ann_id[g[found_other[g] & ~found_here[g]]].tolist()
        a, b = fp_here.get(image, 0), fp_other.get(image, 0)
        if only_here or only_other or a != b:
            rows.append({"image_id": image, "num_gt": int(regular[g].sum()), "tp": int(found_here[g].sum()),
                         "tp_other": int(found_other[g].sum()), "fp": a, "fp_other": b,
                         "found_only_here": only_here, "found_only_by_other": only_other})
    rows.sort(key=lambda r: (-(len(r["found_only_here"]) + len(r["found_only_by_other"])
                               + abs(r["fp"] - r["fp_other"])), r["image_id"]))
    return rows


# ============================================================================================== the files
def explain_detections(gt, results, out_dir, *, images_root=None, diff=None, iou_type: str = "bbox",
                       score_threshold: float = 0.5) -> dict:
    """Write everything that explains a COCO evaluation of `results` into `out_dir`; return a JSON-ready summary.

    gt: a COCO instances dict, a `Dataset` (its images feed the galleries) or a path; results: COCO result
    dicts or a path; both checked as `coco_evaluation` checks them. images_root: the folder the gt's
    `file_name`s are relative to (the galleries are skipped, with a note, when no image can be read).
    diff: another result list or path, compared image by image. score_threshold: the operating point of the
    confusion matrix and the diff.

    Writes decisions.csv (one row per detection, in file order, and IoU 0.5 / 0.75: det_index, image_id,
    category_id, score, iou_threshold, outcome, gt_id, reason), confusion_matrix.csv and .png (IoU 0.5),
    per_class_ap.csv (AP, AP50, AP75 and the IoU-0.5 decisions per class; a last row "all" holds the COCO
    stats), pr_curves.png (IoU 0.5), worst_false_positives.png and missed_objects.png (IoU 0.5), diff.csv.
    """
    source = gt
    gt, results = _as_inputs(gt, results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = coco_evaluation(gt, results, iou_type)                    # also checks both inputs
    decisions = _decisions_of_checked(gt, results, iou_type, EXPLAIN_IOUS)
    files, notes = {}, []
    files["decisions"] = _write_decisions(decisions, out / "decisions.csv")
    matrix = confusion_matrix(decisions, score_threshold)
    files["confusion_matrix"] = _write_confusion(matrix, decisions, out / "confusion_matrix.csv")
    files["confusion_matrix_picture"] = _plot_confusion(matrix, decisions, score_threshold,
                                                        out / "confusion_matrix.png")
    files["per_class_ap"] = _write_per_class(evaluation, decisions, out / "per_class_ap.csv")
    curves = precision_recall_curves(gt, results, iou_type, iou_threshold=0.5)
    files["pr_curves"] = _plot_curves(curves, decisions.names, out / "pr_curves.png")
    load = _image_loader(source, gt, images_root)
    for name, tiles in (("worst_false_positives", _worst_false_positives(decisions)),
                        ("missed_objects", _missed_objects(decisions))):
        path, note = _gallery(tiles, decisions, load, out / f"{name}.png", name.replace("_", " "))
        if path is not None:
            files[name] = path
        if note:
            notes.append(note)
    summary = {"stats": evaluation.stats, "score_threshold": score_threshold,
               "decisions": {str(t): decision_counts(decisions, t) for t in EXPLAIN_IOUS}}
    if diff is not None:
        _, other_results = _as_inputs(gt, diff)
        other_stats = coco_evaluation(gt, other_results, iou_type).stats
        other = _decisions_of_checked(gt, other_results, iou_type, (0.5,))
        rows = diff_decisions(decisions, other, score_threshold)
        files["diff"] = _write_diff(rows, out / "diff.csv")
        summary["diff"] = {"images": len(rows), "stats_other": other_stats}
    summary["files"] = {key: str(path) for key, path in files.items()}
    summary["notes"] = notes
    return summary


def _write_rows(path: Path, header: list, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_decisions(decisions: Decisions, path: Path) -> Path:
    dt = decisions.dt
    image, category, score = dt.image_id.tolist(), dt.category_id.tolist(), dt.score.tolist()
    outcome, gt_id, reason = decisions.outcome.tolist(), decisions.gt_id.tolist(), decisions.reason.tolist()
    rows = ((d, image[d], category[d], score[d], threshold, outcome[t][d], gt_id[t][d], reason[t][d])
            for d in range(len(image)) for t, threshold in enumerate(decisions.iou_thresholds))
    return _write_rows(path, ["det_index", "image_id", "category_id", "score", "iou_threshold", "outcome", "gt_id",
                              "reason"], rows)


def _class_names(decisions: Decisions) -> list[str]:
    return [decisions.names[c] for c in decisions.category_ids.tolist()]


def _write_confusion(matrix: np.ndarray, decisions: Decisions, path: Path) -> Path:
    names = _class_names(decisions) + ["background"]
    return _write_rows(path, ["ground truth \\ predicted"] + names,
                       ([name] + row for name, row in zip(names, matrix.tolist())))


def _write_per_class(evaluation, decisions: Decisions, path: Path) -> Path:
    aps = [evaluation.category_ap(), evaluation.category_ap(0.5), evaluation.category_ap(0.75)]
    t = decisions.threshold_index(0.5)
    keys = ["tp", "fp", "ignored", "duplicate", "wrong class", "poor localisation", "background", "missed"]
    rows = []
    for category in decisions.category_ids.tolist():
        mine = decisions.dt.category_id == category
        regular = ~decisions.gt_ignored & (decisions.gt.category_id == category)
        outcome, reason = decisions.outcome[t, mine], decisions.reason[t, mine]
        counts = [int(np.sum(outcome == k)) for k in OUTCOMES] + [int(np.sum(reason == r)) for r in FP_REASONS]
        counts.append(int(np.sum(regular & (decisions.gt_matched[t] == -1))))
        rows.append([category, decisions.names[category], int(regular.sum()), int(mine.sum())]
                    + ["" if math.isnan(ap[category]) else ap[category] for ap in aps] + counts)
    totals = decision_counts(decisions, 0.5)
    stats = evaluation.stats
    rows.append(["all", "all", int((~decisions.gt_ignored).sum()), len(decisions.dt.score),
                 stats["AP"], stats["AP50"], stats["AP75"]] + [totals[k] for k in keys])
    header = ["category_id", "name", "num_gt", "num_detections", "AP", "AP50", "AP75"]
    return _write_rows(path, header + [k.replace(" ", "_") + "50" for k in keys], rows)


def _write_diff(rows: list[dict], path: Path) -> Path:
    header = ["image_id", "num_gt", "tp", "tp_other", "fp", "fp_other", "found_only_here", "found_only_by_other"]
    return _write_rows(path, header, ([" ".join(map(str, r[k])) if isinstance(r[k], list) else r[k]
                                       for k in header] for r in rows))


# ============================================================================================== the pictures
def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--explain's plots need matplotlib: pip install 'scenekit[plots]'") from None
    return plt


def _plot_confusion(matrix: np.ndarray, decisions: Decisions, score_threshold: float, path: Path) -> Path:
    """Colour: each row's share (a gt class's objects found, confused, missed); text: the counts."""
    plt = _pyplot()
    names = _class_names(decisions) + ["background"]
    n = len(names)
    side = max(6.0, 0.16 * n + 3.5)
    figure, axes = plt.subplots(figsize=(side + 1.0, side))
    totals = matrix.sum(axis=1, keepdims=True)
    shares = matrix / np.maximum(totals, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if n <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axes.text(j, i, str(count), ha="center", va="center", fontsize="small",
                          color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(n), names, rotation=90, fontsize="small" if n > 30 else None)
    axes.set_yticks(range(n), names, fontsize="small" if n > 30 else None)
    axes.set(xlabel="predicted", ylabel="ground truth",
             title=f"confusion at IoU 0.5, detections scoring >= {score_threshold:g}")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the row")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_curves(curves: dict, names: dict, path: Path) -> Path:
    """One step curve per class with its AP50; the legend beside the axes, in columns when there are many."""
    plt = _pyplot()
    columns = max(1, math.ceil(len(curves) / 30))
    figure, axes = plt.subplots(figsize=(7 + 2.2 * columns, 6))
    colours = plt.get_cmap("tab20")
    for k, (category, curve) in enumerate(curves.items()):
        recall = np.r_[0.0, curve.recall]
        precision = np.r_[curve.precision[0] if len(curve.precision) else 0.0, curve.precision]
        axes.step(recall, precision, where="post", color=colours(k % 20),
                  label=f"{names.get(category, category)} ({curve.ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title="precision-recall at IoU 0.5 (COCO matching)")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small",
                    ncol=columns, title="class (AP50)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass
class _Tile:
    image_id: int
    focus: np.ndarray                # [4] xywh, the box the crop is centred on
    detections: list                 # detection rows drawn in red
    gts: list                        # gt rows drawn in green
    caption: str


def _worst_false_positives(decisions: Decisions) -> list[_Tile]:
    """The highest-scoring false positives at IoU 0.5, with the gt their cause is about."""
    t = decisions.threshold_index(0.5)
    dt, gt = decisions.dt, decisions.gt
    fps = np.flatnonzero(decisions.outcome[t] == "fp")
    fps = fps[np.argsort(-dt.score[fps], kind="stable")][:GALLERY_SIZE]
    tiles = []
    for d in fps.tolist():
        g = int(decisions.related[t, d])
        caption = f"{decisions.names[int(dt.category_id[d])]} {dt.score[d]:.2f}: {decisions.reason[t, d]}"
        if decisions.reason[t, d] == "wrong class":
            caption += f" (a {decisions.names[int(gt.category_id[g])]})"
        tiles.append(_Tile(int(dt.image_id[d]), dt.boxes[d], [d], [g] if g > -1 else [], caption))
    return tiles


def _missed_objects(decisions: Decisions) -> list[_Tile]:
    """The largest regular gts no detection found at IoU 0.5, with the detection overlapping each most."""
    t = decisions.threshold_index(0.5)
    dt, gt = decisions.dt, decisions.gt
    missed = np.flatnonzero(~decisions.gt_ignored & (decisions.gt_matched[t] == -1))
    missed = missed[np.argsort(-gt.area[missed], kind="stable")][:GALLERY_SIZE]
    dt_by_image = _rows_by(dt.image_id)
    tiles = []
    for g in missed.tolist():
        caption = f"missed {decisions.names[int(gt.category_id[g])]} (id {gt.ann_id[g]}, area {gt.area[g]:.0f})"
        nearby = []
        rows = dt_by_image.get(int(gt.image_id[g]), np.zeros(0, np.int64))
        if len(rows):
            ious = _ious(dt, rows, gt, np.array([g]))[:, 0]
            if ious.max() > 0:
                d = int(rows[np.argmax(ious)])
                nearby = [d]
                caption += (f"; closest: {decisions.names[int(dt.category_id[d])]} {dt.score[d]:.2f}, "
                            f"IoU {ious.max():.2f}")
        tiles.append(_Tile(int(gt.image_id[g]), gt.boxes[g], nearby, [g], caption))
    return tiles


def _image_loader(source, gt: dict, images_root):
    """image_id -> PIL image or None: from `images_root / file_name`, else from a Dataset's records."""
    from PIL import Image

    from scenekit.data.records import Dataset

    records = {r.image_id: r for r in source.records} if isinstance(source, Dataset) else {}
    file_names = {image["id"]: image.get("file_name") for image in gt["images"]}

    def load(image_id):
        try:
            if images_root is not None and file_names.get(image_id):
                with Image.open(Path(images_root) / file_names[image_id]) as picture:
                    return picture.convert("RGB")
            if image_id in records:
                from scenekit.data.transforms import load_image
                return Image.fromarray(load_image(source, records[image_id]))
        except (OSError, ValueError, SyntaxError):
            return None
        return None

    return load if images_root is not None or records else None


def _draw_tile(picture, tile: _Tile, decisions: Decisions):
    """The crop around the tile's box (its size again as margin on every side), scaled to fit TILE x TILE,
    gts in green and detections in red, the caption under it."""
    from PIL import Image

    from scenekit.viz import draw_boxes, draw_caption

    x, y, w, h = (float(v) for v in tile.focus)
    margin = max(0.5 * max(w, h), 16.0)
    left, top = max(0.0, x - margin), max(0.0, y - margin)
    right, bottom = min(float(picture.width), x + w + margin), min(float(picture.height), y + h + margin)
    left, top = min(left, max(0.0, right - 1)), min(top, max(0.0, bottom - 1))
    crop = picture.crop((int(left), int(top), max(int(left) + 1, math.ceil(right)),
                         max(int(top) + 1, math.ceil(bottom))))
    scale = TILE / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)

    def on_crop(boxes):                                  # [N, 4] xywh in the image -> xyxy on the crop
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        xyxy = np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]] - [int(left), int(top), int(left), int(top)]
        return xyxy * scale

    gt, dt = decisions.gt, decisions.dt
    if tile.gts:
        crop = draw_boxes(crop, on_crop(gt.boxes[tile.gts]), gt.category_id[tile.gts], names=decisions.names,
                          colour=(40, 200, 60))
    if tile.detections:
        crop = draw_boxes(crop, on_crop(dt.boxes[tile.detections]), dt.category_id[tile.detections],
                          dt.score[tile.detections], names=decisions.names, colour=(230, 30, 30))
    canvas = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    canvas.paste(crop, ((TILE - crop.width) // 2, (TILE - crop.height) // 2))
    return draw_caption(canvas, f"image {tile.image_id}: {tile.caption}")


def _gallery(tiles: list, decisions: Decisions, load, path: Path, title: str):
    """(path or None, note or ""): the tiles in a 4-column sheet with a title band."""
    from PIL import Image, ImageDraw

    if not tiles:
        return None, f"{path.name} not written: no {title} at IoU 0.5"
    if load is None:
        return None, f"{path.name} not written: no images (pass images_root, the folder of the gt's file_names)"
    cache, pictures = {}, []
    for tile in tiles:
        if tile.image_id not in cache:
            cache[tile.image_id] = load(tile.image_id)
        if cache[tile.image_id] is not None:
            pictures.append(_draw_tile(cache[tile.image_id], tile, decisions))
    if not pictures:
        return None, f"{path.name} not written: none of its {len(tiles)} images could be read"
    columns, band, gap = 4, 24, 6
    cell_h = max(p.height for p in pictures)
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * (TILE + gap) + gap, band + rows * (cell_h + gap) + gap), (255, 255, 255))
    for k, picture in enumerate(pictures):
        sheet.paste(picture, (gap + (k % columns) * (TILE + gap), band + gap + (k // columns) * (cell_h + gap)))
    ImageDraw.Draw(sheet).text((gap, 6), f"{title} at IoU 0.5 (red: detection, green: ground truth)",
                               fill=(0, 0, 0))
    sheet.save(path)
    note = "" if len(pictures) == len(tiles) else f"{path.name}: {len(tiles) - len(pictures)} images unreadable"
    return path, note
