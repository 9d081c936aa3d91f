"""Selective Search: similarity terms, grouping against a brute-force Algorithm 1, colour spaces against
scikit-image, and proposals on generated scenes with known boxes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import color

from scenekit.proposals import selective_search
from scenekit.proposals.colour import COLOUR_SPACES, convert_colour, rgb_to_hsv, rgb_to_lab
from scenekit.proposals.selective_search import (Grouping, _similarity, colour_bins, hierarchical_grouping,
                                                 neighbour_pairs, ranking_values, region_statistics, texture_bins)


# ---------------------------------------------------------------------------------------------- helpers
def box_iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def make_scene(seed, width=96, height=72):
    """2-3 non-overlapping shapes (flat or striped) on a noisy gradient; returns (image, boxes [N, 4])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / width)[..., None]
    image = rng.uniform(60, 200, 3) * (1 - ramp) + rng.uniform(60, 200, 3) * ramp
    image = image + rng.normal(0, 10, (height, width, 3))
    boxes = []
    cells = [(0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2)]
    for cx, cy in [cells[i] for i in rng.permutation(4)[:rng.integers(2, 4)]]:
        w, h = rng.integers(16, width // 2 - 4), rng.integers(14, height // 2 - 4)
        x0, y0 = cx + rng.integers(0, width // 2 - w), cy + rng.integers(0, height // 2 - h)
        if rng.random() < 0.5:
            mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        else:
            mask = ((xx + 0.5 - x0 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - y0 - h / 2) / (h / 2)) ** 2 <= 1
        fill = np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).copy()
        if rng.random() < 0.4:
            fill *= 1 - 0.45 * ((xx // 3) % 2)[..., None]
        image[mask] = fill[mask] + rng.normal(0, 5, (mask.sum(), 3))
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.clip(image, 0, 255).astype(np.uint8), np.array(boxes, dtype=np.float64)


def flat_squares():
    image = np.full((48, 64, 3), (40, 90, 40), np.uint8)
    image[6:20, 8:30] = (230, 40, 40)
    image[26:44, 36:60] = (40, 40, 230)
    return image


def reference_grouping(pairs, sizes, boxes, colour_hist, texture_hist, image_size, terms):
    """Algorithm 1 written the slow, obvious way: recompute every similarity each step.
    Returns every region's box in formation order and its depth in the merge tree (initial regions 1)."""
    regions = {i: dict(size=float(sizes[i]), box=list(boxes[i]), c=colour_hist[i].astype(np.float64),
                       t=texture_hist[i].astype(np.float64), depth=1) for i in range(len(sizes))}
    depths = [1] * len(sizes)
    neighbours = {tuple(sorted(p)) for p in pairs}
    order = [list(boxes[i]) for i in range(len(sizes))]

    def sim(i, j):
        ri, rj = regions[i], regions[j]
        s = 0.0
        if "C" in terms:
            s += np.minimum(ri["c"], rj["c"]).sum()
        if "T" in terms:
            s += np.minimum(ri["t"], rj["t"]).sum()
        if "S" in terms:
            s += 1 - (ri["size"] + rj["size"]) / image_size
        if "F" in terms:
            bb = [min(ri["box"][0], rj["box"][0]), min(ri["box"][1], rj["box"][1]),
                  max(ri["box"][2], rj["box"][2]), max(ri["box"][3], rj["box"][3])]
            s += 1 - ((bb[2] - bb[0]) * (bb[3] - bb[1]) - ri["size"] - rj["size"]) / image_size
        return s

    while neighbours:
        i, j = max(neighbours, key=lambda p: sim(*p))
        ri, rj = regions.pop(i), regions.pop(j)
        t = len(order)
        size = ri["size"] + rj["size"]
        regions[t] = dict(size=size, box=[min(ri["box"][0], rj["box"][0]), min(ri["box"][1], rj["box"][1]),
                                          max(ri["box"][2], rj["box"][2]), max(ri["box"][3], rj["box"][3])],
                          c=(ri["size"] * ri["c"] + rj["size"] * rj["c"]) / size,
                          t=(ri["size"] * ri["t"] + rj["size"] * rj["t"]) / size,
                          depth=max(ri["depth"], rj["depth"]) + 1)
        order.append(regions[t]["box"])
        depths.append(regions[t]["depth"])
        touching = {q for p in neighbours if i in p or j in p for q in p} - {i, j}
        neighbours = {p for p in neighbours if i not in p and j not in p} | {(n, t) for n in touching}
    return np.array(order), np.array(depths)


# ---------------------------------------------------------------------------------------------- pieces
def test_similarity_terms_follow_the_papers_formulas():
    sizes = np.array([10.0, 30.0])
    boxes = np.array([[0, 0, 5, 2], [5, 0, 10, 6]])
    colour = np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]], np.float32)
    texture = np.array([[1.0, 0.0], [0.2, 0.8]], np.float32)
    args = (0, 1, sizes, boxes, colour, texture, 100.0)
    assert _similarity(*args, True, False, False, False) == pytest.approx(0.5)           # sum of minima
    assert _similarity(*args, False, True, False, False) == pytest.approx(0.2)
    assert _similarity(*args, False, False, True, False) == pytest.approx(1 - 40 / 100)   # size
    assert _similarity(*args, False, False, False, True) == pytest.approx(1 - (60 - 40) / 100)  # fill, BB 10 x 6
    assert _similarity(*args, True, True, True, True) == pytest.approx(0.5 + 0.2 + 0.6 + 0.8)


