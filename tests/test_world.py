"""Tests of scenekit/data/world.py: the generated scene world and its annotations.

Annotations are checked against the pixels and against references that do not share the generator's code:
masks are decoded with pycocotools, object colours are read back from the image, shapes are compared with
scikit-image's polygon rasteriser, and captions/questions are re-derived from the record.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from scenekit.data import world
from scenekit.data.world import CATEGORIES, COLOURS, make_world, write_world

# pycocotools under numpy 2 warns on every decode; the warning is about its code, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

NUMBERS = {w: k for k, w in enumerate(world.NUMBER_WORDS)}
SHAPE_WORDS = {**{name: name for name in CATEGORIES.values()}, **{world.PLURALS[n]: n for n in CATEGORIES.values()}}


@pytest.fixture(scope="module")
def dataset():
    return make_world(40, seed=3, split="train", min_size=96, max_size=200)


def decode(rle) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)          # pycocotools: the reference decoder


def colour_from_pixels(image, mask) -> str:
    """The palette colour nearest the median pixel of a mask (the noise is zero-mean and grey)."""
    median = np.median(image[mask].astype(float), axis=0)
    return min(COLOURS, key=lambda name: np.abs(median - COLOURS[name]).max())


def objects_of(record):
    """(category name, colour read from the pixels, box) for each instance of a record."""
    out = []
    for label, rle, box in zip(record.labels, record.segmentations, record.boxes):
        out.append((CATEGORIES[int(label)], colour_from_pixels(record.image, decode(rle)), box))
    return out


def centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


# ------------------------------------------------------------------------------------------ determinism, splits
def test_same_seed_and_split_give_identical_world():
    a, b = make_world(6, seed=11), make_world(6, seed=11)
    for ra, rb in zip(a.records, b.records):
        assert np.array_equal(ra.image, rb.image)
        assert np.array_equal(ra.boxes, rb.boxes) and np.array_equal(ra.labels, rb.labels)
        assert ra.segmentations == rb.segmentations
        assert ra.captions == rb.captions and ra.questions == rb.questions


def test_image_does_not_depend_on_how_many_images_are_generated():
    short, long = make_world(2, seed=5), make_world(5, seed=5)
    assert np.array_equal(short[1].image, long[1].image)
    assert short[1].captions == long[1].captions


def test_splits_and_seeds_are_different_streams():
    images = {key: [r.image for r in make_world(4, seed=seed, split=split, image_size=128).records]
              for key in [("train", 0), ("val", 0), ("test", 0), ("train", 1)]
              for split, seed in [key]}
    keys = list(images)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            for a in images[keys[i]]:
                for b in images[keys[j]]:
                    assert not np.array_equal(a, b), (keys[i], keys[j])


# ------------------------------------------------------------------------------------------ sizes and options
def test_image_sizes_are_in_range_and_fixed_size_is_exact(dataset):
    for r in dataset.records:
        assert 96 <= r.height <= 200 and 96 <= r.width <= 200
        assert r.image.shape == (r.height, r.width, 3) and r.image.dtype == np.uint8
        assert r.semantic.shape == (r.height, r.width) and r.semantic.dtype == np.int64
    assert any(r.height != r.width for r in dataset.records)
    fixed = make_world(5, image_size=144)
    assert all(r.image.shape == (144, 144, 3) for r in fixed.records)


def test_object_counts_cover_zero_to_eight(dataset):
    counts = [r.num_objects for r in make_world(60, seed=1, image_size=128).records]
    assert min(counts) == 0 and max(counts) >= 7 and all(0 <= c <= 8 for c in counts)
    assert all(set(r.labels.tolist()) <= set(CATEGORIES) for r in dataset.records)


def test_single_object_world_has_one_large_object():
    ds = make_world(12, seed=2, single_object=True, image_size=160)
    for r in ds.records:
        assert r.num_objects == 1
        assert r.areas[0] >= 0.05 * 160 * 160              # at least a twentieth of the picture
        assert not any("small" in caption for caption in r.captions)
        assert len(r.captions) == 5


def test_categories_are_the_agreed_table():
    assert make_world(1).categories == {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "ring",
                                        6: "cross"}


@pytest.mark.parametrize("kwargs", [dict(split="dev"), dict(min_size=300, max_size=200), dict(image_size=10),
                                    dict(min_objects=5, max_objects=2), dict(num_images=-1)])
def test_bad_arguments_raise_value_error(kwargs):
    num_images = kwargs.pop("num_images", 2)
    with pytest.raises(ValueError):
        make_world(num_images, **kwargs)


# ------------------------------------------------------------------------------------------ boxes and masks
def test_every_box_is_the_tight_box_of_its_decoded_mask(dataset):
    for r in dataset.records:
        assert r.boxes.dtype == np.float64 and not r.iscrowd.any()
        for box, rle, area in zip(r.boxes, r.segmentations, r.areas):
            assert isinstance(rle["counts"], str) and rle["size"] == [r.height, r.width]
            mask = decode(rle)
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert area == mask.sum() == mask_utils.area(rle)
            # pycocotools' own box of the RLE is [x, y, w, h] of the same tight box
            x, y, w, h = mask_utils.toBbox(rle)
            assert [x, y, x + w, y + h] == box.tolist()


def test_masks_are_disjoint_and_semantic_map_is_their_union(dataset):
    for r in dataset.records:
        expected = np.zeros((r.height, r.width), dtype=np.int64)
        covered = np.zeros((r.height, r.width), dtype=int)
        for label, rle in zip(r.labels, r.segmentations):
            mask = decode(rle)
            covered += mask
            expected[mask] = label
        assert covered.max() <= 1
        assert np.array_equal(r.semantic, expected)


def test_masks_are_exactly_the_pixels_drawn_in_the_object_colour(dataset):
    # Noise is grey (added equally to R, G, B) and never clips, so inside one object R - G and G - B are
    # constant; a mask shifted or grown by one pixel would take in background or another object's pixels.
    for r in dataset.records:
        image = r.image.astype(int)
        chroma = np.stack([image[..., 0] - image[..., 1], image[..., 1] - image[..., 2]], axis=-1)
        for rle in r.segmentations:
            mask = decode(rle)
            inside = chroma[mask]
            assert (inside == inside[0]).all()
            # and the background pixels just outside the mask are (nearly all) of another colour
            ring = np.zeros_like(mask)
            ring[1:] |= mask[:-1]
            ring[:-1] |= mask[1:]
            ring[:, 1:] |= mask[:, :-1]
            ring[:, :-1] |= mask[:, 1:]
            ring &= r.semantic == 0
            if ring.sum() >= 10:
                assert (chroma[ring] == inside[0]).all(axis=1).mean() < 0.2


def test_objects_are_coloured_from_the_palette_and_background_is_not(dataset):
    for r in dataset.records:
        for rle in r.segmentations:
            median = np.median(r.image[decode(rle)].astype(float), axis=0)
            assert min(np.abs(median - c).max() for c in COLOURS.values()) <= world.COLOUR_JITTER + 2
        background = r.image[r.semantic == 0].astype(float)
        distance = np.min([np.abs(background - c).max(axis=1) for c in COLOURS.values()], axis=0)
        assert np.percentile(distance, 1) > 20


def test_occlusion_rule_and_drawing_order():
    for index in range(25):
        rng = world.image_rng(7, "val", index)
        scene = world.generate_scene(rng, 140, 170, num_objects=8)
        ys, xs = np.mgrid[0:140, 0:170]
        later = np.zeros((140, 170), dtype=bool)
        for obj in reversed(scene.objects):                 # walk from the top of the stack down
            cx, cy = obj.centre
            full = world.shape_mask(obj.shape, xs + 0.5 - cx, ys + 0.5 - cy, obj.radius, obj.angle)
            visible = obj.mask
            assert full.sum() == obj.full_area
            assert not (visible & ~full).any()              # visible pixels belong to the shape
            assert np.array_equal(full & ~visible, full & later)   # hidden exactly where later objects are
            assert visible.sum() >= world.MIN_VISIBLE * full.sum()
            later |= visible


# ------------------------------------------------------------------------------------------ shapes
def polygon_mask(vertices, size=128):
    """scikit-image's rasteriser (pixel (r, c) has its centre at (c + 0.5, r + 0.5) in our convention)."""
    from skimage.draw import polygon

    vertices = np.asarray(vertices) - 0.5
    rr, cc = polygon(vertices[:, 1], vertices[:, 0], shape=(size, size))
    out = np.zeros((size, size), dtype=bool)
    out[rr, cc] = True
    return out


