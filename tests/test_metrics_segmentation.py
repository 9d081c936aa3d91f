"""Segmentation metrics: hand-counted maps, a per-class loop reference, pycocotools' mask IoU."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scenekit.metrics.segmentation import (SegmentationMeter, confusion_matrix, frequency_weighted_iou,
                                           mask_iou, mean_accuracy, mean_iou, per_class_iou, pixel_accuracy,
                                           segmentation_scores)

# A 3x3 map with one ignored pixel: rows of the confusion matrix are target classes, columns predictions.
PRED = np.array([[0, 1, 2],
                 [1, 1, 2],
                 [0, 2, 7]])          # the 7 sits on an ignored pixel and must not be looked at
TARGET = np.array([[0, 1, 1],
                   [1, 1, 2],
                   [0, 0, 255]])


def loop_scores(pred, target, num_classes, ignore_index=255):
    """The FCN definitions written out class by class, with boolean masks and no confusion matrix."""
    kept = target != ignore_index
    pred, target = pred[kept], target[kept]
    accuracies, ious, weighted = [], [], 0.0
    for c in range(num_classes):
        in_target, in_pred = target == c, pred == c
        true_positive = np.sum(in_target & in_pred)
        if in_target.any():
            accuracies.append(true_positive / in_target.sum())
        union = np.sum(in_target | in_pred)
        if union:
            ious.append(true_positive / union)
            weighted += in_target.sum() / target.size * true_positive / union
    return {"pixel_accuracy": np.mean(pred == target), "mean_accuracy": np.mean(accuracies),
            "mean_iou": np.mean(ious), "fw_iou": weighted}


# ---------------------------------------------------------------------------------------------- confusion
def test_confusion_matrix_of_a_3x3_map_is_hand_counted():
    expected = np.array([[2, 0, 1],      # target 0: twice right, once predicted 2
                         [0, 3, 1],      # target 1: three right, once predicted 2
                         [0, 0, 1]])     # target 2: right
    confusion = confusion_matrix(PRED, TARGET, num_classes=3)
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.dtype == np.int64


def test_scores_of_the_3x3_map_are_hand_computed():
    confusion = confusion_matrix(PRED, TARGET, num_classes=3)
    assert pixel_accuracy(confusion) == pytest.approx(6 / 8)
    assert mean_accuracy(confusion) == pytest.approx((2 / 3 + 3 / 4 + 1 / 1) / 3)
    np.testing.assert_allclose(per_class_iou(confusion), [2 / 3, 3 / 4, 1 / 3])
    assert mean_iou(confusion) == pytest.approx((2 / 3 + 3 / 4 + 1 / 3) / 3)
    assert frequency_weighted_iou(confusion) == pytest.approx(3 / 8 * 2 / 3 + 4 / 8 * 3 / 4 + 1 / 8 * 1 / 3)


def test_confusion_matrix_equals_a_2d_histogram():
    rng = np.random.default_rng(0)
    pred, target = rng.integers(0, 6, (4, 17, 13)), rng.integers(0, 6, (4, 17, 13))
    histogram, _, _ = np.histogram2d(target.ravel(), pred.ravel(), bins=6, range=[[0, 6], [0, 6]])
    np.testing.assert_array_equal(confusion_matrix(pred, target, 6), histogram)


def test_classes_absent_from_both_maps_are_left_out_of_the_means():
    with_absent = segmentation_scores(confusion_matrix(PRED, TARGET, num_classes=5))
    without = segmentation_scores(confusion_matrix(PRED, TARGET, num_classes=3))
    assert np.isnan(with_absent["per_class_iou"][3:]).all()
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert with_absent[key] == pytest.approx(without[key])


def test_a_class_predicted_but_absent_from_the_target_counts_with_iou_zero():
    pred, target = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    confusion = confusion_matrix(pred, target, num_classes=2)
    np.testing.assert_allclose(per_class_iou(confusion), [0.5, 0.0])
    assert mean_iou(confusion) == pytest.approx(0.25)
    assert mean_accuracy(confusion) == pytest.approx(0.5)      # class 1 has no target pixels: left out


def test_ignored_pixels_do_not_count_and_ignore_index_none_counts_all():
    target = np.array([3, 255, 1])
    np.testing.assert_array_equal(confusion_matrix(np.array([3, 0, 1]), target, 4).sum(), 2)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.array([3, 0, 1]), target, 4, ignore_index=None)
    np.testing.assert_array_equal(confusion_matrix(np.array([3, 0, 1]), np.array([3, 2, 1]), 4,
                                                   ignore_index=None).sum(), 3)


def test_empty_confusion_gives_nan_scores():
    scores = segmentation_scores(confusion_matrix(np.full((2, 2), 255), np.full((2, 2), 255), 3))
    assert all(np.isnan(scores[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda c: st.tuples(
    st.just(c),
    arrays(np.int64, (5, 7), elements=st.integers(0, c - 1)),
    arrays(np.int64, (5, 7), elements=st.sampled_from([*range(c), 255])))))
def test_scores_match_a_per_class_loop(case):
    num_classes, pred, target = case
    scores = segmentation_scores(confusion_matrix(pred, target, num_classes))
    if (target == 255).all():
        return
    expected = loop_scores(pred, target, num_classes)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert 0.0 <= scores[key] <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8).flatmap(lambda c: st.tuples(
    st.just(c), arrays(np.uint8, (6, 6), elements=st.integers(0, c - 1)))))
def test_perfect_prediction_scores_one(case):
    num_classes, target = case
    scores = segmentation_scores(confusion_matrix(target, target, num_classes))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert scores[key] == pytest.approx(1.0)


def test_torch_and_numpy_inputs_give_the_same_matrix():
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 4, (2, 9, 9)), rng.integers(0, 4, (2, 9, 9))
    target[0, :3] = 255
    expected = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4), expected)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), target.astype(np.uint8), 4), expected)


def test_meter_accumulates_like_one_confusion_over_all_batches():
    rng = np.random.default_rng(2)
    batches = [(rng.integers(0, 3, (2, 5, 5)), rng.integers(0, 3, (2, 5, 5))) for _ in range(3)]
    meter = SegmentationMeter(num_classes=3)
    for pred, target in batches:
        meter.update(pred, target)
    whole = confusion_matrix(np.concatenate([p for p, _ in batches]), np.concatenate([t for _, t in batches]), 3)
    np.testing.assert_array_equal(meter.confusion, whole)
    assert meter.compute()["mean_iou"] == pytest.approx(mean_iou(whole))
    meter.reset()
    assert meter.confusion.sum() == 0


# ---------------------------------------------------------------------------------------------- bad input
def test_labels_out_of_range_raise_naming_the_argument():
    with pytest.raises(ValueError, match="target has 1 pixel.*outside \\[0, 3\\) or ignore_index=255, e.g. 7"):
        confusion_matrix(np.zeros(3, int), np.array([0, 7, 255]), 3)
    with pytest.raises(ValueError, match="pred has 1 pixel.*e.g. -1"):
        confusion_matrix(np.array([0, -1, 2]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)


def test_float_labels_shape_mismatch_and_bad_num_classes_raise():
    with pytest.raises(ValueError, match="pred must hold integer class labels"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.zeros(2, int), np.zeros(2, int), 0)
    with pytest.raises(ValueError, match="square"):
        pixel_accuracy(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------- mask IoU
def test_mask_iou_of_two_overlapping_squares():
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True            # 4 pixels
    b[0, :2, 1:3] = True           # 4 pixels, 2 shared
    iou = mask_iou(a, b)
    assert iou.shape == (1, 2)
    np.testing.assert_allclose(iou, [[2 / 6, 0.0]])     # b[1] is empty: IoU 0, not NaN


def test_mask_iou_equals_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 20, 30)) < 0.3, rng.random((4, 20, 30)) < 0.5

    def encode(masks):
        return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))

    expected = mask_utils.iou(encode(a), encode(b), [0] * len(b))
    np.testing.assert_allclose(mask_iou(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(mask_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), expected, rtol=1e-6)


def test_mask_iou_of_no_masks_has_the_right_shape():
    assert mask_iou(np.zeros((0, 3, 3), bool), np.zeros((2, 3, 3), bool)).shape == (0, 2)


def test_mask_iou_rejects_soft_masks_and_mismatched_sizes():
    with pytest.raises(ValueError, match="masks_b must be binary"):
        mask_iou(np.zeros((1, 3, 3), bool), np.full((1, 3, 3), 0.7))
    with pytest.raises(ValueError, match="same \\[H, W\\]"):
        mask_iou(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 4), bool))
    with pytest.raises(ValueError, match="masks_a must be \\[N, H, W\\]"):
        mask_iou(np.zeros((3, 3), bool), np.zeros((1, 3, 3), bool))
