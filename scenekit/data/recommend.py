"""What a training set decides: the network input or tiles, anchors, priors, detections, the schedule.

The detectors' recipes fix their defaults by hand for the world: 160 px images, objects of 10-145 px, 2,000
training images. A real training set needs other numbers -- one 2,472 px aerial photograph with 574 tree crowns
of 10-110 px, or 36 photographs. `recommend` derives them from the training records' boxes and image sizes;
`format_recommendation` prints them with the `--option`s that apply them (`scenekit data check`). Boxes are the
ones the detectors train on (crowd regions and VOC "difficult" objects left out). The rules:

1. Input and tiles. Small CNN backbones see a box through their stride-8 cells (Faster R-CNN's feature map;
   YOLOv2 predicts on stride 32), so the smallest objects -- the 5th percentile of sqrt(w * h) -- should span
   about two cells: `MIN_OBJECT_PX` = 16 px. The scale s = min(1, 16 / p5) never enlarges a photograph past its
   own pixels, and a scale above 2/3 is taken as 1 (shrinking by less than the 1.5 x letterbox range of
   `scenekit.data.tiling` buys little). The input side S is the typical (median) longer image side times s,
   rounded up to a multiple of 32 (YOLO's stride) and kept within [160, 512]: the world's input up to the
   largest the small backbones train at in reasonable time. One input then shows T = S / s photograph pixels:
   images whose longer side is at most 1.5 T (`tiling.needs_slicing`) are letterboxed whole into S, larger
   ones are cut into T x T tiles (`tiling.tile_windows`) overlapping by O = 4/3 x the largest object's side
   (so objects up to O - 2 x O/8 come back whole under the core rule of `tiling.merge_tiles`), at most T / 2.
2. Anchors (Ren et al. 2015, sec. 3.1.1). Box sizes are measured where the network sees them: scaled into the
   input (S / longer side for a whole image, s for a tile). Sizes form a geometric series (factor 2, 2^0.75 or
   2^0.5, from near the 0.5th percentile of the box sides); the series with the fewest anchors (sizes x ratios)
   that gives >= 95% of the boxes an anchor at IoU >= 0.5 wins, more coverage breaking ties, trying the world's
   ratios (0.5, 1, 2) first and wider sets (1/3 ... 3, 1/4 ... 4) only when those cannot reach 95%.
   `anchor_coverage` measures each box against anchors centred on it: the best the RPN's dense anchors can do.
3. YOLOv2 priors: `scenekit.anchors.kmeans_anchors` (k = 5, d = 1 - IoU; Redmon & Farhadi 2017, "Dimension
   Clusters") on the box shapes as fractions of the input side, the units of the yolo recipe's `anchors`.
4. Detections. Per network input (image or tile) at most max(100, 2 x the most objects one holds); per
   photograph after merging its tiles max(100, 2 x the most objects one image holds). Two-stage heads sample
   `rois_per_image` RoIs a quarter of them foreground (Girshick 2015): max(64, 4 x the 90th percentile of
   objects per input), rounded up to 32, gives a busy input one foreground RoI per object.
5. Schedule in steps. An epoch shows every whole image once and every tiled photograph once per tile (the
   recipes repeat a sliced photograph that many times an epoch, a random window each); the batch is the
   recipe's, made smaller when an epoch would have fewer than 4 steps; epochs are the recipe's default or more,
   so that the run has at least `MIN_STEPS` = 1,000 optimizer steps (about half the shortest default world run,
   yolo2's 1,890); warm-up the recipe's 50 steps, at most 10% of the run.
6. A CPU budget. Unless `budget_s` is None, the run is shortened to the steps that fit `budget_s` CPU-seconds
   (default `CPU_BUDGET_S` = 1,100: the issue's 1,200 for training on 2 cores, less 100 for loading, start-up
   and the estimate's error), by a cost model: one step costs `CPU_S_PER_MEGAPIXEL` x batch x S^2 / 10^6
   CPU-seconds (measured with one torch thread on the shared 2-core development machine, torch 2.13, the
   recipes' small backbones: 0.55 for the two-stage detectors, 1.5 for YOLO, whose multi-scale sizes average
   about S and whose mosaics and letterboxes cost more per input; two threads on a busy machine cost up to 6 x
   the CPU-seconds for the same steps, so the budget assumes `OMP_NUM_THREADS=1`). The budget limits
   how far rule 5 lengthens a run; it never cuts one below the recipe's default epochs. On a GPU, or with
   more time, pass `budget_s=None` (or `--epochs`) for the full `MIN_STEPS`. The schedule's `capped` says
   whether the budget shortened it. The engine evaluates the validation set after every epoch: its network
   inputs (`eval_data`'s images and tiles; without it a tenth of the training inputs, the CLI's hold-out)
   cost `EVAL_CPU_S_PER_MEGAPIXEL` x S^2 / 10^6 each (1.7 for the two-stage detectors, whose proposal layer
   dominates on crowded tiles; 1 for YOLO) and count against the budget. YOLOv2 re-estimates its batch norms
   before each evaluation ("precise BN") on `precise_bn` inputs, set to one epoch's (at most the recipe's
   512); those forward passes, a third of a training step's cost per input, count against the budget too.
7. Slicing and augmentation. The recipes slice an image whose longer side exceeds `slice_factor` x S; the
   recommendation tiles by `tiling.SLICE_FACTOR` (1.5), so it sets `slice_factor` to that. User data trains
   with `augment="user"` (`scenekit.data.augment.USER_DATA_DEFAULTS`: crops, flips, scale and colour jitter,
   mosaic for YOLO); box statistics cannot tell an aerial or microscope image from an upright photograph, so
   vertical flips and quarter turns (`augment="top-down"`) stay the user's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from scenekit.anchors import anchor_mean_iou, cell_anchors, kmeans_anchors, wh_iou
from scenekit.data.records import Dataset
from scenekit.data.tiling import SLICE_FACTOR, needs_slicing, tile_windows
from scenekit.errors import DataError

MIN_OBJECT_PX = 16              # the 5th-percentile object should span 2 cells of a stride-8 backbone
MIN_INPUT, MAX_INPUT = 160, 512  # the world's input side; the largest recommended for the small backbones
INPUT_MULTIPLE = 32             # YOLO's stride: input sides are multiples of it
COVERAGE, MATCH_IOU = 0.95, 0.5  # anchors must give this share of boxes an anchor at this IoU
RATIO_SETS = ((0.5, 1.0, 2.0), (1 / 3, 0.5, 1.0, 2.0, 3.0), (0.25, 1 / 3, 0.5, 1.0, 2.0, 3.0, 4.0))
SIZE_FACTORS = (2.0, 2 ** 0.75, 2 ** 0.5)   # spacing of the anchor sizes tried, widest first
MAX_SIZES = 8
NUM_PRIORS = 5                  # the yolo recipe's num_anchors
MIN_STEPS, WARMUP_FRACTION, MIN_STEPS_PER_EPOCH = 1000, 0.1, 4
CPU_BUDGET_S = 1100.0           # rule 6: CPU-seconds of steps and evaluations a recommended run may take
CPU_S_PER_MEGAPIXEL = {True: 0.55, False: 1.5}   # rule 6: CPU-seconds per step per megapixel of batch (two-stage?)
EVAL_CPU_S_PER_MEGAPIXEL = {True: 1.7, False: 1.0}   # rule 6: validation CPU-seconds per megapixel of input
PRECISE_BN = 512                # the yolo recipe's default number of precise-BN inputs (rule 6)
USER_AUGMENT = "user"           # rule 7: the recipes' `augment` preset for user data
MAX_BOXES = 5000                # anchor and prior searches use a fixed random subset of larger sets
# The world's Faster R-CNN anchors (scenekit.models.faster_rcnn.WORLD_ANCHOR_SIZES; data/ does not import models,
# a test keeps the two equal), for the note that compares them with the derived ones.
WORLD_ANCHOR_SIZES, WORLD_ANCHOR_RATIOS = (20.0, 46.0, 106.0), (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Family:
    """A detector recipe's defaults that the schedule starts from (a test checks them against the recipes)."""

    batch_size: int
    epochs: int
    warmup_steps: int
    two_stage: bool


