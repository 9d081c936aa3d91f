"""`scenekit demo`: train the classification + localization model on the embedded world, in a few minutes.

Generates the single-object world, trains the localizer (classifier first, then the box regressor alone),
prints the ILSVRC localization errors and IoU statistics, and draws pictures of its predictions: whole-image
predictions on validation images, and Overfeat's multi-scale dense pass with greedy merging on larger images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def run_demo(out: str | Path = "demo_out", seed: int = 0, train_images: int = 1200, val_images: int = 300,
             epochs: int = 6) -> dict:
    from scenekit.data.world import make_world
    from scenekit.engine.train import TrainConfig, train
    from scenekit.models import localizer
    from scenekit.viz import draw_boxes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"generating the single-object world: {train_images} training and {val_images} validation images")
    train_data = make_world(train_images, seed=seed, split="train", image_size=64, single_object=True)
    val_data = make_world(val_images, seed=seed, split="val", image_size=64, single_object=True)
    recipe = localizer.recipe(train_data.categories, class_specific=True, image_size=64, epochs=epochs)
    print(f"training the class-specific localizer ({epochs} epochs classifier, "
          f"{recipe.phases[1].epochs} epochs regressor) -> {out / 'localizer'}")
    result = train(recipe, train_data, val_data,
                   TrainConfig(out=str(out / "localizer"), batch_size=32, seed=seed, log_every=0))
    model = result.model.eval()
    metrics = localizer.evaluate_localizer(model, val_data, torch.device("cpu"))

    class_ids = sorted(train_data.categories)
    names = train_data.categories
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    for record in val_data.records[:8]:
        found = localizer.predict_whole_image(model, [record.image], torch.device("cpu"), class_ids, k=1)[0]
        picture = draw_boxes(record.image, record.boxes, colour=(255, 255, 255))          # truth in white
        picture = draw_boxes(picture, found["boxes"], found["labels"], found["scores"], names=names)
        picture.resize((192, 192)).save(pictures / f"localizer_{record.image_id}.png")
    # Overfeat: the same weights as a fully convolutional network on 128 x 128 images, two scales.
    large = make_world(4, seed=seed, split="test", image_size=128, single_object=True)
    found = localizer.predict_overfeat(model, [r.image for r in large.records], torch.device("cpu"), class_ids,
                                       scales=(1.0, 1.25), max_detections=1)
    for record, detections in zip(large.records, found):
        picture = draw_boxes(record.image, record.boxes, colour=(255, 255, 255))
        picture = draw_boxes(picture, detections["boxes"], detections["labels"], detections["scores"], names=names)
        picture.resize((256, 256)).save(pictures / f"overfeat_{record.image_id}.png")

    summary = {"model": "localizer (class-specific)", "train_images": train_images, "val_images": val_images,
               "seconds": round(time.perf_counter() - started, 1),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print("\nclassification + localization on the world's validation split")
    for key in ("top1_cls_error", "top5_cls_error", "top1_loc_error", "top5_loc_error", "mean_iou",
                "iou_at_0.5", "images_per_s"):
        print(f"  {key:<16} {metrics[key]:.4f}")
    print(f"pictures (truth white, prediction coloured) in {pictures}; checkpoints in {out / 'localizer'}")
    print(f"demo took {summary['seconds']:.0f} s")
    return summary