def regular_vertices(cx, cy, radius, count, start, step=1):
    return [(cx + radius * math.cos(start + 2 * math.pi * k * step / count),
             cy + radius * math.sin(start + 2 * math.pi * k * step / count)) for k in range(count)]


@pytest.mark.parametrize("shape", ["square", "triangle", "star"])
def test_polygon_shapes_match_scikit_image_rasteriser(shape):
    cx, cy, r, angle = 63.3, 61.7, 40.0, 0.2
    ys, xs = np.mgrid[0:128, 0:128]
    ours = world.shape_mask(shape, xs + 0.5 - cx, ys + 0.5 - cy, r, angle)
    if shape == "square":                                   # half-side 0.8 r: corners at 0.8 sqrt(2) r
        vertices = regular_vertices(cx, cy, 0.8 * math.sqrt(2) * r, 4, angle + math.pi / 4)
    elif shape == "triangle":                               # apex up (negative y), circumradius r
        vertices = regular_vertices(cx, cy, r, 3, angle - math.pi / 2)
    else:                                                   # outer points at r, inner at r cos72/cos36
        inner = r * math.cos(math.radians(72)) / math.cos(math.radians(36))
        outer = regular_vertices(cx, cy, r, 5, angle - math.pi / 2)
        inside = regular_vertices(cx, cy, inner, 5, angle - math.pi / 2 + math.pi / 5)
        vertices = [v for pair in zip(outer, inside) for v in pair]
    reference = polygon_mask(vertices)
    differ = (ours != reference).sum()
    assert differ <= 0.01 * reference.sum(), (differ, reference.sum())   # only pixels on the edges


