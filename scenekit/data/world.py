"""The embedded world: seeded scenes of coloured shapes on textured backgrounds, annotated for every task.

Each image holds 0 to 8 objects of six categories (circle, square, triangle, star, ring, cross) in seven
colours and three sizes, drawn one after another so that later objects occlude earlier ones. Every image
comes with what the chapter's tasks need:

- boxes and instance masks of the *visible* part of each object (detection, instance segmentation), with the
  mask areas COCO uses to bucket objects into small (< 32^2 px), medium and large (> 96^2 px);
- a semantic class map, 0 for background (semantic segmentation, Long et al. 2015);
- five lower-case captions from a small grammar of attributes, counts and spatial relations
  (captioning, as the five references per image of COCO captions, Chen et al. 2015);
- multiple-choice questions with four answers, exactly one right (Visual7W, Zhu et al. 2016), whose right
  answers are spread evenly within each kind of question (no "zero" for most counts), so that a model has to
  look at the picture rather than learn the usual answer.

Masks are exact: a shape is a set of pixel centres that pass a vectorised inside-test (a distance or
half-plane test on the coordinate grid of the object's bounding square), its colour is written to exactly
those pixels, and the visible mask is what no later object overwrote. An object that would leave an earlier
one less than `MIN_VISIBLE` visible is not drawn at all, so no half-hidden, unannotated object sits in the
picture. Randomness comes from one generator per image, seeded by `(seed, split, index)`, so the three splits
are disjoint streams and image `i` does not depend on how many images are generated.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scenekit.data.records import Dataset, Question, Record
from scenekit.masks import compress, rle_encode

CATEGORIES = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "ring", 6: "cross"}
PLURALS = {name: name + ("es" if name.endswith(("s", "x")) else "s") for name in CATEGORIES.values()}

# Saturated colours, at least 80 apart (RGB distance) from each other and far from the muted backgrounds.
# Channels stay in 25..235 so that jitter (+-8) and texture noise (+-12) never clip: inside an object, the
# noise is grey, so R - G and G - B are exactly constant, which the tests use to check masks pixel by pixel.
COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 175, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (145, 45, 190),
    "orange": (235, 130, 25),
    "white": (235, 235, 235),
}
COLOUR_JITTER = 8
SIZES = ("small", "medium", "large")
BACKGROUNDS = {"gradient": "shaded", "stripes": "striped", "noise": "noisy"}   # kind -> caption word
SPLITS = ("train", "val", "test")
MIN_VISIBLE = 0.3                 # an object must keep at least this fraction of its pixels visible
QUESTIONS_PER_IMAGE = 4
CAPTIONS_PER_IMAGE = 5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "centre": "in the centre"}
EXISTENCE_CHOICES = ("no", "yes, one", "yes, two", "yes, three or more")
# Questions pick their answer first (`_pick_answer`); these answers, which nearly every picture offers (most
# shapes are absent, most pictures hold a single one of a shape, big objects sit in the middle), weigh less
# than the others' 1 so that each kind's answers come out near uniform (tests/test_world.py checks).
ANSWER_WEIGHTS = {"count": {0: 0.4, 1: 0.6}, "existence": {"no": 0.4, "yes, one": 0.5},
                  "position": {"in the centre": 0.4}}

# Pixel area ranges per size class, as COCO buckets them (small < 32^2 <= medium < 96^2 <= large) but kept
# clear of the boundaries; the bounding square's side follows from the shape's fill fraction.
_AREA_RANGES = {"small": (120.0, 800.0), "medium": (1400.0, 7000.0), "large": (10500.0, 24000.0)}
_SIZE_PROBS = (0.35, 0.45, 0.20)
# Fraction of the bounding square (side 2r) each shape covers, from the inside-tests in `shape_mask`.
_FILL = {"circle": math.pi / 4, "square": 0.64, "triangle": 3 * math.sqrt(3) / 16,
         "star": 5 * math.cos(math.radians(72)) / math.cos(math.radians(36)) * math.sin(math.radians(36)) / 4,
         "ring": math.pi / 4 * (1 - 0.55 ** 2), "cross": (2 * 1.9 * 0.6 - 0.6 ** 2) / 4}
_MIN_SIDE = 10.0
_PLACEMENT_TRIES = 12


# ------------------------------------------------------------------------------------------ shapes
def _half_plane(dx, dy, normal_angle, distance):
    """Pixels on the centre's side of the line at `distance` from the centre with outward normal angle.

    `dx cos + dy sin <= d` is rearranged to `dx cos <= d - dy sin` so that the only [h, w] operation is one
    broadcast comparison of a row against a column.
    """
    return dx * math.cos(normal_angle) <= distance - dy * math.sin(normal_angle)    # [1, w] vs [h, 1] -> [h, w]


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Inside-test of one shape centred at the origin, on pixel-centre offsets `dx` [1, w] and `dy` [h, 1].

    Convex shapes are intersections of half-planes, the star is "inside at least 4 of the 5 lines of its
    pentagram", the circle and ring are distance tests; all vectorised over the grid, no per-pixel loop.
    Every shape fits in the circle of `radius` for the rotations the generator uses, so the bounding square
    of side `2 * radius + 2` holds it. Returns a boolean `[h, w]` mask.
    """
    r = radius
    if shape == "circle":
        return dx * dx <= r * r - dy * dy                                 # [1, w] vs [h, 1] -> [h, w]
    if shape == "ring":
        d2 = dx * dx + dy * dy                                            # [h, w]
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":                                                 # half-side 0.8 r: fits for |angle| <= 15 deg
        inside = _half_plane(dx, dy, angle, 0.8 * r)
        for k in (1, 2, 3):
            inside &= _half_plane(dx, dy, angle + k * math.pi / 2, 0.8 * r)
        return inside
    if shape == "triangle":                                               # equilateral, circumradius r, apex up
        inside = _half_plane(dx, dy, angle + math.pi / 2, 0.5 * r)        # bottom edge; the inradius is r / 2
        for k in (1, 2):
            inside &= _half_plane(dx, dy, angle + math.pi / 2 + k * 2 * math.pi / 3, 0.5 * r)
        return inside
    if shape == "cross":                                                  # two bars, 1.9 r long and 0.6 r wide
        bars = []
        for long_axis in (angle, angle + math.pi / 2):
            bar = _half_plane(dx, dy, long_axis, 0.95 * r) & _half_plane(dx, dy, long_axis + math.pi, 0.95 * r)
            bar &= _half_plane(dx, dy, long_axis + math.pi / 2, 0.3 * r)
            bar &= _half_plane(dx, dy, long_axis - math.pi / 2, 0.3 * r)
            bars.append(bar)
        return bars[0] | bars[1]
    if shape == "star":
        # The five lines of a pentagram join every second point (points at radius r, first one up). Inside
        # all five is the central pentagon, inside exactly four is one of the points; the notches between
        # points and everything beyond lie outside two or more. Each line is r cos(72 deg) from the centre.
        count = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=np.uint8)
        for k in range(5):
            normal = angle - math.pi / 2 + math.radians(72 * k + 72)      # halfway between points k and k+2
            count += _half_plane(dx, dy, normal, r * math.cos(math.radians(72)))
        return count >= 4
    raise ValueError(f"unknown shape {shape!r}; expected one of {sorted(_FILL)}")


