"""The one table of model families (DESIGN.md): a name -> the model file that implements it.

Everything that turns a family's name into something that runs lives here, below the CLI, so that the CLI, the
web demo, the Python API (`scenekit.load`, `scenekit.train`) and the benchmarks share it:

- `FAMILIES`: name -> `Family(module, Options dataclass, recipe function, preset options)`;
- `model_options(name)`: the family's options (`scenekit.recipes.OptionSpec`: default, kind, one line of help),
  read off its Options dataclass;
- `make_recipe(name, categories, options)`: the family's `scenekit.recipes.Recipe`, options checked (an unknown
  key or a value of the wrong kind is one line naming it, with close matches);
- `parse_options(["key=value", ...], name)`: `--option` text read as the kinds the options take;
- `restore(checkpoint)`: the recipe and the model rebuilt from a checkpoint, on a device;
- `load_model_data(spec, split, recipe, ...)`: a dataset for a model (the world made as its recipe asks).

Adding a family is adding a model file (Options, Config, network, loss, recipe()) and one line to `FAMILIES`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """One row of the table: `module.recipe(categories, name=..., **options)` builds the family's recipe; its
    options are the fields of `module.<options>` (a dataclass), with `preset` over their defaults."""

    module: str
    options: str
    recipe: str = "recipe"
    preset: dict = field(default_factory=dict)


FAMILIES = {
    "localizer": Family("scenekit.models.localizer", options="LocalizerOptions", preset={"class_specific": True}),
    "localizer-agnostic": Family("scenekit.models.localizer", options="LocalizerOptions",
                                 preset={"class_specific": False}),
    "overfeat": Family("scenekit.models.localizer", options="LocalizerOptions",
                       preset={"class_specific": True, "inference": "overfeat"}),
    "fcn": Family("scenekit.models.fcn", options="FCNOptions", preset={"architecture": "fcn8s"}),
    "fcn-32s": Family("scenekit.models.fcn", options="FCNOptions", preset={"architecture": "fcn32s"}),
    "fcn-16s": Family("scenekit.models.fcn", options="FCNOptions", preset={"architecture": "fcn16s"}),
    "fcn-8s": Family("scenekit.models.fcn", options="FCNOptions", preset={"architecture": "fcn8s"}),
    "deconvnet": Family("scenekit.models.fcn", options="FCNOptions",
                        preset={"architecture": "deconvnet", "upsample": "unpool"}),
    "deconvnet-transposed": Family("scenekit.models.fcn", options="FCNOptions",
                                   preset={"architecture": "deconvnet", "upsample": "transposed"}),
    "sliding-window": Family("scenekit.models.fcn", options="WindowOptions", recipe="window_recipe"),
    "fast-rcnn": Family("scenekit.models.fast_rcnn", options="FastRCNNOptions"),
    "faster-rcnn": Family("scenekit.models.faster_rcnn", options="FasterRCNNOptions"),
    "rcnn": Family("scenekit.models.rcnn", options="RCNNOptions"),
    "yolo1": Family("scenekit.models.yolo", options="YoloOptions", preset={"version": 1}),
    "yolo2": Family("scenekit.models.yolo", options="YoloOptions", preset={"version": 2}),
    "mask-rcnn": Family("scenekit.models.mask_rcnn", options="MaskRCNNOptions"),
    "charlm": Family("scenekit.models.language", options="CharLMOptions", recipe="char_lm_recipe"),
    "deepimagesent": Family("scenekit.models.captioner", options="CaptionerOptions", preset={"kind": "deepimagesent"}),
    "showtell": Family("scenekit.models.captioner", options="CaptionerOptions", preset={"kind": "showtell"}),
    "showattendtell": Family("scenekit.models.captioner", options="CaptionerOptions",
                             preset={"kind": "showattendtell"}),
    "vqa": Family("scenekit.models.vqa", options="VQAOptions"),
}


def family(name: str) -> Family:
    from scenekit.errors import DataError

    if name not in FAMILIES:
        import difflib

        close = difflib.get_close_matches(name, list(FAMILIES), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise DataError(f"unknown model {name!r}{hint} (known: {', '.join(FAMILIES)})", field="model")
    return FAMILIES[name]


def make_recipe(name: str, categories: dict, options: dict | None = None, *, stored: dict | None = None,
                source: str | None = None):
    """The recipe of model `name` for `categories`, with `options` over the table's presets.

    Options are checked against the family's options (`scenekit.recipes.check_options`): an unknown key (with
    its close matches) or a value of the wrong kind is a DataError naming the option. `stored` are options read
    from a checkpoint (the file `source`), under `options`: checked the same way, except that keys this version
    no longer has are dropped with a note on stderr, so checkpoints of older versions still load.
    """
    import importlib

    from scenekit.recipes import check_options

    specs = model_options(name)
    row = family(name)
    factory = getattr(importlib.import_module(row.module), row.recipe)
    kept = check_options(stored or {}, specs, name, file=source, drop_unknown=True)
    dropped = sorted(set(stored or {}) - set(kept))
    if dropped:
        print(f"scenekit: note: {source or 'the checkpoint'} stores options this version no longer has, ignored: "
              f"{', '.join(dropped)}", file=sys.stderr)
    options = check_options(options or {}, specs, name)
    return factory(categories, name=name, **{**row.preset, **kept, **options})


def model_options(name: str) -> dict:
    """`scenekit.recipes.OptionSpec`s of model `name`'s options, defaults as its table entry presets them."""
    import importlib

    from scenekit.recipes import options_specs

    row = family(name)
    return options_specs(getattr(importlib.import_module(row.module), row.options), row.preset)


