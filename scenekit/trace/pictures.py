"""Drawing for the trace pictures: enlarged inputs, heat maps, labelled sheets, bar charts, and the page that
puts a title line (the step and the paper + section it implements) above a picture and its caption below.

Everything returns a new PIL image; nothing needs matplotlib. Inputs of a few dozen pixels are enlarged to at
least `MIN_SIDE` (512) pixels on their long side, so every picture of a trace can be read on a screen; boxes in
input pixels are drawn after multiplying by the enlargement `factor` that `enlarge` returns.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scenekit.viz import colour_for, to_pil

MIN_SIDE = 512
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
POSITIVE, NEGATIVE, IGNORED = (30, 180, 60), (225, 40, 40), (160, 160, 160)   # anchor / region labels
# A perceptually ordered ramp (close to viridis): low values dark blue, high values yellow.
RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def text_width(text: str, size: int = 14) -> int:
    return int(font(size).getlength(text))


# ------------------------------------------------------------------------------------------------ images
def enlarge(image, side: int = MIN_SIDE) -> tuple[Image.Image, float]:
    """The image scaled up so its long side is at least `side` -> (picture, factor); pixels stay sharp
    (nearest neighbour) when the factor is large, so the grid the network saw can still be counted."""
    picture = to_pil(image)
    factor = side / max(picture.size)
    if factor <= 1:
        return picture.copy(), 1.0
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    resample = Image.Resampling.NEAREST if factor >= 4 else Image.Resampling.BILINEAR
    return picture.resize(size, resample), size[0] / picture.width


def draw_box(draw: ImageDraw.ImageDraw, box, colour, width: int = 2, dashed: bool = False) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not dashed:
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)
        return
    for (a, b) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        for start in np.arange(0, length, 8):
            s, e = start / max(length, 1e-9), min(start + 4, length) / max(length, 1e-9)
            draw.line([a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1]),
                       a[0] + e * (b[0] - a[0]), a[1] + e * (b[1] - a[1])], fill=colour, width=width)


def tag(draw: ImageDraw.ImageDraw, xy, text: str, colour, size: int = 12) -> None:
    """`text` on a small box of `colour` whose top-left corner is `xy` (kept inside the picture's top)."""
    x, y = max(0.0, float(xy[0])), max(0.0, float(xy[1]))
    left, top, right, bottom = draw.textbbox((x, y), text, font=font(size))
    draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x, y), text, fill=BLACK if luminance > 110 else WHITE, font=font(size))


def draw_boxes(picture: Image.Image, boxes, factor: float, *, labels=None, texts=None, colours=None,
               width: int = 2, dashed: bool = False) -> Image.Image:
    """Boxes in input pixels drawn on an enlarged picture; colour by label (or `colours`), `texts` as tags."""
    picture = picture.copy()
    draw = ImageDraw.Draw(picture)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * factor
    for k, box in enumerate(boxes):
        colour = colours[k] if colours is not None else colour_for(labels[k] if labels is not None else k)
        draw_box(draw, box, colour, width, dashed)
        if texts is not None and texts[k]:
            tag(draw, (box[0], box[1] - 14 if box[1] >= 14 else box[1]), texts[k], colour)
    return picture


def draw_grid(picture: Image.Image, rows: int, cols: int, colour=(255, 255, 255), width: int = 1,
              extent: tuple[float, float] | None = None) -> Image.Image:
    """A rows x cols grid of lines over the picture (or over its top-left `extent` = (width, height))."""
    picture = picture.copy()
    draw = ImageDraw.Draw(picture)
    w, h = extent or picture.size
    for r in range(rows + 1):
        draw.line([0, r * h / rows, w, r * h / rows], fill=colour, width=width)
    for c in range(cols + 1):
        draw.line([c * w / cols, 0, c * w / cols, h], fill=colour, width=width)
    return picture


