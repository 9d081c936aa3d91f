"""COCO RLE masks: encoding, strings, polygons, merge, boxes and IoU, each checked against pycocotools."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenekit import masks

mask_utils = pytest.importorskip("pycocotools.mask")


def random_mask(rng, height, width, density=None):
    density = rng.uniform(0.0, 0.6) if density is None else density
    return (rng.random((height, width)) < density).astype(np.uint8)


def coco_encode(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def as_str(rle):
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def random_polygons(rng, height, width):
    polygons = []
    for _ in range(int(rng.integers(1, 4))):
        vertices = int(rng.integers(3, 9))
        kind = rng.integers(0, 3)
        span = max(height, width)
        if kind == 0:                                   # anywhere, partly outside the image
            xy = rng.uniform(-10, span + 10, size=2 * vertices)
        elif kind == 1:                                 # integer vertices, on pixel edges
            xy = rng.integers(-3, span + 3, size=2 * vertices).astype(float)
        else:                                           # half-integers: pixel centres
            xy = np.round(rng.uniform(-2, span + 2, size=2 * vertices) * 2) / 2
        if rng.random() < 0.2:
            xy[2:4] = xy[0:2]                           # a repeated vertex
        polygons.append(xy.tolist())
    return polygons


# ------------------------------------------------------------------------------------------------ RLE strings
def test_rle_encode_and_string_match_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = random_mask(rng, int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        reference = coco_encode(mask)
        ours = masks.compress(masks.rle_encode(mask))
        assert ours["counts"] == reference["counts"].decode()
        assert ours["size"] == list(reference["size"])
        assert masks.rle_area(ours) == int(mask_utils.area(reference))


def test_compressed_string_round_trips_through_counts():
    rng = np.random.default_rng(1)
    for _ in range(100):
        mask = random_mask(rng, int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        counts = masks.rle_encode(mask)["counts"]
        string = masks.counts_to_string(counts)
        assert masks.string_to_counts(string) == counts
        assert masks.rle_runs({"size": list(mask.shape), "counts": string}).tolist() == counts
        np.testing.assert_array_equal(masks.rle_decode({"size": list(mask.shape), "counts": string}), mask)


def test_rle_decode_equals_pycocotools_decode():
    rng = np.random.default_rng(2)
    mask = random_mask(rng, 17, 23)
    reference = coco_encode(mask)
    np.testing.assert_array_equal(masks.rle_decode(as_str(reference)), mask_utils.decode(reference))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10 ** 6), min_size=1, max_size=30))
def test_counts_string_round_trip_property(counts):
    assert masks.string_to_counts(masks.counts_to_string(counts)) == counts


def test_bad_rle_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="sum to"):
        masks.rle_runs({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="negative"):
        masks.rle_runs({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(ValueError, match="truncated"):
        masks.rle_runs({"size": [2, 2], "counts": "1b"})           # 'b' carries a continuation bit
    with pytest.raises(ValueError, match="size"):
        masks.rle_runs({"size": [0, 3], "counts": [0]})


# ---------------------------------------------------------------------------------------------------- polygons
def test_polygons_to_rle_matches_pycocotools_byte_for_byte():
    rng = np.random.default_rng(3)
    for _ in range(400):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        polygons = random_polygons(rng, height, width)
        reference = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        assert masks.polygons_to_rle(polygons, height, width)["counts"] == reference["counts"].decode()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-20, max_value=80, allow_nan=False), min_size=6, max_size=16),
       st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=50))
def test_single_polygon_rasterises_like_pycocotools(coords, height, width):
    coords = coords[: len(coords) // 2 * 2]
    reference = mask_utils.frPyObjects([coords], height, width)[0]
    assert masks.polygons_to_rle([coords], height, width)["counts"] == reference["counts"].decode()


def test_square_polygon_covers_the_pixels_whose_centres_are_inside():
    rle = masks.polygons_to_rle([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)        # x in [1, 4], y in [1, 3]
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 1
    np.testing.assert_array_equal(masks.rle_decode(rle), expected)


def test_empty_polygon_list_is_an_empty_mask():
    assert masks.rle_area(masks.polygons_to_rle([], 4, 5)) == 0


def test_annotation_to_rle_handles_polygons_and_both_rle_forms():
    rng = np.random.default_rng(4)
    mask = random_mask(rng, 12, 9)
    compressed = as_str(coco_encode(mask))
    uncompressed = masks.rle_encode(mask)
    assert masks.annotation_to_rle(compressed, 12, 9) == compressed
    expected = mask_utils.frPyObjects(uncompressed, 12, 9)["counts"].decode()
    assert masks.annotation_to_rle(uncompressed, 12, 9)["counts"] == expected
    polygons = [[1.5, 1, 8, 2, 5, 11]]
    expected = mask_utils.merge(mask_utils.frPyObjects(polygons, 12, 9))["counts"].decode()
    assert masks.annotation_to_rle(polygons, 12, 9)["counts"] == expected


# ------------------------------------------------------------------------------------------- merge, box, IoU
def test_rle_merge_union_and_intersection_match_pycocotools():
    rng = np.random.default_rng(5)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 25, size=2))
        rles = [coco_encode(random_mask(rng, height, width)) for _ in range(int(rng.integers(1, 4)))]
        for intersect in (False, True):
            reference = mask_utils.merge(rles, intersect=int(intersect))["counts"].decode()
            assert masks.rle_merge([as_str(r) for r in rles], intersect)["counts"] == reference


def test_rle_merge_rejects_different_sizes():
    with pytest.raises(ValueError, match="sizes"):
        masks.rle_merge([masks.rle_encode(np.ones((2, 2))), masks.rle_encode(np.ones((3, 2)))])


def test_rle_to_bbox_matches_pycocotools_to_bbox():
    rng = np.random.default_rng(6)
    for _ in range(100):
        rle = coco_encode(random_mask(rng, int(rng.integers(1, 30)), int(rng.integers(1, 30)),
                                      density=rng.choice([0.0, 0.01, 0.3])))
        np.testing.assert_array_equal(masks.rle_to_bbox(as_str(rle)), mask_utils.toBbox(rle))


def test_rle_iou_matches_pycocotools_iou_with_crowds():
    rng = np.random.default_rng(7)
    for _ in range(150):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        dts = [coco_encode(random_mask(rng, height, width, rng.choice([0.0, 0.05, 0.3])))
               for _ in range(int(rng.integers(1, 5)))]
        gts = [coco_encode(random_mask(rng, height, width, rng.choice([0.0, 0.05, 0.3])))
               for _ in range(int(rng.integers(1, 5)))]
        crowd = rng.integers(0, 2, size=len(gts))
        reference = np.asarray(mask_utils.iou(dts, gts, crowd.tolist()))
        ours = masks.rle_iou([as_str(d) for d in dts], gts, crowd)
        np.testing.assert_array_equal(ours, reference.reshape(len(dts), len(gts)))


def test_rle_iou_of_a_detection_inside_a_crowd_region_is_one():
    crowd = np.zeros((10, 10), np.uint8)
    crowd[2:8, 2:8] = 1
    inside = np.zeros((10, 10), np.uint8)
    inside[3:5, 3:5] = 1
    gt, dt = masks.rle_encode(crowd), masks.rle_encode(inside)
    assert masks.rle_iou([dt], [gt], [True])[0, 0] == 1.0
    assert masks.rle_iou([dt], [gt], [False])[0, 0] == pytest.approx(4 / 36)


def test_rle_iou_of_empty_inputs_has_the_right_shape():
    one = masks.rle_encode(np.ones((3, 3)))
    assert masks.rle_iou([], [one], [False]).shape == (0, 1)
    assert masks.rle_iou([one, one], [], []).shape == (2, 0)


def test_rle_iou_marks_overlapping_masks_of_different_sizes_with_minus_one():
    a, b = masks.rle_encode(np.ones((3, 3))), masks.rle_encode(np.ones((4, 4)))
    reference = mask_utils.iou([coco_encode(np.ones((3, 3)))], [coco_encode(np.ones((4, 4)))], [0])
    assert masks.rle_iou([a], [b], [False])[0, 0] == reference[0, 0] == -1
