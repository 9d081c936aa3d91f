"""Claim: on the scene world, Show Attend and Tell > Show and Tell > DeepImageSent on CIDEr-D, each trained from
scratch on a CPU in minutes; beam search (beam 3) vs greedy decoding.

Each captioner (small CNN encoder + its decoder, `scenekit.models.captioner`) trains with the engine for the
same number of epochs on the same world images (5 captions each), after the same pre-training of its encoder on
the images' visual concepts (the words of their captions; the papers start from ImageNet CNNs), then captions the
world's test split greedily and with beam search. Scores are BLEU-1..4, ROUGE-L and CIDEr-D (`scenekit.metrics.captioning`, coco-caption's
arithmetic), references and candidates tokenised alike.
Run: .venv/bin/python benchmarks/captioning.py [--train-images N] [--epochs E] [--test-images M] [--json]
Training is timed in CPU seconds (`time.process_time`) and wall seconds. Torch runs on `--threads` threads
(default 1): the step-by-step decoders are many small ops, which extra threads slow down on a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from scenekit.data.world import make_world
from scenekit.engine.train import TrainConfig, train
from scenekit.models.captioner import KINDS, WORLD_OPTIONS, evaluate_captioner, recipe

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=1000, help="world training images")
    parser.add_argument("--test-images", type=int, default=300, help="world test images")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per model")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per batch (all 5 captions each); a step costs about the same at 8 as at 32 "
                             "(the decoder's many small ops dominate), so 8 gives 4 times the updates")
    parser.add_argument("--pretrain-epochs", type=int, default=10,
                        help="epochs of the shared encoder's visual-concept pre-training (see captioner.recipe)")
    parser.add_argument("--beam", type=int, default=3, help="beam size of the beam-search rows")
    parser.add_argument("--doubly-stochastic", type=float, default=None,
                        help="lambda of Show Attend and Tell's eq. (14) (default: the recipe's)")
    parser.add_argument("--models", nargs="+", default=list(KINDS), choices=KINDS, help="captioners to run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data = make_world(args.train_images, seed=args.seed, split="train", **WORLD_OPTIONS)
    test_data = make_world(args.test_images, seed=args.seed, split="test", **WORLD_OPTIONS)
    device = torch.device("cpu")
    rows = []
    for kind in args.models:
        extra = {} if args.doubly_stochastic is None else {"doubly_stochastic": args.doubly_stochastic}
        model_recipe = recipe(name=kind, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, **extra)
        with tempfile.TemporaryDirectory() as out:
            cpu, wall = time.process_time(), time.perf_counter()
            result = train(model_recipe, train_data, None,
                           TrainConfig(out=out, batch_size=args.batch_size, seed=args.seed, progress=False,
                                       tensorboard=False, log_every=0))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        model = result.model.eval()
        for decoding, beam in (("greedy", 1), (f"beam {args.beam}", args.beam)):
            scores = evaluate_captioner(model, test_data, device, beam_size=beam)
            rows.append({"model": kind, "decoding": decoding, "train_cpu_s": round(cpu, 1),
                         "train_wall_s": round(wall, 1), **{m: round(scores[m], 4) for m in METRICS}})
            print(json.dumps(rows[-1]) if args.json else
                  f"{kind:<16}{decoding:<9}" + "".join(f"{m} {scores[m]:.3f}  " for m in METRICS)
                  + f"train {cpu:.0f} CPU s, {wall:.0f} s", flush=True)
    if not args.json:
        print(f"\n{args.train_images} train / {args.test_images} test world images "
              f"({WORLD_OPTIONS['image_size']} px, <= {WORLD_OPTIONS['max_objects']} objects, fed at 64 px), "
              f"{args.pretrain_epochs} encoder pre-training + {args.epochs} captioning epochs, "
              f"batch {args.batch_size}, {args.threads} torch thread(s)")
        print("| model | decoding | " + " | ".join(METRICS) + " | train CPU s | train wall s |")
        print("|---|---|" + "---|" * (len(METRICS) + 2))
        for row in rows:
            print(f"| {row['model']} | {row['decoding']} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS)
                  + f" | {row['train_cpu_s']:.0f} | {row['train_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
