"""`--explain`: per-detection decisions against pycocotools' COCOeval.evalImgs (dtMatches / dtIgnore), the causes
of false positives on hand-made cases, the confusion matrix adding up to the decisions, the diff, the files."""

import contextlib
import copy
import csv
import io

import numpy as np
import pytest
from PIL import Image

from scenekit.errors import DataError
from scenekit.metrics import explain
from scenekit.metrics.explain import (confusion_matrix, decision_counts, detection_decisions, diff_decisions,
                                      explain_detections)

mask_utils = pytest.importorskip("pycocotools.mask")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


# ------------------------------------------------------------------------------------------------- reference
def reference_decisions(gt: dict, results: list, iou_type="bbox", thresholds=(0.5, 0.75)):
    """(outcome [T, D], gt_id [T, D], evaluated [D]) read from pycocotools' evalImgs for area "all", maxDet 100:
    dtIgnore -> ignored, else dtMatches > 0 -> tp, else fp; detections absent from evalImgs were cut by maxDet.
    pycocotools needs every gt's "area": a missing one is given its meaning (box area, or mask area for segm)."""
    gt = copy.deepcopy(gt)
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    for ann in gt["annotations"]:
        if "area" not in ann and iou_type == "bbox":
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        elif "area" not in ann:
            ann["area"] = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"],
                                                                                        *sizes[ann["image_id"]]))))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
    t_index = [int(np.flatnonzero(np.isclose(evaluator.params.iouThrs, t))[0]) for t in thresholds]
    outcome = np.full((len(thresholds), len(results)), "ignored", dtype=object)
    gt_id = np.zeros((len(thresholds), len(results)), np.int64)
    evaluated = np.zeros(len(results), bool)
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != evaluator.params.areaRng[0] or record["maxDet"] != 100:
            continue
        for k, dt_id in enumerate(record["dtIds"]):
            d = dt_id - 1                                # loadRes numbers results 1..D in file order
            evaluated[d] = True
            for i, t in enumerate(t_index):
                match, ignored = record["dtMatches"][t, k], record["dtIgnore"][t, k]
                outcome[i, d] = "ignored" if ignored else ("tp" if match > 0 else "fp")
                gt_id[i, d] = match
    return outcome.astype(str), gt_id, evaluated


# ---------------------------------------------------------------------------------------------- random data
def make_problem(seed, num_images=12, num_categories=4, crowded=(0, 1)):
    """Random gts of every COCO area range (small < 32^2 < medium < 96^2 < large, some crowd, some with a given
    area unlike their box's, one with an area beyond the "all" range), jittered and random detections with
    coarse scores (ties), and on the images `crowded` more than 100 detections of one category (ties at the
    cut), plus one detection larger than the "all" range."""
    rng = np.random.default_rng(seed)
    images = [{"id": int(i) + 1, "width": int(rng.integers(120, 400)), "height": int(rng.integers(100, 400)),
               "file_name": f"im{int(i) + 1}.png"} for i in rng.permutation(num_images)]
    categories = [{"id": c * 2, "name": f"class{c}"} for c in range(1, num_categories + 1)]
    annotations, results = [], []

    def score():
        return float(rng.integers(1, 20)) / 20

    for n, image in enumerate(images):
        W, H = image["width"], image["height"]
        for _ in range(int(rng.integers(0, 9))):
            w, h = (float(v) for v in np.exp(rng.uniform(np.log(4), np.log(0.95 * min(W, H)), 2)).round(1))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            category = categories[int(rng.integers(0, num_categories))]["id"]
            ann = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                   "bbox": [x, y, w, h], "iscrowd": int(rng.random() < 0.12)}
            if rng.random() < 0.7:
                ann["area"] = round(w * h * float(rng.uniform(0.5, 1.1)), 2)
            annotations.append(ann)
            for _ in range(int(rng.integers(0, 5))):
                jitter = rng.normal(0, 0.2, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 0.5), max(h + jitter[3], 0.5)]
                other = categories[int(rng.integers(0, num_categories))]["id"]
                results.append({"image_id": image["id"], "category_id": category if rng.random() < 0.8 else other,
                                "bbox": [round(float(v), 2) for v in box], "score": score()})
        clutter = 130 if n in crowded else int(rng.integers(0, 8))
        category = categories[int(rng.integers(0, num_categories))]["id"]
        for _ in range(clutter):
            w, h = (float(v) for v in rng.uniform(3, 120, 2))
            results.append({"image_id": image["id"], "score": score(),
                            "category_id": category if n in crowded else
                            categories[int(rng.integers(0, num_categories))]["id"],
                            "bbox": [float(rng.uniform(0, W - 3)), float(rng.uniform(0, H - 3)), w, h]})
    annotations[0]["area"] = 2e10                        # outside the range "all": an ignored gt
    results.append({"image_id": images[0]["id"], "category_id": categories[0]["id"], "score": 0.5,
                    "bbox": [0.0, 0.0, 2e5, 1e5]})      # area 2e10: outside "all" too
    order = rng.permutation(len(results))
    results = [results[i] for i in order]
    return {"images": images, "annotations": annotations, "categories": categories}, results


