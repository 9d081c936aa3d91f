"""Tests of scenekit/data/photos.py: bundled photographs load offline as [H, W, 3] uint8 RGB arrays."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from scenekit.data import photos
from scenekit.data.photos import PhotoPackageMissing, list_photos, load_photo
from scenekit.errors import DataError

skimage_data = pytest.importorskip("skimage.data")


def test_scikit_image_and_matplotlib_photos_are_all_available_offline():
    assert set(list_photos()) == set(photos.PHOTOS)


@pytest.mark.parametrize("name, loader", [("astronaut", "astronaut"), ("chelsea", "chelsea"), ("coffee", "coffee"),
                                          ("rocket", "rocket"), ("hubble_deep_field", "hubble_deep_field")])
def test_colour_photos_equal_scikit_image_loaders(name, loader):
    ours = load_photo(name)
    reference = getattr(skimage_data, loader)()
    assert ours.dtype == np.uint8 and ours.ndim == 3 and ours.shape[2] == 3
    assert np.array_equal(ours, reference)


@pytest.mark.parametrize("name", ["camera", "coins", "moon"])
def test_grey_photos_are_repeated_over_three_channels(name):
    ours = load_photo(name)
    reference = getattr(skimage_data, name)()
    assert ours.shape == reference.shape + (3,)
    assert all(np.array_equal(ours[..., c], reference) for c in range(3))


def test_motorcycle_is_the_left_stereo_view():
    assert np.array_equal(load_photo("motorcycle"), skimage_data.stereo_motorcycle()[0])


def test_grace_hopper_matches_matplotlib_sample_data():
    import matplotlib.cbook
    import matplotlib.image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        reference = matplotlib.image.imread(handle, format="jpg")
    assert np.array_equal(load_photo("grace_hopper"), reference)


def test_unknown_photo_names_the_choices():
    with pytest.raises(DataError, match="unknown photo 'lena'.*astronaut"):
        load_photo("lena")


def test_missing_scikit_image_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(PhotoPackageMissing, match="pip install scikit-image"):
        load_photo("astronaut")
    assert isinstance(PhotoPackageMissing("x"), ImportError)
    assert list_photos() == ["grace_hopper"]
