"""ONNX export (scenekit/export.py): onnxruntime gives the PyTorch outputs and predictions, on every family."""

import json
import warnings

import numpy as np
import pytest
import torch

# No importorskip: onnx and onnxruntime are in the `[test]` extra, and a missing one must fail these tests
# loudly (an ImportError at collection), never turn them into silent skips.
import onnx  # noqa: F401
import onnxruntime  # noqa: F401

from scenekit import export
from scenekit.cli import main
from scenekit.models.export_parts import Tupled
from scenekit.models.registry import make_recipe
from scenekit.data.world import CATEGORIES, make_world
from scenekit.errors import DataError

pytestmark = pytest.mark.timeout(120)

# Small versions of each family, untrained (the graph, not the weights, is under test).
FAMILIES = {
    "localizer": {"channels": [8, 8, 16], "hidden": 32},
    "overfeat": {"channels": [8, 8, 16], "hidden": 32},
    "yolo1": {"channels": [8, 8, 16, 16, 16], "hidden": 64},
    "yolo2": {"channels": [8, 8, 16, 16, 16], "head_channels": 32, "anchors": "hand"},
    "fcn": {"channels": [8, 8, 16, 16, 16], "head": 16, "image_size": 64},
    "deconvnet": {"channels": [8, 8, 16, 16, 16], "image_size": 64},
    "fast-rcnn": {"channels": [8, 16, 16], "hidden": 64},
    "faster-rcnn": {"channels": [8, 16, 16], "hidden": 64},
    "mask-rcnn": {"channels": [8, 16, 16], "hidden": 64, "mask_convs": 2, "mask_channels": 16},
    "mask-rcnn-c4": {"channels": [8, 16, 16], "hidden": 64, "mask_convs": 2, "mask_channels": 16, "mask_stride": 8},
    "deepimagesent": {"channels": [8, 8, 16], "feature": 32, "hidden": 32, "embedding": 16},
    "showtell": {"channels": [8, 8, 16], "feature": 32, "hidden": 32, "embedding": 16},
    "showattendtell": {"channels": [8, 8, 16], "hidden": 32, "embedding": 16, "attention": 16},
}


RECIPE_OF = {"mask-rcnn-c4": "mask-rcnn"}       # Mask R-CNN whose mask branch reads the shared stride-8 map


def build(name):
    recipe = make_recipe(RECIPE_OF.get(name, name), dict(CATEGORIES), FAMILIES[name])
    torch.manual_seed(0)
    model = recipe.build_model(recipe.model_config).eval()
    with torch.no_grad():                     # non-trivial BatchNorm statistics, so folding them is tested too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        spread_scores(model)
    return recipe, model


def spread_scores(model):
    """The papers' initialisation (std 0.01, 0.001) leaves an untrained detector's objectness and class scores
    within float rounding of one another, so proposals and detections tie, and the two libraries' last-bit
    differences break the ties differently. A trained model's scores are apart (a trained Faster R-CNN gives the
    same detections within 5e-5 px); spread these the same way."""
    for layer in (getattr(model, "rpn", None) and model.rpn.objectness,
                  getattr(model, "box_head", None) and model.box_head.cls_score):
        if layer is not None:
            torch.nn.init.normal_(layer.weight, std=0.3)
            torch.nn.init.normal_(layer.bias, std=0.3)


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


def _numpy(outputs):
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [o.numpy() for o in outputs]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnx_outputs_equal_pytorch_outputs_on_another_batch_and_size(exported, name):
    recipe, model, path = exported(name)
    assert not any(m.training for m in model.modules())         # exporting left the model in eval mode
    graph = export.export_graph(recipe, model)
    height, width = graph.example.shape[2:]
    if graph.dynamic_size:                   # another size than the one traced (multiples of 32 for YOLOv2)
        height, width = height + 32, width + 64
    # (Seed 0: with seed 1 DeconvNet's max-pooling meets a near-tie whose switch flips with rounding -- PyTorch in
    # float64 differs from PyTorch in float32 there exactly as onnxruntime does; unpooling is discontinuous.)
    images = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _numpy(graph.network(images))
    got = export.OnnxSession(path).run(images)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def _other_part_inputs(part, model):
    """Inputs of another shape than the traced example: more RoIs on a larger, two-image map; more rows."""
    generator = torch.Generator().manual_seed(2)
    if part.name == "step":
        rows = 5
        tokens = torch.randint(0, len(model.config.words), (rows,), generator=generator)
        return (tokens, *(t[:1].expand(rows, *t.shape[1:]) + 0.1 * torch.randn(rows, *t.shape[1:],
                                                                                generator=generator)
                          for t in part.example[1:]))
    features = torch.randn(2, part.example[0].shape[1], 27, 33, generator=generator)
    corners = torch.rand(40, 2, 2, generator=generator) * torch.tensor([270.0, 220.0])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)      # x1 <= x2, y1 <= y2
    return features, torch.cat([torch.randint(0, 2, (40, 1), generator=generator).float(), boxes], dim=1)


