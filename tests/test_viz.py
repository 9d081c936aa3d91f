"""Pictures (scenekit/viz.py): each drawing puts its colour where the box, mask, map or word must be."""

import numpy as np
import pytest

from scenekit import viz
from scenekit.errors import DataError


def grey(height=60, width=80):
    return np.full((height, width, 3), 100, np.uint8)


def test_box_outline_has_its_class_colour_and_inside_is_untouched():
    picture = np.asarray(viz.draw_boxes(grey(), [[10, 20, 50, 40]], labels=[3], width=2))
    assert tuple(picture[30, 10]) == viz.colour_for(3)          # left edge
    assert tuple(picture[39, 30]) == viz.colour_for(3)          # bottom edge (x2, y2 exclusive)
    assert tuple(picture[30, 30]) == (100, 100, 100)            # inside
    assert tuple(picture[50, 70]) == (100, 100, 100)            # outside


def test_box_tag_with_name_and_score_is_drawn_above_the_box():
    plain = np.asarray(viz.draw_boxes(grey(), [[10, 30, 50, 50]], labels=[1]))
    tagged = np.asarray(viz.draw_boxes(grey(), [[10, 30, 50, 50]], labels=[1], scores=[0.87],
                                       names={1: "circle"}))
    band = tagged[18:30, 10:50]
    assert (band == viz.colour_for(1)).all(axis=-1).any() and (band < 60).all(axis=-1).any()   # fill, text
    assert not np.array_equal(plain[18:30, 10:60], tagged[18:30, 10:60])


def test_mask_is_blended_translucently_only_where_it_is():
    mask = np.zeros((1, 60, 80), np.uint8)
    mask[0, 5:15, 5:25] = 1
    picture = np.asarray(viz.draw_masks(grey(), mask, labels=[2], alpha=0.5))
    expected = np.round(0.5 * 100 + 0.5 * np.asarray(viz.colour_for(2), dtype=np.float64))
    np.testing.assert_array_equal(picture[10, 10], expected)
    assert tuple(picture[30, 40]) == (100, 100, 100)


def test_semantic_map_tints_classes_and_adds_a_legend():
    class_map = np.zeros((60, 80), np.int64)
    class_map[:, 40:] = 4
    class_map[0, 0] = 255
    picture = viz.draw_semantic(grey(), class_map, names={4: "star"}, alpha=1.0)
    array = np.asarray(picture)
    assert picture.width > 80                                     # the legend column
    assert tuple(array[30, 60]) == viz.colour_for(4)              # class 4 tinted
    assert tuple(array[30, 10]) == (100, 100, 100)                # background untouched
    assert tuple(array[0, 0]) == (255, 255, 255)                  # ignore shown white
    legend = array[:, 80:]
    assert (legend == viz.colour_for(4)).all(axis=-1).any()       # its swatch
    with pytest.raises(ValueError, match="class_map"):
        viz.draw_semantic(grey(), np.zeros((5, 5)))


def test_caption_is_written_in_a_band_under_the_image():
    picture = viz.draw_caption(grey(), "a red circle left of a blue square beside a green star")
    array = np.asarray(picture)
    assert picture.width == 80 and picture.height > 60 + 14       # wrapped onto more than one line
    np.testing.assert_array_equal(array[:60], grey())
    band = array[60:]
    assert (band < 60).all(axis=-1).any() and (band == 255).all(axis=-1).any()     # dark text on white


def test_attention_panel_is_bright_where_the_word_attended():
    image = np.full((64, 64, 3), 200, np.uint8)
    alpha = np.zeros((2, 16))
    alpha[0, 0] = 1.0                     # word 1: top-left cell of a 4 x 4 grid
    alpha[1, 15] = 1.0                    # word 2: bottom-right cell
    sheet = np.asarray(viz.draw_attention(image, ["circle", "star"], alpha, cell=64, columns=3)).astype(int)
    label = 14
    first, second = sheet[label:, 64:128], sheet[label:, 128:192]
    assert first[5, 5].mean() > 150 > first[58, 58].mean()
    assert second[58, 58].mean() > 150 > second[5, 5].mean()
    np.testing.assert_allclose(viz.attention_heatmap(alpha[0], 8, 8).max(), 1.0)
    with pytest.raises(ValueError, match="square"):
        viz.attention_heatmap(np.ones(15), 8, 8)


