"""Selective Search: scenekit vs OpenCV's ximgproc implementation, both in "fast" mode, same images, same run.

Measures per-image median time, the number of proposals, and for the top 100/500/1000/2000 proposals the recall
at IoU 0.5 and 0.7 and the mean best overlap (MABO, Uijlings et al. 2013, Sec. 5.1) against ground-truth boxes.

Images: generated scenes with exact boxes (scenekit.data.world.make_world when it exists, else shapes drawn
here), and real photographs from scikit-image's data module with a few hand-drawn boxes (approximate, so read
their IoU-0.7 numbers with care).

    .venv/bin/python benchmarks/proposals.py [--scenes 20] [--size 320] [--mode fast] [--seed 0]
        [--seeds 1] [--variants paper,opencv-settings]

scenekit variants: "paper" is `selective_search` as shipped (the paper's ranking, large regions first);
"depth" ranks the same boxes in OpenCV's order (`ranking="depth"`, small regions first); "opencv-settings"
uses OpenCV's fast settings on top (k = 150, 300, 450 instead of the paper's 50, 100; min size 100 instead of
k; depth ranking), to separate differences of implementation from differences of settings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

BUDGETS = (100, 500, 1000, 2000)
VARIANTS = {
    "paper": {},
    "depth": {"ranking": "depth"},
    "opencv-settings": {"ks": (150, 300, 450), "min_size": 100, "ranking": "depth"},
}

# Hand-drawn xyxy boxes of the main objects in scikit-image's photographs (approximate).
PHOTO_BOXES = {
    "astronaut": [[20, 12, 370, 512],      # the astronaut
                  [152, 14, 300, 165],     # her head
                  [275, 340, 512, 512],    # the helmet
                  [352, 2, 472, 285]],     # the shuttle model
    "chelsea": [[0, 0, 395, 300],          # the cat
                [135, 85, 210, 148],       # its eyes
                [295, 110, 345, 165],
                [235, 225, 295, 265]],     # its nose
    "coffee": [[75, 18, 482, 392],         # cup on saucer
               [172, 18, 410, 306],        # the cup
               [325, 65, 425, 328]],       # the spoon
    "rocket": [[303, 127, 342, 408],       # the rocket
               [0, 0, 90, 427],            # launch towers
               [555, 0, 640, 427],
               [435, 120, 475, 427]],
}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] xyxy -> [N, M] IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def generated_scenes(num: int, size: int, seed: int):
    """Yield (image [H, W, 3] uint8, boxes [N, 4]) from the world if present, else from shapes drawn here."""
    try:
        from scenekit.data.world import make_world
    except ImportError:
        make_world = None
    if make_world is not None:
        for record in make_world(num, seed=seed, split="val").records:
            if len(record.boxes):
                yield record.image, np.asarray(record.boxes, dtype=np.float64)
        return
    rng = np.random.default_rng(seed)
    for _ in range(num):
        yield draw_scene(rng, size, size * 3 // 4)


def draw_scene(rng, width: int, height: int):
    """Shapes (flat or striped) on a smooth colour gradient plus noise; boxes from the visible pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    ramp = (xx / width)[..., None]
    image = c0 * (1 - ramp) + c1 * ramp + rng.normal(0, 12, (height, width, 3))
    owner = np.full((height, width), -1)
    for i in range(rng.integers(2, 6)):
        w, h = rng.uniform(0.12, 0.45) * width, rng.uniform(0.12, 0.45) * height
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        kind = rng.integers(3)
        if kind == 0:
            mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        elif kind == 1:
            mask = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
        else:
            mask = (yy >= y0) & (yy < y0 + h) & (np.abs(xx - x0 - w / 2) <= (yy - y0) / h * w / 2)
        colour = rng.uniform(0, 255, 3)
        fill = np.broadcast_to(colour, (height, width, 3)).copy()
        if rng.random() < 0.4:  # stripes
            period = rng.uniform(4, 10)
            stripes = (np.floor((xx + yy) / period) % 2)[..., None]
            fill = fill * (1 - 0.5 * stripes)
        image[mask] = fill[mask] + rng.normal(0, 6, (mask.sum(), 3))
        owner[mask] = i
    boxes = []
    for i in range(owner.max() + 1):
        ys, xs = np.nonzero(owner == i)
        if len(xs) > 0.02 * width * height:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.clip(image, 0, 255).astype(np.uint8), np.array(boxes, dtype=np.float64).reshape(-1, 4)


def photos():
    from skimage import data

    for name, boxes in PHOTO_BOXES.items():
        image = getattr(data, name)()
        yield name, image, np.array(boxes, dtype=np.float64)


def run_scenekit(image, mode, seed, variant="paper"):
    from scenekit.proposals import selective_search

    start = time.perf_counter()
    boxes = selective_search(image, mode=mode, seed=seed, **VARIANTS[variant]).numpy().astype(np.float64)
    return boxes, time.perf_counter() - start


