"""Annotation tools' folders (LabelImg's VOC XMLs and YOLO labels beside the images) and a split named in the
data spec (`voc:ROOT:val`)."""

import json

import numpy as np
import pytest
from PIL import Image

from scenekit.data.sources import load_data, parse_spec, split_spec
from scenekit.errors import DataError


def labelimg_xml(folder, filename, size, objects, *, write_filename=None):
    """An XML as LabelImg writes it (folder, filename, absolute path, source, size, segmented, objects)."""
    width, height = size
    parts = [f"<annotation><folder>{folder.name}</folder>",
             f"<filename>{filename if write_filename is None else write_filename}</filename>",
             f"<path>C:\\Users\\someone\\{filename}</path><source><database>Unknown</database></source>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                     f"<ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def labelimg_folder(tmp_path, **xml_options):
    """Two photographs with their XMLs side by side, no Annotations/ or ImageSets/."""
    folder = tmp_path / "labelimg"
    folder.mkdir()
    Image.new("RGB", (80, 60)).save(folder / "IMG_0001.jpg")
    Image.new("RGB", (40, 50)).save(folder / "IMG_0002.png")
    (folder / "IMG_0001.xml").write_text(labelimg_xml(folder, "IMG_0001.jpg", (80, 60),
                                                      [("pine", (1, 1, 10, 20)), ("oak", (30, 20, 80, 60))]))
    (folder / "IMG_0002.xml").write_text(labelimg_xml(folder, "IMG_0002.png", (40, 50), [("pine", (5, 6, 15, 16))],
                                                      **xml_options))
    return folder


# ------------------------------------------------------------------------------------------------- VOC folders
def test_flat_labelimg_folder_loads_every_image_with_its_boxes(tmp_path):
    folder = labelimg_folder(tmp_path)
    dataset = load_data(f"voc:{folder}")
    assert [r.file_name for r in dataset.records] == ["IMG_0001.jpg", "IMG_0002.png"]
    assert dataset.categories == {1: "oak", 2: "pine"}                      # sorted names, numbered from 1
    first, second = dataset.records
    # VOC's 1-based inclusive pixels: xmin=1..xmax=10 is continuous [0, 10]
    np.testing.assert_array_equal(first.boxes, [[0, 0, 10, 20], [29, 19, 80, 60]])
    assert first.labels.tolist() == [2, 1] and (first.width, first.height) == (80, 60)
    np.testing.assert_array_equal(second.boxes, [[4, 5, 15, 16]])
    assert all(dataset.image_path(r).is_file() for r in dataset.records)


def test_xml_filename_without_suffix_falls_back_to_an_image_with_the_stem(tmp_path):
    folder = labelimg_folder(tmp_path, write_filename="IMG_0002")           # old LabelImg: no extension
    record = load_data(f"voc:{folder}").records[1]
    assert record.file_name == "IMG_0002.png"


def test_flat_folder_classes_txt_may_be_labelimg_names(tmp_path):
    folder = labelimg_folder(tmp_path)
    (folder / "classes.txt").write_text("pine\noak\n")
    dataset = load_data(f"voc:{folder}")
    assert dataset.categories == {1: "pine", 2: "oak"}
    assert dataset.records[0].labels.tolist() == [1, 2]


def test_an_xml_whose_image_is_missing_is_one_error_naming_the_xml(tmp_path):
    folder = labelimg_folder(tmp_path)
    (folder / "IMG_0002.png").unlink()
    with pytest.raises(DataError, match="image file not found") as caught:
        load_data(f"voc:{folder}")
    assert caught.value.file.endswith("IMG_0002.xml") and caught.value.record == "image IMG_0002"
    assert len(str(caught.value).splitlines()) == 1


def test_a_folder_with_neither_layout_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nor a folder of images with their .xml files"):
        load_data(f"voc:{tmp_path / 'empty'}")


def test_split_lists_in_a_flat_folder_and_in_the_spec(tmp_path):
    folder = labelimg_folder(tmp_path)
    assert len(load_data(f"voc:{folder}", "val")) == 2                       # no lists: every XML, whatever split
    with pytest.raises(DataError, match="available splits: none"):
        load_data(f"voc:{folder}:val")                                       # a split the spec names must exist
    (folder / "train.txt").write_text("IMG_0001\n")
    (folder / "val.txt").write_text("IMG_0002\n")
    assert [r.file_name for r in load_data(f"voc:{folder}").records] == ["IMG_0001.jpg"]       # caller's "train"
    assert [r.file_name for r in load_data(f"voc:{folder}:val").records] == ["IMG_0002.png"]   # the spec wins
    with pytest.raises(DataError, match=r"available splits: \['train', 'val'\]"):
        load_data(f"voc:{folder}", "test")


def test_voc_root_split_in_the_spec_wins_over_the_callers(tmp_path):
    root = tmp_path / "VOC"
    for stem, name in (("000001", "train"), ("000002", "val")):
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "JPEGImages").mkdir(exist_ok=True)
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(labelimg_xml(root, f"{stem}.jpg", (20, 20),
                                                                       [("dog", (2, 2, 9, 9))]))
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text(f"{stem}\n")
    assert [r.image_id for r in load_data(f"voc:{root}:val", "train").records] == [2]
    assert [r.image_id for r in load_data(f"voc:{root}", "train").records] == [1]


