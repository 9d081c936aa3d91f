"""ILSVRC top-5 classification and localization error on hand-made cases (devkit eval_clsloc.m rules)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit.metrics.localization import (_box_iou, localization_error, localization_errors, top1_box_iou,
                                           top_k_error)

BOX = [0.0, 0.0, 10.0, 10.0]


def guesses(labels, boxes=None):
    """[N, K] labels and [N, K, 4] boxes from lists; every box defaults to BOX."""
    labels = np.array(labels)
    if boxes is None:
        boxes = np.broadcast_to(np.array(BOX), (*labels.shape, 4)).copy()
    return labels, np.array(boxes, dtype=float)


# ---------------------------------------------------------------------------------------------- classification
def test_top5_error_counts_an_image_right_when_its_label_is_among_the_guesses():
    pred = [[1, 2, 3, 4, 5],
            [1, 2, 3, 4, 5],
            [9, 9, 9, 9, 9]]
    assert top_k_error(pred, [5, 6, 9]) == pytest.approx(1 / 3)


def test_top1_error_uses_only_the_first_guess():
    pred = [[1, 2, 3, 4, 5], [2, 1, 3, 4, 5]]
    assert top_k_error(pred, [1, 1], k=1) == pytest.approx(0.5)
    assert top_k_error(pred, [1, 1], k=5) == 0.0


def test_classification_error_of_an_image_with_two_classes_is_the_fraction_missed():
    # devkit: e = (1/n) sum_k min_j d(c_j, C_k); one of the image's two classes is guessed.
    assert top_k_error([[1, 2, 3, 4, 5]], [[3, 8]]) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- localization
def test_localization_needs_the_right_label_and_half_overlap():
    gt_boxes = [np.array([BOX])] * 3
    labels, boxes = guesses([[7, 1, 1, 1, 1],        # right label, box identical to the ground truth
                             [1, 1, 1, 1, 1],        # perfect boxes, wrong labels
                             [7, 1, 1, 1, 1]])
    boxes[2, 0] = [5.0, 0.0, 15.0, 10.0]              # right label, IoU = 50 / 150 = 1/3
    np.testing.assert_array_equal(localization_errors(labels, boxes, [7, 7, 7], gt_boxes), [0, 1, 1])
    assert localization_error(labels, boxes, [7, 7, 7], gt_boxes) == pytest.approx(2 / 3)


def test_iou_of_exactly_one_half_counts_as_localized():
    labels, boxes = guesses([[7]], [[[0.0, 0.0, 10.0, 5.0]]])       # IoU with BOX = 50 / 100
    assert localization_error(labels, boxes, [7], [np.array([BOX])]) == 0.0
    assert localization_error(labels, boxes, [7], [np.array([BOX])], iou_threshold=0.51) == 1.0


def test_a_guess_may_localize_any_ground_truth_box_of_its_class():
    gt_boxes = [np.array([[100.0, 100.0, 110.0, 110.0], BOX])]         # two instances of class 7
    labels, boxes = guesses([[7, 2, 3, 4, 5]])
    assert localization_error(labels, boxes, [7], gt_boxes) == 0.0


def test_the_right_box_must_come_with_the_right_label_in_the_same_guess():
    # Guess 1 has the class with a wrong box, guess 2 the box with a wrong class: no single guess is right.
    labels, boxes = guesses([[7, 2]], [[[50.0, 50.0, 60.0, 60.0], BOX]])
    assert localization_error(labels, boxes, [7], [np.array([BOX])]) == 1.0


def test_box_of_another_class_does_not_localize():
    gt_boxes = [np.array([[50.0, 50.0, 60.0, 60.0], BOX])]
    labels, boxes = guesses([[7]])
    assert localization_error(labels, boxes, [np.array([7, 3])], gt_boxes) == pytest.approx(1.0)


def test_localization_error_of_an_image_with_two_classes_is_the_fraction_missed():
    gt_boxes = [np.array([BOX, [50.0, 50.0, 60.0, 60.0]])]
    labels, boxes = guesses([[7, 3]])                    # class 3 guessed, but at BOX, not at its own box
    assert localization_errors(labels, boxes, [np.array([7, 3])], gt_boxes)[0] == pytest.approx(0.5)


def test_guesses_after_the_kth_are_ignored():
    labels, boxes = guesses([[1, 2, 3, 4, 5, 7]])
    assert localization_error(labels, boxes, [7], [np.array([BOX])]) == 1.0
    assert localization_error(labels, boxes, [7], [np.array([BOX])], k=6) == 0.0
    assert top_k_error(labels, [7]) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 4), min_size=5, max_size=5), st.integers(0, 4),
                          st.floats(0, 20), st.floats(0, 20)), min_size=1, max_size=10))
def test_localization_error_is_at_least_classification_error(images):
    labels = np.array([guess for guess, _, _, _ in images])
    gt_labels = np.array([label for _, label, _, _ in images])
    boxes = np.array([[[x, y, x + 10, y + 10]] * 5 for _, _, x, y in images])
    gt_boxes = [np.array([BOX])] * len(images)
    loc = localization_error(labels, boxes, gt_labels, gt_boxes)
    assert 0.0 <= top_k_error(labels, gt_labels) <= loc <= 1.0


# ---------------------------------------------------------------------------------------------- top-1 box IoU
def test_top1_box_iou_uses_the_first_guess_and_the_closest_ground_truth_box():
    boxes = np.array([[[0.0, 0.0, 10.0, 5.0], BOX], [BOX, BOX]])
    gt_boxes = [np.array([[50.0, 50.0, 60.0, 60.0], BOX]), np.array([BOX])]
    assert top1_box_iou(boxes, gt_boxes) == pytest.approx((0.5 + 1.0) / 2)


def test_box_iou_agrees_with_scenekit_boxes():
    box_iou = pytest.importorskip("scenekit.boxes").box_iou
    rng = np.random.default_rng(0)
    a = rng.random((6, 4)) * 20
    b = rng.random((5, 4)) * 20
    a[:, 2:] += a[:, :2]
    b[:, 2:] += b[:, :2]
    np.testing.assert_allclose(_box_iou(a, b), box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_boxes_and_sizes_raise_naming_the_argument():
    labels, boxes = guesses([[7]])
    with pytest.raises(ValueError, match="pred_boxes has boxes with x2 < x1"):
        localization_error(labels, boxes[..., [2, 1, 0, 3]], [7], [np.array([BOX])])
    with pytest.raises(ValueError, match="gt_boxes\\[0\\] holds NaN"):
        localization_error(labels, boxes, [7], [np.array([[0.0, 0.0, np.nan, 1.0]])])
    with pytest.raises(ValueError, match="gt_boxes\\[0\\] is empty"):
        localization_error(labels, boxes, [7], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="gt_labels has 2 images but the predictions have 1"):
        top_k_error(labels, [7, 8])
    with pytest.raises(ValueError, match="gt_labels\\[0\\] has 2 labels for 1 boxes"):
        localization_error(labels, boxes, [np.array([7, 8])], [np.array([BOX])])
    with pytest.raises(ValueError, match="pred_labels must be \\[N, K\\]"):
        top_k_error([7], [7])
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_k_error(labels, [7], k=0)


def test_no_images_give_nan_errors():
    assert np.isnan(top_k_error(np.zeros((0, 5), int), []))
    assert np.isnan(localization_error(np.zeros((0, 5), int), np.zeros((0, 5, 4)), [], []))
