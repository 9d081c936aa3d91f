"""Claim: on the embedded world, a fully convolutional network learns to label pixels (mean IoU >= 0.85 on the test
split) within 10 CPU-minutes, and labels an image hundreds of times faster than the sliding window it replaces.

Compared, all trained by `scenekit.engine.train` on the same world images (S x S px, 0-8 objects):
  fcn-32s, fcn-16s, fcn-8s          FCN with 0, 1, 2 skip connections (Long et al. 2015, sec. 4.2)
  fcn-4s                            FCN with a third skip, from pool2 (the step the paper stops before)
  deconvnet, deconvnet-transposed   the encoder-decoder upsampling by max-unpooling (Noh et al. 2015) or by a
                                    learned stride-2 transposed convolution, otherwise identical
  sliding-window                    a small CNN labelling the centre pixel of each window, run on every pixel

The networks see the images resized to the recipe's input size (96 px unless `--input-size`) and are scored
against the S x S class maps; `--curve-images` val images are scored after every epoch (the learning curve).

Measured per model: training CPU seconds (`time.process_time`, all threads of the process) and wall seconds,
test pixel accuracy / mean IoU / per-class IoU (one confusion matrix over the test images, Long et al. sec. 5),
inference images/s, and, on the first `--window-images` test images, the time of the sliding window and of each
network on the *same* images. Torch runs on `--threads` threads (default 1, so CPU time ~ uncontended wall time
on a shared machine).

    .venv/bin/python benchmarks/fcn.py                          # all models, then the table and the figure
    .venv/bin/python benchmarks/fcn.py --models fcn-8s,deconvnet  # a subset (results go to --out/<model>.json)
    .venv/bin/python benchmarks/fcn.py --report                 # table + figure from the saved results
    .venv/bin/python benchmarks/fcn.py --ceiling                # best mIoU a perfect stride-s score map allows
    .venv/bin/python benchmarks/fcn.py --models fcn-4s --train-images 5000 --epochs 10 \
        --option superpixel_scale=800 --out benchmarks/out/fcn4s_sp10   # the >= 0.85 run (superpixel averaging)

`--option KEY=VALUE` passes recipe options to the networks as `scenekit train --option` does. With
`superpixel_scale` > 0 the test scores are those after superpixel averaging, and `test_raw_*` those without.

Figure: `--out/fcn_predictions.png`, test images with the true class map and each model's prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

MODELS = ["fcn-32s", "fcn-16s", "fcn-8s", "fcn-4s", "deconvnet", "deconvnet-transposed", "sliding-window"]


def build_recipe(name: str, categories: dict, args):
    from scenekit.models.registry import make_recipe

    if name == "sliding-window":
        options = {"image_size": args.image_size, "epochs": args.window_epochs, "window": args.window,
                   "windows_per_image": args.windows_per_image}
    else:                                  # the recipe's defaults unless asked: network input, epochs
        options = {"world_size": args.image_size}
        options.update({k: v for k, v in (("image_size", args.input_size), ("epochs", args.epochs)) if v})
    if name != "sliding-window":
        options.update(args.option)        # --option KEY=VALUE, as `scenekit train --option`
    if name == "fcn-4s":                   # not in the CLI's table: `scenekit train fcn --option architecture=fcn4s`
        return make_recipe("fcn", categories, {**options, "architecture": "fcn4s"})
    return make_recipe(name, categories, options)


def resolution_ceiling(args) -> None:
    """The best mean IoU a network scoring at stride s can reach, whatever it learns: the true class map at the
    network's input size, each s x s cell turned into its class fractions (a perfect score map), upsampled back as
    FCN's last layer does (fixed bilinear, `upsample_bilinear`, on log-fractions), resized to the image, argmax."""
    import numpy as np
    import torch.nn.functional as F

    from scenekit.data.world import make_world
    from scenekit.metrics.segmentation import SegmentationMeter
    from scenekit.models.fcn import pad_to_multiple, record_class_map, resize_class_map, upsample_bilinear

    test = make_world(args.test_images, seed=args.seed, split="test", image_size=args.image_size)
    class_index = {cid: i + 1 for i, cid in enumerate(sorted(test.categories))}
    maps = [record_class_map(test, record, class_index) for record in test.records]
    classes = len(class_index) + 1
    print(f"resolution ceiling: test mean IoU of a perfect stride-s score map ({len(maps)} test images, "
          f"world {args.image_size} px)")
    print(f"{'input px':>8s} " + " ".join(f"{'stride ' + str(s):>9s}" for s in (4, 8, 16, 32)))
    for size in sorted({args.input_size or 96, args.image_size}):
        cells = []
        for stride in (4, 8, 16, 32):
            meter = SegmentationMeter(num_classes=classes, ignore_index=255)
            for class_map in maps:
                small = torch.from_numpy(resize_class_map(class_map, size).astype(np.int64))
                one_hot = F.one_hot(small.clamp(max=classes - 1), classes).permute(2, 0, 1).float()[None]
                fractions = F.avg_pool2d(pad_to_multiple(one_hot, stride), stride)       # [1, K+1, S/s, S/s]
                scores = upsample_bilinear(fractions.clamp(min=1e-4).log(), stride)[..., :size, :size]
                scores = F.interpolate(scores, size=class_map.shape, mode="bilinear", align_corners=False)
                meter.update(scores[0].argmax(dim=0).numpy(), class_map)
            cells.append(float(meter.compute()["mean_iou"]))
        print(f"{size:8d} " + " ".join(f"{c:9.3f}" for c in cells))


