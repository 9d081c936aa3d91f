"""Tests of scenekit.models.detection_targets: the RPN's anchor labels, the head's region labels, the sampler.

References: hand-made boxes whose IoUs are computed by hand in the comments, and the rules as the papers state
them (Ren et al. 2015, sec. 3.1.2 and 3.3; Girshick 2015, sec. 2.3).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.models.detection_targets import label_anchors, label_regions, sample_labels


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


GT = boxes([0, 0, 10, 10])


def test_anchor_above_07_is_positive_below_03_negative_and_between_ignored():
    anchors = boxes([0, 0, 10, 8],      # IoU 0.8  -> positive
                    [0, 0, 10, 5],      # IoU 0.5  -> ignored
                    [0, 0, 10, 2],      # IoU 0.2  -> negative
                    [50, 50, 60, 60],   # IoU 0    -> negative
                    [0, 0, 10, 7])      # IoU 0.7  -> not > 0.7: ignored (it is not the best either)
    labels, matched = label_anchors(anchors, GT)
    assert labels.tolist() == [1, -1, 0, 0, -1]
    assert matched.tolist() == [0, 0, 0, 0, 0]


def test_highest_iou_anchor_is_positive_even_below_07_and_ties_count():
    gt = boxes([0, 0, 10, 10], [100, 100, 110, 110])
    anchors = boxes([0, 0, 10, 5],        # IoU 0.5 with gt 0: its best -> positive
                    [0, 5, 10, 10],       # IoU 0.5 with gt 0 too: a tie -> positive
                    [0, 0, 10, 2],        # IoU 0.2 -> negative
                    [100, 100, 110, 104],  # IoU 0.4 with gt 1: its best -> positive
                    [100, 100, 110, 103])  # IoU 0.3 with gt 1: not < 0.3, not best -> ignored
    labels, matched = label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, 0, 1, -1]
    assert matched.tolist()[:2] == [0, 0] and matched.tolist()[3] == 1


def test_object_that_no_anchor_overlaps_does_not_make_every_anchor_positive():
    anchors = boxes([0, 0, 10, 10], [20, 0, 30, 10])
    labels, _ = label_anchors(anchors, boxes([100, 100, 110, 110]))
    assert labels.tolist() == [0, 0]


def test_anchors_crossing_the_border_are_ignored_in_training():
    anchors = boxes([0, 0, 10, 10], [-5, 0, 5, 10], [15, 15, 25, 25])     # 2nd crosses x = 0, 3rd x = 20
    gt = boxes([0, 0, 10, 10])
    labels, _ = label_anchors(anchors, gt, image_size=(20, 20))
    assert labels.tolist() == [1, -1, -1]
    labels, _ = label_anchors(anchors, gt, image_size=(20, 20), allowed_border=5)
    assert labels.tolist() == [1, -1, 0]       # -5 >= -5 passes; 25 <= 25 passes; IoU(2nd) = 1/3 -> ignored


def test_without_objects_every_inside_anchor_is_negative():
    anchors = boxes([0, 0, 10, 10], [-5, 0, 5, 10])
    labels, _ = label_anchors(anchors, boxes(), image_size=(20, 20))
    assert labels.tolist() == [0, -1]


def test_label_anchors_rejects_bad_thresholds_and_shapes():
    with pytest.raises(ValueError, match="negative_iou"):
        label_anchors(boxes([0, 0, 1, 1]), GT, positive_iou=0.3, negative_iou=0.7)
    with pytest.raises(ValueError, match="anchors"):
        label_anchors(torch.zeros(3, 5), GT)


def test_regions_take_their_objects_class_and_background_starts_at_bg_low():
    gt, classes = boxes([0, 0, 10, 10], [20, 0, 30, 10]), torch.tensor([3, 5])
    regions = boxes([0, 0, 10, 6],      # IoU 0.6 with gt 0 -> class 3
                    [20, 0, 30, 5],     # IoU 0.5 with gt 1 -> class 5 (>= 0.5)
                    [0, 0, 10, 3],      # IoU 0.3 -> background
                    [0, 0, 10, 0.5],    # IoU 0.05 -> below 0.1: ignored
                    [50, 50, 60, 60])   # IoU 0 -> ignored
    labels, matched, iou = label_regions(regions, gt, classes)
    assert labels.tolist() == [3, 5, 0, -1, -1]
    assert matched.tolist()[:3] == [0, 1, 0]
    assert iou.tolist() == pytest.approx([0.6, 0.5, 0.3, 0.05, 0.0])
    labels, _, _ = label_regions(regions, gt, classes, bg_low=0.0)
    assert labels.tolist() == [3, 5, 0, 0, 0]


def test_regions_of_an_image_without_objects_are_background_only_when_bg_low_is_zero():
    regions = boxes([0, 0, 10, 10], [5, 5, 9, 9])
    assert label_regions(regions, boxes(), torch.zeros(0, dtype=torch.int64), bg_low=0.0)[0].tolist() == [0, 0]
    assert label_regions(regions, boxes(), torch.zeros(0, dtype=torch.int64), bg_low=0.1)[0].tolist() == [-1, -1]


def test_sampler_caps_positives_at_the_fraction_and_fills_with_negatives():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    positive, negative = sample_labels(labels, 16, 0.25, generator=torch.Generator().manual_seed(0))
    assert len(positive) == 4 and len(negative) == 12
    assert (labels[positive] >= 1).all() and (labels[negative] == 0).all()
    assert len(set(positive.tolist())) == 4 and len(set(negative.tolist())) == 12


def test_sampler_takes_more_negatives_when_positives_are_few():
    labels = torch.tensor([2] + [0] * 300)
    positive, negative = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(0))
    assert len(positive) == 1 and len(negative) == 255


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1, 2]), max_size=80), st.integers(0, 64), st.floats(0, 1))
def test_sampler_counts_follow_the_rule(values, num_samples, fraction):
    labels = torch.tensor(values, dtype=torch.int64)
    positive, negative = sample_labels(labels, num_samples, fraction, generator=torch.Generator().manual_seed(1))
    num_pos, num_neg = int((labels >= 1).sum()), int((labels == 0).sum())
    assert len(positive) == min(num_pos, round(num_samples * fraction))
    assert len(negative) == min(num_neg, num_samples - len(positive))
    assert (labels[positive] >= 1).all() and (labels[negative] == 0).all()
