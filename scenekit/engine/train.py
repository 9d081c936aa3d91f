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
from scenekit.recipes import Phase, Recipe


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
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: torch.nn.Module, phase: Phase) -> None:
    """Frozen modules stay in eval mode so BatchNorm keeps its statistics and dropout is off."""
    if phase.trains is None:
        model.train()
        return
    model.eval()
    for name in phase.trains:
        getattr(model, name).train()


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
        with open(self.path, newline="") as file:
            return list(csv.DictReader(file))

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
def train(recipe: Recipe, train_data, val_data=None, config: TrainConfig | None = None, *,
          resume: bool = False) -> TrainResult:
    """Train `recipe`'s model on `train_data` (a scenekit Dataset); see the module docstring."""
    config = config or TrainConfig()
    out = Path(config.out)
    device = resolve_device(config.device)
    distributed, rank, world_size = join_processes(device)
    is_main = rank == 0
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world_size} processes")
    local_batch = config.batch_size // world_size
    use_amp = config.amp and device.type == "cuda"

    seed_everything(config.seed)
    model = recipe.build_model(recipe.model_config).to(device)
    train_set = recipe.make_dataset(train_data, True)
    if len(train_set) < world_size:
        raise DataError(f"{len(train_set)} training images for {world_size} processes", field="data")

    # Where to start: the beginning, or the position stored in last.pt.
    last_path, best_path = out / "last.pt", out / "best.pt"
    phase_index, epoch_in_phase, batch_in_epoch, step = 0, 0, 0, 0
    resumed_totals, resumed_seen = {}, 0
    best, checkpoint = None, None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(out, config.tensorboard) if is_main else None
    curves_drawn = [-CURVES_EVERY_S]                 # when OUT/curves.png was last drawn (perf_counter seconds)
    if resume and last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        if checkpoint["model_name"] != recipe.model_name or checkpoint["model_config"] != recipe.model_config:
            raise DataError(f"checkpoint is for model {checkpoint['model_name']!r} with another configuration; "
                            "use a new --out folder or the same options", file=str(last_path))
        model.load_state_dict(checkpoint["model"])
        phase_index, epoch_in_phase = checkpoint["phase_index"], checkpoint["epoch_in_phase"]
        batch_in_epoch, step, best = checkpoint["batch_in_epoch"], checkpoint["step"], checkpoint["best"]
        # The loss sums of the epoch so far, so the resumed epoch's mean covers all its batches, not just the rest.
        resumed_totals = dict(checkpoint.get("epoch_totals", {}))
        resumed_seen = int(checkpoint.get("epoch_seen", 0))
        if is_main:
            log.truncate_after(step)
            print(f"resuming from {last_path}: phase {phase_index}, epoch {epoch_in_phase}, "
                  f"batch {batch_in_epoch}, step {step}", flush=True)
        grown = extended_phase(checkpoint, recipe.phases)
        if grown is not None and grown < phase_index:    # back to an earlier phase made longer (module docstring)
            phase_index, epoch_in_phase, batch_in_epoch = grown, checkpoint["phase_epochs"][grown], 0
            resumed_totals, resumed_seen = {}, 0
        if grown is not None and is_main:
            phase = recipe.phases[grown]
            print(f"extending phase {phase.name} from {checkpoint['phase_epochs'][grown]} to {phase.epochs} epochs: "
                  f"its {phase.schedule} schedule is recomputed for {phase.epochs} epochs and goes on from epoch "
                  f"{epoch_in_phase + 1}" + ("; the phases after it run again" if grown < len(recipe.phases) - 1
                                             else ""), flush=True)
    elif is_main:
        (out / "config.json").write_text(json.dumps({"recipe": recipe.describe(), "train": asdict(config)},
                                                    indent=2, default=str))

    show_bars = is_main and (config.progress if config.progress is not None else sys.stderr.isatty())
    history = log.rows() if is_main else []
    for phase_index in range(phase_index, len(recipe.phases)):
        phase = recipe.phases[phase_index]
        parameters = prepare_phase(model, phase)
        network = model
        if distributed:
            network = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_optimizer(phase, parameters)
        num_local = len(epoch_indices(len(train_set), config.seed, 0, rank, world_size))
        steps_per_epoch = math.ceil(num_local / local_batch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, p=phase, n=steps_per_epoch: learning_rate_factor(p, s, n))
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        if checkpoint is not None and checkpoint.get("optimizer_phase") == phase_index:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint is not None:
            # The rate of the phase as planned now (see "Extending a run" in the module docstring).
            place_schedule(scheduler, phase, epoch_in_phase * steps_per_epoch + batch_in_epoch)
            set_rng_states(checkpoint["rng"][rank] if isinstance(checkpoint["rng"], list) else checkpoint["rng"])
            checkpoint = None
        epochs_before = sum(p.epochs for p in recipe.phases[:phase_index])

        def snapshot(epoch_position, batch_position, totals=None, seen=0):
            return {
                "model_name": recipe.model_name, "options": recipe.options, "categories": recipe.categories,
                "model_config": recipe.model_config, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "optimizer_phase": phase_index, "phase_index": phase_index,
                "epoch_in_phase": epoch_position, "batch_in_epoch": batch_position, "step": step, "best": best,
                "rng": _gather_rng_states(distributed, world_size), "train_config": asdict(config),
                "epoch_totals": dict(totals or {}), "epoch_seen": seen,
                "phase_epochs": [p.epochs for p in recipe.phases],
            }

        for epoch in range(epoch_in_phase, phase.epochs):
            set_train_mode(model, phase)
            indices = epoch_indices(len(train_set), config.seed, epochs_before + epoch, rank, world_size)
            indices = indices[batch_in_epoch * local_batch:]
            # A private generator: the loader must not draw from the global RNG, or a run resumed mid-epoch
            # would leave the global generator one draw behind the uninterrupted run.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epochs_before + epoch)
            loader = DataLoader(train_set, batch_size=local_batch, sampler=indices, collate_fn=recipe.collate,
                                num_workers=config.workers, generator=generator,
                                pin_memory=device.type == "cuda")
            totals: dict[str, float] = resumed_totals
            seen, started = resumed_seen, time.perf_counter()
            seen_before_this_run = seen
            last_line = [time.perf_counter()]
            resumed_totals, resumed_seen = {}, 0
            bar = None
            if show_bars:
                from tqdm.auto import tqdm
                bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, unit="it", leave=False,
                           desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
            for batch_index, (images, targets) in enumerate(loader, start=batch_in_epoch):
                images, targets = _to_device(images, device), _to_device(targets, device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    losses = network(images, targets)
                terms = phase.loss_terms or tuple(losses)
                loss = sum(losses[name].float() for name in terms)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step} (phase {phase.name}, "
                                             f"epoch {epoch + 1}); lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if phase.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(parameters, phase.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                seen += 1
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + float(value.detach())
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.3g}")
                elif is_main and config.log_every and (step % config.log_every == 0 or seen - seen_before_this_run == 1
                                                       or time.perf_counter() - last_line[0] >= LOG_AT_LEAST_EVERY_S):
                    last_line[0] = time.perf_counter()      # the first step, every log_every steps, and every 30 s
                    rate = (seen - seen_before_this_run) / max(1e-9, time.perf_counter() - started)
                    eta = (steps_per_epoch - batch_index - 1) / max(rate, 1e-9)
                    print(f"[{phase.name}] epoch {epoch + 1}/{phase.epochs} step {step} "
                          f"batch {batch_index + 1}/{steps_per_epoch} loss {float(loss.detach()):.4f} "
                          f"lr {scheduler.get_last_lr()[0]:.3g} {rate:.1f} it/s eta {eta:.0f}s", flush=True)
                if config.checkpoint_every and step % config.checkpoint_every == 0 \
                        and batch_index + 1 < steps_per_epoch:
                    state = snapshot(epoch, batch_index + 1, totals, seen)
                    if is_main:
                        save_checkpoint(last_path, state)
            if bar is not None:
                bar.close()
            batch_in_epoch = 0

            # End of epoch: evaluate, log, keep the best, checkpoint.
            row = {"phase": phase.name, "epoch": epochs_before + epoch + 1, "step": step,
                   "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started}
            row.update({f"train_{name}": total / max(1, seen) for name, total in totals.items()})
            improved = False
            if is_main and val_data is not None:
                metrics = recipe.evaluate(model, val_data, device)
                row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
                value = metrics.get(recipe.best_metric)
                if value is not None and (best is None or (value < best if recipe.best_mode == "min"
                                                           else value > best)):
                    best, improved = float(value), True
            if distributed:
                dist.barrier()
            state = snapshot(epoch + 1, 0)
            if is_main:
                log.append(row)
                history.append(row)
                shown = " ".join(f"{k} {_format(v)}" for k, v in row.items() if k not in ("phase", "epoch"))
                print(f"[{phase.name}] epoch {epoch + 1}/{phase.epochs} done: {shown}", flush=True)
                if improved:
                    save_checkpoint(best_path, state)
                save_checkpoint(last_path, state)
                if config.curves and time.perf_counter() - curves_drawn[0] >= CURVES_EVERY_S:
                    curves_drawn[0] = _draw_curves(log.path, out, recipe)
        epoch_in_phase = 0

    if is_main and config.curves and log.path.is_file():
        _draw_curves(log.path, out, recipe)              # the whole run, whatever the last epoch's timing
    if is_main and not best_path.is_file() and last_path.is_file():
        # No validation data: the last weights are the best we know.
        save_checkpoint(best_path, load_checkpoint(last_path))
    if distributed:
        dist.barrier()
    return TrainResult(model=model, history=history, best=best,
                       last_checkpoint=last_path if is_main else None,
                       best_checkpoint=best_path if is_main else None)


LOG_AT_LEAST_EVERY_S = 30.0   # without a terminal, a progress line at least this often (slow steps stay visible)
CURVES_EVERY_S = 5.0          # redraw OUT/curves.png after an epoch at most this often (and at the end of a run)


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
