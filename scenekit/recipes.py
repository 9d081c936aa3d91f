"""What the training engine needs to know about a model: its phases, its data, how to score and use it.

A model family is one model file that defines a `nn.Module` and a recipe function `recipe(categories, **options)
-> Recipe`. The engine (`scenekit.engine.train`) runs any recipe; the CLI's one table of model names maps a name
to a recipe function. Adding a family is adding a model file and its recipe function, nothing else.

The model's contract with the engine is `model(images, targets)` -> a dict of named loss terms (scalar tensors)
and `model(images)` -> predictions. Training goes through `forward` so DistributedDataParallel sees it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class Phase:
    """One stage of training with its own optimiser and learning-rate schedule.

    `trains` names the model's sub-modules this phase updates (None: the whole model); the others are frozen and
    kept in eval mode, so their BatchNorm statistics do not drift. `loss_terms` names the loss terms whose sum
    is minimised (None: all of them).
    """

    name: str
    epochs: int
    lr: float
    optimizer: str = "sgd"            # "sgd" | "adam" | "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"          # "constant" | "step" | "cosine"
    step_every: int = 0               # "step": multiply the rate by `gamma` every `step_every` epochs
    gamma: float = 0.1
    warmup_steps: int = 0             # linear warm-up from 0.1 x lr over this many iterations
    clip_grad_norm: float | None = None
    trains: tuple[str, ...] | None = None
    loss_terms: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"Phase {self.name}: optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "step", "cosine"):
            raise ValueError(f"Phase {self.name}: schedule must be 'constant', 'step' or 'cosine', "
                             f"got {self.schedule!r}")
        if self.schedule == "step" and self.step_every <= 0:
            raise ValueError(f"Phase {self.name}: schedule 'step' needs step_every > 0")
        if self.epochs < 0 or self.lr <= 0:
            raise ValueError(f"Phase {self.name}: needs epochs >= 0 and lr > 0, got {self.epochs}, {self.lr}")


@dataclass
class Recipe:
    """Everything model-specific the engine, `evaluate` and `predict` need.

    - `build_model(model_config) -> nn.Module`; `model_config` is a plain dict stored in every checkpoint.
    - `make_dataset(dataset, train) -> torch Dataset` of (image tensor, target) items; `collate` batches them.
    - `evaluate(model, dataset, device) -> {metric: float}`; `best_metric` / `best_mode` pick the best checkpoint.
    - `predict(model, images, device) -> [{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N] category ids}]` for a
      list of [H, W, 3] uint8 images of any size.
    """

    model_name: str
    categories: dict[int, str]
    options: dict[str, Any]
    model_config: dict[str, Any]
    build_model: Callable
    phases: list[Phase]
    make_dataset: Callable
    collate: Callable
    evaluate: Callable
    predict: Callable
    best_metric: str
    best_mode: str = "min"            # "min" | "max"
    world: dict[str, Any] = field(default_factory=dict)   # make_world options for `--data world`
    batch_size: int = 32              # the global batch `scenekit train` uses unless --batch-size says otherwise

    def describe(self) -> dict:
        return {"model_name": self.model_name, "options": self.options, "model_config": self.model_config,
                "phases": [asdict(p) for p in self.phases], "best_metric": self.best_metric}
