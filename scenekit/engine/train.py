"""One training loop for every model.

`train(recipe, train_data, val_data, config)` runs the recipe's phases in order. Per iteration: forward in
autocast (CUDA only), the phase's loss terms summed, backward through the AMP grad scaler, optional gradient-norm
clipping, an optimiser step and a learning-rate step (linear warm-up, then constant / step / cosine). After each
epoch the recipe's evaluation runs on the validation data, a row goes to `OUT/metrics.csv` (and TensorBoard when
installed), `OUT/last.pt` is written and `OUT/best.pt` when the recipe's metric improved.

Killed at any moment, a run restarted with `resume=True` continues from `OUT/last.pt` exactly: checkpoints are
written atomically, hold every RNG state, and the data order of an epoch is a pure function of (seed, epoch),
so the resumed run reproduces the uninterrupted one bit for bit on a CPU.

Extending a run: resumed with a phase longer than it was when the checkpoint was written (`scenekit train
--resume --epochs N`, finished or not), training continues in that phase as if it had been planned with its
new length from the start: its schedule is recomputed for the new length and picks up where the run stopped.
A cosine phase extended from E to N epochs is stretched over N epochs, so its rate at the start of epoch E + 1
is `0.5 (1 + cos(pi E / N))` x lr, above 0 in every extra epoch, falling to 0 at the end of epoch N (a finished
cosine run had reached 0; extending it raises the rate back to the stretched curve); a step decay keeps its
period and a constant rate stays. When the grown phase is an earlier one (the localizer's classification, say,
after its regression phase has run), training goes back to it with a fresh optimiser, and every later phase
runs again from its start on the weights the extension produced. A phase made shorter than what was trained
is finished: nothing is trained again.

Reading order: `train` sets up (`_set_up`, `_resume`), then for each phase `_start_phase` (its optimiser; on
resume `_restore_phase`) and its epochs: `_train_epoch` (`_train_step`, `_show_progress`) and `_end_epoch`
(`_validate`, metrics.csv, best.pt, last.pt, curves.png); `_finish` closes the run. What they share is a `_Run`
(set up once, plus the position), a `_Stage` (one phase) and a `_Tally` (one epoch's loss sums).

Multi-process: started by `torchrun --nproc_per_node N` (or with a process group already initialised), the model
is wrapped in DistributedDataParallel and each process takes every N-th sample of the epoch's permutation
(torch's DistributedSampler); `config.batch_size` is the global batch, split evenly between processes, so the
gradient equals the one-process gradient of the same global batch. Only rank 0 evaluates, logs and writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from scenekit.engine.checkpoint import (load_checkpoint, rng_states, save_checkpoint, seed_everything,
                                        set_rng_states)
from scenekit.errors import DataError
from scenekit.recipes import Phase, Recipe, frozen_modules


@dataclass
class TrainConfig:
    """How to train (what to train is the recipe). Plain values only: it is stored in every checkpoint."""

    out: str = "runs/train"
    batch_size: int = 32           # the global batch, over all processes
    device: str = "auto"           # "auto" | "cpu" | "cuda"
    seed: int = 0
    workers: int = 0               # DataLoader worker processes
    checkpoint_every: int = 0      # also write last.pt every this many steps (0: only at the end of epochs)
    log_every: int = 50            # plain log line every this many steps when not on a terminal
    amp: bool = True               # mixed precision (float16 autocast + grad scaling) when on CUDA
    progress: bool | None = None   # tqdm bars; None: when stderr is a terminal
    tensorboard: bool = True       # also write TensorBoard events if the package is installed
    curves: bool = True            # draw OUT/curves.png (losses and validation metrics per epoch) as it goes


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)     # one row per epoch, as in metrics.csv
    best: float | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None


# ------------------------------------------------------------------------------------------------ helpers
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DataError("--device cuda was asked for but torch sees no CUDA device", field="device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def join_processes(device: torch.device) -> tuple[bool, int, int]:
    """(distributed, rank, world size), initialising the process group first when started by torchrun."""
    distributed = dist.is_available() and (dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1)
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not distributed:
        return False, 0, 1
    return True, dist.get_rank(), dist.get_world_size()


def on_main_process(decide, device: str = "auto"):
    """`decide()` run by rank 0 alone (it may look at and change the files), its result handed to every process.

    Without torchrun this is just `decide()`. When `decide()` fails on rank 0, every other process raises a
    ScenekitError with the same message, so none is left waiting for the others."""
    from scenekit.errors import ScenekitError

    distributed, rank, _ = join_processes(resolve_device(device))
    if not distributed:
        return decide()
    if rank == 0:
        try:
            value = decide()
        except Exception as error:
            dist.broadcast_object_list([(False, str(error))], src=0)
            raise
        dist.broadcast_object_list([(True, value)], src=0)
        return value
    outcome = [None]
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise ScenekitError(value)
    return value


def learning_rate_factor(phase: Phase, step: int, steps_per_epoch: int) -> float:
    """Multiplier of `phase.lr` at iteration `step` (0-based, counted within the phase).

    Linear warm-up from 0.1 to 1 over `warmup_steps` (Goyal et al. 2017), times the schedule: constant, step
    decay by `gamma` every `step_every` epochs, or the cosine `0.5 (1 + cos(pi t / T))` (Loshchilov & Hutter
    2017, without restarts) over the phase's iterations.
    """
    factor = 1.0
    if phase.warmup_steps > 0 and step < phase.warmup_steps:
        factor = 0.1 + 0.9 * step / phase.warmup_steps
    if phase.schedule == "step":
        factor *= phase.gamma ** ((step // max(1, steps_per_epoch)) // phase.step_every)
    elif phase.schedule == "cosine":
        total = max(1, phase.epochs * steps_per_epoch)
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return factor


def place_schedule(scheduler, phase: Phase, step: int) -> None:
    """Put `scheduler` (a LambdaLR over `learning_rate_factor`) at iteration `step` of `phase` as planned now.

    After a resume this recomputes the rate from the phase's current length and lr, instead of keeping the one
    the checkpoint's optimiser ended with (0 at the end of a cosine phase that is now longer); for a run resumed
    unchanged it gives the very rate it had."""
    scheduler.base_lrs = [phase.lr for _ in scheduler.optimizer.param_groups]
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = phase.lr
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():     # "step() before optimizer.step()": here it only sets the rate
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def extended_phase(checkpoint: dict, phases: list[Phase]) -> int | None:
    """The earliest phase, up to the checkpoint's current one, that now has more epochs than it had when the
    checkpoint was written, or None. Checkpoints written before `phase_epochs` was stored tell nothing: None."""
    before = checkpoint.get("phase_epochs") or []
    for index in range(min(checkpoint["phase_index"] + 1, len(phases), len(before))):
        if phases[index].epochs > before[index]:
            return index
    return None


def make_optimizer(phase: Phase, parameters) -> torch.optim.Optimizer:
    if phase.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    if phase.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=phase.lr, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(parameters, lr=phase.lr, weight_decay=phase.weight_decay)


def prepare_phase(model: torch.nn.Module, phase: Phase) -> list[torch.nn.Parameter]:
    """Unfreeze the modules `phase.trains` names (all if None), freeze the rest; return the trainable parameters."""
    if phase.trains is None:
        modules = [model]
    else:
        missing = [name for name in phase.trains if not isinstance(getattr(model, name, None), torch.nn.Module)]
        if missing:
            raise ValueError(f"phase {phase.name!r} trains {missing}, which the model does not have")
        modules = [getattr(model, name) for name in phase.trains]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    for module in frozen_modules(model):                # stages the recipe fixed (backbones.freeze_stages)
        module.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: torch.nn.Module, phase: Phase) -> None:
    """Frozen modules stay in eval mode so BatchNorm keeps its statistics and dropout is off."""
    if phase.trains is None:
        model.train()
    else:
        model.eval()
        for name in phase.trains:
            getattr(model, name).train()
    for module in frozen_modules(model):                # a frozen BatchNorm keeps its loaded statistics
        module.eval()


def epoch_indices(num_samples: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This process's samples of `epoch`, in order: torch's DistributedSampler permutation (seed + epoch).

    With one process this is the whole permutation; with N, process r takes positions r, r + N, ..., so the
    k-th batches of all processes together are exactly the k-th global batch of the one-process run.
    """
    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=world_size > 1)
    sampler.set_epoch(epoch)
    return list(sampler)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class _MetricsLog:
    """metrics.csv (one row per epoch; the header grows when a new column appears) plus optional TensorBoard."""

    def __init__(self, out: Path, use_tensorboard: bool):
        self.path = out / "metrics.csv"
        self.writer = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out / "tensorboard"))
            except Exception:   # tensorboard is optional; missing or broken installs just skip the events
                self.writer = None

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        from scenekit.engine.checkpoint import current_metric_names      # a run logged under older metric names

        with open(self.path, newline="") as file:
            return [current_metric_names(row) for row in csv.DictReader(file)]

    def truncate_after(self, step: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint; the resumed run writes them again."""
        rows = [row for row in self.rows() if int(row["step"]) <= step]
        self._write(rows)

    def append(self, row: dict) -> None:
        rows = self.rows() + [{k: _format(v) for k, v in row.items()}]
        self._write(rows)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def _write(self, rows: list[dict]) -> None:
        header: list[str] = []
        for row in rows:
            header += [k for k in row if k not in header]
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)


def _format(value):
    return f"{value:.6g}" if isinstance(value, float) else value


# ------------------------------------------------------------------------------------------------ train
LOG_AT_LEAST_EVERY_S = 30.0   # without a terminal, a progress line at least this often (slow steps stay visible)
CURVES_EVERY_S = 5.0          # redraw OUT/curves.png after an epoch at most this often (and at the end of a run)


def train(recipe: Recipe, train_data, val_data=None, config: TrainConfig | None = None, *,
          resume: bool = False) -> TrainResult:
    """Train `recipe`'s model on `train_data` (a scenekit Dataset); see the module docstring.

    Set up (and resume), then each phase from where the run stands: its optimiser, then its epochs, each one a
    pass over the data followed by the end of an epoch (evaluate, log, checkpoint)."""
    run = _set_up(recipe, train_data, val_data, config or TrainConfig(), resume)
    for phase_index in range(run.phase_index, len(recipe.phases)):
        run.phase_index = phase_index
        stage = _start_phase(run)
        for epoch in range(run.epoch_in_phase, stage.phase.epochs):
            tally = _train_epoch(run, stage, epoch)
            _end_epoch(run, stage, epoch, tally)
        run.epoch_in_phase = 0
    return _finish(run)


@dataclass
class _Run:
    """One training run, as its pieces share it: what was set up once, and where training stands.

    The position (`phase_index`, `epoch_in_phase`, `batch_in_epoch`, `step`) is where the next batch starts:
    all 0 for a new run, last.pt's for a resumed one. `checkpoint` is that last.pt until the phase it stopped
    in has taken back its optimiser and RNG states; `resumed_totals` / `resumed_seen` are the loss sums of the
    epoch it stopped in, so that epoch's means cover all its batches, not just the rest."""

    recipe: Recipe
    config: TrainConfig
    val_data: object
    out: Path
    device: torch.device
    distributed: bool
    rank: int
    world_size: int
    model: torch.nn.Module
    train_set: object
    log: _MetricsLog | None                  # rank 0 only: metrics.csv (and TensorBoard)
    curves_drawn: float                      # when OUT/curves.png was last drawn (perf_counter seconds)
    show_bars: bool = False                  # tqdm bars instead of plain log lines
    history: list[dict] = field(default_factory=list)
    phase_index: int = 0
    epoch_in_phase: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best: float | None = None
    checkpoint: dict | None = None
    resumed_totals: dict[str, float] = field(default_factory=dict)
    resumed_seen: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def local_batch(self) -> int:
        return self.config.batch_size // self.world_size

    @property
    def use_amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


@dataclass
class _Stage:
    """One phase, as its epochs share it: what it trains, the (DDP-wrapped) network, optimiser, schedule, scaler."""

    index: int
    phase: Phase
    parameters: list[torch.nn.Parameter]
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    epochs_before: int                       # epochs of the earlier phases: the data order counts on from there


@dataclass
class _Tally:
    """One epoch's loss sums and the batches they cover (a resumed epoch starts from last.pt's)."""

    totals: dict[str, float]
    seen: int
    started: float                           # perf_counter seconds when this process took the epoch up
    seen_before: int = 0                     # batches the epoch had by then
    last_line: float = 0.0                   # when the last plain progress line was printed

    def add(self, losses: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        self.seen += 1
        for name, value in losses.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value.detach())
        self.totals["loss"] = self.totals.get("loss", 0.0) + float(loss.detach())


# --------------------------------------------------------------------------------------- setup and resume
def _set_up(recipe: Recipe, train_data, val_data, config: TrainConfig, resume: bool) -> _Run:
    """Device and processes, the model (built right after seeding), the training set, OUT/, and where to start:
    the beginning, or the position stored in OUT/last.pt when resuming."""
    out = Path(config.out)
    device = resolve_device(config.device)
    distributed, rank, world_size = join_processes(device)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world_size} processes")

    seed_everything(config.seed)
    model = recipe.build_model(recipe.model_config).to(device)
    train_set = recipe.make_dataset(train_data, True)
    if len(train_set) < world_size:
        raise DataError(f"{len(train_set)} training images for {world_size} processes", field="data")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    run = _Run(recipe=recipe, config=config, val_data=val_data, out=out, device=device, distributed=distributed,
               rank=rank, world_size=world_size, model=model, train_set=train_set,
               log=_MetricsLog(out, config.tensorboard) if rank == 0 else None, curves_drawn=-CURVES_EVERY_S)
    if resume and run.last_path.is_file():
        _resume(run, load_checkpoint(run.last_path))
    elif run.is_main:
        (out / "config.json").write_text(json.dumps({"recipe": recipe.describe(), "train": asdict(config)},
                                                    indent=2, default=str))
    run.show_bars = run.is_main and (config.progress if config.progress is not None else sys.stderr.isatty())
    run.history = run.log.rows() if run.is_main else []
    return run


