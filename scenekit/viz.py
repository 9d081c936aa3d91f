"""Pictures: boxes with class names and scores, instance masks as translucent overlays, semantic maps with a
legend, captions under the image, attention maps per word, precision-recall and training curves.

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


# ------------------------------------------------------------------------------------------------ legends, text
def _text_width(font, text: str) -> int:
    return int(font.getlength(text))


def _with_legend(picture: Image.Image, entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """`picture` with a white column on its right listing (colour swatch, name) rows."""
    font = ImageFont.load_default()
    line, swatch = 14, 10
    width = swatch + 12 + max([_text_width(font, name) for _, name in entries] + [40])
    canvas = Image.new("RGB", (picture.width + width, max(picture.height, line * len(entries) + 8)),
                       (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + 4
    for row, (colour, name) in enumerate(entries):
        y = 4 + row * line
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y - 1), name, fill=(0, 0, 0), font=font)
    return canvas


def _wrap(font, text: str, width: int) -> list[str]:
    """Greedy word wrap to lines no wider than `width` pixels (a single over-long word gets its own line)."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and _text_width(font, candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current] if current else lines


# ------------------------------------------------------------------------------------------------ semantic maps
def draw_semantic(image, class_map, names: dict | None = None, alpha: float = 0.5, legend: bool = True,
                  ignore_index: int = 255) -> Image.Image:
    """Tint each category's pixels in its colour (the colour its boxes get) and list the categories present
    in a legend on the right. `class_map` [H, W] holds category ids: 0 background (left as it is),
    `ignore_index` (VOC's 255 border) white."""
    array = np.asarray(to_pil(image), dtype=np.float32)
    class_map = np.asarray(class_map)
    if class_map.shape != array.shape[:2]:
        raise ValueError(f"class_map has shape {class_map.shape}, the image {array.shape[:2]}")
    present = [int(c) for c in np.unique(class_map) if c != 0]
    colours = {c: (255, 255, 255) if c == ignore_index else colour_for(c) for c in present}
    for category in present:
        where = class_map == category
        array[where] = (1 - alpha) * array[where] + alpha * np.asarray(colours[category], dtype=np.float32)
    picture = Image.fromarray(array.round().astype(np.uint8), mode="RGB")
    if not legend:
        return picture
    entries = [((255, 255, 255), "background")]
    entries += [(colours[c], "ignore" if c == ignore_index else str((names or {}).get(c, c))) for c in present]
    return _with_legend(picture, entries)


