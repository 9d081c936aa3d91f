"""R-CNN: context-padded warping, SVMs with hard negative mining, box regression, feature cache, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit import cli
from scenekit.data.world import make_world
from scenekit.models import rcnn, registry


# ------------------------------------------------------------------------------------------------ warping
def test_context_box_leaves_p_pixels_of_context_at_the_warped_size():
    # S = 20, p = 2: the box must fill the central 16 pixels, so the crop is the box scaled by 20 / 16 = 1.25
    # about its centre (30, 40): half-sizes 20 -> 25.
    crop = rcnn.context_boxes(torch.tensor([[10.0, 20.0, 50.0, 60.0]]), size=20, padding=2)
    assert crop.tolist() == [[5.0, 15.0, 55.0, 65.0]]
    # Anisotropic: each axis is scaled on its own (box 40 x 10 -> crop 50 x 12.5).
    crop = rcnn.context_boxes(torch.tensor([[0.0, 0.0, 40.0, 10.0]]), size=20, padding=2)
    assert crop.tolist() == [[-5.0, -1.25, 45.0, 11.25]]


def _ramp_image(height=10, width=10):
    """Channel 0 holds each pixel's x index, channel 1 its y index: bilinear sampling of it is exact."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys, torch.ones(height, width)])


def test_warp_samples_the_context_crop_at_output_pixel_centres():
    # Box [2, 2, 6, 6], S = 8, p = 2 -> crop [0, 0, 8, 8]: one image pixel per output pixel, so output pixel
    # (i, j) is image pixel (i, j); the box's edges land 2 output pixels inside the window.
    warped = rcnn.warp_regions(_ramp_image(), torch.tensor([[2.0, 2.0, 6.0, 6.0]]), size=8, padding=2)
    assert warped.shape == (1, 3, 8, 8)
    assert torch.equal(warped[0, 0], torch.arange(8.0).expand(8, 8))
    assert torch.equal(warped[0, 1], torch.arange(8.0)[:, None].expand(8, 8))


def test_warp_fills_the_part_of_the_crop_outside_the_image_with_the_mean():
    # Box [6, 6, 10, 10] at the corner -> crop [4, 4, 12, 12]: output column j samples x = 4 + j, which is
    # outside the 10-pixel image for j >= 6, where the mean-subtracted value 0 (the mean) is put.
    warped = rcnn.warp_regions(_ramp_image(), torch.tensor([[6.0, 6.0, 10.0, 10.0]]), size=8, padding=2)
    inside = torch.tensor([1.0] * 6 + [0.0] * 2)
    expected_x = (4 + torch.arange(8.0)) * inside
    assert torch.equal(warped[0, 0], expected_x[None, :] * inside[:, None])
    assert torch.equal(warped[0, 2], inside[:, None] * inside[None, :])


def test_warp_stretches_each_axis_on_its_own():
    # Box [0, 0, 8, 4], no padding, S = 8: x advances 1 pixel per output pixel, y 0.5; sample centres are
    # y = 0.5 (i + 0.5) in continuous coordinates, i.e. y index 0.5 i - 0.25, clamped at the border pixel.
    warped = rcnn.warp_regions(_ramp_image(), torch.tensor([[0.0, 0.0, 8.0, 4.0]]), size=8, padding=0)
    expected_y = (0.5 * torch.arange(8.0) - 0.25).clamp(min=0)
    assert torch.allclose(warped[0, 1], expected_y[:, None].expand(8, 8))
    assert torch.equal(warped[0, 0], torch.arange(8.0).expand(8, 8))


def test_warp_of_no_boxes_is_empty_and_bad_padding_is_refused():
    assert rcnn.warp_regions(_ramp_image(), torch.zeros(0, 4), size=8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="padding"):
        rcnn.context_boxes(torch.zeros(1, 4), size=8, padding=4)