def _resume(run: _Run, checkpoint: dict) -> None:
    """Take up `checkpoint` (OUT/last.pt): its weights and position now, its optimiser and RNG states when its
    phase starts (`_restore_phase`). A phase grown since moves the position back (module docstring)."""
    recipe = run.recipe
    if checkpoint["model_name"] != recipe.model_name or checkpoint["model_config"] != recipe.model_config:
        raise DataError(f"checkpoint is for model {checkpoint['model_name']!r} with another configuration; "
                        "use a new --out folder or the same options", file=str(run.last_path))
    run.model.load_state_dict(checkpoint["model"])
    run.checkpoint = checkpoint
    run.phase_index, run.epoch_in_phase = checkpoint["phase_index"], checkpoint["epoch_in_phase"]
    run.batch_in_epoch, run.step = checkpoint["batch_in_epoch"], checkpoint["step"]
    run.best = checkpoint_best(checkpoint)
    run.resumed_totals = dict(checkpoint.get("epoch_totals", {}))
    run.resumed_seen = int(checkpoint.get("epoch_seen", 0))
    if run.is_main:
        run.log.truncate_after(run.step)
        print(f"resuming from {run.last_path}: phase {run.phase_index}, epoch {run.epoch_in_phase}, "
              f"batch {run.batch_in_epoch}, step {run.step}", flush=True)
    grown = extended_phase(checkpoint, recipe.phases)
    if grown is not None and grown < run.phase_index:    # back to an earlier phase made longer
        run.phase_index, run.epoch_in_phase, run.batch_in_epoch = grown, checkpoint["phase_epochs"][grown], 0
        run.resumed_totals, run.resumed_seen = {}, 0
    if grown is not None and run.is_main:
        phase = recipe.phases[grown]
        print(f"extending phase {phase.name} from {checkpoint['phase_epochs'][grown]} to {phase.epochs} epochs: "
              f"its {phase.schedule} schedule is recomputed for {phase.epochs} epochs and goes on from epoch "
              f"{run.epoch_in_phase + 1}" + ("; the phases after it run again" if grown < len(recipe.phases) - 1
                                             else ""), flush=True)