def _rasterise(shape, cx, cy, radius, angle, height, width):
    """The shape's pixels in its bounding window: (row slice, column slice, boolean mask of that window)."""
    x0, x1 = max(0, int(math.floor(cx - radius - 1))), min(width, int(math.ceil(cx + radius + 1)))
    y0, y1 = max(0, int(math.floor(cy - radius - 1))), min(height, int(math.ceil(cy + radius + 1)))
    dx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx))[None, :]    # pixel centres, [1, w]
    dy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy))[:, None]    # [h, 1]
    return slice(y0, y1), slice(x0, x1), shape_mask(shape, dx, dy, radius, angle)


# ------------------------------------------------------------------------------------------ backgrounds
_TILE_SIDE = 512
_tiles: dict[str, np.ndarray] = {}


def _texture_tile(kind: str) -> np.ndarray:
    """One fixed [512, 512] texture, made once from a fixed seed (so output never depends on cache state).

    "fine": per-pixel grey noise, int16 with sd 4 clipped to +-12. "blotches": smooth noise in [-1, 1],
    float32, a 32 x 32 random grid bilinearly upsampled. Every image takes a random crop instead of drawing
    fresh noise, which would cost more than the rest of the image.
    """
    if kind not in _tiles:
        rng = np.random.default_rng(20240601 if kind == "fine" else 20240602)
        if kind == "fine":
            noise = np.clip(rng.normal(0.0, 4.0, (_TILE_SIDE, _TILE_SIDE)), -12.0, 12.0)
            _tiles[kind] = np.rint(noise).astype(np.int16)
        else:
            coarse = rng.uniform(-1.0, 1.0, size=(33, 33))
            position = np.linspace(0.0, 32.0, _TILE_SIDE)
            lower = np.minimum(position.astype(np.int64), 31)
            frac = position - lower
            tall = coarse[lower] * (1 - frac[:, None]) + coarse[lower + 1] * frac[:, None]     # [512, 33]
            smooth = tall[:, lower] * (1 - frac[None, :]) + tall[:, lower + 1] * frac[None, :]   # [512, 512]
            _tiles[kind] = (smooth / np.abs(smooth).max()).astype(np.float32)
    return _tiles[kind]