# ---------------------------------------------------------------------------------- decisions vs pycocotools
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decisions_equal_pycocotools_evalimgs_with_crowds_all_areas_and_over_100_detections(seed):
    gt, results = make_problem(seed)
    counts = np.unique([(r["image_id"], r["category_id"]) for r in results], axis=0, return_counts=True)[1]
    assert counts.max() > 100 and any(a["iscrowd"] for a in gt["annotations"])
    areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in gt["annotations"]]
    for lo, hi in ((0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e10), (1e10, np.inf)):    # small ... beyond
        assert any(lo < a <= hi for a in areas)
    outcome, gt_id, evaluated = reference_decisions(gt, results)
    decisions = detection_decisions(gt, results)
    np.testing.assert_array_equal(decisions.outcome, outcome)
    np.testing.assert_array_equal(decisions.gt_id, gt_id)
    beyond = decisions.reason == "beyond max detections"
    np.testing.assert_array_equal(beyond, np.broadcast_to(~evaluated, beyond.shape))
    assert beyond.any() and (decisions.reason == "crowd").any() and (decisions.reason == "area").any()
    # the reason vocabulary follows the outcome
    assert set(decisions.reason[decisions.outcome == "fp"]) <= set(explain.FP_REASONS)
    assert set(decisions.reason[decisions.outcome == "ignored"]) <= set(explain.IGNORED_REASONS)
    assert set(decisions.reason[decisions.outcome == "tp"]) <= {""}


def test_segm_decisions_equal_pycocotools_evalimgs():
    gt, results = make_problem(3, num_images=5, crowded=(0,))
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    rng = np.random.default_rng(3)

    def polygon(box):
        x, y, w, h = box
        angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
        return [np.column_stack([x + w / 2 + np.cos(angles) * w / 2,
                                 y + h / 2 + np.sin(angles) * h / 2]).ravel().round(2).tolist()]

    for ann in gt["annotations"]:
        ann["segmentation"] = polygon(ann["bbox"])
    for result in results[:-1]:
        if result["bbox"][2] < 1e4:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygon(result["bbox"]), *sizes[result["image_id"]]))
            result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    outcome, gt_id, _ = reference_decisions(gt, results, "segm")
    decisions = detection_decisions(gt, results, "segm")
    np.testing.assert_array_equal(decisions.outcome, outcome)
    np.testing.assert_array_equal(decisions.gt_id, gt_id)


def test_bad_results_are_a_data_error_naming_the_record():
    gt, results = make_problem(0, num_images=3, crowded=())
    results[2]["category_id"] = 999
    with pytest.raises(DataError, match="record 2"):
        detection_decisions(gt, results)


