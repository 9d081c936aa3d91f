"""Checkpoints: atomic writes, clear errors, and a training run killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from scenekit.engine import checkpoint as ckpt
from scenekit.errors import DataError

# A tiny localizer on a tiny world: 64 images, 8 steps per epoch, 2 + 1 epochs = 24 steps.
TINY = ["train", "localizer", "--data", "world", "--train-images", "64", "--val-images", "8",
        "--image-size", "32", "--option", "channels=[4,8]", "--option", "hidden=16", "--epochs", "2",
        "--option", "regress_epochs=1", "--batch-size", "8", "--checkpoint-every", "3", "--log-every", "1"]


def _env():
    # One thread: CPU results then do not depend on how the work is split, so runs compare bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _scenekit(*args) -> list[str]:
    return [sys.executable, "-m", "scenekit.cli", *args]


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    ckpt.save_checkpoint(path, {"model_name": "m", "model": {"w": torch.ones(3)}, "model_config": {},
                                "categories": {1: "a"}})
    ckpt.save_checkpoint(path, {"model_name": "m", "model": {"w": torch.full((3,), 2.0)}, "model_config": {},
                                "categories": {1: "a"}})
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.full((3,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_write_bytes(path, b"old complete file")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write_bytes(path, b"new file that never completes")
    assert path.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_or_foreign_checkpoint_is_a_data_error_naming_the_file(tmp_path):
    truncated = tmp_path / "truncated.pt"
    ckpt.save_checkpoint(truncated, {"model_name": "m", "model": {"w": torch.ones(100)}, "model_config": {},
                                     "categories": {}})
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(DataError, match="truncated.pt: cannot read checkpoint"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(DataError, match="foreign.pt: not a scenekit checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(DataError, match="missing.pt: checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip():
    ckpt.seed_everything(3)
    states = ckpt.rng_states()
    first = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ckpt.set_rng_states(states)
    second = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


@pytest.mark.timeout(120)
def test_run_killed_with_sigkill_resumes_to_the_same_final_weights(tmp_path):
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(_scenekit(*TINY, "--out", str(reference_out)), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_scenekit(*TINY, "--out", str(killed_out)), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if " step 11 " in line:                      # mid-epoch 2, two steps after the step-9 checkpoint
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)
    interrupted = ckpt.load_checkpoint(killed_out / "last.pt")
    assert 9 <= interrupted["step"] < 24                 # killed mid-run, after a checkpoint

    resumed = subprocess.run(_scenekit(*TINY, "--out", str(killed_out), "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {killed_out / 'last.pt'}" in resumed.stdout
    assert reference.wait(timeout=90) == 0, reference.stderr.read()

    expected, got = ckpt.load_checkpoint(reference_out / "last.pt"), ckpt.load_checkpoint(killed_out / "last.pt")
    assert got["step"] == expected["step"] == 24
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-7, msg=name)
    # The log of the interrupted-then-resumed run is the uninterrupted one, row for row and value for value
    # (the killed epoch's mean training loss included: it must cover the batches before the kill too).
    assert _metric_rows(killed_out) == _metric_rows(reference_out)


def _metric_rows(out) -> list[dict]:
    """metrics.csv less its wall-clock columns."""
    import csv

    with open(out / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                for row in csv.DictReader(file)]


# The child of the test below: `python -c KILLER EVENT ARGS...` runs `scenekit ARGS...` and SIGKILLs itself at the
# moment EVENT names, so the moment is a point in the run's progress, never a time (the same on any machine):
#   line:REGEX        right after a printed log line matching REGEX
#   torn:FILE@N       in the N-th write of checkpoint FILE: half its bytes are in the temporary file, FILE untouched
#   written:FILE@N    right after the N-th write of checkpoint FILE is complete (renamed into place)
# A run in which the event never comes finishes normally, which the test reports.
KILLER = r"""
import os, re, signal, sys

event, args = sys.argv[1], sys.argv[2:]
kind, _, detail = event.partition(":")


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "line":
    pattern = re.compile(detail)

    class Watched:
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            written = self.stream.write(text)
            if pattern.search(text):
                die()
            return written

        def __getattr__(self, name):
            return getattr(self.stream, name)

    sys.stdout = Watched(sys.stdout)
