"""Classification + localization: heads, the L2 loss, the two-phase recipe, ILSVRC scoring, predict CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit import cli
from scenekit.boxes import box_iou
from scenekit.data.records import Dataset, Record
from scenekit.engine.train import TrainConfig, train
from scenekit.models import localizer as loc
from scenekit.models import registry

CATS = {1: "circle", 2: "square", 3: "triangle"}


def _model(class_specific=True, size=32):
    torch.manual_seed(0)
    return loc.Localizer(loc.LocalizerConfig(num_classes=3, image_size=size, class_specific=class_specific,
                                             channels=(4, 8), hidden=16))


def _record(image_id, boxes, labels, size=40, value=0):
    image = np.full((size, size, 3), value, dtype=np.uint8)
    return Record(image_id=image_id, file_name=f"{image_id}.png", width=size, height=size,
                  boxes=np.array(boxes, dtype=np.float64), labels=np.array(labels), image=image)


@pytest.mark.parametrize("class_specific, rows", [(True, 3), (False, 1)])
def test_heads_give_class_scores_and_one_box_per_class_or_one_in_all(class_specific, rows):
    logits, boxes = _model(class_specific)(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3) and boxes.shape == (2, rows, 4)


def test_l2_loss_is_the_mean_squared_corner_distance():
    predicted = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]])
    target = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.1, 0.2, 0.3, 0.0]])
    assert float(loc.box_l2_loss(predicted, target)) == pytest.approx((0.25 + 0.16) / 2)


def test_class_specific_regression_trains_only_the_true_class_row():
    model = _model(True)
    images = torch.rand(2, 3, 32, 32)
    targets = {"labels": torch.tensor([2, 2]), "boxes": torch.tensor([[0.1, 0.1, 0.9, 0.9]] * 2)}
    model(images, targets)["box_regression"].backward()
    grad = model.regressor[3].weight.grad.view(3, 4, -1)          # [class, corner, hidden]
    assert grad[2].abs().sum() > 0
    assert grad[:2].abs().sum() == 0


def test_data_takes_the_largest_object_normalised_and_flips_with_it():
    record = _record(1, [[0, 0, 10, 10], [4, 8, 30, 20]], [1, 3])
    record.image[:, :20] = 255                                    # left half white: shows the flip
    data = loc.LocalizationData(Dataset([record], CATS), [1, 2, 3], image_size=32)
    image, target = data[0]
    assert image.shape == (3, 32, 32)
    assert int(target["labels"]) == 2                             # category 3 -> index 2
    assert target["boxes"].tolist() == pytest.approx([0.1, 0.2, 0.75, 0.5])
    flipping = loc.LocalizationData(Dataset([record], CATS), [1, 2, 3], image_size=32, flip=True)
    torch.manual_seed(0)
    seen = {}
    for _ in range(20):
        image, target = flipping[0]
        seen[tuple(round(v, 4) for v in target["boxes"].tolist())] = round(float(image[0, 0, 0]), 4)
    assert seen == {(0.1, 0.2, 0.75, 0.5): 1.0, (0.25, 0.2, 0.9, 0.5): 0.0}


class _Scripted(loc.Localizer):
    """A localizer whose outputs are read from a table by image: pixel value k -> row k."""

    def __init__(self, logits, boxes):
        super().__init__(loc.LocalizerConfig(num_classes=3, image_size=32, class_specific=False, channels=(4,),
                                             hidden=4))
        self.table_logits, self.table_boxes = logits, boxes

    def forward(self, images, targets=None):
        index = (images[:, 0, 0, 0] * 255).round().long()
        return self.table_logits[index], self.table_boxes[index][:, None]


def test_ilsvrc_errors_and_iou_by_hand():
    # Images (40 px): 0 right class first, IoU 0.64; 1 right class only third; 2 right class, IoU 0.25;
    # 3 two objects, the guessed class is the smaller object's and its box fits it.
    records = [_record(1, [[0, 0, 20, 20]], [1], value=0), _record(2, [[0, 0, 20, 20]], [1], value=1),
               _record(3, [[0, 0, 20, 20]], [1], value=2),
               _record(4, [[0, 0, 8, 8], [10, 10, 40, 40]], [2, 3], value=3)]
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [3, 2, 1], [1, 3, 2]])
    boxes = torch.tensor([[0, 0, 0.4, 0.4], [0, 0, 0.5, 0.5], [0, 0, 0.25, 0.25], [0, 0, 0.2, 0.2]])
    metrics = loc.evaluate_localizer(_Scripted(logits, boxes), Dataset(records, CATS), torch.device("cpu"))
    # Devkit rule: an image's error is the fraction of its classes no guess localizes. Top-1: 0, 1, 1 and
    # 1/2 (class 2 found, class 3 not). Top-5 (every class, same box): 0, 0 (IoU 1), 1, 1/2.
    assert metrics["top1_loc_error"] == pytest.approx((0 + 1 + 1 + 0.5) / 4)
    assert metrics["top5_loc_error"] == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    assert metrics["top1_cls_error"] == pytest.approx((0 + 1 + 0 + 0.5) / 4)   # devkit: mean over classes
    # Agnostic box vs each main box: 16/25, 1, 1/4, and [0,0,8,8] vs [10,10,40,40] -> 0.
    assert metrics["mean_iou"] == pytest.approx((0.64 + 1.0 + 0.25 + 0.0) / 4)
    assert metrics["iou_at_0.5"] == pytest.approx(0.5)
    assert metrics["images"] == 4


def test_recipe_trains_classifier_then_regressor_alone(tmp_path):
    from scenekit.data.world import make_world

    train_data = make_world(48, seed=0, split="train", image_size=64, single_object=True)
    recipe = loc.recipe(train_data.categories, image_size=32, channels=(4, 8), hidden=16, epochs=1,
                        regress_epochs=1)
    assert [p.trains for p in recipe.phases] == [("features", "classifier"), ("regressor",)]
    assert [p.loss_terms for p in recipe.phases] == [("classification",), ("box_regression",)]
    assert recipe.phases[1].optimizer == "sgd"
    result = train(recipe, train_data, train_data, TrainConfig(out=str(tmp_path), batch_size=16, log_every=0,
                                                               tensorboard=False))
    rows = result.history
    assert [r["phase"] for r in rows] == ["classify", "regress"]
    # Phase 2 changes the boxes only: the classification metrics stay exactly as phase 1 left them.
    assert rows[0]["top1_cls_error"] == rows[1]["top1_cls_error"]
    assert rows[1]["train_box_regression"] < rows[0]["train_box_regression"]


def test_predict_cli_writes_pictures_and_coco_results(tmp_path, capsys):
    from scenekit.data.world import make_world

    # 15 + 40 epochs fit these 16 one-object images: on the first four, each top guess is the object's category with
    # a box of IoU 0.78 to 0.88 with the object's under each CPU kernel (ATEN_CPU_CAPABILITY default, avx2, avx512);
    # after 1 + 1 epochs every top guess is the wrong category, its box of IoU 0.
    data = make_world(16, seed=0, split="train", image_size=64, single_object=True)
    recipe = registry.make_recipe("localizer", data.categories, {"image_size": 32, "channels": [4, 8], "hidden": 16,
                                                              "epochs": 15, "regress_epochs": 40})
    train(recipe, data, None, TrainConfig(out=str(tmp_path / "run"), batch_size=8, log_every=0, tensorboard=False))
    files = []
    for i, record in enumerate(data.records[:4]):
        files.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(record.image).save(files[-1])
    code = cli.main(["predict", *files, "--checkpoint", str(tmp_path / "run" / "best.pt"),
                     "--out", str(tmp_path / "pred")])
    assert code == 0
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(results) == 4 * 5                                  # top-5 guesses per image
    for k, (name, record) in enumerate(zip(files, data.records), start=1):
        # a result names its image by file_name when it carries one, else by image_id (1.. in the order given)
        mine = [r for r in results if (Path(r["file_name"]).name == Path(name).name if "file_name" in r
                                       else r["image_id"] == k)]
        assert len(mine) == len({r["category_id"] for r in mine}) == 5                # five different guesses
        assert all(r["category_id"] in data.categories and len(r["bbox"]) == 4 for r in mine)
        best = max(mine, key=lambda r: r["score"])
        assert best["category_id"] == int(record.labels[0]), name
        x, y, w, h = best["bbox"]
        iou = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64), torch.tensor(record.boxes))
        assert float(iou[0, 0]) >= 0.5, name
        assert (tmp_path / "pred" / f"image{k - 1}.png").is_file()
    # The same images scored by `evaluate` (the world's first four training images): ILSVRC errors of 0.
    assert cli.main(["evaluate", "localizer", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "train",
                     "--images", "4", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["images"] == 4 and metrics["top1_loc_error"] == metrics["top5_loc_error"] == 0
    bad = cli.main(["predict", str(tmp_path / "missing.png"), "--checkpoint", str(tmp_path / "run" / "best.pt"),
                    "--out", str(tmp_path / "pred")])
    assert bad == 2 and "missing.png" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ options
def test_localizer_default_recipes_store_the_options_checkpoints_always_stored():
    """Keys, values and order as the hand-written dict stored them before `LocalizerOptions`: epochs and
    regress_epochs resolved (8), lr as given."""
    from scenekit.models.registry import make_recipe

    localizer = {"class_specific": True, "image_size": 64, "backbone": "small", "backbone_weights": None,
                 "channels": [16, 32, 64], "norm": "batch", "hidden": 256, "epochs": 8, "lr": None,
                 "regress_epochs": 8, "regress_lr": 0.03, "flip": True, "inference": "whole", "scales": [1.0, 1.25],
                 "max_detections": 5}
    for name, before in (("localizer", localizer), ("localizer-agnostic", {**localizer, "class_specific": False}),
                         ("overfeat", {**localizer, "inference": "overfeat"})):
        stored = make_recipe(name, {1: "a", 2: "b"}).options
        assert list(stored.items()) == list(before.items())
        assert [type(v) for v in stored.values()] == [type(v) for v in before.values()]
        assert make_recipe(name, {1: "a", 2: "b"}, stored=stored).options == stored
    assert loc.recipe({1: "a"}, epochs=3).options["regress_epochs"] == 3


def test_localizer_recipe_names_a_misspelt_option():
    from scenekit.errors import DataError
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean regress_lr"):
        loc.recipe({1: "a"}, regress_rate=0.1)
    assert all(spec.help and "\n" not in spec.help for spec in model_options("overfeat").values())
    assert model_options("overfeat")["inference"].default == "overfeat"
