"""Real photographs that installed packages carry offline, for demos and for region proposals.

scikit-image ships a handful of test photographs inside its wheel (others in `skimage.data` are fetched with
pooch on first use; those are left out here, since nothing may be downloaded). matplotlib's sample data
holds one more, a portrait of Grace Hopper. Every photograph is returned as an `[H, W, 3]` uint8 RGB array;
grey ones are repeated over the three channels.

>>> from scenekit.data.photos import list_photos, load_photo
>>> "astronaut" in list_photos()                              # doctest: +SKIP
True
>>> load_photo("coffee").shape                                 # doctest: +SKIP
(400, 600, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scenekit.errors import DataError, ScenekitError

# name -> (package, file inside the package's data folder, what it shows)
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png", "Eileen Collins, NASA astronaut, in front of a flag"),
    "chelsea": ("skimage", "chelsea.png", "a cat on a sofa"),
    "coffee": ("skimage", "coffee.png", "a cup of coffee on a saucer"),
    "rocket": ("skimage", "rocket.jpg", "a rocket on its launch pad"),
    "motorcycle": ("skimage", "motorcycle_left.png", "a motorcycle in a workshop (left view of a stereo pair)"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg", "galaxies in the Hubble deep field"),
    "camera": ("skimage", "camera.png", "a man with a camera on a tripod (grey)"),
    "coins": ("skimage", "coins.png", "Greek coins on a dark background (grey)"),
    "moon": ("skimage", "moon.png", "the surface of the moon (grey)"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg", "Rear Admiral Grace Hopper in uniform"),
}

_INSTALL = {"skimage": "scikit-image", "matplotlib": "matplotlib"}


class PhotoPackageMissing(ScenekitError, ImportError):
    """The package that bundles a photograph is not installed."""


def _data_folder(package: str) -> Path:
    """The folder where `package` keeps its bundled sample files; PhotoPackageMissing (an ImportError) with
    the pip command if the package is not installed."""
    try:
        if package == "skimage":
            import skimage.data

            return Path(skimage.data.__file__).parent
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError as error:
        raise PhotoPackageMissing(f"this photograph comes with the {_INSTALL[package]} package, which is not "
                                  f"installed: pip install {_INSTALL[package]}") from error


def list_photos() -> list[str]:
    """Names of the photographs available offline in this environment (missing packages or files are left out)."""
    names = []
    for name, (package, file_name, _) in PHOTOS.items():
        try:
            folder = _data_folder(package)
        except ImportError:
            continue
        if (folder / file_name).is_file():
            names.append(name)
    return names


def photo_description(name: str) -> str:
    """What the photograph shows, in a few words."""
    if name not in PHOTOS:
        raise DataError(f"unknown photo {name!r}; available: {', '.join(PHOTOS)}", field="name")
    return PHOTOS[name][2]


def load_photo(name: str) -> np.ndarray:
    """The photograph `name` as an `[H, W, 3]` uint8 RGB array (grey photographs repeated over 3 channels)."""
    if name not in PHOTOS:
        raise DataError(f"unknown photo {name!r}; available: {', '.join(PHOTOS)}", field="name")
    package, file_name, _ = PHOTOS[name]
    path = _data_folder(package) / file_name
    if not path.is_file():
        raise DataError(f"the installed {_INSTALL[package]} does not bundle this photograph", file=str(path),
                        field="name")
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()      # [H, W, 3]