def checkpoint_best(checkpoint: dict) -> float | None:
    """The best value of the recipe's `best_metric` that `checkpoint` recorded (None before any evaluation)."""
    return checkpoint["best"]


# --------------------------------------------------------------------------------------------- a phase
def _start_phase(run: _Run) -> _Stage:
    """Phase `run.phase_index`: freeze what it does not train, wrap the model for DDP, a fresh optimiser with
    its learning-rate schedule and grad scaler; resuming, the checkpoint's states on top (`_restore_phase`)."""
    phase = run.recipe.phases[run.phase_index]
    parameters = prepare_phase(run.model, phase)
    network = run.model
    if run.distributed:
        network = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    optimizer = make_optimizer(phase, parameters)
    num_local = len(epoch_indices(len(run.train_set), run.config.seed, 0, run.rank, run.world_size))
    steps_per_epoch = math.ceil(num_local / run.local_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s, p=phase, n=steps_per_epoch: learning_rate_factor(p, s, n))
    scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp)
    stage = _Stage(index=run.phase_index, phase=phase, parameters=parameters, network=network,
                   optimizer=optimizer, scheduler=scheduler, scaler=scaler, steps_per_epoch=steps_per_epoch,
                   epochs_before=sum(p.epochs for p in run.recipe.phases[:run.phase_index]))
    if run.checkpoint is not None:
        _restore_phase(run, stage)
    return stage


