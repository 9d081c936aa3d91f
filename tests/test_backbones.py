"""Backbones: torchvision's exact state-dict layout for VGG-16 / ResNet-18/50, weight loading and its errors."""

from __future__ import annotations

import pytest
import torch

from scenekit.errors import DataError
from scenekit.models import backbones
from scenekit.recipes import frozen_modules

# torchvision's vgg16: (index in `features`, out channels, in channels) of the 13 3x3 convolutions, then the
# classifier's Linear layers at 0, 3, 6.
VGG16_CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
               (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512)]
VGG16_LINEARS = [(0, 4096, 25088), (3, 4096, 4096), (6, 1000, 4096)]


def vgg16_layout(include_classifier=True) -> dict[str, tuple]:
    layout = {}
    for index, out_c, in_c in VGG16_CONVS:
        layout[f"features.{index}.weight"] = (out_c, in_c, 3, 3)
        layout[f"features.{index}.bias"] = (out_c,)
    if include_classifier:
        for index, out_f, in_f in VGG16_LINEARS:
            layout[f"classifier.{index}.weight"] = (out_f, in_f)
            layout[f"classifier.{index}.bias"] = (out_f,)
    return layout


def _bn(prefix, channels):
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def resnet_layout(bottleneck: bool, blocks, include_fc=True) -> dict[str, tuple]:
    """torchvision's resnet18 (BasicBlock) / resnet50 (Bottleneck, stride on the 3x3) key names and shapes."""
    layout = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_c = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        out_c = width * (4 if bottleneck else 1)
        for b in range(count):
            p = f"layer{stage}.{b}"
            if bottleneck:
                layout.update({f"{p}.conv1.weight": (width, in_c, 1, 1), **_bn(f"{p}.bn1", width),
                               f"{p}.conv2.weight": (width, width, 3, 3), **_bn(f"{p}.bn2", width),
                               f"{p}.conv3.weight": (out_c, width, 1, 1), **_bn(f"{p}.bn3", out_c)})
            else:
                layout.update({f"{p}.conv1.weight": (width, in_c, 3, 3), **_bn(f"{p}.bn1", width),
                               f"{p}.conv2.weight": (width, width, 3, 3), **_bn(f"{p}.bn2", width)})
            if b == 0 and (stage > 1 or in_c != out_c):
                layout.update({f"{p}.downsample.0.weight": (out_c, in_c, 1, 1), **_bn(f"{p}.downsample.1", out_c)})
            in_c = out_c
    if include_fc:
        layout.update({"fc.weight": (1000, in_c), "fc.bias": (1000,)})
    return layout


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _on_meta(build):
    with torch.device("meta"):                 # shapes only: VGG-16 alone would be 553 MB of float32
        return build()


@pytest.mark.parametrize("build, layout, keys, parameters", [
    (backbones.vgg16, vgg16_layout(), 32, 138_357_544),
    (backbones.resnet18, resnet_layout(False, (2, 2, 2, 2)), 122, 11_689_512),
    (backbones.resnet50, resnet_layout(True, (3, 4, 6, 3)), 320, 25_557_032),
])
def test_state_dict_keys_and_shapes_match_torchvision(build, layout, keys, parameters):
    model = _on_meta(build)
    assert list(_shapes(model)) == list(layout)           # same names, same order as torchvision
    assert _shapes(model) == layout
    assert len(layout) == keys                            # torchvision's len(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == parameters   # torchvision's published counts


def test_spot_checks_of_torchvision_names():
    shapes = _shapes(_on_meta(backbones.resnet50))
    assert shapes["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert "layer1.0.downsample.0.weight" in shapes           # 64 -> 256 channels needs a projection
    assert "layer1.0.downsample.0.weight" not in _shapes(_on_meta(backbones.resnet18))


def _save_layout(path, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(shape, generator=g) if shape else torch.tensor(7)) for k, shape in layout.items()}
    torch.save(state, path)
    return state


