"""What an epoch leaves on disk (and, at the end, the plots), in the order that makes a kill at any instant safe: TensorBoard and the model
files (``best``, top-k, ``last``) first, the resume checkpoint last (it is what resume trusts), then
``metrics.csv`` (rebuilt whole from the history, so it always matches the checkpoint).

Rank 0 alone writes files (a DCP checkpoint: every rank its part). Alone with ``checkpoint.pt``, the writes
happen off the training thread (``_writer.FileWriter``), from snapshots taken when the epoch ended. With
``--async-checkpoint`` the DCP checkpoint is written in the background too (``write_dcp_async``): it replaces
the previous one only once whole, the next checkpoint waits for it, and so does the run's end
(:func:`wait_checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkeep._modelfile import save
from torchkeep.errors import TorchkeepError
from torchkeep.training._checkpoint import (
    capture_rng,
    write_checkpoint,
    write_dcp,
    write_dcp_async,
    write_error,
)
from torchkeep.training._distributed import barrier
from torchkeep.training._layout import BEST, CHECKPOINT, CONFUSION_PNG, CURVES_PNG, DCP_DIR, LAST, METRICS_CSV
from torchkeep.training._plots import plot_confusion, plot_curves, write_metrics_csv
from torchkeep.training._run import Run
from torchkeep.training._schedule import to_checkpoint

__all__ = [
    "save_checkpoint", "save_epoch", "save_interrupted", "save_mid_epoch", "save_model", "wait_checkpoint",
    "write_metrics", "write_plots",
]


def _payload(run: Run, tensors: bool = True) -> dict[str, Any]:
    """The checkpoint's content; without ``tensors`` the training state alone (model and optimizer go to DCP).

    Written in the background, it is a snapshot: copies of the weights and optimizer state of this moment.
    """
    weights: dict[str, Any] = {}
    snap = run.files.background
    if tensors:
        weights = {
            "model": {k: v.detach().clone() if snap else v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": copy.deepcopy(run.opt.state_dict()) if snap else run.opt.state_dict(),
        }
    return {
        **weights,
        **run.state.to_checkpoint(),
        "scheduler": to_checkpoint(run.segments),
        "scaler": run.scaler.state_dict() if run.amp else {},
        "world": run.d.world,
        "best_confusion": torch.tensor(run.state.best_cm or [], dtype=torch.int64),
        "rng": capture_rng(),
        "config": {k: v for k, v in run.cfg.to_dict().items() if isinstance(v, (str, int, float, bool, list)) or v is None},
        "classes": list(run.classes),
        "dataset_size": len(run.data.source),
        "spec": run.spec.to_json(),
    }


def save_model(run: Run, path: Path, model: nn.Module | None = None) -> None:
    """A model file (rank 0 alone); a full disk is a :class:`CheckpointWriteError`."""
    if not run.d.main:
        return
    try:
        save(model if model is not None else run.model, path, spec=run.spec)
    except TorchkeepError:
        raise
    except Exception as exc:
        # safetensors reports a full disk as SafetensorError("... I/O error: ... (os error 28)")
        if isinstance(exc, OSError) or "I/O error" in str(exc) or "os error" in str(exc):
            raise write_error(path, exc, "model file") from exc
        raise


def save_checkpoint(run: Run) -> None:
    """Rank 0 writes the checkpoint (a DCP directory: every rank its part); nobody goes on before it is whole.

    Alone, ``checkpoint.pt`` is written in the background (a snapshot of this moment, after the files
    queued before it); in a process group the write is done before the barrier. With ``--async-checkpoint``
    the DCP checkpoint is started (after the previous one is whole) and every rank goes on at once.
    """
    if run.cfg.checkpoint_format == "dcp":
        wait_checkpoint(run)  # the previous one is whole and swapped in: its temp directory is free again
        if run.cfg.async_checkpoint:
            run.pending_checkpoint = write_dcp_async(run.dir / DCP_DIR, run.model, run.opt, _payload(run, tensors=False),
                                                     main=run.d.main, group=run.checkpoint_group)
            return
        write_dcp(run.dir / DCP_DIR, run.model, run.opt, _payload(run, tensors=False), main=run.d.main)
    elif run.d.main:
        payload = _payload(run)
        run.files.submit(lambda: write_checkpoint(run.dir / CHECKPOINT, payload))
    barrier(run.d)


def wait_checkpoint(run: Run) -> None:
    """The checkpoint being written in the background (``--async-checkpoint``) is whole and in place; raises
    its write's error (:class:`CheckpointWriteError`: the previous checkpoint is intact)."""
    pending, run.pending_checkpoint = run.pending_checkpoint, None
    if pending is not None:
        pending.result()


