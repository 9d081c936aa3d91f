"""The public Python API (scenekit/api.py): the README's example as written, and what a Result carries for each kind
of family: a detector, a mask model, a segmenter, a captioner, a VQA model."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scenekit
from scenekit.cli import main
from scenekit.data.world import CATEGORIES, make_world
from scenekit.errors import DataError
from scenekit.masks import rle_decode

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_thread")]

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = {
    "yolo2": {"image_size": 64, "channels": [4, 8, 8, 16, 16], "head_channels": 16, "anchors": "hand",
              "score_threshold": 0.0},
    "mask-rcnn": {"channels": [8, 16, 16], "hidden": 64, "mask_convs": 2, "mask_channels": 16},
    "fcn": {"channels": [8, 8, 16, 16, 16], "head": 16, "image_size": 64},
    "showattendtell": {"channels": [8, 8, 16], "hidden": 32, "embedding": 16, "attention": 16},
    "showtell": {"channels": [8, 8, 16], "feature": 32, "hidden": 32, "embedding": 16},
    "vqa": {"channels": [4, 8], "image_size": 32},
}


@pytest.fixture
def checkpoint(tmp_path, untrained_checkpoint):
    """`checkpoint(name) -> path` of an untrained tiny model of family `name` (TINY)."""
    return lambda name: untrained_checkpoint(tmp_path / f"{name}.pt", name, dict(CATEGORIES), TINY[name])


@pytest.fixture
def scenes(tmp_path):
    """Three images of the world as arrays, and the same written to tmp_path/scenes/*.png."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    images = [r.image for r in make_world(3, seed=4, split="test", image_size=96).records]
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"s{k}.png")
    return images, sorted(folder.glob("*.png"))


# ------------------------------------------------------------------------------------------------ the README
def readme_example() -> str:
    """The first python code block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs/tiny-yolo2/best.pt").is_file() and (tmp_path / "scene.png").is_file()
    assert (tmp_path / "tiny-yolo2.onnx").is_file()
    with pytest.raises(DataError, match="holds a previous run"):         # refused before any data is made
        scenekit.train("yolo2", out="runs/tiny-yolo2")


def test_train_returns_the_run_and_its_model(tmp_path):
    run = scenekit.train("yolo2", data="world", epochs=1, out=str(tmp_path / "run"), train_images=8, val_images=4,
                         batch_size=4, options={**TINY["yolo2"], "seed": 3})     # YOLO's own `seed` option
    assert run.folder == tmp_path / "run" and run.checkpoint == tmp_path / "run" / "best.pt"
    assert run.best_metric in run.history[-1] and run.best == run.history[-1][run.best_metric]
    assert run.model.name == "yolo2" and run.model.recipe.options["seed"] == 3
    with pytest.raises(DataError, match="option chanels: yolo2 has no such option; did you mean channels"):
        scenekit.train("yolo2", out=str(tmp_path / "other"), chanels=[8])
    assert not (tmp_path / "other").exists()


def test_import_scenekit_stays_cheap():
    code = "import sys, scenekit; assert 'torch' not in sys.modules; scenekit.Result; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ detectors
def test_detector_results_carry_boxes_scores_labels_and_names(checkpoint, scenes, tmp_path):
    images, files = scenes
    model = scenekit.load(checkpoint("yolo2"), "cpu", max_detections=5)
    assert model.name == "yolo2" and model.task == "image" and model.recipe.options["max_detections"] == 5
    from_arrays = model.predict(images)
    from_files = model.predict([files[0], str(files[1].parent / "s[12].png")])      # a file and a pattern
    from_folder = model.predict(files[0].parent, stream=True)
    assert [r.file_name for r in from_files] == [str(f) for f in files]
    for array, by_file, by_folder in zip(from_arrays, from_files, from_folder):
        assert array.file_name is None and np.array_equal(by_file.image, array.image)
        np.testing.assert_array_equal(by_file.boxes, array.boxes)
        np.testing.assert_array_equal(by_folder.scores, array.scores)
        n = len(array.scores)
        assert 0 < n <= 5 and array.boxes.shape == (n, 4) and array.labels.shape == (n,)
        assert array.names == [CATEGORIES[int(label)] for label in array.labels]
        assert array.masks is None and array.caption is None and array.answer is None
        assert (array.boxes[:, 2:] >= array.boxes[:, :2]).all()
    pil = model.predict(Image.fromarray(images[0]))[0]
    np.testing.assert_array_equal(pil.scores, from_arrays[0].scores)
    picture = from_arrays[0].plot()
    assert picture.dtype == np.uint8 and picture.shape == (512, 512, 3)        # enlarged to a legible size
    assert from_arrays[0].plot(long_side=0).shape == images[0].shape
    from_arrays[0].save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), picture)


def test_to_coco_is_what_predict_writes(checkpoint, scenes, tmp_path):
    _, files = scenes
    path = checkpoint("yolo2")
    assert main(["predict", str(files[0]), "--checkpoint", str(path), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "p" / "predictions.json").read_text())
    result = scenekit.load(path, "cpu").predict(files[0])[0]
    records = result.to_coco()
    assert [set(r) for r in records] == [{"file_name", "category_id", "score", "bbox"}] * len(written)
    for mine, cli in zip(records, written):
        assert mine["file_name"] == cli["file_name"] and mine["category_id"] == cli["category_id"]
        assert abs(mine["score"] - cli["score"]) < 1e-6 and np.allclose(mine["bbox"], cli["bbox"], atol=1e-3)
    x1, y1, x2, y2 = result.boxes[0]
    assert result.to_coco(image_id=7)[0] == {"image_id": 7, "file_name": str(files[0]), "category_id":
                                             int(result.labels[0]), "score": float(result.scores[0]),
                                             "bbox": [x1, y1, x2 - x1, y2 - y1]}


def test_evaluate_gives_the_metrics_evaluate_json_prints(checkpoint, capsys):
    path = checkpoint("yolo2")
    metrics = scenekit.load(path, "cpu").evaluate(data="world", images=3)
    assert main(["evaluate", "--checkpoint", str(path), "--images", "3", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(metrics)
    assert {k: v for k, v in printed.items() if "per_s" not in k} == {k: v for k, v in metrics.items()
                                                                      if "per_s" not in k}


def test_load_checks_options_and_inputs(checkpoint):
    path = checkpoint("yolo2")
    with pytest.raises(DataError, match="option max_detection: yolo2 has no such option; did you mean max_detections"):
        scenekit.load(path, "cpu", max_detection=3)
    model = scenekit.load(path, "cpu")
    with pytest.raises(DataError, match=r"\[H, W, 3\] uint8"):
        model.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match="no such file or folder"):
        model.predict("nowhere.png")
    with pytest.raises(DataError, match="question and choices are for VQA models"):
        model.predict(np.zeros((8, 8, 3), np.uint8), question="what?")
    with pytest.raises(DataError, match="beam: for captioners"):
        model.predict(np.zeros((8, 8, 3), np.uint8), beam=3)


# ------------------------------------------------------------------------------------------------ masks, class maps
def test_mask_model_results_carry_one_mask_per_detection_and_rle_records(checkpoint, scenes):
    images, _ = scenes
    result = scenekit.load(checkpoint("mask-rcnn"), "cpu").predict(images[0])[0]
    n = len(result.scores)
    assert n > 0 and result.masks.shape == (n, *images[0].shape[:2]) and result.masks.dtype == bool
    for k, record in enumerate(result.to_coco(image_id=1)):
        np.testing.assert_array_equal(rle_decode(record["segmentation"]).astype(bool), result.masks[k])
    assert result.plot().shape == (512, 512, 3)


def test_segmenter_results_carry_the_class_of_every_pixel(checkpoint, scenes):
    images, _ = scenes
    result = scenekit.load(checkpoint("fcn"), "cpu").predict(images[0])[0]
    assert result.semantic.shape == images[0].shape[:2]
    assert set(np.unique(result.semantic)) <= {0, *CATEGORIES}
    assert result.plot().shape[0] == 512                      # the tinted map, with its legend on the right


# ------------------------------------------------------------------------------------------------ captions, VQA
def test_captioner_results_carry_a_caption_and_its_attention_per_word(checkpoint, scenes, capsys):
    images, files = scenes
    path = checkpoint("showattendtell")
    model = scenekit.load(path, "cpu")
    assert model.task == "caption"
    result = model.predict(images[0], max_length=6)[0]
    words = result.caption.split()
    assert 0 < len(words) <= 6 and len(result.boxes) == 0
    grid = model.module.grid
    assert result.attention.shape == (len(words), grid * grid)
    np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-5)      # alpha: a softmax per word
    assert result.plot_attention().ndim == 3 and result.plot().shape[1] == 512
    beams = model.predict(files[:2], beam=2, max_length=6)
    assert main(["caption", *map(str, files[:2]), "--checkpoint", str(path), "--beam", "2", "--max-length", "6",
                 "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"image": r.file_name, "caption": r.caption} for r in beams]
    plain = scenekit.load(checkpoint("showtell"), "cpu").predict(images[0])[0]
    assert plain.caption is not None and plain.attention is None
    with pytest.raises(DataError, match="no attention maps"):
        plain.plot_attention()


def test_vqa_results_carry_the_answer_its_probabilities_and_attention(checkpoint, scenes, capsys):
    images, files = scenes
    path = checkpoint("vqa")
    model = scenekit.load(path, "cpu")
    with pytest.raises(DataError, match="scenekit ask"):
        model.predict(images[0])
    choices = ["red", "blue", "green"]
    result = model.predict(images[0], question="what colour is the star?", choices=choices)[0]
    assert result.answer in choices and result.choices == choices
    assert result.answer == choices[int(result.probabilities.argmax())]
    assert result.probabilities.shape == (3,) and abs(result.probabilities.sum() - 1) < 1e-5
    assert result.attention.ndim == 1 and result.plot_attention().shape == (270, 512, 3)
    assert result.plot().shape[0] > 512                        # the question and its answer written under it
    asked = model.predict(files[1], question="what shape is it?", choices=["circle", "square"])[0]
    assert main(["ask", str(files[1]), "what shape is it?", "--choices", "circle", "square", "--checkpoint", str(path),
                 "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"answer": asked.answer, "index": int(asked.probabilities.argmax()),
                       "probabilities": dict(zip(asked.choices, asked.probabilities.tolist()))}
