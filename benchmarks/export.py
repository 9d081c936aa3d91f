"""PyTorch vs onnxruntime on the CPU, same weights, same inputs: images per second of each exported network, and
of whole predictions (pre-processing, graphs, decoding, NMS) from `scenekit predict --onnx` against the checkpoint.

    .venv/bin/python benchmarks/export.py [--batch 8] [--images 8] [--seconds 3] [--threads 1] [--mode both]

Network table (`--mode network`): for each family that exports (default sizes of its recipe, untrained weights:
speed does not depend on them), the main graph (`scenekit.export.export_graph`: backbone + heads, raw outputs)
runs on a batch of random images in PyTorch (eval, no_grad) and in onnxruntime (CPUExecutionProvider, graph
optimisations on), for about `--seconds` each after one warm-up run, and the two are compared (max |difference|).

End-to-end table (`--mode end-to-end`): `recipe.predict(model, images)` against `export.load_onnx(file).predict(
images)` on `--images` world test images (their own sizes, 128..320 px): the same Python post-processing, the
tensor stages (RoI heads and decoder steps included) in PyTorch or onnxruntime. "agree" says whether labels (or
captions) are equal and the largest |difference| of boxes and scores (`agreement`; the untrained detectors'
score layers are spread by `build`, or their scores tie to the last bits). Fast R-CNN's Selective Search runs in the
warm-up only (its proposals are cached per image), so its row times the detector, not the search.
`--threads 0` leaves both libraries at their defaults; N sets torch.set_num_threads and ORT intra-op threads.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scenekit import export
from scenekit.models.registry import make_recipe
from scenekit.data.world import CATEGORIES, make_world

FAMILIES = ["localizer", "overfeat", "yolo1", "yolo2", "fcn-8s", "deconvnet", "faster-rcnn", "showattendtell"]
END_TO_END = ["localizer", "overfeat", "yolo1", "yolo2", "fcn-8s", "deconvnet", "fast-rcnn", "faster-rcnn",
              "mask-rcnn", "deepimagesent", "showtell", "showattendtell"]


def rate(function, inputs, seconds: float) -> float:
    function(inputs)                                   # warm-up (allocations, ORT's first-run planning, caches)
    runs, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or runs < 3:
        function(inputs)
        runs += 1
    return runs * len(inputs) / (time.perf_counter() - began)


def build(name: str):
    recipe = make_recipe(name, dict(CATEGORIES))
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config).eval()
    # The papers' initialisation (std 0.01) leaves an untrained detector's objectness and class scores within
    # float rounding of one another: proposals and detections tie, and the libraries' last-bit differences break
    # the ties differently. Trained scores are apart (a trained Faster R-CNN agrees within 5e-5 px); spread these.
    with torch.no_grad():
        for layer in (getattr(model, "rpn", None) and model.rpn.objectness,
                      getattr(model, "box_head", None) and model.box_head.cls_score):
            if layer is not None:
                torch.nn.init.normal_(layer.weight, std=1.0)
                torch.nn.init.normal_(layer.bias, std=1.0)
    return recipe, model


def network_table(args, folder: Path) -> None:
    print("| model | input | PyTorch images/s | onnxruntime images/s | ORT / PyTorch | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.families or FAMILIES:
        recipe, model = build(name)
        graph = export.export_graph(recipe, model)
        path = export.export_onnx(recipe, model, folder / f"{name}.onnx")
        session = export.OnnxSession(path, threads=args.threads or None)
        images = torch.rand(args.batch, 3, *graph.example.shape[2:])

        def torch_run(x):
            with torch.no_grad():
                return graph.network(x)
        expected = torch_run(images)
        expected = expected if isinstance(expected, tuple) else (expected,)
        difference = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(session.run(images), expected))
        ours, theirs = rate(torch_run, images, args.seconds), rate(session.run, images, args.seconds)
        size = "x".join(str(v) for v in graph.example.shape[2:])
        print(f"| {name} ({graph.family}) | {size} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f} | "
              f"{difference:.1e} |", flush=True)


def agreement(got: list[dict], expected: list[dict]) -> str:
    """'yes, 3e-06' when labels/captions are equal and boxes/scores agree (the largest |difference|). Detections
    whose scores tie to the last bits may come out in swapped order: each is matched to the same-label detection
    of the nearest box, and the swaps are counted ('yes, 2 swapped ties, ...'); any unmatched one is a 'NO'."""
    difference, swaps = 0.0, 0
    for g, e in zip(got, expected, strict=True):
        if "caption" in e and g["caption"] != e["caption"]:
            return "NO: captions differ"
        boxes_g, boxes_e = (np.asarray(x["boxes"], dtype=np.float64).reshape(-1, 4) for x in (g, e))
        labels_g, labels_e = np.asarray(g["labels"]), np.asarray(e["labels"])
        scores_g, scores_e = np.asarray(g["scores"], dtype=np.float64), np.asarray(e["scores"], dtype=np.float64)
        if len(boxes_g) != len(boxes_e):
            return f"NO: {len(boxes_g)} vs {len(boxes_e)} detections"
        if not len(boxes_e):
            continue
        distance = np.abs(boxes_e[:, None] - boxes_g[None]).max(axis=2)                # [N, N]
        distance[labels_e[:, None] != labels_g[None]] = np.inf
        match = distance.argmin(axis=1)
        if len(set(match.tolist())) != len(match) or distance.min(axis=1).max() > 1e-3:
            return "NO: detections differ"
        swaps += int((match != np.arange(len(match))).sum())
        difference = max(difference, float(distance.min(axis=1).max()),
                         float(np.abs(scores_e - scores_g[match]).max()))
    return f"yes, {swaps} swapped ties, {difference:.0e}" if swaps else f"yes, {difference:.0e}"


def end_to_end_table(args, folder: Path) -> None:
    images = [r.image for r in make_world(args.images, seed=7, split="test").records]
    print(f"\n{len(images)} world test images, one predict() call on all of them per run\n")
    print("| model | PyTorch images/s | onnxruntime images/s | ORT / PyTorch | agree (max abs diff) |")
    print("|---|---:|---:|---:|---|")
    for name in args.families or END_TO_END:
        recipe, model = build(name)
        path = export.export_onnx(recipe, model, folder / f"{name}.onnx")
        predictor = export.load_onnx(path, make_recipe, threads=args.threads or None)

        def torch_predict(x):
            with torch.no_grad():
                return recipe.predict(model, x, torch.device("cpu"))
        ours, theirs = rate(torch_predict, images, args.seconds), rate(predictor.predict, images, args.seconds)
        agree = agreement(predictor.predict(images), torch_predict(images))
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f} | {agree} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="network table: images per batch")
    parser.add_argument("--images", type=int, default=8, help="end-to-end table: world images per run")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: their defaults)")
    parser.add_argument("--mode", default="both", choices=["network", "end-to-end", "both"])
    parser.add_argument("--families", nargs="+", default=None, help="models to run (default: every table's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"{platform.processor() or platform.machine()}, batch {args.batch}\n")
    with tempfile.TemporaryDirectory() as folder:
        if args.mode in ("network", "both"):
            network_table(args, Path(folder))
        if args.mode in ("end-to-end", "both"):
            end_to_end_table(args, Path(folder))


if __name__ == "__main__":
    main()
