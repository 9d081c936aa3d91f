"""Checkpoints that survive being killed at any moment.

A checkpoint is one `torch.save`d dict: the model, optimiser, scheduler and AMP-scaler states, the position in
training (phase, epoch, batch, global step), every random generator's state, and the configuration needed to
rebuild the model (model name, recipe options, categories, model config).

Writing is atomic: the bytes go to a temporary file in the same folder, are flushed and fsync'ed, and then
`os.replace` swaps the file in (an atomic rename on POSIX and Windows) and the folder is fsync'ed. A reader -- or a
resumed run after SIGKILL -- therefore sees either the previous complete checkpoint or the new complete one,
never a torn file.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from scenekit.errors import DataError

FORMAT = "scenekit-checkpoint"
VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either the old or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened for fsync on Windows."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialise `state` (plus the format tag) in memory, then write it atomically to `path`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `save_checkpoint`; DataError for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", file=str(path))
    try:
        # The file holds our own numpy/python RNG states, so it is not a weights-only file; it is trusted
        # the way any pickle you made yourself is. Never load checkpoints from people you do not trust.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise DataError(f"cannot read checkpoint ({type(error).__name__}: {error})", file=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError("not a scenekit checkpoint (no 'format' tag)", file=str(path))
    for key in ("model_name", "model", "model_config", "categories"):
        if key not in state:
            raise DataError("checkpoint is missing an entry", file=str(path), field=key)
    if "best_metric" in state:
        state["best_metric"] = RENAMED_METRICS.get(state["best_metric"], state["best_metric"])
    if "history" in state:
        state["history"] = [current_metric_names(row) for row in state["history"]]
    return state


# ------------------------------------------------------------------------------------------------ metric names
# Names a family's evaluation reported before every detector reported one set (`scenekit.models.detection`):
# YOLO's COCO stats. Read back (a checkpoint, a run's metrics.csv), they are today's names.
RENAMED_METRICS = {"coco_AP": "AP", "coco_AP50": "AP50"}


def current_metric_names(row: dict) -> dict:
    """A row of metrics (a checkpoint's history, a metrics.csv row) with old names read as today's, in place of
    the old key. Where a row has both (a metrics.csv that a resumed run extended: its header holds both, each
    row fills one), the filled value wins."""
    renamed = {}
    for key, value in row.items():
        name = RENAMED_METRICS.get(key, key)
        if name not in renamed or renamed[name] in (None, ""):
            renamed[name] = value
    return renamed


# ------------------------------------------------------------------------------------------------ RNG states
def rng_states() -> dict:
    """The state of every generator training draws from: Python, NumPy, torch CPU and (if present) CUDA."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a CPU run is repeatable bit for bit."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
