"""Test-wide settings.

Under CI (the CI environment variable set), hypothesis runs derandomized: the same examples every run, so a red
build always means a change in the code, never a newly drawn example. Locally it explores new examples each run.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def one_thread():
    """Run a test with one torch thread, restoring the setting afterwards.

    Step-by-step decoders and tiny models are many small ops: on a shared CPU, several threads per process
    oversubscribe the cores and run many times slower. Modules made of such tests use it for every test with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_steps(model, batch, steps, lr=2e-3):
    """`steps` AdamW steps of `model(*batch)`'s summed losses -> (loss after each step, the last losses dict)."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(*batch)
        loss = sum(losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss.detach()))
    return history, losses


@pytest.fixture
def train_steps():
    """The overfit tests' training loop (the detectors' tests train one batch for a few dozen steps)."""
    return _train_steps
