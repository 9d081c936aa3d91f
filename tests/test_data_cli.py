"""`scenekit data world | check | convert | show`, run through scenekit.cli.main in a temporary folder."""

import json

import numpy as np
import pytest
from PIL import Image

from scenekit.cli import main
from scenekit.data.sources import load_data, parse_spec
from scenekit.errors import DataError


@pytest.fixture
def world(tmp_path):
    assert main(["data", "world", "--out", str(tmp_path / "w"), "--images", "3", "--image-size", "64",
                 "--seed", "2", "--split", "val"]) == 0
    return tmp_path / "w"


def test_world_then_check_prints_statistics_as_json(world, capsys):
    capsys.readouterr()
    assert main(["data", "check", f"coco:{world}", "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    dataset = load_data(f"coco:{world}", "val")
    assert stats["images"] == 3 and stats["objects"] == sum(r.num_objects for r in dataset.records)
    assert sum(c["boxes"] for c in stats["per_class"]) == stats["objects"]
    assert sum(stats["coco_sizes"].values()) == stats["objects"]
    assert sum(b["count"] for b in stats["size_histogram"]) == stats["objects"]
    assert stats["captions"] == 15 and stats["questions"] > 0          # captions_val.json was attached


def test_check_prints_a_text_histogram(world, capsys):
    assert main(["data", "check", f"coco:{world}/instances_val.json"]) == 0
    out = capsys.readouterr().out
    assert "boxes per class:" in out and "COCO sizes" in out and "#" in out


def test_convert_coco_to_voc_to_yolo_keeps_boxes_and_show_draws_them(world, tmp_path, capsys):
    assert main(["data", "convert", "--from", f"coco:{world}", "--to", f"voc:{tmp_path / 'voc'}",
                 "--split", "val"]) == 0
    assert main(["data", "convert", "--from", f"voc:{tmp_path / 'voc'}", "--to", f"yolo:{tmp_path / 'yolo'}",
                 "--split", "val", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    original, converted = load_data(f"coco:{world}", "val"), load_data(f"yolo:{tmp_path / 'yolo'}", "val")
    assert summary["images"] == 3
    for a, b in zip(original.records, converted.records):
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-6)
        assert b.labels.tolist() == a.labels.tolist()
    picture = tmp_path / "pic.png"
    assert main(["data", "show", f"coco:{world}", "--split", "val", "--image-id", "2", "--out", str(picture)]) == 0
    drawn = np.asarray(Image.open(picture))
    plain = np.asarray(Image.open(world / "images" / "val_000002.png"))
    enlarged = np.asarray(Image.fromarray(plain).resize((512, 512), Image.NEAREST))   # drawn at >= 512 px
    assert drawn.shape == enlarged.shape and (drawn != enlarged).any()
    record = next(r for r in original.records if r.image_id == 2)
    x1, y1 = (record.boxes[0, :2] * 8).astype(int)                                      # a box's corner, scaled
    assert (drawn[y1 + 2, x1] != enlarged[y1 + 2, x1]).any()


def test_bad_input_is_a_one_line_error_with_exit_code_2(world, tmp_path, capsys):
    (tmp_path / "broken.json").write_text('{"images": [')
    assert main(["data", "check", f"coco:{tmp_path / 'broken.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.json" in err and "truncated" in err
    assert main(["data", "show", f"coco:{world}", "--split", "val", "--image-id", "99"]) == 2
    assert "no image with id 99" in capsys.readouterr().err
    assert main(["data", "check", "pascal:x"]) == 2


def test_skip_invalid_from_the_cli_writes_the_report(world, tmp_path, capsys):
    data = json.loads((world / "instances_val.json").read_text())
    data["annotations"][0]["category_id"] = 77
    (world / "instances_val.json").write_text(json.dumps(data))
    report = tmp_path / "skipped.json"
    assert main(["data", "check", f"coco:{world}", "--split", "val"]) == 2
    with pytest.warns(UserWarning):
        assert main(["data", "check", f"coco:{world}", "--split", "val", "--skip-invalid",
                     "--report", str(report), "--json"]) == 0
    skipped = json.loads(report.read_text())["skipped"]
    assert [(s["kind"], s["id"], s["field"]) for s in skipped] == [("annotation", data["annotations"][0]["id"],
                                                                   "category_id")]


def test_parse_spec_rejects_unknown_formats():
    assert parse_spec("coco:a:b.json") == ("coco", "a:b.json")
    assert parse_spec("world") == ("world", None)
    with pytest.raises(DataError):
        parse_spec("voc")