def test_region_statistics_give_boxes_sizes_and_l1_normalised_histograms():
    labels = np.array([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
    cbins = np.zeros((3, 3, 2), np.uint8)
    cbins[..., 1] = np.arange(9).reshape(3, 3) % 3
    tbins = np.zeros((3, 3, 16), np.uint8)
    sizes, boxes, ch, th = region_statistics(labels, 3, cbins, tbins)
    np.testing.assert_array_equal(sizes, [3, 3, 3])
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 2], [2, 0, 3, 3], [0, 1, 2, 3]])
    assert ch.shape == (3, 50) and th.shape == (3, 160)
    np.testing.assert_allclose(ch.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(th.sum(1), 1, rtol=1e-6)
    # Region 1 is the right column: second channel bins 2, 2, 2.
    assert ch[1, 25 + 2] == pytest.approx(0.5)


def test_neighbour_pairs_are_8_connected_and_unique():
    labels = np.array([[0, 0, 1], [2, 3, 1], [2, 2, 4]])
    a, b = neighbour_pairs(labels)
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len(pairs) == len(a)
    assert (0, 3) in pairs and (1, 3) in pairs and (3, 4) in pairs and (0, 2) in pairs
    assert (1, 2) in pairs            # only diagonally, (1, 2)-(2, 1)
    assert (0, 4) not in pairs and (2, 1) not in pairs


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), terms=st.sampled_from(["CTSF", "TSF", "CT", "C", "CS", "TF"]))
def test_grouping_matches_brute_force_algorithm_1(seed, terms):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    blocks = np.repeat(np.repeat(rng.integers(0, 6, (6, 7)), 3, 0), 3, 1)
    # Connected pieces as regions, as after graph segmentation.
    labels = np.zeros_like(blocks)
    count = 0
    for value in np.unique(blocks):
        parts, n = ndi.label(blocks == value, structure=np.ones((3, 3)))
        labels[parts > 0] = parts[parts > 0] - 1 + count
        count += n
    sizes, boxes, _, _ = region_statistics(labels, count, np.zeros(labels.shape + (1,), np.uint8),
                                           np.zeros(labels.shape + (1,), np.uint8))
    # Continuous random histograms, so that no two similarities tie.
    ch = rng.dirichlet(np.ones(75), count).astype(np.float32)
    th = rng.dirichlet(np.ones(240), count).astype(np.float32)
    a, b = neighbour_pairs(labels)
    ours, levels = hierarchical_grouping(a, b, sizes, boxes, ch, th, float(labels.size), "C" in terms,
                                         "T" in terms, "S" in terms, "F" in terms)
    expected, expected_depths = reference_grouping(list(zip(a.tolist(), b.tolist())), sizes, boxes, ch, th,
                                                   float(labels.size), terms)
    assert len(ours) == 2 * count - 1
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(levels, expected_depths)
    np.testing.assert_array_equal(ours[-1], [0, 0, labels.shape[1], labels.shape[0]])