# ------------------------------------------------------------------------------------------------ captions
def draw_caption(image, caption: str, *, padding: int = 4) -> Image.Image:
    """The image with `caption` written in a white band under it, wrapped to the image's width."""
    picture = to_pil(image)
    font = ImageFont.load_default()
    lines = _wrap(font, str(caption), max(1, picture.width - 2 * padding)) or [""]
    line = 14
    canvas = Image.new("RGB", (picture.width, picture.height + line * len(lines) + 2 * padding), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(lines):
        draw.text((padding, picture.height + padding + row * line), text, fill=(0, 0, 0), font=font)
    return canvas


# ------------------------------------------------------------------------------------------------ attention
def attention_heatmap(alpha, height: int, width: int) -> np.ndarray:
    """One word's attention weights over a g x g (or h x w) grid of image cells -> [height, width] in [0, 1],
    bilinearly upsampled and scaled so the most attended pixel is 1 (Xu et al. 2015, fig. 2 draws them so)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim == 1:
        side = int(round(np.sqrt(alpha.size)))
        if side * side != alpha.size:
            raise ValueError(f"alpha has {alpha.size} weights; a flat alpha must cover a square grid")
        alpha = alpha.reshape(side, side)
    if alpha.ndim != 2 or alpha.size == 0 or not np.isfinite(alpha).all():
        raise ValueError(f"alpha must be a finite [g, g] grid, got shape {alpha.shape}")
    grid = Image.fromarray(alpha.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    heat = np.clip(np.asarray(grid, dtype=np.float64), 0, None)
    return heat / max(heat.max(), 1e-12)


def draw_attention(image, words, alphas, *, cell: int = 96, columns: int = 5) -> Image.Image:
    """A sheet of panels: the image, then for every word the image lit by that word's attention map (dark
    where it was not looked at), the word written above its panel. `alphas` [n_words, L] (L = g * g)."""
    words = [str(w) for w in words]
    alphas = np.asarray(alphas, dtype=np.float64).reshape(len(words), -1) if words else np.zeros((0, 1))
    base = np.asarray(to_pil(image).resize((cell, cell), Image.BILINEAR), dtype=np.float64)
    panels = [("<image>", base)]
    for word, alpha in zip(words, alphas):
        heat = attention_heatmap(alpha, cell, cell)[..., None]
        panels.append((word, base * (0.2 + 0.8 * heat)))
    label = 14
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (word, pixels) in enumerate(panels):
        x, y = (k % columns) * cell, (k // columns) * (cell + label)
        sheet.paste(Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), (x, y + label))
        draw.text((x + 2, y + 1), word, fill=(0, 0, 0))
    return sheet


# ------------------------------------------------------------------------------------------------ predictions
READABLE_SIDE = 512      # pictures are drawn at least this long on their long side, so labels stay legible


def enlarge(image, long_side: int | None = READABLE_SIDE) -> tuple[Image.Image, float]:
    """(the image scaled up so its long side is at least `long_side`, the scale factor); never scaled down.
    Upscaled with nearest neighbours, so the pixels the model saw stay visible as pixels."""
    picture = to_pil(image)
    if not long_side or max(picture.size) >= long_side:
        return picture, 1.0
    factor = long_side / max(picture.size)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.NEAREST), size[0] / picture.width


def enlarge_map(array, size: tuple[int, int]) -> np.ndarray:
    """A [..., H, W] label map or mask stack resized to (width, height) `size` by nearest neighbours."""
    array = np.asarray(array)
    flat = array.reshape(-1, *array.shape[-2:])
    resized = [np.asarray(Image.fromarray(m.astype(np.int32), mode="I").resize(size, Image.NEAREST))
               for m in flat]
    return np.stack(resized).reshape(*array.shape[:-2], size[1], size[0]).astype(array.dtype) if resized else \
        np.zeros((*array.shape[:-2], size[1], size[0]), array.dtype)


def draw_prediction(image, found: dict, names: dict | None = None, score_threshold: float = 0.3,
                    long_side: int | None = READABLE_SIDE) -> Image.Image:
    """Whatever a recipe's `predict` returned for one image, drawn: the semantic map (tinted, legend), the
    instance masks, the boxes scoring at least `score_threshold` (the best one always), the caption under it.
    Small images are first enlarged to `long_side` px (None: drawn at their own size), boxes and masks with them."""
    picture, factor = enlarge(image, long_side)
    if factor != 1.0:
        found = dict(found)
        for key in ("semantic", "masks"):
            if found.get(key) is not None and np.asarray(found[key]).size:
                found[key] = enlarge_map(found[key], picture.size)
        if found.get("boxes") is not None:
            found["boxes"] = np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4) * factor
    if found.get("semantic") is not None:
        picture = draw_semantic(picture, np.asarray(found["semantic"]), names, legend=False)
    scores = np.asarray(found.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
    boxes = np.asarray(found.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(found.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    shown = (scores >= score_threshold) | (np.arange(len(scores)) == 0)
    if found.get("masks") is not None and len(scores) and found.get("semantic") is None:
        picture = draw_masks(picture, np.asarray(found["masks"])[shown], labels[shown])
    if len(scores) and found.get("semantic") is None:
        picture = draw_boxes(picture, boxes[shown], labels[shown], scores[shown], names=names)
    if found.get("semantic") is not None:
        present = [int(c) for c in np.unique(np.asarray(found["semantic"])) if c != 0]
        entries = [((255, 255, 255), "background")] + [(colour_for(c), str((names or {}).get(c, c)))
                                                        for c in present]
        picture = _with_legend(picture, entries)
    if found.get("caption") is not None:
        picture = draw_caption(picture, found["caption"])
    return picture


# ------------------------------------------------------------------------------------------------ plots
def plot_precision_recall(curves: dict, path, names: dict | None = None, title: str = ""):
    """Per-class precision-recall curves, `{category_id: PRCurve}` as `metrics.detection.precision_recall_curves`
    gives them, drawn into a PNG at `path`: one step line per category, its AP in the legend beside the axes.
    Returns the path. Needs matplotlib."""
    from pathlib import Path

    plt = _pyplot()
    path = Path(path)
    figure, axes = plt.subplots(figsize=(8.5, 5))              # 850 x 500 px, the legend beside the axes
    for category, curve in curves.items():
        name = (names or {}).get(category, str(category))
        recall = np.r_[0.0, curve.recall]
        precision = np.r_[curve.precision[0] if len(curve.precision) else 0.0, curve.precision]
        axes.step(recall, precision, where="post", label=f"{name} (AP {curve.ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def read_training_log(csv_path) -> list[dict]:
    """The engine's metrics.csv (one row per epoch: phase, epoch, step, lr, seconds, train_<loss>..., then the
    recipe's validation metrics) with numbers parsed; empty cells become None."""
    import csv
    from pathlib import Path

    from scenekit.errors import DataError

    path = Path(csv_path)
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read the training log ({error})", file=str(path)) from None
    if not rows or "epoch" not in rows[0]:
        raise DataError("not a metrics.csv of `scenekit train` (no rows or no 'epoch' column)", file=str(path))
    parsed = []
    for index, row in enumerate(rows):
        values = {}
        for key, text in row.items():
            if key == "phase" or key is None:
                values[key] = text
                continue
            try:
                values[key] = float(text) if text not in ("", None) else None
            except ValueError:
                raise DataError(f"{text!r} is not a number", file=str(path), record=f"row {index + 1}",
                                field=key) from None
        parsed.append(values)
    return parsed


