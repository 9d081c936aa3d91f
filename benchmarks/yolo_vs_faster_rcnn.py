"""YOLOv2 against Faster R-CNN on the embedded world, each trained to convergence: accuracy and images per second.

Redmon & Farhadi 2017 (Table 3) place YOLOv2 next to Faster R-CNN: similar VOC mAP at several times the frame
rate. The issue's target on the world: YOLOv2 within 5 mAP points of Faster R-CNN at >= 5x its images per second.

Both detectors are evaluated on the same test images (the world's test split, seed 0, 160 px) with the same
metrics (VOC mAP@0.5 all-point, COCO AP), and timed the same way in this one process: `recipe.predict` on
decoded images (resize/letterbox, forward, decoding, NMS; for Faster R-CNN also the RPN's proposal layer and
the region head), batches of 1 and of 16, the same torch thread count. The two models' timing passes
alternate (`--timing-rounds` rounds of one pass each) and each keeps its best pass, so a change in the machine's
load during the run touches both sides of the ratio alike.

Each model is trained by its default recipe unless a checkpoint is given:

    # Faster R-CNN from benchmarks/rcnn_family.py (its best.pt), YOLOv2 trained here:
    .venv/bin/python benchmarks/yolo_vs_faster_rcnn.py --threads 2 \\
        --faster-rcnn-checkpoint runs/bench_rcnn/faster-rcnn/best.pt
    .venv/bin/python benchmarks/yolo_vs_faster_rcnn.py --train-images 300 --epochs 2     # quick look

    # The session-14 YOLOv2 (stride 16, 10 x 10 grid): 40 multi-scale epochs on 2400 images, then 10 epochs
    # at the 160 px test size (--yolo-finetune); with --yolo-checkpoint runs/s14_yolo/long/best.pt instead of
    # the --yolo-option/--epochs/--val-images flags only the fine-tuning is run:
    .venv/bin/python benchmarks/yolo_vs_faster_rcnn.py --threads 2 --train-images 2400 --val-images 0 \
        --epochs 40 --yolo-option 'channels=[8,16,32,64]' --yolo-option head_channels=128 \
        --yolo-option strided_stem=true --yolo-finetune 10 \
        --faster-rcnn-checkpoint runs/final_rcnn2000/faster-rcnn/best.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def one_pass(recipe, model, images, batch: int) -> float:
    """Seconds of `recipe.predict` over `images` in batches of `batch`."""
    device = torch.device("cpu")
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            recipe.predict(model, images[start:start + batch], device)
    return time.perf_counter() - started


def interleaved_images_per_s(models: list[tuple], batches: dict[str, tuple[int, list]], rounds: int) -> list[dict]:
    """Images per second of each (recipe, model) for each named (batch size, images): `rounds` rounds, each
    timing one pass of every model in turn, and the best pass of each. Alternating keeps a drift in the
    machine's load (another process, the clock) from landing on one side of the ratio only."""
    best = [{name: float("inf") for name in batches} for _ in models]
    for _ in range(rounds):
        for fastest, (recipe, model) in zip(best, models):
            for name, (batch, images) in batches.items():
                fastest[name] = min(fastest[name], one_pass(recipe, model, images, batch) / len(images))
    return [{name: 1.0 / seconds for name, seconds in fastest.items()} for fastest in best]


