"""Progress bars on stderr: one bar per epoch with live loss and accuracy, a line per finished epoch."""

from __future__ import annotations

from typing import Any

__all__ = ["Bar"]


class Bar:
    """Rich progress display for a run of ``epochs`` epochs (a no-op console prints nothing)."""

    def __init__(self, console: Any, epochs: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, total: int, done: int = 0) -> Any:
        for t in list(self.progress.task_ids):
            self.progress.remove_task(t)
        return self.progress.add_task(
            "train", total=total, completed=done, epoch=epoch, epochs=self.epochs, loss="-", acc="-"
        )

    def update(self, task: Any, completed: int, loss: float, acc: float) -> None:
        self.progress.update(task, completed=completed, loss=f"{loss:.4f}", acc=f"{100 * acc:.2f}%")

    def epoch_done(self, row: dict[str, Any], improved: bool) -> None:
        star = "  best" if improved else ""
        w = len(str(self.epochs))
        # one line under 80 columns (logs, CI); the learning rate is in metrics.csv and TensorBoard
        self.progress.console.print(
            f"epoch {row['epoch']:>{w}}/{self.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.1f}%"
            f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.1f}%  {row['seconds']:.1f}s{star}",
            soft_wrap=True,
        )
