"""COCO instances / captions / results: reading checked against pycocotools, strict validation, writing."""

import copy
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from scenekit.data.coco import (attach_captions, read_coco, read_coco_results, to_coco_dict, write_coco,
                                write_coco_captions, write_coco_results)
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError


def _crowd_rle(height, width):
    """An uncompressed RLE as real COCO crowd annotations store it (counts as a list)."""
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    counts = []                                       # run lengths over the column-major pixels
    flat = mask.ravel(order="F")
    run, value = 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            run, value = 0, pixel
        run += 1
    counts.append(run)
    assert mask_utils.area(rle) == 400
    return {"size": [height, width], "counts": [int(c) for c in counts]}


def make_coco(tmp_path, **overrides):
    """Two images (60x40 and 50x50 PNGs) and four annotations: polygon, crowd RLE, compressed RLE, box only."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (50, 50), (200, 20, 30)).save(tmp_path / "img" / "b.png")
    compressed = mask_utils.encode(np.asfortranarray(np.pad(np.ones((10, 12), np.uint8), ((5, 35), (3, 35)))))
    data = {
        "images": [{"id": 1, "file_name": "img/a.png", "width": 60, "height": 40},
                   {"id": 7, "file_name": "img/b.png", "width": 50, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.5, 5.25, 20.0, 10.0], "area": 150.5,
             "iscrowd": 0, "segmentation": [[10.5, 5.25, 30.5, 5.25, 30.5, 15.25, 10.5, 15.25]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 10, 20, 20], "area": 400, "iscrowd": 1,
             "segmentation": _crowd_rle(40, 60)},
            {"id": 5, "image_id": 7, "category_id": 3, "bbox": [3, 5, 12, 10], "area": 120, "iscrowd": 0,
             "segmentation": {"size": [50, 50], "counts": compressed["counts"].decode()}},
            {"id": 9, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "x"}, {"id": 3, "name": "car"}],
    }
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, data


def test_read_coco_matches_pycocotools_boxes_areas_categories(tmp_path):
    path, _ = make_coco(tmp_path)
    dataset = read_coco(path)
    reference = COCO(str(path))
    assert dataset.categories == {c["id"]: c["name"] for c in reference.loadCats(reference.getCatIds())}
    assert sorted(r.image_id for r in dataset.records) == sorted(reference.getImgIds())
    for record in dataset.records:
        anns = reference.loadAnns(reference.getAnnIds(imgIds=record.image_id))
        assert record.ann_ids.tolist() == [a["id"] for a in anns]
        assert record.labels.tolist() == [a["category_id"] for a in anns]
        assert record.iscrowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        np.testing.assert_allclose(record.areas, [a["area"] for a in anns])
        xywh = np.concatenate([record.boxes[:, :2], record.boxes[:, 2:] - record.boxes[:, :2]], axis=1)
        np.testing.assert_allclose(xywh, [a["bbox"] for a in anns], rtol=0, atol=1e-12)


def test_read_coco_keeps_rle_masks_that_decode_like_pycocotools(tmp_path):
    from scenekit.masks import rle_decode

    path, _ = make_coco(tmp_path)
    dataset, reference = read_coco(path), COCO(str(path))
    for record in dataset.records:
        for k, ann_id in enumerate(record.ann_ids):
            ann = reference.loadAnns([int(ann_id)])[0]
            segmentation = record.segmentations[k] if record.segmentations else None
            if isinstance(segmentation, dict):
                np.testing.assert_array_equal(rle_decode(segmentation), reference.annToMask(ann))


def test_box_past_border_by_less_than_a_pixel_is_kept_unchanged(tmp_path):
    path, data = make_coco(tmp_path)
    data["annotations"][3]["bbox"] = [-0.4, -0.9, 50.8, 50.6]
    path.write_text(json.dumps(data))
    record = read_coco(path).records[1]
    np.testing.assert_allclose(record.boxes[1], [-0.4, -0.9, 50.4, 49.7])


def _break(data, what):
    data = copy.deepcopy(data)
    if what == "box outside":
        data["annotations"][0]["bbox"] = [50, 5, 20, 10]
    elif what == "negative size":
        data["annotations"][0]["bbox"] = [10, 5, -3, 10]
    elif what == "unknown category":
        data["annotations"][2]["category_id"] = 99
    elif what == "duplicate annotation id":
        data["annotations"][2]["id"] = 2
    elif what == "duplicate image id":
        data["images"][1]["id"] = 1
    elif what == "empty polygon":
        data["annotations"][0]["segmentation"] = [[]]
    elif what == "empty polygon list":
        data["annotations"][0]["segmentation"] = []
    elif what == "unknown image":
        data["annotations"][1]["image_id"] = 42
    elif what == "rle size":
        data["annotations"][1]["segmentation"]["size"] = [41, 60]
    elif what == "missing image file":
        data["images"][1]["file_name"] = "img/missing.png"
    elif what == "wrong width":
        data["images"][0]["width"] = 61
    elif what == "duplicate category":
        data["categories"][1]["id"] = 1
    elif what == "nan box":
        data["annotations"][3]["bbox"] = [0, 0, float("nan"), 3]
    return data


@pytest.mark.parametrize("what, record, field", [
    ("box outside", "annotation id 1", "bbox"),
    ("negative size", "annotation id 1", "bbox"),
    ("unknown category", "annotation id 5", "category_id"),
    ("duplicate annotation id", "annotations[2]", "id"),
    ("duplicate image id", "images[1]", "id"),
    ("empty polygon", "annotation id 1", "segmentation"),
    ("empty polygon list", "annotation id 1", "segmentation"),
    ("unknown image", "annotation id 2", "image_id"),
    ("rle size", "annotation id 2", "segmentation"),
    ("missing image file", "image id 7", "file_name"),
    ("wrong width", "image id 1", "width/height"),
    ("nan box", "annotation id 9", "bbox"),
    ("duplicate category", "category id 1", "id"),
])
def test_each_invalid_input_raises_data_error_naming_file_record_field(tmp_path, what, record, field):
    path, data = make_coco(tmp_path)
    path.write_text(json.dumps(_break(data, what)))        # NaN is written as `NaN`, as Python's json does
    with pytest.raises(DataError) as caught:
        read_coco(path)
    message = str(caught.value)
    assert str(path) in message and record in message and f"field {field}" in message, message
    assert caught.value.record == record and caught.value.field == field


def test_duplicate_ids_are_named_by_id_in_the_reason(tmp_path):
    path, data = make_coco(tmp_path)
    path.write_text(json.dumps(_break(data, "duplicate annotation id")))
    with pytest.raises(DataError, match="duplicate annotation id 2"):
        read_coco(path)


@pytest.mark.parametrize("content, reason", [('{"images": [{"id": 1, "file_na', "truncated"),
                                            ("images:\n - 1\n", "not valid JSON"),
                                            ("", "not valid JSON")])
def test_truncated_or_non_json_file_is_a_data_error(tmp_path, content, reason):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=reason) as caught:
        read_coco(path)
    assert caught.value.file == str(path)


def test_results_file_passed_as_ground_truth_is_named_as_such(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(DataError, match="read_coco_results"):
        read_coco(path)


def test_image_that_pil_cannot_decode_is_a_data_error(tmp_path):
    path, _ = make_coco(tmp_path)
    (tmp_path / "img" / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="PIL cannot decode") as caught:
        read_coco(path)
    assert caught.value.record == "image id 7" and caught.value.field == "file_name"


def test_full_image_check_catches_a_truncated_png_that_the_header_check_misses(tmp_path):
    path, _ = make_coco(tmp_path)
    image = tmp_path / "img" / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:200])
    assert len(read_coco(path, check_images=True)) == 2
    with pytest.raises(DataError, match="PIL cannot decode") as caught:
        read_coco(path, check_images="full")
    assert caught.value.record == "image id 1"


def test_skip_invalid_loads_the_rest_and_reports_every_skipped_record(tmp_path):
    path, data = make_coco(tmp_path)
    data = _break(_break(data, "unknown category"), "missing image file")     # image 7 and its 2 annotations
    data["annotations"][0]["bbox"] = [10, 5, -1, 3]                             # annotation 1 on image 1
    path.write_text(json.dumps(data))
    report = tmp_path / "out" / "skipped.json"
    with pytest.warns(UserWarning, match="skipped 1 images and 3 annotations"):
        dataset = read_coco(path, skip_invalid=True, report_path=report)
    assert [r.image_id for r in dataset.records] == [1]
    assert dataset.records[0].ann_ids.tolist() == [2]
    content = json.loads(report.read_text())
    skipped = {(s["kind"], s["id"]): s for s in content["skipped"]}
    assert set(skipped) == {("image", 7), ("annotation", 1), ("annotation", 5), ("annotation", 9)}
    assert skipped[("annotation", 1)]["field"] == "bbox"
    assert content["images_loaded"] == 1 and content["annotations_loaded"] == 1


def test_captions_file_reads_as_records_with_captions(tmp_path):
    path, data = make_coco(tmp_path)
    captions = {"images": data["images"], "annotations": [
        {"id": 1, "image_id": 7, "caption": "A red square. "}, {"id": 2, "image_id": 1, "caption": "dark"},
        {"id": 3, "image_id": 7, "caption": "a second caption"}]}
    captions_path = tmp_path / "captions.json"
    captions_path.write_text(json.dumps(captions))
    read_back = read_coco(captions_path)
    assert {r.image_id: r.captions for r in read_back.records} == \
        {1: ["dark"], 7: ["A red square.", "a second caption"]}
    assert all(r.num_objects == 0 for r in read_back.records)
    merged = read_coco(path, captions_path=captions_path)
    assert merged.records[1].captions == ["A red square.", "a second caption"] and merged.records[1].num_objects == 2
    written = write_coco_captions(merged, tmp_path / "captions_out.json")
    assert {r.image_id: r.captions for r in read_coco(written, check_images=False).records} == \
        {1: ["dark"], 7: ["A red square.", "a second caption"]}
    captions["annotations"][0]["image_id"] = 3
    captions_path.write_text(json.dumps(captions))
    with pytest.raises(DataError, match="image_id 3"):
        attach_captions(read_coco(path), captions_path)


def test_write_coco_round_trips_boxes_masks_areas_and_ids_exactly(tmp_path):
    path, data = make_coco(tmp_path)
    dataset = read_coco(path)
    out = write_coco(dataset, tmp_path / "sub" / "copy.json")
    again = read_coco(out)
    original, written = json.loads(path.read_text()), json.loads(out.read_text())
    strip = [{k: v for k, v in a.items()} for a in original["annotations"]]
    for ann in strip:
        ann["bbox"] = [float(v) for v in ann["bbox"]]
        ann["area"] = float(ann["area"])
    assert written["annotations"] == strip
    assert [r.file_name for r in again.records] == ["../img/a.png", "../img/b.png"]
    for a, b in zip(dataset.records, again.records):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_write_coco_renumbers_annotation_ids_that_collide_or_are_zero(tmp_path):
    records = [Record(1, "a.png", 10, 10, boxes=[[0, 0, 2, 2]], labels=[1]),
               Record(2, "b.png", 10, 10, boxes=[[1, 1, 3, 3], [2, 2, 5, 5]], labels=[1, 1])]
    coco = to_coco_dict(Dataset(records, {1: "thing"}))
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]        # the records' ids 0, 0, 1 would collide


def test_write_coco_with_image_dir_writes_in_memory_images_as_png(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    record = Record(3, "x.png", 16, 12, boxes=[[1, 2, 5, 9]], labels=[2], image=image)
    out = write_coco(Dataset([record], {2: "b"}), tmp_path / "c.json", tmp_path / "pics")
    again = read_coco(out, check_images="full")
    np.testing.assert_array_equal(np.asarray(Image.open(again.image_path(again.records[0]))), image)
    assert again.records[0].file_name == "pics/x.png"


def test_results_round_trip_and_validation(tmp_path):
    results = [{"image_id": 1, "category_id": 3, "bbox": [1.5, 2, 3, 4], "score": np.float32(0.75)},
               {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1,
                "segmentation": {"size": [50, 50], "counts": "abc"}}]
    path = write_coco_results(results, tmp_path / "res.json")
    read_back = read_coco_results(path)
    assert read_back[0] == {"image_id": 1, "category_id": 3, "bbox": [1.5, 2, 3, 4], "score": 0.75}
    gt_path, _ = make_coco(tmp_path)
    loaded = COCO(str(gt_path)).loadRes(str(path))            # pycocotools accepts what we write
    assert len(loaded.getAnnIds()) == 2
    path.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4], "score": 1}]))
    with pytest.raises(DataError, match="negative size") as caught:
        read_coco_results(path)
    assert caught.value.record == "results[0]" and caught.value.field == "bbox"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(DataError, match="score"):
        read_coco_results(path)
