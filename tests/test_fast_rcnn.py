"""Tests of scenekit.models.fast_rcnn: the multitask loss (Girshick 2015, eq. 1-3), detection post-processing,
the data pipeline, the proposal cache, a single-image overfit and the empty cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenekit.boxes import box_iou
from scenekit.data.world import CATEGORIES, make_world
from scenekit.models import fast_rcnn
from scenekit.models.fast_rcnn import (DetectionData, FastRCNN, FastRCNNConfig, ProposalCache, fast_rcnn_loss,
                                       fit_image, flip_horizontally, postprocess_detections, smooth_l1_loss)


# ------------------------------------------------------------------------------------------------ losses
def test_smooth_l1_is_quadratic_below_one_and_linear_above():
    x = torch.tensor([0.5, -0.5, 2.0, -3.0, 0.0])
    # eq. (3): 0.5 x^2 if |x| < 1, else |x| - 0.5
    assert float(smooth_l1_loss(x, torch.zeros(5))) == pytest.approx(0.125 + 0.125 + 1.5 + 2.5)
    assert float(smooth_l1_loss(torch.tensor([0.05]), torch.zeros(1), beta=1 / 9)) == pytest.approx(
        0.5 * 0.05 ** 2 * 9)


def test_multitask_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])      # R = 3, K = 2
    deltas = torch.zeros(3, 2, 4)
    deltas[1, 1] = torch.tensor([0.5, 0.0, 2.0, 0.0])    # RoI 1 is class 2: its own row is used
    deltas[1, 0] = torch.tensor([9.0, 9.0, 9.0, 9.0])    # another class's row: must not count
    deltas[0, 0] = torch.tensor([7.0, 7.0, 7.0, 7.0])    # background RoI: no box loss
    labels = torch.tensor([0, 2, 1])
    targets = torch.zeros(3, 4)
    targets[2] = torch.tensor([0.0, 0.0, 0.0, -0.5])
    classification, localisation = fast_rcnn_loss(logits, deltas, labels, targets)

    def nll(row, u):
        return -math.log(math.exp(row[u]) / sum(math.exp(v) for v in row))
    expected_cls = (nll([2, 0, 0], 0) + nll([0, 1, 3], 2) + nll([1, 1, 1], 1)) / 3
    expected_loc = ((0.125 + 0 + 1.5 + 0) + (0.125)) / 3        # RoI 1: 0.5 -> 0.125, 2 -> 1.5; RoI 2: -0.5 -> 0.125
    assert float(classification) == pytest.approx(expected_cls)
    assert float(localisation) == pytest.approx(expected_loc)


def test_only_background_rois_give_zero_box_loss_with_a_gradient_path():
    deltas = torch.zeros(2, 3, 4, requires_grad=True)
    cls, loc = fast_rcnn_loss(torch.zeros(2, 4, requires_grad=True), deltas, torch.tensor([0, 0]),
                              torch.zeros(2, 4))
    assert float(loc) == 0 and float(cls) == pytest.approx(math.log(4))
    (cls + loc).backward()
    assert deltas.grad is not None and float(deltas.grad.abs().sum()) == 0


# ------------------------------------------------------------------------------------------------ inference
def test_postprocess_refines_with_the_class_row_and_suppresses_per_class():
    config = FastRCNNConfig(num_classes=2, nms_threshold=0.3, score_threshold=0.05)
    proposals = torch.tensor([[10.0, 10.0, 30.0, 30.0], [12.0, 10.0, 32.0, 30.0], [60.0, 60.0, 80.0, 80.0]])
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
    deltas = torch.zeros(3, 2, 4)
    deltas[2, 1] = torch.tensor([10.0 * 0.1, 0.0, 0.0, 0.0])   # class 2 moves proposal 2 by 0.1 x its width
    found = postprocess_detections(logits, deltas, proposals, (100, 100), config)
    high = found["scores"] > 0.5
    assert found["labels"][high].tolist() == [1, 2]            # the two class-1 boxes overlap: one is left
    assert found["boxes"][high][0].tolist() == [10, 10, 30, 30]
    assert found["boxes"][high][1].tolist() == pytest.approx([62, 60, 82, 80])
    assert (found["scores"][1:] <= found["scores"][:-1]).all()


def test_boxes_are_clipped_to_the_image():
    config = FastRCNNConfig(num_classes=1)
    found = postprocess_detections(torch.tensor([[0.0, 5.0]]), torch.zeros(1, 1, 4),
                                   torch.tensor([[-5.0, 40.0, 20.0, 70.0]]), (50, 60), config)
    assert found["boxes"].tolist() == [[0, 40, 20, 50]]


# ------------------------------------------------------------------------------------------------ data
def test_fit_image_scales_the_longer_side_and_pads_bottom_right():
    image = np.full((40, 80, 3), 255, np.uint8)
    tensor, scale, (h, w) = fit_image(image, 160)
    assert scale == 2 and (h, w) == (80, 160) and tensor.shape == (3, 160, 160)
    assert float(tensor[:, :80].min()) == 1.0 and float(tensor[:, 80:].max()) == 0.0


def test_flip_mirrors_boxes_and_masks_inside_the_image_part():
    image = torch.zeros(3, 8, 8)
    image[:, :, 0] = 1
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, :, 0] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 8.0]]), "masks": masks,
              "proposals": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    flipped, out = flip_horizontally(image, target, width=6)          # columns 6, 7 are padding
    assert flipped[0, 0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert out["boxes"].tolist() == [[5, 0, 6, 8]]
    assert out["proposals"].tolist() == [[3, 2, 5, 4]]
    assert out["masks"][0, 0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


def test_dataset_maps_category_ids_to_class_indices_and_boxes_into_the_input():
    world = make_world(2, image_size=128, seed=3, min_objects=2, max_objects=3)
    data = DetectionData(world, sorted(CATEGORIES), 64)
    _, target = data[0]
    record = world.records[0]
    assert target["labels"].tolist() == [int(c) for c in record.labels]      # ids 1..6 -> indices 1..6
    assert torch.allclose(target["boxes"], torch.tensor(record.boxes, dtype=torch.float32) / 2)
    assert target["size"].tolist() == [64, 64]


def test_proposal_cache_searches_each_image_once(monkeypatch, tmp_path):
    import scenekit.proposals as proposals

    calls = []

    def fake_search(image, mode="fast", max_side=None):
        calls.append(mode)
        return torch.tensor([[0.0, 0.0, 4.0, 4.0]])

    monkeypatch.setattr(proposals, "selective_search", fake_search)
    cache = ProposalCache(directory=tmp_path)
    image = np.zeros((8, 8, 3), np.uint8)
    first, _ = cache(image)
    second, _ = cache(image.copy())
    assert calls == ["fast"] and np.array_equal(first, second)
    again, _ = ProposalCache(directory=tmp_path)(image)      # a new cache finds the file
    assert calls == ["fast"] and again.tolist() == [[0, 0, 4, 4]]
    cache(np.ones((8, 8, 3), np.uint8))
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------ training
def test_fast_rcnn_overfits_one_image_and_detects_its_objects(one_thread, train_steps):
    torch.manual_seed(0)
    world = make_world(1, image_size=128, seed=11, min_objects=2, max_objects=3)
    record = world.records[0]
    r = fast_rcnn.recipe(CATEGORIES, image_size=128, flip=False)
    model = r.build_model(r.model_config)
    batch = r.collate([r.make_dataset(world, True)[0]])
    history, _ = train_steps(model, batch, 60)
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])
    found = r.predict(model.eval(), [record.image], torch.device("cpu"))[0]
    confident = found["scores"] >= 0.5
    gt = torch.tensor(record.boxes, dtype=torch.float64)
    iou = box_iou(gt, found["boxes"][confident])
    for k in range(len(gt)):       # every object found, with its class
        best = int(iou[k].argmax())
        assert float(iou[k, best]) >= 0.5
        assert int(found["labels"][confident][best]) == int(record.labels[k])


def test_image_without_proposals_or_objects_gives_empty_detections(one_thread):
    model = FastRCNN(FastRCNNConfig(num_classes=3, image_size=64)).eval()
    found = model.detect(torch.zeros(1, 3, 64, 64), [(64, 64)], [torch.zeros(0, 4)])
    assert found[0]["boxes"].shape == (0, 4) and found[0]["scores"].shape == (0,) and found[0]["labels"].shape == (0,)
    found, seconds = fast_rcnn.timed_detect(model, torch.zeros(1, 3, 64, 64), [(64, 64)], [torch.zeros(0, 4)])
    assert found[0]["boxes"].shape == (0, 4) and set(seconds) == {"conv", "proposals", "region"}
    # Training on an image without objects: only background RoIs, a finite loss.
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "proposals": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "size": torch.tensor([64, 64])}
    model.config.bg_low = 0.0
    losses = model.train()(torch.zeros(1, 3, 64, 64), [target])
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["box_regression"]) == 0


def test_predict_on_a_blank_image_with_a_background_only_head_is_empty_with_right_shapes(one_thread):
    r = fast_rcnn.recipe(CATEGORIES, image_size=64)
    model = r.build_model(r.model_config).eval()
    with torch.no_grad():
        model.box_head.cls_score.bias[0] = 20.0          # every region is background
    found = r.predict(model, [np.full((50, 70, 3), 128, np.uint8)], torch.device("cpu"))[0]
    assert found["boxes"].shape == (0, 4) and found["scores"].shape == (0,) and found["labels"].shape == (0,)


def test_forward_without_targets_explains_that_proposals_are_needed():
    model = FastRCNN(FastRCNNConfig(num_classes=2, image_size=32))
    with pytest.raises(ValueError, match="proposals"):
        model(torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------ options
def test_fast_rcnn_default_recipe_stores_the_options_checkpoints_always_stored():
    """The keys, values and types of the hand-written dict stored before `FastRCNNOptions` (epochs and lr
    resolved); the order of the keys may differ (the shared `TwoStageOptions` come first)."""
    from scenekit.models.registry import make_recipe

    before = {"image_size": 160, "backbone": "small", "backbone_weights": None, "freeze_stages": 0, "channels": [16, 32, 64],
              "extra_convs": 2, "norm": "batch", "hidden": 256, "rois_per_image": 64, "bg_low": 0.1, "epochs": 6,
              "lr": 0.001, "flip": True, "proposal_mode": "fast", "proposal_cache": None, "max_proposals": 1000,
              "max_detections": 100, "slice_factor": 2.5}
    stored = make_recipe("fast-rcnn", {1: "a", 2: "b"}).options
    assert stored == before and {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in before.items()}
    assert make_recipe("fast-rcnn", {1: "a", 2: "b"}, stored=stored).options == stored
    given = fast_rcnn.recipe({1: "a"}, image_size=64, channels=(8, 16), epochs=2, lr=0.01)
    assert given.options["channels"] == [8, 16] and (given.options["epochs"], given.options["lr"]) == (2, 0.01)
    assert given.model_config["channels"] == [8, 16] and given.phases[0].epochs == 2


def test_fast_rcnn_recipe_names_a_misspelt_option():
    from scenekit.errors import DataError
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean max_proposals"):
        fast_rcnn.recipe({1: "a"}, max_proposal=10)
    assert all(spec.help and "\n" not in spec.help for spec in model_options("fast-rcnn").values())


def test_timed_detect_gives_detects_detections_and_the_three_stage_times(one_thread):
    torch.manual_seed(0)
    model = FastRCNN(FastRCNNConfig(num_classes=3, image_size=64, channels=(8, 16, 16), hidden=32)).eval()
    images = torch.rand(2, 3, 64, 64)
    proposals = [torch.tensor([[4.0, 4.0, 40.0, 30.0], [10.0, 20.0, 60.0, 60.0]]), torch.tensor([[0.0, 0.0, 9.0, 9.0]])]
    found = model.detect(images, [(64, 64)] * 2, proposals)
    timed, seconds = fast_rcnn.timed_detect(model, images, [(64, 64)] * 2, proposals)
    assert [d.keys() for d in timed] == [d.keys() for d in found]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(found, timed) for k in a)
    assert set(seconds) == {"conv", "proposals", "region"} and seconds["proposals"] == 0.0   # searched outside
    assert seconds["conv"] > 0 and seconds["region"] > 0
    with pytest.raises(ValueError, match="proposals"):
        fast_rcnn.timed_detect(model, images, [(64, 64)] * 2)
