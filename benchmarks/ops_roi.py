"""Benchmark: scenekit.roi's RoIAlign and RoI max-pooling against straightforward per-RoI torch versions.

The workload of a Fast/Faster R-CNN head: 512 RoIs over a 1024 x 1024 image, features [2, 256, 64, 64]
(stride 16, spatial_scale 1/16), 7x7 output, forward + backward. The references loop over RoIs in Python
and use torch's own kernels for each one:

- RoIAlign: ``grid_sample`` (bilinear, align_corners=True, border padding) at the RoI's ceil(size/7)^2
  sample points per bin, then ``avg_pool2d`` over each bin's samples;
- RoI pooling: crop the snapped region and ``adaptive_max_pool2d`` it to 7x7, whose floor/ceil sub-windows
  are Fast R-CNN's.

For boxes inside the image both references compute exactly what scenekit's ops compute, which the script
checks before timing. Run: ``.venv/bin/python benchmarks/ops_roi.py`` (prints the table).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from scenekit.roi import roi_align, roi_pool

NUM_ROIS, BATCH, CHANNELS, FEATURE_SIZE, IMAGE_SIZE, OUTPUT = 512, 2, 256, 64, 1024, 7
SCALE = FEATURE_SIZE / IMAGE_SIZE  # 1/16


# ---------------------------------------------------------------------------------------------- references
def reference_roi_align(features: torch.Tensor, rois: torch.Tensor, output: int, scale: float) -> torch.Tensor:
    """Per-RoI RoIAlign (aligned=False, adaptive sampling ratio) from grid_sample + avg_pool2d."""
    _, _, H, W = features.shape
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        x1, y1, x2, y2 = x1 * scale, y1 * scale, x2 * scale, y2 * scale
        roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        grid_h, grid_w = math.ceil(roi_h / output), math.ceil(roi_w / output)
        ys = y1 + (torch.arange(output * grid_h, dtype=features.dtype) + 0.5) * (roi_h / (output * grid_h))
        xs = x1 + (torch.arange(output * grid_w, dtype=features.dtype) + 0.5) * (roi_w / (output * grid_w))
        gy, gx = ys / (H - 1) * 2 - 1, xs / (W - 1) * 2 - 1  # pixel -> [-1, 1] with align_corners=True
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        samples = F.grid_sample(features[int(b):int(b) + 1], grid, mode="bilinear", padding_mode="border",
                                align_corners=True)
        out.append(F.avg_pool2d(samples, (grid_h, grid_w)))
    return torch.cat(out)


def reference_roi_pool(features: torch.Tensor, rois: torch.Tensor, output: int, scale: float) -> torch.Tensor:
    """Per-RoI RoI max-pooling: crop the snapped region, adaptive_max_pool2d it."""
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        x1, y1, x2, y2 = (int(math.floor(v * scale + 0.5)) for v in (x1, y1, x2, y2))
        out.append(F.adaptive_max_pool2d(features[int(b):int(b) + 1, :, y1:y2 + 1, x1:x2 + 1], output))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- workload
def make_workload(seed: int = 0):
    """Features and proposal-like boxes: sides log-uniform in [32, 512] px, inside the image."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(BATCH, CHANNELS, FEATURE_SIZE, FEATURE_SIZE, generator=gen)
    sides = torch.exp(torch.empty(NUM_ROIS, 2).uniform_(math.log(32), math.log(512), generator=gen))
    # Keep x2 * scale below FEATURE_SIZE - 0.5, so the snapped region never leaves the map and the crop
    # of the pooling reference equals the clipped region.
    limit = (FEATURE_SIZE - 0.5) / SCALE - 1
    corner = torch.rand(NUM_ROIS, 2, generator=gen) * (limit - sides)
    batch = torch.randint(0, BATCH, (NUM_ROIS, 1), generator=gen).float()
    rois = torch.cat([batch, corner, corner + sides], dim=1)
    grad = torch.randn(NUM_ROIS, CHANNELS, OUTPUT, OUTPUT, generator=gen)
    return features, rois, grad


def forward_backward(op, features, rois, grad):
    x = features.detach().requires_grad_()
    op(x, rois).backward(grad)
    return x.grad


def median_seconds(fns, repeats: int = 5) -> list[float]:
    """Median wall time of each function (already warmed up), runs interleaved so that machine load hits
    all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def roi_rows(repeats: int = 5) -> list[tuple[str, float, float]]:
    """(row name, our median seconds, reference median seconds) for each op, forward + backward."""
    features, rois, grad = make_workload()
    ops = [
        ("RoIAlign fwd+bwd (512 RoIs, [2,256,64,64], 7x7)",
         lambda x, r: roi_align(x, r, OUTPUT, SCALE, sampling_ratio=-1),
         lambda x, r: reference_roi_align(x, r, OUTPUT, SCALE)),
        ("RoI max-pool fwd+bwd (512 RoIs, [2,256,64,64], 7x7)",
         lambda x, r: roi_pool(x, r, OUTPUT, SCALE),
         lambda x, r: reference_roi_pool(x, r, OUTPUT, SCALE)),
    ]
    rows = []
    for name, ours, reference in ops:
        # The reference must compute the same thing, or the timing compares nothing (this also warms up).
        with torch.no_grad():
            torch.testing.assert_close(ours(features, rois), reference(features, rois), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(forward_backward(ours, features, rois, grad),
                                   forward_backward(reference, features, rois, grad), rtol=1e-4, atol=1e-4)
        ours_s, reference_s = median_seconds([lambda: forward_backward(ours, features, rois, grad),
                                              lambda: forward_backward(reference, features, rois, grad)],
                                             repeats)
        rows.append((name, ours_s, reference_s))
    return rows


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'op':<54} {'ours (s)':>9} {'reference (s)':>14} {'ref/ours':>9}")
    for name, ours_s, reference_s in roi_rows():
        print(f"{name:<54} {ours_s:>9.4f} {reference_s:>14.4f} {reference_s / ours_s:>8.2f}x")