# ------------------------------------------------------------------------------------------------ heat
def ramp(values, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Values of any shape -> uint8 RGB of the same shape + (3,), `lo` dark blue .. `hi` yellow."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1) * (len(RAMP) - 1)
    low = np.floor(t).astype(int).clip(0, len(RAMP) - 2)
    frac = (t - low)[..., None]
    return ((1 - frac) * RAMP[low] + frac * RAMP[low + 1]).round().astype(np.uint8)


def ramp_colours(values, lo: float | None = None, hi: float | None = None) -> list[tuple[int, int, int]]:
    """One RGB tuple per value of a 1-d array, on the same ramp."""
    return [tuple(int(v) for v in c) for c in ramp(np.asarray(values).reshape(-1), lo, hi)]


def rank_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` colours from dark (the first) to yellow (the last): draw worst first, best last, on top."""
    return ramp_colours(np.arange(count), 0, max(1, count - 1))


def heat_image(values, size: tuple[int, int], lo: float | None = None, hi: float | None = None,
               smooth: bool = False) -> Image.Image:
    """A [h, w] array as a coloured picture of `size` = (width, height): cells stay square blocks unless
    `smooth` (bilinear)."""
    picture = Image.fromarray(ramp(values, lo, hi), mode="RGB")
    return picture.resize(size, Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)


def blend(picture: Image.Image, values, alpha: float = 0.6, lo: float | None = None,
          hi: float | None = None) -> Image.Image:
    """The picture under a heat map of `values` [h, w] (any resolution, stretched over it) with opacity alpha."""
    heat = np.asarray(heat_image(values, picture.size, lo, hi, smooth=False), dtype=np.float64)
    base = np.asarray(picture.convert("RGB"), dtype=np.float64)
    return Image.fromarray(((1 - alpha) * base + alpha * heat).round().astype(np.uint8), mode="RGB")


def class_map_picture(class_map, size: tuple[int, int], background=(40, 40, 40)) -> Image.Image:
    """An [h, w] map of class indices (0 background) coloured like the class's boxes, blown up to `size`."""
    class_map = np.asarray(class_map)
    colours = np.array([background] + [colour_for(k) for k in range(1, int(class_map.max(initial=0)) + 1)],
                       dtype=np.uint8)
    return Image.fromarray(colours[class_map], mode="RGB").resize(size, Image.Resampling.NEAREST)


# ------------------------------------------------------------------------------------------------ layout
def labelled(picture: Image.Image, label: str, size: int = 14) -> Image.Image:
    """The picture with `label` written in a white band above it."""
    band = size + 8
    canvas = Image.new("RGB", (max(picture.width, text_width(label, size) + 8), picture.height + band), WHITE)
    canvas.paste(picture, (0, band))
    ImageDraw.Draw(canvas).text((4, 3), label, fill=BLACK, font=font(size))
    return canvas


def sheet(panels: list[tuple[str, Image.Image]], columns: int, gap: int = 8) -> Image.Image:
    """Labelled panels in a grid, `columns` wide, each cell as large as the largest panel."""
    tiles = [labelled(picture, label) for label, picture in panels]
    if not tiles:
        return Image.new("RGB", (MIN_SIDE, 40), WHITE)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    canvas = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), WHITE)
    for k, tile in enumerate(tiles):
        canvas.paste(tile, ((k % columns) * (w + gap), (k // columns) * (h + gap)))
    return canvas


def side_by_side(*pictures: Image.Image, gap: int = 16) -> Image.Image:
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1),
                               max(p.height for p in pictures)), WHITE)
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + gap
    return canvas


def stacked(*pictures: Image.Image, gap: int = 12) -> Image.Image:
    canvas = Image.new("RGB", (max(p.width for p in pictures),
                               sum(p.height for p in pictures) + gap * (len(pictures) - 1)), WHITE)
    y = 0
    for picture in pictures:
        canvas.paste(picture, (0, y))
        y += picture.height + gap
    return canvas


def bars(rows: list[tuple[str, float]], width: int = MIN_SIDE, colours=None, maximum: float | None = None,
         value_format: str = "{:.3f}") -> Image.Image:
    """A horizontal bar chart: one (label, value) per row, bars scaled to `maximum` (default: the largest)."""
    size, line = 14, 22
    label_width = max([text_width(label, size) for label, _ in rows] + [40]) + 12
    top = max([abs(v) for _, v in rows] + [1e-12]) if maximum is None else maximum
    canvas = Image.new("RGB", (max(width, label_width + 160), line * max(1, len(rows)) + 8), WHITE)
    draw = ImageDraw.Draw(canvas)
    span = canvas.width - label_width - 80
    for k, (label, value) in enumerate(rows):
        y = 4 + k * line
        draw.text((4, y + 2), label, fill=BLACK, font=font(size))
        length = span * min(1.0, abs(value) / top) if top > 0 else 0
        colour = colours[k] if colours is not None else (59, 82, 139)
        draw.rectangle([label_width, y + 3, label_width + max(1, length), y + line - 5], fill=colour)
        draw.text((label_width + length + 6, y + 2), value_format.format(value), fill=BLACK, font=font(size))
    return canvas


def matrix(values, row_labels: list[str], column_labels: list[str], *, cell: int = 16, lo: float | None = None,
           hi: float | None = None) -> Image.Image:
    """A [R, C] array as a grid of coloured cells with a label per row (left) and per column (top)."""
    values = np.asarray(values, dtype=np.float64)
    rows, columns = values.shape
    left = max([text_width(label, 12) for label in row_labels] + [10]) + 8
    top = 20
    canvas = Image.new("RGB", (left + columns * cell + 4, top + rows * cell + 4), WHITE)
    canvas.paste(heat_image(values, (columns * cell, rows * cell), lo, hi), (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels[:rows]):
        draw.text((4, top + r * cell + (cell - 12) // 2), label, fill=BLACK, font=font(12))
    for c, label in enumerate(column_labels[:columns]):
        draw.text((left + c * cell + 2, 3), label, fill=BLACK, font=font(12))
    return canvas


def legend(entries: list[tuple[tuple[int, int, int], str]], width: int = MIN_SIDE) -> Image.Image:
    """Colour swatches with their names, wrapped onto as many lines as `width` needs."""
    line, places, x, y = 24, [], 4, 0
    for colour, name in entries:
        span = 16 + text_width(name) + 18
        if x > 4 and x + span > width:
            x, y = 4, y + line
        places.append((x, y, colour, name))
        x += span
    canvas = Image.new("RGB", (width, y + line), WHITE)
    draw = ImageDraw.Draw(canvas)
    for x, y, colour, name in places:
        draw.rectangle([x, y + 6, x + 12, y + 18], fill=colour, outline=BLACK)
        draw.text((x + 16, y + 4), name, fill=BLACK, font=font(14))
    return canvas


def text_picture(lines: list[str], width: int = MIN_SIDE, size: int = 14) -> Image.Image:
    line = size + 6
    canvas = Image.new("RGB", (width, line * max(1, len(lines)) + 8), WHITE)
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(lines):
        draw.text((6, 4 + k * line), text, fill=BLACK, font=font(size))
    return canvas


# ------------------------------------------------------------------------------------------------ the page
def _wrap(text: str, width: int, size: int) -> list[str]:
    characters = max(20, int(width / (0.55 * size)))
    return [line for paragraph in text.split("\n") for line in (textwrap.wrap(paragraph, characters) or [""])]


def page(body: Image.Image, title: str, caption: str = "", min_side: int = MIN_SIDE) -> Image.Image:
    """The picture of one step: its title line (wrapped) above `body`, the caption below, on white, at least
    `min_side` pixels wide."""
    width = max(min_side, body.width + 24)
    title_lines, caption_lines = _wrap(title, width - 24, 17), _wrap(caption, width - 24, 14) if caption else []
    title_height, caption_height = 23 * len(title_lines) + 16, (19 * len(caption_lines) + 12) if caption_lines else 0
    canvas = Image.new("RGB", (width, title_height + body.height + caption_height + 12), WHITE)
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((12, 8 + 23 * k), line, fill=BLACK, font=font(17))
    draw.line([12, title_height - 4, width - 12, title_height - 4], fill=GREY, width=1)
    canvas.paste(body, ((width - body.width) // 2, title_height + 4))
    for k, line in enumerate(caption_lines):
        draw.text((12, title_height + body.height + 12 + 19 * k), line, fill=(60, 60, 60), font=font(14))
    return canvas
