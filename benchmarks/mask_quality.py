"""Where Mask R-CNN's mask AP trails its box AP on the embedded world: the resolution ceiling and the errors by shape.

Two tables:
  ceiling   each ground-truth mask cropped to its box, resampled to m x m as the mask targets are
            (`mask_targets`: RoIAlign, >= 0.5) and pasted back into the image (`paste_masks`): the IoU with the
            original mask, by object size (COCO's small / medium / large), for m = 14 and 28. The best a
            perfect m x m mask head could do.
  errors    (with --checkpoint) a trained Mask R-CNN's detections with score > 0.5 matched to a ground-truth
            object of the same class at box IoU >= 0.5: mean box IoU and mask IoU by shape and by size. A shape
            whose mask IoU trails its box IoU is one the mask head draws badly.

    .venv/bin/python benchmarks/mask_quality.py                                   # ceiling only, seconds
    .venv/bin/python benchmarks/mask_quality.py --checkpoint runs/mask/best.pt    # + a trained model's errors
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def _size(area: int) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def ceiling(dataset, sizes=(14, 28)) -> dict:
    """{(m, size class): [IoU of each object's mask after the m x m round trip]}."""
    from scenekit.data.transforms import record_masks
    from scenekit.models.mask_rcnn import mask_targets
    from scenekit.roi import paste_masks

    found = defaultdict(list)
    for record in dataset.records:
        if not len(record.boxes):
            continue
        masks = torch.from_numpy(np.asarray(record_masks(record))).float()          # [G, H, W]
        boxes = torch.as_tensor(np.asarray(record.boxes), dtype=torch.float32)      # [G, 4] xyxy
        for m in sizes:
            pasted = paste_masks(mask_targets(masks, boxes, torch.arange(len(boxes)), m), boxes, masks.shape[1:])
            for truth, drawn in zip(masks > 0.5, pasted.bool()):
                found[(m, _size(int(truth.sum())))].append(_iou(truth, drawn))
    return found


def errors(checkpoint: str, dataset, score: float = 0.5) -> dict:
    """{shape name or size class: [(box IoU, mask IoU) of each matched detection]}."""
    from scenekit.boxes import box_iou
    from scenekit.models.registry import restore
    from scenekit.data.transforms import record_masks

    recipe, model, device, _ = restore(checkpoint, "cpu")
    names = recipe.categories
    found = defaultdict(list)
    for record in dataset.records:
        if not len(record.boxes):
            continue
        detections = recipe.predict(model, [record.image], device)[0]
        keep = detections["scores"] > score
        if not keep.any():
            continue
        truth_boxes = torch.as_tensor(np.asarray(record.boxes), dtype=torch.float64)
        truth_masks = torch.from_numpy(np.asarray(record_masks(record))) > 0
        overlaps = box_iou(detections["boxes"][keep], truth_boxes)                 # [D, G]
        for row, mask, label in zip(overlaps, detections["masks"][keep].bool(), detections["labels"][keep]):
            best = int(row.argmax())
            if row[best] < 0.5 or int(record.labels[best]) != int(label):
                continue
            pair = (float(row[best]), _iou(mask, truth_masks[best]))
            found[names[int(label)]].append(pair)
            found[_size(int(truth_masks[best].sum()))].append(pair)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=150, help="world test images")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--checkpoint", default=None, help="a trained mask-rcnn checkpoint (errors table)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from scenekit.data.world import make_world

    dataset = make_world(args.images, split="test", seed=args.seed, image_size=args.image_size)
    print(f"ground-truth mask -> m x m -> pasted back, IoU with the original ({args.images} world test images)")
    print("| m | size | objects | mean IoU | min IoU |\n|---:|---|---:|---:|---:|")
    for (m, size), values in sorted(ceiling(dataset).items()):
        print(f"| {m} | {size} | {len(values)} | {np.mean(values):.3f} | {np.min(values):.3f} |")
    if args.checkpoint:
        print(f"\n{args.checkpoint}: detections with score > 0.5 matched at box IoU >= 0.5")
        print("| shape / size | matched | box IoU | mask IoU | box IoU >= 0.75 | mask IoU >= 0.75 |")
        print("|---|---:|---:|---:|---:|---:|")
        for key, pairs in errors(args.checkpoint, dataset).items():
            values = np.asarray(pairs)
            print(f"| {key} | {len(values)} | {values[:, 0].mean():.3f} | {values[:, 1].mean():.3f} | "
                  f"{np.mean(values[:, 0] >= 0.75):.2f} | {np.mean(values[:, 1] >= 0.75):.2f} |")


if __name__ == "__main__":
    main()
