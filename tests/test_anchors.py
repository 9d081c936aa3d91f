"""Tests of scenekit/anchors.py: Faster R-CNN anchor grids and YOLOv2 k-means priors."""

import math

import pytest
import torch

from scenekit.anchors import anchor_mean_iou, anchors_for_feature_map, cell_anchors, kmeans_anchors, wh_iou
from scenekit.boxes import box_area, box_convert


# ---------------------------------------------------------------------------------------------- grids
def test_cell_anchors_hand_computed_ratio_major_size_minor():
    anchors = cell_anchors(sizes=(16, 32), ratios=(0.5, 1.0), dtype=torch.float64)
    r = math.sqrt(0.5)
    expected = torch.tensor([
        [-8 / r, -8 * r, 8 / r, 8 * r],      # ratio 0.5 (h / w): wide, size 16
        [-16 / r, -16 * r, 16 / r, 16 * r],  # ratio 0.5, size 32
        [-8, -8, 8, 8],                      # ratio 1, size 16
        [-16, -16, 16, 16],                  # ratio 1, size 32
    ], dtype=torch.float64)
    torch.testing.assert_close(anchors, expected)


def test_default_cell_anchors_are_nine_with_area_size_squared_and_ratio_h_over_w():
    anchors = cell_anchors(dtype=torch.float64)
    assert anchors.shape == (9, 4)
    _, _, w, h = box_convert(anchors, "xyxy", "cxcywh").unbind(1)
    sizes = torch.tensor([128.0, 256, 512], dtype=torch.float64).repeat(3)
    ratios = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).repeat_interleave(3)
    torch.testing.assert_close(box_area(anchors), sizes**2)
    torch.testing.assert_close(h / w, ratios)


def test_anchors_for_feature_map_order_is_position_major_anchor_minor():
    height, width, stride = 3, 4, 16
    anchors = anchors_for_feature_map((height, width), stride, sizes=(32, 64), ratios=(0.5, 1, 2))
    base = cell_anchors((32, 64), (0.5, 1, 2))
    num_anchors = len(base)
    assert anchors.shape == (height * width * num_anchors, 4)
    for y in range(height):
        for x in range(width):
            centre = torch.tensor([(x + 0.5) * stride, (y + 0.5) * stride] * 2)
            for a in range(num_anchors):
                torch.testing.assert_close(anchors[(y * width + x) * num_anchors + a], base[a] + centre)


def test_anchor_order_matches_a_conv_head_layout_after_permute_reshape():
    # A conv head predicting [B, A*4, H, W]: fill it with the anchors themselves, channel a*4 + coordinate.
    height, width = 2, 3
    anchors = anchors_for_feature_map((height, width), 8, sizes=(16,), ratios=(0.5, 2))
    num_anchors = 2
    head = torch.empty(1, num_anchors * 4, height, width)
    for y in range(height):
        for x in range(width):
            for a in range(num_anchors):
                centre = torch.tensor([(x + 0.5) * 8, (y + 0.5) * 8] * 2)
                head[0, a * 4:(a + 1) * 4, y, x] = cell_anchors((16,), (0.5, 2))[a] + centre
    flat = head.permute(0, 2, 3, 1).reshape(1, height * width * num_anchors, 4)
    torch.testing.assert_close(flat[0], anchors)


def test_center_offset_zero_puts_first_anchor_centre_at_origin_and_stride_can_differ_per_axis():
    anchors = anchors_for_feature_map((2, 2), (8, 16), sizes=(10,), ratios=(1,), center_offset=0.0)
    centres = box_convert(anchors, "xyxy", "cxcywh")[:, :2]
    assert centres.tolist() == [[0, 0], [16, 0], [0, 8], [16, 8]]


def test_empty_feature_map_gives_empty_anchors():
    assert anchors_for_feature_map((0, 5), 16).shape == (0, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(feature_size=(2.5, 3), stride=16), "feature_size"),
    (dict(feature_size=(2, 3), stride=0), "stride"),
    (dict(feature_size=(2, 3), stride=16, sizes=()), "sizes"),
    (dict(feature_size=(2, 3), stride=16, ratios=(1, -2)), "ratios"),
    (dict(feature_size=(2, 3), stride=(1, 2, 3)), "stride"),
])
def test_anchors_for_feature_map_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        anchors_for_feature_map(**kwargs)


