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
`--out DIR` keeps the checkpoints; `--diagnose DIR/with_attention/best.pt` then splits the test errors by
question kind, right answer, small or occluded objects, and counts the questions whose pixels cannot settle the
answer (a shape whose visible part fits another shape too, e.g. a ring whose hole another object covers).
Run: .venv/bin/python benchmarks/vqa.py [--train-images N] [--epochs E] [--test-images M] [--out DIR] [--json]
Torch runs on `--threads` threads (default 1): the step-by-step LSTM is many small ops, which extra threads slow
down on a busy CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from scenekit.data.world import CATEGORIES, COLOURS, PLURALS, _rasterise, generate_scene, image_rng, make_world
from scenekit.engine.checkpoint import load_checkpoint
from scenekit.engine.evaluate import restore_model
from scenekit.engine.train import TrainConfig, train
from scenekit.models.vqa import WORLD_OPTIONS, QuestionData, answer_all, collate_questions, evaluate_vqa, recipe

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


# ------------------------------------------------------------------------------------------------ diagnosis
def replay_scene(seed: int, split: str, index: int):
    """The scene of VQA-world image `index` (objects with their full areas, the instance map), replaying
    `make_world`'s draws for its fixed image size: the records keep only the visible masks."""
    rng = image_rng(seed, split, index)
    size = WORLD_OPTIONS["image_size"]
    return generate_scene(rng, size, size, num_objects=int(rng.integers(0, WORLD_OPTIONS["max_objects"] + 1)))


def readable_shapes(scene, index: int, radii=(0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4), angles=7) -> set:
    """The shapes that object `index`'s visible pixels are consistent with: shape S (centred where the object
    is, radius and rotation from a grid) fits if S covers every visible pixel and lies wholly on the object's
    pixels or on pixels of objects drawn after it (which could hide the rest). Always holds the true shape; a
    second member means the pixels cannot tell the two apart (a ring whose hole is covered is an occluded
    circle). Same centre only, so this undercounts such ambiguities."""
    obj = scene.objects[index]
    height, width = scene.instance_map.shape
    visible = scene.instance_map == index
    hideable = visible | (scene.instance_map > index)
    found = {obj.shape}
    for shape in CATEGORIES.values():
        if shape in found:
            continue
        for scale in radii:
            for angle in np.linspace(-0.26, 0.26, angles) if shape != "star" else np.linspace(-np.pi, np.pi, 36):
                rows, cols, local = _rasterise(shape, *obj.centre, obj.radius * scale, float(angle), height, width)
                mask = np.zeros((height, width), dtype=bool)
                mask[rows, cols] = local
                if not (visible & ~mask).any() and not (mask & ~hideable).any():
                    found.add(shape)
                    break
            if shape in found:
                break
    return found


def involved(question, objects) -> tuple[list[int], str | None]:
    """Indices of the objects a question is about, and the shape it names (None: "shapes")."""
    words = question.question.rstrip("?").split()
    plural = {v: k for k, v in PLURALS.items()}
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((plural.get(w, w) for w in words if plural.get(w, w) in PLURALS), None)
    return [k for k, o in enumerate(objects) if (colour is None or o.colour == colour)
            and (shape is None or o.shape == shape)], shape


def diagnose(model, seed: int, images: int) -> dict:
    """Where the errors lie on the test split: accuracy per kind split by the true answer, by whether the
    question's objects are small or less than 60% visible, and the share of questions that the pixels cannot
    settle (see `readable_shapes`), with the accuracy on them."""
    dataset = make_world(images, seed=seed, split="test", **WORLD_OPTIONS)
    questions, right, _ = answer_all(model, dataset, torch.device("cpu"))
    rows, k = [], 0
    for index, record in enumerate(dataset.records):
        if not record.questions:
            continue
        scene = replay_scene(seed, "test", index)
        assert np.array_equal(scene.image, record.image), "the replayed scene differs from the record"
        readable = [readable_shapes(scene, j) for j in range(len(scene.objects))]
        for question in record.questions:
            members, shape = involved(question, scene.objects)
            colour_ok = [j for j, o in enumerate(scene.objects)
                         if next((w for w in question.question.split() if w in COLOURS), o.colour) == o.colour]
            unsettled = shape is not None and any(len(readable[j]) > 1 and shape in readable[j] for j in colour_ok)
            rows.append({"kind": question.kind, "right": bool(right[k]), "answer": question.choices[question.answer],
                         "small": any(scene.objects[j].size == "small" for j in members),
                         "occluded": any(scene.objects[j].area < 0.6 * scene.objects[j].full_area for j in members),
                         "unsettled": unsettled})
            k += 1
    def accuracy(selected):
        return {"n": len(selected), "accuracy": round(float(np.mean([r["right"] for r in selected])), 3)
                if selected else float("nan")}
    report = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        report[kind] = {"all": accuracy(mine),
                        "by_answer": {a: accuracy([r for r in mine if r["answer"] == a])
                                      for a in sorted({r["answer"] for r in mine})},
                        **{f"{flag}": accuracy([r for r in mine if r[flag]]) for flag in ("small", "occluded",
                                                                                         "unsettled")},
                        "clear": accuracy([r for r in mine if not (r["small"] or r["occluded"] or r["unsettled"])])}
    report["unsettled_share"] = round(sum(r["unsettled"] for r in rows) / len(rows), 4)
    report["accuracy_on_settled"] = accuracy([r for r in rows if not r["unsettled"]])
    return report


