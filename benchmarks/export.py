"""PyTorch vs onnxruntime on the CPU: images per second of each exported network, same weights, same inputs.

    .venv/bin/python benchmarks/export.py [--batch 8] [--seconds 3] [--threads 0]

For each family that exports (default sizes of its recipe, untrained weights: speed does not depend on them),
the network part (`scenekit.export.export_graph`: backbone + heads, raw outputs) runs on a batch of random
images in PyTorch (eval, no_grad) and in onnxruntime (CPUExecutionProvider, graph optimisations on), for about
`--seconds` each after one warm-up run. It also checks the two agree (max |difference|). Prints a Markdown table.
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
from scenekit.cli import make_recipe
from scenekit.data.world import CATEGORIES

FAMILIES = ["localizer", "overfeat", "yolo1", "yolo2", "fcn-8s", "deconvnet", "faster-rcnn", "showattendtell"]


def rate(function, images, seconds: float) -> float:
    function(images)                                   # warm-up (allocations, ORT's first-run planning)
    runs, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or runs < 3:
        function(images)
        runs += 1
    return runs * len(images) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"{platform.processor() or platform.machine()}, batch {args.batch}\n")
    print("| model | input | PyTorch images/s | onnxruntime images/s | ORT / PyTorch | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.families:
            recipe = make_recipe(name, dict(CATEGORIES))
            torch.manual_seed(0)
            model = recipe.build_model(recipe.model_config).eval()
            graph = export.export_graph(recipe, model)
            path = export.export_onnx(recipe, model, Path(folder) / f"{name}.onnx")
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


if __name__ == "__main__":
    main()
