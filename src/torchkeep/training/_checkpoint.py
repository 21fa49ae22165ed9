"""The resume checkpoint: everything needed to continue a run exactly, loadable with ``weights_only=True``.

Only tensors, plain containers and scalars go in (no pickled objects): RNG states are stored as tensors,
optimizer / scheduler / grad-scaler state are their plain ``state_dict()``. Writes are atomic, so a
process killed at any instant leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkeep._atomic import atomic_path
from torchkeep._gate import check_file
from torchkeep.errors import (  # CheckpointWriteError: re-exported, it lived here
    CheckpointWriteError,
    CompatibilityError,
    InputError,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointWriteError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "torchkeep.train-checkpoint"
CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch and CUDA as tensors and plain scalars."""
    version, py_state, gauss = random.getstate()
    kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class _Writer:
    """A file wrapper that remembers the OSError of a failed write.

    ``torch.save`` turns a failed write (disk full, file too large) into an opaque RuntimeError
    ("unexpected pos ..."); keeping the OSError lets the user read "no space left on device".
    """

    def __init__(self, fh: Any):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _torch_save(payload: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as fh:
        writer = _Writer(fh)
        try:
            torch.save(payload, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename).

    Raises:
        CheckpointWriteError: the write failed (disk full, ...); ``path`` still holds the previous checkpoint.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    try:
        with atomic_path(path) as tmp:
            _torch_save(payload, tmp)
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    return write_error(path, exc, "checkpoint")


def write_error(path: Path, exc: BaseException, what: str = "file") -> CheckpointWriteError:
    """The one-line error for a failed write of ``path`` (disk full, permissions...)."""
    err = getattr(exc, "errno", None)
    if err in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
        reason = "no space left on device"
    elif err == errno.EFBIG or "os error 27" in str(exc):
        reason = "file too large: a file size limit was reached"
    else:
        reason = getattr(exc, "strerror", None) or str(exc)
    kept = f"the previous {what} is intact" if path.exists() else f"no previous {what} existed"
    return CheckpointWriteError(
        f"could not write {path.name} ({reason}); {kept}",
        path=path,
        fix=f"free space, then continue with: torchkeep train --resume {path.parent}",
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a resume checkpoint (a run directory or its ``checkpoint.pt``) with ``weights_only=True``.

    Raises:
        InputError: missing, truncated or not a torchkeep training checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.exists():
        raise InputError(
            "no resume checkpoint here",
            path=p,
            fix="pass the run directory given to --out (it holds checkpoint.pt)",
        )
    # a checkpoint.pt from elsewhere that can run code is refused with its findings (weights_only=True below
    # runs none, but a file built to run code is no checkpoint to resume from)
    check_file(p, runs_code=False)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"checkpoint cannot be read ({type(exc).__name__}: {first})", path=p) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a torchkeep training checkpoint", path=p, fix="resume from a directory written by torchkeep train")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CompatibilityError(
            f"checkpoint version {ckpt.get('version')} is newer than this torchkeep reads ({CHECKPOINT_VERSION})",
            path=p,
            fix="upgrade torchkeep",
        )
    return ckpt
