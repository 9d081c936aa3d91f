"""User data trains with what its boxes decide (scenekit.cli's run_train + scenekit.data.recommend) and with the
augmentation presets of the detector recipes (`augment`: scenekit.data.augment wired into their make_dataset)."""

import numpy as np
import pytest
import torch
from PIL import Image

from scenekit.data.augment import TOP_DOWN_DEFAULTS, USER_DATA_DEFAULTS, MosaicDataset, RecordPairs
from scenekit.data.records import Dataset, Record
from scenekit.data.tiling import tile_windows
from scenekit.errors import DataError


def boxes_in(rng, count, width, height, smallest=12, largest=30):
    side = rng.uniform(smallest, largest, count)
    x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
    return np.stack([x, y, x + side, y + side], 1).round()


def voc_folder(path, images=3, width=200, height=150, objects=6, seed=0):
    """A flat LabelImg folder of `images` noise photographs with square 'nut' boxes drawn as bright squares."""
    path.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(images):
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        boxes = boxes_in(rng, objects, width, height)
        for x1, y1, x2, y2 in boxes.astype(int):
            pixels[y1:y2, x1:x2] = 220
        Image.fromarray(pixels).save(path / f"{k}.jpg")
        xml = "".join(f"<object><name>nut</name><bndbox><xmin>{x1 + 1:.0f}</xmin><ymin>{y1 + 1:.0f}</ymin>"
                      f"<xmax>{x2:.0f}</xmax><ymax>{y2:.0f}</ymax></bndbox></object>" for x1, y1, x2, y2 in boxes)
        (path / f"{k}.xml").write_text(f"<annotation><filename>{k}.jpg</filename><size><width>{width}</width>"
                                       f"<height>{height}</height></size>{xml}</annotation>")
    return path