def test_colour_conversions_match_scikit_image():
    rgb = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgb[0, :6] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]
    hsv = color.rgb2hsv(rgb)
    np.testing.assert_allclose(rgb_to_hsv(rgb), hsv * 255, atol=0.05)
    lab = color.rgb2lab(rgb)
    expected = np.clip(np.stack([lab[..., 0] * 2.55, lab[..., 1] + 128, lab[..., 2] + 128], -1), 0, 255)
    np.testing.assert_allclose(rgb_to_lab(rgb), expected, atol=0.05)
    for space in COLOUR_SPACES:
        converted = convert_colour(rgb, space)
        assert converted.dtype == np.float32 and converted.min() >= 0 and converted.max() <= 255
        assert converted.shape[2] == (1 if space in ("I", "H") else 3)


def test_colour_and_texture_bins():
    colour = np.array([[[0.0], [10.2], [10.3], [255.0]]], np.float32)
    np.testing.assert_array_equal(colour_bins(colour)[0, :, 0], [0, 0, 1, 24])
    flat = np.full((12, 12, 3), 100, np.float32)
    assert (texture_bins(flat) == 0).all()
    step = np.zeros((12, 12, 1), np.float32)
    step[:, 6:] = 200                            # intensity rises along +x
    bins = texture_bins(step)                    # [12, 12, 8], orientation o at angle o * 45 degrees
    assert bins.shape == (12, 12, 8)
    assert bins[:, 5:7, 0].min() == 9            # the 0-degree derivative peaks on the edge
    assert bins[..., 4].max() == 0               # the 180-degree one is negative everywhere, rectified to 0
    assert bins[..., 2].max() == 0 and bins[..., 6].max() == 0  # no vertical change at all


# ---------------------------------------------------------------------------------------------- ranking
class _NoRandomness:
    """Stands in for the random generator: every random factor is 1, so the values are the positions."""

    def random(self, n):
        return np.ones(n)


def _grouping(space, k, similarity, num_initial, num_merges):
    # Box i is [i, 0, i + 1, 1]: a label that says where a region's value came from.
    m = num_initial + num_merges
    boxes = np.stack([np.arange(m), np.zeros(m, int), np.arange(m) + 1, np.ones(m, int)], 1)
    levels = np.concatenate([np.ones(num_initial, int), np.arange(2, num_merges + 2)])
    return Grouping(space, k, similarity, boxes, levels, num_initial)


def test_paper_ranking_numbers_merges_from_the_top_and_adds_initial_regions_once_per_segmentation():
    groupings = [_grouping("HSV", 50, "CTSF", 3, 2), _grouping("HSV", 50, "TSF", 3, 2),
                 _grouping("Lab", 50, "CTSF", 4, 3)]
    boxes, values = ranking_values(groupings, _NoRandomness(), "paper")
    # Sec. 3.3: the last merge (the whole image) is position 1. The authors' code adds the initial regions of a
    # segmentation once (not again for the TSF grouping), at the position after the first merge: 3 for HSV
    # (2 merges), 4 for Lab (3 merges).
    assert boxes[:, 0].tolist() == [3, 4, 0, 1, 2, 3, 4, 4, 5, 6, 0, 1, 2, 3]
    assert values.tolist() == [2, 1, 3, 3, 3, 2, 1, 3, 2, 1, 4, 4, 4, 4]