def test_draw_prediction_combines_what_a_recipe_returns():
    mask = np.zeros((1, 60, 80), np.uint8)
    mask[0, 20:30, 20:30] = 1
    found = {"boxes": np.array([[18.0, 18.0, 40.0, 40.0], [0, 0, 5, 5]]), "scores": np.array([0.9, 0.1]),
             "labels": np.array([5, 6]), "masks": np.concatenate([mask, mask]), "caption": "a ring"}
    picture = viz.draw_prediction(grey(), found, {5: "ring", 6: "cross"}, score_threshold=0.5, long_side=None)
    array = np.asarray(picture)
    assert picture.height > 60                                    # the caption band
    assert tuple(array[30, 18]) == viz.colour_for(5)              # the shown box
    assert tuple(array[3, 0]) == (100, 100, 100)                  # the weak one (0.1 < 0.5) is not drawn
    assert tuple(array[25, 25]) != (100, 100, 100)                # its mask is


def test_prediction_of_a_small_image_is_drawn_enlarged_with_its_boxes_and_masks():
    mask = np.zeros((1, 60, 80), np.uint8)
    mask[0, 20:30, 20:30] = 1
    found = {"boxes": np.array([[18.0, 18.0, 40.0, 40.0]]), "scores": np.array([0.9]), "labels": np.array([5]),
             "masks": mask}
    array = np.asarray(viz.draw_prediction(grey(), found))
    assert array.shape == (384, 512, 3)                          # 80 x 60 -> long side 512, factor 6.4
    assert tuple(array[192, 115]) == viz.colour_for(5)           # the box's left edge, x = 18 * 6.4
    assert tuple(array[160, 160]) not in ((100, 100, 100), viz.colour_for(5))   # the mask, (25, 25) * 6.4
    assert tuple(array[160, 260]) == (100, 100, 100)             # outside the box and the mask
    large = np.full((600, 700, 3), 100, np.uint8)
    assert viz.draw_prediction(large, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}).size == (700, 600)


def test_training_curves_mark_the_best_epoch_and_overlay_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    for name, values in (("a", (0.2, 0.6, 0.5)), ("b", (0.3, 0.4, 0.7))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(
            "phase,epoch,step,lr,seconds,train_loss,train_box,AP50\n" +
            "".join(f"main,{e + 1},{10 * (e + 1)},0.01,1.0,{1 / (e + 1)},{0.5 / (e + 1)},{v}\n"
                    for e, v in enumerate(values)))
    rows = viz.read_training_log(tmp_path / "a" / "metrics.csv")
    assert viz.best_epoch(rows, "AP50", "max") == 2 and viz.best_epoch(rows, "train_loss", "min") == 3
    assert viz.best_epoch(rows, "missing") is None
    path = viz.plot_training_curves(tmp_path / "a" / "metrics.csv", tmp_path / "curves.png", best_metric="AP50")
    assert max(Image.open(path).size) >= 512
    path = viz.plot_runs([tmp_path / "a" / "metrics.csv", tmp_path / "b" / "metrics.csv"], tmp_path / "runs.png")
    assert max(Image.open(path).size) >= 512


def test_pr_curve_plot_uses_the_metrics_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from scenekit.metrics.detection import precision_recall_curves

    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "circle"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.5}]
    curves = precision_recall_curves(gt, results)
    assert curves[1].ap == pytest.approx(1.0)
    path = viz.plot_precision_recall(curves, tmp_path / "pr.png", {1: "circle"})
    from PIL import Image
    assert Image.open(path).size[0] > 100


def test_training_curves_plot_from_the_engines_metrics_csv(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "metrics.csv"
    log.write_text("phase,epoch,step,lr,seconds,train_classification,train_loss,top1_loc_error\n"
                   "classify,1,10,0.05,1.0,2.0,2.0,0.9\nclassify,2,20,0.04,2.0,1.5,1.5,0.7\n"
                   "regress,3,30,0.03,3.0,,0.8,0.6\n")
    rows = viz.read_training_log(log)
    assert rows[2]["train_classification"] is None and rows[1]["top1_loc_error"] == 0.7
    path = viz.plot_training_curves(log, tmp_path / "curves.png")
    from PIL import Image
    assert Image.open(path).size == (1300, 480)
    log.write_text("phase,epoch\nclassify,one\n")
    with pytest.raises(DataError, match="row 1: field epoch"):
        viz.read_training_log(log)
    with pytest.raises(DataError):
        viz.read_training_log(tmp_path / "missing.csv")
