"""``--resume``: read the run's checkpoint, refuse what would not fit, and put a set-up run back exactly where
the checkpoint left it (weights, optimizer, schedule, grad scaler, bookkeeping, RNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchkeep.errors import CompatibilityError, UsageError
from torchkeep.training._checkpoint import load_checkpoint, load_dcp_into, restore_rng
from torchkeep.training._config import DEFAULTS, IDENTITY_FIELDS, TrainConfig
from torchkeep.training._layout import CHECKPOINT, DCP_DIR
from torchkeep.training._run import Run
from torchkeep.training._schedule import extend, from_checkpoint
from torchkeep.training._state import RunState

__all__ = ["check_identity", "open_resume", "restore"]


def check_identity(given: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with a different architecture, dataset, ... (the state would not fit or mean anything)."""
    for name in IDENTITY_FIELDS:
        v = getattr(given, name)
        if v is None:
            continue
        old = saved.get(name, DEFAULTS.get(name))  # a field newer than the checkpoint had its default
        if isinstance(v, tuple):
            v = list(v)
        if v != old:
            flag = "--" + name.replace("_", "-")
            raise CompatibilityError(
                f"cannot resume: this run was trained with {flag} {old}, not {v}",
                path=path,
                fix=f"leave out {flag} to continue the run, or start a new run with a different --out",
            )


def open_resume(config: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint ``config.resume`` names, and its run's saved settings (``out`` = the run directory)."""
    assert config.resume is not None
    ckpt_path = Path(os.fspath(config.resume))
    ckpt = load_checkpoint(ckpt_path)
    saved = dict(ckpt.get("config") or {})
    run_dir = ckpt_path if ckpt_path.is_dir() and ckpt_path.name != DCP_DIR else ckpt_path.parent
    check_identity(config, saved, run_dir / CHECKPOINT)
    if config.out is not None and Path(os.fspath(config.out)).resolve() != run_dir.resolve():
        raise UsageError(
            f"--resume {run_dir} continues that run in place; --out {config.out} is another directory",
            fix="leave out --out when resuming",
        )
    saved["out"] = os.fspath(run_dir)
    return ckpt, saved


def _check_dataset(run: Run, ckpt: dict[str, Any]) -> None:
    path = run.dir / CHECKPOINT
    old_classes = ckpt.get("classes")
    if old_classes is not None and list(old_classes) != run.classes:
        raise CompatibilityError(
            f"cannot resume: the dataset's classes changed since the checkpoint "
            f"({', '.join(map(str, old_classes[:6]))}... -> {', '.join(run.classes[:6])}...)",
            path=path,
            fix="restore the dataset as it was, or start a new run with another --out",
        )
    old_n = ckpt.get("dataset_size")
    n = len(run.data.source)
    if old_n is not None and int(old_n) != n:
        raise CompatibilityError(
            f"cannot resume: the dataset has {n} images, the run was trained on {old_n} "
            "(the split and the data order would not be the same)",
            path=path,
            fix="restore the dataset as it was, or start a new run with another --out",
        )


def _load_weights(run: Run, ckpt: dict[str, Any]) -> None:
    try:
        if "dcp" in ckpt:  # a DCP checkpoint: model and optimizer are in its shards
            load_dcp_into(Path(ckpt["dcp"]), run.model, run.opt)
        else:
            run.model.load_state_dict(ckpt["model"])
            run.opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CompatibilityError(
            f"the checkpoint does not fit this model ({str(exc).splitlines()[0]})",
            path=run.dir / CHECKPOINT,
            fix="resume with the run's own --arch/--num-classes, or start a new run with another --out",
        ) from exc


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put ``run`` (set up as a fresh run would be) where ``ckpt`` left it."""
    cfg = run.cfg
    _check_dataset(run, ckpt)
    _load_weights(run, ckpt)
    segments = from_checkpoint(ckpt.get("scheduler"), dict(ckpt.get("config") or {}), cfg.lr, cfg.scheduler)
    # --epochs raised on resume: a finished schedule gets a new segment (else the new epochs would all
    # train at the learning rate 0 where cosine ended), an unfinished one now ends at the new total
    run.segments, note = extend(segments, int(ckpt["epoch"]), cfg.epochs, cfg.lr, cfg.scheduler)
    if note:
        run.notes.append(note)
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.state = RunState.restore(ckpt, cfg.batch_size)
    if run.d.world == 1 and int(ckpt.get("world", 1)) == 1:
        restore_rng(ckpt["rng"])  # exact; distributed runs draw from per-rank seeds set each epoch