# ---------------------------------------------------------------------------------------------- k-means
def test_wh_iou_aligns_boxes_at_a_common_centre():
    iou = wh_iou(torch.tensor([[10.0, 10.0]]), torch.tensor([[5.0, 20.0], [10.0, 10.0], [20.0, 20.0]]))
    torch.testing.assert_close(iou, torch.tensor([[50 / 150, 1.0, 0.25]]))


def two_clusters():
    g = torch.Generator().manual_seed(0)
    small = torch.tensor([10.0, 20.0]) + torch.rand(60, 2, generator=g)          # ~ (10.5, 20.5)
    large = torch.tensor([120.0, 80.0]) + 4 * torch.rand(40, 2, generator=g)     # ~ (122, 82)
    return torch.cat([large, small]).double(), small.double().mean(0), large.double().mean(0)


def test_kmeans_anchors_finds_two_clear_clusters_sorted_by_area():
    wh, small_mean, large_mean = two_clusters()
    anchors = kmeans_anchors(wh, k=2, seed=0)
    torch.testing.assert_close(anchors, torch.stack([small_mean, large_mean]))
    assert anchor_mean_iou(wh, anchors) > 0.9


def test_kmeans_anchors_is_deterministic_under_a_seed():
    g = torch.Generator().manual_seed(1)
    wh = torch.exp(torch.rand(300, 2, generator=g) * 4) + 1
    assert torch.equal(kmeans_anchors(wh, 5, seed=3), kmeans_anchors(wh, 5, seed=3))


def test_kmeans_anchors_converges_to_a_fixed_point_of_the_iou_distance():
    # Lloyd's fixed point: every box is nearest (max IoU) to its own centroid, and every centroid is the
    # mean (w, h) of its boxes. With a Euclidean distance the assignment step would disagree.
    g = torch.Generator().manual_seed(2)
    wh = torch.exp(torch.randn(400, 2, generator=g, dtype=torch.float64) * 0.8) * 40
    anchors = kmeans_anchors(wh, 6, seed=0, max_iter=500)
    assignment = wh_iou(wh, anchors).argmax(dim=1)
    for c in range(6):
        torch.testing.assert_close(anchors[c], wh[assignment == c].mean(0))
    areas = anchors.prod(dim=1)
    assert bool((areas[1:] >= areas[:-1]).all())


def test_kmeans_anchors_with_k_equal_to_n_returns_the_boxes_sorted_by_area():
    wh = torch.tensor([[30.0, 30.0], [5.0, 8.0], [100.0, 10.0]])
    anchors = kmeans_anchors(wh, 3, seed=0)
    assert anchors.tolist() == [[5.0, 8.0], [30.0, 30.0], [100.0, 10.0]]   # areas 40, 900, 1000
    assert anchor_mean_iou(wh, anchors) == pytest.approx(1.0)


def test_kmeans_anchors_handles_fewer_distinct_shapes_than_k():
    wh = torch.tensor([[10.0, 10.0]] * 5 + [[50.0, 20.0]] * 5)
    anchors = kmeans_anchors(wh, 3, seed=0)
    assert anchors.shape == (3, 2)
    assert anchor_mean_iou(wh, anchors) == pytest.approx(1.0)


def test_anchor_mean_iou_hand_computed():
    wh = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    assert anchor_mean_iou(wh, torch.tensor([[10.0, 10.0]])) == pytest.approx((1.0 + 0.25) / 2)


@pytest.mark.parametrize("wh, k, message", [
    (torch.ones(3, 3), 2, r"wh must have shape \[N, 2\]"),
    (torch.tensor([[1.0, 0.0], [2.0, 2.0]]), 1, "wh must have positive"),
    (torch.tensor([[1.0, float("nan")], [2.0, 2.0]]), 1, "wh contains NaN"),
    (torch.ones(2, 2), 3, "at least 3 boxes"),
    (torch.ones(2, 2), 0, "k must be a positive int"),
    (torch.ones(2, 2, dtype=torch.int64), 1, "wh must be a floating-point"),
])
def test_kmeans_anchors_rejects_bad_input(wh, k, message):
    with pytest.raises(ValueError, match=message):
        kmeans_anchors(wh, k)
