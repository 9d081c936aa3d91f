"""Detection metrics: COCO AP/AR against pycocotools (bbox and segm, edge cases, exact to 1e-12), Pascal VOC AP
against a plain re-implementation of the devkit and hand-computed cases, PR curves, and the evaluate CLI."""

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest

from scenekit import masks
from scenekit.data.records import Dataset, Record
from scenekit.errors import DataError
from scenekit.metrics import detection
from scenekit.metrics.detection import (STAT_NAMES, coco_evaluate, coco_evaluation, dataset_to_coco_dict,
                                        precision_recall_curves, voc_ap, voc_evaluate)

mask_utils = pytest.importorskip("pycocotools.mask")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


# ------------------------------------------------------------------------------------------------- reference
def pycocotools_eval(gt: dict, results: list, iou_type="bbox", img_ids=None, cat_ids=None) -> COCOeval:
    """pycocotools on deep copies (it writes into the dicts); empty results get an empty result set."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:                                            # loadRes fails on []: build the empty set by hand
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = img_ids
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_same_as_pycocotools(gt, results, iou_type="bbox", **subset):
    reference = pycocotools_eval(gt, results, iou_type, **subset)
    ours = coco_evaluation(gt, results, iou_type, **subset)
    stats = np.array([ours.stats[name] for name in STAT_NAMES])
    np.testing.assert_allclose(stats, reference.stats, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.precision, reference.eval["precision"])
    np.testing.assert_array_equal(ours.recall, reference.eval["recall"])
    np.testing.assert_array_equal(ours.scores, reference.eval["scores"])
    return ours


# ---------------------------------------------------------------------------------------------- random data
def polygon_for(x, y, w, h, rng):
    """A random star-ish polygon inside the box."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
    radius = rng.uniform(0.5, 1.0, len(angles))
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return [np.column_stack([xs, ys]).ravel().round(2).tolist()]


def make_problem(seed, num_images=30, num_categories=5, segm=False):
    """Random gts (small/medium/large, some crowd, areas given or not) and jittered + random detections with
    coarse scores (ties), on images of several sizes; some images and one category without gt."""
    rng = np.random.default_rng(seed)
    images = [{"id": int(i), "width": int(rng.integers(60, 160)), "height": int(rng.integers(50, 140))}
              for i in rng.permutation(num_images) + 10]
    categories = [{"id": c * 3, "name": f"c{c}"} for c in range(1, num_categories + 1)]
    annotations, results = [], []
    for image in images:
        W, H = image["width"], image["height"]
        for _ in range(int(rng.integers(0, 7)) if rng.random() > 0.15 else 0):
            w, h = (float(v) for v in np.exp(rng.uniform(np.log(3), np.log(0.9 * min(W, H)), 2)).round(1))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            category = categories[int(rng.integers(0, num_categories - 1))]["id"]   # the last has no gt
            crowd = int(rng.random() < 0.1)
            ann = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                   "bbox": [x, y, w, h], "iscrowd": crowd}
            if segm:
                polygon = polygon_for(x, y, w, h, rng)
                if crowd or rng.random() < 0.2:          # crowd regions as uncompressed RLE, some as strings
                    rle = mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))
                    mask = mask_utils.decode(rle)
                    runs = masks.rle_encode(mask)
                    ann["segmentation"] = runs if crowd else {"size": [H, W], "counts": rle["counts"].decode()}
                else:
                    ann["segmentation"] = polygon
                ann["area"] = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))))
            else:
                ann["area"] = round(w * h * float(rng.uniform(0.3, 1.2)), 2)
            annotations.append(ann)
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 0.5), max(h + jitter[3], 0.5)]
                results.append({"image_id": image["id"], "score": float(rng.integers(1, 20)) / 20,
                                "category_id": category if rng.random() < 0.85 else
                                categories[int(rng.integers(0, num_categories))]["id"],
                                "bbox": [round(float(v), 2) for v in box]})
        for _ in range(int(rng.integers(0, 5))):
            w, h = (float(v) for v in rng.uniform(2, 50, 2))
            category = categories[int(rng.integers(0, num_categories))]["id"]
            results.append({"image_id": image["id"], "category_id": category,
                            "bbox": [float(rng.uniform(0, W - 2)), float(rng.uniform(0, H - 2)), w, h],
                            "score": float(rng.integers(1, 20)) / 20})
    rng.shuffle(results)
    if segm:
        for r in results:
            image = next(i for i in images if i["id"] == r["image_id"])
            x, y, w, h = r["bbox"]
            rle = mask_utils.merge(mask_utils.frPyObjects(polygon_for(x, y, w, h, rng), image["height"],
                                                          image["width"]))
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    return {"images": images, "annotations": annotations, "categories": categories}, results


