"""Training: ``train(TrainConfig(...)) -> TrainResult`` with kill-safe checkpoints and exact resume.

    from torchkeep import TrainConfig, train
    result = train(TrainConfig(arch="cifar10_cnn", data="digits", out="runs/digits"))
    result = train(TrainConfig(resume="runs/digits", epochs=30))      # continue, exactly

The run directory holds ``best.safetensors`` / ``last.safetensors`` (self-describing model files),
``checkpoint.pt`` (resume; loads with ``torch.load(weights_only=True)``), ``config.json``, ``metrics.csv``,
``tensorboard/``, ``curves.png`` and ``confusion.png``.
"""

from torchkeep.training._checkpoint import CheckpointWriteError, load_checkpoint
from torchkeep.training._config import TrainConfig, TrainResult
from torchkeep.training._loop import TrainingInterrupted, train

__all__ = ["CheckpointWriteError", "TrainConfig", "TrainResult", "TrainingInterrupted", "load_checkpoint", "train"]