FAMILIES = {"faster-rcnn": Family(4, 12, 50, True), "mask-rcnn": Family(4, 12, 50, True),
            "fast-rcnn": Family(4, 6, 50, True), "yolo2": Family(32, 30, 50, False),
            "yolo1": Family(32, 30, 50, False)}


@dataclass
class Recommendation:
    """What `recommend` derived; plain values only, so `dataclasses.asdict` gives JSON."""

    images: int
    objects: int                              # boxes the detectors train on
    image_side: int                           # median longer image side, px
    object_side: dict                         # percentiles of sqrt(w * h), photograph px: p1, p5, ..., max
    aspect: dict                              # percentiles of h / w
    scale: float                              # s: input px per photograph px of a tile (rule 1)
    input_size: int                           # S, the network input side
    tile: int                                 # T, photograph px one input shows; larger images are tiled
    overlap: int                              # O, px shared by neighbouring tiles
    tiled_images: int                         # images cut into tiles
    inputs_per_epoch: int                     # whole images + tiles
    anchor_sizes: list[float]
    anchor_ratios: list[float]
    anchor_coverage: float                    # share of boxes with an anchor at IoU >= 0.5 (centred)
    world_anchor_coverage: float              # the same for the world's anchors
    yolo_anchors: list[list[float]]           # [[p_w, p_h], ...] fractions of the input side, by area
    yolo_mean_iou: float
    objects_per_input: int                    # the most objects one network input holds
    objects_per_image: int
    max_detections: int                       # per network input
    max_detections_per_image: int             # per photograph, after merging its tiles
    rois_per_image: int
    schedule: dict = field(default_factory=dict)   # family -> batch_size, steps_per_epoch, epochs, steps, warmup
    options: dict = field(default_factory=dict)    # family -> the recipe options (`--option`) that apply it
    pending: dict = field(default_factory=dict)    # family -> values no recipe option takes yet
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- anchors
def _wh(boxes) -> torch.Tensor:
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    wh = boxes[:, 2:] - boxes[:, :2]
    return wh[(wh > 0).all(dim=1)]


