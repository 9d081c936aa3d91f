"""Pascal VOC XML: 1-based inclusive pixel coordinates, optional fields, splits, validation, exact round trips."""

import json

import numpy as np
import pytest
from PIL import Image

from scenekit.data.records import Dataset, Record
from scenekit.data.voc import VOC_CLASSES, read_voc, write_voc
from scenekit.errors import DataError

XML_FULL = """<annotation>
  <folder>VOC2007</folder><filename>000005.jpg</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>40</ymax></bndbox></object>
  <object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>10</xmin><ymin>12</ymin><xmax>50</xmax><ymax>30</ymax></bndbox></object>
</annotation>"""

# a hand-written file: no <size>, no <filename>, no <truncated>/<difficult>, float coordinates
XML_SPARSE = """<annotation>
  <object><name>person</name><bndbox><xmin>5.5</xmin><ymin>2</ymin><xmax>20.5</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


def make_voc(tmp_path, xmls=None, split=("000005", "000007")):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    xmls = xmls or {"000005": XML_FULL, "000007": XML_SPARSE}
    for stem, xml in xmls.items():
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / "000005.jpg")
    Image.new("RGB", (30, 20)).save(root / "JPEGImages" / "000007.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{s}\n" for s in split))
    return root


def test_one_based_inclusive_pixels_become_continuous_edges(tmp_path):
    dataset = read_voc(make_voc(tmp_path))
    first = dataset.records[0]
    # xmin=1..xmax=3 covers pixels 1, 2, 3: continuous [0, 3], three pixels wide
    np.testing.assert_array_equal(first.boxes, [[0, 0, 3, 40], [9, 11, 50, 30]])
    assert first.difficult.tolist() == [False, True] and first.truncated.tolist() == [False, True]


def test_missing_optional_fields_default_and_size_comes_from_the_image(tmp_path):
    dataset = read_voc(make_voc(tmp_path))
    sparse = dataset.records[1]
    assert (sparse.width, sparse.height, sparse.file_name) == (30, 20, "000007.jpg")
    np.testing.assert_array_equal(sparse.boxes, [[4.5, 1, 20.5, 9]])
    assert not sparse.difficult.any() and not sparse.truncated.any()


def test_ids_are_numeric_stems_and_classes_default_to_the_twenty_voc_classes(tmp_path):
    dataset = read_voc(make_voc(tmp_path))
    assert [r.image_id for r in dataset.records] == [5, 7]
    assert dataset.categories == dict(enumerate(VOC_CLASSES, start=1))
    assert dataset.records[0].labels.tolist() == [VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("dog") + 1]


def test_split_file_selects_images_and_a_missing_split_lists_the_available_ones(tmp_path):
    root = make_voc(tmp_path, split=("000007",))
    assert [r.image_id for r in read_voc(root)] == [7]
    assert len(read_voc(root, split=None)) == 2
    with pytest.raises(DataError, match=r"available splits: \['trainval'\]") as caught:
        read_voc(root, split="test")
    assert caught.value.file.endswith("test.txt")


@pytest.mark.parametrize("edit, field, reason", [
    (("<xmax>3</xmax>", "<xmax>0</xmax>"), "bndbox", "non-positive size"),
    (("<xmax>50</xmax>", "<xmax>52</xmax>"), "bndbox", "outside"),
    (("<xmin>10</xmin>", "<xmin>ten</xmin>"), "xmin", "must be a number"),
    (("<difficult>1</difficult>", "<difficult>yes</difficult>"), "difficult", "must be 0 or 1"),
    (("<name>dog</name>", "<name></name>"), "name", "no <name>"),
    (("<width>50</width>", "<width>51</width>"), "width/height", "annotation says 51x40"),
])
def test_invalid_objects_raise_data_error_naming_xml_object_field(tmp_path, edit, field, reason):
    root = make_voc(tmp_path, {"000005": XML_FULL.replace(*edit), "000007": XML_SPARSE})
    with pytest.raises(DataError, match=reason) as caught:
        read_voc(root)
    assert caught.value.file.endswith("000005.xml") and caught.value.field == field
    assert caught.value.record.startswith("image 000005")


def test_malformed_xml_and_unknown_class_are_errors_and_skippable(tmp_path):
    root = make_voc(tmp_path, {"000005": XML_FULL[:-20], "000007": XML_SPARSE})
    with pytest.raises(DataError, match="not well-formed XML"):
        read_voc(root)
    report = tmp_path / "report.json"
    with pytest.warns(UserWarning, match="skipped 1 images"):
        dataset = read_voc(root, skip_invalid=True, report_path=report)
    assert [r.image_id for r in dataset.records] == [7]
    assert json.loads(report.read_text())["skipped"][0]["id"] == "000005"
    with pytest.raises(DataError, match="unknown class name 'person'"):
        read_voc(make_voc(tmp_path), classes=["chair", "dog"])          # rewritten well-formed; 'person' unknown


def test_write_then_read_is_exact_for_grid_and_off_grid_boxes(tmp_path):
    records = [Record(11, "a.png", 64, 48, boxes=[[0, 0, 64, 48], [10.25, 3.5, 20.75, 9.125]], labels=[2, 5],
                      difficult=[True, False], truncated=[False, True], iscrowd=[False, True],
                      image=np.zeros((48, 64, 3), np.uint8)),
               Record(12, "b.png", 20, 20, image=np.zeros((20, 20, 3), np.uint8))]
    dataset = Dataset(records, {2: "cat", 5: "traffic light"})
    root = write_voc(dataset, tmp_path / "out", split="val")
    again = read_voc(root, split="val")
    assert again.categories == dataset.categories                      # via classes.txt, ids kept
    assert [r.file_name for r in again.records] == ["a.png", "b.png"]
    a, b = again.records
    np.testing.assert_allclose(a.boxes, records[0].boxes, rtol=0, atol=1e-12)
    assert a.boxes[0].tolist() == [0, 0, 64, 48]                         # integers stay exact
    assert a.labels.tolist() == [2, 5] and a.truncated.tolist() == [False, True]
    assert a.iscrowd.tolist() == [False, True] and a.difficult.tolist() == [True, True]   # crowd -> difficult
    assert b.num_objects == 0
    xml = (root / "Annotations" / "a.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<xmax>64</xmax>" in xml and "<xmin>11.25</xmin>" in xml


def test_voc_file_round_trip_reproduces_coordinates(tmp_path):
    dataset = read_voc(make_voc(tmp_path))
    again = read_voc(write_voc(dataset, tmp_path / "copy"))
    for a, b in zip(dataset.records, again.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist() and a.difficult.tolist() == b.difficult.tolist()


def test_writing_two_images_with_the_same_file_stem_is_refused(tmp_path):
    records = [Record(1, "x/a.png", 8, 8, image=np.zeros((8, 8, 3), np.uint8)),
               Record(2, "y/a.jpg", 8, 8, image=np.zeros((8, 8, 3), np.uint8))]
    with pytest.raises(DataError, match="share the file stem 'a'") as caught:
        write_voc(Dataset(records, {1: "a"}), tmp_path / "out")
    assert caught.value.record == "image id 2" and caught.value.field == "file_name"