def run_opencv(image, mode):
    import cv2

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    start = time.perf_counter()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    elif mode == "quality":
        search.switchToSelectiveSearchQuality()
    else:
        search.switchToSingleStrategy()
    rects = search.process()
    seconds = time.perf_counter() - start
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1), seconds


def best_overlaps(proposals, gt, budget):
    if len(proposals) == 0:
        return np.zeros(len(gt))
    return box_iou(gt, proposals[:budget]).max(axis=1)


def summarise(name, runs):
    """runs: one list of (seconds, num_proposals, proposals, gt) per seed -> printed row per budget.

    Recall and MABO are averaged over the runs (seeds of the random ranking), with the runs' range of
    recall@0.5 / recall@0.7 in brackets when there are several; time and count come from all runs.
    """
    times = [r[0] for run in runs for r in run]
    counts = [r[1] for run in runs for r in run]
    print(f"  {name:15s} median {statistics.median(times):6.3f} s/image   proposals median {int(np.median(counts))}")
    row = {}
    for budget in BUDGETS:
        per_run = []
        for run in runs:
            overlaps = np.concatenate([best_overlaps(p, g, budget) for _, _, p, g in run])
            per_run.append(((overlaps >= 0.5).mean(), (overlaps >= 0.7).mean(), overlaps.mean()))
        per_run = np.array(per_run)                                   # [runs, 3]
        row[budget] = tuple(per_run.mean(axis=0))
        spread = ""
        if len(runs) > 1:
            spread = (f"  [R@0.5 {per_run[:, 0].min():.3f}-{per_run[:, 0].max():.3f}, "
                      f"R@0.7 {per_run[:, 1].min():.3f}-{per_run[:, 1].max():.3f}]")
        print(f"    top {budget:4d}: recall@0.5 {row[budget][0]:.3f}  recall@0.7 {row[budget][1]:.3f}  "
              f"MABO {row[budget][2]:.3f}{spread}")
    return row


def benchmark(images, mode, seeds, label, variants):
    ours = {variant: [[] for _ in seeds] for variant in variants}
    theirs = []
    for image, gt in images:
        for variant in variants:
            for run, seed in zip(ours[variant], seeds):
                boxes, seconds = run_scenekit(image, mode, seed, variant)
                run.append((seconds, len(boxes), boxes, gt))
        boxes, seconds = run_opencv(image, mode)
        theirs.append((seconds, len(boxes), boxes, gt))
    num_gt = sum(len(g) for _, g in images)
    h, w = images[0][0].shape[:2]
    print(f"{label}: {len(images)} images (first {w}x{h}), {num_gt} ground-truth boxes, mode {mode}, "
          f"scenekit seeds {list(seeds)}")
    # OpenCV ranks with C rand(), which cannot be seeded from Python: one run.
    b = summarise("opencv", [theirs])
    t_cv = statistics.median(r[0] for r in theirs)
    for variant in variants:
        a = summarise(f"scenekit:{variant}", ours[variant])
        t_ours = statistics.median(r[0] for run in ours[variant] for r in run)
        wins = all(a[k][0] >= b[k][0] and a[k][1] >= b[k][1] for k in BUDGETS)
        print(f"  {variant}: time ratio scenekit/opencv {t_ours / t_cv:.2f}; "
              f"mean recall >= opencv at every budget: {wins}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20, help="number of generated scenes")
    parser.add_argument("--size", type=int, default=320, help="width of locally generated scenes")
    parser.add_argument("--mode", default="fast", choices=["fast", "quality", "single"])
    parser.add_argument("--seed", type=int, default=0, help="world scenes' seed and scenekit's first ranking seed")
    parser.add_argument("--seeds", type=int, default=1,
                        help="number of ranking seeds (seed, seed + 1, ...) scenekit's recall is averaged over")
    parser.add_argument("--variants", default="paper,opencv-settings",
                        help=f"comma-separated scenekit variants out of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    import cv2

    print(f"cv2 {cv2.__version__}, cv2.getNumThreads() = {cv2.getNumThreads()} "
          "(ximgproc's selective search itself runs on one thread; only cvtColor/blur calls may use more)")
    # Compile scenekit's numba kernels outside the timings (cached on disk after the first run).
    for variant in variants:
        run_scenekit(np.zeros((32, 32, 3), np.uint8) + 128, args.mode, 0, variant)
    scenes = list(generated_scenes(args.scenes, args.size, args.seed))
    seeds = range(args.seed, args.seed + max(1, args.seeds))
    benchmark(scenes, args.mode, seeds, "generated scenes", variants)
    real = [(image, gt) for _, image, gt in photos()]
    benchmark(real, args.mode, seeds, "skimage photographs (" + ", ".join(PHOTO_BOXES) + ")", variants)


if __name__ == "__main__":
    main()