@pytest.mark.parametrize("shape, area", [("circle", math.pi), ("ring", math.pi * (1 - 0.55 ** 2)),
                                         ("cross", 2 * 1.9 * 0.6 - 0.6 ** 2)])
def test_round_shapes_and_cross_have_their_analytic_area(shape, area):
    r = 50.0
    ys, xs = np.mgrid[0:128, 0:128]
    mask = world.shape_mask(shape, xs + 0.5 - 64.0, ys + 0.5 - 64.0, r, 0.0)
    assert abs(mask.sum() - area * r * r) <= 0.01 * area * r * r


def test_size_words_follow_coco_buckets_of_the_whole_shape():
    for index in range(20):
        scene = world.generate_scene(world.image_rng(1, "train", index), 200, 240, num_objects=6)
        for obj in scene.objects:
            assert obj.size == ("small" if obj.full_area < 32 ** 2 else "large" if obj.full_area >= 96 ** 2
                                else "medium")


def test_size_classes_span_coco_area_ranges():
    areas = np.concatenate([r.areas for r in make_world(60, seed=4, image_size=320).records])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any() and (areas >= 96 ** 2).any()


# ------------------------------------------------------------------------------------------ captions
def test_captions_are_five_distinct_lower_case_sentences(dataset):
    for r in dataset.records:
        assert len(r.captions) == 5 and len(set(r.captions)) == 5
        assert all(c == c.lower() and c.strip() == c and c for c in r.captions)


def test_captions_mention_only_colours_and_shapes_present(dataset):
    seen_empty = False
    for r in dataset.records:
        objects = objects_of(r)
        shapes = {o[0] for o in objects}
        colours = {o[1] for o in objects}
        for caption in r.captions:
            words = set(re.findall(r"[a-z]+", caption))
            assert words & set(COLOURS) <= colours, (caption, colours)
            assert {SHAPE_WORDS[w] for w in words & set(SHAPE_WORDS)} <= shapes, (caption, shapes)
        seen_empty |= not objects
    assert seen_empty


def test_counts_in_captions_are_true(dataset):
    number = "|".join(world.NUMBER_WORDS)
    checked = 0
    for r in dataset.records:
        objects = objects_of(r)
        for caption in r.captions:
            for count, shape_word in re.findall(rf"\b({number}) ({'|'.join(SHAPE_WORDS)})\b", caption):
                assert sum(o[0] == SHAPE_WORDS[shape_word] for o in objects) == NUMBERS[count], caption
                checked += 1
            for count, colour, shape_word in re.findall(
                    rf"\b({number}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPE_WORDS)})\b", caption):
                assert sum(o[0] == SHAPE_WORDS[shape_word] and o[1] == colour for o in objects) == NUMBERS[count]
                checked += 1
            match = re.search(rf"\b({number}) shapes?\b", caption)
            if match:
                assert len(objects) == NUMBERS[match.group(1)], caption
                checked += 1
    assert checked >= 20


