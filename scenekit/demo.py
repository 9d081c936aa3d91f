"""`scenekit demo`: the chapter in about three CPU-minutes, on the embedded world.

1. Detection, a one-stage and a two-stage detector side by side: YOLOv2 (Redmon & Farhadi 2017) and Mask R-CNN
   (He et al. 2017: Faster R-CNN's RPN and region head plus a mask branch), each trained briefly on the same
   generated scenes, scored on the same test images (VOC mAP@0.5, COCO AP) and timed the same way (images per
   second of the whole `predict`, batch 1), as YOLOv2's paper tables accuracy against frame rate.
2. Instance masks: Mask R-CNN's per-object masks drawn under its boxes.
3. A caption with its attention: Show, Attend and Tell (Xu et al. 2015), one picture per generated word.
4. The trace of one image: every step of Mask R-CNN on it, labelled with the paper (`scenekit trace`).

A short training run is far from each model's benchmark figure (benchmarks/README.md has those); the demo shows
what each method does, in the time a reader waits. Every picture's path is printed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

DETECTION_SIZE = 128       # px: small scenes keep the two trainings to about a minute each on two cores


def _train(recipe, train_data, val_data, out: Path, seed: int):
    from scenekit.engine.train import TrainConfig, train

    config = TrainConfig(out=str(out), batch_size=recipe.batch_size, seed=seed, log_every=0, tensorboard=False)
    return train(recipe, train_data, val_data, config).model.eval()


def _images_per_second(recipe, model, images) -> float:
    """Images per second of `recipe.predict`, one image per call (decode, network, post-processing), best of 2."""
    device = torch.device("cpu")
    best = float("inf")
    with torch.no_grad():
        recipe.predict(model, images[:1], device)                 # warm-up
        for _ in range(2):
            started = time.perf_counter()
            for image in images:
                recipe.predict(model, [image], device)
            best = min(best, time.perf_counter() - started)
    return len(images) / best


def _side_by_side(pictures, titles):
    """Pictures in one row with a title above each."""
    from PIL import Image, ImageDraw

    band = 18
    width, height = sum(p.width for p in pictures), max(p.height for p in pictures) + band
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw, x = ImageDraw.Draw(sheet), 0
    for picture, title in zip(pictures, titles):
        sheet.paste(picture, (x, band))
        draw.text((x + 4, 3), title, fill=(0, 0, 0))
        x += picture.width
    return sheet


def detection(out: Path, seed: int, train_images: int, epochs: int, test_images: int = 100
              ) -> tuple[dict, list[Path], tuple]:
    """Train YOLOv2 and Mask R-CNN on the same scenes; their table rows, the pictures, and Mask R-CNN for the trace."""
    from scenekit.data.world import make_world
    from scenekit.models import mask_rcnn, yolo
    from scenekit.viz import draw_prediction

    world = dict(image_size=DETECTION_SIZE, max_objects=5)
    train_data = make_world(train_images, seed=seed, split="train", **world)
    val_data = make_world(max(4, test_images // 2), seed=seed, split="val", **world)
    test_data = make_world(test_images, seed=seed, split="test", **world)
    names = train_data.categories
    recipes = {
        "YOLOv2 (one stage)": yolo.recipe(names, version=2, image_size=DETECTION_SIZE, multi_scale=False,
                                          channels=[8, 16, 32, 64], head_channels=64, strided_stem=True,
                                          epochs=epochs * 6, warmup_steps=20),
        "Mask R-CNN (two stages)": mask_rcnn.recipe(names, image_size=DETECTION_SIZE, epochs=epochs),
    }
    rows, models = {}, {}
    for title, recipe in recipes.items():
        print(f"\n[{title}] training {recipe.phases[-1].epochs} epochs on {train_images} scenes of "
              f"{DETECTION_SIZE} px", flush=True)
        started = time.process_time()
        model = _train(recipe, train_data, val_data, out / recipe.model_name, seed)
        cpu_seconds = time.process_time() - started
        metrics = recipe.evaluate(model, test_data, torch.device("cpu"))
        speed = _images_per_second(recipe, model, [r.image for r in test_data.records[:30]])   # batch 1
        rows[title] = {"mAP50": metrics["mAP50"], "AP": metrics["AP"],
                       "images_per_s": speed, "training_cpu_s": cpu_seconds}
        models[title] = (recipe, model)
    pictures = []
    for record in test_data.records[:4]:
        drawn = []
        for title, (recipe, model) in models.items():
            with torch.no_grad():
                found = recipe.predict(model, [record.image], torch.device("cpu"))[0]
            drawn.append(draw_prediction(record.image, found, names, score_threshold=0.5, long_side=384))
        path = out / "pictures" / f"detection_{record.image_id}.png"
        _side_by_side(drawn, list(models)).save(path)
        pictures.append(path)
    return rows, pictures, (models["Mask R-CNN (two stages)"], test_data.records[0])


def caption(out: Path, seed: int, train_images: int, epochs: int, val_images: int = 50) -> tuple[dict, Path]:
    """Show, Attend and Tell trained briefly; one test image's caption and its attention per word."""
    from scenekit.data.world import make_world
    from scenekit.models import captioner
    from scenekit.viz import draw_attention

    recipe = captioner.recipe(kind="showattendtell", name="showattendtell", epochs=epochs, pretrain_epochs=1)
    train_data = make_world(train_images, seed=seed, split="train", **recipe.world)
    val_data = make_world(val_images, seed=seed, split="val", **recipe.world)
    print(f"\n[Show, Attend and Tell] training on {train_images} scenes and their captions", flush=True)
    model = _train(recipe, train_data, val_data, out / "showattendtell", seed)
    record = make_world(1, seed=seed, split="test", **recipe.world).records[0]
    tensor = captioner.prepare_image(record.image, model.config.image_size)[None]
    with torch.no_grad():
        text, words, alphas = captioner.caption_images(model, tensor, beam_size=3)[0]
    path = out / "pictures" / "caption_attention.png"
    draw_attention(record.image, words, alphas, cell=128, columns=4).save(path)
    return {"caption": text, "reference": record.captions[0] if record.captions else ""}, path