# ---------------------------------------------------------------------------------- causes, by hand
def hand_made():
    """One image, cat A and dog B side by side and a cat crowd below; one detection per cause, and 101 birds
    on empty ground (the lowest-scoring one beyond the 100 evaluated)."""
    gt = {"images": [{"id": 1, "width": 640, "height": 480, "file_name": "one.png"}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
          "annotations": [
              {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
              {"id": 12, "image_id": 1, "category_id": 2, "bbox": [200, 0, 100, 100], "area": 10000, "iscrowd": 0},
              {"id": 13, "image_id": 1, "category_id": 1, "bbox": [0, 200, 200, 200], "area": 40000, "iscrowd": 1}]}
    cat = [([0, 0, 100, 100], 0.9),      # tp on A
           ([10, 0, 100, 100], 0.8),     # A again, IoU 0.82: duplicate
           ([200, 0, 100, 100], 0.7),    # a cat on the dog: wrong class
           ([50, 0, 100, 100], 0.6),     # IoU 1/3 with A: poor localisation
           ([10, 210, 50, 50], 0.5),     # inside the crowd: ignored
           ([500, 400, 30, 30], 0.4),    # nothing there: background
           ([0, 0, 2e5, 1e5], 0.3)]      # area 2e10, outside the range "all": ignored
    results = [{"image_id": 1, "category_id": 1, "bbox": box, "score": s} for box, s in cat]
    results += [{"image_id": 1, "category_id": 3, "bbox": [400 + k % 10, 300 + k // 10, 20, 20],
                 "score": 0.2 - k * 1e-3} for k in range(101)]
    return gt, results


def test_each_false_positive_cause_on_a_hand_made_image():
    gt, results = hand_made()
    decisions = detection_decisions(gt, results)
    for t in range(2):                                    # the same at IoU 0.5 and 0.75
        assert decisions.outcome[t, :7].tolist() == ["tp", "fp", "fp", "fp", "ignored", "fp", "ignored"]
        assert decisions.reason[t, :7].tolist() == ["", "duplicate", "wrong class", "poor localisation",
                                                    "crowd", "background", "area"]
        assert decisions.gt_id[t, :7].tolist() == [11, 0, 0, 0, 13, 0, 0]
        assert decisions.related[t, :6].tolist() == [0, 0, 1, 0, 2, -1]      # gt rows each cause is about
        assert set(decisions.reason[t, 7:107]) == {"background"}
        assert decisions.outcome[t, 107] == "ignored" and decisions.reason[t, 107] == "beyond max detections"
    outcome, gt_id, _ = reference_decisions(gt, results)
    np.testing.assert_array_equal(decisions.outcome, outcome)
    np.testing.assert_array_equal(decisions.gt_id, gt_id)


def test_localisation_needs_an_overlap_of_at_least_one_tenth_and_the_threshold_moves_causes():
    gt, _ = hand_made()
    results = [{"image_id": 1, "category_id": 1, "bbox": [91, 0, 100, 100], "score": 0.9},     # IoU 9/191
               {"image_id": 1, "category_id": 1, "bbox": [80, 0, 100, 100], "score": 0.8},     # IoU 20/180
               {"image_id": 1, "category_id": 1, "bbox": [20, 0, 100, 100], "score": 0.7}]     # IoU 80/120
    decisions = detection_decisions(gt, results)
    assert decisions.reason[0].tolist() == ["background", "poor localisation", ""]
    assert decisions.reason[1].tolist() == ["background", "poor localisation", "poor localisation"]


def test_a_detection_keeps_a_regular_gt_over_a_better_overlapping_crowd():
    gt, _ = hand_made()
    gt["annotations"][2]["bbox"] = [0, 0, 100, 100]          # the crowd on top of cat A, first in the file
    gt["annotations"].insert(0, gt["annotations"].pop())
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 90], "score": 0.9},      # A 0.9, crowd 1
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "score": 0.8},      # A taken: crowd
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 70], "score": 0.7}]      # crowds take many
    decisions = detection_decisions(gt, results)
    assert decisions.outcome[0].tolist() == ["tp", "ignored", "ignored"]
    assert decisions.gt_id[0].tolist() == [11, 13, 13]
    outcome, gt_id, _ = reference_decisions(gt, results)
    np.testing.assert_array_equal(decisions.outcome, outcome)
    np.testing.assert_array_equal(decisions.gt_id, gt_id)


