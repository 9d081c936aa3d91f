"""Fast R-CNN, Faster R-CNN and Mask R-CNN on the embedded world: accuracy, training time, time per image.

The story of the R-CNN family in one table (Girshick 2015; Ren et al. 2015, Table 10; He et al. 2017): Fast
R-CNN shares the convolutions between regions, so its region-wise cost is small and Selective Search (on the
CPU) dominates its time per image; Faster R-CNN replaces Selective Search by the RPN on the shared features and
its proposal time nearly vanishes; Mask R-CNN adds masks for a small extra region-wise cost.

Each model is trained from scratch with `scenekit.engine.train` on the world's train split (fixed S x S
images), its best epoch (by VOC mAP@0.5 on a small val split) is evaluated on the test split: VOC mAP@0.5,
COCO AP (box; segm for Mask R-CNN), and milliseconds per image split into shared convolutions, proposals
(Selective Search or RPN + proposal layer) and region-wise work (RoI pooling, head, NMS, masks).

    .venv/bin/python benchmarks/rcnn_family.py                        # all three, ~50 min on 2 busy cores
    .venv/bin/python benchmarks/rcnn_family.py --models faster-rcnn --epochs 4 --train-images 300   # quick

`--threads 1` (the default) runs torch single-threaded: on a machine whose cores are shared with other jobs,
torch's two-thread kernels spin-wait for each other and run several times slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

MODELS = ("fast-rcnn", "faster-rcnn", "mask-rcnn")


def run(model_name: str, args) -> dict:
    from scenekit.models.registry import make_recipe, parse_options
    from scenekit.data.world import CATEGORIES, make_world
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.train import TrainConfig, train

    options = {"epochs": args.epochs, **parse_options(args.option)}
    if model_name == "fast-rcnn":
        options["proposal_cache"] = str(Path(args.out) / "proposals")
    recipe = make_recipe(model_name, dict(CATEGORIES), options)
    world = dict(recipe.world)
    train_data = make_world(args.train_images, split="train", seed=args.seed, **world)
    val_data = make_world(args.val_images, split="val", seed=args.seed, **world)
    test_data = make_world(args.test_images, split="test", seed=args.seed, **world)
    proposal_seconds = 0.0
    if model_name == "fast-rcnn":
        # Selective Search once per training image (cached on disk): part of Fast R-CNN's training cost.
        started = time.perf_counter()
        dataset = recipe.make_dataset(train_data, False)
        for i in range(len(dataset)):
            dataset[i]
        proposal_seconds = time.perf_counter() - started
    label = model_name + "".join(f" {pair}" for pair in args.option or [])
    config = TrainConfig(out=str(Path(args.out) / label.replace(" ", "_")), batch_size=args.batch_size, seed=args.seed,
                         progress=False, tensorboard=False, log_every=100)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train(recipe, train_data, val_data, config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    checkpoint = load_checkpoint(result.best_checkpoint)
    model = recipe.build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    metrics = recipe.evaluate(model.eval(), test_data, torch.device("cpu"))
    return {"model": label, "train_min": train_seconds / 60, "train_cpu_min": train_cpu_seconds / 60,
            "proposal_precompute_min": proposal_seconds / 60, "best_epoch_val_mAP50": result.best, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_rcnn")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="recipe option for every model of this run, e.g. roi_op=align (JSON value)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        row = run(name, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nworld {args.train_images} train / {args.test_images} test images, {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.threads} torch thread(s)")
    header = ("model", "VOC mAP@.5", "COCO AP", "mask AP", "train min (CPU min)", "conv ms", "proposal ms", "region ms",
              "total ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        mask = f"{r['mask_AP']:.3f}" if "mask_AP" in r else "-"
        train_min = r["train_min"] + r["proposal_precompute_min"]
        print(f"| {r['model']} | {r['mAP50']:.3f} | {r['AP']:.3f} | {mask} | {train_min:.1f} "
              f"({r['train_cpu_min']:.1f}) | {r['conv_ms']:.1f} | {r['proposal_ms']:.1f} | {r['region_ms']:.1f} | "
              f"{r['total_ms']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
