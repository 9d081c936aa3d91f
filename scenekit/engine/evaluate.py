"""Evaluation: a model's recipe runs it over a dataset into scenekit.metrics.

Each recipe names its metrics (`Recipe.evaluate`): the localizers report ILSVRC localization errors and IoU
statistics, detectors COCO AP. The engine calls it after every epoch; `evaluate_checkpoint` does the same for a
saved model, given the recipe the checkpoint was trained with.
"""

from __future__ import annotations

import torch

from scenekit.engine.checkpoint import load_checkpoint
from scenekit.engine.train import resolve_device


def restore_model(recipe, checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model, rebuilt from its stored configuration, weights loaded, in eval mode."""
    model = recipe.build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def evaluate_checkpoint(path, make_recipe, dataset, device: str = "auto") -> dict:
    """Metrics of the model saved at `path` on `dataset`.

    `make_recipe(model_name, categories, stored=options, source=file)` rebuilds the recipe (the CLI passes its
    table's function).
    """
    checkpoint = load_checkpoint(path)
    recipe = make_recipe(checkpoint["model_name"], checkpoint["categories"], stored=checkpoint["options"],
                         source=str(path))
    target = resolve_device(device)
    with torch.no_grad():
        return recipe.evaluate(restore_model(recipe, checkpoint, target), dataset, target)