def _texture_crop(rng, kind: str, height: int, width: int) -> np.ndarray:
    """A random [H, W] crop of a texture tile (tiled first for images larger than the tile)."""
    tile = _texture_tile(kind)
    reps = (-(-height // _TILE_SIDE), -(-width // _TILE_SIDE))
    if reps != (1, 1):
        tile = np.tile(tile, reps)
    oy = int(rng.integers(0, tile.shape[0] - height + 1))
    ox = int(rng.integers(0, tile.shape[1] - width + 1))
    return tile[oy:oy + height, ox:ox + width]


def make_background(rng, height: int, width: int, kind: str) -> np.ndarray:
    """A textured background as int16 colour planes [3, H, W]: a gradient, stripes or blotchy noise.

    Colours are muted mid-tones (grey level 70..150, tint +-15, everything kept in 35..180), so no background
    pixel is mistaken for one of the saturated object colours. The image is built plane by plane: numpy is
    several times slower on interleaved [H, W, 3] arrays, so the planes are interleaved once, at the end.
    """
    base = rng.uniform(70.0, 150.0) + rng.uniform(-15.0, 15.0, size=3)
    theta = rng.uniform(0.0, math.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(theta))     # [W] distance along theta
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(theta))    # [H]
    # Smooth low-contrast blotches, stronger where they are the whole texture.
    amplitude = rng.uniform(10.0, 18.0) if kind == "noise" else rng.uniform(3.0, 8.0)
    blotches = _texture_crop(rng, "blotches", height, width) * np.float32(amplitude)   # [H, W]
    planes = np.empty((3, height, width), dtype=np.float32)
    if kind == "gradient":                                                # base -> base + step along theta
        step = rng.uniform(-50.0, 50.0) + rng.uniform(-10.0, 10.0, size=3)
        xs -= xs.min()
        ys -= ys.min()
        scale = 1.0 / max(float(xs.max() + ys.max()), 1.0)
        for c in range(3):
            k = np.float32(step[c] * scale)
            np.add((xs * k)[None, :], (ys * k + np.float32(base[c]))[:, None], out=planes[c])
            planes[c] += blotches
    elif kind == "stripes":                                               # two tones, alternating half-periods
        step = rng.choice([-1.0, 1.0]) * rng.uniform(18.0, 32.0)
        period = rng.uniform(8.0, 28.0)
        half_periods = (xs[None, :] + (ys + np.float32(width + height))[:, None]) * np.float32(2.0 / period)
        blotches += (half_periods.astype(np.int32) & 1) * np.float32(step)
        for c in range(3):
            np.add(blotches, np.float32(base[c]), out=planes[c])
    elif kind == "noise":
        for c in range(3):
            np.add(blotches, np.float32(base[c]), out=planes[c])
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {sorted(BACKGROUNDS)}")
    return np.clip(planes, 35.0, 180.0, out=planes).astype(np.int16)


# ------------------------------------------------------------------------------------------ scenes
@dataclass
class SceneObject:
    """One drawn object: its attributes and its visible pixels."""

    category_id: int
    colour: str
    size: str                     # "small" | "medium" | "large": COCO's bucket of the unoccluded area
    full_area: int                # pixels before occlusion
    columns: tuple[int, int] = (0, 0)   # [x0, x1) columns of the image the object was drawn in
    strip: np.ndarray | None = None     # [H, x1 - x0] bool visible pixels within those columns
    box: np.ndarray | None = None       # [4] xyxy tight box of the visible pixels
    image_width: int = 0
    centre: tuple[float, float] = (0.0, 0.0)    # (x, y) of the shape, continuous pixel coordinates
    radius: float = 0.0
    angle: float = 0.0

    @property
    def shape(self) -> str:
        return CATEGORIES[self.category_id]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.strip))

    @property
    def mask(self) -> np.ndarray:
        """[H, W] bool visible pixels."""
        x0, x1 = self.columns
        full = np.zeros((self.strip.shape[0], self.image_width), dtype=bool)
        full[:, x0:x1] = self.strip
        return full

    def rle(self) -> dict:
        """The visible mask as compressed COCO RLE, encoding only the object's columns: the columns left and
        right of them are all background, which only lengthens the first and last run of zeros."""
        height = self.strip.shape[0]
        x0, x1 = self.columns
        counts = rle_encode(self.strip)["counts"]                          # starts with a run of zeros
        counts[0] += x0 * height
        after = (self.image_width - x1) * height
        if len(counts) % 2 == 1:                                           # ends with a run of zeros
            counts[-1] += after
        elif after:
            counts.append(after)
        return compress({"size": [height, self.image_width], "counts": counts})