@pytest.mark.parametrize("name", ["fast-rcnn", "faster-rcnn", "mask-rcnn", "deepimagesent", "showtell",
                                  "showattendtell"])
def test_onnx_parts_equal_pytorch_on_other_shapes(exported, name):
    recipe, model, path = exported(name)
    graph = export.export_graph(recipe, model)
    assert graph.parts
    for part in graph.parts:
        inputs = _other_part_inputs(part, model)
        with torch.no_grad():
            expected = _numpy(part.network(*inputs))
        got = export.OnnxSession(export.part_path(path, part.name)).run(*inputs)
        assert [g.shape for g in got] == [e.shape for e in expected], part.name
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0, err_msg=part.name)


@pytest.mark.parametrize("align", [False, True])
def test_onnx_roi_operators_equal_scenekit_roi(tmp_path, align):
    """ONNX's MaxRoiPool / RoiAlign (in onnxruntime) against scenekit.roi, on RoIs of every size, some outside."""
    from scenekit.roi import roi_align, roi_pool

    generator = torch.Generator().manual_seed(5)
    features = torch.randn(2, 4, 13, 17, generator=generator)
    corners = torch.rand(300, 2, 2, generator=generator) * torch.tensor([170.0, 130.0]) - 20   # up to 20 px out
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    boxes[:50, 2:] = boxes[:50, :2] + torch.rand(50, 2, generator=generator) * 3              # tiny boxes too
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=generator).float(), boxes], dim=1)
    module = Tupled(torch.nn.Identity(), lambda f, r: export.roi_features(f, r, 5, 1 / 8, align))
    path = tmp_path / "roi.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the tracer's notes on scenekit.roi's forward, which it replaces
        torch.onnx.export(module, (features, rois[:3]), str(path), dynamo=False, opset_version=export.OPSET,
                          input_names=["features", "rois"], dynamic_axes={"rois": {0: "rois"}})
    import onnxruntime

    got = onnxruntime.InferenceSession(str(path)).run(None, {"features": features.numpy(), "rois": rois.numpy()})[0]
    expected = (roi_align(features, rois, 5, 1 / 8, sampling_ratio=2, aligned=True) if align
                else roi_pool(features, rois, 5, 1 / 8))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)


def _own_outputs(model, images):
    """What the model's own code gives for the main graph's outputs."""
    if hasattr(model, "rpn"):
        features = model.features(images)
        fine = getattr(model, "fine_level", None) is not None
        return (features, *model.rpn(features)) + ((model.feature_maps(images)[1],) if fine else ())
    if hasattr(model, "start"):
        state, context = model.start(images)
        return tuple(state) + tuple(context)
    return _as_tuple(model(images))


def _own_part_outputs(model, name, inputs):
    if name == "step":
        logits, state, alpha = model.step(inputs[0], tuple(inputs[1:3]), tuple(inputs[3:]))
        return (logits, *state) + (() if alpha is None else (alpha,))
    return _as_tuple(getattr(model, {"head": "classify_regions", "mask_head": "mask_logits"}[name])(*inputs))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("name", ["localizer", "yolo1", "faster-rcnn", "mask-rcnn", "mask-rcnn-c4",
                                  "deepimagesent", "showattendtell"])
