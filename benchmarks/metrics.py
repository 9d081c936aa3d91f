"""COCO bbox evaluation: scenekit vs pycocotools vs faster-coco-eval on one COCO-sized problem.

The problem has COCO val's shape: 5,000 images, 80 categories, ~7 gts per image (areas spread over small, medium
and large, 1% crowd, gt `area` smaller than the box as a mask area is) and 100 detections per image (boxes
jittered around gts, sometimes with the wrong class, plus random boxes; float32 scores, so some ties).

In process (the default): each evaluator runs in its own subprocess on the same JSON files and is timed from the
loaded JSON objects to the 12 stats (pycocotools: COCO index + loadRes + evaluate + accumulate + summarize;
faster-coco-eval the same with COCOeval_faster; scenekit: coco_evaluate). Memory: the subprocess's peak RSS
during the evaluation (the peak mark is reset after loading the JSON, Linux /proc/self/clear_refs) and its
increase over the RSS with the JSON loaded. Each subprocess makes one tiny warm-up call before timing (its cost
is printed separately).

As whole commands (`--process`): what a user waits for, start to end, files to printed stats:
`scenekit evaluate --gt G --pred P --json` against a script doing pycocotools' documented use (COCO(G),
loadRes(P), evaluate, accumulate, summarize) and the same with faster-coco-eval, each run `--repeats` times
in turn; the median wall time, the CPU time (user + sys) and the peak RSS of each process.

    .venv/bin/python benchmarks/metrics.py              # full size (pycocotools takes minutes)
    .venv/bin/python benchmarks/metrics.py --images 500 # quicker
    .venv/bin/python benchmarks/metrics.py --process --dets-per-image 33   # commands, 165,000 detections
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def make_problem(num_images: int, num_categories: int = 80, gts_per_image: float = 7.0,
                 dets_per_image: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    ann_id = 1
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        num_gt = int(rng.poisson(gts_per_image))
        side = np.exp(rng.uniform(np.log(6), np.log(380), size=(num_gt, 2)))     # log-uniform: s, m and l
        side = np.minimum(side, [width - 1, height - 1])
        corner = rng.uniform(0, 1, size=(num_gt, 2)) * ([width, height] - side)
        labels = rng.integers(1, num_categories + 1, size=num_gt)
        for box_xy, box_wh, label in zip(corner, side, labels):
            crowd = int(rng.random() < 0.01)
            area = float(box_wh[0] * box_wh[1] * rng.uniform(0.4, 0.9))
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": int(label),
                                "bbox": [round(float(v), 2) for v in (*box_xy, *box_wh)], "area": area,
                                "iscrowd": crowd})
            ann_id += 1
        # detections: 0-6 jittered copies of each gt (5% with a wrong class), scoring 0.2-1, then random
        # boxes of random classes scoring 0.01-0.6 up to 100 per image; float32 scores, so a few ties
        boxes, classes, scores = [], [], []
        for box_xy, box_wh, label in zip(corner, side, labels):
            for _ in range(int(rng.integers(0, 7))):
                jitter = rng.normal(0, 0.07, size=4) * np.r_[box_wh, box_wh]
                boxes.append(np.r_[box_xy + jitter[:2], np.maximum(box_wh + jitter[2:], 1.0)])
                classes.append(label if rng.random() > 0.05 else rng.integers(1, num_categories + 1))
                scores.append(rng.uniform(0.2, 1.0))
        boxes, classes, scores = boxes[:dets_per_image], classes[:dets_per_image], scores[:dets_per_image]
        extra = dets_per_image - len(boxes)
        wh = np.exp(rng.uniform(np.log(4), np.log(300), size=(extra, 2)))
        xy = rng.uniform(0, 1, size=(extra, 2)) * np.maximum([width, height] - wh, 1)
        boxes += list(np.c_[xy, wh])
        classes += list(rng.integers(1, num_categories + 1, size=extra))
        scores = np.r_[scores, rng.uniform(0.01, 0.6, size=extra)].astype(np.float32)
        for box, label, score in zip(boxes, classes, scores):
            results.append({"image_id": image_id, "category_id": int(label),
                            "bbox": [round(float(v), 2) for v in box], "score": float(score)})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_memory() -> bool:
    """Set the peak-RSS mark to the current RSS (Linux >= 4.0), so the peak measures only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(which: str, gt_path: str, pred_path: str) -> dict:
    """Runs in a subprocess: load the JSON, warm up, time one evaluation, report stats, time and memory."""
    gt = json.loads(Path(gt_path).read_text())
    results = json.loads(Path(pred_path).read_text())
    tiny_gt = {"images": gt["images"][:2], "categories": gt["categories"],
               "annotations": [a for a in gt["annotations"] if a["image_id"] in (1, 2)]}
    tiny_results = [dict(r) for r in results if r["image_id"] in (1, 2)]

    if which == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        def evaluate(gt_dict, result_list):
            with contextlib.redirect_stdout(io.StringIO()):
                coco_gt = COCO()
                coco_gt.dataset = gt_dict
                coco_gt.createIndex()
                coco_dt = coco_gt.loadRes(result_list)
                evaluator = COCOeval(coco_gt, coco_dt, "bbox")
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            return [float(v) for v in evaluator.stats]
    elif which == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        def evaluate(gt_dict, result_list):
            with contextlib.redirect_stdout(io.StringIO()):
                coco_gt = COCO(gt_dict)
                coco_dt = coco_gt.loadRes(result_list)
                evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox")
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            return [float(v) for v in evaluator.stats]
    else:
        from scenekit.metrics.detection import coco_evaluate

        def evaluate(gt_dict, result_list):
            stats = coco_evaluate(gt_dict, result_list, "bbox")
            return [stats[name] for name in STAT_NAMES]

    start = time.perf_counter()
    evaluate(tiny_gt, tiny_results)
    warmup = time.perf_counter() - start
    gc.collect()
    exact_peak = reset_peak_memory()
    loaded = memory_mib("VmRSS")
    start = time.perf_counter()
    stats = evaluate(gt, results)
    seconds = time.perf_counter() - start
    return {"stats": stats, "seconds": seconds, "warmup": warmup, "peak_mib": memory_mib("VmHWM"),
            "loaded_mib": loaded, "exact_peak": exact_peak}


