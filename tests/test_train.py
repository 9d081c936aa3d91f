"""The training engine: schedules, freezing, logging, determinism, resume, clipping, on a tiny recipe."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch
from torch import nn

from scenekit.engine import train as engine
from scenekit.engine.checkpoint import load_checkpoint
from scenekit.recipes import Phase, Recipe


# ------------------------------------------------------------------------------------------------ a tiny recipe
class TinyRegressor(nn.Module):
    """y = head(norm(body(x))): two sub-modules, so phases can train one and freeze the other."""

    def __init__(self, config):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)
        self.scale = config["scale"]

    def forward(self, x, targets=None):
        y = self.head(self.body(x))[:, 0] * self.scale
        if targets is None:
            return y
        return {"mse": ((y - targets) ** 2).mean(), "size": y.abs().mean() * 0}


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return [(x[i], x[i] @ torch.tensor([1.0, -2.0, 0.5, 0.0])) for i in range(n)]


def _evaluate(model, data, device):
    model.eval()
    with torch.no_grad():
        x = torch.stack([a for a, _ in data])
        y = torch.stack([b for _, b in data])
        return {"val_mse": float(((model(x) - y) ** 2).mean())}


def tiny_recipe(phases=None, scale=1.0) -> Recipe:
    return Recipe(model_name="tiny", categories={}, options={}, model_config={"scale": scale},
                  build_model=TinyRegressor,
                  phases=phases or [Phase("all", epochs=3, lr=0.05, schedule="cosine", warmup_steps=2),
                                    Phase("head", epochs=2, lr=0.01, trains=("head",), loss_terms=("mse",))],
                  make_dataset=lambda data, train: data, collate=lambda batch: (
                      torch.stack([a for a, _ in batch]), torch.stack([b for _, b in batch])),
                  evaluate=_evaluate, predict=lambda model, images, device: [], best_metric="val_mse")


def _config(tmp_path, **kwargs):
    return engine.TrainConfig(out=str(tmp_path), batch_size=8, log_every=0, tensorboard=False, **kwargs)


# ------------------------------------------------------------------------------------------------ schedules
def test_cosine_schedule_starts_at_one_halves_midway_and_ends_at_zero():
    phase = Phase("p", epochs=2, lr=0.1, schedule="cosine")
    assert engine.learning_rate_factor(phase, 0, 10) == pytest.approx(1.0)
    assert engine.learning_rate_factor(phase, 10, 10) == pytest.approx(0.5)
    assert engine.learning_rate_factor(phase, 5, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert engine.learning_rate_factor(phase, 20, 10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_rises_linearly_from_a_tenth_and_step_schedule_decays_by_gamma():
    warm = Phase("p", epochs=5, lr=0.1, schedule="constant", warmup_steps=10)
    assert [engine.learning_rate_factor(warm, s, 4) for s in (0, 5, 10, 15)] == pytest.approx([0.1, 0.55, 1, 1])
    step = Phase("p", epochs=9, lr=0.1, schedule="step", step_every=3, gamma=0.5)
    assert [engine.learning_rate_factor(step, e * 4, 4) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.5, 0.25])


def test_phase_rejects_unknown_optimizer_and_schedule():
    with pytest.raises(ValueError, match="optimizer"):
        Phase("p", epochs=1, lr=0.1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="step_every"):
        Phase("p", epochs=1, lr=0.1, schedule="step")


# ------------------------------------------------------------------------------------------------ training
def test_frozen_modules_keep_weights_and_batchnorm_statistics(tmp_path):
    recipe = tiny_recipe([Phase("head", epochs=2, lr=0.05, trains=("head",))])
    torch.manual_seed(0)
    initial = TinyRegressor({"scale": 1.0})
    recipe.build_model = lambda config: initial
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    result = engine.train(recipe, _data(32, 0), None, _config(tmp_path))
    after = result.model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("head."), key     # body weights and BN running stats untouched


def test_training_lowers_the_loss_and_logs_every_epoch(tmp_path):
    result = engine.train(tiny_recipe(), _data(64, 0), _data(32, 1), _config(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["all"] * 3 + ["head"] * 2
    assert [int(r["step"]) for r in rows] == [8, 16, 24, 32, 40]
    assert float(rows[-1]["val_mse"]) < 0.5 * float(rows[0]["train_mse"])
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"] == pytest.approx(min(float(r["val_mse"]) for r in rows), rel=1e-5)
    assert result.best == best["best"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "train_config", "model_config"} <= set(best)


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tmp_path):
    runs = [engine.train(tiny_recipe(), _data(32, 0), None, _config(tmp_path / str(i), seed=s)).model
            for i, s in enumerate((7, 7, 8))]
    same = [torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values())]
    other = [torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[2].state_dict().values())]
    assert all(same) and not all(other)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_after_step", [6, 24, 36])    # mid-epoch, at a phase boundary, mid phase 2
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, crash_after_step):
    recipe = tiny_recipe()
    reference = engine.train(recipe, _data(64, 0), _data(16, 1), _config(tmp_path / "ref", checkpoint_every=3))
    real_save = engine.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        if path.name == "last.pt" and state["step"] >= crash_after_step:
            raise _Crash

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        engine.train(recipe, _data(64, 0), _data(16, 1), _config(tmp_path / "run", checkpoint_every=3))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    resumed = engine.train(recipe, _data(64, 0), _data(16, 1), _config(tmp_path / "run", checkpoint_every=3),
                           resume=True)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    ref_rows = (tmp_path / "ref" / "metrics.csv").read_text().splitlines()
    run_rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in run_rows] == [r.split(",")[:3] for r in ref_rows]


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    engine.train(tiny_recipe(), _data(16, 0), None, _config(tmp_path))
    with pytest.raises(Exception, match="another configuration"):
        engine.train(tiny_recipe(scale=2.0), _data(16, 0), None, _config(tmp_path), resume=True)


def test_gradient_clipping_bounds_the_first_sgd_step(tmp_path):
    lr, clip = 0.1, 0.1
    recipe = tiny_recipe([Phase("p", epochs=1, lr=lr, momentum=0.0, schedule="constant", clip_grad_norm=clip)])
    torch.manual_seed(0)
    model = TinyRegressor({"scale": 1.0})
    recipe.build_model = lambda config: model
    before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
    engine.train(recipe, _data(8, 0), None, _config(tmp_path))            # exactly one step (8 samples)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(lr * clip, rel=1e-4)


def test_non_finite_loss_stops_with_an_error_naming_the_step(tmp_path):
    recipe = tiny_recipe([Phase("p", epochs=1, lr=0.1)], scale=float("nan"))
    with pytest.raises(FloatingPointError, match="step 0"):
        engine.train(recipe, _data(8, 0), None, _config(tmp_path))


def test_plain_log_lines_off_a_terminal_and_a_bar_when_asked(tmp_path, capsys, monkeypatch):
    engine.train(tiny_recipe([Phase("p", epochs=1, lr=0.01)]), _data(32, 0), None,
                 engine.TrainConfig(out=str(tmp_path / "a"), batch_size=8, log_every=2, tensorboard=False,
                                    progress=False))
    out = capsys.readouterr().out
    # The first step (progress within seconds of the start), then every log_every steps: steps 1, 2 and 4.
    assert out.count("it/s eta") == 3 and "[p] epoch 1/1 step 1 batch 1/4" in out
    assert "[p] epoch 1/1 step 4 batch 4/4" in out and "step 3 batch" not in out
    monkeypatch.setattr(engine, "LOG_AT_LEAST_EVERY_S", 0.0)      # slow steps: a line at least this often
    engine.train(tiny_recipe([Phase("p", epochs=1, lr=0.01)]), _data(32, 0), None,
                 engine.TrainConfig(out=str(tmp_path / "c"), batch_size=8, log_every=2, tensorboard=False,
                                    progress=False))
    assert capsys.readouterr().out.count("it/s eta") == 4
    monkeypatch.undo()
    engine.train(tiny_recipe([Phase("p", epochs=1, lr=0.01)]), _data(32, 0), None,
                 engine.TrainConfig(out=str(tmp_path / "b"), batch_size=8, log_every=2, tensorboard=False,
                                    progress=True))
    captured = capsys.readouterr()
    assert "it/s eta" not in captured.out and "it/s" in captured.err


def test_batch_size_must_split_evenly_and_device_names_are_checked(tmp_path, monkeypatch):
    from scenekit.errors import DataError

    # Device names: auto, cpu or cuda; cuda only where torch sees a device, then the process's LOCAL_RANK one.
    for bad in ("tpu", "gpu"):
        with pytest.raises(ValueError, match=f"device.*{bad}"):
            engine.resolve_device(bad)
    assert engine.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DataError, match="CUDA"):
        engine.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)          # (building a device needs none)
    assert engine.resolve_device("auto") == engine.resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")                                   # torchrun's third process
    assert engine.resolve_device("cuda") == torch.device("cuda", 2)
    monkeypatch.undo()

    # The global batch over 3 processes, faked in this one (rank 0 of an initialised group of 3; the collectives
    # are identities): 8 does not split and is refused before anything trains; 9 gives this process 3 samples a
    # step, its own third of each epoch's permutation (DistributedSampler's shard), in order.
    monkeypatch.setattr(engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(engine.dist, "get_world_size", lambda *args, **kwargs: 3)
    monkeypatch.setattr(engine.dist, "get_rank", lambda *args, **kwargs: 0)
    monkeypatch.setattr(engine.dist, "barrier", lambda *args, **kwargs: None)
    monkeypatch.setattr(engine.dist, "all_gather_object", lambda out, obj, *args, **kwargs: out.__setitem__(
        slice(None), [obj] * len(out)))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, *args, **kwargs: model)
    data = _data(27, 0)
    recipe = tiny_recipe([Phase("p", epochs=2, lr=0.01)])
    with pytest.raises(ValueError, match="batch_size 8 must be divisible by the 3 processes"):
        engine.train(recipe, data, None, _config(tmp_path / "uneven"))            # _config: batch_size 8
    assert not (tmp_path / "uneven" / "last.pt").exists()

    batches = []
    collate = recipe.collate
    recipe.collate = lambda batch: batches.append([next(i for i, d in enumerate(data) if d is b) for b in batch]) \
        or collate(batch)
    engine.train(recipe, data, None, dataclasses.replace(_config(tmp_path / "even", seed=4), batch_size=9))
    assert [len(b) for b in batches] == [3] * 6                                  # 27 / 3 processes / 3 = 3 steps x 2
    for epoch in range(2):
        shard = engine.epoch_indices(27, 4, epoch, rank=0, world_size=3)
        assert len(set(shard)) == 9
        assert [i for b in batches[3 * epoch:3 * epoch + 3] for i in b] == shard
    assert load_checkpoint(tmp_path / "even" / "last.pt")["step"] == 6