def run_model(name: str, args) -> dict:
    from scenekit.data.world import make_world
    from scenekit.engine.train import TrainConfig, train
    from scenekit.models.fcn import evaluate_segmentation

    train_data = make_world(args.train_images, seed=args.seed, split="train", image_size=args.image_size)
    test_data = make_world(args.test_images, seed=args.seed, split="test", image_size=args.image_size)
    recipe = build_recipe(name, train_data.categories, args)
    class_ids = sorted(train_data.categories)
    config = TrainConfig(out=str(Path(args.out) / name), batch_size=args.batch_size, seed=args.seed,
                         progress=False, log_every=10 ** 9, tensorboard=False)
    # The learning curve: after each epoch the engine scores `--curve-images` val images; the time that takes
    # is measured here and taken off, so the training times count training alone.
    val_data = make_world(args.curve_images, seed=args.seed, split="val", image_size=args.image_size) \
        if args.curve_images and name != "sliding-window" else None
    curve, evaluation = [], {"cpu": 0.0, "wall": 0.0}
    cpu, wall = time.process_time(), time.perf_counter()
    score = recipe.evaluate

    def timed_evaluate(model, dataset, device):
        began_cpu, began_wall = time.process_time(), time.perf_counter()
        curve.append({"epoch": len(curve) + 1,
                      "train_cpu_s": round(began_cpu - cpu - evaluation["cpu"], 1)})
        scores = score(model, dataset, device)
        curve[-1]["val_mean_iou"] = round(scores["mean_iou"], 4)
        print(json.dumps({"model": name, **curve[-1]}), flush=True)
        evaluation["cpu"] += time.process_time() - began_cpu
        evaluation["wall"] += time.perf_counter() - began_wall
        return scores

    recipe.evaluate = timed_evaluate
    result = train(recipe, train_data, val_data, config)
    cpu = time.process_time() - cpu - evaluation["cpu"]
    wall = time.perf_counter() - wall - evaluation["wall"]
    model, device = result.model.eval(), torch.device("cpu")
    row = {"model": name, "train_cpu_s": cpu, "train_wall_s": wall, "threads": torch.get_num_threads(),
           "train_images": args.train_images, "epochs": recipe.phases[0].epochs, "image_size": args.image_size,
           "parameters": sum(p.numel() for p in model.parameters()), "curve": curve}
    # The sliding window is scored on the few images it can afford; the networks on all test images too.
    few = make_world(args.window_images, seed=args.seed, split="test", image_size=args.image_size)
    input_size = recipe.options["image_size"]                         # the network's; scores at the image's
    row["input_size"] = input_size
    # Superpixel averaging of the scores (Farabet et al. 2013), when the recipe asks for it; the scores without
    # it are kept as test_raw_*.
    superpixels = None
    if recipe.options.get("superpixel_scale"):
        superpixels = tuple(recipe.options[k] for k in ("superpixel_scale", "superpixel_sigma",
                                                         "superpixel_min_size"))
    row["superpixels"] = superpixels
    started = time.perf_counter()
    few_scores = evaluate_segmentation(model, few, device, class_ids, input_size, batch_size=1,
                                       superpixels=superpixels)
    row["window_images_s_per_image"] = (time.perf_counter() - started) / len(few)
    row["window_images_mean_iou"] = few_scores["mean_iou"]
    if name != "sliding-window":
        scores = evaluate_segmentation(model, test_data, device, class_ids, input_size, batch_size=16,
                                       superpixels=superpixels)
        row.update({f"test_{k}": v for k, v in scores.items()})
        if superpixels is not None:
            raw = evaluate_segmentation(model, test_data, device, class_ids, input_size, batch_size=16)
            row.update({f"test_raw_{k}": v for k, v in raw.items()})
    else:
        row.update({f"test_{k}": v for k, v in few_scores.items()})
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "curve"}),
          flush=True)
    (Path(args.out) / f"{name}.json").write_text(json.dumps(row, indent=1))
    return row


