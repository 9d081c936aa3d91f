"""Overfeat: fully connected layers as convolutions, exact sliding windows, multi-scale dense boxes, merging."""

from __future__ import annotations

import pytest
import torch

from scenekit.models import localizer as loc


def _model(class_specific=True, norm="batch"):
    torch.manual_seed(1)
    model = loc.Localizer(loc.LocalizerConfig(num_classes=3, image_size=32, class_specific=class_specific,
                                              channels=(4, 8), hidden=16, norm=norm))
    for module in model.modules():                 # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("class_specific", [True, False])
def test_convolutional_heads_equal_fully_connected_on_training_size(class_specific):
    model = _model(class_specific)
    network = loc.FullyConvolutionalLocalizer(model).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits, boxes = model(images)
        dense_logits, dense_boxes = network(images)
    assert dense_logits.shape == (3, 3, 1, 1)
    torch.testing.assert_close(dense_logits[..., 0, 0], logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(dense_boxes[..., 0, 0], boxes, rtol=0, atol=1e-5)


@pytest.mark.parametrize("class_specific", [True, False])
def test_every_output_cell_is_the_localizer_on_its_window(class_specific):
    model = _model(class_specific)
    network = loc.FullyConvolutionalLocalizer(model).eval()
    image = torch.rand(1, 3, 56, 72)
    with torch.no_grad():
        dense_logits, dense_boxes = network(image)
        rows, cols = dense_logits.shape[-2:]
        assert (rows, cols) == ((56 - 32) // 4 + 1, (72 - 32) // 4 + 1)      # stride 4 for two stages
        for i in range(rows):
            for j in range(cols):
                crop = image[..., 4 * i:4 * i + 32, 4 * j:4 * j + 32]
                logits, boxes = model(crop)
                torch.testing.assert_close(dense_logits[..., i, j], logits, rtol=0, atol=1e-5)
                torch.testing.assert_close(dense_boxes[..., i, j], boxes, rtol=0, atol=1e-5)


def _constant_model(box=(0.0, 0.0, 1.0, 1.0), favourite=2):
    """Every window says class `favourite` and the box `box` (window units)."""
    model = _model(True)
    with torch.no_grad():
        model.classifier[3].weight.zero_()
        model.classifier[3].bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill_(0, torch.tensor(favourite), 3.0))
        model.regressor[3].weight.zero_()
        model.regressor[3].bias.copy_(torch.tensor(box).repeat(3))
    return model


def test_dense_predictions_map_window_boxes_to_image_pixels():
    network = loc.FullyConvolutionalLocalizer(_constant_model()).eval()
    image = torch.rand(3, 40, 80)
    boxes, scores, classes = loc.dense_predictions(network, image, scales=(1.0,))
    # Scale 1: shorter side 40 -> 32 (factor 0.8), width 64: windows at x = 0, 4, ..., 32 in the resized image.
    assert len(boxes) == 9 and set(classes.tolist()) == {2}
    assert scores.tolist() == pytest.approx([torch.softmax(torch.tensor([0.0, 0, 3]), 0)[2].item()] * 9)
    expected_x1 = torch.arange(9) * 4 / 0.8
    torch.testing.assert_close(boxes[:, 0].double(), expected_x1.double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], torch.full((9,), 40.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes[:, 3], torch.full((9,), 40.0), rtol=0, atol=1e-4)


def test_overfeat_merges_agreeing_windows_across_scales_into_one_detection():
    network = loc.FullyConvolutionalLocalizer(_constant_model(box=(0.25, 0.25, 0.75, 0.75))).eval()
    image = torch.rand(3, 32, 32)
    # Scale 1: one window, box [8, 8, 24, 24]. Scale 1.25: 40 x 40, windows at offsets 0, 4, 8 per axis, each
    # box offset + [8, 8, 24, 24], times 32 / 40 back in the image: mean [9.6, 9.6, 22.4, 22.4] over 9.
    found = loc.overfeat_detect(network, image, scales=(1.0, 1.25), merge_threshold=2.0)
    assert found["labels"].tolist() == [2]
    expected = (torch.tensor([8.0, 8, 24, 24]) + 9 * torch.tensor([9.6, 9.6, 22.4, 22.4])) / 10
    torch.testing.assert_close(found["boxes"][0].float(), expected, rtol=0, atol=1e-4)
    # All 10 windows agree, so the evidence is the full softmax score.
    assert float(found["scores"][0]) == pytest.approx(torch.softmax(torch.tensor([0.0, 0, 3]), 0)[2].item())


def test_overfeat_needs_at_least_one_positive_scale():
    network = loc.FullyConvolutionalLocalizer(_constant_model()).eval()
    for scales in ((), (0.0,), (-1.0,)):
        with pytest.raises(ValueError, match="scales"):
            loc.overfeat_detect(network, torch.rand(3, 32, 32), scales=scales)
