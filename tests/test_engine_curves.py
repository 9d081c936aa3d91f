"""Every training run draws OUT/curves.png: each loss term and validation metric per epoch, the best epoch marked."""

import pytest
import torch
from torch import nn

from scenekit.engine import train as engine
from scenekit.recipes import Phase, Recipe


class Line(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, targets=None):
        y = self.linear(x)[:, 0]
        return y if targets is None else {"mse": ((y - targets) ** 2).mean()}


def _recipe():
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    data = [(x[i], x[i, 0] - x[i, 1]) for i in range(32)]

    def evaluate(model, dataset, device):
        with torch.no_grad():
            return {"val_mse": float(((model(x) - (x[:, 0] - x[:, 1])) ** 2).mean())}

    recipe = Recipe(model_name="line", categories={}, options={}, model_config={}, build_model=Line,
                    phases=[Phase("all", epochs=4, lr=0.1)], make_dataset=lambda d, train: d,
                    collate=lambda b: (torch.stack([a for a, _ in b]), torch.stack([t for _, t in b])),
                    evaluate=evaluate, predict=lambda *a: [], best_metric="val_mse")
    return recipe, data


def test_a_training_run_draws_its_curves_with_the_best_epoch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from scenekit import viz

    drawn = []
    plot = viz.plot_training_curves
    monkeypatch.setattr(viz, "plot_training_curves", lambda *a, **k: drawn.append(k) or plot(*a, **k))
    recipe, data = _recipe()
    engine.train(recipe, data, data, engine.TrainConfig(out=str(tmp_path), batch_size=8, log_every=0,
                                                        tensorboard=False))
    assert max(Image.open(tmp_path / "curves.png").size) >= 512
    assert drawn and drawn[-1]["best_metric"] == "val_mse" and drawn[-1]["best_mode"] == "min"
    rows = viz.read_training_log(tmp_path / "metrics.csv")
    assert len(rows) == 4 and viz.best_epoch(rows, "val_mse", "min") is not None


def test_curves_can_be_switched_off(tmp_path):
    recipe, data = _recipe()
    engine.train(recipe, data, data, engine.TrainConfig(out=str(tmp_path), batch_size=8, log_every=0,
                                                        tensorboard=False, curves=False))
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "curves.png").exists()