NOT_PLOTTED = ("phase", "epoch", "step", "lr", "seconds")


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'scenekit[plots]'") from None
    return plt


def _columns(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(training loss columns, validation metric columns) of a parsed metrics.csv, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in NOT_PLOTTED and k is not None]
    return [c for c in columns if c.startswith("train_")], [c for c in columns if not c.startswith("train_")]


def best_epoch(rows: list[dict], metric: str | None, mode: str = "max") -> int | None:
    """The epoch whose `metric` is best (`mode` "max" or "min"; the first of equals, as the engine keeps the
    first best checkpoint), or None when the log has no such values."""
    values = [(row["epoch"], row.get(metric)) for row in rows if metric and row.get(metric) is not None]
    if not values:
        return None
    pick = max if mode == "max" else min
    best = pick(v for _, v in values)
    return int(next(e for e, v in values if v == best))


def plot_training_curves(csv_path, path, title: str = "", *, best_metric: str | None = None,
                         best_mode: str = "max"):
    """Two panels from metrics.csv against the epoch: every training loss term (train_*) and every validation
    metric (every other numeric column but step, lr and seconds). Phase boundaries are dotted lines; the epoch
    with the best `best_metric` (the one best.pt holds) is marked by a dashed line. Legends sit outside the
    axes, so no curve is hidden under them; 1300 x 480 px."""
    from pathlib import Path

    plt = _pyplot()
    rows = read_training_log(csv_path)
    epochs = [row["epoch"] for row in rows]
    losses, metrics = _columns(rows)
    best = best_epoch(rows, best_metric, best_mode)
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for axis, group, label in ((axes[0], losses, "training loss"), (axes[1], metrics, "validation")):
        for column in group:
            points = [(e, row.get(column)) for e, row in zip(epochs, rows) if row.get(column) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=column.removeprefix("train_"))
        for k in range(1, len(rows)):
            if rows[k].get("phase") != rows[k - 1].get("phase"):
                axis.axvline(epochs[k] - 0.5, color="grey", linestyle=":")
        if best is not None:
            axis.axvline(best, color="black", linestyle="--", linewidth=1, label=f"best {best_metric} (epoch {best})")
        axis.set(xlabel="epoch", title=label)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_runs(csv_paths, path, names: list[str] | None = None):
    """Overlay several runs (their metrics.csv) column by column: one panel per loss term or validation metric
    that any run logged, one line per run (`scenekit plot RUN...`). Legend outside, under the panels."""
    from pathlib import Path

    plt = _pyplot()
    logs = [read_training_log(p) for p in csv_paths]
    names = names or [Path(p).parent.name or str(p) for p in csv_paths]
    columns: list[str] = []
    for rows in logs:
        losses, metrics = _columns(rows)
        columns += [c for c in losses + metrics if c not in columns]
    if not columns:
        raise ValueError("the runs logged no loss or metric columns to plot")
    per_row = min(3, len(columns))
    grid_rows = -(-len(columns) // per_row)
    figure, axes = plt.subplots(grid_rows, per_row, figsize=(4.6 * per_row, 3.4 * grid_rows + 0.8), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        for run, rows in zip(names, logs):
            points = [(row["epoch"], row.get(column)) for row in rows if row.get(column) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=run)
        axis.set(xlabel="epoch", title=column)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(names), 4), fontsize="small")
    figure.tight_layout(rect=(0, 0.5 / (3.4 * grid_rows + 0.8), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