# ---------------------------------------------------------------------------------------- whole commands
REFERENCE_SCRIPT = """
import contextlib, io, json, sys
{imports}
with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO(sys.argv[1])
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(sys.argv[2]), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
print(json.dumps([float(v) for v in evaluator.stats]))
"""


def command_for(which: str, gt_path: Path, pred_path: Path) -> list[str]:
    """The command line of one evaluator: the `scenekit` command, or a script of the reference's usual use."""
    if which == "scenekit":
        script = Path(sys.executable).with_name("scenekit")
        start = [str(script)] if script.is_file() else [sys.executable, "-m", "scenekit.cli"]
        return start + ["evaluate", "--gt", str(gt_path), "--pred", str(pred_path), "--json"]
    imports = {"pycocotools": "from pycocotools.coco import COCO\nfrom pycocotools.cocoeval import COCOeval",
               "faster-coco-eval": "from faster_coco_eval import COCO, COCOeval_faster as COCOeval"}[which]
    return [sys.executable, "-c", REFERENCE_SCRIPT.format(imports=imports), str(gt_path), str(pred_path)]


def time_command(command: list[str]) -> dict:
    """Run a command to its end: its printed stats, wall seconds, CPU seconds (user + sys) and peak RSS (MiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)              # this process's own usage, not all children's
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({process.returncode}): {err.read().decode()[-2000:]}")
        printed = json.loads(out.read().decode().strip().splitlines()[-1])
    stats = [printed[name] for name in STAT_NAMES] if isinstance(printed, dict) else printed
    return {"stats": stats, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def compare_commands(gt_path: Path, pred_path: Path, evaluators: list[str], repeats: int) -> None:
    """Each evaluator's command `repeats` times, taking turns (so a change in the machine's load hits all
    alike); the median of each measure, and the ratios to scenekit's."""
    runs = {which: [] for which in evaluators}
    for _ in range(repeats):
        for which in evaluators:
            runs[which].append(time_command(command_for(which, gt_path, pred_path)))
    summary = {which: {key: statistics.median(run[key] for run in done) for key in ("wall", "cpu", "peak_mib")}
               for which, done in runs.items()}
    print(f"whole commands, median of {repeats} runs each (CPU = user + sys of the process):")
    print(f"{'evaluator':>17}  {'wall s':>8}  {'CPU s':>8}  {'peak RSS':>9}")
    for which, run in summary.items():
        print(f"{which:>17}  {run['wall']:8.2f}  {run['cpu']:8.2f}  {run['peak_mib']:5.0f} MiB")
    ours = summary.get("scenekit")
    for which, run in summary.items():
        if which == "scenekit" or ours is None:
            continue
        difference = max(np.max(np.abs(np.array(a["stats"]) - np.array(b["stats"])))
                         for a in runs[which] for b in runs["scenekit"])
        print(f"scenekit vs {which}: {run['wall'] / ours['wall']:.1f}x faster (wall), "
              f"{run['cpu'] / ours['cpu']:.1f}x less CPU, max |stat difference| = {difference:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images")
    parser.add_argument("--dets-per-image", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated problem")
    parser.add_argument("--skip", nargs="*", default=[], help="evaluators to leave out")
    parser.add_argument("--process", action="store_true",
                        help="time whole commands (files to printed stats) instead of the evaluation in process")
    parser.add_argument("--repeats", type=int, default=3, help="--process: runs of each command")
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "GT", "PRED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child)))
        return

    gt, results = make_problem(args.images, dets_per_image=args.dets_per_image, seed=args.seed)
    print(f"problem: {len(gt['images'])} images, {len(gt['categories'])} categories, "
          f"{len(gt['annotations'])} gts ({sum(a['iscrowd'] for a in gt['annotations'])} crowd), "
          f"{len(results)} detections")
    evaluators = [w for w in ("scenekit", "faster-coco-eval", "pycocotools") if w not in args.skip]
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        gt_path, pred_path = Path(folder, "gt.json"), Path(folder, "results.json")
        gt_path.write_text(json.dumps(gt))
        pred_path.write_text(json.dumps(results))
        del gt, results
        if args.process:
            compare_commands(gt_path, pred_path, evaluators, args.repeats)
            return
        for which in evaluators:
            out = subprocess.run([sys.executable, __file__, "--child", which, str(gt_path), str(pred_path)],
                                 check=True, capture_output=True, text=True)
            runs[which] = json.loads(out.stdout.strip().splitlines()[-1])
            run = runs[which]
            extra = run["peak_mib"] - run["loaded_mib"]
            print(f"{which:>17}: {run['seconds']:8.2f} s   peak RSS {run['peak_mib']:7.0f} MiB, "
                  f"{extra:+.0f} MiB over the loaded JSON{'' if run['exact_peak'] else ' (upper bound)'}   "
                  f"warm-up call {run['warmup']:.2f} s", flush=True)
    ours = runs.get("scenekit")
    for which, run in runs.items():
        if which == "scenekit" or ours is None:
            continue
        difference = np.max(np.abs(np.array(run["stats"]) - np.array(ours["stats"])))
        print(f"scenekit vs {which}: {run['seconds'] / ours['seconds']:.1f}x faster, "
              f"max |stat difference| = {difference:.3g}")
    if ours:
        print("stats:", json.dumps(dict(zip(STAT_NAMES, [round(v, 6) for v in ours["stats"]]))))


if __name__ == "__main__":
    main()
