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
    assert model.mask_stride == 8 and model.fine_level is None
    assert not any(key.startswith("fine_level.") for key in model.state_dict())
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


# ------------------------------------------------------------------------------------------------ the mask head
def _twins(mask_stride: int):
    """A Mask R-CNN recipe and model, and the Faster R-CNN of the same options built from the same seed."""
    from scenekit.models import faster_rcnn

    small = {"image_size": 64, "channels": (8, 16, 16), "hidden": 32, "flip": False}
    r = mask_rcnn.recipe(CATEGORIES, **small, mask_convs=1, mask_channels=8, mask_stride=mask_stride)
    torch.manual_seed(0)
    mask = r.build_model(r.model_config)
    plain = faster_rcnn.recipe(CATEGORIES, **small)
    torch.manual_seed(0)
    return r, mask, plain.build_model(plain.model_config)


@pytest.mark.parametrize("mask_stride", [8, 4])
def test_mask_rcnn_is_faster_rcnn_plus_the_mask_head_under_the_checkpoint_keys_it_always_had(one_thread,
                                                                                             mask_stride):
    r, mask, faster = _twins(mask_stride)
    assert faster.mask_head is None and mask.mask_head is not None
    head = {"mask_head.convs.0.weight", "mask_head.convs.0.bias", "mask_head.upsample.weight",
            "mask_head.upsample.bias", "mask_head.predictor.weight", "mask_head.predictor.bias"}
    fine = {f"fine_level.{layer}.{kind}" for layer in ("lateral", "top", "smooth") for kind in ("weight", "bias")}
    assert set(mask.state_dict()) - set(faster.state_dict()) == head | (fine if mask_stride == 4 else set())
    assert all(torch.equal(value, mask.state_dict()[key]) for key, value in faster.state_dict().items())
    # The branch runs in parallel with the box head (He et al. 2017, sec. 3): the same sample, the same four
    # losses plus "mask", the same boxes, each with its mask.
    data = r.make_dataset(make_world(2, seed=3, image_size=64, min_objects=2), True)
    images, targets = r.collate([data[0], data[1]])
    torch.manual_seed(1)
    losses = mask.train()(images, targets)
    torch.manual_seed(1)
    four = faster.train()(images, targets)
    assert set(losses) == set(four) | {"mask"} and all(torch.equal(losses[k], four[k]) for k in four)
    mask.eval(), faster.eval()
    with_masks, boxes_only = mask.detect(images, [(64, 64)] * 2), faster.detect(images, [(64, 64)] * 2)
    for a, b in zip(with_masks, boxes_only):
        assert set(a) == set(b) | {"mask_probs"} and all(torch.equal(a[k], b[k]) for k in b)
        assert a["mask_probs"].shape == (len(a["boxes"]), 14, 14)


def test_timed_detect_of_mask_rcnn_gives_detects_masks(one_thread):
    from scenekit.models.fast_rcnn import timed_detect

    _, model, _ = _twins(4)
    images = torch.rand(1, 3, 64, 64)
    found = model.eval().detect(images, [(64, 64)])
    timed, seconds = timed_detect(model, images, [(64, 64)])
    assert len(found[0]["mask_probs"]) and torch.equal(found[0]["mask_probs"], timed[0]["mask_probs"])
    assert set(seconds) == {"conv", "proposals", "region"}


# ------------------------------------------------------------------------------------------------ options
def test_mask_rcnn_default_recipe_stores_the_options_checkpoints_always_stored():
    """The keys, values and types of the hand-written dict stored before `MaskRCNNOptions` (epochs, lr and
    mask_stride resolved); the order of the keys may differ (the shared `TwoStageOptions` come first)."""
    from scenekit.models.registry import make_recipe

    before = {"image_size": 160, "backbone": "small", "backbone_weights": None, "freeze_stages": 0, "channels": [16, 32, 64],
              "extra_convs": 2, "norm": "batch", "hidden": 256, "rois_per_image": 64, "bg_low": 0.0,
              "anchor_sizes": [20.0, 46.0, 106.0], "anchor_ratios": [0.5, 1.0, 2.0], "mask_size": 14, "mask_convs": 4,
              "mask_channels": 64, "mask_stride": 4, "epochs": 12, "lr": 0.001, "flip": True, "box_masks": False,
              "max_detections": 100, "slice_factor": 2.5, "augment": "world"}
    stored = make_recipe("mask-rcnn", {1: "a", 2: "b"}).options
    assert stored == before and {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in before.items()}
    assert make_recipe("mask-rcnn", {1: "a", 2: "b"}, stored=stored).options == stored
    assert mask_rcnn.recipe({1: "a"}, channels=(8, 16, 16, 32)).options["mask_stride"] == 8
    assert mask_rcnn.recipe({1: "a"}, backbone="resnet18").options["mask_stride"] is None     # its shared map


def test_mask_rcnn_recipe_names_a_misspelt_option_and_has_no_roi_op():
    from scenekit.errors import DataError
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean mask_stride"):
        mask_rcnn.recipe({1: "a"}, mask_strid=4)
    with pytest.raises(DataError, match="roi_op"):
        mask_rcnn.recipe({1: "a"}, roi_op="pool")                   # RoIAlign always (He et al. 2017, sec. 3)
    assert all(spec.help and "\n" not in spec.help for spec in model_options("mask-rcnn").values())
