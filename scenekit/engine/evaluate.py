"""Evaluation: a model's recipe runs it over a dataset into scenekit.metrics.

Each recipe names its metrics (`Recipe.evaluate`): the localizers report ILSVRC localization errors and IoU
statistics, detectors COCO AP. The engine calls it after every epoch; for a saved model, `restore_model` rebuilds
the network from its checkpoint, and `scenekit.load(path).evaluate(data=...)` (scenekit.api) runs the same metrics.
The recipe of a checkpoint comes from the registry (`scenekit.models.registry.restore`), which sits above the engine:
the families' own training stages (R-CNN, VQA) call the engine, so the engine names no family and takes no table.
"""

from __future__ import annotations

import torch


def restore_model(recipe, checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model, rebuilt from its stored configuration, weights loaded, in eval mode.

    The pretrained backbone file a run started from (`backbone_weights`) is not read again: the checkpoint holds
    every weight, so it restores on a machine that never had that file."""
    config = dict(checkpoint["model_config"])
    if config.get("backbone_weights") is not None:
        config["backbone_weights"] = None
    model = recipe.build_model(config)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