def relation_holds(a_box, b_box, relation) -> bool:
    (ax, ay), (bx, by) = centre(a_box), centre(b_box)
    if relation == "next to":                                # disjoint boxes, closer than either is wide
        gap = max(max(a_box[0], b_box[0]) - min(a_box[2], b_box[2]), max(a_box[1], b_box[1]) - min(a_box[3], b_box[3]))
        longest = max(a_box[2] - a_box[0], a_box[3] - a_box[1], b_box[2] - b_box[0], b_box[3] - b_box[1])
        return 0 < gap <= longest
    horizontal = abs(ax - bx) > abs(ay - by)
    return {"to the left of": horizontal and ax < bx, "to the right of": horizontal and ax > bx,
            "above": not horizontal and ay < by, "below": not horizontal and ay > by}[relation]


def test_spatial_relations_in_captions_are_true(dataset):
    description = rf"(?:small |large )?({'|'.join(COLOURS)}) ({'|'.join(CATEGORIES.values())})"
    pattern = re.compile(rf"^(?:there is )?an? {description} (?:is )?(to the left of|to the right of|above|below"
                         rf"|next to) an? {description}$")
    checked = 0
    for r in make_world(60, seed=8, image_size=160, min_objects=2).records:
        objects = objects_of(r)
        for caption in r.captions:
            match = pattern.match(caption)
            if not match:
                continue
            colour_a, shape_a, relation, colour_b, shape_b = match.groups()
            pairs = [(a, b) for a in objects for b in objects if a is not b
                     and a[:2] == (shape_a, colour_a) and b[:2] == (shape_b, colour_b)]
            assert any(relation_holds(a[2], b[2], relation) for a, b in pairs), caption
            checked += 1
    assert checked >= 15


# ------------------------------------------------------------------------------------------ questions
def position_holds(box, width, height, phrase) -> bool:
    x, y = centre(box)
    dx, dy = x / width - 0.5, y / height - 0.5
    return {"in the centre": max(abs(dx), abs(dy)) < 0.15,
            "on the left": dx < 0 and abs(dx) > abs(dy), "on the right": dx > 0 and abs(dx) > abs(dy),
            "at the top": dy < 0 and abs(dy) > abs(dx), "at the bottom": dy > 0 and abs(dy) > abs(dx)}[phrase]


def test_questions_have_four_distinct_choices_and_one_right_answer(dataset):
    kinds = set()
    for r in dataset.records:
        assert len(r.questions) <= 4
        assert len({q.kind for q in r.questions}) == len(r.questions)          # one question per kind
        objects = objects_of(r)
        for q in r.questions:
            assert len(q.choices) == 4 and len(set(q.choices)) == 4 and 0 <= q.answer < 4
            assert q.question == q.question.lower() and q.question.endswith("?")
            right = q.choices[q.answer]
            kinds.add(q.kind)
            if q.kind == "count":                   # how many circles / red shapes / shapes are there?
                colour, noun = re.match(r"how many (?:(\w+) )?(\w+) are there\?", q.question).groups()
                shape = SHAPE_WORDS[noun] if noun != "shapes" else None
                assert colour is None or (colour in COLOURS and shape is None)
                assert NUMBERS[right] == sum((shape is None or o[0] == shape) and (colour is None or o[1] == colour)
                                             for o in objects)
                assert all(c in NUMBERS for c in q.choices)
            elif q.kind == "colour":
                shape = re.match(r"what colour is the (\w+)\?", q.question).group(1)
                assert {o[1] for o in objects if o[0] == shape} == {right}
                assert set(q.choices) <= set(COLOURS)
            elif q.kind == "position":
                colour, shape = re.match(r"where is the (\w+) (\w+)\?", q.question).groups()
                matches = [o for o in objects if o[:2] == (shape, colour)]
                assert len(matches) == 1
                assert position_holds(matches[0][2], r.width, r.height, right), (q, matches[0][2])
                assert set(q.choices) <= set(world.POSITION_PHRASES.values())
            elif q.kind == "existence":
                colour, shape = re.match(r"is there an? (?:(\w+) )?(\w+)\?", q.question).groups()
                count = sum(o[0] == shape and (colour is None or o[1] == colour) for o in objects)
                assert right == world.EXISTENCE_CHOICES[min(count, 3)]
                assert sorted(q.choices) == sorted(world.EXISTENCE_CHOICES)
            else:
                raise AssertionError(f"unknown kind {q.kind}")
    assert kinds == {"count", "colour", "position", "existence"}


