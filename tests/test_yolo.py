"""YOLO labels + dataset YAML: the strict YAML subset, normalised boxes, quirks, round trips across formats."""

import json

import numpy as np
import pytest
from PIL import Image

from scenekit.data.coco import read_coco, write_coco
from scenekit.data.records import Dataset, Record
from scenekit.data.voc import read_voc, write_voc
from scenekit.data.yolo import label_path, parse_yaml, read_yolo, write_yolo
from scenekit.errors import DataError

ULTRALYTICS_STYLE = """# COCO8-like dataset file
path: ../datasets/toy  # dataset root
train: images/train
val: [images/val, 'images/extra, with comma']
test:

names:
  0: person
  1: "traffic light"
  2: 'it''s'
download: |
  from pathlib import Path
  print("# not a comment")
"""


def test_parse_yaml_reads_the_subset_dataset_files_use():
    config = parse_yaml(ULTRALYTICS_STYLE)
    assert config["path"] == "../datasets/toy" and config["train"] == "images/train"
    assert config["val"] == ["images/val", "images/extra, with comma"]
    assert config["test"] is None
    assert config["names"] == {0: "person", 1: "traffic light", 2: "it's"}
    assert config["download"].splitlines() == ["from pathlib import Path", 'print("# not a comment")']
    assert parse_yaml("names: [a, 'b c']\nnc: 2\nlist:\n  - x\n  - 3.5\n") == \
        {"names": ["a", "b c"], "nc": 2, "list": ["x", 3.5]}


@pytest.mark.parametrize("text, line", [("names:\n  0: a\n    1: b\n", "line 3"), ("a: 1\na: 2\n", "line 2"),
                                        ("just words\n", "line 1"), ("names: [a, [b]]\n", "line 1"),
                                        ("  indented: 1\n", "line 1"), ("x: 'open\n", "line 1")])
def test_parse_yaml_rejects_what_it_does_not_understand_with_the_line(text, line):
    with pytest.raises(DataError) as caught:
        parse_yaml(text, "d.yaml")
    assert caught.value.file == "d.yaml" and caught.value.record == line


def make_yolo(tmp_path, labels, names="[circle, square]", sizes=None):
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    sizes = sizes or {}
    for stem, text in labels.items():
        Image.new("RGB", sizes.get(stem, (100, 50))).save(root / "images" / "train" / f"{stem}.png")
        if text is not None:
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    return root / "data.yaml"


def test_normalised_centre_boxes_become_pixel_xyxy(tmp_path):
    yaml = make_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.2 0.4\n"})
    record = read_yolo(yaml).records[0]
    np.testing.assert_allclose(record.boxes, [[40, 15, 60, 35], [0, 0, 20, 20]])
    assert record.labels.tolist() == [2, 1]                    # index + 1 without category_ids
    assert read_yolo(yaml).categories == {1: "circle", 2: "square"}


def test_empty_and_missing_label_files_are_images_without_objects(tmp_path):
    dataset = read_yolo(make_yolo(tmp_path, {"empty": "", "blank": "\n \n", "nolabel": None}))
    assert sorted(r.file_name for r in dataset.records) == ["images/train/blank.png", "images/train/empty.png",
                                                            "images/train/nolabel.png"]
    assert all(r.num_objects == 0 for r in dataset.records)


def test_segment_lines_give_polygon_and_its_bounds(tmp_path):
    record = read_yolo(make_yolo(tmp_path, {"a": "0 0.1 0.2 0.5 0.2 0.3 0.8\n"})).records[0]
    np.testing.assert_allclose(record.boxes, [[10, 10, 50, 40]])
    np.testing.assert_allclose(record.segmentations[0][0], [10, 10, 50, 10, 30, 40])


@pytest.mark.parametrize("line, field, reason", [("2 0.5 0.5 0.1 0.1", "class", "index 0..1"),
                                                 ("0 0.5 0.5 0.1", None, "got 4 fields"),
                                                 ("0 0.5 0.5 -0.1 0.1", "box", "non-positive"),
                                                 ("0 0.95 0.5 0.2 0.1", "box", "outside"),
                                                 ("0 0.5 nan 0.1 0.1", "coordinates", "finite"),
                                                 ("x 0.5 0.5 0.1 0.1", "class", "index")])
