"""`scenekit train --skip-invalid`: a corrupt image in the user's data is reported and skipped, never silent."""

import json

from scenekit.cli import main
from scenekit.data.world import write_world

TINY_YOLO = ["--image-size", "64", "--epochs", "1", "--batch-size", "2", "--option", "channels=[4,8,8,8,8]",
             "--option", "head_channels=8", "--option", "num_anchors=3"]


def _world_with_a_corrupt_image(tmp_path):
    json_path = write_world(tmp_path / "data", 4, seed=3, split="train", image_size=64)
    instances = json.loads(json_path.read_text())
    victim = instances["images"][1]
    (json_path.parent / victim["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return json_path, victim


def test_train_stops_on_a_corrupt_image_with_one_line_naming_it(tmp_path, capsys):
    json_path, victim = _world_with_a_corrupt_image(tmp_path)
    code = main(["train", "yolo1", "--data", f"coco:{json_path}", "--out", str(tmp_path / "run"), *TINY_YOLO])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and victim["file_name"].split("/")[-1] in error


def test_train_skip_invalid_skips_the_corrupt_image_and_reports_it(tmp_path, capsys):
    json_path, victim = _world_with_a_corrupt_image(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "yolo1", "--data", f"coco:{json_path}", "--out", str(out), "--skip-invalid", *TINY_YOLO])
    assert code == 0
    assert "loaded 3 images; skipped 1 images" in capsys.readouterr().err
    report = json.loads((out / "skipped_train.json").read_text())
    assert report["images_skipped"] == 1 and report["images_loaded"] == 3
    assert [entry["id"] for entry in report["skipped"] if entry["kind"] == "image"] == [victim["id"]]
    assert (out / "best.pt").is_file() or (out / "last.pt").is_file()
