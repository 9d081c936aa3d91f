"""What the training engine needs to know about a model: its phases, its data, how to score and use it.

A model family is one model file that defines a `nn.Module`, its Options dataclass and a recipe function
`recipe(categories, **options) -> Recipe`. The engine (`scenekit.engine.train`) runs any recipe; the one table of
model names (`scenekit.models.registry.FAMILIES`) maps a name to that file. Adding a family is adding a model file
and its row in that table, nothing else.

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
    - `export(model)` / `from_onnx(skeleton, graphs)`: the family's ONNX graphs and its onnxruntime stand-in
      (`scenekit.models.export_parts`), so `scenekit.export` runs any family that gives them.
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
    # ONNX (scenekit.export, types in scenekit.models.export_parts): `export(model) -> ExportGraph`, the graphs
    # the family exports (None: it does not export); `from_onnx(skeleton, graphs) -> module` that `predict` runs
    # with onnxruntime answering its tensor stages (None: the whole `model(images)` is the main graph).
    export: Callable | None = None
    from_onnx: Callable | None = None

    def describe(self) -> dict:
        return {"model_name": self.model_name, "options": self.options, "model_config": self.model_config,
                "phases": [asdict(p) for p in self.phases], "best_metric": self.best_metric}


def frozen_modules(model) -> list:
    """The modules of `model` marked `frozen = True` (`scenekit.models.backbones.freeze_stages`: a pretrained
    backbone's first stages). The engine keeps them fixed in every phase, whatever the phase trains, and in eval
    mode, so a frozen BatchNorm keeps its loaded statistics."""
    return [m for m in model.modules() if getattr(m, "frozen", False)]


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class OptionSpec:
    """One option of a model family: its default, the kind of value it takes and one line of help.

    Read off the family's Options dataclass (`options_specs`).

    `kind` comes from the parameter's annotation, or else from its default's type: "bool", "int", "float", "str"
    or "list" (a tuple default takes a list); None takes anything (no annotation, and a default that tells
    nothing: None, or a string standing for a mode beside other values, like YOLO's `anchors="kmeans"` or a
    list of priors). `nullable`: null (None) is accepted too.
    """

    name: str
    default: Any
    kind: str | None
    nullable: bool = False
    help: str = ""                    # one line, from the Options dataclass field's metadata

    def describe(self) -> str:
        words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
                 "list": "a JSON list", None: "any value"}[self.kind]
        return f"{words} or null" if self.nullable and self.kind is not None else words

    def accepts(self, value) -> bool:
        import numbers

        if self.kind is None or (value is None and self.nullable):
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind in ("int", "float"):
            number = numbers.Integral if self.kind == "int" else numbers.Real
            return isinstance(value, number) and not isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        return isinstance(value, (list, tuple))


_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list"}


def _kind_of(annotation) -> tuple[str | None, bool]:
    """(kind, nullable) of an evaluated annotation: `int`, `float | None`, `tuple[int, ...]`, ..."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        kind = _kind_of(others[0])[0] if len(others) == 1 else None
        return kind, len(others) < len(typing.get_args(annotation))
    return _KINDS.get(origin or annotation), False


def check_options(options: dict, specs: dict[str, OptionSpec], model: str, *, file: str | None = None,
                  drop_unknown: bool = False) -> dict:
    """`options` after checking them against `specs`: DataError naming the option for an unknown key (with close
    matches) or a value of the wrong kind. `drop_unknown` drops unknown keys instead (returning the rest), for
    options stored by older versions, which may have had options this one no longer has."""
    import difflib

    from scenekit.errors import DataError

    checked = {}
    for key, value in options.items():
        spec = specs.get(key)
        if spec is None:
            if drop_unknown:
                continue
            close = difflib.get_close_matches(key, list(specs), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DataError(f"{model} has no such option{hint} (its options and their defaults: "
                            f"`scenekit train {model} --list-options`)", file=file, field=f"option {key}")
        if not spec.accepts(value):
            raise DataError(f"expected {spec.describe()} (default {option_text(spec.default)}), got "
                            f"{option_text(value)}", file=file, field=f"option {key}")
        checked[key] = value
    return checked


def option_text(value) -> str:
    """A value as the user would type it: JSON where it is JSON (null, true, [1, 2]), else its repr."""
    import json

    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


# ------------------------------------------------------------------------------- options declared once
def option(default: Any = None, help: str = "") -> Any:
    """A field of a family's Options dataclass: its default and one line of help (DESIGN.md, "Library surface").

        @dataclass
        class YoloOptions:
            image_size: int | None = option(None, "network input side, px (None: 128 for v1, 160 for v2)")

    The field's annotation says the kind of value (`int`, `float | None`, `tuple[int, ...]`, `Any`); a list
    default is stored as a tuple so that the dataclass stays immutable in spirit and its defaults are shared
    safely. `options_specs` reads the fields back for `--option` checking, `--list-options` and `--help`.
    """
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"help": help})


def options_specs(options_class, preset: dict | None = None) -> dict[str, OptionSpec]:
    """The options of a family's Options dataclass, defaults as `preset` (the registry's table entry) sets them."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(options_class)
    except Exception:           # an annotation that cannot be evaluated here: read the kinds off the defaults
        hints = {}
    specs = {}
    for item in dataclasses.fields(options_class):
        default = item.default if item.default is not dataclasses.MISSING else None
        default = (preset or {}).get(item.name, default)
        if item.name in hints and hints[item.name] is not Any:
            kind, nullable = _kind_of(hints[item.name])
        else:
            default_kind = _KINDS.get(type(item.default))
            kind, nullable = (None if default_kind == "str" or item.name in hints else default_kind), False
        specs[item.name] = OptionSpec(item.name, default, kind, nullable or item.default is None,
                                      item.metadata.get("help", ""))
    return specs


def read_options(options_class, given: dict, model: str, *, file: str | None = None):
    """`options_class(**given)`, after `check_options`: an unknown key (with close matches) or a value of the
    wrong kind is a one-line DataError naming the option, never a TypeError from the dataclass.

    A recipe function starts with it: `o = read_options(YoloOptions, options, name)`."""
    return options_class(**check_options(dict(given), options_specs(options_class), model, file=file))


def stored_options(options) -> dict:
    """The options a checkpoint stores: the dataclass as a plain dict, tuples as lists (JSON as typed)."""
    import dataclasses

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {key: plain(value) for key, value in dataclasses.asdict(options).items()}