@dataclass
class Scene:
    """One generated picture and its objects, before it becomes a `Record`."""

    image: np.ndarray             # [H, W, 3] uint8
    background: str               # a key of BACKGROUNDS
    objects: list[SceneObject] = field(default_factory=list)    # in drawing order
    instance_map: np.ndarray | None = None                      # [H, W] int16: object index, -1 background


def size_of_area(area: float) -> str:
    """COCO's size bucket of an area in pixels: small below 32^2, large from 96^2 (Lin et al. 2014)."""
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def _radius(u: float, size_class: str, shape: str, height: int, width: int, single_object: bool) -> float:
    """Radius of the shape's bounding circle from a uniform number `u`: the shape's area is log-uniform in
    its size class's range (or the shape spans half to most of the image for `single_object`)."""
    if single_object:
        return (0.25 + 0.17 * u) * min(height, width)
    low, high = _AREA_RANGES[size_class]
    area = low * (high / low) ** u
    side = math.sqrt(area / _FILL[shape])
    return min(max(side / 2, _MIN_SIDE / 2), 0.45 * min(height, width))


def generate_scene(rng: np.random.Generator, height: int, width: int, *, num_objects: int,
                   single_object: bool = False) -> Scene:
    """Draw one scene. Objects that cannot be placed without hiding an earlier one are skipped."""
    background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    planes = make_background(rng, height, width, background)             # [3, H, W] int16
    instance_map = np.full((height, width), -1, dtype=np.int16)           # index of the object on top
    objects: list[SceneObject] = []
    visible: list[int] = []                                               # visible pixels per object
    size_cdf = np.cumsum(_SIZE_PROBS)
    picks = rng.random((num_objects, 3))
    specs = [(1 + int(pick[0] * len(CATEGORIES)), tuple(COLOURS)[int(pick[1] * len(COLOURS))],
              "large" if single_object else SIZES[int(np.searchsorted(size_cdf, pick[2], side="right"))])
             for pick in picks]
    if rng.random() < 0.5:
        # Half the scenes are drawn from large to small, as a photographer sees small things in front of big
        # ones; it also makes fewer placements fail the visibility rule.
        specs.sort(key=lambda spec: -SIZES.index(spec[2]))
    jitters = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(num_objects, 3))
    for (category_id, colour, size_class), jitter in zip(specs, jitters):
        shape = CATEGORIES[category_id]
        value = np.add(COLOURS[colour], jitter)
        for attempt in range(_PLACEMENT_TRIES):
            u = rng.random(4)
            radius = _radius(u[0], size_class, shape, height, width, single_object)
            if attempt >= _PLACEMENT_TRIES // 2 and not single_object:    # crowded: try smaller
                radius = max(_MIN_SIDE / 2, radius * 0.6)
            cx = radius + 1 + u[1] * (width - 2 * radius - 2)
            cy = radius + 1 + u[2] * (height - 2 * radius - 2)
            angle = math.pi * (2 * u[3] - 1) if shape == "star" else 0.26 * (2 * u[3] - 1)   # +-15 deg
            rows, cols, local = _rasterise(shape, cx, cy, radius, angle, height, width)
            full_area = int(np.count_nonzero(local))
            if full_area < 30:
                continue
            if objects:
                covered = instance_map[rows, cols][local]                 # earlier objects under the new one
                lost = np.bincount(covered + 1, minlength=len(objects) + 1)[1:]
                left = np.asarray(visible) - lost
                if np.any(left < MIN_VISIBLE * np.array([o.full_area for o in objects])):
                    continue
                # Two overlapping objects of one colour would merge into one blob: keep colours apart.
                if any(lost[j] and objects[j].colour == colour for j in range(len(objects))):
                    continue
                visible = left.tolist()
            instance_map[rows, cols][local] = len(objects)
            for c in range(3):
                planes[c, rows, cols][local] = value[c]
            objects.append(SceneObject(category_id, colour, size_of_area(full_area), full_area,
                                       (cols.start, cols.stop), image_width=width, centre=(cx, cy),
                                       radius=radius, angle=angle))
            visible.append(full_area)
            break
    planes += _texture_crop(rng, "fine", height, width)                   # texture on objects too
    np.clip(planes, 0, 255, out=planes)
    image = np.stack([plane.astype(np.uint8) for plane in planes], axis=-1)    # [3, H, W] -> [H, W, 3]
    for index, obj in enumerate(objects):
        x0, x1 = obj.columns
        obj.strip = instance_map[:, x0:x1] == index                        # [H, x1 - x0]
        ys, xs = np.flatnonzero(obj.strip.any(axis=1)), np.flatnonzero(obj.strip.any(axis=0))
        obj.box = np.array([x0 + xs[0], ys[0], x0 + xs[-1] + 1, ys[-1] + 1], dtype=np.float64)
    return Scene(image=image, background=background, objects=objects, instance_map=instance_map)


