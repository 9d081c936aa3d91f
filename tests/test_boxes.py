"""Tests of scenekit/boxes.py: hand-computed values, properties, and bad inputs."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit import boxes as B
from scenekit.boxes import (BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image, decode_boxes,
                            encode_boxes, generalized_box_iou)


def T(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------------------------------------- strategies
coordinate = st.floats(-500, 500, allow_nan=False, allow_infinity=False, width=32)
extent = st.floats(0, 300, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def box_lists(draw, min_size=1, max_size=12):
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        x, y, w, h = draw(coordinate), draw(coordinate), draw(extent), draw(extent)
        rows.append([x, y, x + w, y + h])
    return T(rows)


# ---------------------------------------------------------------------------------------------- formats
def test_box_convert_hand_computed_between_all_formats():
    xyxy = T([[10, 20, 40, 80]])
    xywh = T([[10, 20, 30, 60]])
    cxcywh = T([[25, 50, 30, 60]])
    by_name = {"xyxy": xyxy, "xywh": xywh, "cxcywh": cxcywh}
    for a, boxes_a in by_name.items():
        for b, boxes_b in by_name.items():
            assert torch.equal(box_convert(boxes_a, a, b), boxes_b), (a, b)


@settings(max_examples=60, deadline=None)
@given(box_lists())
def test_box_convert_round_trips(boxes):
    for fmt in ("xywh", "cxcywh"):
        back = box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy")
        torch.testing.assert_close(back, boxes, rtol=0, atol=1e-9)


def test_box_convert_keeps_leading_dimensions_and_empty_shape():
    boxes = torch.zeros(2, 3, 4)
    assert box_convert(boxes, "xyxy", "cxcywh").shape == (2, 3, 4)
    assert box_convert(torch.zeros(0, 4), "xywh", "xyxy").shape == (0, 4)


def test_box_convert_rejects_unknown_format():
    with pytest.raises(ValueError, match="out_fmt"):
        box_convert(T([[0, 0, 1, 1]]), "xyxy", "yxyx")


def test_box_convert_rejects_negative_width_in_xywh():
    with pytest.raises(ValueError, match="boxes.*width >= 0"):
        box_convert(T([[0, 0, -1, 1]]), "xywh", "xyxy")


# ---------------------------------------------------------------------------------------------- area, clip
def test_box_area_is_width_times_height_with_continuous_coordinates():
    assert box_area(T([[0, 0, 10, 5], [1, 1, 1, 9], [2.5, 0, 3.0, 0.5]])).tolist() == [50.0, 0.0, 0.25]


def test_clip_boxes_to_image_clamps_x_to_width_and_y_to_height():
    boxes = T([[-5, -5, 50, 30], [10, 10, 20, 20], [200, 5, 300, 8]])
    clipped = clip_boxes_to_image(boxes, (25, 100))     # (height, width)
    assert clipped.tolist() == [[0, 0, 50, 25], [10, 10, 20, 20], [100, 5, 100, 8]]


def test_clip_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        clip_boxes_to_image(T([[0, 0, 1, 1]]), (10,))


# ---------------------------------------------------------------------------------------------- IoU
def test_box_iou_hand_computed():
    a = T([[0, 0, 10, 10]])
    b = T([[5, 0, 15, 10],      # half overlap: 50 / 150
           [0, 0, 10, 10],      # identical
           [10, 0, 20, 10],     # touching edges: 0
           [2, 2, 4, 4],        # inside: 4 / 100
           [-5, -5, 5, 5]])     # corner: 25 / 175
    torch.testing.assert_close(box_iou(a, b), T([[1 / 3, 1.0, 0.0, 0.04, 25 / 175]]))


def test_box_iou_shape_and_empty():
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    assert box_iou(torch.zeros(2, 4), torch.zeros(0, 4)).shape == (2, 0)


def test_box_iou_of_two_zero_area_boxes_is_zero_not_nan():
    point = T([[3, 3, 3, 3]])
    assert box_iou(point, point).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_numba_path_equals_differentiable_torch_path(dtype):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g, dtype=torch.float64) * 100
    boxes1 = torch.cat([xy, xy + torch.rand(300, 2, generator=g, dtype=torch.float64) * 50], 1).to(dtype)
    boxes1[:5, 2:] = boxes1[:5, :2]                           # some zero-area boxes
    boxes2 = boxes1[:200].flip(0).clone()
    fast = box_iou(boxes1, boxes2)
    slow = box_iou(boxes1.clone().requires_grad_(), boxes2)
    assert slow.requires_grad and not fast.requires_grad and fast.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=tolerance)


@settings(max_examples=60, deadline=None)
@given(box_lists(), box_lists())
def test_box_iou_is_symmetric_and_in_unit_interval(boxes1, boxes2):
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (len(boxes1), len(boxes2))
    assert bool(((iou >= 0) & (iou <= 1 + 1e-12)).all())
    torch.testing.assert_close(iou, box_iou(boxes2, boxes1).T, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(box_lists())
def test_box_iou_of_a_box_with_itself_is_one_when_it_has_area(boxes):
    diagonal = box_iou(boxes, boxes).diagonal()
    has_area = box_area(boxes) > 1e-6
    torch.testing.assert_close(diagonal[has_area], torch.ones_like(diagonal[has_area]))


def test_box_iou_matches_a_scalar_python_loop():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(20, 2, generator=g, dtype=torch.float64) * 50
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g, dtype=torch.float64) * 30], 1)

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    rows = boxes.tolist()
    expected = T([[iou(a, b) for b in rows[10:]] for a in rows[:10]])
    torch.testing.assert_close(box_iou(boxes[:10], boxes[10:]), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- GIoU
def test_generalized_box_iou_hand_computed():
    a = T([[0, 0, 10, 10]])
    b = T([[20, 0, 30, 10],     # disjoint: IoU 0, enclosing 30 x 10 = 300, union 200 -> -100/300
           [0, 0, 10, 10],      # identical -> 1
           [5, 0, 15, 10]])     # IoU 1/3, enclosing 150 = union -> 1/3
    torch.testing.assert_close(generalized_box_iou(a, b), T([[-1 / 3, 1.0, 1 / 3]]))


@settings(max_examples=60, deadline=None)
@given(box_lists(), box_lists())
def test_generalized_box_iou_is_in_range_and_at_most_iou(boxes1, boxes2):
    giou = generalized_box_iou(boxes1, boxes2)
    assert bool(((giou >= -1 - 1e-9) & (giou <= 1 + 1e-9)).all())
    assert bool((giou <= box_iou(boxes1, boxes2) + 1e-9).all())


def test_generalized_box_iou_has_gradient_for_disjoint_boxes():
    a = T([[0, 0, 10, 10]]).requires_grad_()
    b = T([[20, 0, 30, 10]])
    generalized_box_iou(a, b).sum().backward()
    assert a.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- deltas
def test_encode_boxes_follows_rcnn_appendix_c():
    proposal = T([[0, 0, 10, 20]])          # centre (5, 10), w 10, h 20
    target = T([[2, 4, 22, 24]])             # centre (12, 14), w 20, h 20
    expected = T([[7 / 10, 4 / 20, math.log(2.0), math.log(1.0)]])
    torch.testing.assert_close(encode_boxes(target, proposal), expected)
    weighted = encode_boxes(target, proposal, weights=(10, 10, 5, 5))
    torch.testing.assert_close(weighted, expected * T([10, 10, 5, 5]))


def test_decode_boxes_inverts_hand_computed_deltas():
    proposal = T([[0, 0, 10, 20]])
    deltas = T([[0.7, 0.2, math.log(2.0), 0.0]])
    torch.testing.assert_close(decode_boxes(deltas, proposal), T([[2, 4, 22, 24]]))


@settings(max_examples=60, deadline=None)
@given(box_lists(), st.floats(-3, 3), st.floats(-3, 3), st.floats(0.1, 10), st.floats(0.1, 10))
def test_encode_decode_round_trip(proposals, dx, dy, sw, sh):
    proposals = proposals + T([0, 0, 1, 1])   # positive sizes
    cx, cy, w, h = box_convert(proposals, "xyxy", "cxcywh").unbind(1)
    targets = box_convert(torch.stack((cx + dx * w, cy + dy * h, w * sw, h * sh), 1), "cxcywh", "xyxy")
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(targets, proposals)
    torch.testing.assert_close(coder.decode(deltas, proposals), targets, rtol=1e-9, atol=1e-6)


def test_decode_clamps_log_scale_to_torchvision_default():
    proposal = T([[0, 0, 16, 16]])
    huge = decode_boxes(T([[0, 0, 50.0, 50.0]]), proposal)
    # exp(log(1000 / 16)) * 16 = 1000: the box can grow to at most 1000 px, centred on the proposal.
    torch.testing.assert_close(huge, T([[8 - 500, 8 - 500, 8 + 500, 8 + 500]]))
    assert B.DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))


def test_decode_class_specific_deltas_broadcast():
    proposals = T([[0, 0, 10, 10], [5, 5, 25, 45]])
    deltas = torch.zeros(2, 3, 4, dtype=torch.float64)          # [N, K classes, 4]
    decoded = decode_boxes(deltas, proposals[:, None, :])
    assert decoded.shape == (2, 3, 4)
    torch.testing.assert_close(decoded, proposals[:, None, :].expand(2, 3, 4))


def test_encode_rejects_zero_size_proposals():
    with pytest.raises(ValueError, match="proposals.*positive"):
        encode_boxes(T([[0, 0, 1, 1]]), T([[0, 0, 0, 1]]))


def test_encode_and_decode_of_empty_are_empty():
    empty = torch.zeros(0, 4, dtype=torch.float64)
    assert encode_boxes(empty, empty).shape == (0, 4)
    assert decode_boxes(empty, empty).shape == (0, 4)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, message", [
    (torch.zeros(3, 5), r"boxes1 must have shape \[\.\.\., 4\]"),
    (torch.zeros(3, 4, 1), r"boxes1 must have shape \[N, 4\]"),
    (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "boxes1 contains NaN or infinite"),
    (torch.tensor([[0.0, 0.0, float("inf"), 1.0]]), "boxes1 contains NaN or infinite"),
    (torch.tensor([[5.0, 0.0, 1.0, 1.0]]), r"boxes1 has an invalid xyxy box at index \(0,\)"),
    (torch.tensor([[0.0, 5.0, 1.0, 1.0]]), "boxes1 has an invalid xyxy box"),
    (torch.zeros(2, 4, dtype=torch.int64), "boxes1 must be a floating-point"),
    ([[0.0, 0.0, 1.0, 1.0]], "boxes1 must be a torch.Tensor"),
])
def test_box_iou_rejects_bad_boxes1_naming_it(bad, message):
    with pytest.raises(ValueError, match=message):
        box_iou(bad, torch.zeros(1, 4))


def test_pairwise_ops_reject_mismatched_dtypes_naming_boxes2():
    for op in (box_iou, generalized_box_iou):
        with pytest.raises(ValueError, match="boxes2 has dtype torch.float64"):
            op(torch.zeros(1, 4, dtype=torch.float32), torch.zeros(1, 4, dtype=torch.float64))


def test_pairwise_ops_reject_mismatched_devices_naming_boxes2():
    with pytest.raises(ValueError, match="boxes2 is on meta"):
        B._check_same(torch.zeros(1, 4), torch.zeros(1, 4, device="meta"), "boxes1", "boxes2")


def test_decode_rejects_deltas_of_other_dtype_and_nonbroadcasting_shapes():
    with pytest.raises(ValueError, match="deltas has dtype"):
        decode_boxes(torch.zeros(1, 4, dtype=torch.float32), torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not broadcast"):
        decode_boxes(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weights"):
        decode_boxes(torch.zeros(1, 4), torch.zeros(1, 4), weights=(1, 1, 0, 1))
