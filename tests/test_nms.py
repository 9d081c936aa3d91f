"""Tests of scenekit/nms.py against hand-made cases, a literal Python loop of the 4 steps, and OpenCV."""

import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.boxes import box_iou
from scenekit.nms import batched_nms, batched_nms_numpy, greedy_merge, nms


def T(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------------------------------------- references
def python_iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def slow_nms(boxes, scores, iou_threshold, score_threshold=None):
    """The seed's four steps, literally, on Python lists."""
    boxes, scores = boxes.tolist(), scores.tolist()
    # 1. drop boxes below the score threshold
    remaining = [i for i in range(len(boxes)) if score_threshold is None or scores[i] >= score_threshold]
    kept = []
    while remaining:                                                   # 4. repeat
        best = max(remaining, key=lambda i: (scores[i], -i))           # 2. highest score (lowest index on ties)
        kept.append(best)
        remaining = [j for j in remaining                              # 3. discard overlapping ones
                     if j != best and python_iou(boxes[best], boxes[j]) <= iou_threshold]
    return kept


def clustered_boxes(n, n_objects, seed, width=640, height=480):
    """Detector-like output: many jittered boxes around a few objects, uniform random scores."""
    rng = np.random.default_rng(seed)
    size = np.exp(rng.uniform(np.log(16), np.log(200), (n_objects, 2)))
    centre = rng.uniform(0, 1, (n_objects, 2)) * [width, height]
    owner = rng.integers(0, n_objects, n)
    c = centre[owner] + rng.normal(0, 0.15, (n, 2)) * size[owner]
    wh = size[owner] * np.exp(rng.normal(0, 0.25, (n, 2)))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    return torch.from_numpy(boxes), torch.from_numpy(rng.uniform(0, 1, n))


def opencv_nms(boxes, scores, iou_threshold, class_ids=None):
    xywh = boxes.numpy().copy()
    xywh[:, 2:] -= xywh[:, :2]                    # NMSBoxes takes [x, y, w, h]; floats select Rect2d
    s = scores.numpy().astype(np.float32)
    if class_ids is None:
        out = cv2.dnn.NMSBoxes(xywh, s, 0.0, iou_threshold)
    else:
        out = cv2.dnn.NMSBoxesBatched(xywh, s, class_ids.numpy().astype(np.int32), 0.0, iou_threshold)
    return np.asarray(out, dtype=np.int64).reshape(-1).tolist()


@st.composite
def boxes_and_scores(draw, max_size=25):
    n = draw(st.integers(0, max_size))
    grid = st.integers(0, 40)                    # coarse coordinates: many exact overlaps and ties
    rows = []
    for _ in range(n):
        x, y, w, h = draw(grid), draw(grid), draw(st.integers(0, 20)), draw(st.integers(0, 20))
        rows.append([x / 2, y / 2, (x + w) / 2, (y + h) / 2])
    scores = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))   # ties in score
    return T(rows).reshape(-1, 4), T(scores) / 8


# ---------------------------------------------------------------------------------------------- hand-made
def test_nms_keeps_highest_of_overlapping_pair():
    boxes = T([[0, 0, 10, 10], [1, 0, 11, 10]])           # IoU 90 / 110
    assert nms(boxes, T([0.3, 0.9]), 0.5).tolist() == [1]


