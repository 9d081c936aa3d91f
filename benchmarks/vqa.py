"""Claim: multiple-choice VQA with attention over the image grid (Zhu et al. 2016) answers >= 90% of the
scene world's questions, and attention helps over the same model without it.

Both variants (`scenekit.models.vqa`, attention on / off, same sizes, same data, same epochs) train with the
engine on world images (up to 4 questions each: colour, count, position, existence; 4 choices, chance 25%; the
answers are balanced within each kind, no answer right for more than ~40%), after the same pre-training of the
CNN on the images' caption words (Visual7W starts from an ImageNet VGG), then answer the world's test split;
accuracy is reported overall and per question kind, with training CPU seconds (`time.process_time`) and wall
seconds. Both variants share the encoder (small CNN + context layers, pre-trained on caption words and on the
cells' categories and object centres, see `scenekit.models.vqa`); the attention variant also has the count
glimpse. Diagnostics: accuracy on the first `--test-images` training images (train vs test), and, for colour
questions ("what colour is the circle?"), the share of the final attention that lands on cells the named shape
covers (from the test images' semantic maps).
Run: .venv/bin/python benchmarks/vqa.py [--train-images N] [--epochs E] [--test-images M] [--json]
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
from scenekit.data.world import CATEGORIES
from scenekit.models.vqa import WORLD_OPTIONS, QuestionData, collate_questions, evaluate_vqa, recipe

KINDS = ("colour", "count", "position", "existence")


@torch.no_grad()
def attention_on_named_shape(model, dataset, batch_size: int = 64) -> float:
    """Mean attention mass of the final step on the cells at least 10% covered by the shape a colour question
    names ("what colour is the <shape>?"); nan without attention."""
    if not model.config.attention:
        return float("nan")
    model.eval()
    data = QuestionData(dataset, model.vocabulary, model.config.image_size, model.grid, 1 + max(CATEGORIES))
    ids = {name: k for k, name in CATEGORIES.items()}
    masses = []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        images, targets = collate_questions(items)
        _, alpha = model.encode(images, targets["questions"], targets["owner"])        # [N, L]
        questions = [q for record in data.records[start:start + len(items)] for q in record.questions]
        for k, (question, owner) in enumerate(zip(questions, targets["owner"].tolist())):
            if question.kind == "colour":
                shape = question.question.rstrip("?").split()[-1]
                covered = targets["cell_classes"][owner, ids[shape]].flatten() > 0.1
                masses.append(float(alpha[k][covered].sum()))
    return sum(masses) / max(len(masses), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=10000,
                        help="world training images (fresh images overfit less than more epochs)")
    parser.add_argument("--test-images", type=int, default=500, help="world test images")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per variant")
    parser.add_argument("--pretrain-epochs", type=int, default=3,
                        help="epochs of the encoder's pre-training (caption words, cell categories and centres; "
                        "see vqa.recipe)")
    parser.add_argument("--image-size", type=int, default=64, help="side the images are fed at")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (all their questions)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_data = make_world(args.train_images, seed=args.seed, split="train", **WORLD_OPTIONS)
    test_data = make_world(args.test_images, seed=args.seed, split="test", **WORLD_OPTIONS)
    train_subset = make_world(min(args.test_images, args.train_images), seed=args.seed, split="train",
                              **WORLD_OPTIONS)                        # the first training images again
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
        seen = evaluate_vqa(result.model, train_subset, torch.device("cpu"))
        row = {"attention": attention, "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
               "accuracy": round(scores["accuracy"], 4),
               **{k: round(scores.get(f"accuracy_{k}", float("nan")), 4) for k in KINDS},
               "train_accuracy": round(seen["accuracy"], 4),
               "attention_on_shape": round(attention_on_named_shape(result.model, test_data), 3)}
        rows.append(row)
        print(json.dumps(row) if args.json else row, flush=True)
    if not args.json:
        print(f"\n{args.train_images} train / {args.test_images} test world images ({WORLD_OPTIONS['image_size']} px, "
              f"<= {WORLD_OPTIONS['max_objects']} objects, fed at {args.image_size} px), {args.pretrain_epochs} "
              f"pre-training + {args.epochs} epochs, {args.threads} torch thread(s)")
        print("| attention | overall | " + " | ".join(KINDS) + " | train-set accuracy | attention on the named "
              "shape | train CPU s | train wall s |")
        print("|---|---|" + "---|" * (len(KINDS) + 4))
        for row in rows:
            print(f"| {'with' if row['attention'] else 'without'} | {row['accuracy']:.3f} | "
                  + " | ".join(f"{row[k]:.3f}" for k in KINDS) + f" | {row['train_accuracy']:.3f} | "
                  f"{row['attention_on_shape']:.2f} | {row['train_cpu_s']:.0f} | {row['train_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
