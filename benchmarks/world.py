"""Claim: the scene world generates several hundred annotated 160x160 images per second on one CPU core.

Every image is complete: picture, boxes, compressed RLE masks, semantic map, 5 captions, 4 questions.
Run: .venv/bin/python benchmarks/world.py [--images N] [--repeats R]
Prints images/s per configuration (median of R runs), pinned to one core with single-threaded BLAS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")          # before numpy loads: no BLAS worker threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse                                        # noqa: E402
import statistics                                      # noqa: E402
import time                                            # noqa: E402

from scenekit.data.world import make_world             # noqa: E402

CONFIGS = [
    ("160x160, 0-8 objects", dict(image_size=160)),
    ("128..320 mixed sizes", dict()),
    ("160x160 single object", dict(image_size=160, single_object=True)),
    ("320x320, 0-8 objects", dict(image_size=320)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    make_world(5, image_size=160)                      # warm-up: texture tiles, imports
    print(f"{'configuration':<26}{'images':>8}{'seconds':>10}{'images/s':>10}")
    for name, kwargs in CONFIGS:
        times = []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            make_world(args.images, seed=repeat, **kwargs)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(f"{name:<26}{args.images:>8}{seconds:>10.2f}{args.images / seconds:>10.0f}")


if __name__ == "__main__":
    main()
