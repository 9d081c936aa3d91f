"""Classification + localization on the embedded world: training time, ILSVRC errors, IoU, inference speed.

    .venv/bin/python benchmarks/localizer.py [--train-images 1500] [--epochs 6] [--seed 0]

The seed's recipe, step by step, with the engine: (1) train the classifier (small CNN, 64 x 64 single-object
world images); (2) attach a regression head to the trained classifier and train it alone with SGD and the L2
loss, once class-agnostic (4 outputs) and once class-specific (K x 4 outputs), from the same classifier, so the
two rows differ only in the head; (3) evaluate both heads together on the validation split; (4) run the
class-specific model as Overfeat (fully convolutional, 2 or 3 scales, greedy merge) on larger 128 x 128 test
images, next to the whole-image localizer on the same images. Prints a Markdown table: CPU training seconds,
top-1 / top-5 localization error (ILSVRC), mean IoU of the true class's box, and images per second.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scenekit.data.world import make_world
from scenekit.engine.train import TrainConfig, train
from scenekit.metrics.localization import localization_error, top1_box_iou
from scenekit.models import localizer


def _timed_train(recipe, train_data, val_data, out, seed):
    start = time.perf_counter()
    result = train(recipe, train_data, val_data, TrainConfig(out=str(out), batch_size=32, seed=seed, log_every=0,
                                                             tensorboard=False))
    return result, time.perf_counter() - start


def _score_detections(found, records, class_ids):
    """Top-1 / top-5 localization error and best-guess IoU of per-image detection lists, in pixels."""
    k = 5
    labels = np.zeros((len(found), k), dtype=np.int64)
    boxes = np.zeros((len(found), k, 4))
    for i, detections in enumerate(found):
        n = len(detections["labels"])
        labels[i, :n] = np.asarray(detections["labels"])[:k]
        boxes[i, :n] = np.asarray(detections["boxes"], dtype=np.float64)[:k]
        labels[i, n:], boxes[i, n:] = -1, 0.0                   # fewer than 5 guesses: pad with misses
    gt_boxes, gt_labels = [r.boxes for r in records], [r.labels for r in records]
    return (localization_error(labels, boxes, gt_labels, gt_boxes, k=1),
            localization_error(labels, boxes, gt_labels, gt_boxes, k=5), top1_box_iou(boxes, gt_boxes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=1500, help="single-object world training images")
    parser.add_argument("--val-images", type=int, default=300, help="validation images")
    parser.add_argument("--test-images", type=int, default=100, help="128 x 128 images for the Overfeat rows")
    parser.add_argument("--epochs", type=int, default=6, help="classifier epochs; each regressor gets as many")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()

    train_data = make_world(args.train_images, seed=args.seed, split="train", image_size=64, single_object=True)
    val_data = make_world(args.val_images, seed=args.seed, split="val", image_size=64, single_object=True)
    test_data = make_world(args.test_images, seed=args.seed, split="test", image_size=128, single_object=True)
    class_ids = sorted(train_data.categories)
    work = Path(tempfile.mkdtemp(prefix="scenekit-localizer-"))

    # (1) the classifier alone
    base = localizer.recipe(train_data.categories, epochs=args.epochs)
    base.phases = base.phases[:1]
    classified, classifier_seconds = _timed_train(base, train_data, None, work / "classifier", args.seed)
    trained = {k: v for k, v in classified.model.state_dict().items() if not k.startswith("regressor.")}

    rows, models = [], {}
    for name, class_specific in (("class-agnostic", False), ("class-specific", True)):
        # (2) a regression head on the trained classifier, trained alone
        recipe = localizer.recipe(train_data.categories, class_specific=class_specific, epochs=args.epochs)
        recipe.phases = recipe.phases[1:]
        build = recipe.build_model

        def attach(config, build=build):
            model = build(config)
            model.load_state_dict(trained, strict=False)
            return model

        recipe.build_model = attach
        result, regressor_seconds = _timed_train(recipe, train_data, None, work / name, args.seed)
        model = models[name] = result.model.eval()
        # (3) both heads on the validation split
        metrics = localizer.evaluate_localizer(model, val_data, torch.device("cpu"))
        rows.append((f"localizer, {name} regression", f"world 64 px, {len(train_data)} / {len(val_data)}",
                     classifier_seconds + regressor_seconds, metrics["top1_loc_error"], metrics["top5_loc_error"],
                     metrics["mean_iou"], metrics["images_per_s"]))

    # (4) whole image vs Overfeat on larger images, class-specific model
    model = models["class-specific"]
    images = [r.image for r in test_data.records]
    def overfeat(scales):
        return lambda: localizer.predict_overfeat(model, images, torch.device("cpu"), class_ids, scales=scales,
                                                  max_detections=5)

    for label, predict in (
            ("whole image resized to 64", lambda: localizer.predict_whole_image(model, images, torch.device("cpu"),
                                                                                class_ids)),
            ("Overfeat, scales 1, 1.25 + greedy merge", overfeat((1.0, 1.25))),
            ("Overfeat, scales 1, 1.5, 2 + greedy merge", overfeat((1.0, 1.5, 2.0)))):
        start = time.perf_counter()
        found = predict()
        seconds = time.perf_counter() - start
        top1, top5, iou = _score_detections(found, test_data.records, class_ids)
        rows.append((f"class-specific, {label}", f"world 128 px, {len(test_data)} test", float("nan"), top1, top5,
                     iou, len(images) / seconds))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}; "
          f"classifier {args.epochs} epochs, each regressor {args.epochs} epochs, batch 32, seed {args.seed}")
    print("| model | data | CPU training s | top-1 loc err | top-5 loc err | mean IoU | images/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model_name, data, seconds, top1, top5, iou, speed in rows:
        shown = "(same model)" if seconds != seconds else f"{seconds:.0f}"
        print(f"| {model_name} | {data} | {shown} | {top1:.3f} | {top5:.3f} | {iou:.3f} | {speed:.0f} |")
    print("mean IoU: box given to the true class vs the object (rows 1-2); best guess vs closest object (rows 3-5)")


if __name__ == "__main__":
    main()
