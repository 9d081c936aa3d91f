"""`scenekit predict` then `scenekit evaluate`: results name their images by the dataset's ids and by file name,
so a score does not depend on the order the images were given in; predict takes folders and glob patterns.

The model is an untrained tiny localizer (5 guesses per image, different on every image, deterministic), the
data a small generated world written as files, its image ids renumbered so that they are not 1..N."""

import contextlib
import copy
import io
import json
import shutil

import pytest
import torch

from scenekit import cli
from scenekit.data.world import write_world
from scenekit.engine.checkpoint import save_checkpoint
from scenekit.models import registry

IDS = {1: 30, 2: 10, 3: 20, 4: 40}                 # the world's ids 1..4 -> the ground truth's


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world of 4 images on disk; instances_val.json with image ids 30, 10, 20, 40."""
    folder = tmp_path_factory.mktemp("world")
    path = write_world(folder, len(IDS), split="val", image_size=64)
    gt = json.loads(path.read_text())
    for image in gt["images"]:
        image["id"] = IDS[image["id"]]
    for annotation in gt["annotations"]:
        annotation["image_id"] = IDS[annotation["image_id"]]
    path.write_text(json.dumps(gt))
    for extra in ("captions_val.json", "questions_val.json"):       # they would name the old ids
        (folder / extra).unlink()
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, world):
    categories = {c["id"]: c["name"] for c in json.loads((world / "instances_val.json").read_text())["categories"]}
    recipe = registry.make_recipe("localizer", categories, {"image_size": 32, "channels": [4, 8], "hidden": 16})
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config)
    path = tmp_path_factory.mktemp("run") / "tiny.pt"
    save_checkpoint(path, {"model_name": recipe.model_name, "options": recipe.options,
                           "categories": recipe.categories, "model_config": recipe.model_config,
                           "model": model.state_dict()})
    return path


def predict(checkpoint, out, *inputs) -> list:
    assert cli.main(["predict", *map(str, inputs), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return json.loads((out / "predictions.json").read_text())


def evaluate(gt, pred) -> dict:
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    return json.loads(printed.getvalue())


def canonical(results) -> list:
    return sorted(json.dumps(r, sort_keys=True) for r in results)


def gt_ids_by_file(world) -> dict:
    return {i["file_name"]: i["id"] for i in json.loads((world / "instances_val.json").read_text())["images"]}


def pycocotools_stats(gt_path, pred_path) -> list:
    pycocotools = pytest.importorskip("pycocotools.cocoeval")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = pycocotools.COCOeval(coco_gt, coco_gt.loadRes(str(pred_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


# ---------------------------------------------------------------------------------------------- image ids
def test_predict_with_data_gives_each_image_its_dataset_id_whatever_the_order(tmp_path, world, checkpoint):
    images = sorted((world / "images").glob("*.png"))
    data = ["--data", f"coco:{world / 'instances_val.json'}"]
    forward = predict(checkpoint, tmp_path / "a", *images, *data)
    backward = predict(checkpoint, tmp_path / "b", *reversed(images), *data)
    ids = gt_ids_by_file(world)
    assert forward and all(r["image_id"] == ids[r["file_name"]] for r in forward + backward)
    assert canonical(forward) == canonical(backward)
    assert evaluate(world / "instances_val.json", tmp_path / "a" / "predictions.json") == \
        evaluate(world / "instances_val.json", tmp_path / "b" / "predictions.json")


def test_predict_results_with_file_names_are_a_coco_result_file_pycocotools_scores_alike(tmp_path, world,
                                                                                         checkpoint):
    gt = world / "instances_val.json"
    images = sorted((world / "images").glob("*.png"))
    predict(checkpoint, tmp_path / "p", *images, "--data", f"coco:{gt}")
    ours = evaluate(gt, tmp_path / "p" / "predictions.json")
    assert list(ours.values()) == pytest.approx(pycocotools_stats(gt, tmp_path / "p" / "predictions.json"),
                                                abs=1e-12)


def test_predict_without_data_writes_file_names_that_evaluate_matches_in_any_order(tmp_path, world,
                                                                                     checkpoint):
    copies = tmp_path / "copies"                   # elsewhere than the dataset: matched by base name
    shutil.copytree(world / "images", copies)
    images = sorted(copies.glob("*.png"))
    forward = predict(checkpoint, tmp_path / "a", *images)
    backward = predict(checkpoint, tmp_path / "b", *reversed(images))
    assert all("image_id" not in r and r["file_name"] in map(str, images) for r in forward)
    gt = world / "instances_val.json"
    with_ids = predict(checkpoint, tmp_path / "c", *sorted((world / "images").glob("*.png")), "--data", f"coco:{gt}")
    assert len(with_ids) == len(forward)
    stats = evaluate(gt, tmp_path / "a" / "predictions.json")
    assert stats == evaluate(gt, tmp_path / "b" / "predictions.json") == evaluate(gt, tmp_path / "c" /
                                                                                  "predictions.json")
    assert len(backward) == len(forward)


def test_predict_refuses_an_image_that_is_not_in_the_dataset(tmp_path, world, checkpoint, capsys):
    stranger = tmp_path / "stranger.png"
    shutil.copy(next((world / "images").glob("*.png")), stranger)
    code = cli.main(["predict", str(stranger), "--data", f"coco:{world / 'instances_val.json'}",
                     "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "stranger.png" in error and "not in the dataset" in error
    assert not (tmp_path / "p" / "predictions.json").exists()


def test_predict_stream_with_data_carries_the_dataset_ids(tmp_path, world, checkpoint):
    results = predict(checkpoint, tmp_path / "s", "--stream", world / "images", "--data",
                      f"coco:{world / 'instances_val.json'}", "--json")
    ids = gt_ids_by_file(world)
    assert {r["image_id"] for r in results} == set(IDS.values())
    assert all(r["image_id"] == ids[r["file_name"]] for r in results)


# ------------------------------------------------------------------------------------------- evaluate refuses
def write_results(tmp_path, world, change) -> str:
    results = [{"file_name": name, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.5}
               for name in gt_ids_by_file(world)]
    change(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.append({**r[0], "file_name": "images/unknown_7.png"}), "'images/unknown_7.png'"),
    (lambda r: r[1].update(image_id=IDS[4]), "record 1: field image_id"),
    (lambda r: r[2].update(file_name=17), "record 2: field file_name"),
])
def test_evaluate_refuses_results_whose_file_names_it_cannot_match(tmp_path, world, capsys, change, message):
    pred = write_results(tmp_path, world, change)
    assert cli.main(["evaluate", "--gt", str(world / "instances_val.json"), "--pred", pred]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "results.json" in error and message in error


def test_evaluate_refuses_a_file_name_two_images_could_have(tmp_path, world, capsys):
    gt = json.loads((world / "instances_val.json").read_text())
    first, second = gt["images"][:2]
    first["file_name"], second["file_name"] = "left/scene.png", "right/scene.png"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    pred = write_results(tmp_path, world, lambda r: r.__setitem__(slice(None), [{**r[0], "file_name": "scene.png"}]))
    assert cli.main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", pred]) == 2
    error = capsys.readouterr().err
    assert "'scene.png'" in error and "left/scene.png" in error and "right/scene.png" in error


def test_evaluate_of_standard_results_without_file_names_is_unchanged(tmp_path, world):
    ids = gt_ids_by_file(world)
    standard = [{"image_id": ids[name], "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.5} for name in ids]
    (tmp_path / "standard.json").write_text(json.dumps(standard))
    named = copy.deepcopy(standard)
    for record, name in zip(named, ids):
        del record["image_id"]
        record["file_name"] = name
    (tmp_path / "named.json").write_text(json.dumps(named[::-1]))
    gt = world / "instances_val.json"
    assert evaluate(gt, tmp_path / "standard.json") == evaluate(gt, tmp_path / "named.json")
    assert list(evaluate(gt, tmp_path / "standard.json").values()) == pytest.approx(
        pycocotools_stats(gt, tmp_path / "standard.json"), abs=1e-12)


# ------------------------------------------------------------------------------------ folders and patterns
def test_predict_takes_a_folder_and_a_glob_pattern(tmp_path, world, checkpoint):
    images = sorted((world / "images").glob("*.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    from_folder = predict(checkpoint, tmp_path / "f", world / "images")
    assert sorted({r["file_name"] for r in from_folder}) == [str(p) for p in images]
    assert sorted(p.name for p in (tmp_path / "f").glob("*.png")) == [p.name for p in images]
    pattern = str(world / "images" / "val_00000[12].png")     # as a shell that does not expand it passes it
    from_pattern = predict(checkpoint, tmp_path / "g", pattern)
    assert sorted({r["file_name"] for r in from_pattern}) == [str(p) for p in images[:2]]
    together = predict(checkpoint, tmp_path / "t", images[0], world / "images")      # each image once
    assert canonical(together) == canonical(from_folder)


@pytest.mark.parametrize("given, message", [
    ("empty", "no image files"),
    ("empty/*.png", "matches no image files"),
    ("missing.png", "no such file or folder"),
])
def test_predict_on_nothing_to_read_is_a_one_line_error(tmp_path, checkpoint, capsys, given, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    code = cli.main(["predict", str(tmp_path / given), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and message in error and given.split("/")[0] in error


def test_image_files_keep_the_order_given_each_file_once(tmp_path):
    from scenekit.data.image_files import image_files

    folder = tmp_path / "shots"
    (folder / "deeper").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.txt", "deeper/d.png"):
        (folder / name).write_bytes(b"")
    (tmp_path / "z.webp").write_bytes(b"")
    found = image_files([tmp_path / "z.webp", folder, str(folder / "b.png"), str(tmp_path / "**" / "d.png")])
    assert found == [tmp_path / "z.webp", folder / "a.JPG", folder / "b.png", folder / "deeper" / "d.png"]
