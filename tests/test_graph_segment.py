"""Felzenszwalb-Huttenlocher segmentation: hand-made images, invariants, and scikit-image side by side."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage as ndi
from skimage import data, segmentation

from scenekit.proposals import felzenszwalb
from scenekit.proposals.graph_segment import (correlate_axis, edge_costs, gaussian_kernel, gaussian_smooth,
                                              grid_edges, sorted_graph)


def two_colour_image(height=20, width=30, split=13):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :split] = (200, 30, 30)
    image[:, split:] = (20, 40, 220)
    return image


def squares_image():
    image = np.full((40, 48, 3), 90, np.uint8)
    image[5:20, 6:22] = (250, 250, 0)
    image[22:37, 25:45] = (0, 120, 255)
    image[8:14, 30:40] = (255, 0, 255)
    return image


def segment_sizes(labels):
    return np.bincount(labels.ravel())


def test_two_flat_colours_give_two_segments():
    # The smoothed edge is a band of one-column segments of 20 pixels; min_size 50 folds them into the sides.
    labels = felzenszwalb(two_colour_image(), scale=100, sigma=0.8, min_size=50)
    assert labels.shape == (20, 30)
    assert labels.max() == 1
    # The split follows the colour edge, give or take the smoothed band.
    assert (labels[:, :12] == labels[0, 0]).all() and (labels[:, 14:] == labels[0, -1]).all()


def test_two_flat_colours_without_smoothing_split_exactly_at_the_edge():
    labels = felzenszwalb(two_colour_image(), scale=1, sigma=0, min_size=0)
    expected = np.zeros((20, 30), np.int64)
    expected[:, 13:] = 1
    np.testing.assert_array_equal(labels, expected)


def test_flat_image_is_one_segment():
    labels = felzenszwalb(np.full((16, 16, 3), 77, np.uint8))
    assert (labels == 0).all()


def test_large_scale_merges_what_small_scale_separates():
    image = np.array(data.astronaut()[::8, ::8])
    small = felzenszwalb(image, scale=10, min_size=0).max() + 1
    large = felzenszwalb(image, scale=1000, min_size=0).max() + 1
    assert large < small


@pytest.mark.parametrize("make", [two_colour_image, squares_image])
@pytest.mark.parametrize("scale,sigma,min_size", [(1, 0, 20), (100, 0.5, 5), (100, 0.8, 20), (50, 0, 0)])
def test_labels_equal_scikit_image_on_simple_images(make, scale, sigma, min_size):
    image = make()
    ours = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    reference = segmentation.felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
@pytest.mark.parametrize("scale,sigma,min_size", [(1, 0.8, 20), (100, 0.8, 50)])
def test_segment_count_matches_scikit_image_on_photographs(name, scale, sigma, min_size):
    image = np.ascontiguousarray(getattr(data, name)()[::3, ::3])
    ours = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    reference = segmentation.felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size,
                                          channel_axis=-1 if image.ndim == 3 else None)
    n_ours, n_ref = ours.max() + 1, reference.max() + 1
    assert abs(n_ours - n_ref) <= max(2, 0.03 * n_ref)
    assert (ours == reference).mean() > 0.95


def test_min_size_is_respected():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    labels = felzenszwalb(image, scale=1, sigma=0, min_size=25)
    assert segment_sizes(labels).min() >= 25
    unconstrained = felzenszwalb(image, scale=1, sigma=0, min_size=0)
    assert segment_sizes(unconstrained).min() < 25


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 14), width=st.integers(1, 14), channels=st.sampled_from([1, 3]),
       scale=st.floats(0, 500), sigma=st.floats(0, 2), min_size=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_segments_are_connected_numbered_in_raster_order_and_large_enough(height, width, channels, scale, sigma,
                                                                          min_size, seed):
    image = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
    assert labels.shape == (height, width)
    n = labels.max() + 1
    # Labels 0..n-1 appear in raster order of first occurrence.
    _, first = np.unique(labels.ravel(), return_index=True)
    assert (np.diff(first) > 0).all() and len(first) == n
    for label in range(n):
        _, parts = ndi.label(labels == label, structure=np.ones((3, 3)))
        assert parts == 1
    if n > 1:
        assert segment_sizes(labels).min() >= min_size


def test_grey_pil_and_float_inputs_agree_with_uint8():
    image = np.array(data.camera()[::8, ::8])
    expected = felzenszwalb(image, scale=50)
    np.testing.assert_array_equal(felzenszwalb(Image.fromarray(image), scale=50), expected)
    np.testing.assert_array_equal(felzenszwalb(image / 255.0, scale=50), expected)
    np.testing.assert_array_equal(felzenszwalb(image[..., None], scale=50), expected)


def test_gaussian_smoothing_and_derivative_match_scipy():
    image = np.random.default_rng(1).random((17, 23, 3))
    np.testing.assert_allclose(gaussian_smooth(image, 0.8), ndi.gaussian_filter(image, sigma=(0.8, 0.8, 0)),
                               atol=1e-12)
    dx = correlate_axis(correlate_axis(image, gaussian_kernel(1.0), 0), gaussian_kernel(1.0, order=1), 1)
    np.testing.assert_allclose(dx, ndi.gaussian_filter(image, sigma=(1, 1, 0), order=(0, 1, 0)), atol=1e-12)


def test_grid_has_every_8_neighbour_pair_once_with_colour_distance():
    height, width = 4, 5
    a, b = grid_edges(height, width)
    assert len(a) == (height - 1) * width + height * (width - 1) + 2 * (height - 1) * (width - 1)
    pairs = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())}
    assert len(pairs) == len(a)
    for p, q in pairs:
        (y1, x1), (y2, x2) = divmod(p, width), divmod(q, width)
        assert max(abs(y1 - y2), abs(x1 - x2)) == 1
    image = np.random.default_rng(2).random((height, width, 3))
    flat = image.reshape(-1, 3)
    np.testing.assert_allclose(edge_costs(image), np.linalg.norm(flat[a] - flat[b], axis=1))


def test_quantised_graph_is_sorted_and_close_to_exact():
    image = np.random.default_rng(3).random((20, 20, 3))
    a, b, costs = sorted_graph(image, 0.8, quantise=True)
    assert (np.diff(costs) >= 0).all()
    exact = edge_costs(gaussian_smooth(image, 0.8))
    flat_index = {pair: i for i, pair in enumerate(zip(*grid_edges(20, 20)))}
    original = exact[[flat_index[(p, q)] for p, q in zip(a.tolist(), b.tolist())]]
    assert np.abs(original - costs).max() <= exact.max() / 65535


@pytest.mark.parametrize("image", [
    np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.uint8), np.zeros((2, 3, 4, 5), np.uint8),
    np.zeros(7, np.uint8), np.zeros((4, 4, 3), np.int32), np.full((4, 4), np.nan), [[1, 2], [3, 4]],
])
def test_bad_images_raise_value_error(image):
    with pytest.raises(ValueError):
        felzenszwalb(image)


@pytest.mark.parametrize("kwargs", [{"scale": -1}, {"sigma": float("nan")}, {"min_size": -3}, {"min_size": 2.5}])
def test_bad_parameters_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        felzenszwalb(np.zeros((4, 4, 3), np.uint8), **kwargs)


def test_cli_segment_writes_a_superpixel_picture(tmp_path, capsys):
    import json

    from scenekit.cli import main

    Image.fromarray(squares_image()).save(tmp_path / "squares.png")
    out = tmp_path / "sp.png"
    assert main(["segment", "--superpixels", str(tmp_path / "squares.png"), "--scale", "100", "--sigma", "0",
                 "--min-size", "0", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 4
    picture = np.asarray(Image.open(out))
    assert picture.shape == (427, 512, 3)        # 48 x 40 drawn at 512 px on its long side, pixels as blocks

    def at(y, x):                                # the centre of source pixel (y, x) in the enlarged picture
        return picture[int((y + 0.5) * 427 / 40), int((x + 0.5) * 512 / 48)]

    assert (at(5, 6) == 255).all()               # the yellow square's corner is on a boundary: white
    assert (at(10, 10) == at(12, 15)).all() and not (at(10, 10) == 255).all()   # one flat colour
    assert main(["segment", str(tmp_path / "squares.png"), "--out", str(out)]) == 2    # --superpixels missing