def in_memory(images=4, width=200, height=150, objects=5, seed=0):
    rng = np.random.default_rng(seed)
    records = [Record(image_id=k + 1, file_name=f"{k}.jpg", width=width, height=height,
                      boxes=boxes_in(rng, objects, width, height), labels=[1] * objects,
                      image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for k in range(images)]
    return Dataset(records, {1: "nut"}, name="memory")


# ------------------------------------------------------------------------------------------------- train
def test_train_on_user_data_stores_the_recommended_options_under_the_users(tmp_path, capsys):
    from scenekit.cli import main
    from scenekit.data.recommend import recommend
    from scenekit.data.sources import load_data
    from scenekit.engine.checkpoint import load_checkpoint

    data = voc_folder(tmp_path / "nuts")
    out = tmp_path / "run"
    assert main(["train", "faster-rcnn", "--data", f"voc:{data}", "--val-data", f"voc:{data}", "--epochs", "1",
                 "--option", "rois_per_image=96", "--out", str(out), "--device", "cpu"]) == 0
    stderr = capsys.readouterr().err
    chosen = next(line for line in stderr.splitlines() if line.startswith("scenekit train: from the data: "))
    assert "batch_size=1, image_size=" in chosen and "augment=\"user\"" in chosen
    assert "yours kept: epochs=1, rois_per_image=96" in chosen
    stored = load_checkpoint(out / "last.pt")["options"]
    expected = recommend(load_data(f"voc:{data}", "train"), family="faster-rcnn").options["faster-rcnn"]
    for key in ("image_size", "anchor_sizes", "anchor_ratios", "max_detections", "augment"):
        assert stored[key] == expected[key], key
    assert stored["augment"] == "user"
    assert stored["rois_per_image"] == 96 and stored["epochs"] == 1        # the user's --option and flag win

    # --resume trains on with the stored options; nothing is derived again
    assert main(["train", "faster-rcnn", "--data", f"voc:{data}", "--val-data", f"voc:{data}", "--epochs", "2",
                 "--out", str(out), "--resume", "--device", "cpu"]) == 0
    assert "from the data" not in capsys.readouterr().err
    resumed = load_checkpoint(out / "last.pt")["options"]
    assert resumed["rois_per_image"] == 96 and resumed["anchor_sizes"] == stored["anchor_sizes"]


def test_world_training_derives_nothing_from_the_data():
    from scenekit.api import data_defaults
    from scenekit.data.world import make_world

    # captioners and other non-detectors get nothing; detectors on data without boxes neither
    assert data_defaults("fcn", make_world(4, image_size=160), {"lr": 1.0}, None) == ({"lr": 1.0}, None)
    empty = Dataset([Record(image_id=1, file_name="a.jpg", width=10, height=10)], {1: "a"})
    assert data_defaults("yolo2", empty, {}, None) == ({}, None)


def test_recommended_options_for_a_large_photograph_fit_the_cpu_budget():
    from scenekit.data.recommend import CPU_BUDGET_S, recommend

    rng = np.random.default_rng(0)
    photo = Dataset([Record(image_id=1, file_name="p.jpg", width=2300, height=1500,
                            boxes=boxes_in(rng, 300, 2300, 1500, 14, 100), labels=[1] * 300)], {1: "tree"})
    rec = recommend(photo)
    assert rec.schedule["yolo2"]["capped"]                    # 1,000 yolo2 steps at 512 px would not fit
    for name, schedule in rec.schedule.items():
        assert schedule["cpu_seconds"] <= CPU_BUDGET_S, name
        assert schedule["warmup_steps"] < schedule["steps"]
        assert rec.options[name]["slice_factor"] == 1.5
        assert rec.options[name]["max_detections"] >= 300
    assert rec.options["yolo2"]["precise_bn"] == rec.inputs_per_epoch
    assert "augment" not in rec.options["fast-rcnn"] and rec.options["faster-rcnn"]["augment"] == "user"
    unbounded = recommend(photo, budget_s=None).schedule["yolo2"]
    assert unbounded["steps"] >= 1000 and not unbounded["capped"]


# ------------------------------------------------------------------------------------------------- augment
def test_augment_presets_name_the_augment_modules_defaults():
    from scenekit.models.fast_rcnn import augment_options

    assert augment_options("world") is None
    assert augment_options("user") == USER_DATA_DEFAULTS
    assert augment_options("top-down") == TOP_DOWN_DEFAULTS
    none = augment_options("none")
    assert not (none.hflip or none.vflip or none.rot90 or none.crop or none.scale_jitter or none.color_jitter
                or none.mosaic)
    with pytest.raises(DataError, match="augment must be one of") as caught:
        augment_options("aerial")
    assert caught.value.field == "augment"


def test_world_preset_keeps_the_plain_data_pipeline():
    from scenekit.models.registry import make_recipe

    data = in_memory()
    for model in ("faster-rcnn", "mask-rcnn", "yolo2"):
        recipe = make_recipe(model, data.categories,
                             {"image_size": 160, **({"box_masks": True} if model == "mask-rcnn" else {})})
        assert recipe.options["augment"] == "world"
        assert recipe.make_dataset(data, True).pairs is None, model


def test_user_preset_augments_training_images_only():
    from scenekit.models.registry import make_recipe

    data = in_memory()
    two_stage = make_recipe("faster-rcnn", data.categories, {"image_size": 160, "augment": "user"})
    train = two_stage.make_dataset(data, True)
    assert isinstance(train.pairs, RecordPairs) and two_stage.make_dataset(data, False).pairs is None
    yolo = make_recipe("yolo2", data.categories, {"image_size": 160, "augment": "user"})
    pairs = yolo.make_dataset(data, True).pairs
    assert isinstance(pairs, MosaicDataset) and pairs.p == USER_DATA_DEFAULTS.mosaic
    assert yolo.make_dataset(data, False).pairs is None
    no_mosaic = make_recipe("yolo2", data.categories, {"image_size": 160, "augment": "none"})
    assert isinstance(no_mosaic.make_dataset(data, True).pairs, RecordPairs)


@pytest.mark.parametrize("model", ["faster-rcnn", "yolo2"])
def test_a_training_step_runs_on_augmented_images(model):
    from scenekit.models.registry import make_recipe

    torch.manual_seed(0)
    data = in_memory(images=4)
    recipe = make_recipe(model, data.categories, {"image_size": 128, "augment": "user", "sizes": [128]}
                         if model == "yolo2" else {"image_size": 128, "augment": "user"})
    network = recipe.build_model(recipe.model_config)
    dataset = recipe.make_dataset(data, True)
    items = [dataset[i] for i in range(len(dataset))]
    for image, target in items:
        assert image.shape == (3, 128, 128)
        boxes = target["boxes"]
        assert ((boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= 128).all())
    images, targets = recipe.collate(items)
    network.train()
    losses = network(images, targets)
    loss = sum(losses.values()) if isinstance(losses, dict) else losses
    assert torch.isfinite(loss)
    loss.backward()


def test_an_epoch_shows_a_sliced_photograph_once_per_tile():
    from scenekit.models.fast_rcnn import tiled_epoch

    small = in_memory(images=2)
    assert tiled_epoch(small, 160, 2.5) is small                             # nothing to slice: unchanged
    photo = Record(image_id=9, file_name="big.jpg", width=1700, height=900, boxes=[[10, 10, 40, 40]], labels=[1])
    data = Dataset([photo, *small.records], small.categories)
    epoch = tiled_epoch(data, 320, 1.5)
    tiles = len(tile_windows(900, 1700, 320, 80))
    assert len(epoch.records) == tiles + 2 and sum(r is photo for r in epoch.records) == tiles
    assert len(tiled_epoch(data, 320, float("inf")).records) == 3           # slice_factor 0: never sliced