def anchor_coverage(boxes, anchor_sizes, ratios, iou: float = MATCH_IOU) -> float:
    """The share of `boxes` ([N, 4] xyxy, network-input px) that some anchor of `anchor_sizes` x `ratios`
    (`scenekit.anchors.cell_anchors`: area size^2, ratio h / w) overlaps with IoU >= `iou`, the anchor centred on
    the box. The RPN places anchors every stride px (Ren et al. 2015, sec. 3.1.1), so this is the upper bound its
    anchors reach: a box centred between two positions (up to stride / 2 px off in x and y) matches less."""
    wh = _wh(boxes)
    if len(wh) == 0:
        raise DataError("no boxes with a positive width and height to measure anchors against", field="boxes")
    return anchor_coverage_wh(wh, anchor_sizes, ratios, iou)


def anchor_coverage_wh(wh: torch.Tensor, anchor_sizes, ratios, iou: float = MATCH_IOU) -> float:
    """`anchor_coverage` of box shapes `wh` [N, 2] (an anchor centred on a box overlaps it as its shape does)."""
    anchors = cell_anchors(anchor_sizes, ratios, torch.float64)                 # [A, 4] centred on (0, 0)
    best = wh_iou(wh, anchors[:, 2:] - anchors[:, :2]).amax(dim=1)              # [N, A] -> [N]
    return float((best >= iou).double().mean())


def _subset(count: int, limit: int = MAX_BOXES) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def fit_anchors(wh: torch.Tensor) -> tuple[list[float], list[float], float]:
    """(sizes, ratios, coverage) by rule 2 for box shapes `wh` [N, 2] in network-input px; the search runs on a
    fixed random subset of `MAX_BOXES`, the coverage returned is that of every box."""
    sample = wh[_subset(len(wh))]
    sides = np.sqrt((sample[:, 0] * sample[:, 1]).numpy())
    low = float(np.percentile(sides, 0.5))
    series = [sorted({max(1.0, float(round(low * factor ** (offset + k)))) for k in range(count)})
              for factor in SIZE_FACTORS for count in range(1, MAX_SIZES + 1)
              for offset in np.linspace(-0.5, 0.5, 8, endpoint=False)]
    distinct = sorted({size for sizes in series for size in sizes})
    column = {size: k for k, size in enumerate(distinct)}
    best = None                                          # (anchors, -coverage, sizes, ratios)
    for ratios in RATIO_SETS:
        # which box each candidate size matches with some ratio: [N, R * U] -> [N, R, U] -> [N, U]
        anchors = cell_anchors(distinct, ratios, torch.float64)                 # ratio-major, size-minor
        iou = wh_iou(sample, anchors[:, 2:] - anchors[:, :2])
        hit = (iou >= MATCH_IOU).view(len(sample), len(ratios), len(distinct)).any(dim=1)
        for sizes in series:
            coverage = float(hit[:, [column[size] for size in sizes]].any(dim=1).double().mean())
            candidate = (len(sizes) * len(ratios) if coverage >= COVERAGE else math.inf, -coverage, sizes,
                         list(ratios))
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best[0] < math.inf:                           # the narrower ratio set reached the coverage
            break
    return best[2], [round(r, 4) for r in best[3]], anchor_coverage_wh(wh, best[2], best[3])