# ------------------------------------------------------------------------------------------ geometry words
def position_of(box, width: int, height: int) -> str | None:
    """Where a box centre lies in the image: "left", "right", "top", "bottom", "centre", or None if unclear.

    Near a diagonal or between the centre and an edge region the answer would be arguable, so there is none.
    """
    dx = (box[0] + box[2]) / 2 / width - 0.5
    dy = (box[1] + box[3]) / 2 / height - 0.5
    if max(abs(dx), abs(dy)) < 0.1:
        return "centre"
    if max(abs(dx), abs(dy)) < 0.2:
        return None
    if abs(dx) > 1.5 * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) > 1.5 * abs(dx):
        return "top" if dy < 0 else "bottom"
    return None


def relation_of(box_a, box_b) -> str | None:
    """Spatial relation of object a to object b from their box centres, or None when it is not clear-cut.

    "next to" when the boxes are disjoint and close; otherwise the dominant axis (twice the other) decides
    "to the left of" / "to the right of" / "above" / "below".
    """
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    gap_x = max(box_a[0], box_b[0]) - min(box_a[2], box_b[2])            # > 0: disjoint along x
    gap_y = max(box_a[1], box_b[1]) - min(box_a[3], box_b[3])
    sides = min(box_a[2] - box_a[0] + box_a[3] - box_a[1], box_b[2] - box_b[0] + box_b[3] - box_b[1]) / 2
    if 0 < max(gap_x, gap_y) <= max(3.0, 0.25 * sides):
        return "next to"
    dx, dy = ax - bx, ay - by
    if abs(dx) > 2 * abs(dy) and abs(dx) > 4:
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) > 2 * abs(dx) and abs(dy) > 4:
        return "above" if dy < 0 else "below"
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _describe(obj: SceneObject, *, with_size: bool) -> str:
    """'small red star' / 'blue ring' (medium objects get no size word; the size is of the whole shape,
    occluded or not)."""
    words = ([obj.size] if with_size and obj.size != "medium" else []) + [obj.colour, obj.shape]
    return " ".join(words)


def _count_phrase(count: int, shape: str) -> str:
    return f"{NUMBER_WORDS[count]} {shape if count == 1 else PLURALS[shape]}"


