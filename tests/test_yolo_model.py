"""YOLO v1 and YOLOv2 (scenekit/models/yolo.py): grid encoding, eq. (3), priors, multi-scale, overfitting, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from scenekit.data.records import Dataset, Record
from scenekit.data.transforms import Letterbox
from scenekit.data.world import CATEGORIES, make_world
from scenekit.errors import DataError
from scenekit.models import yolo
from scenekit.models.yolo import (YoloCollate, YoloConfig, build_yolo, decode_yolo1, decode_yolo2, detect,
                                  encode_yolo1, encode_yolo2, multi_scale_sizes, yolo1_loss)

TINY = {"channels": [8, 16, 32, 32, 64], "head_channels": 64, "hidden": 256}


pytestmark = pytest.mark.usefixtures("one_thread")


def box_strategy():
    """An xyxy box inside the unit square with sides of at least 0.02."""
    def make(values):
        x1, y1, w, h = values
        return [x1, y1, min(1.0, x1 + w), min(1.0, y1 + h)]
    side = st.floats(0.02, 0.9)
    corner = st.floats(0.0, 0.97)
    return st.tuples(corner, corner, side, side).map(make).filter(lambda b: b[2] - b[0] > 0.01 and b[3] - b[1] > 0.01)


# ------------------------------------------------------------------------------------------------ YOLO v1
def test_yolo1_output_is_7x7x30_for_20_classes():
    model = build_yolo(YoloConfig(version=1, num_classes=20, image_size=64, channels=(4, 8), hidden=32)).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 64))
    assert output.shape == (2, 7, 7, 30)                     # S x S x (5B + C) = 7 x 7 x (5 * 2 + 20)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy(), min_size=1, max_size=6), st.integers(2, 9), st.integers(1, 3))
def test_yolo1_ground_truth_encoded_to_the_grid_decodes_to_the_same_box(boxes, grid, boxes_per_cell):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    labels = torch.arange(len(boxes)) % 3
    encoded = encode_yolo1(boxes, labels, grid, num_classes=3)
    # A prediction equal to the target in every one of the cell's B predictors.
    output = torch.cat([encoded["coords"], torch.ones(grid, grid, 1)] * boxes_per_cell + [encoded["classes"]], -1)
    decoded, confidence, probabilities = decode_yolo1(output[None], boxes_per_cell)
    cells = encoded["has_object"]
    for j in range(boxes_per_cell):
        torch.testing.assert_close(decoded[0][cells][:, j], encoded["boxes"][cells], atol=1e-5, rtol=0)
    # Every encoded box is one of the inputs, in the cell that holds its centre, with its class.
    for box, label, row_col in zip(encoded["boxes"][cells], probabilities[0][cells].argmax(-1), cells.nonzero()):
        match = (boxes - box).abs().amax(1) < 1e-6
        assert match.any()
        assert int(labels[match][0]) == int(label)
        centre = (box[:2] + box[2:]) / 2
        assert (torch.clamp((centre * grid).floor().long(), max=grid - 1).flip(0) == row_col).all()
    # Centres in distinct cells all survive.
    centres = ((boxes[:, :2] + boxes[:, 2:]) / 2 * grid).floor().clamp(max=grid - 1)
    assert int(cells.sum()) == len({tuple(c.tolist()) for c in centres})


def test_encoders_reject_flat_or_non_finite_boxes():
    for bad in ([[0.1, 0.1, 0.1, 0.5]], [[0.1, float("nan"), 0.2, 0.5]], [[0.4, 0.1, 0.2, 0.5]]):
        with pytest.raises(ValueError, match="boxes"):
            encode_yolo1(torch.tensor(bad), torch.tensor([0]), 7, 2)
        with pytest.raises(ValueError, match="boxes"):
            encode_yolo2(torch.tensor(bad), (4, 4), torch.tensor([[0.2, 0.2]]))
    empty = encode_yolo1(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, 2)
    assert empty["coords"].shape == (3, 3, 4) and not empty["has_object"].any()
    assert encode_yolo2(torch.zeros(0, 4), (4, 4), torch.tensor([[0.2, 0.2]]))["xy"].shape == (0, 2)


def test_yolo1_loss_matches_eq3_computed_by_hand():
    # S = 2, B = 2, C = 2. One object: box (0.1, 0.1)-(0.4, 0.5): centre (0.25, 0.3), w 0.3, h 0.4, class 1,
    # so cell (row 0, col 0), offsets x^ = 0.25 * 2 - 0 = 0.5, y^ = 0.3 * 2 - 0 = 0.6.
    output = torch.zeros(1, 2, 2, 12)
    output[0, 0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8,      # predictor 0: centre (0.25, 0.25), w = h = 0.25
                                    0.2, 0.2, 0.2, 0.2, 0.3,      # predictor 1: centre (0.1, 0.1), w = h = 0.04
                                    0.2, 0.7])                    # P(class 0), P(class 1)
    output[0, 0, 1, [4, 9]] = torch.tensor([0.1, 0.2])
    output[0, 1, 0, [4, 9]] = torch.tensor([-0.3, 0.0])
    output[0, 1, 1, [4, 9]] = torch.tensor([0.5, 0.4])
    output[0, 0, 1, 10:] = output[0, 1, 0, 10:] = output[0, 1, 1, 10:] = 0.9     # no object: class not counted
    target = [{"boxes": torch.tensor([[0.1, 0.1, 0.4, 0.5]]), "labels": torch.tensor([1])}]

    # Predictor 0's box (0.125, 0.125)-(0.375, 0.375) lies inside the ground truth: IoU = 0.0625 / 0.12.
    # Predictor 1's box (0.08, 0.08)-(0.12, 0.12) overlaps it by 0.02 x 0.02: IoU = 0.0004 / 0.1212.
    iou0 = 0.0625 / 0.12
    assert 0.0004 / 0.1212 < iou0                                  # so predictor 0 is responsible
    expected = {
        "coordinates": 5 * ((0.5 - 0.5) ** 2 + (0.5 - 0.6) ** 2 + (0.5 - math.sqrt(0.3)) ** 2
                            + (0.5 - math.sqrt(0.4)) ** 2),
        "object": (0.8 - iou0) ** 2,
        "no_object": 0.5 * (0.3 ** 2 + 0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2 + 0.0 ** 2 + 0.5 ** 2 + 0.4 ** 2),
        "class": (0.2 - 0) ** 2 + (0.7 - 1) ** 2,
    }
    losses = yolo1_loss(output, target, boxes_per_cell=2)
    for name, value in expected.items():
        assert float(losses[name]) == pytest.approx(value, rel=1e-5), name

    # The responsible predictor is the one of highest IoU, wherever it sits in the cell.
    swapped = output.clone()
    swapped[0, :, :, 0:5], swapped[0, :, :, 5:10] = output[0, :, :, 5:10], output[0, :, :, 0:5]
    for name, value in yolo1_loss(swapped, target, boxes_per_cell=2).items():
        assert float(value) == pytest.approx(expected[name], rel=1e-5), name
    # Without rescoring the confidence target is 1; images are averaged.
    assert float(yolo1_loss(output, target, 2, rescore=False)["object"]) == pytest.approx(0.2 ** 2, rel=1e-5)
    doubled = yolo1_loss(torch.cat([output, output]), target * 2, 2)
    assert float(doubled["coordinates"]) == pytest.approx(expected["coordinates"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ YOLOv2
@settings(max_examples=80, deadline=None)
@given(box_strategy(), st.integers(2, 13), st.integers(1, 6), st.booleans(), st.integers(0, 10_000))
def test_yolo2_ground_truth_encoded_to_its_anchor_decodes_to_the_same_box(box, grid, num_anchors, direct, seed):
    anchors = torch.from_numpy(np.random.default_rng(seed).uniform(0.05, 0.8, (num_anchors, 2))).float()
    boxes = torch.tensor([box])
    encoded = encode_yolo2(boxes, (grid, grid), anchors, direct_location=direct)
    output = torch.zeros(1, grid, grid, num_anchors, 5 + 3)
    xy = torch.logit(encoded["xy"].double()).float() if direct else encoded["xy"]    # sigma(t) = offset
    slot = (0, int(encoded["row"]), int(encoded["col"]), int(encoded["anchor"]))
    output[slot][:2], output[slot][2:4] = xy[0], encoded["wh"][0]
    decoded, _, _ = decode_yolo2(output, anchors, direct_location=direct)
    torch.testing.assert_close(decoded[slot], boxes[0], atol=2e-5, rtol=0)
    # The responsible anchor is the prior whose shape overlaps the box's most.
    w, h = box[2] - box[0], box[3] - box[1]
    shape_iou = [min(w, a) * min(h, b) / (w * h + a * b - min(w, a) * min(h, b)) for a, b in anchors.tolist()]
    assert shape_iou[int(encoded["anchor"])] == pytest.approx(max(shape_iou), abs=1e-6)


@pytest.mark.parametrize("classes", [1, 6, 20])
def test_yolo2_class_probabilities_are_the_softmax_of_the_class_scores(classes):
    output = torch.randn(2, 4, 5, 3, 5 + classes) * 4
    _, objectness, probabilities = decode_yolo2(output, torch.tensor([[0.1, 0.2], [0.3, 0.3], [0.5, 0.4]]))
    scores = output[..., 5:].double()
    expected = scores.exp() / scores.exp().sum(-1, keepdim=True)          # softmax from its definition
    torch.testing.assert_close(probabilities.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(objectness.double(), 1 / (1 + (-output[..., 4].double()).exp()), rtol=0, atol=1e-6)


def test_detect_refuses_non_finite_network_outputs_naming_the_image():
    model = build_yolo(YoloConfig(version=2, num_classes=2, image_size=64, channels=(4, 8, 8), head_channels=8,
                                  anchors=[[0.2, 0.3]])).eval()
    with torch.no_grad():
        model.predict[-1].bias.fill_(float("nan"))          # as diverged training leaves it
    images = [np.zeros((64, 64, 3), np.uint8), np.zeros((40, 80, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"NaN or infinite for image\(s\) \[0, 1\]"):
        detect(model, images, torch.device("cpu"), class_ids=[1, 2])


def test_yolo2_direct_location_keeps_the_centre_in_its_cell():
    output = torch.zeros(1, 3, 3, 1, 6)
    output[..., 0:2] = torch.tensor([-50.0, 50.0])                 # extreme t_x, t_y
    boxes, objectness, probabilities = decode_yolo2(output, torch.tensor([[0.2, 0.2]]))
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2                # [1, 3, 3, 1, 2]
    cols = torch.arange(3).view(1, 1, 3, 1).float()
    assert ((centres[..., 0] >= cols / 3 - 1e-6) & (centres[..., 0] <= (cols + 1) / 3 + 1e-6)).all()
    unbounded, _, _ = decode_yolo2(output, torch.tensor([[0.2, 0.2]]), direct_location=False)
    assert float(unbounded[..., 0].min()) < -1                     # RPN offsets can leave the image
    assert torch.allclose(objectness, torch.full_like(objectness, 0.5))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(1, 3, 3, 1))


def test_yolo2_loss_is_zero_for_coordinates_of_a_perfect_prediction_and_penalises_background():
    anchors = torch.tensor([[0.2, 0.3], [0.5, 0.5]])
    box = torch.tensor([[0.3, 0.2, 0.55, 0.5]])
    encoded = encode_yolo2(box, (4, 4), anchors)
    output = torch.full((1, 4, 4, 2, 5 + 2), -30.0)
    slot = (0, int(encoded["row"]), int(encoded["col"]), int(encoded["anchor"]))
    output[slot][:2] = torch.logit(encoded["xy"][0].double()).float()
    output[slot][2:4] = encoded["wh"][0]
    output[slot][4] = 30.0                                         # objectness 1 = the IoU of a perfect box
    output[slot][5:] = torch.tensor([-30.0, 30.0])                 # class 1
    losses = yolo.yolo2_loss(output, [{"boxes": box, "labels": torch.tensor([1])}], anchors)
    for name in ("coordinates", "object", "no_object", "class"):
        assert float(losses[name]) < 1e-6, name
    output[0, 0, 0, 0, 4] = 0.0                                    # a background slot says 0.5
    assert float(yolo.yolo2_loss(output, [{"boxes": box, "labels": torch.tensor([1])}], anchors)["no_object"]) \
        == pytest.approx(0.25, rel=1e-4)


def test_passthrough_stacks_each_2x2_neighbourhood_into_channels():
    fine = torch.arange(16.0).view(1, 1, 4, 4)
    stacked = torch.nn.functional.pixel_unshuffle(fine, 2)         # what Yolo2.forward applies
    assert stacked.shape == (1, 4, 2, 2)
    assert stacked[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]     # the top-left 2 x 2 block
    assert stacked[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]
    model = build_yolo(YoloConfig(version=2, num_classes=3, channels=(4, 8, 8), head_channels=8, num_anchors=2))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="multiples of the stride 8"):
        model(torch.rand(1, 3, 36, 32))
    # The thinning 1 x 1 convolution keeps 1/8 of the fine map's width unless told: 4 x its width is stacked.
    assert model.passthrough[0].out_channels == 1 and model.predict[0][0].in_channels == 8 + 4 * 1
    wide = build_yolo(YoloConfig(version=2, num_classes=3, channels=(4, 8, 8), head_channels=8, num_anchors=2,
                                 passthrough_channels=6))
    assert wide.passthrough[0].out_channels == 6 and wide.predict[0][0].in_channels == 8 + 4 * 6
    assert wide(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4, 2, 8)
    with pytest.raises(DataError, match="passthrough_channels"):
        yolo.recipe({1: "a"}, name="yolo2", passthrough_channels=0)


def _boxes_dataset(shapes_and_sizes):
    records = []
    for index, (width, height, shapes) in enumerate(shapes_and_sizes, start=1):
        boxes = [[5.0, 5.0, 5.0 + w, 5.0 + h] for w, h in shapes]
        records.append(Record(image_id=index, file_name=f"{index}.png", width=width, height=height,
                              boxes=np.array(boxes), labels=np.ones(len(boxes), dtype=np.int64)))
    return Dataset(records=records, categories={1: "thing"}, image_root=None, name="shapes")


def test_kmeans_priors_of_known_box_shapes_become_the_models_anchors():
    # Two shapes only: 10 x 20 px and 50 x 40 px in 100 x 100 images, and the same shapes doubled in
    # 200 x 100 images (relative to the longer side, where letterboxing puts them, they are the same).
    small, large = (10.0, 20.0), (50.0, 40.0)
    data = _boxes_dataset([(100, 100, [small, large, small])] * 4
                          + [(200, 100, [(2 * small[0], 2 * small[1]), (2 * large[0], 2 * large[1])])] * 3)
    recipe = yolo.recipe(data.categories, name="yolo2", anchors="kmeans", num_anchors=2, image_size=64,
                         channels=[4, 8, 8, 8, 8], head_channels=8, multi_scale=False)
    model = recipe.build_model(recipe.model_config)
    recipe.make_dataset(data, True)
    expected = torch.tensor([[0.1, 0.2], [0.5, 0.4]])
    torch.testing.assert_close(model.anchors, expected)
    np.testing.assert_allclose(recipe.model_config["anchors"], [[0.1, 0.2], [0.5, 0.4]], rtol=1e-9)
    # The priors are the ones the loss assigns boxes to: a 0.1 x 0.2 box goes to prior 0.
    assert int(encode_yolo2(torch.tensor([[0.0, 0.0, 0.1, 0.2]]), (2, 2), model.anchors)["anchor"]) == 0
    # A model rebuilt from the stored configuration has them too.
    torch.testing.assert_close(recipe.build_model(recipe.model_config).anchors, expected)
    # Hand-picked priors are Faster R-CNN's 9 shapes (3 areas x 3 ratios).
    hand = yolo.recipe(data.categories, name="yolo2", anchors="hand", image_size=64, channels=[4, 8, 8, 8, 8])
    assert len(hand.build_model(hand.model_config).anchors) == 9


def test_multi_scale_batches_change_size_every_10_batches():
    assert multi_scale_sizes(416) == list(range(320, 609, 32))     # the paper's {320, 352, ..., 608}
    sizes = multi_scale_sizes(128)
    assert sizes == [96, 128, 160, 192]
    collate = YoloCollate(sizes, every=10, seed=3)
    item = (torch.rand(3, 192, 192), {"boxes": torch.tensor([[19.2, 38.4, 96.0, 192.0]]), "labels": torch.tensor([0])})
    seen = []
    for _ in range(60):
        images, targets = collate([item, item])
        size = images.shape[-1]
        assert images.shape == (2, 3, size, size) and size % 32 == 0 and size in sizes
        torch.testing.assert_close(targets[0]["boxes"], item[1]["boxes"] * size / 192)
        seen.append(size)
    blocks = [seen[i:i + 10] for i in range(0, 60, 10)]
    assert all(len(set(block)) == 1 for block in blocks)           # one size per 10 batches
    assert len({block[0] for block in blocks}) > 1                 # and it changes
    assert torch.equal(item[1]["boxes"], torch.tensor([[19.2, 38.4, 96.0, 192.0]]))   # input left alone
    with pytest.raises(DataError, match="fully convolutional"):
        yolo.recipe({1: "a"}, name="yolo1", multi_scale=True)


def test_detect_maps_a_letterboxed_prediction_back_to_the_image():
    # A stub network that "sees" one box: the detection must come back in the original image's pixels,
    # scored P(class | object) x objectness.
    model = build_yolo(YoloConfig(version=2, num_classes=3, image_size=64, channels=(4, 8, 8, 8, 8),
                                  head_channels=8, anchors=[[0.3, 0.3], [0.6, 0.2]]))
    image = np.zeros((100, 200, 3), dtype=np.uint8)                  # H 100, W 200
    original = np.array([[40.0, 30.0, 120.0, 70.0]])
    _, moved = Letterbox(64)(image, {"boxes": original})
    encoded = encode_yolo2(torch.tensor(moved["boxes"] / 64, dtype=torch.float32), (2, 2), model.anchors)
    output = torch.full((1, 2, 2, 2, 8), -20.0)
    slot = (0, int(encoded["row"]), int(encoded["col"]), int(encoded["anchor"]))
    output[slot][:2] = torch.logit(encoded["xy"][0].double()).float()
    output[slot][2:4] = encoded["wh"][0]
    output[slot][4] = math.log(0.8 / 0.2)                            # objectness 0.8
    output[slot][5:] = torch.tensor([0.0, math.log(3.0), 0.0])       # softmax (0.2, 0.6, 0.2)
    model.forward = lambda images, targets=None: output
    found = detect(model, [image], torch.device("cpu"), class_ids=[4, 7, 9], score_threshold=0.1)[0]
    assert found["labels"].tolist() == [7, 4, 9]                     # same box, three class-specific scores
    torch.testing.assert_close(found["scores"], torch.tensor([0.48, 0.16, 0.16], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(found["boxes"][0], torch.tensor(original[0]), atol=1e-3, rtol=0)


def test_detect_undoes_each_images_own_letterbox_in_a_batch_of_different_shapes():
    # Three images of different shapes in one call; the middle one has no detection. Each box must come back
    # in its own image's pixels (and clipped to it), in the same order as the images.
    model = build_yolo(YoloConfig(version=2, num_classes=1, image_size=64, channels=(4, 8, 8, 8, 8),
                                  head_channels=8, anchors=[[0.3, 0.3]]))
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((50, 50, 3), np.uint8), np.zeros((300, 60, 3), np.uint8)]
    originals = [np.array([[40.0, 30.0, 120.0, 70.0]]), None, np.array([[10.0, 200.0, 50.0, 290.0]])]
    output = torch.full((3, 2, 2, 1, 6), -20.0)
    for index, original in enumerate(originals):
        if original is None:
            continue
        _, moved = Letterbox(64)(images[index], {"boxes": original})
        encoded = encode_yolo2(torch.tensor(moved["boxes"] / 64, dtype=torch.float32), (2, 2), model.anchors)
        slot = (index, int(encoded["row"]), int(encoded["col"]), 0)
        output[slot][:2] = torch.logit(encoded["xy"][0].double()).float()
        output[slot][2:4] = encoded["wh"][0]
        output[slot][4:] = torch.tensor([math.log(0.9 / 0.1), 0.0])
    model.forward = lambda batch, targets=None: output
    found = detect(model, images, torch.device("cpu"), class_ids=[3], score_threshold=0.5)
    assert [len(f["boxes"]) for f in found] == [1, 0, 1]
    assert found[1]["boxes"].shape == (0, 4) and found[1]["labels"].dtype == torch.int64
    for f, original in zip(found, originals):
        if original is not None:
            torch.testing.assert_close(f["boxes"][0], torch.tensor(original[0]), atol=1e-3, rtol=0)
            assert f["labels"].tolist() == [3] and f["scores"].tolist() == pytest.approx([0.9], abs=1e-6)


def test_strided_stem_is_a_stride_2_convolution_with_the_same_output_grid():
    torch.manual_seed(0)
    plain = build_yolo(YoloConfig(version=2, num_classes=3, channels=(4, 8, 8), head_channels=8, num_anchors=2))
    strided = build_yolo(YoloConfig(version=2, num_classes=3, channels=(4, 8, 8), head_channels=8, num_anchors=2,
                                    strided_stem=True)).eval()
    images = torch.rand(2, 3, 32, 32)
    assert strided(images).shape == plain(images).shape == (2, 4, 4, 2, 8)
    pools = [m for m in strided.features.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == len([m for m in plain.features.modules() if isinstance(m, torch.nn.MaxPool2d)]) - 1
    # The first block by hand: 3x3 convolution with stride 2 and padding 1, batch norm (eval), leaky ReLU 0.1.
    conv, norm = strided.features.fine[0][0], strided.features.fine[0][1]
    reference = torch.nn.functional.conv2d(images, conv.weight, stride=2, padding=1)         # [2, 4, 16, 16]
    reference = (reference - norm.running_mean.view(1, -1, 1, 1)) / torch.sqrt(norm.running_var + norm.eps
                                                                               ).view(1, -1, 1, 1)
    reference = reference * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    reference = torch.where(reference > 0, reference, 0.1 * reference)
    torch.testing.assert_close(strided.features.fine[0](images), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="strided_stem"):
        yolo.recipe({1: "a"}, name="yolo2", channels=[8], image_size=64, strided_stem=True)
    # The recipe's switch reaches the stored configuration, so a checkpoint rebuilds the same network.
    recipe = yolo.recipe({1: "a"}, name="yolo2", channels=[4, 8, 8], head_channels=8, image_size=64,
                         strided_stem=True)
    assert recipe.model_config["strided_stem"] is True
    assert recipe.build_model(recipe.model_config).features.fine[0][0].stride == (2, 2)


def test_detect_on_a_batch_equals_nms_per_image_and_class():
    # detect runs one class-aware NMS over the whole batch; the reference is plain greedy NMS run on every
    # (image, class) of the same decoded scores, merged by score and cut at max_detections per image.
    from scenekit.models.backbones import inference_copy
    from scenekit.nms import nms

    torch.manual_seed(0)
    model = build_yolo(YoloConfig(version=2, num_classes=3, image_size=64, channels=(4, 8, 8), head_channels=8,
                                  anchors=[[0.2, 0.3], [0.5, 0.4]])).eval()
    images = [np.random.default_rng(k).integers(0, 256, (64, 64, 3), dtype=np.uint8) for k in range(3)]
    found = detect(model, images, torch.device("cpu"), class_ids=[2, 5, 9], score_threshold=0.05,
                   nms_threshold=0.3, max_detections=7)
    with torch.no_grad():      # the network detect runs: batch norms folded into the convolutions
        output = inference_copy(model)(torch.stack([yolo.letterbox(image, 64)[0] for image in images]))
    boxes, objectness, probabilities = decode_yolo2(output, model.anchors)
    scores = (objectness[..., None] * probabilities).reshape(3, -1, 3).double()     # [N, P, C]
    boxes = boxes.reshape(3, -1, 4).double() * 64
    for index in range(3):
        kept = []
        for label in range(3):
            candidates = (scores[index, :, label] > 0.05).nonzero().flatten()
            keep = nms(boxes[index, candidates], scores[index, candidates, label], 0.3)
            kept += [(float(scores[index, p, label]), label, p) for p in candidates[keep].tolist()]
        kept = sorted(kept, key=lambda item: -item[0])[:7]
        assert len(kept) == 7 or len(kept) == len(found[index]["scores"])
        assert found[index]["scores"].tolist() == pytest.approx([score for score, _, _ in kept], abs=1e-12)
        assert found[index]["labels"].tolist() == [[2, 5, 9][label] for _, label, _ in kept]
        torch.testing.assert_close(found[index]["boxes"], boxes[index, [p for _, _, p in kept]].clamp(0, 64))
    assert detect(model, [], torch.device("cpu"), class_ids=[2, 5, 9]) == []


def test_recompute_batch_norm_sets_running_statistics_to_the_batch_statistics_at_the_test_size():
    torch.manual_seed(0)
    data = make_world(4, image_size=96, min_objects=1, max_objects=2, seed=2)
    model = build_yolo(YoloConfig(version=2, num_classes=6, channels=(4, 8, 8), head_channels=8, num_anchors=2))
    first = model.features.fine[0]                                   # conv -> batch norm -> leaky ReLU
    first[1].running_mean.fill_(5.0)                                 # stale statistics of some other size
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    yolo.recompute_batch_norm(model, data, sorted(data.categories), 64, images=4, batch_size=4)
    images = torch.stack([yolo.letterbox(record.image, 64)[0] for record in data.records])   # [4, 3, 64, 64]
    activations = torch.nn.functional.conv2d(images, first[0].weight, padding=1)          # [4, 4, 64, 64]
    torch.testing.assert_close(first[1].running_mean, activations.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first[1].running_var, activations.var(dim=(0, 2, 3), unbiased=True),
                               atol=1e-5, rtol=1e-4)
    assert not model.training and first[1].momentum == 0.1         # back to eval, momentum restored
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key     # learned weights untouched


def test_multi_scale_recipe_evaluates_with_statistics_re_estimated_on_training_images_at_the_test_size():
    torch.manual_seed(0)
    train, val = (make_world(n, image_size=96, min_objects=1, max_objects=2, seed=s) for n, s in ((6, 2), (2, 3)))
    options = dict(image_size=64, channels=(4, 8, 8), head_channels=8, num_anchors=2, anchors="hand")
    recipe = yolo.recipe(train.categories, name="yolo2", precise_bn=5, **options)
    model = recipe.build_model(recipe.model_config)
    recipe.make_dataset(train, True)
    norm = model.features.fine[0][1]
    norm.running_mean.fill_(5.0)                                  # as left by the sizes drawn last
    recipe.evaluate(model, val, torch.device("cpu"))
    expected = recipe.build_model(recipe.model_config)
    expected.load_state_dict({k: v for k, v in model.state_dict().items()})
    yolo.recompute_batch_norm(expected, train, sorted(train.categories), 64, images=5)
    torch.testing.assert_close(norm.running_mean, expected.features.fine[0][1].running_mean)
    assert float(norm.running_mean.abs().max()) < 5.0
    # Off with precise_bn=0, and for a model without multi-scale training (one size: nothing to correct).
    for off in (dict(precise_bn=0), dict(multi_scale=False)):
        recipe = yolo.recipe(train.categories, name="yolo2", **options, **off)
        model = recipe.build_model(recipe.model_config)
        recipe.make_dataset(train, True)
        model.features.fine[0][1].running_mean.fill_(5.0)
        recipe.evaluate(model, val, torch.device("cpu"))
        assert bool((model.features.fine[0][1].running_mean == 5.0).all())


# ------------------------------------------------------------------------------------------------ overfitting
def _overfit(name: str, steps: int, lr: float = 2e-3, **options):
    torch.manual_seed(0)
    data = make_world(2, image_size=96, min_objects=1, max_objects=3, seed=1)
    recipe = yolo.recipe(data.categories, name=name, image_size=96, flip=False, multi_scale=False, dropout=0.0,
                         **TINY, **options)
    model = recipe.build_model(recipe.model_config)
    train_set = recipe.make_dataset(data, True)
    images, targets = recipe.collate([train_set[0], train_set[1]])
    optimizer = torch.optim.Adam(model.parameters(), lr)
    model.train()
    history = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    found = recipe.predict(model, [record.image for record in data.records], torch.device("cpu"))
    return data, history, found


def _assert_every_object_detected(data, found):
    from scenekit.boxes import box_iou

    for record, detections in zip(data.records, found):
        confident = detections["scores"] > 0.5
        boxes, labels = detections["boxes"][confident], detections["labels"][confident]
        iou = box_iou(torch.tensor(record.boxes), boxes)                        # [objects, detections]
        for k, label in enumerate(record.labels):
            same_class = labels == int(label)
            assert bool(same_class.any()) and float(iou[k][same_class].max()) > 0.7, (record.image_id, k)
        assert len(boxes) == record.num_objects                                # and nothing else


def test_yolo1_overfits_two_images():
    data, history, found = _overfit("yolo1", 120, lr=1e-3)
    assert np.mean(history[-10:]) < 0.1 * np.mean(history[:10])
    _assert_every_object_detected(data, found)


def test_yolo2_overfits_two_images():
    data, history, found = _overfit("yolo2", 80, anchors="kmeans", num_anchors=5)
    assert np.mean(history[-10:]) < 0.05 * np.mean(history[:10])
    _assert_every_object_detected(data, found)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_yolo2_and_streams_a_folder_with_frames_per_second(tmp_path, capsys, coco_ap50):
    from pathlib import Path

    from scenekit.boxes import box_iou
    from scenekit.cli import main

    # 60 steps on two training images overfit them: streamed back, they score AP50 0.77 under each CPU kernel
    # (ATEN_CPU_CAPABILITY default, avx2, avx512); an untrained network's boxes score 0.11.
    out = tmp_path / "run"
    code = main(["train", "yolo2", "--data", "world", "--train-images", "2", "--val-images", "1", "--image-size",
                 "64", "--epochs", "60", "--batch-size", "2", "--lr", "4e-3", "--out", str(out), "--log-every", "0",
                 "--option", "channels=[8,16,32,32,64]", "--option", "head_channels=64", "--option", "anchors=kmeans",
                 "--option", "num_anchors=5", "--option", "warmup_steps=10", "--option", "flip=false",
                 "--option", "multi_scale=false", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_metric"] == "mAP50" and "images_per_s" in summary["final"]
    frames = tmp_path / "frames"
    frames.mkdir()
    training = make_world(2, image_size=128, split="train")        # what it trained on: the world at >= 128 px
    names = [f"{index:03d}.png" for index in range(2)]
    for name, record in zip(names, training.records):
        Image.fromarray(record.image).save(frames / name)
    (frames / "notes.txt").write_text("not an image")
    code = main(["predict", "--stream", str(frames), "--checkpoint", str(out / "last.pt"), "--out",
                 str(tmp_path / "pred"), "--json"])
    assert code == 0
    stream = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stream["frames"] == 2 and stream["fps"] > 0
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert results and stream["detections"] == len(results)
    assert coco_ap50(training.records, names, results) >= 0.5
    for k, (name, record) in enumerate(zip(names, training.records), start=1):
        mine = [r for r in results if (Path(r["file_name"]).name == name if "file_name" in r
                                       else r["image_id"] == k)]
        best = max(mine, key=lambda r: r["score"])                 # the most confident one finds a known object
        x, y, w, h = best["bbox"]
        same_class = record.labels == best["category_id"]
        assert same_class.any(), (name, best)
        iou = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64),
                      torch.tensor(record.boxes[same_class]))
        assert float(iou.max()) >= 0.5, (name, best)
    assert main(["predict", "--stream", str(tmp_path / "missing"), "--checkpoint", str(out / "best.pt")]) == 2


# ------------------------------------------------------------------------------------------------ options
def _yolo2_stored_before_options_dataclass():
    """The options a yolo2 checkpoint stored before they were declared once (`YoloOptions`), read off the old
    hand-written dict: resolved from the version (image_size, batch_norm, dropout, multi_scale, sizes, precise_bn,
    nms_threshold), epochs and lr as given; backbone and backbone_weights are checked, never stored."""
    return {"version": 2, "image_size": 160, "channels": [16, 32, 64, 128, 256], "batch_norm": True,
            "strided_stem": False, "grid": 7, "boxes_per_cell": 2, "hidden": 512, "dropout": 0.0,
            "anchors": "kmeans", "num_anchors": 5, "head_channels": 256, "direct_location": True,
            "passthrough": True, "passthrough_channels": None, "multi_scale": True, "scale_every": 10,
            "sizes": [128, 160, 192, 224], "test_size": None, "epochs": None, "lr": None, "optimizer": "adamw",
            "weight_decay": 0.0005, "warmup_steps": 50, "flip": True, "precise_bn": 512, "seed": 0,
            "slice_factor": 2.5, "augment": "world", "score_threshold": 0.005, "nms_threshold": 0.45,
            "max_detections": 100}


def test_yolo_default_recipes_store_the_options_checkpoints_always_stored():
    from scenekit.models.registry import make_recipe

    yolo2 = _yolo2_stored_before_options_dataclass()
    yolo1 = {**yolo2, "version": 1, "image_size": 128, "batch_norm": False, "dropout": 0.5, "multi_scale": False,
             "sizes": [96, 128, 160, 192], "precise_bn": 0, "nms_threshold": 0.5}
    for name, before in (("yolo2", yolo2), ("yolo1", yolo1)):
        stored = make_recipe(name, CATEGORIES).options
        assert list(stored.items()) == list(before.items())
        assert [type(v) for v in stored.values()] == [type(v) for v in before.values()]    # 0.0 not 0, lists
        again = make_recipe(name, CATEGORIES, stored=stored)
        assert again.options == stored and again.model_config == make_recipe(name, CATEGORIES).model_config
    options = yolo.recipe({1: "a"}, name="yolo2", anchors=[[1, 2]], sizes=(64, 96)).options
    assert options["anchors"] == [[1.0, 2.0]] and options["sizes"] == [64, 96]
    assert yolo.recipe({1: "a"}, name="yolo2", anchors="hand").options["anchors"] == "hand"


def test_yolo_recipe_names_a_misspelt_or_mistyped_option():
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean image_size"):
        yolo.recipe({1: "a"}, name="yolo2", image_sise=64)
    with pytest.raises(DataError, match="sizes"):
        yolo.recipe({1: "a"}, name="yolo2", sizes=128)                  # a list of sides, not one
    specs = model_options("yolo1")
    assert specs["version"].default == 1 and specs["anchors"].kind is None and specs["sizes"].kind == "list"
    assert all(spec.help and "\n" not in spec.help for spec in specs.values())
