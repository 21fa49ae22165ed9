"""Training: ``train(TrainConfig(...)) -> TrainResult`` with kill-safe checkpoints and exact resume.

    from torchkeep import TrainConfig, train
    result = train(TrainConfig(arch="cifar10_cnn", data="digits", out="runs/digits"))
    result = train(TrainConfig(resume="runs/digits", epochs=30))      # continue, exactly

The run directory holds ``best.safetensors`` / ``last.safetensors`` (self-describing model files),
``checkpoint.pt`` (resume; loads with ``torch.load(weights_only=True)``), ``config.json``, ``metrics.csv``,
``tensorboard/``, ``curves.png`` and ``confusion.png``.

Names are imported on first use: the settings (``TrainConfig``, the choices and defaults in
``training._config``) cost no torch import, so ``torchkeep train --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CheckpointWriteError", "RunConfig", "TrainConfig", "TrainProgress", "TrainResult", "TrainingInterrupted",
    "load_checkpoint", "train",
]

# public name -> private module that defines it
_LAZY = {
    "CheckpointWriteError": "torchkeep.errors",
    "RunConfig": "torchkeep.training._config",
    "TrainConfig": "torchkeep.training._config",
    "TrainResult": "torchkeep.training._config",
    "TrainProgress": "torchkeep.training._progress",
    "TrainingInterrupted": "torchkeep.errors",
    "load_checkpoint": "torchkeep.training._checkpoint",
    "train": "torchkeep.training._loop",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchkeep.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from torchkeep.errors import CheckpointWriteError, TrainingInterrupted
    from torchkeep.training._checkpoint import load_checkpoint
    from torchkeep.training._config import RunConfig, TrainConfig, TrainResult
    from torchkeep.training._loop import train
    from torchkeep.training._progress import TrainProgress
