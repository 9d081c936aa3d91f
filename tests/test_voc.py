"""Pascal VOC XML: 1-based inclusive pixel coordinates, optional fields, splits, validation, exact round trips."""

import json

import numpy as np
import pytest
from PIL import Image

from scenekit.data.records import Dataset, Record
from scenekit.data.voc import VOC_CLASSES, read_voc, write_voc
from scenekit.errors import DataError
from scenekit.masks import rle_decode

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


# ------------------------------------------------------------------------------------------------ masks
SQUARE = [[2, 2, 12, 2, 12, 12, 2, 12]]                   # pixels 2..11 x 2..11


def _rle(mask):
    from scenekit.masks import compress, rle_encode

    return compress(rle_encode(mask))


def _png(path):
    with Image.open(path) as picture:
        return picture.mode, picture.getpalette(), np.array(picture)


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")     # pycocotools
def test_coco_to_voc_to_records_keeps_every_mask_pixel_for_pixel(tmp_path, capsys):
    from pathlib import Path

    from pycocotools.coco import COCO

    from scenekit.cli import main
    from scenekit.data.world import write_world

    instances = write_world(tmp_path / "w", 30, seed=4)
    assert main(["data", "convert", "--from", f"coco:{instances}", "--to", f"voc:{tmp_path / 'voc'}"]) == 0
    assert "note:" not in capsys.readouterr().err                       # the world's masks never overlap
    dataset = read_voc(tmp_path / "voc", "train")
    coco = COCO(str(instances))
    annotations = coco.loadAnns(coco.getAnnIds())
    masks = [s for r in dataset.records for s in (r.segmentations or [])]        # None: an image without objects
    assert len(masks) == len(annotations) > 100 and all(s is not None for s in masks)
    for record in dataset.records:                       # objects keep COCO's order (annotation ids) in the XML
        originals = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[record.image_id])), key=lambda a: a["id"])
        assert len(originals) == record.num_objects
        for ann, segmentation in zip(originals, record.segmentations or []):
            np.testing.assert_array_equal(rle_decode(segmentation), coco.annToMask(ann))
    segmented = (tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert segmented == [Path(r.file_name).stem for r in dataset.records if r.num_objects]


def test_segmentation_pngs_are_voc_palette_images_indexed_in_xml_object_order(tmp_path):
    crowd = np.zeros((20, 24), bool)
    crowd[14:18, 16:22] = True
    records = [Record(1, "a.png", 24, 20, boxes=[[2, 2, 12, 12], [0, 0, 5, 5], [16, 14, 22, 18]], labels=[1, 2, 3],
                      iscrowd=[False, False, True], segmentations=[SQUARE, None, _rle(crowd)],
                      image=np.zeros((20, 24, 3), np.uint8)),
               Record(2, "b.png", 24, 20, boxes=[[1, 1, 4, 4]], labels=[1], image=np.zeros((20, 24, 3), np.uint8))]
    root = write_voc(Dataset(records, {1: "cat", 2: "dog", 3: "person"}), tmp_path / "voc", split="train")
    mode, palette, objects = _png(root / "SegmentationObject" / "a.png")
    assert mode == "P"
    # the devkit's colour map (VOClabelcolormap.m): 1 dark red, 2 dark green, 8 cat, 15 person, 255 void
    colours = np.asarray(palette).reshape(-1, 3)
    assert colours[[0, 1, 2, 8, 15, 255]].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [64, 0, 0],
                                                       [192, 128, 128], [224, 224, 192]]
    expected = np.zeros((20, 24), np.uint8)
    expected[2:12, 2:12] = 1                            # object 0; object 1 has no mask, object 2 is the crowd
    expected[crowd] = 3
    np.testing.assert_array_equal(objects, expected)
    mode, _, classes = _png(root / "SegmentationClass" / "a.png")
    expected = np.zeros((20, 24), np.uint8)
    expected[2:12, 2:12] = VOC_CLASSES.index("cat") + 1
    expected[crowd] = 255                               # crowd regions are void in the class map
    assert mode == "P"
    np.testing.assert_array_equal(classes, expected)
    assert not (root / "SegmentationObject" / "b.png").exists()
    assert (root / "ImageSets" / "Segmentation" / "train.txt").read_text() == "a\n"
    assert "<segmented>1</segmented>" in (root / "Annotations" / "a.xml").read_text()
    assert "<segmented>0</segmented>" in (root / "Annotations" / "b.xml").read_text()
    a, b = read_voc(root, "train").records
    square = np.zeros((20, 24), np.uint8)
    square[2:12, 2:12] = 1
    np.testing.assert_array_equal(rle_decode(a.segmentations[0]), square)
    assert a.segmentations[1] is None
    np.testing.assert_array_equal(rle_decode(a.segmentations[2]), crowd)
    assert b.segmentations is None                       # no PNG: boxes only, as before