@pytest.mark.parametrize("options", [{}, {"image_size": 128, "max_objects": 6}],    # default; the VQA world
                         ids=["default", "vqa"])
def test_no_answer_dominates_a_question_kind(options):
    """A model should not score by guessing the usual answer: within each kind, over 500 images, no answer is
    right for more than ~40% of the questions, and every answer of a small kind occurs."""
    answers = {}
    for r in make_world(500, seed=11, split="val", **options).records:
        for q in r.questions:
            answers.setdefault(q.kind, []).append(q.choices[q.answer])
    assert set(answers) == {"colour", "count", "position", "existence"}
    for kind, rights in answers.items():
        values, counts = np.unique(rights, return_counts=True)
        assert len(rights) >= 200 and counts.max() <= 0.42 * len(rights), (kind, dict(zip(values, counts)))
    assert set(answers["position"]) == set(world.POSITION_PHRASES.values())
    assert set(answers["existence"]) == set(world.EXISTENCE_CHOICES)
    assert {"zero", "one", "two", "three"} <= set(answers["count"])
    assert set(answers["colour"]) == set(COLOURS)


def test_answer_positions_are_spread_over_the_four_slots(dataset):
    slots = np.bincount([q.answer for r in dataset.records for q in r.questions], minlength=4)
    assert slots.min() > 0.1 * slots.sum()


# ------------------------------------------------------------------------------------------ properties
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(64, 180), width=st.integers(64, 180),
       single=st.booleans())
def test_any_seed_and_size_gives_consistent_annotations(seed, height, width, single):
    ds = make_world(1, seed=seed, min_size=min(height, width), max_size=max(height, width), single_object=single)
    r = ds[0]
    union = np.zeros((r.height, r.width), dtype=np.int64)
    for label, box, rle in zip(r.labels, r.boxes, r.segmentations):
        mask = decode(rle)
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert not union[mask].any()
        union[mask] = label
    assert np.array_equal(union, r.semantic)
    assert len(r.captions) == 5 and all(len(q.choices) == 4 for q in r.questions)


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("without_coco_module", [False, True])
def test_write_world_writes_coco_instances_captions_questions_and_pngs(tmp_path, monkeypatch, without_coco_module):
    if without_coco_module:                                 # the minimal fallback writer gives the same files
        monkeypatch.setitem(__import__("sys").modules, "scenekit.data.coco", None)
    instances = write_world(tmp_path, 4, seed=9, split="val", image_size=128)
    memory = make_world(4, seed=9, split="val", image_size=128)
    coco = COCO(str(instances))
    assert sorted(coco.getImgIds()) == [r.image_id for r in memory.records]
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == CATEGORIES
    for r in memory.records:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[r.image_id]))
        assert len(anns) == r.num_objects
        for ann, box, label in zip(sorted(anns, key=lambda a: a["id"]), r.boxes, r.labels):
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == box.tolist() and ann["category_id"] == label
            assert ann["iscrowd"] == 0 and ann["area"] == coco.annToMask(ann).sum()
        info = coco.loadImgs([r.image_id])[0]
        png = instances.parent / info["file_name"]
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), r.image)
    captions = json.loads((tmp_path / "captions_val.json").read_text())
    by_image = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert by_image == {r.image_id: r.captions for r in memory.records}
    questions = json.loads((tmp_path / "questions_val.json").read_text())
    assert len(questions) == sum(len(r.questions) for r in memory.records)
    first = memory.records[0].questions[0]
    assert questions[0] == {"image_id": 1, "question": first.question, "choices": first.choices,
                            "answer": first.answer, "kind": first.kind}


@pytest.mark.parametrize("without_coco_module", [False, True])
def test_written_captions_read_back_through_coco_captions_with_every_image(tmp_path, monkeypatch,
                                                                          without_coco_module):
    from scenekit.data.captions import load_language_data
    from scenekit.data.transforms import load_image

    with monkeypatch.context() as patch:
        if without_coco_module:
            patch.setitem(__import__("sys").modules, "scenekit.data.coco", None)
        write_world(tmp_path, 4, seed=3, image_size=64)
    memory = make_world(4, seed=3, image_size=64)
    for spec in (f"coco-captions:{tmp_path / 'captions_train.json'}", f"coco-captions:{tmp_path}"):
        data = load_language_data(spec, "train")
        assert [r.captions for r in data.records] == [r.captions for r in memory.records]
        for record, original in zip(data.records, memory.records):
            assert np.array_equal(load_image(data, record), original.image)
