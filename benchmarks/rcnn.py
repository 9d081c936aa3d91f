"""R-CNN on the embedded world: CPU training time per stage, feature-cache size, VOC mAP@0.5, COCO AP, and
inference time per image split into Selective Search and the per-region network work.

    .venv/bin/python benchmarks/rcnn.py [--train-images 250] [--test-images 150] [--epochs 3] [--threads 1]

The seed's recipe (Girshick et al. 2014) with `scenekit.models.rcnn.train_rcnn`: Selective Search ("fast" mode)
on 160 x 160 world images; fine-tune a small CNN from scratch on 32 x 32 warped regions (context padding p = 2,
16 / 227 of the input as in the paper); cache the regions' features on disk; one linear SVM per class with hard
negative mining; class-specific ridge box regressors; per-class NMS at IoU 0.3. The test split is scored with
`scenekit.metrics.detection` (Pascal VOC mAP@0.5, COCO AP). Proposals for the test images are computed afresh,
so `proposal ms` is the real search time. `network ms` is what Fast R-CNN removes: warping every region and
running the CNN once per region (plus the SVM dot products), with `regions/image` forward passes per image.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from scenekit.data.world import CATEGORIES, make_world
from scenekit.engine.train import TrainConfig
from scenekit.models import rcnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=250, help="world training images (160 x 160)")
    parser.add_argument("--test-images", type=int, default=150, help="world test-split images (160 x 160)")
    parser.add_argument("--image-size", type=int, default=160, help="side of the world images")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (one epoch = every positive once)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on the shared 2-core machine one thread ran faster than two)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (weights, sampling, the world)")
    parser.add_argument("--out", default=None, help="folder for checkpoints and caches (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_data = make_world(args.train_images, seed=args.seed, split="train", image_size=args.image_size)
    test_data = make_world(args.test_images, seed=args.seed, split="test", image_size=args.image_size)
    recipe = rcnn.recipe(dict(CATEGORIES), image_size=args.image_size, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as temporary:
        out = args.out or temporary
        started = time.perf_counter()
        result = rcnn.train_rcnn(recipe, train_data, None, TrainConfig(out=out, seed=args.seed, device="cpu",
                                                                      log_every=1))
        train_seconds = time.perf_counter() - started
        model = result.model.eval()
        class_ids = sorted(CATEGORIES)
        fresh = rcnn.ProposalStore(model.config.proposal_mode, model.config.proposal_max_side)   # no cache
        metrics = rcnn.evaluate_rcnn(model, test_data, torch.device("cpu"), class_ids, fresh)

    stages = {row["stage"]: row for row in result.history}
    print(f"\nR-CNN, world {args.image_size} x {args.image_size}: {args.train_images} training images, "
          f"{args.test_images} test-split images; input {model.config.input_size} px, p = {model.config.padding}, "
          f"{args.epochs} fine-tuning epochs; torch {torch.__version__}, {args.threads} thread(s), "
          f"Python {platform.python_version()}\n")
    print("| stage | CPU seconds | notes |")
    print("|---|---:|---|")
    print(f"| proposals (Selective Search, fast) | {stages['proposals']['seconds']:.1f} | "
          f"{stages['proposals']['regions_per_image']:.0f} proposals per image |")
    print(f"| fine-tune CNN on warped regions | {stages['finetune']['seconds']:.1f} | "
          f"window accuracy {stages['finetune']['window_accuracy']:.3f} |")
    print(f"| extract + cache features | {stages['features']['seconds']:.1f} | "
          f"cache {stages['features']['cache_mb']:.1f} MiB ({stages['features']['computed']} files) |")
    print(f"| SVMs, hard negative mining | {stages['svm']['seconds']:.1f} | "
          f"{stages['svm']['mining_rounds']} mining rounds over {len(class_ids)} classes |")
    print(f"| box regressors (ridge) | {stages['bbox']['seconds']:.1f} | |")
    print(f"| total | {train_seconds:.1f} | |\n")
    print("| VOC mAP@0.5 | COCO AP | AP50 | AP75 | proposal ms/img | network ms/img (warp + CNN) | post ms/img "
          "| regions/img | network ms/region |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    network = metrics["warp_ms"] + metrics["cnn_ms"]
    print(f"| {metrics['mAP50']:.3f} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['AP75']:.3f} "
          f"| {metrics['proposal_ms']:.1f} | {network:.1f} ({metrics['warp_ms']:.1f} + {metrics['cnn_ms']:.1f}) "
          f"| {metrics['post_ms']:.1f} | {metrics['regions_per_image']:.0f} "
          f"| {network / max(1.0, metrics['regions_per_image']):.3f} |")


if __name__ == "__main__":
    main()