# ------------------------------------------------------------------------------------------ captions
def make_captions(rng, scene: Scene, count: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`count` distinct lower-case captions, true of the scene, drawn from several kinds of template.

    Kinds: object counts, lists of attributes, spatial relations between two objects (from box centres), and
    whole-image descriptions. One caption of each kind is drawn in turn so that the five differ in kind.
    """
    height, width = scene.image.shape[:2]
    bg = BACKGROUNDS[scene.background]
    objects = scene.objects
    n = len(objects)
    if n == 0:
        pool = {"empty": [f"an empty {bg} background", "there are no shapes in this picture",
                          f"a {bg} background with nothing on it", f"no shapes on a {bg} background",
                          f"a picture of an empty {bg} background", "there is nothing here but the background",
                          f"just a {bg} background"]}
    else:
        pool = {"count": [], "list": [], "relation": [], "scene": []}
        shapes_present = [s for s in CATEGORIES.values() if any(o.shape == s for o in objects)]
        counts = {s: sum(o.shape == s for o in objects) for s in shapes_present}
        total = "one shape" if n == 1 else f"{NUMBER_WORDS[n]} shapes"
        pool["count"] += [f"there {'is' if n == 1 else 'are'} {total}", f"{total} on a {bg} background"]
        if len(shapes_present) <= 3:
            parts = [_count_phrase(counts[s], s) for s in shapes_present]
            verb = "is" if counts[shapes_present[0]] == 1 else "are"
            joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            pool["count"].append(f"there {verb} {joined}")
        for s in shapes_present:
            if counts[s] > 1:
                pool["count"].append(f"there are {_count_phrase(counts[s], s)}")
        # Lists of objects grouped by colour and shape, "a red circle, two blue squares and other shapes".
        groups: dict[tuple[str, str], int] = {}
        for o in objects:
            groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
        keys = list(groups)
        rng.shuffle(keys)
        items = [f"{_article(c)} {c} {s}" if groups[(c, s)] == 1 else f"{NUMBER_WORDS[groups[(c, s)]]} {c} "
                 f"{PLURALS[s]}" for c, s in keys[:3]]
        if len(keys) > 3:
            listed = ", ".join(items) + " and other shapes"
        else:
            listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        pool["list"] += [listed, f"{listed} on a {bg} background", f"a {bg} background with {listed}"]
        # Relations between pairs whose relation is clear-cut.
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        rng.shuffle(pairs)
        for i, j in pairs[:12]:
            relation = relation_of(objects[i].box, objects[j].box)
            if relation is None:
                continue
            a, b = _describe(objects[i], with_size=True), _describe(objects[j], with_size=False)
            template = int(rng.integers(3))
            pool["relation"].append([f"{_article(a)} {a} {relation} {_article(b)} {b}",
                                     f"there is {_article(a)} {a} {relation} {_article(b)} {b}",
                                     f"{_article(a)} {a} is {relation} {_article(b)} {b}"][template])
        for o in objects:
            where = position_of(o.box, width, height)
            d = _describe(o, with_size=True)
            if n == 1:
                pool["scene"] += [f"{_article(d)} {d} on a {bg} background", f"a picture of {_article(d)} {d}",
                                  f"{_article(d)} {d}"]
            if where is not None:
                pool["scene"].append(f"{_article(d)} {d} {POSITION_PHRASES[where]}")
        pool["scene"].append("a picture of " + ("a single shape" if n == 1 else "several shapes"))
    for options in pool.values():
        rng.shuffle(options)
    captions: list[str] = []
    kinds = list(pool)
    while len(captions) < count and any(pool.values()):
        rng.shuffle(kinds)
        for kind in kinds:
            while pool[kind]:
                caption = pool[kind].pop()
                if caption not in captions:
                    captions.append(caption)
                    break
            if len(captions) == count:
                break
    assert len(captions) == count, f"caption grammar produced only {len(captions)} distinct captions"
    return captions


# ------------------------------------------------------------------------------------------ questions
# Each question picks its *answer* first, among the answers the scene can give (near uniformly, see
# `ANSWER_WEIGHTS`), and then a question that has it. Picking the question first (a random shape for "how many ...?", a random object for "where is
# ...?") makes the answers lopsided -- most shapes are absent, so "zero" would be right for 80% of count
# questions -- and a model can score well on such questions without looking at the image (Goyal et al. 2017
# balance VQA v2 for the same reason).
def _question(rng, text: str, right: str, wrong: list[str], kind: str) -> Question:
    choices = [right] + wrong[:3]
    assert len(set(choices)) == 4, choices
    order = rng.permutation(4)
    return Question(text, [choices[k] for k in order], int(np.flatnonzero(order == 0)[0]), kind)


def _pick_answer(rng, asks: dict, kind: str):
    """{question text: answer} -> (text, answer), or None: the answer drawn among the distinct answers on offer,
    weighted by `ANSWER_WEIGHTS[kind]` (1 if not listed), then a text that has it.

    When the answers on offer weigh less than 1 in all, the rest is the chance of asking nothing: a picture that
    offers only "zero" or only "in the centre" would otherwise add that answer to every one of its questions.
    """
    answers = sorted(set(asks.values()), key=str)
    weights = [ANSWER_WEIGHTS.get(kind, {}).get(a, 1.0) for a in answers]
    draw = rng.random() * max(sum(weights), 1.0)
    for right, weight in zip(answers, weights):
        if draw < weight:
            texts = sorted(text for text, answer in asks.items() if answer == right)
            return texts[int(rng.integers(len(texts)))], right
        draw -= weight
    return None


def _colour_question(rng, scene):
    objects = scene.objects
    asks = {}
    for shape in sorted({o.shape for o in objects}):
        colours = {o.colour for o in objects if o.shape == shape}
        if len(colours) == 1:                                             # "the circle" must name one colour
            asks[f"what colour is the {shape}?"] = colours.pop()
    if not asks:
        return None
    text, right = _pick_answer(rng, asks, "colour")                       # never None: colours weigh 1
    # Plausible distractors: colours seen elsewhere in the picture first, then the rest of the palette.
    present = [c for c in dict.fromkeys(o.colour for o in objects) if c != right]
    others = [c for c in COLOURS if c != right and c not in present]
    rng.shuffle(present)
    rng.shuffle(others)
    return _question(rng, text, right, (present + others)[:3], "colour")


def _count_question(rng, scene):
    """'how many circles / red shapes / shapes are there?', the count drawn among those on offer."""
    objects = scene.objects
    shapes, colours = Counter(o.shape for o in objects), Counter(o.colour for o in objects)
    asks = {f"how many {PLURALS[s]} are there?": shapes[s] for s in CATEGORIES.values()}
    asks.update({f"how many {c} shapes are there?": colours[c] for c in COLOURS})
    asks["how many shapes are there?"] = len(objects)
    picked = _pick_answer(rng, asks, "count")
    if picked is None:
        return None
    text, count = picked
    near = [k for k in range(max(0, count - 2), count + 4) if k != count and k < len(NUMBER_WORDS)]
    wrong = [NUMBER_WORDS[k] for k in rng.permutation(near)[:3]]
    return _question(rng, text, NUMBER_WORDS[count], wrong, "count")


def _position_question(rng, scene):
    height, width = scene.image.shape[:2]
    objects = scene.objects
    named = [(o.colour, o.shape) for o in objects]
    asks = {}
    for o in objects:
        where = position_of(o.box, width, height)
        if named.count((o.colour, o.shape)) == 1 and where is not None:
            asks[f"where is the {o.colour} {o.shape}?"] = POSITION_PHRASES[where]
    picked = _pick_answer(rng, asks, "position") if asks else None
    if picked is None:
        return None
    text, right = picked
    wrong = [p for p in POSITION_PHRASES.values() if p != right]
    rng.shuffle(wrong)
    return _question(rng, text, right, wrong, "position")


def _existence_question(rng, scene):
    """'is there a (red) ring?' with four answers that split every count: no / yes, one / yes, two / yes, three+.

    Every shape and colour-and-shape pair can be asked about, so "no" is always on offer; the answer is drawn
    uniformly among those the scene allows."""
    objects = scene.objects
    shapes, pairs = Counter(o.shape for o in objects), Counter((o.colour, o.shape) for o in objects)
    asks = {}
    for shape in CATEGORIES.values():
        asks[f"is there {_article(shape)} {shape}?"] = EXISTENCE_CHOICES[min(shapes[shape], 3)]
        for colour in COLOURS:
            asks[f"is there {_article(colour)} {colour} {shape}?"] = EXISTENCE_CHOICES[min(pairs[colour, shape], 3)]
    picked = _pick_answer(rng, asks, "existence")
    if picked is None:
        return None
    text, right = picked
    wrong = [c for c in EXISTENCE_CHOICES if c != right]
    rng.shuffle(wrong)
    return _question(rng, text, right, wrong, "existence")


def make_questions(rng, scene: Scene, count: int = QUESTIONS_PER_IMAGE) -> list[Question]:
    """Up to `count` multiple-choice questions of different kinds (colour, count, position, existence; Zhu et
    al. 2016 ask what/where/how-many questions with four candidate answers). A kind the picture cannot ask
    about fairly is left out (see `_pick_answer`), so an image has 0 to 4 questions."""
    makers = [_colour_question, _count_question, _position_question, _existence_question]
    questions = [makers[k](rng, scene) for k in rng.permutation(len(makers))]
    return [q for q in questions if q is not None][:count]


# ------------------------------------------------------------------------------------------ datasets
def _check_arguments(num_images, split, image_size, min_size, max_size, min_objects, max_objects):
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None and not (64 <= int(image_size) <= 4096):
        raise ValueError(f"image_size must be in [64, 4096] or None, got {image_size!r}")
    if not (64 <= min_size <= max_size <= 4096):
        raise ValueError(f"need 64 <= min_size <= max_size <= 4096, got min_size={min_size}, max_size={max_size}")
    if not (0 <= min_objects <= max_objects <= 10):                     # captions count in words up to ten
        raise ValueError(f"need 0 <= min_objects <= max_objects <= 10, got {min_objects}, {max_objects}")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of a split: its own stream, independent of every other image's."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)]))


def make_world(num_images: int, *, seed: int = 0, split: str = "train", image_size: int | None = None,
               min_size: int = 128, max_size: int = 320, min_objects: int = 0, max_objects: int = 8,
               single_object: bool = False) -> Dataset:
    """Generate `num_images` annotated scenes in memory.

    `image_size=None` gives every image its own size, square half of the time, each side in
    `[min_size, max_size]`; an int makes every image `image_size x image_size` (for batching).
    `single_object=True` draws exactly one fairly large object per image (classification + localization).
    Each image asks for `min_objects..max_objects` objects; one that cannot be placed without hiding more than
    70% of an earlier one is skipped, so a crowded small image may hold fewer than `min_objects`.
    Records carry the image, xyxy boxes of the visible masks, category ids, compressed RLE masks, mask areas,
    a semantic map, five captions and four-choice questions. Deterministic in (seed, split, index, sizes).
    """
    _check_arguments(num_images, split, image_size, min_size, max_size, min_objects, max_objects)
    records = []
    next_ann_id = 1
    for index in range(int(num_images)):
        rng = image_rng(seed, split, index)
        if image_size is not None:
            height = width = int(image_size)
        else:
            height = int(rng.integers(min_size, max_size + 1))
            width = height if rng.random() < 0.5 else int(rng.integers(min_size, max_size + 1))
        num_objects = 1 if single_object else int(rng.integers(min_objects, max_objects + 1))
        scene = generate_scene(rng, height, width, num_objects=num_objects, single_object=single_object)
        objects = scene.objects
        n = len(objects)
        category_lookup = np.array([0] + [o.category_id for o in objects], dtype=np.int64)   # index+1 -> id
        image_id = index + 1
        records.append(Record(
            image_id=image_id,
            file_name=f"{split}_{image_id:06d}.png",
            width=width, height=height,
            boxes=np.array([o.box for o in objects]).reshape(n, 4),
            labels=np.array([o.category_id for o in objects], dtype=np.int64),
            ann_ids=np.arange(next_ann_id, next_ann_id + n, dtype=np.int64),
            iscrowd=np.zeros(n, dtype=bool),
            areas=np.array([o.area for o in objects], dtype=np.float64),
            segmentations=[o.rle() for o in objects],
            captions=make_captions(rng, scene),
            questions=make_questions(rng, scene),
            image=scene.image,
            semantic=category_lookup[scene.instance_map.astype(np.int64) + 1],      # [H, W] category ids
        ))
        next_ann_id += n
    kind = "single-object " if single_object else ""
    return Dataset(records=records, categories=dict(CATEGORIES), image_root=None,
                   name=f"scenekit {kind}world ({split}, seed {seed})")


# ------------------------------------------------------------------------------------------ files
def write_world(out_dir, num_images: int, *, seed: int = 0, split: str = "train",
                image_size: int | None = None, **world_kwargs) -> Path:
    """Generate a split and write it as files; returns the path of the COCO instances JSON.

    Layout under `out_dir`: `images/<split>_<id>.png`, `instances_<split>.json` (COCO instances with RLE
    segmentations, areas and iscrowd; `file_name`s relative to the JSON's folder), `captions_<split>.json`
    (COCO captions format, naming the images as the instances file does, so `coco-captions:` reads them back)
    and `questions_<split>.json` (a list of `{image_id, question, choices, answer, kind}`). `world_kwargs` go to
    `make_world`.
    """
    dataset = make_world(num_images, seed=seed, split=split, image_size=image_size, **world_kwargs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    instances_path = out_dir / f"instances_{split}.json"
    image_dir = out_dir / "images"
    try:
        from scenekit.data.coco import write_coco
    except ImportError:                       # the COCO module is optional here: fall back to a minimal writer
        _write_coco_minimal(dataset, instances_path, image_dir)
    else:
        write_coco(dataset, instances_path, image_dir)
    _write_json({"images": [_image_entry(r, f"{image_dir.name}/{r.file_name}") for r in dataset.records],
                 "annotations": [{"id": k, "image_id": r.image_id, "caption": c} for k, (r, c) in
                                 enumerate(((r, c) for r in dataset.records for c in r.captions), 1)]},
                out_dir / f"captions_{split}.json")
    questions = [{"image_id": r.image_id, "question": q.question, "choices": list(q.choices), "answer": q.answer,
                  "kind": q.kind} for r in dataset.records for q in r.questions]
    _write_json(questions, out_dir / f"questions_{split}.json")
    return instances_path


def _image_entry(record: Record, file_name: str) -> dict:
    return {"id": record.image_id, "file_name": file_name, "width": record.width, "height": record.height}


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _write_coco_minimal(dataset: Dataset, json_path: Path, image_dir: Path) -> None:
    """COCO instances JSON + PNGs, for when scenekit.data.coco is not importable."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for r in dataset.records:
        Image.fromarray(r.image).save(image_dir / r.file_name, compress_level=1)
        images.append(_image_entry(r, f"{image_dir.name}/{r.file_name}"))
        for k in range(r.num_objects):
            x1, y1, x2, y2 = (float(v) for v in r.boxes[k])
            annotations.append({"id": int(r.ann_ids[k]), "image_id": r.image_id, "category_id": int(r.labels[k]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(r.areas[k]),
                                "segmentation": r.segmentations[k], "iscrowd": 0})
    categories = [{"id": k, "name": v, "supercategory": "shape"} for k, v in dataset.categories.items()]
    _write_json({"info": {"description": dataset.name}, "images": images, "annotations": annotations,
                 "categories": categories}, json_path)
