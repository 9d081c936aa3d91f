"""Speed of the box ops against references: ours vs a plain torch IoU and OpenCV's NMSBoxes.

    .venv/bin/python benchmarks/ops.py [--repeats 15]

Prints one row per op: the median time of ours and of the reference over several repeats, and the ratio
reference / ours (> 1: ours is faster). NMS inputs are "realistic" detector output: many jittered boxes
around ~50 objects with random scores, so most boxes are suppressed by a neighbour. numba compiles lazily;
every function runs once before timing, so compile time is excluded. Nothing here changes thread settings:
the numbers are for torch's and OpenCV's defaults, printed in the header. Rows from benchmarks/ops_roi.py
(`roi_rows()`, RoI pooling) are appended when that file exists.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from scenekit.boxes import box_iou
from scenekit.nms import batched_nms, nms


def median_seconds(fn, repeats: int) -> float:
    fn()                                   # warm-up: numba compile, allocator, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clustered_boxes(n: int, n_objects: int = 50, seed: int = 0, width: int = 1333, height: int = 800):
    """n detector-like boxes (xyxy float32) around n_objects objects of 24-400 px, uniform random scores."""
    rng = np.random.default_rng(seed)
    obj_w = np.exp(rng.uniform(np.log(24), np.log(400), n_objects))
    obj_h = obj_w * np.exp(rng.normal(0, 0.4, n_objects))
    obj_c = rng.uniform(0, 1, (n_objects, 2)) * [width, height]
    owner = rng.integers(0, n_objects, n)
    size = np.stack([obj_w, obj_h], 1)[owner]
    centre = obj_c[owner] + rng.normal(0, 0.15, (n, 2)) * size
    size = size * np.exp(rng.normal(0, 0.25, (n, 2)))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    return torch.from_numpy(boxes), torch.from_numpy(rng.uniform(0, 1, n).astype(np.float32))


def naive_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """The textbook vectorised torch IoU (corner broadcast to [N, M, 2]), the reference for ours."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def opencv_inputs(boxes: torch.Tensor, scores: torch.Tensor):
    xywh = boxes.double().numpy().copy()         # float64 -> Rect2d overload, continuous coordinates
    xywh[:, 2:] -= xywh[:, :2]
    return xywh, scores.numpy()


def iou_row(repeats: int):
    boxes, _ = clustered_boxes(4000, seed=1)
    boxes1, boxes2 = boxes[:2000], boxes[2000:]
    assert torch.allclose(box_iou(boxes1, boxes2), naive_box_iou(boxes1, boxes2), atol=1e-6)
    return ("box_iou 2k x 2k (vs naive torch)", median_seconds(lambda: box_iou(boxes1, boxes2), repeats),
            median_seconds(lambda: naive_box_iou(boxes1, boxes2), repeats))


def nms_row(n: int, repeats: int):
    boxes, scores = clustered_boxes(n, seed=n)
    xywh, s = opencv_inputs(boxes, scores)
    ours = nms(boxes, scores, 0.5)
    reference = np.asarray(cv2.dnn.NMSBoxes(xywh, s, 0.0, 0.5)).reshape(-1)
    same = "same" if ours.tolist() == reference.tolist() else "DIFFERENT"
    return (f"nms {n // 1000}k boxes, IoU 0.5 (vs cv2 NMSBoxes; {len(ours)} kept, {same})",
            median_seconds(lambda: nms(boxes, scores, 0.5), repeats),
            median_seconds(lambda: cv2.dnn.NMSBoxes(xywh, s, 0.0, 0.5), repeats))


def batched_row(n: int, n_classes: int, repeats: int):
    boxes, scores = clustered_boxes(n, seed=7)
    classes = torch.from_numpy(np.random.default_rng(7).integers(0, n_classes, n))
    xywh, s = opencv_inputs(boxes, scores)
    class_ids = classes.numpy().astype(np.int32)
    ours = batched_nms(boxes, scores, classes, 0.5)
    reference = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, s, class_ids, 0.0, 0.5)).reshape(-1)
    same = "same" if ours.tolist() == reference.tolist() else "DIFFERENT"
    return (f"batched_nms {n // 1000}k, {n_classes} classes (vs cv2 NMSBoxesBatched; {len(ours)} kept, {same})",
            median_seconds(lambda: batched_nms(boxes, scores, classes, 0.5), repeats),
            median_seconds(lambda: cv2.dnn.NMSBoxesBatched(xywh, s, class_ids, 0.0, 0.5), repeats))


def extra_rows():
    """Rows of other op benchmarks living beside this file (RoI pooling), when they exist."""
    here = Path(__file__).resolve().parent
    if not (here / "ops_roi.py").exists():
        return []
    sys.path.insert(0, str(here))
    from ops_roi import roi_rows
    return list(roi_rows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per op (median reported)")
    args = parser.parse_args()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"opencv {cv2.__version__} ({cv2.getNumThreads()} threads), {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f}")
    rows = [iou_row(args.repeats)]
    rows += [nms_row(n, args.repeats) for n in (1_000, 10_000, 30_000)]
    rows.append(batched_row(10_000, 80, args.repeats))
    rows += extra_rows()
    width = max(len(name) for name, _, _ in rows)
    print(f"{'op':<{width}}  {'ours ms':>9}  {'ref ms':>9}  {'ref/ours':>8}")
    for name, ours, reference in rows:
        print(f"{name:<{width}}  {ours * 1e3:9.3f}  {reference * 1e3:9.3f}  {reference / ours:8.2f}")


if __name__ == "__main__":
    main()
