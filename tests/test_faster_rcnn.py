"""Tests of scenekit.models.faster_rcnn: the RPN loss (Ren et al. 2015, eq. 1), the proposal layer, a
single-image overfit, the empty cases, and `scenekit train/predict faster-rcnn` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scenekit.boxes import box_iou, encode_boxes
from scenekit.data.world import CATEGORIES, make_world
from scenekit.models import faster_rcnn
from scenekit.models.faster_rcnn import FasterRCNN, FasterRCNNConfig, propose, rpn_loss


def test_rpn_loss_matches_hand_computation():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # IoU 1 with the object -> positive
                            [30.0, 30.0, 40.0, 40.0],    # IoU 0 -> negative
                            [0.0, 0.0, 10.0, 5.5]])      # IoU 0.55 -> ignored
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    objectness = torch.tensor([[2.0, -1.0, 5.0]])
    deltas = torch.zeros(1, 3, 4)
    deltas[0, 0] = torch.tensor([0.1, 0.0, 0.0, -0.2])
    deltas[0, 2] = torch.tensor([9.0, 9.0, 9.0, 9.0])     # ignored anchor: must not count
    config = FasterRCNNConfig(num_classes=1, rpn_batch=256)
    target = {"boxes": gt, "labels": torch.tensor([1]), "size": torch.tensor([50, 50])}
    objectness_loss, box_loss = rpn_loss(objectness, deltas, anchors, [target], config)
    # BCE over the 2 sampled anchors: -log sigmoid(2) - log(1 - sigmoid(-1)), divided by N_cls = 2.
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert float(objectness_loss) == pytest.approx(expected, rel=1e-6)
    # Smooth L1 with beta = 1/9 on the positive anchor (target deltas 0): 0.1 -> 0.5*0.01*9, 0.2 -> 0.2 - 1/18.
    assert float(box_loss) == pytest.approx((0.5 * 0.01 * 9 + (0.2 - 0.5 / 9)) / 2, rel=1e-6)


def test_rpn_regression_target_is_the_anchor_to_object_delta():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[1.0, 0.0, 11.0, 12.0]])
    wanted = encode_boxes(gt, anchors)                    # what a perfect RPN predicts
    config = FasterRCNNConfig(num_classes=1)
    target = {"boxes": gt, "labels": torch.tensor([1]), "size": torch.tensor([20, 20])}
    _, box_loss = rpn_loss(torch.zeros(1, 1), wanted[None], anchors, [target], config)
    assert float(box_loss) == pytest.approx(0.0, abs=1e-7)


def test_proposal_layer_clips_drops_small_boxes_and_suppresses_overlaps():
    anchors = torch.tensor([[-10.0, 0.0, 20.0, 20.0],     # clipped to x1 = 0
                            [-8.0, 0.0, 20.0, 20.0],      # clipped: IoU 1 with the first -> suppressed
                            [30.0, 30.0, 31.0, 31.0],     # 1 px: below min_size 2 -> dropped
                            [40.0, 40.0, 60.0, 60.0]])
    scores = torch.tensor([[3.0, 2.0, 10.0, 1.0]])
    out = propose(scores, torch.zeros(1, 4, 4), anchors, [(50, 50)], pre_nms=10, post_nms=10,
                  nms_threshold=0.7, min_size=2.0)[0]
    assert out.tolist() == [[0, 0, 20, 20], [40, 40, 50, 50]]
    top = propose(scores, torch.zeros(1, 4, 4), anchors, [(50, 50)], pre_nms=10, post_nms=1,
                  nms_threshold=0.7, min_size=2.0)[0]
    assert top.tolist() == [[0, 0, 20, 20]]


def test_anchors_cover_every_feature_position_with_nine_shapes():
    model = FasterRCNN(FasterRCNNConfig(num_classes=2, image_size=64))
    features = model.features(torch.zeros(1, 3, 64, 64))
    anchors = model.anchors(features)
    assert features.shape[2:] == (8, 8) and anchors.shape == (8 * 8 * 9, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[:9].tolist() == [[4.0, 4.0]] * 9           # cell (0, 0) centred at stride / 2
    objectness, deltas = model.rpn(features)
    assert objectness.shape == (1, 8 * 8 * 9) and deltas.shape == (1, 8 * 8 * 9, 4)


def test_faster_rcnn_overfits_one_image_and_detects_its_objects(one_thread, train_steps):
    torch.manual_seed(0)
    world = make_world(1, image_size=128, seed=11, min_objects=2, max_objects=3)
    record = world.records[0]
    r = faster_rcnn.recipe(CATEGORIES, image_size=128, flip=False)
    model = r.build_model(r.model_config)
    batch = r.collate([r.make_dataset(world, True)[0]])
    history, losses = train_steps(model, batch, 80)
    assert set(losses) == {"rpn_objectness", "rpn_box_regression", "classification", "box_regression"}
    assert np.mean(history[-5:]) < 0.4 * np.mean(history[:5])
    found = r.predict(model.eval(), [record.image], torch.device("cpu"))[0]
    confident = found["scores"] >= 0.5
    iou = box_iou(torch.tensor(record.boxes, dtype=torch.float64), found["boxes"][confident])
    for k in range(len(record.boxes)):
        best = int(iou[k].argmax())
        assert float(iou[k, best]) >= 0.5
        assert int(found["labels"][confident][best]) == int(record.labels[k])


def test_image_without_objects_trains_and_detects_nothing_of_the_wrong_shape(one_thread):
    torch.manual_seed(0)
    model = FasterRCNN(FasterRCNNConfig(num_classes=3, image_size=64))
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "size": torch.tensor([64, 64])}
    losses = model.train()(torch.zeros(1, 3, 64, 64), [target])
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert float(losses["rpn_box_regression"]) == 0 and float(losses["box_regression"]) == 0
    with torch.no_grad():
        model.box_head.cls_score.bias[0] = 20.0               # background everywhere
    found = model.eval()(torch.zeros(2, 3, 64, 64))
    assert len(found) == 2
    for one in found:
        assert one["boxes"].shape == (0, 4) and one["scores"].shape == (0,) and one["labels"].shape == (0,)


def finds_a_known_object(record, result, iou=0.5) -> bool:
    """Whether the COCO result's box overlaps one of the record's objects of its category by `iou` or more."""
    x, y, w, h = result["bbox"]
    for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
        inter = max(0.0, min(x + w, x2) - max(x, x1)) * max(0.0, min(y + h, y2) - max(y, y1))
        if label == result["category_id"] and inter / (w * h + (x2 - x1) * (y2 - y1) - inter) >= iou:
            return True
    return False


def test_cli_trains_validates_and_predicts_with_pictures(tmp_path, one_thread, coco_ap50):
    from PIL import Image

    from scenekit.cli import main

    # Two training images and 80 steps (the recipe warms up for 50) overfit them: the written detections score
    # AP50 0.77 to 0.91 on them under each CPU kernel (ATEN_CPU_CAPABILITY default, avx2, avx512); one step scores
    # 0.03, as does an untrained model, whose 100 boxes per image cover everything in every class.
    out = tmp_path / "run"
    assert main(["train", "faster-rcnn", "--train-images", "2", "--val-images", "1", "--epochs", "40",
                 "--batch-size", "1", "--lr", "6e-3", "--out", str(out), "--log-every", "0", "--option",
                 "image_size=64", "--option", "flip=false", "--option", "channels=[8,16,16]", "--option",
                 "hidden=64", "--json"]) == 0
    history = (out / "metrics.csv").read_text()
    assert "mAP50" in history and "proposal_ms" in history and len(history.splitlines()) == 1 + 40
    training = make_world(2, image_size=64, split="train")         # what `--data world` trained on (seed 0)
    files = []
    for k, record in enumerate(training.records):
        files.append(str(tmp_path / f"scene{k}.png"))
        Image.fromarray(record.image).save(files[-1])
    assert main(["predict", *files, "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pred")]) == 0
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert results and all(set(r) >= {"category_id", "score", "bbox"} and {"file_name", "image_id"} & set(r)
                           for r in results)
    assert coco_ap50(training.records, files, results) >= 0.5
    for k, (name, record) in enumerate(zip(files, training.records), start=1):
        mine = [r for r in results if (Path(r["file_name"]).name == Path(name).name if "file_name" in r
                                       else r["image_id"] == k)]
        best = max(mine, key=lambda r: r["score"])
        assert finds_a_known_object(record, best), (name, best)            # the most confident one is right
        # The picture is the image with the detections drawn: the best one's outline is there.
        # Pictures are drawn at >= 512 px: the 64 px image enlarged 8 times (nearest), boxes scaled with it.
        picture = np.asarray(Image.open(tmp_path / "pred" / f"scene{k - 1}.png").convert("RGB"))
        factor = 512 // record.width
        assert picture.shape == (record.height * factor, record.width * factor, 3)
        plain = np.asarray(Image.fromarray(record.image).resize(picture.shape[1::-1], Image.NEAREST))
        x, y, w, h = (v * factor for v in best["bbox"])
        x1, y1 = int(round(x)), int(round(y))
        x2, y2 = min(int(round(x + w)), picture.shape[1]), min(int(round(y + h)), picture.shape[0])
        changed = (picture != plain).any(axis=-1)                                  # [H, W]
        bottom = changed[max(y1, y2 - 3):y2, x1:x2].any(axis=0)      # the 2 px line on its bottom and right sides,
        right = changed[y1:y2, max(x1, x2 - 3):x2].any(axis=1)       # with a pixel's slack for rounding
        assert np.concatenate([bottom, right]).mean() > 0.8


# ------------------------------------------------------------------------------------------------ options
def test_faster_rcnn_default_recipe_stores_the_options_checkpoints_always_stored():
    """The keys, values and types of the hand-written dict stored before `FasterRCNNOptions` (epochs and lr
    resolved); the order of the keys may differ (the shared `TwoStageOptions` come first)."""
    from scenekit.models.registry import make_recipe

    before = {"image_size": 160, "backbone": "small", "backbone_weights": None, "freeze_stages": 0, "channels": [16, 32, 64],
              "extra_convs": 2, "norm": "batch", "hidden": 256, "rois_per_image": 64, "bg_low": 0.0,
              "anchor_sizes": [20.0, 46.0, 106.0], "anchor_ratios": [0.5, 1.0, 2.0], "roi_op": "align", "epochs": 12,
              "lr": 0.001, "flip": True, "max_detections": 100, "slice_factor": 2.5, "augment": "world"}
    stored = make_recipe("faster-rcnn", {1: "a", 2: "b"}).options
    assert stored == before and {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in before.items()}
    assert make_recipe("faster-rcnn", {1: "a", 2: "b"}, stored=stored).options == stored
    given = faster_rcnn.recipe({1: "a"}, image_size=64, anchor_sizes=(16, 32), roi_op="pool")
    assert given.options["anchor_sizes"] == [16, 32] and given.model_config["anchor_sizes"] == [16, 32]
    assert given.model_config["roi_op"] == "pool" and given.world == {"image_size": 64}


def test_faster_rcnn_recipe_names_a_misspelt_or_mistyped_option():
    from scenekit.errors import DataError
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean anchor_sizes"):
        faster_rcnn.recipe({1: "a"}, anchor_size=(16, 32))
    with pytest.raises(DataError, match="anchor_ratios"):
        faster_rcnn.recipe({1: "a"}, anchor_ratios=1.0)                 # a list of ratios, not one
    with pytest.raises(DataError, match="proposal_mode"):
        faster_rcnn.recipe({1: "a"}, proposal_mode="fast")             # Fast R-CNN's, not an RPN detector's
    assert all(spec.help and "\n" not in spec.help for spec in model_options("faster-rcnn").values())


def test_faster_rcnn_detect_has_no_clocks_and_timed_detect_times_its_three_stages(one_thread):
    from scenekit.models.fast_rcnn import timed_detect

    torch.manual_seed(0)
    model = FasterRCNN(FasterRCNNConfig(num_classes=3, image_size=64, channels=(8, 16, 16), hidden=32,
                                        roi_op="align")).eval()
    assert model.mask_head is None and model.fine_level is None          # boxes only
    images = torch.rand(2, 3, 64, 64)
    found = model.detect(images, [(64, 64)] * 2)
    assert isinstance(found, list) and len(found) == 2 and set(found[0]) == {"boxes", "scores", "labels"}
    timed, seconds = timed_detect(model, images, [(64, 64)] * 2)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(found, timed) for k in a)
    assert set(seconds) == {"conv", "proposals", "region"} and all(v > 0 for v in seconds.values())
    with torch.no_grad():
        assert all(torch.equal(a[k], b[k]) for a, b in zip(found, model(images)) for k in a)   # forward, no targets


def test_a_pretrained_resnet18_with_frozen_stages_trains_only_the_rest_and_restores_without_its_file(tmp_path):
    """--backbone resnet18 --backbone-weights FILE --option freeze_stages=2: the file (torchvision's names and
    shapes, made here) is loaded, the stem and layer1 stay fixed, and a checkpoint restores without the file."""
    import torch

    from scenekit.engine.evaluate import restore_model
    from scenekit.engine.train import prepare_phase
    from scenekit.models.registry import make_recipe
    from tests.test_backbones import _save_layout, resnet_layout

    path = tmp_path / "resnet18-f37072fd.pth"
    state = _save_layout(path, resnet_layout(False, (2, 2, 2, 2)))
    recipe = make_recipe("faster-rcnn", {1: "tree"}, {"backbone": "resnet18", "backbone_weights": str(path),
                                                      "freeze_stages": 2, "image_size": 64})
    model = recipe.build_model(recipe.model_config)
    assert torch.equal(model.features.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    trainable = {id(p) for p in prepare_phase(model, recipe.phases[0])}
    for name, parameter in model.named_parameters():
        fixed = name.startswith(("features.conv1.", "features.bn1.", "features.layer1."))
        assert (id(parameter) in trainable) is not fixed, name
    path.unlink()                                                       # the file is gone on another machine
    checkpoint = {"model_config": recipe.model_config, "model": model.state_dict()}
    restored = restore_model(recipe, checkpoint, torch.device("cpu"))
    assert torch.equal(restored.features.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