def multiply_adds_per_image(recipe, model, images) -> float:
    """Multiply-adds of `recipe.predict` per image, one image per call (convolutions and matrix products, as
    counted by torch.utils.flop_counter, FLOPs / 2). The machine-independent cost: with the convolutions
    running near the core's peak, it bounds the speed ratio at batch 1. Faster R-CNN's count includes its RPN
    and its region head on every proposal."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for image in images:
            recipe.predict(model, [image], device)
    return counter.get_total_flops() / 2 / len(images)


def trained(name: str, checkpoint: str | None, data: dict, args, extra: dict) -> tuple:
    """(recipe, model in eval mode, training wall seconds or None, checkpoint path) for `name`, from
    `checkpoint` or trained."""
    from scenekit.models.registry import make_recipe, restore
    from scenekit.engine.train import TrainConfig, train

    if checkpoint:
        recipe, model, _, _ = restore(checkpoint, "cpu")
        return recipe, model.eval(), None, checkpoint
    options = {**({} if args.epochs is None else {"epochs": args.epochs}), **extra}
    recipe = make_recipe(name, data["train"].categories, options)
    config = TrainConfig(out=str(Path(args.out) / name), batch_size=recipe.batch_size, seed=args.seed,
                         progress=False, tensorboard=False, log_every=200)
    started = time.perf_counter()
    result = train(recipe, data["train"], data.get("val"), config)
    seconds = time.perf_counter() - started
    _, model, _, _ = restore(str(result.best_checkpoint), "cpu")
    return recipe, model.eval(), seconds, str(result.best_checkpoint)


def fine_tuned_at_test_size(recipe, checkpoint: str, data: dict, args) -> tuple:
    """(recipe, model, checkpoint path): the YOLOv2 of `checkpoint` trained `--yolo-finetune` more epochs at its
    test size only (multi-scale off, cosine from `--yolo-finetune-lr`, the same k-means priors), so that its
    weights and batch-norm statistics end at the size it is tested at. Multi-scale training leaves both tuned
    to a mix of sizes (and the running statistics to the last ones drawn)."""
    from scenekit.models.registry import make_recipe, restore
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.train import TrainConfig, train

    state = load_checkpoint(checkpoint)
    options = {**state["options"], "multi_scale": False, "epochs": args.yolo_finetune, "lr": args.yolo_finetune_lr,
               "warmup_steps": 0, "anchors": state["model_config"]["anchors"]}
    if args.yolo_finetune_size:
        options.update(image_size=args.yolo_finetune_size, test_size=None)
    tuned = make_recipe("yolo2", recipe.categories, options)
    build = tuned.build_model

    def build_from_checkpoint(config):
        model = build(config)
        model.load_state_dict(state["model"])
        return model

    tuned.build_model = build_from_checkpoint
    config = TrainConfig(out=str(Path(args.out) / "yolo2_finetune"), batch_size=tuned.batch_size, seed=args.seed,
                         progress=False, tensorboard=False, log_every=200)
    result = train(tuned, data["train"], None, config)
    tuned, model, _, _ = restore(str(result.best_checkpoint), "cpu")
    return tuned, model.eval(), str(result.best_checkpoint)


def with_precise_batch_norm(recipe, model, data: dict, args, checkpoint: str) -> str:
    """Re-estimate YOLOv2's batch-norm statistics at its test size on training images
    (`scenekit.models.yolo.recompute_batch_norm`) and save the result beside the run; returns its path."""
    from scenekit.engine.checkpoint import load_checkpoint, save_checkpoint
    from scenekit.models.yolo import recompute_batch_norm

    size = recipe.options.get("test_size") or recipe.options["image_size"]
    recompute_batch_norm(model, data["train"], sorted(recipe.categories), size, images=args.yolo_precise_bn)
    state = load_checkpoint(checkpoint)
    state["model"] = model.state_dict()
    path = Path(args.out) / "yolo2_precise_bn.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train-images", type=int, default=1600)
    parser.add_argument("--val-images", type=int, default=100,
                        help="validation images picking the best epoch; 0: no validation, the last epoch")
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=160, help="world image side")
    parser.add_argument("--epochs", type=int, default=None, help="override both recipes' epochs")
    parser.add_argument("--yolo-checkpoint", default=None, help="a trained yolo2 checkpoint instead of training")
    parser.add_argument("--faster-rcnn-checkpoint", default=None,
                        help="a trained faster-rcnn checkpoint instead of training")
    parser.add_argument("--yolo-option", action="append", metavar="KEY=VALUE", default=[],
                        help="yolo2 recipe option (JSON value), e.g. channels=[8,16,32,64,128]")
    parser.add_argument("--yolo-finetune", type=int, default=0, metavar="EPOCHS",
                        help="then train YOLOv2 this many more epochs at its test size only (multi-scale off), "
                             "from its weights; saved under OUT/yolo2_finetune")
    parser.add_argument("--yolo-finetune-lr", type=float, default=5e-4, help="peak lr of that (cosine, no warm-up)")
    parser.add_argument("--yolo-finetune-size", type=int, default=None, metavar="PX",
                        help="fine-tune (and then test) YOLOv2 at this input side instead of its image_size: "
                             "YOLOv2's speed/accuracy trade-off is chosen by the input size (Redmon & Farhadi "
                             "2017, Table 3); a multiple of the network's stride")
    parser.add_argument("--yolo-precise-bn", type=int, default=0, metavar="IMAGES",
                        help="re-estimate YOLOv2's batch-norm statistics at its test size on this many training "
                             "images before measuring (multi-scale training leaves the last sizes' statistics); "
                             "the result is saved as OUT/yolo2_precise_bn.pt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="alternating timing passes per model and batch size (the best of each is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_yolo_vs_frcnn")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from scenekit.models.registry import parse_options
    from scenekit.data.world import make_world

    data = {split: make_world(n, split=split, seed=args.seed, image_size=args.image_size)
            for split, n in (("train", args.train_images), ("val", args.val_images), ("test", args.test_images))
            if n > 0}
    images = [record.image for record in data["test"].records]
    rows, loaded = [], []
    yolo_options = parse_options(args.yolo_option)
    for name, checkpoint, extra in (("faster-rcnn", args.faster_rcnn_checkpoint, {}),
                                    ("yolo2", args.yolo_checkpoint, yolo_options)):
        recipe, model, train_seconds, path = trained(name, checkpoint, data, args, extra)
        if name == "yolo2" and args.yolo_finetune > 0:
            recipe, model, path = fine_tuned_at_test_size(recipe, path, data, args)
            print(f"fine-tuned at the test size: {path}", flush=True)
        if name == "yolo2" and args.yolo_precise_bn > 0:
            print(f"precise batch norm: {with_precise_batch_norm(recipe, model, data, args, path)}", flush=True)
        metrics = recipe.evaluate(model, data["test"], torch.device("cpu"))
        row = {"model": name, "input": recipe.options.get("image_size"), "mAP50": metrics["mAP50"],
               "coco_AP": metrics["AP"],
               "train_min": None if train_seconds is None else train_seconds / 60,
               "gmac_per_image": multiply_adds_per_image(recipe, model, images[:50]) / 1e9}
        rows.append(row)
        loaded.append((recipe, model))
        print(json.dumps(row), flush=True)

    speeds = interleaved_images_per_s(loaded, {"images_per_s_batch1": (1, images[:100]),
                                               "images_per_s_batch16": (16, images)}, args.timing_rounds)
    for row, speed in zip(rows, speeds):
        row.update(speed)
    frcnn, yolo = rows
    print(f"\nworld test split: {args.test_images} images at {args.image_size} px, {args.threads} torch thread(s)")
    print("| model | input | VOC mAP@0.5 | COCO AP | GMAC / image | images/s (batch 1) | images/s (batch 16) "
          "| train min |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        minutes = "-" if r["train_min"] is None else f"{r['train_min']:.1f}"
        print(f"| {r['model']} | {r['input']} | {r['mAP50']:.3f} | {r['coco_AP']:.3f} | {r['gmac_per_image']:.3f} | "
              f"{r['images_per_s_batch1']:.1f} | {r['images_per_s_batch16']:.1f} | {minutes} |")
    print(f"\nYOLOv2 - Faster R-CNN: {100 * (yolo['mAP50'] - frcnn['mAP50']):+.1f} mAP points; speed ratio "
          f"{yolo['images_per_s_batch1'] / frcnn['images_per_s_batch1']:.1f}x (batch 1), "
          f"{yolo['images_per_s_batch16'] / frcnn['images_per_s_batch16']:.1f}x (batch 16); "
          f"multiply-adds {frcnn['gmac_per_image'] / yolo['gmac_per_image']:.1f}x fewer")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