def test_torchvision_format_resnet18_file_loads_into_the_backbone(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = _save_layout(path, resnet_layout(False, (2, 2, 2, 2)))          # with the ImageNet fc
    model = backbones.build_backbone("resnet18", weights=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert backbones.load_backbone_weights(model, path) == ["fc.weight", "fc.bias"]
    features = model(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, 512, 2, 2)


def test_torchvision_format_vgg16_features_load(tmp_path):
    path = tmp_path / "vgg16_features.pth"
    state = _save_layout(path, vgg16_layout(include_classifier=False))
    model = backbones.vgg16(include_classifier=False)
    backbones.load_backbone_weights(model, path)
    assert torch.equal(model.features[28].weight, state["features.28.weight"])


def test_missing_mismatched_and_corrupt_files_name_the_file_and_key(tmp_path):
    model = backbones.resnet18(include_fc=False)
    with pytest.raises(DataError, match="nowhere.pth: backbone weights file not found"):
        backbones.load_backbone_weights(model, tmp_path / "nowhere.pth")
    layout = resnet_layout(False, (2, 2, 2, 2), include_fc=False)
    missing = dict(layout)
    del missing["layer3.1.bn2.running_var"]
    _save_layout(tmp_path / "missing.pth", missing)
    with pytest.raises(DataError, match=r"missing.pth: field layer3.1.bn2.running_var: missing key"):
        backbones.load_backbone_weights(model, tmp_path / "missing.pth")
    wrong = dict(layout, **{"layer2.0.conv1.weight": (128, 64, 1, 1)})
    _save_layout(tmp_path / "wrong.pth", wrong)
    with pytest.raises(DataError, match=r"wrong.pth: field layer2.0.conv1.weight: shape \(128, 64, 1, 1\)"):
        backbones.load_backbone_weights(model, tmp_path / "wrong.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(DataError, match="corrupt.pth: cannot read backbone weights"):
        backbones.load_backbone_weights(model, tmp_path / "corrupt.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(DataError, match="list.pth: not a state dict"):
        backbones.load_backbone_weights(model, tmp_path / "list.pth")


@pytest.mark.parametrize("size", [32, 45, 64, 100])
def test_small_cnn_output_size_matches_its_forward(size):
    net = backbones.SmallCNN(channels=(4, 8, 8))
    assert net(torch.zeros(1, 3, size, size)).shape == (1, 8, net.output_size(size), net.output_size(size))
    assert net.stride == 8


def test_unknown_backbone_and_norm_are_rejected():
    with pytest.raises(ValueError, match="backbone"):
        backbones.build_backbone("alexnet")
    with pytest.raises(ValueError, match="norm"):
        backbones.SmallCNN(norm="layer")


# ------------------------------------------------------------------------------------------------ inference
def _random_batch_norm_statistics(model, generator):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) - 0.5)


def test_folded_batch_norms_give_the_same_outputs_with_no_batch_norm_left():
    from scenekit.models.backbones import SmallCNN, fold_batch_norms

    generator = torch.Generator().manual_seed(0)
    model = SmallCNN(channels=(8, 16), padding=1)
    _random_batch_norm_statistics(model, generator)
    model.eval()
    folded = fold_batch_norms(model)
    images = torch.rand(3, 3, 20, 20, generator=generator)
    with torch.no_grad():
        # The reference: batch norm's test-time formula applied by hand after each convolution.
        x = images
        for layer in model.features:
            if isinstance(layer, torch.nn.BatchNorm2d):
                x = (x - layer.running_mean[:, None, None]) / torch.sqrt(layer.running_var[:, None, None]
                                                                         + layer.eps)
                x = x * layer.weight[:, None, None] + layer.bias[:, None, None]
            else:
                x = layer(x)
        torch.testing.assert_close(folded(images), x, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())     # the model itself is untouched


def test_inference_copy_is_rebuilt_when_the_weights_change():
    from scenekit.models.backbones import SmallCNN, inference_copy

    model = SmallCNN(channels=(4,), padding=1).eval()
    first = inference_copy(model)
    assert inference_copy(model) is first                      # cached while nothing changed
    with torch.no_grad():
        model.features[0].weight.mul_(2)                         # what an optimiser step does
    second = inference_copy(model)
    assert second is not first
    images = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(second(images), model(images), rtol=1e-5, atol=1e-5)
    model.fold_for_inference = False
    assert inference_copy(model) is model


def test_inference_copy_sees_replaced_parameters_and_buffers_anywhere_in_the_tree():
    from scenekit.models.backbones import SmallCNN, inference_copy

    model = SmallCNN(channels=(4, 4), padding=1).eval()
    images = torch.rand(1, 3, 8, 8)
    first = inference_copy(model)
    deep_conv, deep_norm = model.features[4], model.features[5]
    deep_conv.weight = torch.nn.Parameter(deep_conv.weight.detach() * 3)          # a new tensor, not in place
    second = inference_copy(model)
    assert second is not first
    deep_norm.running_var = deep_norm.running_var * 4                              # a replaced buffer
    third = inference_copy(model)
    assert third is not second
    with torch.no_grad():
        torch.testing.assert_close(third(images), model(images), rtol=1e-5, atol=1e-5)


def test_a_truncated_weights_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    _save_layout(path, resnet_layout(False, (2, 2, 2, 2)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])          # a download cut off half way
    with pytest.raises(DataError, match=r"^.*resnet18-f37072fd.pth: cannot read backbone weights \(") as caught:
        backbones.build_backbone("resnet18", weights=path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name, count, frozen_names, trained_name", [
    ("resnet18", 1, ["conv1", "bn1"], "layer1"),                       # Detectron2's FREEZE_AT=1: the stem
    ("resnet18", 2, ["conv1", "bn1", "layer1"], "layer2"),            # FREEZE_AT=2: stem and res2
    ("vgg16", 2, ["features.0", "features.2", "features.5", "features.7"], "features.10"),   # conv1_x, conv2_x
])
def test_freezing_the_first_stages_fixes_exactly_their_parameters(name, count, frozen_names, trained_name):
    model = _on_meta(lambda: backbones.build_backbone(name, freeze=count))
    for key, parameter in model.named_parameters():
        fixed = any(key == n or key.startswith(n + ".") for n in frozen_names)
        assert parameter.requires_grad is not fixed, key
    assert any(k.startswith(trained_name + ".") and p.requires_grad for k, p in model.named_parameters())
    assert all(getattr(m, "frozen", False) for m in frozen_modules(model))
    frozen_params = {id(p) for m in frozen_modules(model) for p in m.parameters()}
    assert frozen_params == {id(p) for p in model.parameters() if not p.requires_grad}


def test_small_cnn_stages_are_its_conv_blocks_and_a_bad_count_is_one_line():
    net = backbones.SmallCNN(channels=(4, 8, 8))
    assert len(backbones.backbone_stages(net)) == 3
    backbones.freeze_stages(net, 1)
    assert [p.requires_grad for p in net.parameters()] == [False, False, False, True, True, True, True, True, True]
    with pytest.raises(DataError, match="freeze_stages must be an integer from 0 to 3"):
        backbones.freeze_stages(backbones.SmallCNN(channels=(4, 8, 8)), 4)


def test_the_engine_keeps_frozen_stages_fixed_and_their_batch_norm_statistics(tmp_path):
    from scenekit.engine.train import prepare_phase, set_train_mode
    from scenekit.recipes import Phase

    torch.manual_seed(0)
    net = backbones.SmallCNN(channels=(4, 8))
    with torch.no_grad():
        net.features[1].running_mean.fill_(0.5)                  # "loaded" statistics of the first stage
    backbones.freeze_stages(net, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    phase = Phase("all", epochs=1, lr=0.1)                      # trains=None: the whole model
    trainable = prepare_phase(net, phase)
    set_train_mode(net, phase)
    assert len(trainable) == 3                                  # the second stage's conv + norm weight and bias
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    net(torch.randn(2, 3, 20, 20)).square().mean().backward()
    optimizer.step()
    after = net.state_dict()
    for key in ("features.0.weight", "features.1.weight", "features.1.running_mean", "features.1.running_var"):
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["features.4.weight"], before["features.4.weight"])
    assert not torch.equal(after["features.5.running_mean"], before["features.5.running_mean"])