# --------------------------------------------------------------------------------------- COCO vs pycocotools
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_coco_bbox_equals_pycocotools_on_random_problems(seed):
    gt, results = make_problem(seed)
    assert_same_as_pycocotools(gt, results, "bbox")


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_coco_segm_equals_pycocotools_with_polygon_and_rle_gts(seed):
    gt, results = make_problem(seed, segm=True)
    assert_same_as_pycocotools(gt, results, "segm")


def test_coco_segm_results_without_boxes_take_area_from_the_mask():
    gt, results = make_problem(13, segm=True)
    for r in results:
        del r["bbox"]                                   # loadRes: area = mask area, bbox = mask's box
    assert_same_as_pycocotools(gt, results, "segm")
    assert_same_as_pycocotools(gt, results, "bbox")


def test_coco_segm_of_box_only_results_rasterises_the_boxes():
    gt, results = make_problem(14, segm=True)
    for r in results:
        del r["segmentation"]
    assert_same_as_pycocotools(gt, results, "segm")


def test_coco_uncompressed_rle_results_are_read_like_compressed_ones():
    gt, results = make_problem(15, segm=True)
    compressed = coco_evaluate(gt, results, "segm")
    for r in results:
        r["segmentation"] = masks.decompress(r["segmentation"])
    assert coco_evaluate(gt, results, "segm") == compressed


def test_coco_with_no_detections_gives_zero_ap_for_categories_with_gt():
    gt, _ = make_problem(20)
    ours = assert_same_as_pycocotools(gt, [], "bbox")
    assert ours.stats["AP"] == 0.0 and ours.stats["AR100"] == 0.0


def test_coco_category_without_gt_is_left_out_not_zero():
    gt, results = make_problem(21)
    empty_category = gt["categories"][-1]["id"]
    assert not any(a["category_id"] == empty_category for a in gt["annotations"])
    assert any(r["category_id"] == empty_category for r in results)
    ours = assert_same_as_pycocotools(gt, results)
    k = list(ours.category_ids).index(empty_category)
    assert (ours.precision[:, :, k] == -1).all()


def test_coco_images_without_gt_only_add_false_positives():
    gt, results = make_problem(22)
    gt["images"].append({"id": 999, "width": 100, "height": 100})
    results += [{"image_id": 999, "category_id": 3, "bbox": [10, 10, 20, 20], "score": 0.99}] * 3
    assert_same_as_pycocotools(gt, results)


def test_coco_score_ties_keep_file_order_like_mergesort():
    gt, results = make_problem(23)
    for r in results:
        r["score"] = 0.5                                # every detection tied
    assert_same_as_pycocotools(gt, results)


def test_coco_keeps_only_the_best_100_detections_per_image_and_category():
    gt, results = make_problem(24, num_images=6)
    rng = np.random.default_rng(0)
    for image in gt["images"]:
        for category in (3, 6):
            for _ in range(130):
                x, y = rng.uniform(0, 40, 2)
                results.append({"image_id": image["id"], "category_id": category, "score": float(rng.random()),
                                "bbox": [float(x), float(y), float(rng.uniform(2, 40)), float(rng.uniform(2, 40))]})
    assert_same_as_pycocotools(gt, results)


def test_coco_crowd_regions_absorb_detections_without_false_positives():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500,
                           "iscrowd": 1},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900,
                           "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9}]
    results += [{"image_id": 1, "category_id": 1, "bbox": [5 * i, 5 * i, 10, 10], "score": 0.8} for i in range(5)]
    ours = assert_same_as_pycocotools(gt, results)
    assert ours.stats["AP"] == pytest.approx(1.0)       # the five inside the crowd region are ignored


def test_coco_detection_prefers_a_regular_gt_over_a_better_overlapping_crowd():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 60], "area": 3600,
                           "iscrowd": 1},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "area": 1200,
                           "iscrowd": 0}]}
    # IoU 0.75 with the regular gt, 1.0 (inside) with the crowd region listed first: still a true positive
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    stats = assert_same_as_pycocotools(gt, results).stats
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_coco_ignore_field_is_overridden_by_iscrowd_as_in_pycocotools():
    gt, results = make_problem(25)
    for ann in gt["annotations"][::3]:
        ann["ignore"] = 1                                # pycocotools sets ignore = iscrowd
    assert_same_as_pycocotools(gt, results)