def test_duplicate_comes_before_wrong_class():
    gt, _ = hand_made()
    gt["annotations"][1]["bbox"] = [0, 0, 100, 100]          # the dog where the cat is
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.8}]
    assert detection_decisions(gt, results).reason[0].tolist() == ["", "duplicate"]


# ---------------------------------------------------------------------------------- the confusion matrix
@pytest.mark.parametrize("score_threshold", [0.0, 0.5])
def test_confusion_matrix_adds_up_to_the_decisions_and_the_gt_counts(score_threshold):
    gt, results = make_problem(4)
    decisions = detection_decisions(gt, results)
    matrix = confusion_matrix(decisions, score_threshold)
    K = len(gt["categories"])
    assert matrix.shape == (K + 1, K + 1) and matrix[K, K] == 0
    # counted independently, from the result and gt dicts plus the decisions
    outcome, reason = decisions.outcome[0], decisions.reason[0]
    for k, category in enumerate(c["id"] for c in gt["categories"]):
        mine = np.array([r["category_id"] == category and r["score"] >= score_threshold for r in results])
        tp, fp = np.sum(mine & (outcome == "tp")), np.sum(mine & (outcome == "fp"))
        assert matrix[:, k].sum() == tp + fp                                  # each counted detection once
        assert matrix[k, k] == tp
        assert matrix[K, k] == np.sum(mine & (outcome == "fp") & (reason != "wrong class"))
        regular = sum(1 for a in gt["annotations"] if a["category_id"] == category and not a["iscrowd"]
                      and a.get("area", 0) <= 1e10)
        assert matrix[k, k] + matrix[k, K] == regular                         # each gt found or missed
    counted = np.array([r["score"] >= score_threshold for r in results]) & (outcome != "ignored")
    assert matrix[:, :K].sum() == counted.sum()
    assert matrix[:K, :K].sum() - np.trace(matrix[:K, :K]) == np.sum(counted & (reason == "wrong class"))
    if score_threshold == 0:
        counts = decision_counts(decisions, 0.5)
        assert np.trace(matrix) == counts["tp"] and matrix[:K, K].sum() == counts["missed"]


def test_confusion_matrix_of_the_hand_made_image():
    gt, results = hand_made()
    matrix = confusion_matrix(detection_decisions(gt, results), score_threshold=0.5)
    #                            cat dog bird background (predicted)
    np.testing.assert_array_equal(matrix, [[1, 0, 0, 0],          # cat: found by the tp
                                           [1, 0, 0, 1],          # dog: called a cat, and missed
                                           [0, 0, 0, 0],          # bird: no gt
                                           [2, 0, 0, 0]])         # duplicate, poor localisation (bg: 0.4)


# ---------------------------------------------------------------------------------- diff
def test_diff_lists_the_images_where_the_other_file_differs():
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3, 4)],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500}
                          for i in (1, 2, 3, 4)]}

    def found(image, score=0.9):
        return {"image_id": image, "category_id": 1, "bbox": [10, 10, 50, 50], "score": score}

    def stray(image, score=0.9):
        return {"image_id": image, "category_id": 1, "bbox": [70, 70, 20, 20], "score": score}

    here = [found(1), found(2), found(3), found(4)]
    other = [found(1), stray(2), found(3), stray(3), found(4), stray(4, score=0.1), found(2, score=0.2)]
    rows = diff_decisions(detection_decisions(gt, here), detection_decisions(gt, other), score_threshold=0.5)
    assert [r["image_id"] for r in rows] == [2, 3]          # image 2: 2 changes, image 3: 1; 4 only below 0.5
    assert rows[0] == {"image_id": 2, "num_gt": 1, "tp": 1, "tp_other": 0, "fp": 0, "fp_other": 1,
                       "found_only_here": [2], "found_only_by_other": []}
    assert rows[1]["fp"] == 0 and rows[1]["fp_other"] == 1 and rows[1]["found_only_here"] == []
    lenient = diff_decisions(detection_decisions(gt, here), detection_decisions(gt, other), score_threshold=0.0)
    assert [r["image_id"] for r in lenient] == [2, 3, 4]


