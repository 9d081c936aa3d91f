"""The image files a user names: files, folders of images and glob patterns, as `scenekit predict` takes them.

A file stands for itself (whatever its extension: reading it says whether it is an image); a folder for the
image files directly inside it (by extension, sorted by name); a pattern with `*`, `?` or `[...]` for its
matches (sorted; `**` descends into folders), expanded here for shells that leave patterns as they are
(Windows' cmd, quoted arguments). Each file comes once, at its first mention.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from scenekit.errors import DataError

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    """A regular file with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(inputs) -> list[Path]:
    """The image files named by `inputs` (paths and patterns, str or Path), in the order given, without repeats.

    A folder without image files, a pattern matching none and a path that does not exist are DataErrors naming
    them (the folder's extensions listed).
    """
    found, seen = [], set()
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if is_image_file(p)), key=lambda p: p.name)
            if not files:
                raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder", file=str(given))
        elif path.exists():
            files = [path]
        elif glob.has_magic(str(given)):
            files = [Path(p) for p in sorted(glob.glob(str(given), recursive=True)) if is_image_file(Path(p))]
            if not files:
                raise DataError(f"the pattern matches no image files ({', '.join(IMAGE_SUFFIXES)})",
                                file=str(given))
        else:
            raise DataError("no such file or folder", file=str(given))
        for file in files:
            key = os.path.normcase(os.path.abspath(file))
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


def read_rgb(path) -> "np.ndarray":
    """An image file as an [H, W, 3] uint8 array (grey, palette, RGBA, CMYK converted to RGB); a file that does
    not decode is a DataError naming it. A missing file stays a FileNotFoundError."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image ({error})", file=str(path)) from None