def test_coco_uses_given_gt_areas_and_computes_missing_ones():
    gt, results = make_problem(26)
    assert_same_as_pycocotools(gt, results)             # given areas differ from the box areas
    filled = copy.deepcopy(gt)
    for ann in filled["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    for ann in gt["annotations"]:
        del ann["area"]
    assert coco_evaluate(gt, results) == coco_evaluate(filled, results)


def test_coco_image_and_category_subsets_match_pycocotools_params():
    gt, results = make_problem(27)
    image_ids = [image["id"] for image in gt["images"][::2]] + [12345]
    assert_same_as_pycocotools(gt, results, img_ids=image_ids, cat_ids=[3, 9, 15])
    assert_same_as_pycocotools(gt, results, img_ids=image_ids)
    assert all(v == -1 for v in coco_evaluate(gt, results, img_ids=[]).values())


def test_coco_gt_with_annotation_id_zero_matches_pycocotools_and_warns():
    gt, results = make_problem(28)
    gt["annotations"][0]["id"] = 0
    with pytest.warns(UserWarning, match="id 0"):
        assert_same_as_pycocotools(gt, results)


def test_coco_perfect_detections_score_one():
    gt, _ = make_problem(29)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"] if not a["iscrowd"]]
    stats = assert_same_as_pycocotools(gt, results).stats
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ Dataset + errors
def make_dataset(seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for image_id in range(1, 9):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(4, 40, (n, 2))
        records.append(Record(image_id=image_id, file_name=f"{image_id}.png", width=100, height=100,
                              boxes=np.c_[xy, xy + wh], labels=rng.integers(1, 4, n),
                              difficult=rng.random(n) < 0.2))
    return Dataset(records, {1: "circle", 2: "square", 3: "star"})


def dataset_results(dataset, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for record in dataset.records:
        for box, label in zip(record.boxes, record.labels):
            for _ in range(int(rng.integers(0, 3))):
                x1, y1, x2, y2 = box + rng.normal(0, 2, 4)
                results.append({"image_id": record.image_id, "category_id": int(label), "score": float(rng.random()),
                                "bbox": [float(x1), float(y1), float(max(x2 - x1, 1)), float(max(y2 - y1, 1))]})
        results.append({"image_id": record.image_id, "category_id": int(rng.integers(1, 4)), "score": 0.3,
                        "bbox": [5.0, 5.0, 30.0, 30.0]})
    return results


def test_dataset_goes_through_the_same_coco_evaluation():
    dataset = make_dataset()
    results = dataset_results(dataset)
    as_dict = dataset_to_coco_dict(dataset)
    assert [a["id"] for a in as_dict["annotations"]] == list(range(1, len(as_dict["annotations"]) + 1))
    assert coco_evaluate(dataset, results) == coco_evaluate(as_dict, results)
    assert_same_as_pycocotools(as_dict, results)


def test_dataset_to_coco_dict_converts_boxes_and_areas():
    record = Record(image_id=7, file_name="a.png", width=50, height=40, boxes=[[1, 2, 11, 22]], labels=[2],
                    ann_ids=[5], areas=[150.0], segmentations=[[[1, 2, 11, 2, 11, 22]]])
    coco = dataset_to_coco_dict(Dataset([record], {2: "square"}))
    ann = coco["annotations"][0]
    assert ann == {"id": 5, "image_id": 7, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 20.0], "area": 150.0,
                   "iscrowd": 0, "segmentation": [[1, 2, 11, 2, 11, 22]]}
    assert coco["images"] == [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}]


def test_dataset_to_coco_dict_is_the_written_coco_dict_with_difficult_objects_marked():
    from scenekit.data.coco import to_coco_dict

    record = Record(image_id=3, file_name="v.jpg", width=60, height=50, boxes=[[1, 2, 11, 22], [5, 5, 30, 40]],
                    labels=[1, 2], difficult=[False, True])
    dataset = Dataset([record], {1: "a", 2: "b"})
    written, evaluated = to_coco_dict(dataset), dataset_to_coco_dict(dataset)
    assert [a.get("difficult") for a in evaluated["annotations"]] == [None, 1]
    assert [{k: v for k, v in a.items() if k != "difficult"} for a in evaluated["annotations"]] \
        == written["annotations"] and "difficult" not in str(written)
    assert evaluated["images"] == written["images"] and evaluated["categories"] == written["categories"]


@pytest.mark.parametrize("bbox, reason", [([1, 2, -3, 4], "has negative size (w -3, h 4)"),
                                          ([1, 2, 3], "must be 4 finite numbers [x, y, w, h], got [1, 2, 3]"),
                                          ([0, 0, float("inf"), 1], "must be 4 finite numbers")])
def test_a_bad_result_box_is_refused_in_the_same_words_by_the_reader_and_the_evaluation(tmp_path, bbox, reason):
    """The evaluation checks boxes with scenekit.data.coco's check, not a second copy of it."""
    from scenekit.data.coco import read_coco_results

    gt, results = make_problem(32)
    results[0]["bbox"] = bbox
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(DataError) as by_reader:
        read_coco_results(path)
    with pytest.raises(DataError) as by_evaluation:
        coco_evaluate(gt, str(path))
    assert by_reader.value.reason == by_evaluation.value.reason and by_reader.value.reason.startswith(reason)
    assert by_evaluation.value.record == "record 0" and by_evaluation.value.field == "bbox"


def test_a_malformed_ground_truth_segmentation_is_refused_in_the_same_words_by_the_reader_and_the_evaluation(
        tmp_path):
    from scenekit.data.coco import read_coco

    gt, results = make_problem(33)
    gt = with_file_names(gt)
    gt["annotations"][0]["segmentation"] = "not a polygon"
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(DataError) as by_reader:
        read_coco(path, check_images=False)
    with pytest.raises(DataError) as by_evaluation:
        coco_evaluate(str(path), results, "segm")
    assert by_reader.value.reason == by_evaluation.value.reason
    assert by_evaluation.value.reason == "must be polygons (a list) or an RLE (a dict), got str"


@pytest.mark.parametrize("change, field", [
    (lambda r: r[3].update(image_id=424242), "image_id"),
    (lambda r: r[3].update(category_id=7), "category_id"),
    (lambda r: r[3].update(bbox=[1, 2, -3, 4]), "bbox"),
    (lambda r: r[3].update(score=float("nan")), "score"),
    (lambda r: r[3].update(score="high"), "score"),
    (lambda r: r[3].pop("bbox"), "bbox"),
    (lambda r: r[3].update(bbox=[1, 2, 3]), "bbox"),
])
def test_bad_result_record_is_named_by_index_and_field(change, field):
    gt, results = make_problem(30)
    change(results)
    with pytest.raises(DataError, match=f"record 3: field {field}"):
        coco_evaluate(gt, results)


def test_bad_ground_truth_is_named_by_annotation_and_field():
    gt, results = make_problem(31)
    gt["annotations"][2]["bbox"] = [0, 0, float("inf"), 1]
    with pytest.raises(DataError, match="annotation 2: field bbox"):
        coco_evaluate(gt, results)
    gt, results = make_problem(31)
    gt["annotations"][4]["id"] = gt["annotations"][1]["id"]
    with pytest.raises(DataError, match="annotation 4: field id: duplicate"):
        coco_evaluate(gt, results)
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, results, "keypoints")