# ------------------------------------------------------------------------------------------------- YOLO folders
def yolo_folder(tmp_path, labels, classes="tree\nrock\n"):
    """LabelImg's YOLO mode: images, same-stem .txt labels and classes.txt in one folder."""
    folder = tmp_path / "yolo"
    folder.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (100, 50)).save(folder / f"{stem}.jpg")
    for stem, text in labels.items():
        (folder / f"{stem}.txt").write_text(text)
    (folder / "classes.txt").write_text(classes)
    return folder


def test_yolo_folder_with_classes_txt_loads_and_an_image_without_labels_has_no_objects(tmp_path):
    folder = yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.2 0.4\n"})
    dataset = load_data(f"yolo:{folder}")
    assert dataset.categories == {1: "tree", 2: "rock"}
    a, b = dataset.records
    assert (a.file_name, a.width, a.height) == ("a.jpg", 100, 50)
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 0, 20, 20]])    # normalised centre -> pixel xyxy
    assert a.labels.tolist() == [2, 1] and b.num_objects == 0


def test_a_label_file_without_an_image_is_an_error_naming_it(tmp_path):
    folder = yolo_folder(tmp_path, {"a": "", "c": "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(DataError, match="label file without an image") as caught:
        load_data(f"yolo:{folder}")
    assert caught.value.file.endswith("c.txt")


@pytest.mark.parametrize("classes, line, reason", [("tree\n\nrock\n", "line 2", "blank line"),
                                                    ("tree\nrock\ntree\n", "line 3", "already on line 1")])
def test_a_malformed_classes_txt_is_one_error_naming_the_line(tmp_path, classes, line, reason):
    folder = yolo_folder(tmp_path, {"a": ""}, classes=classes)
    with pytest.raises(DataError, match=reason) as caught:
        load_data(f"yolo:{folder}")
    assert caught.value.file.endswith("classes.txt") and caught.value.record == line


def test_a_bad_label_line_is_one_error_naming_file_and_line(tmp_path):
    folder = yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(DataError, match=r"index 0\.\.1") as caught:
        load_data(f"yolo:{folder}")
    assert caught.value.file.endswith("a.txt") and caught.value.record == "line 2"
    assert caught.value.field == "class"


def test_a_yolo_folder_has_no_splits_to_name(tmp_path):
    folder = yolo_folder(tmp_path, {"a": ""})
    with pytest.raises(DataError, match="holds no splits"):
        load_data(f"yolo:{folder}:val")


# ------------------------------------------------------------------------------------------------- the split rule
def test_split_spec_takes_the_last_name_only_when_the_path_before_it_exists(tmp_path):
    assert split_spec(f"voc:{tmp_path}:val") == ("voc", str(tmp_path), "val")
    assert split_spec("coco:a:b.json") == ("coco", "a:b.json", None)           # no folder "a": part of the path
    assert split_spec(f"coco:{tmp_path}/x:y/z.json") == ("coco", f"{tmp_path}/x:y/z.json", None)   # '/' after ':'
    assert split_spec("coco:C:\\data\\x.json") == ("coco", "C:\\data\\x.json", None)
    assert split_spec("world:20") == ("world", "20", None)
    colon = tmp_path / "run:2"                                                 # an existing path keeps its colon
    colon.mkdir()
    assert split_spec(f"voc:{colon}") == ("voc", str(colon), None)
    assert parse_spec(f"voc:{tmp_path}:val") == ("voc", f"{tmp_path}:val")     # parse_spec leaves it in the path


def test_coco_folder_split_in_the_spec_reads_its_instances_file(tmp_path):
    for split, size in (("train", 30), ("val", 20)):
        Image.new("RGB", (size, size)).save(tmp_path / f"{split}.png")
        (tmp_path / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": f"{split}.png", "width": size, "height": size}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    assert load_data(f"coco:{tmp_path}:val", "train").records[0].width == 20
    with pytest.raises(DataError, match="holds one split"):
        load_data(f"coco:{tmp_path / 'instances_val.json'}:val")
