"""`scenekit serve` refuses at start a model it cannot answer with, instead of answering 500 to every request."""

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")

import scenekit.serve.app as serve_app  # noqa: E402
from scenekit.api import Model  # noqa: E402
from scenekit.cli import main  # noqa: E402
from scenekit.data.world import CATEGORIES  # noqa: E402
from scenekit.errors import ScenekitError  # noqa: E402
from scenekit.models.registry import make_recipe  # noqa: E402


def _checkpoint(tmp_path, name):
    from scenekit.engine.checkpoint import save_checkpoint

    recipe = make_recipe(name, dict(CATEGORIES))
    model = recipe.build_model(recipe.model_config)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, {"model_name": name, "model": model.state_dict(), "options": recipe.options,
                           "model_config": recipe.model_config, "categories": recipe.categories})
    return path


@pytest.fixture
def started(monkeypatch):
    """Records the apps `serve` would run, so no server starts."""
    calls = []
    monkeypatch.setattr(serve_app, "serve", lambda app, host, port, *rest: calls.append((app, host, port)))
    return calls


@pytest.mark.parametrize("name, why", [("charlm", "use `scenekit sample`"), ("vqa", "scenekit ask")])
def test_serve_refuses_a_family_that_cannot_answer_an_image_alone(tmp_path, capsys, started, name, why):
    checkpoint = _checkpoint(tmp_path, name)
    assert main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{checkpoint}: cannot serve a {name} model" in err and why in err
    assert "detectors (boxes, masks), segmenters (class maps) and captioners (a caption)" in err
    assert started == []                                       # refused before any server started


def test_serve_starts_a_detector_after_the_check(tmp_path, capsys, started):
    checkpoint = _checkpoint(tmp_path, "localizer")
    assert main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--port", "8123"]) == 0
    assert len(started) == 1 and started[0][1:] == ("127.0.0.1", 8123)
    assert "serving localizer" in capsys.readouterr().out


def stand_in(predict, name: str) -> Model:
    """A scenekit.Model whose recipe answers `predict(images) -> [prediction dict]`."""
    return Model(SimpleNamespace(model_name=name, categories={}, predict=lambda _, images, __: predict(images)), None)


def test_check_servable_turns_any_failure_into_one_line():
    def broken(images):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(ScenekitError, match=r"^m.pt: cannot serve a yolo2 model \(RuntimeError: CUDA out of memory\)"):
        serve_app.check_servable(stand_in(broken, "yolo2"), "m.pt")
    with pytest.raises(ScenekitError, match="cannot serve a x model"):         # an answer the page cannot draw
        serve_app.check_servable(stand_in(lambda images: [{"boxes": np.zeros((2, 3))}], "x"))
    serve_app.check_servable(stand_in(lambda images: [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                                                       "labels": np.zeros(0, np.int64)}], "fine"))
