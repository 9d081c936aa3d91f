"""Tests of scenekit.models.mask_rcnn: mask targets cropped by RoIAlign, the own-class mask loss (He et al. 2017,
sec. 3), pasting masks into the image, a single-image overfit, and the empty cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenekit.data.world import CATEGORIES, make_world
from scenekit.masks import rle_decode
from scenekit.models import mask_rcnn
from scenekit.models.mask_rcnn import MaskRCNN, MaskRCNNConfig, mask_loss, mask_targets, paste_masks


def square_mask(size=40, x1=10, y1=10, x2=20, y2=20):
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, y1:y2, x1:x2] = 1
    return mask


def test_mask_target_of_a_roi_equal_to_the_object_is_all_ones():
    target = mask_targets(square_mask(), torch.tensor([[10.0, 10.0, 20.0, 20.0]]), torch.tensor([0]), 14)
    assert target.shape == (1, 14, 14) and bool((target == 1).all())


def test_mask_target_of_a_wider_roi_holds_the_object_in_its_left_half():
    target = mask_targets(square_mask(), torch.tensor([[10.0, 10.0, 30.0, 20.0]]), torch.tensor([0]), 14)
    assert bool((target[:, :, :7] == 1).all()) and bool((target[:, :, 7:] == 0).all())


def test_mask_target_uses_the_matched_objects_mask():
    masks = torch.cat([square_mask(), square_mask(x1=0, y1=0, x2=5, y2=5)])
    target = mask_targets(masks, torch.tensor([[10.0, 10.0, 20.0, 20.0]] * 2), torch.tensor([0, 1]), 4)
    assert target[0].sum() == 16 and target[1].sum() == 0


def test_mask_loss_is_the_bce_of_the_ground_truth_class_mask_only():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = torch.tensor([[2.0, -1.0], [0.0, 3.0]])      # class 2's mask
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    loss = mask_loss(logits, torch.tensor([2]), targets)

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))
    expected = (bce(2, 1) + bce(-1, 0) + bce(0, 1) + bce(3, 0)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    logits[0, 0] = 100.0                                          # other classes' masks do not matter
    logits[0, 2] = -100.0
    assert float(mask_loss(logits, torch.tensor([2]), targets)) == pytest.approx(expected, rel=1e-6)


def test_mask_loss_without_foreground_is_zero_and_differentiable():
    logits = torch.zeros(0, 3, 14, 14, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 14, 14))
    loss.backward()
    assert float(loss) == 0


def test_paste_fills_exactly_the_pixels_whose_centres_are_in_the_box():
    probs = torch.ones(1, 14, 14)
    out = paste_masks(probs, torch.tensor([[2.0, 3.0, 7.0, 9.0]]), (12, 10))
    expected = np.zeros((12, 10), np.uint8)
    expected[3:9, 2:7] = 1
    assert out.shape == (1, 12, 10) and np.array_equal(out[0].numpy(), expected)


def test_paste_resizes_the_mask_to_the_box():
    probs = torch.zeros(1, 14, 14)
    probs[0, :, :7] = 1.0                                     # left half of the box
    out = paste_masks(probs, torch.tensor([[0.0, 0.0, 20.0, 10.0]]), (10, 20))[0]
    assert bool((out[:, :10] == 1).all()) and bool((out[:, 10:] == 0).all())


@pytest.mark.parametrize("mask_stride", [8, 4])
def test_mask_rcnn_overfits_one_image_and_segments_its_objects(one_thread, train_steps, mask_stride):
    torch.manual_seed(0)
    world = make_world(1, image_size=96, seed=5, min_objects=2, max_objects=2)
    record = world.records[0]
    r = mask_rcnn.recipe(CATEGORIES, image_size=96, flip=False, mask_stride=mask_stride)
    model = r.build_model(r.model_config)
    batch = r.collate([r.make_dataset(world, True)[0]])
    history, losses = train_steps(model, batch, 60)
    assert "mask" in losses and np.mean(history[-5:]) < 0.4 * np.mean(history[:5])
    found = r.predict(model.eval(), [record.image], torch.device("cpu"))[0]
    assert found["masks"].shape == (len(found["boxes"]), 96, 96)
    for k, rle in enumerate(record.segmentations):
        gt = rle_decode(rle).astype(bool)
        ious = [(gt & m.numpy().astype(bool)).sum() / (gt | m.numpy().astype(bool)).sum()
                for m, s in zip(found["masks"], found["scores"]) if s >= 0.5]
        assert max(ious) >= 0.6, f"object {k}: best mask IoU {max(ious):.2f}"


def test_image_without_objects_gives_empty_masks_of_the_image_size(one_thread):
    r = mask_rcnn.recipe(CATEGORIES, image_size=64, mask_size=28)
    model = r.build_model(r.model_config)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 64, 64, dtype=torch.uint8), "size": torch.tensor([64, 64])}
    losses = model.train()(torch.zeros(1, 3, 64, 64), [target])
    assert float(losses["mask"]) == 0 and all(bool(torch.isfinite(v)) for v in losses.values())
    with torch.no_grad():
        model.box_head.cls_score.bias[0] = 20.0
    found = r.predict(model.eval(), [np.zeros((48, 40, 3), np.uint8)], torch.device("cpu"))[0]
    assert found["boxes"].shape == (0, 4) and found["masks"].shape == (0, 48, 40)


@pytest.mark.parametrize("mask_stride", [8, 4])
def test_mask_head_outputs_the_configured_grid(mask_stride):
    for size in (14, 28):
        model = MaskRCNN(MaskRCNNConfig(num_classes=6, image_size=64, mask_size=size, mask_stride=mask_stride))
        rois = torch.tensor([[0.0, 4.0, 4.0, 40.0, 40.0]])
        features, mask_map = model.feature_maps(torch.zeros(1, 3, 64, 64))
        assert features.shape[2:] == (8, 8) and mask_map.shape[2:] == (64 // mask_stride,) * 2
        assert model.mask_logits(mask_map, rois).shape == (1, 6, size, size)
    with pytest.raises(ValueError, match="even"):
        MaskRCNN(MaskRCNNConfig(num_classes=6, mask_size=15))
    with pytest.raises(ValueError, match="mask_stride"):
        MaskRCNN(MaskRCNNConfig(num_classes=6, mask_stride=2))


def test_recipe_reads_masks_from_the_stride_4_level_and_older_configs_from_the_shared_map():
    r = mask_rcnn.recipe(CATEGORIES)
    assert r.model_config["mask_stride"] == 4 and r.build_model(r.model_config).mask_stride == 4
    older = {k: v for k, v in r.model_config.items() if k != "mask_stride"}     # checkpoints before the option
    model = r.build_model(older)
    assert model.mask_stride == 8 and not hasattr(model, "fine_level")
    with pytest.raises(ValueError, match="small backbone"):
        MaskRCNN(MaskRCNNConfig(num_classes=6, backbone="vgg16", mask_stride=16))


def test_fine_mask_level_is_fpns_top_down_sum_of_the_stride_4_stage_and_the_upsampled_shared_map():
    torch.manual_seed(0)
    model = MaskRCNN(MaskRCNNConfig(num_classes=6, image_size=64, mask_stride=4)).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features, fine = model.feature_maps(images)
        assert torch.allclose(features, model.features(images), atol=1e-6)     # the shared map is unchanged
        stride_4 = model.features.body.features[:8](images)                    # two [conv, bn, relu, pool] stages
        level = model.fine_level
        top = level.top(features).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)   # nearest x2
        expected = level.smooth(level.lateral(stride_4) + top)
    assert fine.shape == (2, 64, 16, 16) and torch.allclose(fine, expected, atol=1e-5)