def _restore_phase(run: _Run, stage: _Stage) -> None:
    """The checkpoint's optimiser, schedule and scaler when it stopped in this phase; then the rate of the phase
    as planned now ("Extending a run" in the module docstring) and this process's RNG states. Done once."""
    checkpoint = run.checkpoint
    if checkpoint.get("optimizer_phase") == stage.index:
        stage.optimizer.load_state_dict(checkpoint["optimizer"])
        stage.scheduler.load_state_dict(checkpoint["scheduler"])
        stage.scaler.load_state_dict(checkpoint["scaler"])
    place_schedule(stage.scheduler, stage.phase, run.epoch_in_phase * stage.steps_per_epoch + run.batch_in_epoch)
    rng = checkpoint["rng"]
    set_rng_states(rng[run.rank] if isinstance(rng, list) else rng)
    run.checkpoint = None


def _snapshot(run: _Run, stage: _Stage, epoch_position: int, batch_position: int, totals=None, seen=0) -> dict:
    """A checkpoint of the run resuming at (`epoch_position`, `batch_position`) of the current phase. Every
    process calls it (the RNG states are gathered from all); rank 0 writes it."""
    recipe = run.recipe
    return {
        "model_name": recipe.model_name, "options": recipe.options, "categories": recipe.categories,
        "model_config": recipe.model_config, "model": run.model.state_dict(),
        "optimizer": stage.optimizer.state_dict(), "scheduler": stage.scheduler.state_dict(),
        "scaler": stage.scaler.state_dict(), "optimizer_phase": stage.index, "phase_index": stage.index,
        "epoch_in_phase": epoch_position, "batch_in_epoch": batch_position, "step": run.step, "best": run.best,
        "rng": _gather_rng_states(run.distributed, run.world_size), "train_config": asdict(run.config),
        "epoch_totals": dict(totals or {}), "epoch_seen": seen,
        "phase_epochs": [p.epochs for p in recipe.phases],
    }


