"""metrics.csv, curves.png and confusion.png (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchkeep._atomic import atomic_write, atomic_write_bytes

__all__ = ["METRIC_COLUMNS", "plot_confusion", "plot_curves", "write_metrics_csv"]

METRIC_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def write_metrics_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Rewrite ``metrics.csv`` from the run's history (so it always matches the checkpoint)."""
    with atomic_write(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _figure(width: float, height: float):
    # the object API with the Agg canvas: no pyplot global state, no GUI backend, safe in any process.
    # constrained layout is done within the one draw savefig makes (tight_layout drew the figure twice:
    # half the time of the plots, measured by bench/bench_train.py)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(epochs, [h[key] for h in history], marker="o", ms=3, label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "val")):
        ax_acc.plot(epochs, [100 * h[key] for h in history], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    n = len(classes)
    size = max(4.0, min(0.45 * n + 2.5, 16.0))
    fig = _figure(size, size)
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(classes), rotation=45 if n > 10 or max(map(len, classes)) > 3 else 0, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    if n <= 30:
        vmax = max((max(r) for r in matrix), default=0)
        for i in range(n):
            for j in range(n):
                v = matrix[i][j]
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if v > vmax / 2 else "black")
    _save(fig, path)
    return path
