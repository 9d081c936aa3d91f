"""FCN, DeconvNet and the sliding window: unpooling and transposed convolution as adjoints, exact output sizes,
class maps from every source, pictures, an overfit run and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from scenekit.data.records import Dataset, Record
from scenekit.data.voc import VOC_CLASSES
from scenekit.errors import DataError
from scenekit.models.fcn import (IGNORE_INDEX, FCNConfig, WindowClassifier, bilinear_kernel,
                                 bilinear_upsampling_weight, build_segmenter, draw_semantic, evaluate_segmentation,
                                 max_unpool2d, predict_semantic, read_voc_class_map, record_class_map,
                                 segmentation_loss, sliding_window_segment, transposed_conv2d, upsample_bilinear)

SMALL = dict(channels=(4, 6, 8), head=8, convs_per_stage=1)     # stride 8: tiny but every code path
pytestmark = pytest.mark.usefixtures("one_thread")     # tiny models: two threads on a shared CPU run far slower


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


# ------------------------------------------------------------------------------------------------ unpooling
def test_max_unpool_places_each_value_where_its_maximum_was():
    x = torch.tensor([[1., 5., 0., 2.],
                      [3., 4., 7., 1.],
                      [0., 0., 1., 1.],
                      [9., 0., 2., 8.]])[None, None]
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)        # [[5, 7], [9, 8]]
    out = max_unpool2d(pooled * 10, indices, x.shape[-2:])
    expected = torch.zeros(4, 4)
    expected[0, 1], expected[1, 2], expected[3, 0], expected[3, 3] = 50, 70, 90, 80
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out, torch.nn.MaxUnpool2d(2, 2)(pooled * 10, indices, output_size=x.shape[-2:]))


@settings(max_examples=50, deadline=None)
@given(height=st.integers(3, 11), width=st.integers(3, 11), kernel=st.sampled_from([2, 3]),
       seed=st.integers(0, 10_000))
def test_max_unpool_is_the_adjoint_of_gathering_the_pooled_positions(height, width, kernel, seed):
    # <unpool(v), y> == <v, gather(y, indices)>, also with overlapping windows (kernel 3, stride 2), where two
    # pooled cells can share a maximum and unpooling must add, not overwrite.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (2, 3, height, width), generator=generator).double()   # ties on purpose
    pooled, indices = F.max_pool2d(x, kernel, 2, return_indices=True)
    v = torch.randn(pooled.shape, generator=generator, dtype=torch.float64)
    y = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    gathered = y.flatten(2).gather(2, indices.flatten(2)).view_as(v)
    assert _dot(max_unpool2d(v, indices, x.shape[-2:]), y) == pytest.approx(_dot(v, gathered), rel=1e-12, abs=1e-12)
    # ... which makes it the gradient max-pooling sends back to its input.
    x.requires_grad_(True)
    F.max_pool2d(x, kernel, 2).backward(v)
    torch.testing.assert_close(x.grad, max_unpool2d(v, indices, x.shape[-2:]))


def test_max_unpool_reads_the_indices_of_a_channels_last_pooling():
    # The networks run channels-last (faster CPU convolutions); pooling indices must still be positions in each
    # H x W plane, so DeconvNet's decoder puts every value back where its maximum was.
    x = torch.randn(2, 5, 8, 6, generator=torch.Generator().manual_seed(0))
    pooled, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, 2, return_indices=True)
    reference = torch.nn.MaxUnpool2d(2, 2)(*F.max_pool2d(x, 2, 2, return_indices=True), output_size=x.shape[-2:])
    torch.testing.assert_close(max_unpool2d(pooled, indices, x.shape[-2:]), reference)


def test_max_unpool_rejects_mismatched_indices():
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3, dtype=torch.int64), (4, 4))


# ------------------------------------------------------------------------------------------------ transposed conv
@settings(max_examples=50, deadline=None)
@given(height=st.integers(3, 12), width=st.integers(3, 12), kernel=st.sampled_from([3, 4]),
       seed=st.integers(0, 10_000))
def test_transposed_convolution_is_the_adjoint_of_strided_convolution(height, width, kernel, seed):
    # <conv(x), y> == <x, conv_transpose(y)> with one weight tensor, for odd and even sizes (output_padding
    # restores the row / column the strided convolution dropped).
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(5, 3, kernel, kernel, generator=generator, dtype=torch.float64)   # [Cout, Cin, k, k]
    x = torch.randn(2, 3, height, width, generator=generator, dtype=torch.float64)
    convolved = F.conv2d(x, weight, stride=2, padding=1)
    y = torch.randn(convolved.shape, generator=generator, dtype=torch.float64)
    rows = height - ((convolved.shape[2] - 1) * 2 - 2 + kernel)
    cols = width - ((convolved.shape[3] - 1) * 2 - 2 + kernel)
    back = F.conv_transpose2d(y, weight, stride=2, padding=1, output_padding=(rows, cols))
    assert back.shape == x.shape
    assert _dot(convolved, y) == pytest.approx(_dot(x, back), rel=1e-10)
    # The written-out version paints kernels; where no output_padding is needed it gives the same numbers.
    if rows == cols == 0:
        torch.testing.assert_close(transposed_conv2d(y, weight, stride=2, padding=1), back)


def test_written_out_transposed_convolution_matches_torch():
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 6, 7, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(transposed_conv2d(y, weight, 2, 1), F.conv_transpose2d(y, weight, stride=2, padding=1))
    torch.testing.assert_close(transposed_conv2d(y, weight, 3, 0), F.conv_transpose2d(y, weight, stride=3))


def test_bilinear_kernel_is_the_fcn_tent():
    tent = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), tent[:, None] * tent[None, :])
    torch.testing.assert_close(bilinear_kernel(3), torch.tensor([[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]]))


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_transposed_convolution_interpolates_like_resize_away_from_the_border(factor):
    scores = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    ours = upsample_bilinear(scores, factor)
    reference = F.interpolate(scores, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape == (1, 3, 5 * factor, 6 * factor)
    inner = slice(factor, -factor)                     # the resize clamps at the border, the convolution pads zeros
    torch.testing.assert_close(ours[..., inner, inner], reference[..., inner, inner])
    # the learned 2x layers start as the same interpolation
    if factor == 2:
        layer = torch.nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, bias=False).double()
        layer.weight.data.copy_(bilinear_upsampling_weight(3, 4))
        torch.testing.assert_close(layer(scores), ours)


# ------------------------------------------------------------------------------------------------ models
ARCHITECTURES = [("fcn32s", "unpool", "pool"), ("fcn16s", "unpool", "pool"), ("fcn8s", "unpool", "stride"),
                 ("deconvnet", "unpool", "pool"), ("deconvnet", "transposed", "stride")]


@pytest.mark.parametrize("architecture,upsample,downsample", ARCHITECTURES)
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (31, 8), (5, 40)])
def test_scores_have_the_input_size_for_odd_and_even_sizes(architecture, upsample, downsample, size):
    model = build_segmenter(FCNConfig(num_classes=3, architecture=architecture, upsample=upsample,
                                      downsample=downsample, **SMALL)).eval()
    scores = model(torch.rand(2, 3, *size))
    assert scores.shape == (2, 4, *size)
    target = torch.randint(0, 4, (2, *size))
    loss = model.train()(torch.rand(2, 3, *size), {"semantic": target})["segmentation"]
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_fcn_skips_start_at_zero_so_only_the_coarse_scores_count_at_first():
    model = build_segmenter(FCNConfig(num_classes=2, architecture="fcn8s", **SMALL)).eval()
    images = torch.rand(1, 3, 24, 24)
    before = model(images)
    with torch.no_grad():
        model.encoder.stages[1][0][0].weight.mul_(3.0)     # changes pool2 and pool3 features only...
        model.encoder.stages[2][0][0].weight.mul_(-1.0)    # ...and pool3's scorer is zero; pool3 still feeds on
    assert not torch.allclose(before, model(images))       # into the last stage, so the output does move
    assert all(float(s.weight.detach().abs().sum()) == 0.0 for s in model.skip_scorers)


@pytest.mark.parametrize("size", [(32, 32), (17, 23), (40, 9)])
def test_fcn4s_scores_at_stride_4_and_keeps_the_input_size(size):
    model = build_segmenter(FCNConfig(num_classes=3, architecture="fcn4s", channels=(4, 6, 8, 8, 8), head=8,
                                      convs_per_stage=1)).eval()
    assert model(torch.rand(2, 3, *size)).shape == (2, 4, *size)
    # Skips from pool4, pool3 and pool2 (stride 16, 8, 4), then the fixed bilinear upsampling by 4.
    assert [s.in_channels for s in model.skip_scorers] == [8, 8, 6] and model.final_factor == 4


def _train_on_checkerboard(architecture: str, steps: int = 120) -> float:
    """Pixel accuracy after fitting one 48 x 48 image of red and blue 4 px squares, one class each."""
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    target = (((ys // 4) + (xs // 4)) % 2 + 1)[None]                      # [1, 48, 48] classes 1 and 2
    image = torch.zeros(1, 3, 48, 48)
    image[0, 0][target[0] == 1] = 1.0
    image[0, 2][target[0] == 2] = 1.0
    model = build_segmenter(FCNConfig(num_classes=2, architecture=architecture, channels=(8, 8, 8, 8, 8), head=8,
                                      convs_per_stage=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model.train()(image, {"semantic": target})["segmentation"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((model.eval()(image).argmax(dim=1) == target).float().mean())


def test_fcn4s_resolves_4_pixel_squares_that_fcn8s_cannot():
    # FCN-8s's finest scores are at stride 8 and its last upsampling is fixed bilinear, so a pattern that
    # alternates every 4 px is beyond it, however it trains (it can only get about half the pixels); FCN-4s's
    # pool2 skip scores each 4 x 4 cell, whose colour pool2 sees directly.
    assert _train_on_checkerboard("fcn4s") > 0.98
    assert _train_on_checkerboard("fcn8s") < 0.75


@pytest.mark.parametrize("downsample", ["pool", "stride"])
@pytest.mark.parametrize("size", [(16, 16), (17, 23), (9, 40)])
def test_residual_encoder_keeps_the_input_size_for_odd_and_even_sizes(downsample, size):
    model = build_segmenter(FCNConfig(num_classes=3, architecture="fcn4s", channels=(4, 6, 8, 8), head=8,
                                      convs_per_stage=1, block="residual", downsample=downsample)).eval()
    assert model(torch.rand(2, 3, *size)).shape == (2, 4, *size)
    # Each residual stage halves the size once: features at strides 2, 4, 8, 16 of the padded 16-multiple.
    features, _ = model.encoder(torch.rand(1, 3, 32, 48))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_residual_block_adds_its_input_through_the_shortcut():
    from scenekit.models.fcn import ResidualBlock

    block = ResidualBlock(5, 5).eval()
    with torch.no_grad():
        block.body[-1].weight.zero_()                     # the residual branch's last BN outputs its bias
        block.body[-1].bias.fill_(-0.5)
    x = torch.randn(2, 5, 7, 6)
    torch.testing.assert_close(block(x), torch.relu(x - 0.5))          # relu(x + F(x)), F(x) = -0.5 by hand
    projected = ResidualBlock(5, 8, stride=2).eval()                   # width and stride change: 1x1 projection
    assert projected(x).shape == (2, 8, 4, 3) and isinstance(projected.shortcut, torch.nn.Sequential)


@torch.no_grad()
def test_deep_supervision_adds_the_loss_of_the_coarser_fcns_inside():
    torch.manual_seed(0)
    config = dict(num_classes=3, channels=(4, 6, 8), head=8, convs_per_stage=1)
    fcn16s = build_segmenter(FCNConfig(architecture="fcn16s", aux_weight=0.5, **config)).eval()
    images, target = torch.rand(2, 3, 19, 26), torch.randint(0, 4, (2, 19, 26))
    target[0, :3] = IGNORE_INDEX
    # Fresh skips score zero, so the output is the coarse scores upsampled twice (2x, then 16x) and the
    # auxiliary term nearly 0.5 x the main loss (bilinear 2x then 16x is 32x except at the zero-padded border).
    losses = fcn16s(images, {"semantic": target})
    assert float(losses["auxiliary"]) == pytest.approx(0.5 * float(losses["segmentation"]), rel=1e-2)
    # Once the skip has learned something, the auxiliary loss is the loss of FCN-32s with the same weights.
    fcn16s.skip_scorers[0].weight.normal_()
    fcn32s = build_segmenter(FCNConfig(architecture="fcn32s", **config)).eval()
    fcn32s.load_state_dict({k: v for k, v in fcn16s.state_dict().items() if k in fcn32s.state_dict()})
    losses = fcn16s(images, {"semantic": target})
    expected = segmentation_loss(fcn32s(images), target)
    assert float(losses["auxiliary"]) == pytest.approx(0.5 * float(expected), rel=1e-5)
    assert abs(float(losses["segmentation"]) - float(expected)) > 1e-3
    # No weight, no term: the engine sums the losses it gets, so FCN trains as the paper's without it.
    assert "auxiliary" not in build_segmenter(FCNConfig(architecture="fcn16s", **config))(
        images, {"semantic": target})


def test_checkpoint_configs_from_before_the_new_options_build_the_plain_network():
    from dataclasses import asdict

    old = {k: v for k, v in asdict(FCNConfig(num_classes=3, architecture="fcn8s", **SMALL)).items()
           if k not in ("block", "aux_weight")}                          # what earlier checkpoints stored
    model = build_segmenter(FCNConfig(**old))
    assert model.config.block == "plain" and model.config.aux_weight == 0.0
    plain = build_segmenter(FCNConfig(num_classes=3, architecture="fcn8s", **SMALL))
    model.load_state_dict(plain.state_dict())                              # strict: the same parameters


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        FCNConfig(num_classes=2, architecture="fcn2s")
    with pytest.raises(ValueError, match="fcn4s needs at least 4 stages"):
        FCNConfig(num_classes=2, architecture="fcn4s", channels=(4, 8, 16))
    with pytest.raises(ValueError, match="unpooling needs"):
        FCNConfig(num_classes=2, architecture="deconvnet", upsample="unpool", downsample="stride")
    with pytest.raises(ValueError, match="3 stages"):
        FCNConfig(num_classes=2, channels=(4, 8))
    with pytest.raises(ValueError, match="one count per stage"):
        FCNConfig(num_classes=2, channels=(4, 8, 16), convs_per_stage=(1, 2))
    with pytest.raises(ValueError, match="block"):
        FCNConfig(num_classes=2, block="dense")
    with pytest.raises(ValueError, match="aux_weight"):
        FCNConfig(num_classes=2, aux_weight=float("nan"))
    assert FCNConfig(num_classes=2, channels=(4, 8, 16, 32)).stage_convs == (1, 1, 2, 2)


def test_vgg16_encoder_keeps_torchvision_names_and_the_input_size():
    model = build_segmenter(FCNConfig(num_classes=2, architecture="fcn8s", backbone="vgg16", head=8)).eval()
    assert "encoder.vgg.features.28.weight" in model.state_dict()          # conv5_3, as torchvision names it
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 45)).shape == (1, 3, 37, 45)


def test_segmentation_loss_skips_ignored_pixels_and_is_zero_when_all_are():
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 2], [255, 1]]])
    picked = scores[0].permute(1, 2, 0).reshape(4, 3)[[0, 1, 3]]
    expected = F.cross_entropy(picked, torch.tensor([0, 2, 1]))
    torch.testing.assert_close(segmentation_loss(scores, target), expected)
    empty = segmentation_loss(scores, torch.full((1, 2, 2), IGNORE_INDEX))
    empty.backward()
    assert float(empty.detach()) == 0.0 and float(scores.grad.abs().sum()) == 0.0


def test_sliding_window_labels_each_pixel_from_the_window_centred_on_it():
    torch.manual_seed(0)
    model = WindowClassifier(num_classes=2, window=8, channels=(4, 4), hidden=8).eval()
    images = torch.rand(1, 3, 9, 11)
    dense = sliding_window_segment(model, images, rows_per_step=4)
    assert dense.shape == (1, 3, 9, 11)
    padded = F.pad(images, (4, 3, 4, 3))                   # window rows y-4 .. y+3 around pixel y
    for y, x in [(0, 0), (4, 5), (8, 10), (3, 9)]:
        crop = padded[:, :, y:y + 8, x:x + 8]
        torch.testing.assert_close(dense[0, :, y, x], model(crop)[0])


# ------------------------------------------------------------------------------------------------ class maps
def _record(**fields) -> Record:
    return Record(image_id=1, file_name="a.png", width=8, height=6, **fields)


def test_class_map_from_instances_paints_small_over_large_and_ignores_crowds_and_unknowns():
    big = [[0, 0, 8, 0, 8, 6, 0, 6]]                        # the whole image
    small = [[2, 1, 4, 1, 4, 3, 2, 3]]                      # x 2..4, y 1..3
    crowd = [[6, 4, 8, 4, 8, 6, 6, 6]]
    record = _record(boxes=[[0, 0, 8, 6], [2, 1, 4, 3], [6, 4, 8, 6], [0, 0, 1, 1]], labels=[7, 9, 7, 9],
                     iscrowd=[False, False, True, False], segmentations=[big, small, crowd, None])
    class_map = record_class_map(None, record, {7: 1, 9: 2})
    expected = np.ones((6, 8), dtype=np.int64)
    expected[1:3, 2:4] = 2
    expected[4:6, 6:8] = IGNORE_INDEX                       # crowd
    expected[0, 0] = IGNORE_INDEX                           # no outline: its box is not labelled
    np.testing.assert_array_equal(class_map, expected)
    # a category the model does not know is ignored, an image without objects is background
    unknown = record_class_map(None, record, {7: 1})
    assert (unknown[1:3, 2:4] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(record_class_map(None, _record(), {7: 1}), np.zeros((6, 8)))
    boxes_only = _record(boxes=[[0, 0, 2, 2]], labels=[7])
    assert record_class_map(None, boxes_only, {7: 1}) is None


def test_segmentation_data_keeps_only_images_with_pixel_labels():
    from scenekit.models.fcn import SegmentationData

    labelled = Record(image_id=1, file_name="a.png", width=4, height=4, image=np.zeros((4, 4, 3), np.uint8),
                      boxes=[[0, 0, 2, 2]], labels=[7], segmentations=[[[0, 0, 2, 0, 2, 2, 0, 2]]])
    boxes_only = Record(image_id=2, file_name="b.png", width=4, height=4, image=np.zeros((4, 4, 3), np.uint8),
                        boxes=[[0, 0, 2, 2]], labels=[7])
    data = SegmentationData(Dataset([labelled, boxes_only], {7: "cat"}, None, name="mixed"), [7], 8)
    assert len(data) == 1
    image, target = data[0]
    assert image.shape == (3, 8, 8) and target["semantic"].shape == (8, 8)
    assert target["semantic"][:4, :4].eq(1).all() and target["semantic"][4:].eq(0).all()   # nearest, doubled
    with pytest.raises(DataError, match="no image has pixel labels"):
        SegmentationData(Dataset([boxes_only], {7: "cat"}, None, name="boxes"), [7], 8)


def test_world_semantic_maps_become_contiguous_class_indices():
    semantic = np.array([[0, 3], [5, 3]])
    record = Record(image_id=1, file_name="a.png", width=2, height=2, semantic=semantic)
    np.testing.assert_array_equal(record_class_map(None, record, {3: 1, 5: 2}), [[0, 1], [2, 1]])


def _palette_png(path, indices: np.ndarray):
    picture = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1], palette[15], palette[255] = (128, 0, 0), (192, 128, 128), (224, 224, 192)   # VOC's colours
    picture.putpalette(palette.ravel().tolist())
    picture.save(path)


def test_voc_segmentation_png_indices_are_read_and_mapped_by_class_name(tmp_path):
    root = tmp_path / "VOC"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    indices = np.array([[0, 15, 15], [255, 1, 0]])          # 15 = person, 1 = aeroplane, 255 = void
    _palette_png(root / "SegmentationClass" / "000005.png", indices)
    np.testing.assert_array_equal(read_voc_class_map(root / "SegmentationClass" / "000005.png"), indices)
    # a dataset with only two of the classes, under other ids: mapped by name
    dataset = Dataset([], {3: "person", 8: "aeroplane"}, root / "JPEGImages", name="voc")
    record = Record(image_id=5, file_name="000005.jpg", width=3, height=2, boxes=[[1, 0, 3, 1]], labels=[3])
    class_map = record_class_map(dataset, record, {3: 1, 8: 2})
    np.testing.assert_array_equal(class_map, [[0, 1, 1], [IGNORE_INDEX, 2, 0]])
    assert VOC_CLASSES[15 - 1] == "person"


def test_voc_segmentation_png_must_hold_indices(tmp_path):
    Image.new("RGB", (3, 2), (128, 0, 0)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="palette"):
        read_voc_class_map(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        read_voc_class_map(tmp_path / "broken.png")


# ------------------------------------------------------------------------------------------------ pictures
def test_draw_semantic_tints_labelled_pixels_and_adds_a_legend():
    from scenekit.viz import colour_for

    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    class_map = np.zeros((20, 30), dtype=np.int64)
    class_map[5:10, 5:10] = 4
    picture = np.asarray(draw_semantic(image, class_map, {4: "star"}, alpha=0.5))
    assert picture.shape[0] >= 20 and picture.shape[1] > 30                   # legend on the right
    np.testing.assert_array_equal(picture[0, 0], [100, 100, 100])              # background untouched
    expected = np.round(0.5 * 100 + 0.5 * np.asarray(colour_for(4), dtype=np.float64))
    np.testing.assert_allclose(picture[7, 7], expected, atol=1)
    with pytest.raises(ValueError, match="class_map"):
        draw_semantic(image, class_map[:5], {4: "star"})


# ------------------------------------------------------------------------------------------------ superpixels
def test_superpixel_average_gives_each_segment_its_mean_distribution():
    from scenekit.models.fcn import superpixel_average

    probabilities = torch.tensor([[[0.9, 0.2, 0.5]],
                                  [[0.1, 0.8, 0.5]]])                   # [2 classes, 1, 3]: pixels a, b, c
    segments = np.array([[0, 0, 1]])                                    # a and b one segment, c alone
    out = superpixel_average(probabilities, segments)
    expected = torch.tensor([[[0.55, 0.55, 0.5]], [[0.45, 0.45, 0.5]]])  # by hand: (0.9 + 0.2) / 2 = 0.55
    torch.testing.assert_close(out, expected)


@settings(max_examples=50, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), segments=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_superpixel_average_matches_a_loop_over_segments(height, width, segments, seed):
    from scenekit.models.fcn import superpixel_average

    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(4, height, width, generator=generator).softmax(dim=0)
    labels = torch.randint(0, segments, (height, width), generator=generator).numpy() * 3   # unused labels too
    out = superpixel_average(probabilities, labels)
    expected = np.zeros((4, height, width))
    for label in np.unique(labels):
        where = labels == label
        expected[:, where] = probabilities.numpy()[:, where].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(dim=0), torch.ones(height, width))


def test_superpixel_average_refuses_mismatched_or_negative_segments():
    from scenekit.models.fcn import superpixel_average

    with pytest.raises(ValueError, match="segments"):
        superpixel_average(torch.rand(3, 4, 5), np.zeros((4, 6), dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        superpixel_average(torch.rand(3, 2, 2), np.array([[0, -1], [0, 0]]))


def test_recipe_with_superpixels_labels_each_felzenszwalb_segment_with_one_distribution():
    from scenekit.data.world import make_world
    from scenekit.models.fcn import recipe
    from scenekit.proposals.graph_segment import felzenszwalb

    torch.manual_seed(0)
    world = make_world(1, image_size=64, split="train", min_objects=2)
    fcn = recipe(world.categories, image_size=32, world_size=64, channels=(4, 6, 8), head=8,
                 superpixel_scale=300, superpixel_sigma=0.5, superpixel_min_size=10)
    assert fcn.options["superpixel_scale"] == 300                         # stored, so a checkpoint restores it
    image = world.records[0].image
    found = fcn.predict(fcn.build_model(fcn.model_config), [image], torch.device("cpu"))[0]
    segments = felzenszwalb(image, scale=300, sigma=0.5, min_size=10)
    assert 1 < segments.max() + 1 < 64 * 64
    for label in np.unique(segments):
        inside = found["probabilities"][:, segments == label]              # [K+1, pixels of the segment]
        assert float((inside - inside[:, :1]).abs().max()) < 1e-6
    with pytest.raises(DataError, match="superpixel_scale"):
        recipe(world.categories, superpixel_scale=-1)


# ------------------------------------------------------------------------------------------------ training
def test_fcn8s_overfits_a_few_world_images():
    from scenekit.data.world import make_world
    from scenekit.models.fcn import SegmentationData, collate

    torch.manual_seed(0)
    world = make_world(4, image_size=64, split="train", min_objects=2, max_objects=4)
    class_ids = sorted(world.categories)
    data = SegmentationData(world, class_ids, 64)
    images, targets = collate([data[i] for i in range(len(data))])
    model = build_segmenter(FCNConfig(num_classes=6, architecture="fcn8s", channels=(16, 24, 32, 48),
                                      convs_per_stage=1, head=64))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(120):
        model.train()
        loss = model(images, targets)["segmentation"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.2 * losses[0]
    scores = evaluate_segmentation(model, world, torch.device("cpu"), class_ids, 64)
    assert scores["mean_iou"] > 0.8 and scores["pixel_accuracy"] > 0.95


def test_recipe_trains_at_its_input_size_and_scores_each_image_at_its_own_size():
    from scenekit.data.world import make_world
    from scenekit.models.fcn import recipe

    world = make_world(2, image_size=64, split="train", min_objects=2)
    fcn = recipe(world.categories, image_size=32, world_size=64, channels=(4, 6, 8), head=8)
    assert fcn.world == {"image_size": 64}                 # `--data world` keeps the world's own image size
    image, target = fcn.make_dataset(world, True)[0]
    assert image.shape == (3, 32, 32) and target["semantic"].shape == (32, 32)
    model = fcn.build_model(fcn.model_config)
    found = fcn.predict(model, [world.records[0].image], torch.device("cpu"))[0]
    assert found["semantic"].shape == (64, 64) and found["probabilities"].shape == (7, 64, 64)


def test_predict_gives_category_ids_and_one_box_per_category():
    torch.manual_seed(0)
    model = build_segmenter(FCNConfig(num_classes=2, **SMALL))
    with torch.no_grad():                                  # a scorer that always says "category index 2"
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    image = np.zeros((13, 17, 3), dtype=np.uint8)
    found = predict_semantic(model, [image], torch.device("cpu"), class_ids=[4, 9], image_size=16)[0]
    assert found["semantic"].shape == (13, 17) and set(found["semantic"].unique().tolist()) == {9}
    assert found["labels"].tolist() == [9]
    np.testing.assert_array_equal(found["boxes"].numpy(), [[0, 0, 17, 13]])
    torch.testing.assert_close(found["probabilities"].sum(0), torch.ones(13, 17))


def test_cli_trains_fcn_and_segments_an_image_with_a_coloured_overlay(tmp_path, capsys):
    from scenekit.cli import main
    from scenekit.data.world import CATEGORIES, make_world
    from scenekit.viz import colour_for

    # 60 steps on one training image overfit it: 0.89 of its object pixels get their category under each CPU
    # kernel (ATEN_CPU_CAPABILITY default, avx2, avx512); one step gets none of them.
    out = tmp_path / "run"
    code = main(["train", "fcn", "--data", "world", "--train-images", "1", "--val-images", "1", "--image-size", "64",
                 "--epochs", "60", "--batch-size", "1", "--lr", "5e-3", "--out", str(out), "--log-every", "0",
                 "--option", "channels=[16,24,32,48]", "--option", "head=64", "--option", "convs_per_stage=1",
                 "--option", "warmup_steps=5", "--option", "flip=false", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_metric"] == "mean_iou" and 0.0 <= summary["best"] <= 1.0
    record = make_world(1, image_size=128, split="train").records[0]     # what it trained on: the world at 128 px
    image_path = tmp_path / "scene.png"
    Image.fromarray(record.image).save(image_path)
    overlay = tmp_path / "overlay.png"
    assert main(["segment", str(image_path), "--checkpoint", str(out / "last.pt"), "--out", str(overlay),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    class_png = Image.open(result["class_map"])
    assert class_png.mode == "P" and class_png.size == (128, 128)
    class_map = np.asarray(class_png).astype(np.int64)                     # pixel value = category id
    truth, objects = record.semantic, record.semantic > 0
    assert (class_map[objects] == truth[objects]).mean() >= 0.6 and (class_map == truth).mean() >= 0.8
    for category in np.unique(truth[objects]):       # each object's category is what most of its pixels get
        assert np.bincount(class_map[truth == category]).argmax() == category, CATEGORIES[int(category)]
    # The overlay is the image with each labelled pixel tinted half-way to its category's colour, the background
    # untouched, and a legend to the right; the image part may be enlarged (nearest neighbours) to be legible, so
    # each image pixel is read at the centre of the square it became.
    picture = np.asarray(Image.open(overlay).convert("RGB"), dtype=np.float64)
    side = picture.shape[0]                                   # the legend (7 rows at most) is shorter than the image
    assert side >= 128 and picture.shape[1] > side
    centres = np.floor((np.arange(128) + 0.5) * side / 128).astype(int)
    palette = np.array([(0, 0, 0)] + [colour_for(c) for c in range(1, 256)], dtype=np.float64)
    expected = np.where(class_map[..., None] > 0, (record.image + palette[class_map]) / 2, record.image)
    assert np.abs(picture[np.ix_(centres, centres)] - expected).max() <= 0.5 + 1e-9     # rounded to integers
    names = {0: "background", **CATEGORIES}
    fractions = {names[c]: n / class_map.size for c, n in enumerate(np.bincount(class_map.ravel())) if n}
    assert result["pixels"].keys() == fractions.keys()
    assert all(abs(result["pixels"][k] - v) <= 1e-6 for k, v in fractions.items())
    # `predict` lists the same model's segmentation as one box per category, around all its pixels.
    assert main(["predict", str(image_path), "--checkpoint", str(out / "last.pt"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "scene.png").is_file()
    boxes = {r["category_id"]: r["bbox"] for r in json.loads((tmp_path / "pred" / "predictions.json").read_text())}
    assert boxes.keys() == set(np.unique(class_map).tolist()) - {0}
    for category, bbox in boxes.items():
        ys, xs = np.nonzero(class_map == category)
        assert bbox == pytest.approx([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])


# ------------------------------------------------------------------------------------------------ options
def test_fcn_default_recipes_store_the_options_checkpoints_always_stored():
    """Keys, values and order as the hand-written dicts stored them before `FCNOptions` / `WindowOptions`: epochs
    resolved (25; the sliding window 10), lr as given; the sliding window never stored backbone options. New since:
    freeze_stages (0, which builds the same network)."""
    from scenekit.models.registry import make_recipe

    fcn = {"architecture": "fcn8s", "upsample": "unpool", "downsample": "pool", "image_size": 96, "world_size": 128,
           "channels": [16, 32, 64, 128, 128], "convs_per_stage": None, "head": 128, "backbone": "small",
           "backbone_weights": None, "freeze_stages": 0, "block": "plain", "aux_weight": 0.0, "epochs": 25, "lr": None,
           "warmup_steps": 20, "superpixel_scale": 0.0, "superpixel_sigma": 0.5, "superpixel_min_size": 20,
           "weight_decay": 0.0001, "flip": True, "box_masks": False}
    window = {"image_size": 128, "window": 32, "channels": [16, 32, 64], "hidden": 128, "windows_per_image": 64,
              "val_images": 10, "epochs": 10, "lr": None, "weight_decay": 0.0001, "flip": True, "box_masks": False}
    for name, before in (("fcn", fcn), ("fcn-32s", {**fcn, "architecture": "fcn32s"}),
                         ("deconvnet-transposed", {**fcn, "architecture": "deconvnet", "upsample": "transposed"}),
                         ("sliding-window", window)):
        stored = make_recipe(name, {1: "a", 2: "b"}).options
        assert list(stored.items()) == list(before.items())
        assert [type(v) for v in stored.values()] == [type(v) for v in before.values()]
        assert make_recipe(name, {1: "a", 2: "b"}, stored=stored).options == stored
    from scenekit.models.fcn import recipe
    assert recipe({1: "a"}, convs_per_stage=(1, 2, 2, 2, 2)).options["convs_per_stage"] == [1, 2, 2, 2, 2]


def test_fcn_recipes_name_a_misspelt_option():
    from scenekit.models.fcn import recipe, window_recipe
    from scenekit.models.registry import model_options

    with pytest.raises(DataError, match="did you mean superpixel_scale"):
        recipe({1: "a"}, superpixel_scal=800)
    with pytest.raises(DataError, match="did you mean windows_per_image"):
        window_recipe({1: "a"}, windows_per_imag=8)
    for name in ("fcn", "sliding-window"):
        assert all(spec.help and "\n" not in spec.help for spec in model_options(name).values())