def print_diagnosis(path: str, seed: int, images: int, as_json: bool) -> None:
    checkpoint = load_checkpoint(path)
    model_recipe = recipe(checkpoint["categories"], **checkpoint["options"])
    report = diagnose(restore_model(model_recipe, checkpoint, torch.device("cpu")), seed, images)
    if as_json:
        print(json.dumps(report))
        return
    print(f"questions the pixels cannot settle: {report['unsettled_share']:.1%}; accuracy on the others: "
          f"{report['accuracy_on_settled']['accuracy']:.3f}")
    print("| kind | all | clear | small objects | < 60% visible | unsettled | by right answer |")
    print("|---|---|---|---|---|---|---|")
    cell = lambda a: f"{a['accuracy']:.3f} ({a['n']})" if a["n"] else "-"
    for kind in KINDS:
        r = report[kind]
        answers = ", ".join(f"{a}: {cell(v)}" for a, v in r["by_answer"].items())
        print(f"| {kind} | {cell(r['all'])} | {cell(r['clear'])} | {cell(r['small'])} | {cell(r['occluded'])} | "
              f"{cell(r['unsettled'])} | {answers} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=20000,
                        help="world training images (fresh images overfit less than more epochs)")
    parser.add_argument("--test-images", type=int, default=500, help="world test images")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per variant")
    parser.add_argument("--pretrain-epochs", type=int, default=3,
                        help="epochs of the encoder's pre-training (caption words, cell categories and centres; "
                        "see vqa.recipe)")
    parser.add_argument("--image-size", type=int, default=96,
                        help="side the images are fed at (the world's are 128 px; 96 px gives a 12 x 12 grid)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64],
                        help="SmallCNN widths, one per pooling stage")
    parser.add_argument("--variants", choices=("both", "with", "without"), default="both",
                        help="train the model with attention, without, or both")
    parser.add_argument("--out", default=None,
                        help="keep the checkpoints in OUT/with_attention and OUT/without_attention (default: "
                        "a temporary folder)")
    parser.add_argument("--diagnose", metavar="CHECKPOINT", default=None,
                        help="only diagnose a trained model's errors on the test split (see `diagnose`)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (all their questions)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (world images, initialisation)")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="another seed for the training images and the initialisation only, the test split "
                             "staying --seed's: a repeat of the same experiment on the same test questions")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.diagnose:
        print_diagnosis(args.diagnose, args.seed, args.test_images, args.json)
        return
    train_seed = args.seed if args.train_seed is None else args.train_seed
    train_data = make_world(args.train_images, seed=train_seed, split="train", **WORLD_OPTIONS)
    test_data = make_world(args.test_images, seed=args.seed, split="test", **WORLD_OPTIONS)
    train_subset = make_world(min(args.test_images, args.train_images), seed=train_seed, split="train",
                              **WORLD_OPTIONS)                        # the first training images again
    rows = []
    variants = {"both": (True, False), "with": (True,), "without": (False,)}[args.variants]
    for attention in variants:
        model_recipe = recipe(attention=attention, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs,
                              image_size=args.image_size, channels=tuple(args.channels))
        with tempfile.TemporaryDirectory() as scratch:
            out = scratch if args.out is None else f"{args.out}/{'with' if attention else 'without'}_attention"
            cpu, wall = time.process_time(), time.perf_counter()
            result = train(model_recipe, train_data, None,
                           TrainConfig(out=out, batch_size=args.batch_size, seed=train_seed, progress=False,
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