def save_mid_epoch(run: Run, partial: dict[str, float]) -> None:
    """A checkpoint in the middle of an epoch (``--checkpoint-every``): all ranks, then all agree."""
    saved = run.state.partial
    run.state.partial = partial
    try:
        save_checkpoint(run)
    finally:
        run.state.partial = saved


def write_metrics(run: Run, history: list[dict[str, Any]] | None = None) -> None:
    """metrics.csv from the history (rebuilt whole, so it always matches the checkpoint)."""
    if not run.d.main:
        return
    with contextlib.suppress(OSError):  # a convenience copy: the checkpoint holds the history
        write_metrics_csv(run.state.history if history is None else history, run.dir / METRICS_CSV)


def save_epoch(run: Run, row: dict[str, Any], value: float, improved: bool, writer: Any) -> None:
    """The files of a finished epoch (already recorded in ``run.state``), checkpoint last."""
    cfg, st = run.cfg, run.state
    # TensorBoard and models first, the checkpoint last (it is what resume trusts): a kill in between
    # replays this epoch, and TensorBoard's purge_step drops the events it logged the first time
    if writer is not None:  # rank 0's alone
        writer.epoch(row)
    st.files_pending = True
    # the files of this epoch, from a snapshot when they are written in the background
    model = copy.deepcopy(run.model) if run.files.background else run.model
    top_new, top_gone = st.update_top_k(value, cfg.keep, cfg.metric, cfg.lower_is_better)
    history = [dict(h) for h in st.history]

    def write_models() -> None:
        if improved:
            save_model(run, run.dir / BEST, model)
        for name in top_new:
            save_model(run, run.dir / name, model)
        for name in top_gone:
            with contextlib.suppress(OSError):
                (run.dir / name).unlink()
        save_model(run, run.dir / LAST, model)

    if run.d.main:
        run.files.submit(write_models)
    save_checkpoint(run)
    st.files_pending = False
    if run.d.main:
        run.files.submit(lambda: write_metrics(run, history))


def save_interrupted(run: Run) -> None:
    """The Ctrl-C checkpoint; finishes the epoch's model files first if the interrupt cut them short."""
    st = run.state
    run.files.wait()  # what was queued (a finished epoch's files) is on disk first
    if st.files_pending:
        if st.best_epoch == st.epoch:
            save_model(run, run.dir / BEST)
        save_model(run, run.dir / LAST)
        st.files_pending = False
    save_checkpoint(run)
    wait_checkpoint(run)
    run.files.wait()
    write_metrics(run)


def write_plots(run: Run) -> tuple[Path | None, Path | None]:
    """curves.png and confusion.png (the best epoch's validation) at the end of the run, rank 0."""
    cfg, st = run.cfg, run.state
    if not (cfg.plots and st.history and run.d.main):
        return None, None
    title = f"{cfg.arch} on {cfg.data}"
    curves = plot_curves(st.history, run.dir / CURVES_PNG, title=title)
    confusion = None
    if st.best_cm is not None:
        confusion = plot_confusion(
            st.best_cm, run.classes, run.dir / CONFUSION_PNG, title=f"{title}: validation, best epoch {st.best_epoch}"
        )
    return curves, confusion
