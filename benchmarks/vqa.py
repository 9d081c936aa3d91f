"""Claim: multiple-choice VQA with attention over the image grid (Zhu et al. 2016) answers >= 90% of the
scene world's questions, and attention helps over the same model without it.

Both variants (`scenekit.models.vqa`, attention on / off, same sizes, same data, same epochs) train with the
engine on world images (up to 4 questions each: colour, count, position, existence; 4 choices, chance 25%; the
answers are balanced within each kind, no answer right for more than ~40%), after the same pre-training of the
CNN on the images' caption words (Visual7W starts from an ImageNet VGG), then answer the world's test split;
accuracy is reported overall and per question kind, with training CPU seconds (`time.process_time`) and wall
seconds. Run: .venv/bin/python benchmarks/vqa.py [--train-images N] [--epochs E] [--test-images M] [--json]
Torch runs on `--threads` threads (default 1): the step-by-step LSTM is many small ops, which extra threads slow
down on a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from scenekit.data.world import make_world
from scenekit.engine.train import TrainConfig, train
from scenekit.models.vqa import WORLD_OPTIONS, evaluate_vqa, recipe

KINDS = ("colour", "count", "position", "existence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=5000, help="world training images")
    parser.add_argument("--test-images", type=int, default=500, help="world test images")
    parser.add_argument("--epochs", type=int, default=16, help="training epochs per variant")
    parser.add_argument("--pretrain-epochs", type=int, default=4,
                        help="epochs of the CNN's caption-concept pre-training (see vqa.recipe)")
    parser.add_argument("--image-size", type=int, default=64, help="side the images are fed at")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (all their questions)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data = make_world(args.train_images, seed=args.seed, split="train", **WORLD_OPTIONS)
    test_data = make_world(args.test_images, seed=args.seed, split="test", **WORLD_OPTIONS)
    rows = []
    for attention in (True, False):
        model_recipe = recipe(attention=attention, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs,
                              image_size=args.image_size)
        with tempfile.TemporaryDirectory() as out:
            cpu, wall = time.process_time(), time.perf_counter()
            result = train(model_recipe, train_data, None,
                           TrainConfig(out=out, batch_size=args.batch_size, seed=args.seed, progress=False,
                                       tensorboard=False, log_every=0))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        scores = evaluate_vqa(result.model, test_data, torch.device("cpu"))
        row = {"attention": attention, "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
               "accuracy": round(scores["accuracy"], 4),
               **{k: round(scores.get(f"accuracy_{k}", float("nan")), 4) for k in KINDS}}
        rows.append(row)
        print(json.dumps(row) if args.json else row, flush=True)
    if not args.json:
        print(f"\n{args.train_images} train / {args.test_images} test world images ({WORLD_OPTIONS['image_size']} px, "
              f"<= {WORLD_OPTIONS['max_objects']} objects, fed at {args.image_size} px), {args.pretrain_epochs} "
              f"pre-training + {args.epochs} epochs, {args.threads} torch thread(s)")
        print("| attention | overall | " + " | ".join(KINDS) + " | train CPU s | train wall s |")
        print("|---|---|" + "---|" * (len(KINDS) + 2))
        for row in rows:
            print(f"| {'with' if row['attention'] else 'without'} | {row['accuracy']:.3f} | "
                  + " | ".join(f"{row[k]:.3f}" for k in KINDS) + f" | {row['train_cpu_s']:.0f} | "
                  f"{row['train_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