def run_demo(out: str | Path = "demo_out", seed: int = 0, train_images: int = 300, epochs: int = 4,
             caption_images: int = 400, caption_epochs: int = 3, test_images: int = 100) -> dict:
    torch.manual_seed(seed)
    out = Path(out)
    (out / "pictures").mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    rows, detection_pictures, ((trace_recipe, trace_model), trace_record) = detection(out, seed, train_images,
                                                                                       epochs, test_images)
    captioned, attention_picture = caption(out, seed, caption_images, caption_epochs, max(4, test_images // 2))
    from scenekit.trace import trace

    print("\n[trace] every step of Mask R-CNN on one test image", flush=True)
    trace(trace_recipe, trace_model, trace_record.image, out / "trace",
          targets={"boxes": trace_record.boxes, "labels": trace_record.labels})

    summary = {"detection": rows, "caption": captioned, "seconds": round(time.perf_counter() - started, 1),
               "cpu_seconds": round(time.process_time() - cpu_started, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\none-stage vs two-stage detection on {DETECTION_SIZE} px world scenes ({test_images} test images, "
          "batch 1, this machine)")
    print(f"  {'model':<26} {'VOC mAP@0.5':>11} {'COCO AP':>8} {'images/s':>9} {'train CPU-s':>12}")
    for title, row in rows.items():
        print(f"  {title:<26} {row['mAP50'] or float('nan'):>11.3f} {row['AP'] or float('nan'):>8.3f} "
              f"{row['images_per_s']:>9.1f} {row['training_cpu_s']:>12.0f}")
    print(f"\ncaption of a test image: \"{captioned['caption']}\" (one reference: \"{captioned['reference']}\")")
    print("\npictures:")
    print(f"  detection, YOLOv2 | Mask R-CNN with its instance masks: {', '.join(map(str, detection_pictures))}")
    print(f"  the caption's attention, one panel per word:           {attention_picture}")
    print(f"  the trace of Mask R-CNN, step by step:                 {out / 'trace' / 'index.html'}")
    print(f"  training curves of each run:                            {out}/*/curves.png")
    print(f"demo took {summary['seconds']:.0f} s ({summary['cpu_seconds']:.0f} CPU-s)")
    return summary
