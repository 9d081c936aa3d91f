"""Two CPU processes under torchrun (gloo, DistributedDataParallel) train to the one-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scenekit.engine.checkpoint import load_checkpoint
from scenekit.engine.train import epoch_indices

# BatchNorm would normalise each process's half-batch on its own, and flips draw from per-process
# generators; without them, the gradient of 2 x 4 images equals that of the 8-image batch.
TINY = ["train", "localizer", "--data", "world", "--train-images", "32", "--val-images", "8",
        "--image-size", "32", "--option", "channels=[4,8]", "--option", "hidden=16", "--option", "norm=none",
        "--option", "flip=false", "--epochs", "2", "--option", "regress_epochs=1", "--batch-size", "8",
        "--log-every", "0"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-5, atol=1e-5, msg=name)
    # Only rank 0 wrote: one metrics.csv, two epochs of rows plus the header, each printed once.
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert double.stdout.count("trained localizer") == 1
