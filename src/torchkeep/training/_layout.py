"""The files of a run directory, by name: one home for the layout that training writes and
``predict`` / ``export`` / ``eval`` read (a run directory given for a model file means its best model).

No torch: reading the layout costs nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = [
    "BEST", "CHECKPOINT", "CONFIG", "CONFUSION_PNG", "CURVES_PNG", "DCP_DIR", "LAST", "METRICS_CSV", "TENSORBOARD",
    "clean_stale_temp",
]

BEST = "best.safetensors"
LAST = "last.safetensors"
CHECKPOINT = "checkpoint.pt"
DCP_DIR = "checkpoint.dcp"  # --checkpoint-format dcp: a torch.distributed.checkpoint directory
CONFIG = "config.json"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
TOP_DIR = "top"  # --keep K: top/epochNNN-<metric>=<value>.safetensors


def clean_stale_temp(run_dir: Path) -> None:
    """Temporary files left by a process killed mid-write (the real files are intact)."""
    for d in (run_dir, run_dir / TOP_DIR):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
