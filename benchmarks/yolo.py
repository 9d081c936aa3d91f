"""YOLO v1 -> YOLOv2 on the embedded world: the "path from YOLO to YOLOv2" and the speed/accuracy trade-off.

Redmon & Farhadi 2017 (Table 2) add YOLOv2's ingredients to YOLO one at a time and report VOC 2007 mAP after
each; Table 3 / Fig. 4 run one YOLOv2 at several input sizes (288 ... 544) for a speed/accuracy trade-off.
This script does both on the world, with everything from scratch on a CPU in a ~10-15 minute budget:

  rows   YOLO v1 -> + batch norm -> + convolutional with anchor boxes (hand-picked, RPN offsets)
         -> + dimension priors (k-means) -> + direct location prediction -> + passthrough
         -> + multi-scale training -> + high-resolution detector (the last model tested at a larger input)
  speed  the final YOLOv2 at several input sizes: images per second (1 CPU thread, batch 1 and 16) and mAP

Each row is trained by `scenekit.engine.train` on the same fixed-size world images (seeded), evaluated on the
test split with VOC mAP@0.5 (all-point) and COCO AP. With `--faster-rcnn` it also trains the Faster R-CNN recipe
on the same data and epochs and measures it the same way (the issue's target: YOLOv2 within 5 mAP points of
Faster R-CNN at >= 5x its images per second).

    .venv/bin/python benchmarks/yolo.py                          # the ablation + speed, ~12 min on 2 busy cores
    .venv/bin/python benchmarks/yolo.py --faster-rcnn            # + Faster R-CNN on the same data
    .venv/bin/python benchmarks/yolo.py --rows 1 7 --epochs 2    # quick look

`--threads 1` (default): on cores shared with other jobs torch's multi-thread kernels spin-wait and run many
times slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# (label, model name, recipe options): each row adds one ingredient to the one above.
LADDER = [
    ("YOLO v1", "yolo1", {"batch_norm": False, "dropout": 0.5}),
    ("+ batch norm", "yolo1", {"batch_norm": True, "dropout": 0.0}),
    ("+ convolutional, anchor boxes", "yolo2", {"anchors": "hand", "direct_location": False, "passthrough": False,
                                                "multi_scale": False}),
    ("+ dimension priors (k-means)", "yolo2", {"anchors": "kmeans", "direct_location": False,
                                               "passthrough": False, "multi_scale": False}),
    ("+ direct location prediction", "yolo2", {"anchors": "kmeans", "direct_location": True,
                                               "passthrough": False, "multi_scale": False}),
    ("+ passthrough", "yolo2", {"anchors": "kmeans", "direct_location": True, "passthrough": True,
                                "multi_scale": False}),
    ("+ multi-scale training", "yolo2", {"anchors": "kmeans", "direct_location": True, "passthrough": True,
                                         "multi_scale": True}),
]


def small_network(args) -> dict:
    widths = [int(w) for w in args.channels]
    return {"channels": widths, "head_channels": widths[-1], "hidden": args.hidden, "image_size": args.size,
            "epochs": args.epochs, "lr": args.lr, "warmup_steps": args.warmup}


def timed_detect(recipe, model, images, batch: int, size: int | None = None) -> float:
    """Images per second of letterbox + forward + decoding + NMS, best of two passes."""
    from scenekit.models.yolo import detect

    class_ids = sorted(recipe.categories)
    options = {k: recipe.options[k] for k in ("score_threshold", "nms_threshold", "max_detections")}
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(images), batch):
            detect(model, images[start:start + batch], torch.device("cpu"), class_ids, size=size, **options)
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def train_row(label: str, name: str, options: dict, data: dict, args, out: Path):
    from scenekit.models.registry import make_recipe
    from scenekit.engine.train import TrainConfig, train

    recipe = make_recipe(name, data["train"].categories, options)
    config = TrainConfig(out=str(out), batch_size=args.batch_size, seed=args.seed, progress=False,
                         tensorboard=False, log_every=0)
    started = time.perf_counter()
    result = train(recipe, data["train"], None, config)
    seconds = time.perf_counter() - started
    model = result.model.eval()
    metrics = recipe.evaluate(model, data["test"], torch.device("cpu"))
    per_second = metrics["images_per_s"] if "images_per_s" in metrics else 1000 / metrics["total_ms"]
    row = {"row": label, "model": name, "train_s": round(seconds, 1), "mAP50": metrics["mAP50"],
           "coco_AP": metrics["AP"], "images_per_s": per_second}
    print(json.dumps(row), flush=True)
    return row, recipe, model


def speed_table(recipe, model, data: dict, args, ablation: list) -> list[dict]:
    """The last YOLOv2 at each input size: accuracy and images per second (YOLOv2's Table 3). A multi-scale model
    gets its batch-norm statistics re-estimated on training images at each size first (`recompute_batch_norm`):
    one network, each size normalised with its own statistics."""
    from scenekit.models.yolo import evaluate_yolo, recompute_batch_norm

    images = [record.image for record in data["test"].records]
    class_ids = sorted(recipe.categories)
    options = {k: recipe.options[k] for k in ("score_threshold", "nms_threshold", "max_detections")}
    hi_res = int(round(1.25 * args.size / 32)) * 32
    speed = []
    for size in sorted(set(args.speed_sizes) | {hi_res}):
        if recipe.options.get("multi_scale") and recipe.options.get("batch_norm"):
            recompute_batch_norm(model, data["train"], class_ids, size)
        metrics = evaluate_yolo(model, data["test"], torch.device("cpu"), class_ids, size=size, **options)
        entry = {"model": "yolo2", "input": size, "mAP50": metrics["mAP50"], "coco_AP": metrics["AP"],
                 "images_per_s_batch1": timed_detect(recipe, model, images[:50], 1, size),
                 "images_per_s_batch16": timed_detect(recipe, model, images, 16, size)}
        speed.append(entry)
        print(json.dumps(entry), flush=True)
        if size == hi_res and ablation and ablation[-1]["row"] == LADDER[-1][0]:
            ablation.append({"row": f"+ high-resolution detector (test at {size})", "model": "yolo2",
                             "train_s": 0.0, "mAP50": metrics["mAP50"], "coco_AP": metrics["AP"],
                             "images_per_s": entry["images_per_s_batch16"]})
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(1, len(LADDER) + 1)),
                        help="which ladder rows to train (1-based)")
    parser.add_argument("--size", type=int, default=128, help="world image side = training input side")
    parser.add_argument("--channels", nargs="+", default=[8, 16, 32, 64, 128], help="backbone widths")
    parser.add_argument("--hidden", type=int, default=512, help="YOLO v1's fully connected width")
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations")
    parser.add_argument("--speed-sizes", type=int, nargs="+", default=[96, 128, 160, 192, 224])
    parser.add_argument("--faster-rcnn", action="store_true", help="also train Faster R-CNN on the same data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_yolo")
    parser.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from scenekit.data.world import make_world

    started = time.perf_counter()
    data = {split: make_world(n, split=split, seed=args.seed, image_size=args.size)
            for split, n in (("train", args.train_images), ("test", args.test_images))}
    out = Path(args.out)
    # Warm-up: load numba's compiled NMS and metric kernels once, so the first row's speed does not pay for it.
    from scenekit.models.registry import make_recipe
    from scenekit.data.records import Dataset

    warm = make_recipe("yolo2", data["test"].categories, {**small_network(args), "anchors": "hand",
                                                           "multi_scale": False})
    warm.evaluate(warm.build_model(warm.model_config).eval(),
                  Dataset(records=data["test"].records[:4], categories=data["test"].categories, image_root=None,
                          name="warm-up"), torch.device("cpu"))
    ablation, last = [], None
    for number in args.rows:
        label, name, options = LADDER[number - 1]
        row, recipe, model = train_row(label, name, {**small_network(args), **options}, data, args,
                                       out / f"row{number}")
        ablation.append(row)
        last = (recipe, model) if name == "yolo2" else last

    speed = speed_table(*last, data, args, ablation) if last is not None else []

    comparison = []
    if args.faster_rcnn:
        row, recipe, model = train_row("Faster R-CNN", "faster-rcnn",
                                       {"image_size": args.size, "epochs": args.epochs}, data, args,
                                       out / "faster-rcnn")
        comparison.append(row)

    print(f"\nPath from YOLO to YOLOv2 on the world ({args.train_images} train / {args.test_images} test images, "
          f"{args.size} px, {args.epochs} epochs, backbone {args.channels}, {args.threads} thread(s))")
    print(f"{'':42s} {'VOC mAP@0.5':>11s} {'COCO AP':>8s} {'img/s':>7s} {'train s':>8s}")
    for row in ablation + comparison:
        print(f"{row['row']:42s} {100 * row['mAP50']:11.1f} {100 * row['coco_AP']:8.1f} "
              f"{row['images_per_s']:7.1f} {row['train_s']:8.0f}")
    if speed:
        print(f"\nYOLOv2 speed/accuracy (CPU, {args.threads} thread(s))")
        print(f"{'input':>6s} {'VOC mAP@0.5':>11s} {'COCO AP':>8s} {'img/s b=1':>10s} {'img/s b=16':>11s}")
        for entry in speed:
            print(f"{entry['input']:6d} {100 * entry['mAP50']:11.1f} {100 * entry['coco_AP']:8.1f} "
                  f"{entry['images_per_s_batch1']:10.1f} {entry['images_per_s_batch16']:11.1f}")
    if comparison and speed:
        yolo = next((e for e in speed if e["input"] == args.size), speed[0])
        frcnn = comparison[0]
        print(f"\nYOLOv2 ({yolo['input']} px) vs Faster R-CNN: mAP difference "
              f"{100 * (yolo['mAP50'] - frcnn['mAP50']):+.1f} points, speed ratio "
              f"{yolo['images_per_s_batch16'] / frcnn['images_per_s']:.1f}x")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"ablation": ablation, "speed": speed, "comparison": comparison},
                                              indent=1))


if __name__ == "__main__":
    main()
