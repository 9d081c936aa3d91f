"""Colour spaces for Selective Search's diversification (Uijlings et al. 2013, Sec. 3.2 and Table 1).

Each space trades invariance for discriminative power: RGB has none; I (intensity) and Lab are invariant to
nothing but are perceptually spaced; rgI (normalised r, g plus intensity) and HSV are partly invariant to
shadows and shading; H (hue) alone is the most invariant. Grouping in several spaces and pooling the regions
finds objects that any single space would merge with their surroundings.

Every conversion takes an `[H, W, 3]` uint8 RGB array and returns an `[H, W, C]` float32 array with every
channel scaled to [0, 255], so that the graph segmentation's threshold `k` and the 25-bin colour histograms
mean the same thing in every space (as the original code and OpenCV do with 8-bit conversions).
"""

from __future__ import annotations

import numpy as np

COLOUR_SPACES = ("RGB", "HSV", "Lab", "rgI", "I", "H")

# ITU-R BT.601 luma weights, the usual definition of a grey "intensity" (also OpenCV's RGB2GRAY).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# sRGB (D65) -> CIE XYZ, and the D65 reference white.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float32)
_WHITE_D65 = np.array([0.950456, 1.0, 1.088754], dtype=np.float32)


def intensity(rgb: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[H, W]` float32 luma in [0, 255]."""
    return rgb.astype(np.float32) @ _LUMA


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[H, W, 3]` float32: hue (360 degrees mapped to [0, 255)), saturation, value."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = x.max(axis=-1)
    chroma = value - x.min(axis=-1)
    safe_chroma = np.where(chroma > 0, chroma, 1.0)
    # Hue sector by which channel is the maximum, in units of 60 degrees, in [0, 6).
    hue = np.where(value == r, ((g - b) / safe_chroma) % 6.0,
                   np.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0))
    hue = np.where(chroma > 0, hue, 0.0)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue * (255.0 / 6.0), saturation * 255.0, value], axis=-1).astype(np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 sRGB -> `[H, W, 3]` float32 CIE L*a*b* (D65), 8-bit scaled: L*255/100, a+128, b+128."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE_D65
    # The cube root with its linear toe near black (CIE 1976).
    delta = 6.0 / 29.0
    f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    lab = np.stack([lightness * (255.0 / 100.0), a + 128.0, b + 128.0], axis=-1)
    return np.clip(lab, 0.0, 255.0).astype(np.float32)


def rgb_to_rgi(rgb: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 -> `[H, W, 3]` float32: normalised r = R/(R+G+B), g = G/(R+G+B) (times 255), intensity."""
    x = rgb.astype(np.float32)
    total = x.sum(axis=-1)
    safe = np.where(total > 0, total, 1.0)
    r = np.where(total > 0, x[..., 0] / safe, 1.0 / 3.0)
    g = np.where(total > 0, x[..., 1] / safe, 1.0 / 3.0)
    return np.stack([r * 255.0, g * 255.0, intensity(rgb)], axis=-1).astype(np.float32)


def convert_colour(rgb: np.ndarray, space: str) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB -> `[H, W, C]` float32 in [0, 255] for `space` in `COLOUR_SPACES` (C = 1 for I, H)."""
    if space == "RGB":
        return rgb.astype(np.float32)
    if space == "HSV":
        return rgb_to_hsv(rgb)
    if space == "Lab":
        return rgb_to_lab(rgb)
    if space == "rgI":
        return rgb_to_rgi(rgb)
    if space == "I":
        return intensity(rgb)[..., None]
    if space == "H":
        return rgb_to_hsv(rgb)[..., :1]
    raise ValueError(f"colour space must be one of {COLOUR_SPACES}, got {space!r}")
