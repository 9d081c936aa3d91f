"""Mask R-CNN and FCN never learn masks filled from boxes without being asked (`box_masks=true`) and saying so."""

import numpy as np
import pytest

from scenekit.cli import main
from scenekit.data.records import Dataset, Record
from scenekit.data.world import CATEGORIES, make_world
from scenekit.errors import DataError
from scenekit.models.fcn import IGNORE_INDEX, SegmentationData
from scenekit.models.registry import make_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SQUARE = [[2, 2, 12, 2, 12, 12, 2, 12]]                  # polygon of pixels 2..11 x 2..11


def _record(image_id, boxes, labels, segmentations=None, iscrowd=None):
    return Record(image_id=image_id, file_name=f"{image_id}.png", width=32, height=32,
                  image=np.zeros((32, 32, 3), np.uint8), boxes=boxes, labels=labels, segmentations=segmentations,
                  iscrowd=iscrowd if iscrowd is not None else [])


def _box_only():
    return Dataset([_record(1, [[4, 6, 20, 18], [0, 0, 8, 8]], [1, 2]),
                    _record(2, [[10, 10, 30, 26], [0, 0, 32, 32]], [3, 1], iscrowd=[False, True])],
                   {1: "circle", 2: "square", 3: "triangle"}, name="boxes")


# ------------------------------------------------------------------------------------------------ Mask R-CNN
def test_mask_rcnn_on_box_only_data_stops_naming_the_box_masks_option():
    recipe = make_recipe("mask-rcnn", {1: "circle", 2: "square", 3: "triangle"})
    assert recipe.options["box_masks"] is False
    with pytest.raises(DataError, match=r"^boxes: field segmentations: 3 of 3 objects have no mask, .*"
                                        r"pass --option box_masks=true"):      # the crowd region is not counted
        recipe.make_dataset(_box_only(), True)


def test_mask_rcnn_box_masks_option_fills_the_boxes_and_counts_them(capsys):
    recipe = make_recipe("mask-rcnn", {1: "circle", 2: "square", 3: "triangle"},
                         {"box_masks": True, "image_size": 32, "flip": False})
    assert recipe.options["box_masks"] is True
    data = recipe.make_dataset(_box_only(), True)
    assert capsys.readouterr().err.strip() == ("mask-rcnn: box_masks: 3 of 3 objects have no mask and train on "
                                               "their boxes filled as masks")
    _, target = data[0]
    expected = np.zeros((2, 32, 32), np.uint8)
    expected[0, 6:18, 4:20] = 1
    expected[1, 0:8, 0:8] = 1
    np.testing.assert_array_equal(target["masks"].numpy(), expected)


def test_mask_rcnn_box_masks_scores_masks_against_the_filled_boxes_it_trained_on(capsys):
    import torch

    from scenekit.masks import rle_decode
    from scenekit.models.mask_rcnn import with_box_masks

    data = _box_only()
    filled = with_box_masks(data)
    circle = np.zeros((32, 32), np.uint8)
    circle[6:18, 4:20] = 1
    np.testing.assert_array_equal(rle_decode(filled.records[0].segmentations[0]), circle)
    assert data.records[0].segmentations is None                          # the original is left alone
    world = make_world(2, seed=1, image_size=64)
    assert with_box_masks(world) is world
    recipe = make_recipe("mask-rcnn", {1: "circle", 2: "square", 3: "triangle"},
                         {"box_masks": True, "image_size": 32, "channels": [8, 16, 16], "hidden": 32,
                          "mask_convs": 1, "mask_channels": 8})
    model = recipe.build_model(recipe.model_config).eval()
    for _ in range(2):
        metrics = recipe.evaluate(model, data, torch.device("cpu"))
    assert "mask_AP" in metrics                          # without the option this data has no masks to score
    assert capsys.readouterr().err.count("mask AP is measured against filled boxes") == 1


def test_mask_rcnn_on_data_with_masks_says_nothing(capsys):
    recipe = make_recipe("mask-rcnn", dict(CATEGORIES), {"image_size": 64})
    recipe.make_dataset(make_world(4, seed=1, image_size=64), True)
    partly = Dataset([_record(1, [[2, 2, 12, 12], [4, 6, 20, 18]], [1, 2], [SQUARE, None])], dict(CATEGORIES))
    with pytest.raises(DataError, match="1 of 2 objects have no mask"):
        recipe.make_dataset(partly, True)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------ FCN