def parse_options(pairs, model: str | None = None) -> dict:
    """--option KEY=VALUE pairs; VALUE is read as JSON when it parses (numbers, true, [1, 2]), else a string.

    With `model`, each VALUE is read as the kind its option takes (`model_options`): a string option keeps the
    text as typed (`null` is None where allowed), other kinds must be JSON of that kind; an unknown KEY or a
    VALUE of another kind is a DataError naming the option."""
    import json

    from scenekit.errors import DataError
    from scenekit.recipes import check_options, option_text

    specs = model_options(model) if model else {}
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DataError(f"--option needs KEY=VALUE, got {pair!r}", field="option")
        key = key.replace("-", "_")
        spec = specs.get(key)
        if spec is not None and spec.kind == "str":            # "123" stays text; a JSON "text" or null is read
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            options[key] = parsed if isinstance(parsed, str) or (parsed is None and spec.nullable) else value
            continue
        if spec is not None and spec.kind == "bool" and value.lower() in ("true", "false"):
            value = value.lower()
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            if spec is not None and spec.kind is not None:
                raise DataError(f"expected {spec.describe()} (default {option_text(spec.default)}), got {value!r}, "
                                "which is not JSON", field=f"option {key}") from None
            options[key] = value
    return check_options(options, specs, model) if model else options


def load_model_data(spec: str, split: str, recipe, num_images: int, seed: int, skip_report=None):
    """A dataset for a model: `world` is generated the way the model's recipe asks (recipe.world).

    With `skip_report` (a path), invalid records and images that do not decode are skipped instead of stopping
    the run; every image is decoded once up front, so a corrupt file is found before training starts, and the
    skipped records are listed in that JSON report and counted on stderr."""
    from scenekit.data.captions import is_language_spec, load_language_data
    from scenekit.data.sources import load_data, parse_spec
    from scenekit.data.vqa_files import is_vqa_spec, load_vqa_data

    if is_language_spec(spec):                  # coco-captions:PATH, flickr8k:PATH, text:FILE|shakespeare
        return load_language_data(spec, split)
    if is_vqa_spec(spec):                       # vqa2:FOLDER (VQA v2 JSONs + images), visual7w:FILE.json
        return load_vqa_data(spec, split)
    if parse_spec(spec)[0] == "world":
        return load_data(spec, split, num_images=num_images, seed=seed, **recipe.world)
    if skip_report is None:
        return load_data(spec, split)
    import json
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():             # the count is printed below, once
        warnings.simplefilter("ignore")
        dataset = load_data(spec, split, skip_invalid=True, report_path=skip_report, check_images="full")
    report = json.loads(Path(skip_report).read_text()) if Path(skip_report).is_file() else {}
    images, annotations = report.get("images_skipped", 0), report.get("annotations_skipped", 0)
    print(f"{spec} ({split}): loaded {len(dataset)} images; skipped {images} images and {annotations} "
          f"annotations as invalid (report: {skip_report})", file=sys.stderr)
    return dataset


def restore(checkpoint_path: str, device_name: str = "auto", options: dict | None = None):
    """(recipe, model on its device, device, checkpoint) rebuilt from a checkpoint's name and configuration;
    `options` override stored ones for this use (e.g. `max_detections`), checked like `--option`s."""
    from scenekit.engine.checkpoint import load_checkpoint
    from scenekit.engine.evaluate import restore_model
    from scenekit.engine.train import resolve_device

    checkpoint = load_checkpoint(checkpoint_path)
    recipe = make_recipe(checkpoint["model_name"], checkpoint["categories"], options,
                         stored=checkpoint.get("options"), source=str(checkpoint_path))
    device = resolve_device(device_name)
    return recipe, restore_model(recipe, checkpoint, device), device, checkpoint


# ---------------------------------------------------------------------------------------------------- train