def test_traced_wrappers_equal_the_models_own_methods(name):
    """The export wrappers restate a forward pass with a symbolic batch, or with ONNX's RoI operators; they must
    equal the model's own methods exactly."""
    recipe, model = build(name)
    graph = export.export_graph(recipe, model)
    images = torch.rand(2, 3, *graph.example.shape[2:])
    with torch.no_grad():
        pairs = [(graph.network(images), _own_outputs(model, images))]
        for part in graph.parts:
            inputs = _other_part_inputs(part, model)
            pairs.append((part.network(*inputs), _own_part_outputs(model, part.name, inputs)))
    for ours, theirs in pairs:
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_predictions_through_onnxruntime_equal_the_checkpoint_predictions(exported, world_images, name):
    recipe, model, path = exported(name)
    with torch.no_grad():
        expected = recipe.predict(model, world_images, torch.device("cpu"))
    got = export.load_onnx(path, make_recipe).predict(world_images)
    assert len(got) == len(expected) == len(world_images)
    for g, e, image in zip(got, expected, world_images):
        assert g.keys() == e.keys()
        # The comparison must see something on every image, or two empty answers would pass as equal: each
        # family's output for these untrained-but-spread weights is non-empty (the captioners' boxes are empty by
        # design; their words are compared instead).
        if "caption" in e:
            assert isinstance(e["caption"], str) and e["caption"].split(), name
            assert g["caption"] == e["caption"]
        else:
            assert len(e["scores"]) > 0, f"{name}: the checkpoint's predict found nothing to compare"
        if "semantic" in e:                          # a class for every pixel of the image
            assert np.asarray(e["semantic"]).shape == image.shape[:2], name
        for key in ("boxes", "scores", "labels", "semantic", "probabilities", "masks"):
            if key in e:
                a, b = np.asarray(g[key], dtype=np.float64), np.asarray(e[key], dtype=np.float64)
                assert a.shape == b.shape, key
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=key)


def test_beam_search_through_onnxruntime_gives_the_same_words_and_attention(exported, world_images):
    from scenekit.data.transforms import prepare_image
    from scenekit.models.captioner import caption_images

    recipe, model, path = exported("showattendtell")
    onnx_model = export.load_onnx(path, make_recipe).module
    images = torch.stack([prepare_image(image, model.config.image_size) for image in world_images])
    for beam in (1, 3):
        expected = caption_images(model, images, beam_size=beam, max_length=8)
        got = caption_images(onnx_model, images, beam_size=beam, max_length=8)
        for (text, words, alphas), (text_e, words_e, alphas_e) in zip(got, expected):
            assert (text, words) == (text_e, words_e)
            if alphas_e is not None:
                np.testing.assert_allclose(alphas, alphas_e, atol=1e-5, rtol=0)


def test_metadata_carries_the_recipe(exported):
    recipe, model, path = exported("yolo2")
    metadata = export.read_metadata(path)
    assert metadata["model_name"] == "yolo2"
    assert metadata["categories"] == dict(CATEGORIES)
    assert metadata["outputs"] == ["output"] and metadata["dynamic_size"] and metadata["runnable"]
    np.testing.assert_allclose(metadata["buffers"]["anchors"], model.anchors.numpy())
    _, _, path = exported("mask-rcnn")
    metadata = export.read_metadata(path)
    assert metadata["model_config"]["rpn_nms"] == 0.7 and metadata["model_config"]["score_threshold"] == 0.05
    assert {name: entry["file"] for name, entry in metadata["parts"].items()} == {
        "head": "mask-rcnn.head.onnx", "mask_head": "mask-rcnn.mask_head.onnx"}
    _, model, path = exported("showtell")
    assert export.read_metadata(path)["model_config"]["words"] == model.config.words


def test_missing_or_foreign_part_files_are_data_errors_naming_the_file(exported, tmp_path):
    import shutil

    _, _, source = exported("faster-rcnn")
    main = tmp_path / "detector.onnx"
    shutil.copy(source, main)
    with pytest.raises(DataError, match=r"faster-rcnn.head.onnx: the 'head' graph of detector.onnx is missing"):
        export.load_onnx(main, make_recipe)
    _, _, other = exported("mask-rcnn")              # a head of the right name, from another export
    shutil.copy(export.part_path(other, "head"), tmp_path / "faster-rcnn.head.onnx")
    with pytest.raises(DataError, match=r"head.onnx: this is not the 'head' graph exported with detector.onnx"):
        export.load_onnx(main, make_recipe)
    with pytest.raises(DataError, match=r"head.onnx: this file is the 'head' graph of mask-rcnn.onnx: give that"):
        export.load_onnx(tmp_path / "faster-rcnn.head.onnx", make_recipe)