# ------------------------------------------------------------------------------------------------ SVMs
def _objective(svm, features, labels, C=1.0, positive_weight=2.0):
    x, y = features.double(), labels.double()
    cost = C * torch.where(y > 0, positive_weight, 1.0)
    slack = (1 - y * svm.score(x)).clamp(min=0)
    return float(0.5 * svm.weight.pow(2).sum() + (cost * slack ** 2).sum())


def test_linear_svm_solution_is_a_stationary_point_of_the_squared_hinge_objective():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 5, generator=generator)
    labels = torch.where(features[:, 0] + 0.3 * torch.randn(200, generator=generator) > 0, 1.0, -1.0)
    svm = rcnn.train_linear_svm(features, labels, C=1.0)
    w = svm.weight.clone().requires_grad_(True)
    b = svm.bias.clone().requires_grad_(True)
    y = labels.double()
    slack = (1 - y * (features.double() @ w + b)).clamp(min=0)
    cost = torch.where(y > 0, 2.0, 1.0)
    (0.5 * (w * w).sum() + (cost * slack ** 2).sum()).backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs() < 1e-5
    assert float(svm.weight[0]) > 0                              # it found the informative direction


def _toy_separable(seed=0):
    generator = torch.Generator().manual_seed(seed)
    positives = torch.randn(20, 2, generator=generator) * 0.5 + torch.tensor([3.0, 3.0])
    negatives = torch.randn(600, 2, generator=generator) * 1.0 + torch.tensor([-2.0, -2.0])
    return positives, negatives


def test_hard_negative_mining_adds_exactly_the_margin_violators_and_ends_separating():
    positives, negatives = _toy_separable()
    svm, rounds = rcnn.train_svm_hard_negatives(positives, negatives, C=1.0, initial_negatives=10,
                                                generator=torch.Generator().manual_seed(0))
    assert len(rounds) >= 2                                      # 10 random negatives cannot be enough
    in_cache = torch.zeros(len(negatives), dtype=torch.bool)
    in_cache[torch.randperm(len(negatives), generator=torch.Generator().manual_seed(0))[:10]] = True
    for r in rounds:
        assert r.cache_size == int(in_cache.sum())
        scores = r.svm.score(negatives)
        violators = torch.nonzero(~in_cache & (scores > -1)).flatten()
        assert torch.equal(r.mined, violators)                   # mined = outside the cache, score > -1
        assert torch.equal(r.evicted, torch.nonzero(in_cache & (scores < -1.2)).flatten())
        in_cache[r.mined] = True
        in_cache[r.evicted] = False
    assert len(rounds[-1].mined) == 0
    assert (svm.score(positives) > 0).all() and (svm.score(negatives) < 0).all()
    # No negative outside the cache violates the margin, so the cache's SVM is the SVM of all negatives.
    full = rcnn.train_linear_svm(torch.cat([positives, negatives]),
                                 torch.cat([torch.ones(len(positives)), -torch.ones(len(negatives))]), C=1.0)
    assert torch.allclose(svm.weight, full.weight, atol=1e-4) and torch.allclose(svm.bias, full.bias, atol=1e-4)


# ------------------------------------------------------------------------------------------------ box regression
def test_regression_targets_and_their_inverse_on_known_boxes():
    # P: centre (5, 10), 10 x 20; G: centre (8, 16), 12 x 24.
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[2.0, 4.0, 14.0, 28.0]])
    targets = rcnn.regression_targets(proposal, gt)
    expected = torch.tensor([[3 / 10, 6 / 20, math.log(12 / 10), math.log(24 / 20)]])
    assert torch.allclose(targets, expected)
    assert torch.allclose(rcnn.apply_regression(proposal, targets), gt)


def test_ridge_matches_the_closed_form_with_an_unregularised_bias():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    t = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    weight, bias = rcnn.fit_ridge(x, t, ridge=3.0)
    # Reference: minimise over [W, b] with the augmented design [X, 1] and no penalty on b (numpy lstsq of the
    # stacked system [X 1; sqrt(lambda) I 0] [W; b] = [T; 0]).
    design = np.vstack([np.hstack([x.numpy(), np.ones((50, 1))]),
                        np.hstack([math.sqrt(3.0) * np.eye(6), np.zeros((6, 1))])])
    solution = np.linalg.lstsq(design, np.vstack([t.numpy(), np.zeros((6, 4))]), rcond=None)[0]
    assert np.allclose(weight.numpy(), solution[:6].T) and np.allclose(bias.numpy(), solution[6])


