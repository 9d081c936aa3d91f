"""Two CPU processes under torchrun (gloo, DistributedDataParallel) train to the one-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scenekit.engine.checkpoint import load_checkpoint, seed_everything
from scenekit.engine.train import epoch_indices
from scenekit.models.localizer import Localizer, LocalizerConfig

# BatchNorm would normalise each process's half-batch on its own, and flips draw from per-process
# generators; without them, the gradient of 2 x 4 images equals that of the 8-image batch.
TINY = ["train", "localizer", "--data", "world", "--train-images", "32", "--val-images", "8",
        "--image-size", "32", "--option", "channels=[4,8]", "--option", "hidden=16", "--option", "norm=none",
        "--option", "flip=false", "--epochs", "2", "--option", "regress_epochs=1", "--batch-size", "8",
        "--log-every", "0"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _initial_weights(checkpoint: dict) -> dict:
    """The weights a run of `checkpoint`'s localizer started from: train() seeds (TINY keeps seed 0), then builds."""
    seed_everything(checkpoint["train_config"]["seed"])
    config = {**checkpoint["model_config"], "channels": tuple(checkpoint["model_config"]["channels"])}
    return Localizer(LocalizerConfig(**config)).state_dict()


def test_processes_batches_together_are_the_one_process_batch():
    whole = epoch_indices(40, seed=5, epoch=3, rank=0, world_size=1)
    parts = [epoch_indices(40, seed=5, epoch=3, rank=r, world_size=2) for r in range(2)]
    assert sorted(whole) == list(range(40))
    global_batch, local_batch = 8, 4
    for k in range(40 // global_batch):
        together = parts[0][k * local_batch:(k + 1) * local_batch] + parts[1][k * local_batch:(k + 1) * local_batch]
        assert sorted(together) == sorted(whole[k * global_batch:(k + 1) * global_batch])


def test_epoch_order_changes_with_epoch_and_seed_only():
    assert epoch_indices(30, 0, 1, 0, 1) == epoch_indices(30, 0, 1, 0, 1)
    assert epoch_indices(30, 0, 1, 0, 1) != epoch_indices(30, 0, 2, 0, 1)
    assert epoch_indices(30, 0, 1, 0, 1) != epoch_indices(30, 1, 1, 0, 1)


@pytest.mark.timeout(150)
def test_two_process_torchrun_matches_one_process_with_same_global_batch(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    single = subprocess.Popen([sys.executable, "-m", "scenekit.cli", *TINY, "--out", str(tmp_path / "one")],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    double = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "scenekit.cli",
                             *TINY, "--out", str(tmp_path / "two")], env=_env(), capture_output=True, text=True,
                            timeout=140)
    single_output = single.communicate(timeout=140)[0]
    assert single.returncode == 0, single_output
    assert double.returncode == 0, double.stdout + double.stderr
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["step"] == two["step"] == 3 * 32 // 8
    # The same weights up to float rounding, measured against how far training moved them. The all-reduced mean
    # of two 4-image gradients and the 8-image gradient are one sum in two orders; a convolution's weight gradient
    # sums 8 x 32 x 32 positions, in an order that changes with the kernels and the batch size, and differs by up
    # to ~n * 6e-8 of the summed magnitudes, a large part of a small gradient after cancellation. An absolute
    # tolerance on weights that moved ~1e-4 each is a coin toss across CPUs. The gap here is ~1e-5 of the movement
    # under every ATEN_CPU_CAPABILITY (and initial weights perturbed by a relative 1e-5 end within 3e-5 of the
    # unperturbed run); summing instead of averaging the gradients, or not all-reducing them, leaves 30-140%.
    start = _initial_weights(one)
    for name, tensor in one["model"].items():
        moved = float((tensor - start[name]).norm())
        gap = float((two["model"][name] - tensor).norm())
        # Training moves each tensor by 0.04-27% of its norm, a stranger's initial weights lie ~100% away.
        assert 0 < moved < 0.5 * float(tensor.norm()), f"{name}: is {moved:.3g} from what should be its start"
        assert gap <= 0.01 * moved, f"{name}: two-process gap {gap:.3g}, moved {moved:.3g}"
    # Only rank 0 wrote: one metrics.csv, two epochs of rows plus the header, each printed once.
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert double.stdout.count("trained localizer") == 1
