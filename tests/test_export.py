"""ONNX export (scenekit/export.py): onnxruntime gives the PyTorch outputs, on every family that exports."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from scenekit import export  # noqa: E402
from scenekit.cli import main, make_recipe  # noqa: E402
from scenekit.data.world import CATEGORIES, make_world  # noqa: E402
from scenekit.errors import DataError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# Small versions of each family, untrained (the graph, not the weights, is under test).
FAMILIES = {
    "localizer": {"channels": [8, 8, 16], "hidden": 32},
    "overfeat": {"channels": [8, 8, 16], "hidden": 32},
    "yolo1": {"channels": [8, 8, 16, 16, 16], "hidden": 64},
    "yolo2": {"channels": [8, 8, 16, 16, 16], "head_channels": 32, "anchors": "hand"},
    "fcn": {"channels": [8, 8, 16, 16, 16], "head": 16, "image_size": 64},
    "deconvnet": {"channels": [8, 8, 16, 16, 16], "image_size": 64},
    "faster-rcnn": {},
    "mask-rcnn": {},
    "showtell": {"channels": [8, 8, 16], "feature": 32, "hidden": 32, "embedding": 16},
    "showattendtell": {"channels": [8, 8, 16], "hidden": 32, "embedding": 16, "attention": 16},
}
RUNNABLE = ("localizer", "overfeat", "yolo1", "yolo2", "fcn", "deconvnet")


def build(name):
    recipe = make_recipe(name, dict(CATEGORIES), FAMILIES[name])
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config).eval()
    with torch.no_grad():                     # non-trivial BatchNorm statistics, so folding them is tested too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return recipe, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name):
        if name not in cache:
            recipe, model = build(name)
            cache[name] = (recipe, model, export.export_onnx(recipe, model, folder / f"{name}.onnx"))
        return cache[name]
    return get


@pytest.fixture(scope="module")
def world_images():
    return [r.image for r in make_world(2, seed=3, split="test").records]     # varied sizes, 128..320


@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnx_outputs_equal_pytorch_outputs_on_another_batch_and_size(exported, name):
    recipe, model, path = exported(name)
    assert not any(m.training for m in model.modules())         # exporting left the model in eval mode
    graph = export.export_graph(recipe, model)
    height, width = graph.example.shape[2:]
    if graph.dynamic_size:                   # another size than the one traced (multiples of 32 for YOLOv2)
        height, width = height + 32, width + 64
    images = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = graph.network(images)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = export.OnnxSession(path).run(images)
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["localizer", "yolo1", "showtell"])
def test_traced_wrapper_equals_the_models_own_forward(name):
    """The export wrappers restate a forward pass with a symbolic batch; they must equal the model's own."""
    recipe, model = build(name)
    graph = export.export_graph(recipe, model)
    images = torch.rand(2, 3, *graph.example.shape[2:])
    with torch.no_grad():
        ours = graph.network(images)
        if name == "showtell":
            state, _ = model.start(images)
            theirs = tuple(state)
        else:
            theirs = model(images)
            theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", RUNNABLE)
def test_predictions_through_onnxruntime_equal_the_checkpoint_predictions(exported, world_images, name):
    recipe, model, path = exported(name)
    with torch.no_grad():
        expected = recipe.predict(model, world_images, torch.device("cpu"))
    got = export.load_onnx(path, make_recipe).predict(world_images)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for key in ("boxes", "scores", "labels", "semantic"):
            if key in e:
                a, b = np.asarray(g[key], dtype=np.float64), np.asarray(e[key], dtype=np.float64)
                assert a.shape == b.shape, key
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=key)


def test_metadata_carries_the_recipe(exported):
    recipe, model, path = exported("yolo2")
    metadata = export.read_metadata(path)
    assert metadata["model_name"] == "yolo2"
    assert metadata["categories"] == dict(CATEGORIES)
    assert metadata["outputs"] == ["output"] and metadata["dynamic_size"] and metadata["runnable"]
    np.testing.assert_allclose(metadata["buffers"]["anchors"], model.anchors.numpy())


def test_network_only_files_refuse_end_to_end_prediction_with_a_reason(exported):
    _, _, path = exported("faster-rcnn")
    with pytest.raises(DataError, match="proposal layer"):
        export.load_onnx(path, make_recipe)


def test_files_not_from_scenekit_are_data_errors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(DataError, match="not an ONNX file exported by scenekit"):
        export.read_metadata(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(DataError):
        export.read_metadata(garbage)
    with pytest.raises(DataError, match="not found"):
        export.read_metadata(tmp_path / "missing.onnx")


def test_cli_export_then_predict_with_onnx_writes_the_same_detections(tmp_path, world_images, capsys):
    from PIL import Image

    from scenekit.engine.checkpoint import save_checkpoint

    recipe, model = build("localizer")
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, {"model_name": "localizer", "model": model.state_dict(), "options": recipe.options,
                                 "model_config": recipe.model_config, "categories": recipe.categories})
    image_path = tmp_path / "scene.png"
    Image.fromarray(world_images[0]).save(image_path)
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runnable"] and summary["max_abs_difference"] < 1e-4
    assert main(["predict", str(image_path), "--onnx", str(onnx_path), "--out", str(tmp_path / "a"), "--json"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert main(["predict", str(image_path), "--checkpoint", str(checkpoint), "--device", "cpu",
                 "--out", str(tmp_path / "b"), "--json"]) == 0
    from_torch = json.loads(capsys.readouterr().out)
    assert len(from_onnx) == len(from_torch) > 0
    for a, b in zip(from_onnx, from_torch):
        assert a["category_id"] == b["category_id"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=2e-3)       # the JSON rounds to 3 decimals
        np.testing.assert_allclose(a["score"], b["score"], atol=2e-6)
    assert (tmp_path / "a" / "scene.png").is_file()


def test_cli_predict_without_a_model_is_a_one_line_error(capsys):
    assert main(["predict", "x.png"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