def test_depth_ranking_gives_every_region_of_every_grouping_its_merge_tree_depth():
    groupings = [_grouping("HSV", 50, "CTSF", 3, 2), _grouping("HSV", 50, "TSF", 3, 2)]
    boxes, values = ranking_values(groupings, _NoRandomness(), "depth")
    assert boxes[:, 0].tolist() == [0, 1, 2, 3, 4] * 2
    assert values.tolist() == [1, 1, 1, 2, 3] * 2


def test_ranking_values_multiply_positions_by_random_numbers_in_0_1():
    groupings = [_grouping("HSV", 50, "CTSF", 30, 29)]
    _, ones = ranking_values(groupings, _NoRandomness(), "paper")
    _, values = ranking_values(groupings, np.random.default_rng(3), "paper")
    np.testing.assert_allclose(values, ones * np.random.default_rng(3).random(len(ones)))
    with pytest.raises(ValueError, match="ranking"):
        ranking_values(groupings, _NoRandomness(), "size")


def test_paper_ranking_puts_large_regions_first_and_depth_ranking_small_ones():
    image, _ = make_scene(5, width=160, height=120)
    top_area = {}
    for ranking in ("paper", "depth"):
        areas = []
        for seed in range(10):
            boxes = selective_search(image, seed=seed, ranking=ranking)[:10].numpy()
            areas.append(((boxes[:, 2:] - boxes[:, :2]).prod(1)).mean())
        top_area[ranking] = np.mean(areas)
    assert top_area["paper"] > 2 * top_area["depth"]


def test_ranking_changes_only_the_order():
    image, _ = make_scene(6)
    paper = selective_search(image, ranking="paper")
    depth = selective_search(image, ranking="depth")
    assert not torch.equal(paper, depth)
    assert {tuple(b) for b in paper.tolist()} == {tuple(b) for b in depth.tolist()}


def test_min_size_below_k_keeps_small_segments():
    image = flat_squares()
    image[30:33, 10:13] = (250, 250, 250)   # 9 pixels: merged into the background when min_size = k = 100
    default = {tuple(b) for b in selective_search(image, mode="single").tolist()}
    small = {tuple(b) for b in selective_search(image, mode="single", min_size=4).tolist()}
    assert (10, 30, 13, 33) in small and (10, 30, 13, 33) not in default


# ---------------------------------------------------------------------------------------------- the method
def test_flat_squares_are_proposed_exactly_and_whole_image_too():
    boxes = selective_search(flat_squares(), mode="single").numpy()
    rows = {tuple(b) for b in boxes.tolist()}
    assert (8, 6, 30, 20) in rows and (36, 26, 60, 44) in rows and (0, 0, 64, 48) in rows


def test_proposals_cover_objects_of_generated_scenes():
    overlaps = []
    for seed in range(6):
        image, gt = make_scene(seed)
        boxes = selective_search(image, mode="fast", seed=seed).numpy().astype(np.float64)
        overlaps.extend(box_iou(gt, boxes[:200]).max(axis=1))
    overlaps = np.array(overlaps)
    assert (overlaps >= 0.5).mean() >= 0.9
    assert overlaps.mean() >= 0.75


def test_output_is_float32_xyxy_inside_the_image_without_duplicates():
    image, _ = make_scene(11)
    boxes = selective_search(image)
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 72).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)


def test_seed_changes_only_the_order():
    image, _ = make_scene(3)
    first = selective_search(image, seed=1)
    assert torch.equal(first, selective_search(image, seed=1))
    other = selective_search(image, seed=2)
    assert not torch.equal(first, other)
    assert {tuple(b) for b in first.tolist()} == {tuple(b) for b in other.tolist()}


