"""What a trace is asked about: the image (any form `scenekit` reads), the device, and the optional question,
answer choices, text and ground truth; plus the helpers the families share to read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scenekit.errors import DataError


@dataclass
class Request:
    image: np.ndarray | None                  # [H, W, 3] uint8, None for the character model
    device: torch.device
    question: str | None = None
    choices: list[str] | None = None
    text: str | None = None
    targets: dict | None = None               # {"boxes" [N, 4] xyxy image pixels, "labels" [N] category ids}

    def truth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The ground truth as (boxes [N, 4] float64, labels [N] int64 category ids), or None if none was given."""
        if self.targets is None:
            return None
        boxes = np.asarray(torch.as_tensor(self.targets["boxes"]).detach().cpu(), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(torch.as_tensor(self.targets.get("labels", np.ones(len(boxes)))).detach().cpu(),
                            dtype=np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise DataError(f"targets hold {len(boxes)} boxes but {len(labels)} labels", field="targets")
        return boxes, labels


def as_rgb(image) -> np.ndarray:
    """A path, PIL image or [H, W, 3] array (uint8, or float in [0, 1]) -> [H, W, 3] uint8."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        from scenekit.data.image_files import read_rgb

        try:
            return read_rgb(image)
        except FileNotFoundError as error:
            raise DataError(f"cannot read the image ({error})", file=str(image)) from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"the image must be [H, W, 3], got shape {array.shape}", field="image")
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def stand_in_note(count: int) -> str:
    return (f"No ground truth was given: the model's own {count} best detection(s) stand in for it."
            if count else "No ground truth was given and the model detects nothing: every object slot is empty.")