def test_metadata_without_what_prediction_needs_is_a_data_error(exported, tmp_path):
    import onnx

    _, _, source = exported("yolo1")
    proto = onnx.load(str(source))
    entry = next(p for p in proto.metadata_props if p.key == export.METADATA_KEY)
    metadata = json.loads(entry.value)
    del metadata["model_config"]
    entry.value = json.dumps(metadata)
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(DataError, match=r"broken.onnx.*model_config|model_config.*broken.onnx"):
        export.load_onnx(broken, make_recipe)
    entry.value = "{not json"
    onnx.save(proto, str(broken))
    with pytest.raises(DataError, match="broken.onnx"):
        export.read_metadata(broken)
    metadata["model_config"], metadata["runnable"] = {}, False      # a network-only file of an older scenekit
    entry.value = json.dumps(metadata)
    onnx.save(proto, str(broken))
    with pytest.raises(DataError, match="export the checkpoint again"):
        export.load_onnx(broken, make_recipe)


def test_files_not_from_scenekit_are_data_errors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(DataError, match="foreign.onnx: not an ONNX file exported by scenekit"):
        export.load_onnx(foreign, make_recipe)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(DataError, match="garbage.onnx"):
        export.read_metadata(garbage)
    with pytest.raises(DataError, match="missing.onnx: ONNX file not found"):
        export.read_metadata(tmp_path / "missing.onnx")


def _checkpoint(tmp_path, name):
    from scenekit.engine.checkpoint import save_checkpoint

    recipe, model = build(name)
    checkpoint = tmp_path / f"{name}.pt"
    save_checkpoint(checkpoint, {"model_name": name, "model": model.state_dict(), "options": recipe.options,
                                 "model_config": recipe.model_config, "categories": recipe.categories})
    return checkpoint


@pytest.mark.parametrize("name", ["localizer", "faster-rcnn"])
def test_cli_export_then_predict_with_onnx_writes_the_same_detections(tmp_path, world_images, capsys, name):
    from PIL import Image

    checkpoint = _checkpoint(tmp_path, name)
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


