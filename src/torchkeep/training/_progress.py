"""What a run reports as it goes (``TrainConfig.progress``): the library reports, the caller draws.

``torchkeep train`` draws its progress bars from these reports (``torchkeep._cli.train.TrainBars``); a
notebook or a job scheduler can log them instead. No torch, no rich here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EPOCH_END", "EPOCH_START", "RUN_END", "STEP", "STEP_EVERY", "TrainProgress", "report"]

EPOCH_START = "epoch_start"  # an epoch begins (``step`` > 0: resumed in its middle)
STEP = "step"  # every STEP_EVERY steps and at the last: the epoch's running loss and accuracy
EPOCH_END = "epoch_end"  # the epoch is trained, validated and saved: its metrics row
RUN_END = "run_end"  # the last epoch is done (plots and the result come next)

# running totals are read from the device for a report: every step would cost a host sync per step
STEP_EVERY = 10


@dataclass(frozen=True)
class TrainProgress:
    """One report of a training run's progress.

    Attributes:
        kind: ``epoch_start``, ``step``, ``epoch_end`` or ``run_end``.
        epoch: the epoch it is about, counted from 1; epochs: the run's total.
        step / steps: global batches done in the epoch, and in the whole epoch (``epoch_start``, ``step``).
        loss / acc: the epoch's running mean training loss and accuracy (``step``).
        metrics: the epoch's row of ``metrics.csv`` (``epoch_end``): train/val loss and accuracy, lr, seconds.
        improved: the epoch is the best so far by the run's metric (``epoch_end``).
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    acc: float | None = None
    metrics: dict[str, Any] | None = None
    improved: bool = False


def report(progress: Callable[[TrainProgress], None] | None, kind: str, epoch: int, epochs: int, **fields: Any) -> None:
    """Call ``progress`` (when there is one) with a :class:`TrainProgress`."""
    if progress is not None:
        progress(TrainProgress(kind, epoch, epochs, **fields))