# ------------------------------------------------------------------------------------------------ caches
def _training_items(model, count=2):
    data = make_world(count, seed=3, split="train", image_size=64, min_objects=1, max_objects=2)
    store = rcnn.ProposalStore()
    return rcnn.training_images(data, [1, 2, 3, 4, 5, 6], store, max_proposals=30)


def test_feature_cache_is_reused_by_a_second_run(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = rcnn.RCNN(rcnn.RCNNConfig(num_classes=6, input_size=16, channels=(4, 8), hidden=8)).eval()
    items = _training_items(model)
    calls = []
    original = rcnn.RCNN.region_features
    monkeypatch.setattr(rcnn.RCNN, "region_features", lambda self, w: calls.append(len(w)) or original(self, w))
    first = rcnn.FeatureCache(tmp_path, model)
    entries = [first(item) for item in items]
    assert first.computed == 2 and sum(calls) == sum(len(i.regions) for i in items)
    assert entries[0]["fc7"].shape == (len(items[0].regions), 8) and first.size_bytes() > 0
    calls.clear()
    second = rcnn.FeatureCache(tmp_path, model)
    again = [second(item) for item in items]
    assert second.computed == 0 and second.loaded == 2 and calls == []
    assert all(torch.equal(a["fc7"], b["fc7"]) for a, b in zip(entries, again))
    with torch.no_grad():
        model.fc[1].weight.add_(1.0)                              # other weights: other features, new folder
    third = rcnn.FeatureCache(tmp_path, model)
    third(items[0])
    assert third.computed == 1 and third.folder != first.folder


def test_proposal_store_searches_each_image_once_and_reads_its_files_back(tmp_path):
    image = make_world(1, seed=1, image_size=64).records[0].image
    store = rcnn.ProposalStore(directory=tmp_path)
    boxes, seconds = store(image)
    store(image)
    assert store.searches == 1 and seconds > 0 and boxes.shape[1] == 4
    fresh = rcnn.ProposalStore(directory=tmp_path)
    again, same_seconds = fresh(image)
    assert fresh.searches == 0 and torch.equal(again, boxes) and same_seconds == pytest.approx(seconds)


# ------------------------------------------------------------------------------------------------ end to end
WORLD = {"seed": 5, "split": "train", "image_size": 96, "min_objects": 1, "max_objects": 3}


def _train_images():
    return make_world(3, **WORLD)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`scenekit train rcnn` on three small world images written as COCO files (~10 s on one thread)."""
    from scenekit.data.world import write_world

    out = tmp_path_factory.mktemp("rcnn")
    instances = write_world(out / "world", 3, **WORLD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # on two shared cores one thread trains this tiny network faster
    try:
        code = cli.main(["train", "rcnn", "--data", f"coco:{instances}", "--val-data", f"coco:{instances}",
                         "--epochs", "10", "--out", str(out / "run"), "--option", "regions_per_batch=64",
                         "--option", "dropout=0", "--option", "channels=[8,16,32]", "--option", "hidden=64",
                         "--log-every", "0", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    recipe, model, device, checkpoint = registry.restore(str(out / "run" / "best.pt"), "cpu")
    return out, recipe, model, checkpoint


def test_detector_trained_end_to_end_finds_the_objects_of_its_images(trained):
    _, recipe, model, _ = trained
    data = _train_images()
    found = recipe.predict(model, [r.image for r in data.records], torch.device("cpu"))
    hits, total = 0, 0
    for record, detections in zip(data.records, found):
        assert detections["boxes"].shape[1] == 4 and len(detections["scores"]) == len(detections["labels"])
        for box, label in zip(record.boxes, record.labels):
            total += 1
            same = detections["labels"] == int(label)
            if same.any():
                iou = rcnn.box_iou(torch.as_tensor(box[None], dtype=torch.float64), detections["boxes"][same])
                hits += int(iou.max() >= 0.5)
    assert total >= 5 and hits >= 0.8 * total


def test_training_writes_stage_timings_and_a_checkpoint_predict_can_draw(trained, tmp_path):
    out, _, _, checkpoint = trained
    stages = [row["stage"] for row in checkpoint["history"]]
    assert stages == ["proposals", "finetune", "features", "svm", "bbox", "evaluate"]
    assert (out / "run" / "metrics.csv").is_file()
    picture = tmp_path / "scene.png"
    Image.fromarray(_train_images().records[0].image).save(picture)
    code = cli.main(["predict", str(picture), "--checkpoint", str(out / "run" / "best.pt"),
                     "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "pred" / "scene.png").is_file()
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert results and {"file_name", "category_id", "bbox", "score"} <= set(results[0])
    assert all(r["file_name"] == str(picture) for r in results)          # matched by name by `evaluate`


def test_image_without_objects_gives_empty_results_of_the_right_shapes(trained):
    _, recipe, model, _ = trained
    blank = np.full((96, 96, 3), 128, dtype=np.uint8)
    threshold = model.config.score_threshold
    # At the SVMs' decision boundary (score > 0); the default -1 also keeps weak detections, for AP.
    model.config.score_threshold = 0.0
    try:
        found = recipe.predict(model, [blank], torch.device("cpu"))[0]
    finally:
        model.config.score_threshold = threshold
    assert found["boxes"].shape == (0, 4) and found["scores"].shape == (0,) and found["labels"].shape == (0,)
    found, _ = rcnn.detect(model, blank, torch.zeros(0, 4))        # no proposals at all
    assert found["boxes"].shape == (0, 4) and found["labels"].dtype == torch.int64


def test_detect_refuses_an_image_that_is_not_rgb_uint8():
    model = rcnn.RCNN(rcnn.RCNNConfig(num_classes=2, input_size=16, channels=(4, 8), hidden=8))
    with pytest.raises(ValueError, match="uint8"):
        rcnn.detect(model, np.zeros((8, 8, 3), dtype=np.float32), torch.zeros(1, 4))


# ------------------------------------------------------------------------------------------------ options
def test_rcnn_default_recipe_stores_the_options_checkpoints_always_stored():
    """The keys, values, types and order of the hand-written dict stored before `RCNNOptions` (epochs and lr
    resolved)."""
    from scenekit.models.registry import make_recipe

    before = {"image_size": 160, "input_size": 32, "padding": None, "backbone": "small", "backbone_weights": None,
              "channels": [16, 32, 64], "norm": "batch", "hidden": 256, "dropout": 0.5, "epochs": 10, "lr": 0.02,
              "regions_per_batch": 128, "flip": True, "svm_C": 0.01, "svm_positive_weight": 2.0, "ridge": 1000.0,
              "proposal_mode": "fast", "proposal_max_side": None, "max_proposals": 2000, "score_threshold": -1.0,
              "nms_threshold": 0.3, "cache": None, "max_detections": 100}
    stored = make_recipe("rcnn", {1: "a", 2: "b"}).options
    assert list(stored.items()) == list(before.items())
    assert [type(v) for v in stored.values()] == [type(v) for v in before.values()]
    assert make_recipe("rcnn", {1: "a", 2: "b"}, stored=stored).options == stored
    given = rcnn.recipe({1: "a"}, input_size=24, padding=1, channels=(8, 16), epochs=2)
    assert given.model_config["padding"] == 1 and given.options["channels"] == [8, 16]
    assert given.phases[0].epochs == 2


def test_rcnn_recipe_names_a_misspelt_option():
    from scenekit.errors import DataError
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean svm_C"):
        rcnn.recipe({1: "a"}, svm_c=0.1)
    assert all(spec.help and "\n" not in spec.help for spec in model_options("rcnn").values())