# ---------------------------------------------------------------------------------------------- an epoch
def _train_epoch(run: _Run, stage: _Stage, epoch: int) -> _Tally:
    """One pass over this process's share of the epoch's data, from `run.batch_in_epoch` on; with
    `checkpoint_every`, last.pt is also written inside the epoch. Returns the epoch's loss sums."""
    set_train_mode(run.model, stage.phase)
    loader = _epoch_loader(run, stage, epoch)
    tally = _Tally(totals=run.resumed_totals, seen=run.resumed_seen, started=time.perf_counter())
    tally.seen_before, tally.last_line = tally.seen, time.perf_counter()
    run.resumed_totals, run.resumed_seen = {}, 0
    bar = None
    if run.show_bars:
        from tqdm.auto import tqdm
        bar = tqdm(total=stage.steps_per_epoch, initial=run.batch_in_epoch, unit="it", leave=False,
                   desc=f"{stage.phase.name} {epoch + 1}/{stage.phase.epochs}")
    every = run.config.checkpoint_every
    for batch_index, (images, targets) in enumerate(loader, start=run.batch_in_epoch):
        losses, loss = _train_step(run, stage, epoch, images, targets)
        tally.add(losses, loss)
        _show_progress(run, stage, epoch, batch_index, tally, loss, bar)
        if every and run.step % every == 0 and batch_index + 1 < stage.steps_per_epoch:
            state = _snapshot(run, stage, epoch, batch_index + 1, tally.totals, tally.seen)
            if run.is_main:
                save_checkpoint(run.last_path, state)
    if bar is not None:
        bar.close()
    run.batch_in_epoch = 0
    return tally