def test_bad_label_lines_raise_data_error_naming_file_line_field(tmp_path, line, field, reason):
    yaml = make_yolo(tmp_path, {"a": f"0 0.5 0.5 0.1 0.1\n{line}\n"})
    with pytest.raises(DataError, match=reason) as caught:
        read_yolo(yaml)
    assert caught.value.file.endswith("labels/train/a.txt") and caught.value.record == "line 2"
    assert caught.value.field == field


def test_skip_invalid_drops_bad_lines_and_undecodable_images_with_report(tmp_path):
    yaml = make_yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n", "b": ""})
    (yaml.parent / "images" / "train" / "b.png").write_bytes(b"junk")
    report = tmp_path / "r.json"
    with pytest.warns(UserWarning):
        dataset = read_yolo(yaml, skip_invalid=True, report_path=report)
    assert len(dataset) == 1 and dataset.records[0].num_objects == 1
    kinds = sorted(s["kind"] for s in json.loads(report.read_text())["skipped"])
    assert kinds == ["annotation", "image"]


def test_yaml_errors_name_the_key(tmp_path):
    yaml = make_yolo(tmp_path, {"a": ""}, names="{0: a, 2: b}")
    with pytest.raises(DataError, match="names keys must be 0..1") as caught:
        read_yolo(yaml)
    assert caught.value.field == "names"
    yaml.write_text("train: images/train\nnames: [a]\nnc: 2\n")
    with pytest.raises(DataError, match="nc is 2"):
        read_yolo(yaml)
    yaml.write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(DataError, match=r"no split 'val' \(available: \['train'\]\)"):
        read_yolo(yaml, split="val")


def test_label_path_swaps_the_last_images_folder():
    assert label_path(__import__("pathlib").Path("/d/images/x/images/train/a.jpg")).as_posix() == \
        "/d/images/x/labels/train/a.txt"


def _dataset(rng, num_images=4):
    records = []
    for i in range(num_images):
        height, width = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, [width - 2, height - 2], size=(n, 2))
        wh = rng.uniform(1, [width, height], size=(n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)
        records.append(Record(i + 1, f"im{i}.png", width, height, boxes=boxes, labels=rng.choice([1, 4, 9], n),
                              image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8)))
    return Dataset(records, {1: "circle", 4: "star", 9: "cross"})


def test_write_yolo_round_trips_boxes_to_one_millionth_and_keeps_category_ids(tmp_path):
    dataset = _dataset(np.random.default_rng(0))
    yaml = write_yolo(dataset, tmp_path / "y", split="val")
    write_yolo(Dataset(dataset.records[:1], dataset.categories), tmp_path / "y", split="train")
    again = read_yolo(yaml, split="val")
    assert again.categories == dataset.categories and len(read_yolo(yaml, split="train")) == 1
    for a, b in zip(dataset.records, again.records):
        assert b.labels.tolist() == a.labels.tolist()
        scale = np.array([a.width, a.height, a.width, a.height])
        np.testing.assert_allclose(b.boxes / scale, a.boxes / scale, rtol=1e-6, atol=1e-9)


def test_coco_to_voc_to_yolo_to_coco_keeps_every_box(tmp_path):
    dataset = _dataset(np.random.default_rng(3), num_images=6)
    coco_path = write_coco(dataset, tmp_path / "coco" / "instances.json", tmp_path / "coco" / "images")
    from_coco = read_coco(coco_path)
    voc_root = write_voc(from_coco, tmp_path / "voc")
    from_voc = read_voc(voc_root)
    yaml = write_yolo(from_voc, tmp_path / "yolo")
    from_yolo = read_yolo(yaml)
    final = read_coco(write_coco(from_yolo, tmp_path / "back.json"))
    assert [r.file_name.split("/")[-1] for r in final.records] == [f"im{i}.png" for i in range(6)]
    assert final.categories == dataset.categories
    for a, b in zip(dataset.records, final.records):
        assert (b.width, b.height) == (a.width, a.height) and b.labels.tolist() == a.labels.tolist()
        scale = np.array([a.width, a.height, a.width, a.height])
        np.testing.assert_allclose(b.boxes / scale, a.boxes / scale, rtol=1e-6, atol=1e-9)
