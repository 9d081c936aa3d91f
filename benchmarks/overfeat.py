"""Overfeat's fully convolutional pass vs cropping and classifying every window, same outputs.

    .venv/bin/python benchmarks/overfeat.py [--size 256] [--repeats 5]

A localizer (small CNN, 64 x 64 input, class-specific boxes) with its fully connected layers turned into
convolutions (Sermanet et al. 2013, sec. 3.5) runs once on a SIZE x SIZE image and gives class scores and boxes
for every 64 x 64 window at stride 8. The reference crops each of those windows and runs the original localizer
on the batch of crops. The script asserts that both give the same numbers (max abs diff ~1e-5) and prints the
median times and the ratio crops / dense (> 1: the dense pass is faster). Weights are random: the speed and the
equality do not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scenekit.models.localizer import FullyConvolutionalLocalizer, Localizer, LocalizerConfig


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="side of the test image")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median shown)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Localizer(LocalizerConfig(num_classes=6, image_size=64, class_specific=True)).eval()
    network = FullyConvolutionalLocalizer(model).eval()
    image = torch.rand(1, 3, args.size, args.size)
    window, stride = network.window, network.stride
    positions = [(y, x) for y in range(0, args.size - window + 1, stride)
                 for x in range(0, args.size - window + 1, stride)]

    @torch.no_grad()
    def dense():
        return network(image)

    @torch.no_grad()
    def crops():
        batch = torch.cat([image[..., y:y + window, x:x + window] for y, x in positions])
        return model(batch)

    dense_logits, dense_boxes = dense()
    crop_logits, crop_boxes = crops()
    rows, cols = dense_logits.shape[-2:]
    assert rows * cols == len(positions)
    as_list_logits = dense_logits[0].permute(1, 2, 0).reshape(-1, dense_logits.shape[1])       # [H'W', K]
    as_list_boxes = dense_boxes[0].permute(2, 3, 0, 1).reshape(len(positions), -1, 4)         # [H'W', R, 4]
    difference = max(float((as_list_logits - crop_logits).abs().max()),
                     float((as_list_boxes - crop_boxes).abs().max()))
    assert difference < 1e-4, difference

    dense_time, crop_time = median_seconds(dense, args.repeats), median_seconds(crops, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; image {args.size} x {args.size}, "
          f"window {window}, stride {stride}: {len(positions)} windows ({rows} x {cols})")
    print(f"{'method':<44}{'ms':>10}")
    print(f"{'crop every window, run the localizer':<44}{crop_time * 1e3:>10.1f}")
    print(f"{'one fully convolutional pass':<44}{dense_time * 1e3:>10.1f}")
    print(f"speed-up crops / dense: {crop_time / dense_time:.1f}x; max abs difference {difference:.2e}")


if __name__ == "__main__":
    main()