def test_cli_caption_with_onnx_gives_the_checkpoints_captions(tmp_path, world_images, capsys):
    from PIL import Image

    checkpoint = _checkpoint(tmp_path, "showattendtell")
    images = []
    for k, image in enumerate(world_images):
        images.append(str(tmp_path / f"scene{k}.png"))
        Image.fromarray(image).save(images[-1])
    onnx_path = tmp_path / "captioner.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"] == ["step"]
    runs = []
    for model_args in (["--onnx", str(onnx_path)], ["--checkpoint", str(checkpoint), "--device", "cpu"]):
        assert main(["caption", *images, *model_args, "--beam", "2", "--max-length", "6", "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0] == runs[1] and len(runs[0]) == 2
    assert main(["caption", images[0], "--json"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_cli_predict_without_a_model_is_a_one_line_error(tmp_path, world_images, capsys):
    from PIL import Image

    image = tmp_path / "x.png"                       # a readable image: the model is the only thing missing
    Image.fromarray(world_images[0]).save(image)
    assert main(["predict", str(image)]) == 2
    error = capsys.readouterr().err
    assert "--checkpoint" in error and len(error.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ the recipe's hooks
def test_export_names_no_family():
    """scenekit/export.py reaches every family through its recipe's hooks: its code imports no model file and
    names no family, no model class and none of their methods."""
    import ast
    from pathlib import Path

    from scenekit.models.registry import FAMILIES

    tree = ast.parse(Path(export.__file__).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(node.value.replace("'", " ").replace('"', " ").split())
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    family_modules = {row.module for row in FAMILIES.values()}
    assert not modules & family_modules
    named = words & (set(FAMILIES) | {"Localizer", "FullyConvolutionalLocalizer", "Yolo1", "Yolo2", "FCN",
                                      "DeconvNet", "FastRCNN", "FasterRCNN", "MaskRCNN", "Captioner", "rpn",
                                      "classify_regions", "mask_logits", "feature_maps", "start", "step"})
    assert not named


class _Means(torch.nn.Module):
    """A model no family has: per-image channel means, scaled."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images):
        return images.mean(dim=(2, 3)) * self.scale                     # [B, 3, H, W] -> [B, 3]


def _means_recipe(calls):
    from scenekit.models.export_parts import ExportGraph, OnnxModule
    from scenekit.recipes import Recipe

    def predict(model, images, device):
        tensors = [torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] for image in images]
        return [{"scores": model(t)[0]} for t in tensors]

    def from_onnx(skeleton, graphs):
        calls.append((type(skeleton).__name__, graphs.metadata["family"], sorted(graphs.parts)))
        return OnnxModule(graphs.main, skeleton)

    return Recipe(model_name="means", categories={1: "thing"}, options={}, model_config={},
                  build_model=lambda config: _Means(), phases=[], make_dataset=None, collate=None, evaluate=None,
                  predict=predict, best_metric="x",
                  export=lambda model: ExportGraph("means", model, torch.rand(1, 3, 8, 8), ["means"], True),
                  from_onnx=from_onnx)


def test_a_family_exports_and_predicts_through_its_recipe_hooks_alone(tmp_path):
    calls = []
    recipe = _means_recipe(calls)
    model = _Means()
    path = export.export_onnx(recipe, model, tmp_path / "means.onnx")
    assert export.read_metadata(path)["family"] == "means"
    predictor = export.load_onnx(path, lambda name, categories, **kw: recipe)
    assert calls == [("_Means", "means", [])]                 # the hook got the weightless model and the sessions
    images = [np.random.default_rng(k).integers(0, 255, (5 + k, 7, 3)).astype(np.uint8) for k in range(2)]
    with torch.no_grad():
        expected = recipe.predict(model, images, torch.device("cpu"))
    for got, want in zip(predictor.predict(images), expected):
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-6)


def test_a_recipe_without_an_export_hook_is_a_one_line_error(tmp_path):
    from scenekit.errors import ScenekitError

    recipe = make_recipe("sliding-window", dict(CATEGORIES))
    assert recipe.export is None
    model = recipe.build_model(recipe.model_config)
    with pytest.raises(ScenekitError, match=r"^exporting 'sliding-window' \(WindowClassifier\) to ONNX is not "
                                            r"supported: its recipe gives no export graph$"):
        export.export_onnx(recipe, model, tmp_path / "window.onnx")
    assert not (tmp_path / "window.onnx").exists()


@pytest.mark.parametrize("name, why", [("faster-rcnn", "RoiAlign's half_pixel mode"),
                                       ("deconvnet", "ScatterElements' reduction")])
def test_an_opset_below_what_the_graphs_need_is_an_error_saying_which_operators(tmp_path, name, why):
    from scenekit.errors import ScenekitError

    recipe, model = build(name)
    with pytest.raises(ScenekitError, match=rf"{name} needs ONNX opset >= 16 \({why}\), got 15"):
        export.export_onnx(recipe, model, tmp_path / "old.onnx", opset=15)


def test_loading_and_exporting_default_to_the_registrys_recipes(exported, world_images, tmp_path):
    """`make_recipe` is optional (scenekit.models.registry's); given positionally, as before, it is still used."""
    recipe, model, path = exported("yolo2")
    with torch.no_grad():
        expected = recipe.predict(model, world_images, torch.device("cpu"))
    for got in (export.load_onnx(path).predict(world_images), export.predict_onnx(path, world_images)):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g["boxes"], e["boxes"], atol=1e-4, rtol=0)
    asked = []

    def counting(name, categories, **kw):
        asked.append(name)
        return make_recipe(name, categories, **kw)
    checkpoint = _checkpoint(tmp_path, "yolo1")
    written = export.export_checkpoint(checkpoint, tmp_path / "yolo1.onnx", counting)
    assert export.load_onnx(written, counting).recipe.model_name == "yolo1" and asked == ["yolo1", "yolo1"]
    assert export.read_metadata(export.export_checkpoint(checkpoint, tmp_path / "again.onnx"))["family"] == "yolo1"


def test_overfeat_through_onnxruntime_keeps_the_recipes_max_detections(exported, world_images):
    recipe, model, path = exported("overfeat")
    fewer = export.load_onnx(path, lambda name, categories, **kw: make_recipe(name, categories,
                                                                                {"max_detections": 2}, **kw))
    with torch.no_grad():
        expected = recipe.predict(model, world_images, torch.device("cpu"))       # the default: 5
    for got, e in zip(fewer.predict(world_images), expected):
        assert len(got["scores"]) == min(2, len(e["scores"])) and len(e["scores"]) > 2
        np.testing.assert_allclose(got["boxes"], e["boxes"][:2], atol=1e-4, rtol=0)
