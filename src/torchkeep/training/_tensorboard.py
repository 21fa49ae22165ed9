"""TensorBoard logging: per-epoch scalars, a grid of sample inputs, the model graph."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["TensorBoard"]


class TensorBoard:
    """A thin wrapper over ``torch.utils.tensorboard.SummaryWriter`` with the run's tag names.

    Args:
        log_dir: where the event files go.
        purge_step: on resume, the first epoch to be written again: events a killed process wrote for
            epochs after the checkpoint are discarded by TensorBoard, so curves have no duplicates.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def first_batch(
        self, model: torch.nn.Module, dataset: Any, device: torch.device, n: int = 32,
        submit: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Log a grid of the first ``n`` training inputs (as the model sees them) and the model graph.

        With ``submit`` (the run's background writer) the graph is traced there, from a copy of the model,
        while training goes on."""
        from torchvision.utils import make_grid

        # fork_rng: an augmenting transform must not advance the RNG the training run depends on
        with torch.random.fork_rng(devices=[]):
            xs = [dataset[i][0] for i in range(min(n, len(dataset)))]
        if not xs:
            return
        batch = torch.stack(xs)
        grid = make_grid(batch, nrow=8, normalize=True, scale_each=True)
        self.writer.add_image("inputs", grid, 0)
        if submit is not None:
            snapshot = copy.deepcopy(model).eval()
            example = batch[:1].to(device)
            submit(lambda: self._graph(snapshot, example))
            return
        with torch.random.fork_rng(devices=[]):  # tracing must not advance the RNG the run depends on
            self._graph(model, batch[:1].to(device))

    def _graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example)
        except Exception:
            # some architectures cannot be traced; the graph is a nice-to-have, the run goes on
            pass
        finally:
            model.train(was_training)

    def epoch(self, row: dict[str, Any]) -> None:
        """Scalars of one epoch: ``Loss/train``, ``Loss/val``, ``Accuracy/train``, ``Accuracy/val``, ``LR``."""
        e = int(row["epoch"])
        w = self.writer
        w.add_scalar("Loss/train", row["train_loss"], e)
        w.add_scalar("Loss/val", row["val_loss"], e)
        w.add_scalar("Accuracy/train", row["train_acc"], e)
        w.add_scalar("Accuracy/val", row["val_acc"], e)
        w.add_scalar("LR", row["lr"], e)
        w.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
