"""Pictures: boxes with class names and scores, instance masks as translucent overlays.

Every function takes an `[H, W, 3]` uint8 array (or a PIL image) and returns a new PIL image; nothing is drawn
in place. Colours come from a fixed palette indexed by label so a class keeps its colour across pictures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
]


def colour_for(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:   # [3, H, W] tensor layout
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array, mode="RGB")


def draw_boxes(image, boxes, labels=None, scores=None, names: dict | None = None, width: int = 2,
               colour=None) -> Image.Image:
    """Draw `[N, 4]` xyxy boxes with an optional "name score" tag above each."""
    picture = to_pil(image).copy()
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        label = None if labels is None else int(np.asarray(labels)[i])
        box_colour = colour or (colour_for(label) if label is not None else colour_for(i))
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=box_colour, width=width)
        tag = []
        if label is not None:
            tag.append(str(names.get(label, label)) if names else str(label))
        if scores is not None:
            tag.append(f"{float(np.asarray(scores)[i]):.2f}")
        if tag:
            text = " ".join(tag)
            left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
            ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
            draw.rectangle([x1, ty, x1 + (right - left) + 2, ty + (bottom - top) + 2], fill=box_colour)
            draw.text((x1 + 1, ty), text, fill=(0, 0, 0), font=font)
    return picture


def draw_masks(image, masks, labels=None, alpha: float = 0.45) -> Image.Image:
    """Blend `[N, H, W]` binary masks over the image, one translucent colour per instance (or per label)."""
    array = np.asarray(to_pil(image), dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    for i, mask in enumerate(masks.reshape(-1, *array.shape[:2])):
        label = i if labels is None else int(np.asarray(labels)[i])
        array[mask] = (1 - alpha) * array[mask] + alpha * np.asarray(colour_for(label), dtype=np.float32)
    return Image.fromarray(array.round().astype(np.uint8), mode="RGB")