def test_quality_mode_contains_fast_mode_and_single_is_smallest():
    image, _ = make_scene(5, width=48, height=40)
    single = {tuple(b) for b in selective_search(image, mode="single").tolist()}
    fast = {tuple(b) for b in selective_search(image, mode="fast").tolist()}
    quality = {tuple(b) for b in selective_search(image, mode="quality").tolist()}
    assert fast <= quality            # quality's 80 groupings include fast's 8
    assert len(single) < len(fast) < len(quality)


def test_pil_input_equals_array_input():
    image, _ = make_scene(7)
    assert torch.equal(selective_search(Image.fromarray(image)), selective_search(image))


def test_max_side_searches_a_smaller_copy_and_maps_boxes_back():
    image = np.repeat(np.repeat(flat_squares(), 2, 0), 2, 1)    # 96 x 128
    boxes = selective_search(image, mode="single", max_side=64).numpy()
    assert boxes[:, 2].max() <= 128 and boxes[:, 3].max() <= 96
    rows = {tuple(b) for b in boxes.tolist()}
    assert (16, 12, 60, 40) in rows and (0, 0, 128, 96) in rows


def test_overrides_select_the_groupings():
    image, _ = make_scene(8, width=48, height=40)
    custom = selective_search(image, colour_spaces=("RGB",), ks=(30,), similarities=("C",))
    assert len(custom) > 0


@pytest.mark.parametrize("image", [
    np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
    np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0, 3), np.uint8), torch.zeros(10, 10, 3, dtype=torch.uint8),
    [[1, 2, 3]],
])
def test_bad_images_raise_value_error(image):
    with pytest.raises(ValueError):
        selective_search(image)


@pytest.mark.parametrize("kwargs", [{"mode": "slow"}, {"similarities": ("CX",)}, {"similarities": ("CC",)},
                                    {"colour_spaces": ("XYZ",)}, {"ks": (0,)}, {"ks": ()}, {"max_side": 0},
                                    {"sigma": -1}, {"min_size": -1}, {"min_size": 2.5}, {"ranking": "size"}])
def test_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        selective_search(np.zeros((8, 8, 3), np.uint8), **kwargs)


def test_one_pixel_and_flat_images_give_the_whole_image():
    assert selective_search(np.zeros((1, 1, 3), np.uint8)).tolist() == [[0, 0, 1, 1]]
    assert selective_search(np.full((9, 7, 3), 50, np.uint8)).tolist() == [[0, 0, 7, 9]]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_propose_prints_json_and_draws(tmp_path, capsys):
    import json

    from scenekit.cli import main

    image, _ = make_scene(2)
    Image.fromarray(image).save(tmp_path / "scene.png")
    code = main(["propose", str(tmp_path / "scene.png"), "--top", "4", "--json", "--out", str(tmp_path / "p.png")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    expected = selective_search(image, mode="fast", seed=0)[:4].tolist()
    assert result["boxes_xyxy"] == expected and result["num_proposals"] > 4
    assert Image.open(tmp_path / "p.png").size == (512, 384)      # 96 x 72 drawn at 512 px, boxes scaled


def test_cli_propose_passes_ranking_and_min_size_through(tmp_path, capsys):
    import json

    from scenekit.cli import main

    image, _ = make_scene(2)
    Image.fromarray(image).save(tmp_path / "scene.png")
    code = main(["propose", str(tmp_path / "scene.png"), "--top", "1000", "--json", "--ranking", "depth",
                 "--min-size", "30"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    expected = selective_search(image, mode="fast", seed=0, ranking="depth", min_size=30).tolist()
    assert result["boxes_xyxy"] == expected
    assert main(["propose", str(tmp_path / "scene.png"), "--min-size", "0"]) == 2
    assert "--min-size" in capsys.readouterr().err


def test_cli_propose_rejects_unreadable_image(tmp_path, capsys):
    from scenekit.cli import main

    (tmp_path / "bad.png").write_text("not an image")
    assert main(["propose", str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
