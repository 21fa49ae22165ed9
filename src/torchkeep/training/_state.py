"""Where a run stands: epochs and steps done, the epoch's running totals, the history, the best epoch, the
kept top-k. The checkpoint records it (with the weights, the optimizer and the RNG), resume restores it.

Plain Python (no torch): the rules of "best" and "top-k" are here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torchkeep.training._layout import TOP_DIR

__all__ = ["RunState", "top_file"]


def _zero() -> dict[str, float]:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0}


def top_file(epoch: int, metric: str, value: float) -> str:
    """A top-k model file, relative to the run directory."""
    return f"{TOP_DIR}/epoch{epoch:03d}-{metric}={value:.4f}.safetensors"


@dataclass
class RunState:
    """The bookkeeping of a run (a fresh run's, or a checkpoint's with :meth:`restore`).

    Attributes:
        epoch: epochs completed.
        batch_in_epoch: global batches done in the epoch in progress (a checkpoint mid-epoch).
        sample_in_epoch: samples of that epoch consumed by all processes together (valid on any world size).
        step: global batches done in the whole run.
        partial: the epoch's running ``loss_sum``, ``correct`` and ``seen`` so far (all processes).
        history: one metrics row per finished epoch.
        best_value / best_epoch / best_cm: the best epoch by the run's metric, and its confusion matrix.
        top_k: the kept best epochs, best first: ``{"value", "epoch", "file"}``.
        resumed_from: the epoch this call started from (0 for a fresh run).
        files_pending: the finished epoch's model files may not all be written yet (Ctrl-C then writes them).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    sample_in_epoch: int = 0
    step: int = 0
    partial: dict[str, float] = field(default_factory=_zero)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    best_cm: list[list[int]] | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    files_pending: bool = False

    @classmethod
    def restore(cls, ckpt: dict[str, Any], batch_size: int) -> RunState:
        """The state a checkpoint recorded; ``batch_size`` reads older checkpoints that counted batches only."""
        batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        cm = ckpt.get("best_confusion")  # a tensor (weights_only checkpoints hold no nested lists of ints)
        epoch = int(ckpt["epoch"])
        return cls(
            epoch=epoch,
            batch_in_epoch=batch_in_epoch,
            # samples consumed: a global offset, valid for any number of processes (older checkpoints: batches)
            sample_in_epoch=int(ckpt.get("sample_in_epoch", batch_in_epoch * batch_size)),
            step=int(ckpt["step"]),
            partial=dict(ckpt.get("partial") or _zero()),
            history=[dict(h) for h in ckpt.get("history", [])],
            best_value=ckpt.get("best_value"),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            best_cm=cm.tolist() if cm is not None and hasattr(cm, "numel") and cm.numel() else None,
            top_k=[dict(t) for t in ckpt.get("top_k", [])],
            resumed_from=epoch,
        )

    def to_checkpoint(self) -> dict[str, Any]:
        """The bookkeeping entries of ``checkpoint.pt`` (copies: the checkpoint may be written later)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "step": self.step,
            "partial": dict(self.partial),
            "history": [dict(h) for h in self.history],
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "top_k": [dict(t) for t in self.top_k],
        }

    @property
    def mid_epoch(self) -> bool:
        """An epoch is in progress (some of its batches done)."""
        return self.batch_in_epoch > 0

    def improved(self, value: float, lower_is_better: bool) -> bool:
        """``value`` beats the best so far (a NaN never does; anything beats a NaN)."""
        if self.best_value is None or math.isnan(self.best_value):
            return not math.isnan(value)
        return value < self.best_value if lower_is_better else value > self.best_value

    def end_epoch(self, row: dict[str, Any], cm: list[list[int]], value: float, lower_is_better: bool) -> bool:
        """Record a finished epoch (``self.epoch`` already counts it); returns whether it is the new best."""
        self.history.append(row)
        self.batch_in_epoch = 0
        self.sample_in_epoch = 0
        self.partial = _zero()
        improved = self.improved(value, lower_is_better)
        if improved:
            self.best_value, self.best_epoch, self.best_cm = value, self.epoch, cm
        return improved

    def update_top_k(self, value: float, keep: int, metric: str, lower_is_better: bool) -> tuple[list[str], list[str]]:
        """The kept top-k after this epoch; returns the files (relative to the run) to write and to delete."""
        if keep <= 1:
            return [], []
        entries = [*self.top_k, {"value": value, "epoch": self.epoch, "file": ""}]
        entries.sort(key=lambda e: (e["value"] if lower_is_better else -e["value"], e["epoch"]))
        kept, dropped = entries[:keep], entries[keep:]
        new: list[str] = []
        for e in kept:
            if e["epoch"] == self.epoch:
                e["file"] = top_file(self.epoch, metric, value)
                new.append(e["file"])
        self.top_k = kept
        return new, [e["file"] for e in dropped if e["file"]]