def test_nms_suppresses_only_strictly_above_threshold():
    boxes = T([[0, 0, 10, 10], [0, 0, 10, 5]])            # IoU exactly 0.5
    assert nms(boxes, T([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, T([0.9, 0.8]), 0.49).tolist() == [0]


def test_nms_suppressed_box_does_not_suppress_others():
    # A overlaps B (IoU 0.6), B overlaps C (IoU 0.6), A and C overlap less: A kills B, so C survives.
    boxes = T([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10]])
    assert nms(boxes, T([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]


def test_nms_returns_indices_by_decreasing_score_ties_by_index():
    boxes = T([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]])
    assert nms(boxes, T([0.2, 0.7, 0.2, 0.9]), 0.5).tolist() == [3, 1, 0, 2]


def test_nms_score_threshold_drops_boxes_below_it_before_suppression():
    boxes = T([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    # box 0 would suppress box 1, but it is dropped first (step 1); a score equal to the threshold stays.
    assert nms(boxes, T([0.95, 0.5, 0.4]), 0.5, score_threshold=0.96).tolist() == []
    assert nms(boxes, T([0.3, 0.5, 0.4]), 0.5, score_threshold=0.4).tolist() == [1, 2]


def test_nms_max_output_equals_truncating_the_full_result():
    boxes, scores = clustered_boxes(400, 10, seed=1)
    full = nms(boxes, scores, 0.5)
    for k in (0, 1, 5, len(full), len(full) + 10):
        assert torch.equal(nms(boxes, scores, 0.5, max_output=k), full[:k])


def test_nms_of_empty_input_is_empty_int64():
    kept = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.int64


def test_nms_keeps_zero_area_and_identical_boxes_consistently():
    boxes = T([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [0, 0, 10, 10]])
    # Identical boxes with area suppress each other; zero-area boxes have IoU 0 with everything.
    assert nms(boxes, T([0.1, 0.2, 0.3, 0.4]), 0.5).tolist() == [3, 1, 0]


def test_nms_is_right_with_huge_and_tiny_boxes_mixed():
    # The grid's cell size is derived from typical boxes; huge ones must still be compared.
    rng = np.random.default_rng(5)
    small, scores = clustered_boxes(300, 5, seed=5)
    huge = T([[-1e4, -1e4, 1e4, 1e4], [-1e4 + 1, -1e4, 1e4, 1e4], [-5e3, -5e3, 5e3, 5e3]])
    boxes = torch.cat([small, huge])
    scores = torch.cat([scores, torch.from_numpy(rng.uniform(0, 1, 3))])
    assert nms(boxes, scores, 0.5).tolist() == slow_nms(boxes, scores, 0.5)


def test_nms_float32_input_returns_same_indices_as_float64():
    boxes, scores = clustered_boxes(500, 10, seed=2)
    assert torch.equal(nms(boxes.float(), scores.float(), 0.5), nms(boxes.float().double(), scores, 0.5))


# ---------------------------------------------------------------------------------------------- references
@settings(max_examples=100, deadline=None)
@given(boxes_and_scores(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
       st.one_of(st.none(), st.sampled_from([0.25, 0.5])))
def test_nms_equals_slow_loop_of_the_four_steps(data, iou_threshold, score_threshold):
    boxes, scores = data
    kept = nms(boxes, scores, iou_threshold, score_threshold=score_threshold)
    assert kept.tolist() == slow_nms(boxes, scores, iou_threshold, score_threshold)


@pytest.mark.parametrize("seed", range(4))
def test_nms_equals_slow_loop_on_clustered_boxes(seed):
    boxes, scores = clustered_boxes(600, 8, seed)
    assert nms(boxes, scores, 0.5).tolist() == slow_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("n", [40, 128, 129])
def test_nms_equals_slow_loop_on_both_sides_of_the_single_cell_size(n):
    # Up to SMALL_NMS boxes the kernel tests all pairs in one cell; above it, neighbours in a grid.
    import scenekit.nms as module

    assert module.SMALL_NMS == 128
    boxes, scores = clustered_boxes(n, 4, seed=n)
    assert nms(boxes, scores, 0.5).tolist() == slow_nms(boxes, scores, 0.5)
    idxs = torch.arange(n) % 3
    expected = sorted((i for c in range(3) for i in (idxs == c).nonzero().view(-1)[
        slow_nms(boxes[idxs == c], scores[idxs == c], 0.5)].tolist()), key=lambda i: (-scores[i].item(), i))
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == expected


@pytest.mark.parametrize("seed, iou_threshold", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.5)])
def test_nms_equals_opencv_nmsboxes(seed, iou_threshold):
    # Continuous random coordinates, so no IoU lands within float32 rounding of the threshold (OpenCV
    # compares a float32 overlap; we compare float64).
    boxes, scores = clustered_boxes(3000, 30, seed)
    assert nms(boxes, scores, iou_threshold).tolist() == opencv_nms(boxes, scores, iou_threshold)


def test_nms_equals_opencv_when_scores_tie():
    boxes, scores = clustered_boxes(2000, 20, seed=7)
    # 11 distinct values: ties everywhere, both sort stably. (+1: OpenCV drops scores <= its threshold, 0.)
    scores = (torch.round(scores * 10) + 1) / 10
    assert nms(boxes, scores, 0.5).tolist() == opencv_nms(boxes, scores, 0.5)


@settings(max_examples=100, deadline=None)
@given(boxes_and_scores(), st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_nms_output_is_a_non_overlapping_subset_covering_the_rest(data, iou_threshold):
    boxes, scores = data
    kept = nms(boxes, scores, iou_threshold)
    assert len(set(kept.tolist())) == len(kept) and all(0 <= i < len(boxes) for i in kept.tolist())
    iou = box_iou(boxes[kept], boxes[kept])
    iou.fill_diagonal_(0)
    assert bool((iou <= iou_threshold).all())
    # Every dropped box overlaps some kept box that scores at least as high.
    dropped = torch.ones(len(boxes), dtype=torch.bool)
    dropped[kept] = False
    if dropped.any() and len(kept):
        overlap = box_iou(boxes[dropped], boxes[kept]) > iou_threshold
        higher = scores[kept][None, :] >= scores[dropped][:, None]
        assert bool((overlap & higher).any(dim=1).all())
    assert bool((scores[kept][:-1] >= scores[kept][1:]).all())


# ---------------------------------------------------------------------------------------------- batched
def test_batched_nms_never_suppresses_across_classes():
    boxes = T([[0, 0, 10, 10]] * 3 + [[0, 0, 10, 10.5]])
    scores = T([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2, 0]), 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.5).tolist() == [0]


@settings(max_examples=100, deadline=None)
@given(boxes_and_scores(), st.data())
def test_batched_nms_equals_nms_per_class_merged_by_score(data, draw):
    boxes, scores = data
    idxs = torch.tensor(draw.draw(st.lists(st.integers(0, 3), min_size=len(boxes), max_size=len(boxes))),
                        dtype=torch.int64)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    expected = []
    for c in idxs.unique().tolist():
        members = (idxs == c).nonzero()[:, 0]
        expected += members[nms(boxes[members], scores[members], 0.5)].tolist()
    expected.sort(key=lambda i: (-scores[i].item(), i))
    assert kept.tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_equals_opencv_nmsboxesbatched(seed):
    boxes, scores = clustered_boxes(3000, 30, seed)
    idxs = torch.from_numpy(np.random.default_rng(seed).integers(0, 20, len(boxes)))
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == opencv_nms(boxes, scores, 0.5, idxs)
    # the numpy entry point (a detector's post-processing) gives the same, as int64
    kept = batched_nms_numpy(boxes.numpy(), scores.numpy(), idxs.numpy(), 0.5)
    assert kept.dtype == np.int64 and kept.tolist() == opencv_nms(boxes, scores, 0.5, idxs)


def test_batched_nms_numpy_applies_the_score_threshold_and_handles_no_boxes():
    boxes, scores = clustered_boxes(400, 8, seed=5)
    idxs = np.random.default_rng(5).integers(0, 4, len(boxes))
    above = scores.numpy() >= 0.4
    kept = batched_nms_numpy(boxes.numpy(), scores.numpy(), idxs, 0.45, score_threshold=0.4)
    # the same as suppressing only the boxes at or above the threshold (OpenCV on that subset)
    subset = np.flatnonzero(above)
    expected = subset[opencv_nms(boxes[subset], scores[subset], 0.45, torch.from_numpy(idxs[subset]))]
    assert kept.tolist() == expected.tolist()
    empty = batched_nms_numpy(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5)
    assert empty.dtype == np.int64 and empty.shape == (0,)


def test_batched_nms_score_threshold_and_max_output():
    boxes, scores = clustered_boxes(500, 10, seed=4)
    idxs = torch.from_numpy(np.random.default_rng(4).integers(0, 5, len(boxes)))
    full = batched_nms(boxes, scores, idxs, 0.5, score_threshold=0.3)
    assert bool((scores[full] >= 0.3).all())
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5, score_threshold=0.3, max_output=7), full[:7])


def test_batched_nms_rejects_float_or_misshapen_idxs():
    boxes, scores = T([[0, 0, 1, 1]]), T([0.5])
    with pytest.raises(ValueError, match="idxs must be an integer"):
        batched_nms(boxes, scores, torch.tensor([0.0]), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \[N\] = \[1\]"):
        batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("boxes, scores, iou_threshold, message", [
    (torch.zeros(2, 3), torch.zeros(2), 0.5, r"boxes must have shape"),
    (T([[0, 0, -1, 1]]), T([0.5]), 0.5, "boxes has an invalid xyxy box"),
    (T([[0, 0, math.nan, 1]]), T([0.5]), 0.5, "boxes contains NaN"),
    (T([[0, 0, 1, 1]]), T([math.inf]), 0.5, "scores contains NaN or infinite"),
    (T([[0, 0, 1, 1]]), T([0.5, 0.2]), 0.5, r"scores must have shape \[N\] = \[1\]"),
    (T([[0, 0, 1, 1]]), T([0.5], torch.float32), 0.5, "scores has dtype torch.float32"),
    (T([[0, 0, 1, 1]]), torch.tensor([1]), 0.5, "scores must be a floating-point"),
    (T([[0, 0, 1, 1]]), T([0.5]), 1.5, r"iou_threshold must be in \[0, 1\]"),
    (T([[0, 0, 1, 1]]), T([0.5]), math.nan, "iou_threshold must be a finite number"),
])
def test_nms_rejects_bad_input_naming_the_argument(boxes, scores, iou_threshold, message):
    with pytest.raises(ValueError, match=message):
        nms(boxes, scores, iou_threshold)


def test_nms_rejects_bad_max_output():
    with pytest.raises(ValueError, match="max_output"):
        nms(T([[0, 0, 1, 1]]), T([0.5]), 0.5, max_output=-1)


# ---------------------------------------------------------------------------------------------- greedy merge
def slow_merge(boxes, scores, threshold, weighted):
    """Overfeat's loop on Python lists, the match score of scenekit.nms written out, O(n^3)."""
    def match(a, b):
        dx = 0.5 * (a[0] + a[2]) - 0.5 * (b[0] + b[2])
        dy = 0.5 * (a[1] + a[3]) - 0.5 * (b[1] + b[3])
        scale = 0.5 * (math.hypot(a[2] - a[0], a[3] - a[1]) + math.hypot(b[2] - b[0], b[3] - b[1]))
        return math.hypot(dx, dy) / scale + 1 - python_iou(a, b)

    coords = boxes.tolist()
    weight = scores.tolist() if weighted else [1.0] * len(coords)
    members = {i: [i] for i in range(len(coords))}
    while len(members) > 1:
        pairs = [(match(coords[a], coords[b]), a, b) for a in members for b in members if a < b]
        best, a, b = min(pairs)
        if best > threshold:
            break
        total = weight[a] + weight[b]
        coords[a] = [(weight[a] * p + weight[b] * q) / total for p, q in zip(coords[a], coords[b])]
        weight[a] = total
        members[a] += members.pop(b)
    return sorted((sum(scores[m].item() for m in ms) / len(ms), coords[root], sorted(ms))
                  for root, ms in members.items())


def test_greedy_merge_merges_two_clusters_into_their_means():
    boxes = T([[0, 0, 10, 10], [1, 1, 11, 11], [0, 1, 10, 11], [100, 100, 120, 120], [102, 100, 122, 120]])
    scores = T([0.9, 0.6, 0.3, 0.2, 0.4])
    merged, merged_scores, groups = greedy_merge(boxes, scores, threshold=1.0)
    torch.testing.assert_close(merged, T([[1 / 3, 2 / 3, 31 / 3, 32 / 3], [101, 100, 121, 120]]))
    torch.testing.assert_close(merged_scores, T([0.6, 0.3]))
    assert groups.tolist() == [0, 0, 0, 1, 1]


def test_greedy_merge_threshold_zero_merges_nothing():
    boxes = T([[0, 0, 10, 10], [1, 1, 11, 11]])
    merged, merged_scores, groups = greedy_merge(boxes, T([0.2, 0.7]), threshold=0.0)
    assert torch.equal(merged, boxes.flip(0)) and merged_scores.tolist() == [0.7, 0.2]
    assert groups.tolist() == [1, 0]


def test_greedy_merge_weighted_average_uses_scores():
    boxes = T([[0, 0, 10, 10], [2, 0, 12, 10]])
    scores = T([0.75, 0.25])
    torch.testing.assert_close(greedy_merge(boxes, scores, 2.0, weighted=True)[0], T([[0.5, 0, 10.5, 10]]))
    torch.testing.assert_close(greedy_merge(boxes, scores, 2.0)[0], T([[1.0, 0, 11, 10]]))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_greedy_merge_equals_slow_loop(seed, weighted):
    boxes, scores = clustered_boxes(40, 4, seed)
    merged, merged_scores, groups = greedy_merge(boxes, scores, threshold=0.8, weighted=weighted)
    expected = slow_merge(boxes, scores, 0.8, weighted)
    got = sorted((merged_scores[g].item(), merged[g].tolist(), sorted((groups == g).nonzero()[:, 0].tolist()))
                 for g in range(len(merged)))
    assert len(got) == len(expected) < len(boxes)
    for (s1, c1, m1), (s2, c2, m2) in zip(got, expected):
        assert m1 == m2 and s1 == pytest.approx(s2) and c1 == pytest.approx(c2)


def test_greedy_merge_of_empty_is_empty():
    merged, merged_scores, groups = greedy_merge(torch.zeros(0, 4), torch.zeros(0), 1.0)
    assert merged.shape == (0, 4) and merged_scores.shape == (0,) and groups.shape == (0,)


def test_greedy_merge_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative"):
        greedy_merge(T([[0, 0, 1, 1]]), T([-0.5]), 1.0, weighted=True)