def _epoch_loader(run: _Run, stage: _Stage, epoch: int) -> DataLoader:
    """This process's batches of `epoch`, in the order fixed by (seed, epoch), the first `run.batch_in_epoch`
    skipped (they were trained before the checkpoint)."""
    epoch_number = stage.epochs_before + epoch
    indices = epoch_indices(len(run.train_set), run.config.seed, epoch_number, run.rank, run.world_size)
    indices = indices[run.batch_in_epoch * run.local_batch:]
    # A private generator: the loader must not draw from the global RNG, or a run resumed mid-epoch
    # would leave the global generator one draw behind the uninterrupted run.
    generator = torch.Generator().manual_seed(run.config.seed * 1_000_003 + epoch_number)
    return DataLoader(run.train_set, batch_size=run.local_batch, sampler=indices, collate_fn=run.recipe.collate,
                      num_workers=run.config.workers, generator=generator, pin_memory=run.device.type == "cuda")


def _train_step(run: _Run, stage: _Stage, epoch: int, images, targets) -> tuple[dict, torch.Tensor]:
    """One iteration: forward in autocast (CUDA only), the phase's loss terms summed, backward through the grad
    scaler, optional gradient-norm clipping, the optimiser step and the learning-rate step. Returns
    (the model's loss terms, the summed loss)."""
    phase, optimizer, scaler = stage.phase, stage.optimizer, stage.scaler
    images, targets = _to_device(images, run.device), _to_device(targets, run.device)
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.use_amp):
        losses = stage.network(images, targets)
    terms = phase.loss_terms or tuple(losses)
    loss = sum(losses[name].float() for name in terms)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {run.step} (phase {phase.name}, "
                                 f"epoch {epoch + 1}); lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if phase.clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(stage.parameters, phase.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    stage.scheduler.step()
    run.step += 1
    return losses, loss


def _show_progress(run: _Run, stage: _Stage, epoch: int, batch_index: int, tally: _Tally, loss: torch.Tensor,
                   bar) -> None:
    """The bar moves one step; without one, rank 0 prints a line at this process's first step of the epoch,
    every `log_every` steps and at least every LOG_AT_LEAST_EVERY_S seconds (slow steps stay visible)."""
    phase, config = stage.phase, run.config
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{stage.scheduler.get_last_lr()[0]:.3g}")
        return
    trained_here = tally.seen - tally.seen_before
    if not (run.is_main and config.log_every and (run.step % config.log_every == 0 or trained_here == 1
                                                   or time.perf_counter() - tally.last_line >= LOG_AT_LEAST_EVERY_S)):
        return
    tally.last_line = time.perf_counter()
    rate = trained_here / max(1e-9, time.perf_counter() - tally.started)
    eta = (stage.steps_per_epoch - batch_index - 1) / max(rate, 1e-9)
    print(f"[{phase.name}] epoch {epoch + 1}/{phase.epochs} step {run.step} "
          f"batch {batch_index + 1}/{stage.steps_per_epoch} loss {float(loss.detach()):.4f} "
          f"lr {stage.scheduler.get_last_lr()[0]:.3g} {rate:.1f} it/s eta {eta:.0f}s", flush=True)


# ----------------------------------------------------------------------------------- the end of an epoch
def _end_epoch(run: _Run, stage: _Stage, epoch: int, tally: _Tally) -> None:
    """Evaluate (rank 0), then a row to metrics.csv and the log, best.pt when the recipe's metric improved,
    last.pt, and OUT/curves.png at most every CURVES_EVERY_S seconds."""
    phase = stage.phase
    row = {"phase": phase.name, "epoch": stage.epochs_before + epoch + 1, "step": run.step,
           "lr": stage.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - tally.started}
    row.update({f"train_{name}": total / max(1, tally.seen) for name, total in tally.totals.items()})
    improved = run.is_main and run.val_data is not None and _validate(run, row)
    if run.distributed:
        dist.barrier()
    state = _snapshot(run, stage, epoch + 1, 0)
    if not run.is_main:
        return
    run.log.append(row)
    run.history.append(row)
    shown = " ".join(f"{k} {_format(v)}" for k, v in row.items() if k not in ("phase", "epoch"))
    print(f"[{phase.name}] epoch {epoch + 1}/{phase.epochs} done: {shown}", flush=True)
    if improved:
        save_checkpoint(run.best_path, state)
    save_checkpoint(run.last_path, state)
    if run.config.curves and time.perf_counter() - run.curves_drawn >= CURVES_EVERY_S:
        run.curves_drawn = _draw_curves(run.log.path, run.out, run.recipe)


def _validate(run: _Run, row: dict) -> bool:
    """The recipe's evaluation on the validation data, its numbers added to `row`; True when its best metric
    improved on `run.best` (which then holds the new value)."""
    recipe = run.recipe
    metrics = recipe.evaluate(run.model, run.val_data, run.device)
    row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    value = metrics.get(recipe.best_metric)
    if value is not None and (run.best is None or (value < run.best if recipe.best_mode == "min"
                                                   else value > run.best)):
        run.best = float(value)
        return True
    return False


def _finish(run: _Run) -> TrainResult:
    """The whole run's curves, best.pt when nothing was evaluated (the last weights), and the result."""
    if run.is_main and run.config.curves and run.log.path.is_file():
        _draw_curves(run.log.path, run.out, run.recipe)   # the whole run, whatever the last epoch's timing
    if run.is_main and not run.best_path.is_file() and run.last_path.is_file():
        # No validation data: the last weights are the best we know.
        save_checkpoint(run.best_path, load_checkpoint(run.last_path))
    if run.distributed:
        dist.barrier()
    return TrainResult(model=run.model, history=run.history, best=run.best,
                       last_checkpoint=run.last_path if run.is_main else None,
                       best_checkpoint=run.best_path if run.is_main else None)


def _draw_curves(csv_path: Path, out: Path, recipe: Recipe) -> float:
    """OUT/curves.png from metrics.csv: every loss term and validation metric per epoch, the best epoch marked
    (`viz.plot_training_curves`). Without matplotlib the run goes on, with one note. Returns when it drew."""
    from scenekit.viz import plot_training_curves

    try:
        plot_training_curves(csv_path, out / "curves.png", title=f"{recipe.model_name}: {out}",
                             best_metric=recipe.best_metric, best_mode=recipe.best_mode)
    except ImportError as error:
        if not getattr(_draw_curves, "noted", False):
            print(f"note: no curves.png ({error})", file=sys.stderr)
            _draw_curves.noted = True
    return time.perf_counter()


def _gather_rng_states(distributed: bool, world_size: int):
    """Every process's generator states (a list by rank under DDP, so each resumes its own stream)."""
    states = rng_states()
    if not distributed:
        return states
    gathered = [None] * world_size
    dist.all_gather_object(gathered, states)
    return gathered