# ------------------------------------------------------------------------------------------------- the plan
def _trainable(record) -> np.ndarray:
    """Boxes the detectors learn from: not crowd regions, not VOC 'difficult' objects."""
    return record.boxes[~(record.iscrowd | record.difficult)]


def _plan_input(sides: np.ndarray, small: float) -> tuple[float, int, int]:
    """(scale s, input side S, tile T) by rule 1."""
    scale = min(1.0, MIN_OBJECT_PX / small)
    if scale >= 1 / SLICE_FACTOR:
        scale = 1.0
    wanted = float(np.median(sides)) * scale
    size = int(min(MAX_INPUT, max(MIN_INPUT, math.ceil(wanted / INPUT_MULTIPLE) * INPUT_MULTIPLE)))
    return scale, size, int(round(size / scale))


def _percentiles(values: np.ndarray, points=(1, 5, 25, 50, 75, 95, 99)) -> dict:
    out = {f"p{p}": round(float(np.percentile(values, p)), 2) for p in points}
    out["max"] = round(float(values.max()), 2)
    return out


def step_cpu_seconds(family: Family, batch: int, size: int) -> float:
    """Rule 6's cost model: CPU-seconds of one optimizer step of `batch` inputs of `size` x `size` px."""
    return CPU_S_PER_MEGAPIXEL[family.two_stage] * batch * size * size / 1e6


def _schedule(family: Family, inputs: int, size: int, budget_s: float | None = CPU_BUDGET_S,
              eval_inputs: int = 0) -> dict:
    """Rules 5 and 6 for one recipe: batch, steps per epoch, epochs, steps, warm-up, estimated CPU-seconds."""
    batch = max(1, min(family.batch_size, math.ceil(inputs / MIN_STEPS_PER_EPOCH)))
    per_epoch = math.ceil(inputs / batch)
    epochs = max(family.epochs, math.ceil(MIN_STEPS / per_epoch))
    cost = step_cpu_seconds(family, batch, size)
    precise = 0 if family.two_stage else min(PRECISE_BN, inputs)            # YOLO's batch-norm pass per epoch
    epoch_cost = (per_epoch * cost + precise * step_cpu_seconds(family, 1, size) / 3
                  + eval_inputs * EVAL_CPU_S_PER_MEGAPIXEL[family.two_stage] * size * size / 1e6)
    capped = budget_s is not None and epochs > family.epochs and epochs * epoch_cost > budget_s
    if capped:                          # the budget limits the lengthening, never goes below the recipe's epochs
        epochs = max(family.epochs, math.floor(budget_s / epoch_cost))
    steps = epochs * per_epoch
    return {"batch_size": batch, "steps_per_epoch": per_epoch, "epochs": epochs, "steps": steps,
            "warmup_steps": min(family.warmup_steps, int(WARMUP_FRACTION * steps)),
            "cpu_seconds": round(epochs * epoch_cost), "capped": capped, "precise_bn": precise}


def _inputs(records, tile: int, overlap: int) -> int:
    """Network inputs of `records`: one per image letterboxed whole, one per tile of an image that is tiled."""
    return sum(len(tile_windows(r.height, r.width, tile, overlap)) if needs_slicing((r.height, r.width), tile)
               else 1 for r in records if r.width > 0 and r.height > 0)


