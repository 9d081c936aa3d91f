"""`scenekit evaluate ... --explain DIR`: the decisions behind the numbers, from a result file or a checkpoint."""

import contextlib
import csv
import io
import json

import pytest

from scenekit import cli
from scenekit.data.world import write_world

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    write_world(folder, 4, split="val", image_size=64)
    return folder


def _results(world):
    """Every object found (shifted 1 px: a tp at 0.5), plus a background false positive named by file_name."""
    gt = json.loads((world / "instances_val.json").read_text())
    found = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
              "bbox": [a["bbox"][0] + 1, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in gt["annotations"]]
    image = gt["images"][0]
    found.append({"file_name": str(world / image["file_name"]), "category_id": gt["categories"][0]["id"],
                  "score": 0.8, "bbox": [0, 0, 3, 3]})
    return gt, found


def _evaluate(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["evaluate", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def test_explain_of_a_result_file_writes_one_decision_per_detection_and_threshold(world, tmp_path):
    gt, found = _results(world)
    (tmp_path / "res.json").write_text(json.dumps(found))
    code, out, _ = _evaluate("--gt", world / "instances_val.json", "--pred", tmp_path / "res.json",
                             "--explain", tmp_path / "why", "--json")
    assert code == 0
    summary = json.loads(out)["explain"]
    with open(tmp_path / "why" / "decisions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * len(found)
    at_half = [r for r in rows if float(r["iou_threshold"]) == 0.5]
    assert [r["outcome"] for r in at_half] == ["tp"] * len(gt["annotations"]) + ["fp"]
    assert at_half[-1]["reason"] == "background" and at_half[-1]["image_id"] == str(gt["images"][0]["id"])
    assert summary["decisions"]["0.5"]["tp"] == len(gt["annotations"])
    assert (tmp_path / "why" / "confusion_matrix.png").is_file()


def test_explain_refuses_a_subset_of_images(world, tmp_path):
    _, found = _results(world)
    (tmp_path / "res.json").write_text(json.dumps(found))
    code, _, err = _evaluate("--gt", world / "instances_val.json", "--pred", tmp_path / "res.json",
                             "--explain", tmp_path / "why", "--img-ids", "1")
    assert code == 2 and "--img-ids" in err


def test_explain_of_a_checkpoint_scores_the_models_own_detections(world, tmp_path, untrained_checkpoint):
    categories = {c["id"]: c["name"] for c in json.loads((world / "instances_val.json").read_text())["categories"]}
    path = untrained_checkpoint(tmp_path / "tiny.pt", "localizer", categories,
                                {"image_size": 32, "channels": [4, 8], "hidden": 16})
    code, out, _ = _evaluate("localizer", "--checkpoint", path, "--data", f"coco:{world}", "--split", "val",
                             "--explain", tmp_path / "why", "--json")
    assert code == 0
    with open(tmp_path / "why" / "decisions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows and len(rows) % 2 == 0                      # each detection at IoU 0.5 and 0.75
    assert {r["outcome"] for r in rows} <= {"tp", "fp", "ignored"}
    assert json.loads(out)["explain"]["dir"] == str(tmp_path / "why")