else:
    name, _, nth = detail.partition("@")
    real_replace, count = os.replace, [0]

    def replace(source, target, *rest, **options):
        if os.path.basename(os.fspath(target)) != name:
            return real_replace(source, target, *rest, **options)
        count[0] += 1
        if kind == "torn" and count[0] == int(nth):
            with open(source, "r+b") as file:
                file.truncate(os.path.getsize(source) // 2)
            die()
        real_replace(source, target, *rest, **options)
        if kind == "written" and count[0] == int(nth):
            die()

    os.replace = replace

from scenekit.cli import main

sys.exit(main(args))
"""


@pytest.mark.timeout(240)
def test_run_killed_before_during_and_between_checkpoint_writes_ends_like_an_uninterrupted_run(tmp_path):
    """Issue 'hardening': SIGKILL before the first checkpoint, in the middle of writing one, between writing best.pt
    and last.pt, and in the second phase, each time resumed with --resume; the final weights and metrics equal a
    clean run's. The run kills itself at each moment (see KILLER), so every kill lands exactly where it is meant to,
    however fast or slow the machine."""
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(_scenekit(*TINY, "--out", str(reference_out)), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last, best = killed_out / "last.pt", killed_out / "best.pt"
    # (event, the step then held by last.pt (None: no file yet), by best.pt (None: not checked)). 8 steps an epoch;
    # last.pt is written every 3 steps within an epoch and at its end, after best.pt; the classify phase is steps
    # 1-16, the regress phase 17-24.
    moments = [
        (r"line:\] epoch 1/2 step 2 ", None, None),   # before the first checkpoint (step 3)
        ("written:best.pt@1", 6, 8),                   # end of epoch 1: best.pt written, last.pt not yet
        ("torn:last.pt@2", 8, 8),                      # resumed at 6: step 8's write is whole, step 9's torn
        (r"line:\] epoch 1/1 step 20 ", 18, None),    # resumed at 8: mid regress phase, 2 steps after a checkpoint
    ]
    for event, last_step, best_step in moments:
        victim = subprocess.run([sys.executable, "-c", KILLER, event, *TINY, "--out", str(killed_out), "--resume"],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert victim.returncode == -signal.SIGKILL, f"{event}: the run ended without the event\n{victim.stdout}" \
                                                     f"{victim.stderr}"
        # Each file is a complete checkpoint of the last write that finished: never torn, never half-updated.
        assert (ckpt.load_checkpoint(last)["step"] if last.exists() else None) == last_step, event
        if best_step is not None:
            assert ckpt.load_checkpoint(best)["step"] == best_step, event

    final = subprocess.run(_scenekit(*TINY, "--out", str(killed_out), "--resume"), env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert f"resuming from {last}" in final.stdout
    assert reference.wait(timeout=120) == 0, reference.stderr.read()

    expected, got = ckpt.load_checkpoint(reference_out / "last.pt"), ckpt.load_checkpoint(last)
    assert got["step"] == expected["step"] == 24
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-7, msg=name)
    assert _metric_rows(killed_out) == _metric_rows(reference_out)


# ------------------------------------------------------------------------------------------------ metric names
def test_checkpoint_that_recorded_old_metric_names_loads_with_todays(tmp_path):
    """YOLO reported coco_AP / coco_AP50 before every detector reported AP / AP50 (issue 19): read back, a
    checkpoint's best metric and history carry today's names and the same values."""
    path = tmp_path / "old.pt"
    ckpt.save_checkpoint(path, {"model_name": "yolo2", "model": {}, "model_config": {}, "categories": {1: "a"},
                                "best_metric": "coco_AP", "best": 0.41,
                                "history": [{"epoch": 1, "mAP50": 0.6, "coco_AP": 0.41, "coco_AP50": 0.62}]})
    state = ckpt.load_checkpoint(path)
    assert state["best_metric"] == "AP" and state["best"] == 0.41
    assert state["history"] == [{"epoch": 1, "mAP50": 0.6, "AP": 0.41, "AP50": 0.62}]


def test_a_metrics_row_holding_old_and_new_names_keeps_the_filled_value():
    # A metrics.csv that a resumed run extended: both columns in the header, each row fills one of them.
    old_row = {"epoch": "1", "coco_AP": "0.3", "AP": "", "mAP50": "0.5"}
    new_row = {"epoch": "2", "coco_AP": "", "AP": "0.4", "mAP50": "0.6"}
    assert ckpt.current_metric_names(old_row) == {"epoch": "1", "AP": "0.3", "mAP50": "0.5"}
    assert ckpt.current_metric_names(new_row) == {"epoch": "2", "AP": "0.4", "mAP50": "0.6"}
    assert ckpt.current_metric_names({"val_loss": 1.0}) == {"val_loss": 1.0}


def test_yolo_run_logged_with_old_metric_names_resumes_under_todays(tmp_path):
    import csv

    from scenekit.data.world import make_world
    from scenekit.engine.train import TrainConfig, train
    from scenekit.models.registry import make_recipe

    options = {"image_size": 64, "channels": [4, 8, 8, 8, 8], "head_channels": 8, "anchors": "hand",
               "multi_scale": False, "flip": False}
    data, val = make_world(4, seed=1, image_size=64, min_objects=1), make_world(2, seed=2, image_size=64)
    config = TrainConfig(out=str(tmp_path), batch_size=2, device="cpu", tensorboard=False, curves=False)
    train(make_recipe("yolo2", data.categories, {**options, "epochs": 1}), data, val, config)
    log = tmp_path / "metrics.csv"
    old = log.read_text().splitlines()
    log.write_text("\n".join([old[0].replace("AP,AP50,", "coco_AP,coco_AP50,", 1), *old[1:]]) + "\n")
    assert "coco_AP" in log.read_text() and ",AP," not in log.read_text().splitlines()[0]
    result = train(make_recipe("yolo2", data.categories, {**options, "epochs": 2}), data, val, config, resume=True)
    rows = list(csv.DictReader(open(log)))
    assert [row["epoch"] for row in rows] == ["1", "2"] and "coco_AP" not in rows[0]
    assert all(row["AP"] != "" and row["AP50"] != "" for row in rows)
    assert result.best == max(float(row["mAP50"]) for row in rows)
