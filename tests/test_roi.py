"""Tests of scenekit.roi: RoI max-pooling (Girshick 2015) and RoIAlign (He et al. 2017).

Independent references: hand-computed values, and slow loop implementations written below straight from the
papers' definitions (with torchvision's rounding and boundary rules), compared in value and in gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scenekit.roi
from scenekit.roi import RoIAlign, RoIPool, roi_align, roi_pool


# ---------------------------------------------------------------------------------------------- references
def c_round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def loop_roi_pool(input, rois, output_size, spatial_scale):
    """Fast R-CNN sec. 2.1, one RoI and one bin at a time (autograd of amax gives the argmax backward)."""
    oh, ow = output_size
    _, C, H, W = input.shape
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        x1, y1, x2, y2 = (c_round(v * spatial_scale) for v in (x1, y1, x2, y2))
        roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                h0 = min(max(math.floor(ph * roi_h / oh) + y1, 0), H)
                h1 = min(max(math.ceil((ph + 1) * roi_h / oh) + y1, 0), H)
                w0 = min(max(math.floor(pw * roi_w / ow) + x1, 0), W)
                w1 = min(max(math.ceil((pw + 1) * roi_w / ow) + x1, 0), W)
                if h1 <= h0 or w1 <= w0:
                    bins.append(input.new_zeros(C))
                else:
                    bins.append(input[int(b), :, h0:h1, w0:w1].amax(dim=(1, 2)))
        out.append(torch.stack(bins, dim=1).view(C, oh, ow))
    return torch.stack(out) if out else input.new_zeros(0, C, oh, ow)


def bilinear(feature, y, x):
    """Bilinear value of ``feature [C, H, W]`` at (y, x) with the Mask R-CNN code's boundary rules."""
    _, H, W = feature.shape
    if y < -1 or y > H or x < -1 or x > W:
        return feature.new_zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def loop_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Mask R-CNN sec. 3: each bin is the mean of bilinear samples at regularly spaced points."""
    oh, ow = output_size
    C = input.shape[1]
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        shift = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * spatial_scale - shift for v in (x1, y1, x2, y2))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                total = input.new_zeros(C)
                for iy in range(gh):
                    for ix in range(gw):
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / gh
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / gw
                        total = total + bilinear(input[int(b)], y, x)
                bins.append(total / max(gh * gw, 1))
        out.append(torch.stack(bins, dim=1).view(C, oh, ow))
    return torch.stack(out) if out else input.new_zeros(0, C, oh, ow)


def random_rois(gen, n, batch, size, margin=0.2, min_size=0.0):
    """n random boxes in a size x size image, some sticking out of it by up to ``margin`` of its size."""
    lo, hi = -margin * size, (1 + margin) * size
    xy = torch.rand(n, 2, 2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    x1, x2 = xy[:, 0].min(dim=1).values, xy[:, 0].max(dim=1).values + min_size
    y1, y2 = xy[:, 1].min(dim=1).values, xy[:, 1].max(dim=1).values + min_size
    b = torch.randint(0, batch, (n,), generator=gen).double()
    return torch.stack([b, x1, y1, x2, y2], dim=1)


def ramp(h=4, w=4, dtype=torch.float64):
    """[1, 1, h, w] map whose cell (y, x) holds w*y + x."""
    return torch.arange(h * w, dtype=dtype).view(1, 1, h, w)


# ---------------------------------------------------------------------------------------------- RoI pooling
def test_roi_pool_takes_max_of_each_sub_window_of_ramp():
    out = roi_pool(ramp(), torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float64), 2)
    assert out.tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]


def test_roi_pool_sub_windows_overlap_by_floor_and_ceil():
    # 3 cells into 2 bins: bin size 1.5, so bin 0 = cells [0, 2) and bin 1 = cells [1, 3); both see the 3.
    feature = torch.tensor([[[[1.0, 3.0, 2.0]]]], dtype=torch.float64)
    out = roi_pool(feature, torch.tensor([[0, 0, 0, 2, 0]], dtype=torch.float64), (1, 2))
    assert out.tolist() == [[[[3.0, 3.0]]]]


def test_roi_pool_rounds_box_halves_away_from_zero():
    # x * 0.5 = 0.5 and 2.5: C rounding gives cells 1..3 (max 15); round-half-to-even would give 0..2 (max 10).
    out = roi_pool(ramp(), torch.tensor([[0, 1, 1, 5, 5]], dtype=torch.float64), 1, spatial_scale=0.5)
    assert out.item() == 15.0


def test_roi_pool_sub_window_off_the_map_gives_zero():
    # Box columns -2..1: the left bin (columns -2, -1) is clipped away; the right one holds columns 0, 1.
    out = roi_pool(ramp(), torch.tensor([[0, -2, 0, 1, 3]], dtype=torch.float64), (1, 2))
    assert out.tolist() == [[[[0.0, 13.0]]]]


def test_roi_pool_box_entirely_off_the_map_gives_zeros_and_no_gradient():
    x = ramp().requires_grad_()
    out = roi_pool(x, torch.tensor([[0, 10, 10, 20, 20]], dtype=torch.float64), 3)
    assert out.abs().sum().item() == 0
    out.sum().backward()
    assert x.grad.abs().sum().item() == 0


def test_roi_pool_gradient_goes_to_argmax_cells():
    x = ramp().requires_grad_()
    roi_pool(x, torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float64), 2).sum().backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1, 1] = expected[1, 3] = expected[3, 1] = expected[3, 3] = 1
    assert torch.equal(x.grad[0, 0], expected)


def test_roi_pool_gradient_accumulates_where_bins_share_a_max():
    feature = torch.tensor([[[[1.0, 3.0, 2.0]]]], dtype=torch.float64, requires_grad=True)
    roi_pool(feature, torch.tensor([[0, 0, 0, 2, 0]], dtype=torch.float64), (1, 2)).sum().backward()
    assert feature.grad.tolist() == [[[[0.0, 2.0, 0.0]]]]


def test_roi_pool_tie_picks_first_cell_in_row_major_order():
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    roi_pool(x, torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.float64), 1).sum().backward()
    assert x.grad.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]


@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("output_size", [(2, 2), (3, 2), (7, 7)])
def test_roi_pool_matches_loop_reference_in_value_and_gradient(spatial_scale, output_size):
    gen = torch.Generator().manual_seed(int(spatial_scale * 100) + 7 * output_size[0])
    x = torch.randn(3, 4, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 12, batch=3, size=11 / spatial_scale)
    ours = roi_pool(x, rois, output_size, spatial_scale)
    ref = loop_roi_pool(x, rois, output_size, spatial_scale)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    weight = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * weight).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * weight).sum(), x)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_roi_pool_passes_gradcheck():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)  # no ties
    rois = torch.tensor([[0, 0.5, 1.0, 5.0, 4.0], [1, 2.0, 0.0, 5.0, 4.0], [1, -1.0, -1.0, 3.0, 2.0]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 3)), (x,))


# ---------------------------------------------------------------------------------------------- RoIAlign
def test_roi_align_bilinear_value_at_cell_corner_centre():
    # One sample at (0.5, 0.5): the mean of the four cells around it.
    feature = torch.tensor([[[[0.0, 1.0], [2.0, 10.0]]]], dtype=torch.float64)
    out = roi_align(feature, torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.float64), 1, sampling_ratio=1)
    assert out.item() == pytest.approx(3.25)


def test_roi_align_ramp_samples_at_bin_centres():
    # Box 0..3, 2x2 bins of 1.5 cells, one sample each at 0.75 / 2.25; the ramp 4y + x is linear there.
    out = roi_align(ramp(), torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float64), 2, sampling_ratio=1)
    torch.testing.assert_close(out[0, 0], torch.tensor([[3.75, 5.25], [9.75, 11.25]], dtype=torch.float64))


def test_roi_align_aligned_shifts_box_by_half_a_cell():
    box = torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float64)
    # aligned: box -0.5..2.5, samples at 0.25 and 1.75 per axis, mean of 4y + x = 4 * 1 + 1 = 5.
    assert roi_align(ramp(), box, 1, sampling_ratio=2, aligned=True).item() == pytest.approx(5.0)
    # not aligned: samples at 0.75 and 2.25, mean 4 * 1.5 + 1.5 = 7.5.
    assert roi_align(ramp(), box, 1, sampling_ratio=2, aligned=False).item() == pytest.approx(7.5)


def test_roi_align_samples_beyond_map_count_as_zero():
    # 2x2 map of ones, box 0..8, 2x2 samples at 2 and 6 per axis: only (2, 2) lies within [-1, H]
    # (it reads the last cell); the other three are zeros, but the mean still divides by 4.
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    out = roi_align(ones, torch.tensor([[0, 0, 0, 8, 8]], dtype=torch.float64), 1, sampling_ratio=2)
    assert out.item() == pytest.approx(0.25)


def test_roi_align_sample_within_one_cell_outside_reads_the_edge():
    feature = ramp() + 7
    inside = roi_align(feature, torch.tensor([[0, -1.5, -1.5, -0.5, -0.5]], dtype=torch.float64), 1,
                       sampling_ratio=1)   # sample at (-1, -1): moved to (0, 0)
    outside = roi_align(feature, torch.tensor([[0, -1.6, -1.6, -0.6, -0.6]], dtype=torch.float64), 1,
                        sampling_ratio=1)  # sample at (-1.1, -1.1): beyond the map
    assert inside.item() == 7.0 and outside.item() == 0.0


@pytest.mark.parametrize("op", ["pool", "align"])
def test_constant_map_gives_the_constant(op):
    x = torch.full((2, 3, 8, 8), 2.5, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 7, 7], [1, 1.3, 2.2, 5.9, 6.1], [1, 3, 3, 3, 3]], dtype=torch.float64)
    out = roi_pool(x, rois, 3) if op == "pool" else roi_align(x, rois, 3, sampling_ratio=-1)
    torch.testing.assert_close(out, torch.full((3, 3, 3, 3), 2.5, dtype=torch.float64))


def test_roi_align_adaptive_sampling_ratio_is_chosen_per_box():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, 16, generator=gen, dtype=torch.float64)
    small = torch.tensor([[0, 1, 1, 5, 5]], dtype=torch.float64)    # 4 cells / 2 bins -> 2 samples
    large = torch.tensor([[0, 2, 3, 14, 15]], dtype=torch.float64)  # 12 cells / 2 bins -> 6 samples
    both = roi_align(x, torch.cat([small, large]), 2, sampling_ratio=-1)
    torch.testing.assert_close(both[0:1], roi_align(x, small, 2, sampling_ratio=2))
    torch.testing.assert_close(both[1:2], roi_align(x, large, 2, sampling_ratio=6))
    assert not torch.allclose(both[1:2], roi_align(x, large, 2, sampling_ratio=2))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.3])
def test_roi_align_matches_loop_reference_in_value_and_gradient(aligned, sampling_ratio, spatial_scale):
    gen = torch.Generator().manual_seed(sampling_ratio + 10 * int(aligned) + int(100 * spatial_scale))
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 6, batch=2, size=9 / spatial_scale)
    rois[0, 3:] = rois[0, 1:3] + 0.2  # a tiny box: stretched to one cell unless aligned
    ours = roi_align(x, rois, (3, 2), spatial_scale, sampling_ratio, aligned)
    ref = loop_roi_align(x, rois, (3, 2), spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref)
    weight = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * weight).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * weight).sum(), x)
    torch.testing.assert_close(grad_ours, grad_ref)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_passes_gradcheck(aligned):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.9], [1, -1.2, 0.1, 2.5, 6.0], [1, 5.0, 4.0, 5.0, 4.4]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 2, 1.0, -1, aligned), (x,))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), scale=st.sampled_from([1.0, 0.5, 0.25]),
       out_h=st.integers(1, 4), out_w=st.integers(1, 4), sampling_ratio=st.integers(-1, 3),
       aligned=st.booleans())
def test_both_ops_match_loop_references_on_random_boxes(seed, n, scale, out_h, out_w, sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 6, 8, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, n, batch=2, size=8 / scale, margin=0.4)
    torch.testing.assert_close(roi_pool(x, rois, (out_h, out_w), scale),
                               loop_roi_pool(x, rois, (out_h, out_w), scale))
    torch.testing.assert_close(roi_align(x, rois, (out_h, out_w), scale, sampling_ratio, aligned),
                               loop_roi_align(x, rois, (out_h, out_w), scale, sampling_ratio, aligned))


def test_results_do_not_depend_on_chunk_sizes(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 12, 16, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 40, batch=2, size=16)
    pooled, aligned = roi_pool(x, rois, 4), roi_align(x, rois, 4, 1.0, -1, True)
    monkeypatch.setattr(scenekit.roi, "_GATHER_CHUNK", 50)   # a few bins per max_pool2d call
    monkeypatch.setattr(scenekit.roi, "_MATRIX_CHUNK", 500)  # a few RoIs per piece of the matrix
    assert torch.equal(roi_pool(x, rois, 4), pooled)
    assert torch.equal(roi_align(x, rois, 4, 1.0, -1, True), aligned)


# ---------------------------------------------------------------------------------------------- API
@pytest.mark.parametrize("op", ["pool", "align"])
def test_list_of_boxes_equals_k_by_5_boxes(op):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 10, 10, generator=gen, dtype=torch.float64)
    per_image = [random_rois(gen, n, batch=1, size=10)[:, 1:] for n in (2, 0, 3)]
    as_rows = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64), b], dim=1)
                         for i, b in enumerate(per_image)])
    f = (lambda b: roi_pool(x, b, 3)) if op == "pool" else (lambda b: roi_align(x, b, 3, 1.0, 2))
    assert torch.equal(f(per_image), f(as_rows))


@pytest.mark.parametrize("op", ["pool", "align"])
def test_no_boxes_gives_empty_output_that_backpropagates(op):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    f = roi_pool if op == "pool" else roi_align
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []):
        out = f(x, boxes, (2, 4))
        assert out.shape == (0, 3, 2, 4) and out.dtype == x.dtype
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("op", [roi_pool, roi_align])
def test_zero_channels_give_empty_features(op):
    out = op(torch.zeros(1, 0, 4, 4), torch.tensor([[0, 0, 0, 3, 3.0]]), (2, 3))
    assert out.shape == (1, 0, 2, 3)


@pytest.mark.parametrize("op", ["pool", "align"])
def test_float32_agrees_with_float64(op):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 12, 12, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 10, batch=2, size=48)
    f = (lambda t, b: roi_pool(t, b, 4, 0.25)) if op == "pool" else (lambda t, b: roi_align(t, b, 4, 0.25))
    out32 = f(x.float(), rois.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), f(x, rois), rtol=1e-5, atol=1e-5)


def test_modules_match_functions():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 10, 10, generator=gen)
    rois = random_rois(gen, 5, batch=2, size=20).float()
    assert torch.equal(RoIPool((2, 3), 0.5)(x, rois), roi_pool(x, rois, (2, 3), 0.5))
    assert torch.equal(RoIAlign(3, 0.5, 2, aligned=True)(x, rois), roi_align(x, rois, 3, 0.5, 2, True))
    assert "sampling_ratio=2" in repr(RoIAlign(3, 0.5, 2))
    numpy = pytest.importorskip("numpy")  # numpy integers are accepted wherever an int is
    assert torch.equal(roi_align(x, rois, (numpy.int64(3), 3), 0.5, numpy.int64(2)), roi_align(x, rois, 3, 0.5, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("op", ["pool", "align"])
def test_runs_on_the_device_of_the_input(op):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 10, 10, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 5, batch=2, size=10)
    f = (lambda t, b: roi_pool(t, b, 3)) if op == "pool" else (lambda t, b: roi_align(t, b, 3))
    xc = x.cuda().requires_grad_()
    out = f(xc, rois.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), f(x, rois))
    out.sum().backward()
    assert xc.grad.is_cuda


# ---------------------------------------------------------------------------------------------- bad input
GOOD_X = torch.zeros(2, 3, 8, 8)


@pytest.mark.parametrize("op", [roi_pool, roi_align])
@pytest.mark.parametrize(("boxes", "message"), [
    (torch.zeros(3, 4), r"boxes must be a \[K, 5\] tensor"),
    (torch.zeros(5), r"boxes must be a \[K, 5\] tensor"),
    ([torch.zeros(2, 5)], r"boxes\[0\] must have shape \[N, 4\]"),
    (torch.tensor([[2.0, 0, 0, 1, 1]]), "batch index 2 is out of range"),
    (torch.tensor([[-1.0, 0, 0, 1, 1]]), "batch index -1 is out of range"),
    (torch.tensor([[0.5, 0, 0, 1, 1]]), "batch index .* must hold integers"),
    (torch.tensor([[0.0, 0, 0, float("nan"), 1]]), "boxes contains NaN or infinite"),
    (torch.tensor([[0.0, 0, 0, float("inf"), 1]]), "boxes contains NaN or infinite"),
    ([torch.tensor([[0.0, 0, 1, float("-inf")]])], "boxes contains NaN or infinite"),
    (torch.tensor([[0.0, 3, 0, 2, 1]]), "x2 < x1 or y2 < y1 at row 0"),
    ([torch.zeros(1, 4), torch.tensor([[0.0, 2, 1, 1]])], "x2 < x1 or y2 < y1 at row 1"),
    (torch.zeros(1, 5, dtype=torch.float64), "boxes must have the same dtype as input"),
    ([torch.zeros(1, 4, dtype=torch.float64)], r"boxes\[0\] must have the same dtype as input"),
    (torch.zeros(1, 5, device="meta"), "boxes must be on the same device as input"),
    ("boxes", "boxes must be a"),
])
def test_bad_boxes_raise_value_error_naming_boxes(op, boxes, message):
    with pytest.raises(ValueError, match=message):
        op(GOOD_X, boxes, 2)


@pytest.mark.parametrize("op", [roi_pool, roi_align])
def test_bad_input_and_options_raise_value_error(op):
    boxes = torch.zeros(1, 5)
    with pytest.raises(ValueError, match=r"input must have shape \[B, C, H, W\]"):
        op(torch.zeros(3, 8, 8), boxes, 2)
    with pytest.raises(ValueError, match="input must be float32 or float64"):
        op(torch.zeros(1, 3, 8, 8, dtype=torch.int64), boxes, 2)
    with pytest.raises(ValueError, match="output_size must be"):
        op(GOOD_X, boxes, (2, 2, 2))
    with pytest.raises(ValueError, match="output_size must be positive"):
        op(GOOD_X, boxes, 0)
    with pytest.raises(ValueError, match="spatial_scale must be a positive finite number"):
        op(GOOD_X, boxes, 2, spatial_scale=0.0)
    with pytest.raises(ValueError, match="spatial_scale must be a positive finite number"):
        op(GOOD_X, boxes, 2, spatial_scale=float("nan"))


def test_roi_align_allows_zero_size_box_but_not_inverted_one():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    point = roi_align(x, torch.tensor([[0, 2.0, 3.0, 2.0, 3.0]]), 1, sampling_ratio=1)  # stretched to 1x1
    assert point.item() == pytest.approx(8 * 3.5 + 2.5)
    with pytest.raises(ValueError, match="sampling_ratio must be an int"):
        roi_align(x, torch.zeros(1, 5), 1, sampling_ratio=1.5)