# -------------------------------------------------------------------------------------------------- PR curves
def test_pr_curves_are_monotone_and_their_mean_is_the_coco_ap50():
    gt, results = make_problem(40)
    curves = precision_recall_curves(gt, results, iou_threshold=0.5)
    per_category = coco_evaluation(gt, results).category_ap(iou_threshold=0.5)
    assert curves
    for category, curve in curves.items():
        assert np.all(np.diff(curve.precision) <= 0)                    # the envelope never rises
        assert np.all(np.diff(curve.recall) >= 0)
        assert np.all(curve.precision >= curve.raw_precision)
        assert np.all(np.diff(curve.scores) <= 0)
        assert curve.ap == pytest.approx(per_category[category], abs=1e-12)


def test_pr_curve_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from scenekit import viz

    gt, results = make_problem(41)
    path = viz.plot_precision_recall(precision_recall_curves(gt, results), tmp_path / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert detection.plot_precision_recall is viz.plot_precision_recall        # the old name still answers


# ------------------------------------------------------------------------------------------------ Pascal VOC
def devkit_voc_eval(gt, results, category, threshold, use_07, plus_one):
    """The devkit's voc_eval (py-faster-rcnn) spelled out: stable sort, VOCevaldet.m's `>=` threshold."""
    one = 1.0 if plus_one else 0.0
    boxes = {}
    for ann in gt["annotations"]:
        if ann["category_id"] == category:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], bool(ann.get("difficult", 0))))
    npos = sum(not d for items in boxes.values() for _, d in items)
    detected = {k: [False] * len(v) for k, v in boxes.items()}
    dets = [r for r in results if r["category_id"] == category]
    dets = [dets[i] for i in np.argsort([-r["score"] for r in dets], kind="stable")]
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d, r in enumerate(dets):
        x, y, w, h = r["bbox"]
        bb = [x, y, x + w, y + h]
        ovmax, jmax = -np.inf, -1
        for j, (g, _) in enumerate(boxes.get(r["image_id"], [])):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + one
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + one
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one) + (g[2] - g[0] + one) * (g[3] - g[1] + one) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= threshold:
            if not boxes[r["image_id"]][jmax][1]:
                if not detected[r["image_id"]][jmax]:
                    tp[d] = 1
                    detected[r["image_id"]][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return float("nan")
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((np.max(prec[rec >= t]) if (rec >= t).any() else 0) / 11 for t in np.arange(0, 1.1, 0.1))
    mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@pytest.mark.parametrize("seed", [50, 51, 52])
@pytest.mark.parametrize("use_07, plus_one", [(False, False), (True, False), (False, True), (True, True)])
def test_voc_ap_equals_the_devkit_logic(seed, use_07, plus_one):
    gt, results = make_problem(seed)
    rng = np.random.default_rng(seed)
    for ann in gt["annotations"]:
        ann["iscrowd"] = 0
        ann["difficult"] = int(rng.random() < 0.15)
    ours = voc_evaluate(gt, results, 0.5, use_07, plus_one=plus_one)
    expected = {c["id"]: devkit_voc_eval(gt, results, c["id"], 0.5, use_07, plus_one) for c in gt["categories"]}
    for category, ap in expected.items():
        np.testing.assert_allclose(ours["AP"][category], ap, rtol=0, atol=1e-12)
    assert ours["mAP"] == pytest.approx(np.nanmean(list(expected.values())), abs=1e-12)


def voc_toy():
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
                          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "difficult": 1}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},     # TP
               {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.85},  # on difficult: ignored
               {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8},     # duplicate: FP
               {"image_id": 2, "category_id": 1, "bbox": [0, 1, 10, 10], "score": 0.7}]     # TP
    return gt, results