def recommend(dataset: Dataset, *, family: str | None = None, budget_s: float | None = CPU_BUDGET_S,
              eval_data: Dataset | None = None) -> Recommendation:
    """The recommendation for training detectors on `dataset` (its training records), by the module's rules;
    `family` ("faster-rcnn", "yolo2", ...) limits the schedule and options to that recipe (default: all);
    `budget_s` caps each schedule's estimated CPU-seconds (rule 6; None: no cap), counting the evaluation of
    `eval_data` (the validation set) after each epoch."""
    if family is not None and family not in FAMILIES:
        raise DataError(f"no recommendation for {family!r}: detectors are {', '.join(FAMILIES)}", field="family")
    records = [r for r in dataset.records if r.width > 0 and r.height > 0]
    boxes = [_trainable(r) for r in records]
    if not sum(len(b) for b in boxes):
        raise DataError("has no boxes to derive a recommendation from (crowd and difficult objects left out)",
                        file=dataset.name or None)
    sides = np.array([max(r.width, r.height) for r in records], dtype=np.float64)
    every = np.concatenate(boxes)                                                    # [N, 4] photograph px
    wh_photo = every[:, 2:] - every[:, :2]
    object_sides = np.sqrt(np.prod(np.maximum(wh_photo, 0), axis=1))
    scale, size, tile = _plan_input(sides, float(np.percentile(object_sides, 5)))
    overlap = min(math.ceil(4 / 3 * float(wh_photo.max())), tile // 2)

    # each image as the network sees it: its scale into the input and its windows (one for a whole image)
    input_wh, per_input, per_image, inputs, tiled, crowded = [], [], [], 0, 0, 0
    for record, image_boxes in zip(records, boxes):
        centres = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2                      # [n, 2]
        if needs_slicing((record.height, record.width), tile):
            factor, windows = size / tile, tile_windows(record.height, record.width, tile, overlap)
            tiled += 1
        else:
            factor = size / max(record.width, record.height)
            windows = np.array([[0, 0, record.width, record.height]])
        inputs += len(windows)
        inside = ((centres[None, :, 0] >= windows[:, None, 0]) & (centres[None, :, 0] < windows[:, None, 2])
                  & (centres[None, :, 1] >= windows[:, None, 1]) & (centres[None, :, 1] < windows[:, None, 3]))
        per_input += inside.sum(axis=1).tolist()                                     # [K windows, n] -> [K]
        per_image.append(len(image_boxes))
        input_wh.append((image_boxes[:, 2:] - image_boxes[:, :2]) * factor)
        cells = np.floor(centres * factor / INPUT_MULTIPLE).astype(np.int64)         # YOLO's stride-32 cells
        _, counts = np.unique(cells, axis=0, return_counts=True)
        crowded += int(counts[counts > NUM_PRIORS].sum())
    input_wh = np.concatenate(input_wh)
    input_wh = torch.as_tensor(input_wh[(input_wh > 0).all(axis=1)])                # [N, 2] input px

    sizes, ratios, coverage = fit_anchors(input_wh)
    world_coverage = anchor_coverage_wh(input_wh, WORLD_ANCHOR_SIZES, WORLD_ANCHOR_RATIOS)
    priors, prior_iou = [], 0.0
    fractions = (input_wh[_subset(len(input_wh))] / size).clamp(max=1.0)
    if len(fractions) >= NUM_PRIORS:
        found = kmeans_anchors(fractions, k=NUM_PRIORS, seed=0)
        priors = [[round(float(w), 4), round(float(h), 4)] for w, h in found.clamp(1e-4, 1.0)]
        prior_iou = anchor_mean_iou(fractions, found)

    most_input, most_image = int(max(per_input)), int(max(per_image))
    rois = max(64, math.ceil(4 * float(np.percentile(per_input, 90)) / 32) * 32)
    rec = Recommendation(
        images=len(records), objects=int(len(every)), image_side=int(np.median(sides)),
        object_side=_percentiles(object_sides), aspect=_percentiles(wh_photo[:, 1] / wh_photo[:, 0], (5, 50, 95)),
        scale=round(scale, 4), input_size=size, tile=tile, overlap=overlap, tiled_images=tiled,
        inputs_per_epoch=inputs, anchor_sizes=sizes, anchor_ratios=ratios, anchor_coverage=round(coverage, 4),
        world_anchor_coverage=round(world_coverage, 4), yolo_anchors=priors, yolo_mean_iou=round(prior_iou, 4),
        objects_per_input=most_input, objects_per_image=most_image, max_detections=max(100, 2 * most_input),
        max_detections_per_image=max(100, 2 * most_image), rois_per_image=int(min(512, rois)))
    eval_inputs = (_inputs(eval_data.records, tile, tile // 4) if eval_data is not None     # prediction's overlap
                   else math.ceil(inputs / 10))
    for name in [family] if family else list(FAMILIES):
        _family_options(rec, name, FAMILIES[name], budget_s, eval_inputs)
    input_sides = np.sqrt((input_wh[:, 0] * input_wh[:, 1]).numpy())
    rec.notes = _notes(rec, object_sides, float(np.percentile(input_sides, 5)), crowded)
    return rec


def _family_options(rec: Recommendation, name: str, family: Family, budget_s: float | None,
                    eval_inputs: int) -> None:
    """The recipe options (existing `--option`s) and the values still waiting for one, for one family."""
    schedule = _schedule(family, rec.inputs_per_epoch, rec.input_size, budget_s, eval_inputs)
    rec.schedule[name] = schedule
    # max_detections caps a photograph's detections after its tiles merge (and each tile's): the per-image count
    options = {"image_size": rec.input_size, "epochs": schedule["epochs"],
               "max_detections": rec.max_detections_per_image}
    if rec.tiled_images:
        options["slice_factor"] = SLICE_FACTOR                        # rule 7: tile what the plan tiles
    pending = {"tile": rec.tile, "overlap": rec.overlap, "detections_per_input": rec.max_detections}
    if name != "fast-rcnn":                                             # Selective Search proposals stay unaugmented
        options["augment"] = USER_AUGMENT
    if family.two_stage:
        options["rois_per_image"] = rec.rois_per_image
        pending.update(post_nms_test=max(100, 3 * rec.objects_per_input), warmup_steps=schedule["warmup_steps"])
        if name != "fast-rcnn":
            options.update(anchor_sizes=rec.anchor_sizes, anchor_ratios=rec.anchor_ratios)
    else:
        options.update(warmup_steps=schedule["warmup_steps"])
        if name == "yolo2":
            options["precise_bn"] = schedule["precise_bn"]
        if name == "yolo2" and rec.tiled_images and rec.yolo_anchors:
            options["anchors"] = rec.yolo_anchors     # the recipe's own k-means would measure whole photographs
    rec.options[name] = options
    rec.pending[name] = pending


def _notes(rec: Recommendation, object_sides: np.ndarray, small_input: float, crowded: int) -> list[str]:
    """Warnings in words: what the plan cannot fix, and where the data is far from the world."""
    notes = []
    if rec.tiled_images:
        notes.append(f"{rec.tiled_images} of {rec.images} images are larger than 1.5 x {rec.tile} px: they are cut "
                     f"into {rec.tile} px tiles overlapping by {rec.overlap} px"
                     + (" at full resolution" if rec.scale == 1 else f", scaled by {rec.scale:g} into the input"))
    if rec.object_side["p5"] < MIN_OBJECT_PX:
        notes.append(f"the smallest objects (5th percentile {rec.object_side['p5']:g} px) span less than two cells "
                     f"of a stride-8 backbone even at full resolution: upsample them (tiles smaller than the input) "
                     f"or expect them to be missed")
    elif small_input < MIN_OBJECT_PX:
        notes.append(f"letterboxed into {rec.input_size} px the smallest objects shrink to {small_input:.0f} px "
                     f"(5th percentile), less than two cells of a stride-8 backbone: a larger image_size or tiles "
                     f"keep more of them")
    if rec.world_anchor_coverage < COVERAGE:
        median = float(np.median(object_sides)) * rec.scale
        relation = ("boxes are far smaller than the world's anchors: " if median < WORLD_ANCHOR_SIZES[0] else
                    "boxes are far larger than the world's anchors: " if median > WORLD_ANCHOR_SIZES[-1] else "")
        notes.append(f"{relation}the world's anchors {_numbers(WORLD_ANCHOR_SIZES)} cover "
                     f"{100 * rec.world_anchor_coverage:.0f}% of the boxes at IoU >= {MATCH_IOU}, the derived "
                     f"{_numbers(rec.anchor_sizes)} {100 * rec.anchor_coverage:.1f}%")
    if rec.anchor_coverage < COVERAGE:
        notes.append(f"no anchor series tried reaches {100 * COVERAGE:.0f}% coverage; the best reaches "
                     f"{100 * rec.anchor_coverage:.1f}%")
    if rec.objects_per_image > 100:
        notes.append(f"an image holds up to {rec.objects_per_image} objects: COCO evaluation keeps 100 detections "
                     f"per image (maxDets), so AP and AR100 undercount it; evaluate per tile or raise maxDets")
    if crowded > 0.01 * rec.objects:
        notes.append(f"{crowded} objects share a YOLO stride-32 cell with more than {NUM_PRIORS - 1} others: a "
                     f"cell predicts at most {NUM_PRIORS} (yolo2; yolo1 one per cell)")
    if not rec.yolo_anchors:
        notes.append(f"fewer than {NUM_PRIORS} boxes: no YOLOv2 priors")
    lengthened: dict[tuple, list[str]] = {}                    # families with the same schedule, one note
    for name, schedule in rec.schedule.items():
        default = FAMILIES[name]
        if schedule["epochs"] > default.epochs or schedule["batch_size"] < default.batch_size:
            lengthened.setdefault(tuple(schedule.values()), []).append(f"{name} (default {default.epochs})")
    for (batch, per_epoch, epochs, steps, _, cpu, capped, _), names in lengthened.items():
        notes.append(f"{rec.inputs_per_epoch} inputs an epoch at batch {batch} are {per_epoch} steps, so "
                     f"{epochs} epochs make the run's {steps} steps (about {cpu} CPU-seconds"
                     + (f", shortened from {MIN_STEPS} to fit the CPU budget; more steps train better" if capped
                        else "") + f"): {', '.join(names)}")
    if any("augment" in options for options in rec.options.values()):
        notes.append(f"training images are augmented (augment={USER_AUGMENT}: crops, horizontal flips, scale and "
                     f"colour jitter, mosaic for YOLO); for aerial or microscope images, where up is arbitrary, "
                     f"--option augment=top-down adds vertical flips and quarter turns")
    if rec.inputs_per_epoch < 100:
        notes.append(f"only {rec.inputs_per_epoch} inputs an epoch: a set this small overfits; keep a validation "
                     f"split and watch its curve")
    return notes


# ------------------------------------------------------------------------------------------------- printing
def _numbers(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def format_recommendation(rec: Recommendation) -> str:
    """The recommendation as text, with the `--option`s of each recipe."""
    import json

    side = rec.object_side
    lines = [f"recommendation from {rec.images} images, {rec.objects} boxes:",
             f"  images: longer side {rec.image_side} px (median); objects sqrt(w*h) p1 {side['p1']:g}, p5 "
             f"{side['p5']:g}, median {side['p50']:g}, p95 {side['p95']:g}, max {side['max']:g} px; h/w "
             f"{rec.aspect['p5']:g}..{rec.aspect['p95']:g}",
             f"  input: {rec.input_size} px; one input shows {rec.tile} px of a photograph (scale {rec.scale:g}); "
             + (f"{rec.tiled_images} images tiled with overlap {rec.overlap} px; " if rec.tiled_images else
                "every image letterboxed whole; ") + f"{rec.inputs_per_epoch} inputs an epoch",
             f"  anchors: sizes {_numbers(rec.anchor_sizes)} x ratios {_numbers(rec.anchor_ratios)}: "
             f"{100 * rec.anchor_coverage:.1f}% of boxes at IoU >= {MATCH_IOU} (world's anchors "
             f"{100 * rec.world_anchor_coverage:.1f}%)",
             f"  yolo2 priors (fractions of the input side): "
             f"{' '.join(f'{w:g}x{h:g}' for w, h in rec.yolo_anchors) or 'none'} (mean IoU {rec.yolo_mean_iou:.2f})",
             f"  detections: up to {rec.objects_per_input} objects per input -> {rec.max_detections}; up to "
             f"{rec.objects_per_image} per image -> {rec.max_detections_per_image}; rois_per_image "
             f"{rec.rois_per_image}"]
    for name, schedule in rec.schedule.items():
        options = " ".join(f"--option {k}={json.dumps(v, separators=(',', ':'))}" for k, v in rec.options[name].items())
        if schedule["batch_size"] != FAMILIES[name].batch_size:
            options = f"--batch-size {schedule['batch_size']} {options}"
        lines.append(f"  {name}: batch {schedule['batch_size']}, {schedule['steps_per_epoch']} steps/epoch x "
                     f"{schedule['epochs']} epochs = {schedule['steps']} steps (~{schedule['cpu_seconds']} CPU-s"
                     f"{', capped by the budget' if schedule['capped'] else ''}), warm-up "
                     f"{schedule['warmup_steps']}: {options}")
    lines += [f"  note: {note}" for note in rec.notes]
    return "\n".join(lines)