def report(args) -> None:
    rows = [json.loads((Path(args.out) / f"{m}.json").read_text()) for m in MODELS
            if (Path(args.out) / f"{m}.json").is_file()]
    if not rows:
        print(f"no results in {args.out}")
        return
    print(f"world {rows[0]['image_size']}x{rows[0]['image_size']} px, {rows[0]['train_images']} train images, "
          f"torch threads {rows[0]['threads']}; test = {rows[0]['test_images']} test images "
          f"(sliding window: the first {args.window_images})")
    print(f"{'model':22s} {'epochs':>6s} {'train CPU s':>11s} {'wall s':>7s} {'mIoU':>6s} {'pix acc':>7s} "
          f"{'img/s':>8s} {'s/img (same imgs)':>18s} {'mIoU (same)':>11s} {'mIoU w/o superpixels':>20s}")
    for r in rows:
        raw = f"{r['test_raw_mean_iou']:20.3f}" if "test_raw_mean_iou" in r else f"{'':>20s}"
        print(f"{r['model']:22s} {r['epochs']:6d} {r['train_cpu_s']:11.0f} {r['train_wall_s']:7.0f} "
              f"{r['test_mean_iou']:6.3f} {r['test_pixel_accuracy']:7.3f} {r['test_images_per_s']:8.2f} "
              f"{r['window_images_s_per_image']:18.3f} {r['window_images_mean_iou']:11.3f} {raw}")
    names = [k[len("test_iou_"):] for k in rows[0] if k.startswith("test_iou_")]
    print("\n" + f"{'per-class IoU':22s} " + " ".join(f"{n[:8]:>8s}" for n in names))
    for r in rows:
        print(f"{r['model']:22s} " + " ".join(f"{r['test_iou_' + n]:8.3f}" for n in names))
    for r in rows:
        if r.get("curve"):
            print(f"\nlearning curve of {r['model']} (val mIoU on {args.curve_images} images after each epoch):")
            print("  train CPU s: " + " ".join(f"{c['train_cpu_s']:6.0f}" for c in r["curve"]))
            print("  val mIoU:    " + " ".join(f"{c['val_mean_iou']:6.3f}" for c in r["curve"]))
    figure(args, [r["model"] for r in rows])


def figure(args, models: list[str], count: int = 4) -> None:
    """Test images | truth | each model's prediction, tinted by class (draw_semantic), in one PNG."""
    from PIL import Image, ImageDraw

    from scenekit.models.registry import restore
    from scenekit.data.world import make_world
    from scenekit.models.fcn import draw_semantic

    test = make_world(count, seed=args.seed, split="test", image_size=args.image_size, min_objects=3)
    columns = [("image", None), ("truth", None)] + [(m, m) for m in models]
    restored = {m: restore(str(Path(args.out) / m / "best.pt"), "cpu")[:3] for m in models}
    tiles = []
    for record in test.records:
        row = [Image.fromarray(record.image), draw_semantic(record.image, record.semantic, test.categories)]
        for name in models:
            recipe, model, device = restored[name]
            found = recipe.predict(model, [record.image], device)[0]
            row.append(draw_semantic(record.image, found["semantic"].numpy(), test.categories))
        tiles.append(row)
    width = max(t.width for row in tiles for t in row) + 4
    height = max(t.height for row in tiles for t in row) + 4
    canvas = Image.new("RGB", (width * len(columns), 14 + height * len(tiles)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (title, _) in enumerate(columns):
        draw.text((c * width + 2, 1), title, fill=(0, 0, 0))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(tile, (c * width, 14 + r * height))
    path = Path(args.out) / "fcn_predictions.png"
    canvas.save(path)
    print(f"\nfigure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--image-size", type=int, default=128, help="world image side S (px); test scores are "
                        "taken at this resolution")
    parser.add_argument("--train-images", type=int, default=2000, help="world train images")
    parser.add_argument("--test-images", type=int, default=200, help="world test images for the networks")
    parser.add_argument("--curve-images", type=int, default=100,
                        help="world val images scored after every epoch for the learning curve (0: none; their "
                             "time is not counted as training; test scores are of the last epoch)")
    parser.add_argument("--window-images", type=int, default=5,
                        help="test images every model (the sliding window included) labels, for the time comparison")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input side of the FCNs / DeconvNets (default: the recipe's, 96)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the networks (default: the recipe's, 25 x 2000 images at 96 px "
                             "fit 10 CPU-minutes)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe option of the networks, as `scenekit train --option` (repeatable)")
    parser.add_argument("--window-epochs", type=int, default=6, help="training epochs of the sliding window")
    parser.add_argument("--window", type=int, default=48, help="sliding-window side (px)")
    parser.add_argument("--windows-per-image", type=int, default=32, help="training windows per image and epoch")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (windows: x 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="random seed (world, weights, data order)")
    parser.add_argument("--out", default="benchmarks/out/fcn", help="folder for checkpoints, results, figure")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the figure")
    parser.add_argument("--ceiling", action="store_true",
                        help="only print the resolution ceiling: the test mean IoU of perfect stride-4/8/16/32 "
                             "score maps at the network input size and at the world's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from scenekit.models.registry import parse_options

    args.option = parse_options(args.option)
    if args.ceiling:
        resolution_ceiling(args)
        return
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        for name in args.models.split(","):
            if name not in MODELS:
                parser.error(f"unknown model {name!r}")
            batch = args.batch_size
            if name == "sliding-window":
                args.batch_size = batch * 16
            run_model(name, args)
            args.batch_size = batch
    report(args)


if __name__ == "__main__":
    main()