def test_voc_toy_case_by_hand():
    # counted: TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3
    gt, results = voc_toy()
    all_point = voc_evaluate(gt, results)
    assert all_point["AP"][1] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(all_point["AP"][2]) and all_point["mAP"] == all_point["AP"][1]
    eleven = voc_evaluate(gt, results, use_07_metric=True)
    assert eleven["AP"][1] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_voc_ap_formulas_by_hand():
    recall, precision = np.array([0.2, 0.4, 0.4, 0.8]), np.array([1.0, 1.0, 0.5, 0.6])
    assert voc_ap(recall, precision) == pytest.approx(0.4 * 1 + 0.4 * 0.6)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((5 * 1 + 4 * 0.6) / 11)


def test_voc_on_a_dataset_ignores_difficult_objects():
    dataset = make_dataset(1)
    results = dataset_results(dataset, 1)
    coco = dataset_to_coco_dict(dataset)
    ours = voc_evaluate(dataset, results)
    for category in dataset.categories:
        expected = devkit_voc_eval(coco, results, category, 0.5, False, False)
        np.testing.assert_allclose(ours["AP"][category], expected, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ CLI
def write_files(tmp_path, seed=60):
    gt, results = make_problem(seed)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return gt, results


def test_cli_evaluate_json_equals_pycocotools(tmp_path, capsys):
    from scenekit.cli import main

    gt, results = write_files(tmp_path)
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json"),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == list(STAT_NAMES)
    np.testing.assert_allclose([printed[k] for k in STAT_NAMES], pycocotools_eval(gt, results).stats, atol=1e-12)


def test_cli_evaluate_prints_the_coco_table_and_the_voc_table(tmp_path, capsys):
    from scenekit.cli import main

    write_files(tmp_path)
    args = ["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json")]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 12 and table[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")
    assert main(args + ["--metric", "voc"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("mAP")


@pytest.mark.parametrize("content, message", [
    (None, "results file not found"),
    ("{not json", "not valid JSON"),
    ([{"image_id": 424242, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}], "record 0: field image_id"),
    ([{"image_id": "PLACEHOLDER", "category_id": 99, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "record 0: field category_id"),
    ([{"image_id": "PLACEHOLDER", "category_id": 3, "bbox": [0, 0, -1, 1], "score": 0.5}], "record 0: field bbox"),
    ("NAN_SCORE", "record 0: field score"),
])
def test_cli_evaluate_bad_results_exit_2_with_one_line(tmp_path, capsys, content, message):
    from scenekit.cli import main

    gt, _ = write_files(tmp_path)
    bad = tmp_path / "bad.json"
    image_id = gt["images"][0]["id"]
    if content == "NAN_SCORE":
        bad.write_text(f'[{{"image_id": {image_id}, "category_id": 3, "bbox": [0, 0, 1, 1], "score": NaN}}]')
    elif isinstance(content, str):
        bad.write_text(content)
    elif content is not None:
        bad.write_text(json.dumps(content).replace('"PLACEHOLDER"', str(image_id)))
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bad.json" in error and message in error


def test_cli_evaluate_writes_stats_and_pr_curves_to_out(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from scenekit.cli import main

    write_files(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "results.json"),
                 "--out", str(out)]) == 0
    assert set(json.loads((out / "stats.json").read_text())) == set(STAT_NAMES)
    assert (out / "pr_curves.png").stat().st_size > 0


def test_cli_evaluate_without_files_is_a_one_line_error(capsys):
    from scenekit.cli import main

    assert main(["evaluate"]) == 2
    assert "--gt" in capsys.readouterr().err


def test_warnings_free_on_normal_input():
    gt, results = make_problem(61)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coco_evaluate(gt, results)


# ----------------------------------------------------------------------------------- results named by file
def with_file_names(gt):
    """The problem's gt with a file_name per image, in a folder, as COCO files have them."""
    gt = copy.deepcopy(gt)
    for image in gt["images"]:
        image["file_name"] = f"val2017/{image['id']:012d}.jpg"
    return gt


def test_results_named_by_file_name_score_as_their_image_ids_whatever_the_order():
    gt, results = make_problem(70)
    gt = with_file_names(gt)
    names = {image["id"]: image["file_name"] for image in gt["images"]}
    named = []
    for k, result in enumerate(results):          # the file name as written, elsewhere, or as its base name
        name = names[result["image_id"]]
        record = {key: value for key, value in result.items() if key != "image_id"}
        record["file_name"] = [name, f"/data/coco/{name}", name.split("/")[-1]][k % 3]
        named.append(record)
    for by_id, by_name in ((results, named), (results[::-1], named[::-1])):   # (equal scores keep file order)
        reference = assert_same_as_pycocotools(gt, by_id)
        ours = coco_evaluation(gt, by_name)
        assert ours.stats == reference.stats
        np.testing.assert_array_equal(ours.precision, reference.precision)
        np.testing.assert_equal(voc_evaluate(gt, by_name), voc_evaluate(gt, by_id))      # (NaN: no gt)


def test_results_whose_file_name_agrees_with_their_image_id_are_accepted():
    gt, results = make_problem(71)
    gt = with_file_names(gt)
    names = {image["id"]: image["file_name"] for image in gt["images"]}
    both = [{**r, "file_name": names[r["image_id"]]} for r in results]
    assert coco_evaluate(gt, both) == coco_evaluate(gt, results)


@pytest.mark.parametrize("change, message", [
    (lambda r: r[0].update(file_name="val2017/missing.jpg"), "'val2017/missing.jpg'"),
    (lambda r: r[0].update(image_id=-5), "record 0: field image_id: image_id -5 disagrees"),
    (lambda r: r[0].update(file_name=""), "record 0: field file_name"),
])
def test_result_file_names_that_match_no_image_or_disagree_are_refused(change, message):
    gt, results = make_problem(72)
    gt = with_file_names(gt)
    results = [{**r, "file_name": f"val2017/{r['image_id']:012d}.jpg"} for r in results]
    change(results)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        coco_evaluate(gt, results)


def test_file_names_match_the_longest_trailing_path_and_refuse_ties():
    from scenekit.metrics.result_images import FileNames

    index = FileNames([1, 2, 3, 4], ["a/x.jpg", "b/x.jpg", "b/c/y.jpg", "z.jpg"])
    assert index.lookup("/data/a/x.jpg") == [(1, "a/x.jpg")]
    assert index.lookup("b\\x.jpg") == [(2, "b/x.jpg")]
    assert index.lookup("y.jpg") == [(3, "b/c/y.jpg")]                 # the base name, being unique
    assert index.lookup("/copy/z.jpg") == [(4, "z.jpg")]
    assert sorted(index.lookup("x.jpg")) == [(1, "a/x.jpg"), (2, "b/x.jpg")]     # ambiguous
    assert index.lookup("q.jpg") == []


# ------------------------------------------------------------------------------- matching edge cases, speed
def test_coco_dense_groups_and_equal_ious_match_like_pycocotools():
    """Many gts per (image, category), duplicated gt boxes (equal IoUs: pycocotools keeps the later gt),
    crowd regions and more than 100 detections in a group."""
    rng = np.random.default_rng(80)
    images = [{"id": i, "width": 200, "height": 200} for i in (1, 2, 3)]
    annotations, results = [], []
    for image in images:
        for category in (1, 2):
            count = int(rng.integers(2, 40))
            boxes = [list(rng.uniform(0, 150, 2)) + list(rng.uniform(5, 50, 2)) for _ in range(count)]
            boxes += boxes[: len(boxes) // 3]                             # exact duplicates
            for box in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                    "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                    "iscrowd": int(rng.random() < 0.05)})
            for _ in range(130):
                box = boxes[int(rng.integers(0, len(boxes)))]
                jitter = rng.normal(0, 0.1, 4) * [box[2], box[3], box[2], box[3]] * (rng.random() < 0.7)
                results.append({"image_id": image["id"], "category_id": category,
                                "score": float(rng.integers(1, 9)) / 9,
                                "bbox": [float(box[0] + jitter[0]), float(box[1] + jitter[1]),
                                         float(max(box[2] + jitter[2], 1)), float(max(box[3] + jitter[3], 1))]})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    assert_same_as_pycocotools(gt, results)


def test_bbox_evaluation_does_not_load_numba():
    """The bbox path is plain numpy: a command does not pay numba's import and cache loading."""
    import subprocess
    import sys

    script = ("import sys, json; from scenekit.metrics.detection import coco_evaluate, voc_evaluate; "
              "gt = {'images': [{'id': 1, 'width': 10, 'height': 10}], 'categories': [{'id': 1}], "
              "'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 5, 5], 'area': 25}]}; "
              "r = [{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 5, 5], 'score': 1.0}]; "
              "assert coco_evaluate(gt, r)['AP'] > 0.999 and voc_evaluate(gt, r)['mAP'] == 1.0; "
              "print(json.dumps('numba' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


# ---------------------------------------------------------------------------------------------- JSON reading
def test_json_reads_alike_with_orjson_and_the_standard_library(tmp_path, monkeypatch):
    gt, results = make_problem(73)
    (tmp_path / "r.json").write_text(json.dumps(results))
    (tmp_path / "nan.json").write_text('[{"score": NaN, "big": 123456789012345678901234567890}]')
    (tmp_path / "bad.json").write_text('[{"score": 1,}]')
    fast = detection.read_json(tmp_path / "r.json")
    odd = detection.read_json(tmp_path / "nan.json")
    with pytest.raises(DataError) as fast_error:
        detection.read_json(tmp_path / "bad.json")
    monkeypatch.setattr(detection.reading, "orjson", None)
    assert detection.read_json(tmp_path / "r.json") == fast == results
    slow_odd = detection.read_json(tmp_path / "nan.json")
    assert np.isnan(odd[0]["score"]) and np.isnan(slow_odd[0]["score"]) and odd[0]["big"] == slow_odd[0]["big"]
    with pytest.raises(DataError) as slow_error:
        detection.read_json(tmp_path / "bad.json")
    assert str(fast_error.value) == str(slow_error.value) and "line 1 column" in str(slow_error.value)


def test_garbage_collector_is_left_as_it_was(tmp_path):
    import gc

    gt, results = make_problem(74)
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert gc.isenabled()
    coco_evaluate(gt, str(tmp_path / "r.json"))
    assert gc.isenabled()
    gc.disable()
    try:
        detection.read_json(tmp_path / "r.json")
        assert not gc.isenabled()
    finally:
        gc.enable()
