"""Load test of the web demo on 127.0.0.1: latency percentiles and errors under concurrent uploads.

    .venv/bin/python benchmarks/serve_load.py [--requests 1000] [--concurrency 16] [--model yolo2]

Starts `scenekit.serve` (uvicorn, in this process's own thread) around an untrained small model of the
recipe `--model` (or `--model none`: a stand-in that answers one fixed box at once, to measure the HTTP layer
alone), then `--concurrency` client threads (httpx, keep-alive) POST world images (PNG, 128..320 px) until
`--requests` have been sent. Prints status counts, requests/s and latency p50 / p90 / p99 / max. 503s are
the server's back-pressure (`--max-pending`), not failures of the server; anything else non-200 is an error.
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from collections import Counter

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", default="yolo2")
    parser.add_argument("--workers", type=int, default=1, help="server: predictions at once")
    parser.add_argument("--max-pending", type=int, default=32, help="server: running + waiting before 503")
    args = parser.parse_args()

    import httpx
    import torch
    import uvicorn
    from PIL import Image

    from scenekit import Model, Result
    from scenekit.data.world import CATEGORIES, make_world
    from scenekit.models.registry import make_recipe
    from scenekit.serve.app import ServeConfig, create_app

    if args.model == "none":
        class NoModel:                          # the server alone: a fixed answer, no network
            name, categories = "none", dict(CATEGORIES)

            def predict(self, images):
                return [Result(image=np.asarray(image), boxes=[[1.0, 1.0, 20.0, 20.0]], scores=[0.9], labels=[1],
                               categories=self.categories) for image in images]
        model = NoModel()
    else:
        recipe = make_recipe(args.model, dict(CATEGORIES))
        torch.manual_seed(0)
        model = Model(recipe, recipe.build_model(recipe.model_config).eval(), "cpu")
    app = create_app(model, config=ServeConfig(workers=args.workers, max_pending=args.max_pending, max_detections=20))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", backlog=256))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    payloads = []
    for record in make_world(16, seed=11, split="test").records:
        buffer = io.BytesIO()
        Image.fromarray(record.image).save(buffer, "PNG")
        payloads.append(buffer.getvalue())
    url = f"http://127.0.0.1:{port}/predict"
    latencies, statuses, lock, counter = [], Counter(), threading.Lock(), iter(range(args.requests))

    def client():
        with httpx.Client(timeout=60) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                began = time.perf_counter()
                try:
                    status = session.post(url, files={"file": ("x.png", payloads[index % len(payloads)])}).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with lock:
                    latencies.append(time.perf_counter() - began)
                    statuses[status] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    server.should_exit = True
    ms = np.asarray(latencies) * 1000
    errors = sum(n for s, n in statuses.items() if s not in (200, 503))
    print(f"model {args.model}, {args.requests} requests, concurrency {args.concurrency}, server workers "
          f"{args.workers}, max pending {args.max_pending}, torch threads {torch.get_num_threads()}")
    print(f"status counts: {dict(statuses)}; errors (not 200/503): {errors}")
    print(f"{args.requests / wall:.1f} requests/s over {wall:.1f} s")
    print("| p50 ms | p90 ms | p99 ms | max ms |\n|---:|---:|---:|---:|")
    print(f"| {np.percentile(ms, 50):.1f} | {np.percentile(ms, 90):.1f} | {np.percentile(ms, 99):.1f} | "
          f"{ms.max():.1f} |")


if __name__ == "__main__":
    main()