def test_fcn_on_box_only_data_stops_naming_the_box_masks_option():
    recipe = make_recipe("fcn", {1: "circle", 2: "square", 3: "triangle"})
    assert recipe.options["box_masks"] is False
    with pytest.raises(DataError, match="no image has pixel labels .*pass --option box_masks=true"):
        recipe.make_dataset(_box_only(), True)


def test_fcn_box_masks_option_paints_boxes_with_their_class_and_counts_them(capsys):
    data = SegmentationData(_box_only(), [1, 2, 3], None, box_masks=True)
    assert len(data) == 2
    first = np.zeros((32, 32), np.int64)
    first[6:18, 4:20] = 1                                 # circle -> class index 1 (larger: painted first)
    first[0:8, 0:8] = 2                                   # square -> 2, on top
    np.testing.assert_array_equal(data[0][1]["semantic"].numpy(), first)
    second = np.full((32, 32), IGNORE_INDEX, np.int64)    # the crowd region is ignored, as with outlines
    second[10:26, 10:30] = 3
    np.testing.assert_array_equal(data[1][1]["semantic"].numpy(), second)
    assert capsys.readouterr().err.strip() == ("boxes: box_masks: 3 objects have no mask and train on their boxes "
                                               "filled as masks")
    assert make_recipe("fcn", {1: "a"}, {"box_masks": True}).options["box_masks"] is True
    assert make_recipe("sliding-window", {1: "a"}, {"box_masks": True}).options["box_masks"] is True


def test_fcn_box_masks_scores_against_the_filled_boxes_it_trained_on(capsys):
    import torch

    categories = {1: "circle", 2: "square", 3: "triangle"}
    recipe = make_recipe("fcn", categories, {"box_masks": True, "image_size": 32})
    model = recipe.build_model(recipe.model_config).eval()
    for _ in range(2):
        assert recipe.evaluate(model, _box_only(), torch.device("cpu"))["images"] == 2
    assert capsys.readouterr().err.strip() == ("boxes: box_masks: 3 objects have no mask and are scored against "
                                               "their boxes filled as masks")                  # said once
    plain = make_recipe("fcn", categories, {"image_size": 32})
    with pytest.raises(DataError, match="no image has pixel labels to evaluate against"):
        plain.evaluate(model, _box_only(), torch.device("cpu"))


def test_fcn_says_how_many_box_only_images_it_leaves_out(capsys):
    labelled = _record(3, [[2, 2, 12, 12]], [1], [SQUARE])
    data = SegmentationData(Dataset([labelled, *_box_only().records], {1: "circle", 2: "square", 3: "t"},
                                    name="mixed"), [1, 2, 3], None)
    assert len(data) == 1
    assert capsys.readouterr().err.strip() == ("mixed: 2 of 3 images have boxes but no pixel labels and are left "
                                               "out (--option box_masks=true trains on their boxes filled as masks)")


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def box_only_yolo(tmp_path_factory):
    """The world converted to YOLO, a format without masks."""
    folder = tmp_path_factory.mktemp("box_only")
    assert main(["data", "world", "--out", str(folder / "w"), "--images", "3", "--image-size", "64"]) == 0
    assert main(["data", "convert", "--from", f"coco:{folder / 'w'}", "--to", f"yolo:{folder / 'yolo'}"]) == 0
    return folder / "yolo"


@pytest.mark.parametrize("model", ["mask-rcnn", "fcn"])
def test_train_on_box_only_data_is_a_one_line_error_naming_the_option(box_only_yolo, tmp_path, capsys, model):
    capsys.readouterr()
    assert main(["train", model, "--data", f"yolo:{box_only_yolo}", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    error = err.strip().splitlines()[-1]                 # after any notes on how the data was split
    assert error.startswith("scenekit train: error:") and "--option box_masks=true" in error
    assert "Traceback" not in err and err.count("error") == 1