def test_instance_pngs_read_as_voc_does_and_bad_ones_name_the_file(tmp_path):
    root = make_voc(tmp_path)                            # 000005: 2 objects, 50 x 40
    indices = np.zeros((40, 50), np.uint8)
    indices[0:40, 0:3] = 1
    indices[11:30, 9:50] = 2
    indices[10, 9:50] = 255                              # a void boundary belongs to no object
    png = root / "SegmentationObject" / "000005.png"
    png.parent.mkdir()
    Image.fromarray(indices).save(png)                   # grey indices are read as they are, like a palette PNG
    first, second = read_voc(root).records
    np.testing.assert_array_equal(rle_decode(first.segmentations[0]), indices == 1)
    np.testing.assert_array_equal(rle_decode(first.segmentations[1]), indices == 2)
    assert second.segmentations is None
    indices[0, 0] = 3
    Image.fromarray(indices).save(png)
    with pytest.raises(DataError, match=r"SegmentationObject/000005.png: image 000005: instance index 3 but the XML "
                                        r"has 2 objects$"):
        read_voc(root)
    with pytest.warns(UserWarning, match="skipped 1 images"):
        assert [r.image_id for r in read_voc(root, skip_invalid=True).records] == [7]
    Image.fromarray(indices[:10, :10]).save(png)
    with pytest.raises(DataError, match="000005.png: image 000005: PNG is 10x10, the image 50x40"):
        read_voc(root)
    Image.new("RGB", (50, 40)).save(png)
    with pytest.raises(DataError, match="000005.png: .*got mode RGB"):
        read_voc(root)


def test_overlapping_masks_warn_and_the_smaller_keeps_the_shared_pixels(tmp_path):
    small = [[8, 8, 14, 8, 14, 14, 8, 14]]
    record = Record(3, "c.png", 20, 20, boxes=[[8, 8, 14, 14], [2, 2, 12, 12]], labels=[1, 1],
                    segmentations=[small, SQUARE], image=np.zeros((20, 20, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"the masks of 1 objects in 1 images overlap .* first: image id 3 object 1"):
        root = write_voc(Dataset([record], {1: "box"}), tmp_path / "voc")
    _, _, objects = _png(root / "SegmentationObject" / "c.png")
    assert (objects[8:14, 8:14] == 1).all() and objects[2, 2] == 2      # the smaller object 0 is on top


def test_rewriting_without_masks_removes_the_old_pngs(tmp_path):
    record = Record(4, "d.png", 20, 20, boxes=[[2, 2, 12, 12]], labels=[1], segmentations=[SQUARE],
                    image=np.zeros((20, 20, 3), np.uint8))
    root = write_voc(Dataset([record], {1: "box"}), tmp_path / "voc")
    assert read_voc(root).records[0].segmentations[0] is not None
    record.segmentations = None
    write_voc(Dataset([record], {1: "box"}), root)
    assert read_voc(root).records[0].segmentations is None               # not the old file's mask
    assert not (root / "SegmentationClass" / "d.png").exists()
    assert not (root / "ImageSets" / "Segmentation" / "trainval.txt").exists()


def test_fcn_reads_the_written_class_pngs_as_the_world_semantic_maps(tmp_path):
    from scenekit.data.world import make_world
    from scenekit.models.fcn import record_class_map

    world = make_world(6, seed=5, image_size=64)
    again = read_voc(write_voc(world, tmp_path / "voc"))
    index = {c: i + 1 for i, c in enumerate(sorted(world.categories))}
    for original, record in zip(world.records, again.records):
        assert record.semantic is None                   # so the class map comes from SegmentationClass/
        np.testing.assert_array_equal(record_class_map(again, record, index),
                                      record_class_map(world, original, index))
