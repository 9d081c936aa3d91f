"""The training engine: one loop for every model (`train.train`), atomic checkpoints (`checkpoint`),
evaluation of saved models (`evaluate`). Import from the submodules: `from scenekit.engine.train import train`."""