# ---------------------------------------------------------------------------------- the files
def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def write_images(gt, folder):
    rng = np.random.default_rng(0)
    for image in gt["images"]:
        pixels = rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / image["file_name"])


def test_explain_writes_every_file_with_readable_pictures(tmp_path):
    gt, results = make_problem(5, num_images=6, crowded=(0,))
    _, other = make_problem(6, num_images=6, crowded=())
    other = [r for r in other if r["image_id"] in {i["id"] for i in gt["images"]}]
    (tmp_path / "images").mkdir()
    write_images(gt, tmp_path / "images")
    summary = explain_detections(gt, results, tmp_path / "out", images_root=tmp_path / "images", diff=other)
    out = tmp_path / "out"
    for name in ("decisions.csv", "confusion_matrix.csv", "per_class_ap.csv", "diff.csv"):
        assert (out / name).is_file()
    for name in ("confusion_matrix.png", "pr_curves.png", "worst_false_positives.png", "missed_objects.png"):
        with Image.open(out / name) as picture:
            assert max(picture.size) >= 512, name
    assert summary["notes"] == [] and summary["diff"]["images"] == len(read_csv(out / "diff.csv")) - 1

    rows = read_csv(out / "decisions.csv")
    assert rows[0] == ["det_index", "image_id", "category_id", "score", "iou_threshold", "outcome", "gt_id",
                       "reason"]
    assert len(rows) == 1 + 2 * len(results)
    decisions = detection_decisions(gt, results)
    for row in rows[1:]:
        d, t = int(row[0]), explain.EXPLAIN_IOUS.index(float(row[4]))
        assert (int(row[1]), int(row[2]), float(row[3])) == (results[d]["image_id"], results[d]["category_id"],
                                                              results[d]["score"])
        assert row[5:] == [decisions.outcome[t, d], str(decisions.gt_id[t, d]), decisions.reason[t, d]]

    # the confusion matrix file: column sums are the counted detections of decisions.csv at 0.5
    matrix = read_csv(out / "confusion_matrix.csv")
    names = [c["name"] for c in gt["categories"]]
    assert matrix[0][1:] == names + ["background"] and [r[0] for r in matrix[1:]] == names + ["background"]
    counts = np.array([[int(v) for v in r[1:]] for r in matrix[1:]])
    at_half = [r for r in rows[1:] if r[4] == "0.5" and r[5] != "ignored" and float(r[3]) >= 0.5]
    for k, category in enumerate(c["id"] for c in gt["categories"]):
        assert counts[:, k].sum() == sum(1 for r in at_half if int(r[2]) == category)

    table = read_csv(out / "per_class_ap.csv")
    assert table[-1][0] == "all" and float(table[-1][4]) == summary["stats"]["AP"]
    assert float(table[-1][5]) == summary["stats"]["AP50"]


def test_galleries_are_skipped_with_a_note_without_images(tmp_path):
    gt, results = hand_made()
    summary = explain_detections(gt, results, tmp_path)
    assert not (tmp_path / "worst_false_positives.png").exists()
    assert any("images_root" in note for note in summary["notes"])
    assert (tmp_path / "pr_curves.png").exists() and "diff" not in summary


def test_a_dataset_gt_feeds_the_galleries_from_its_in_memory_images(tmp_path):
    from scenekit.data.records import Dataset, Record

    gt, results = hand_made()
    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    record = Record(1, "one.png", 640, 480, boxes=[[0, 0, 100, 100], [200, 0, 300, 100]], labels=[1, 2],
                    ann_ids=[11, 12], image=pixels)
    summary = explain_detections(Dataset([record], {1: "cat", 2: "dog", 3: "bird"}), results, tmp_path)
    assert summary["notes"] == [] and summary["decisions"]["0.5"]["tp"] == 1
    with Image.open(tmp_path / "missed_objects.png") as picture:         # the dog, called a cat
        assert max(picture.size) >= 512
