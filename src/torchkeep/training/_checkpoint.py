"""The resume checkpoint: everything needed to continue a run exactly, loadable with ``weights_only=True``.

Only tensors, plain containers and scalars go in (no pickled objects): RNG states are stored as tensors,
optimizer / scheduler / grad-scaler state are their plain ``state_dict()``. Writes are atomic, so a
process killed at any instant leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkeep._atomic import atomic_path, dir_sides, recover_dir, swap_dir
from torchkeep._dcp import METADATA as DCP_METADATA
from torchkeep._dcp import TRAIN_ENTRY, read_entry_blob
from torchkeep._gate import check_file
from torchkeep.errors import (  # CheckpointWriteError: re-exported, it lived here
    CheckpointWriteError,
    CompatibilityError,
    InputError,
)
from torchkeep.training._layout import CHECKPOINT, DCP_DIR

__all__ = [
    "CHECKPOINT_FORMAT",
    "DCP_DIR",
    "CheckpointWriteError",
    "capture_rng",
    "has_checkpoint",
    "load_checkpoint",
    "restore_rng",
    "write_checkpoint",
    "write_dcp",
    "write_dcp_async",
]

CHECKPOINT_FORMAT = "torchkeep.train-checkpoint"
CHECKPOINT_VERSION = 1
# the DCP entry holding the training state is a uint8 tensor (of a torch.save blob, weights_only): a tensor,
# so that dcp.load never unpickles it (DCP opens non-tensor entries with weights_only=False)
DCP_TRAIN_KEY = TRAIN_ENTRY


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
        raise write_error(path, exc, "checkpoint") from exc


def write_error(path: Path, exc: BaseException, what: str = "file") -> CheckpointWriteError:
    """The one-line error for a failed write of ``path`` (disk full, permissions...)."""
    err = getattr(exc, "errno", None)
    if err in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
        reason = "no space left on device"
    elif err == errno.EFBIG or "os error 27" in str(exc):
        reason = "file too large: a file size limit was reached"
    elif "unexpected pos" in str(exc):  # torch.save's word for a write cut short (DCP keeps no OSError)
        reason = "a write stopped short: the disk is full or a file size limit was reached"
    else:
        reason = getattr(exc, "strerror", None) or str(exc)
    kept = f"the previous {what} is intact" if path.exists() else f"no previous {what} existed"
    return CheckpointWriteError(
        f"could not write {path.name} ({reason}); {kept}",
        path=path,
        fix=f"free space, then continue with: torchkeep train --resume {path.parent}",
    )


def has_checkpoint(run_dir: Path) -> bool:
    """The run directory holds a resume checkpoint (``checkpoint.pt`` or a whole ``checkpoint.dcp``)."""
    dcp_dir = run_dir / DCP_DIR
    return (run_dir / CHECKPOINT).exists() or (dcp_dir / DCP_METADATA).exists() or (
        dir_sides(dcp_dir)[1] / DCP_METADATA
    ).exists()


@contextlib.contextmanager
def _single_process_is_fine() -> Iterator[None]:
    """DCP warns when no process group is set up ("assuming the intent is to save in a single process"): it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _dcp_start(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, payload: dict[str, Any], *,
               main: bool) -> tuple[Path, dict[str, Any]]:
    """Where the checkpoint is written (``.checkpoint.dcp.tmp``, emptied by rank 0 while every rank waits)
    and what DCP saves: model, optimizer and the training state as one entry (a ``torch.save`` blob)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp, _ = dir_sides(path)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    msd, osd = get_state_dict(model, opt)
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buf)
    train_state = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    return tmp, {"model": msd, "optimizer": osd, DCP_TRAIN_KEY: train_state}


def write_dcp(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, payload: dict[str, Any], *, main: bool) -> None:
    """Write a DCP checkpoint: every rank writes its part (replicated tensors are spread over the ranks).

    Kill-safe: the checkpoint goes to ``.checkpoint.dcp.tmp`` and DCP writes its ``.metadata`` last, when
    every rank's files are whole; then rank 0 swaps it in with two renames (a kill between them is undone by
    :func:`torchkeep._atomic.recover_dir` when the run is resumed). The training state travels as one entry, a ``torch.save`` blob (``weights_only``).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    tmp, state = _dcp_start(path, model, opt, payload, main=main)
    try:
        with _single_process_is_fine():
            dcp.save(state, checkpoint_id=tmp)
        if main:
            swap_dir(tmp, path)
    except (OSError, RuntimeError, CheckpointException) as exc:
        raise _dcp_write_error(path, exc) from None


def _dcp_write_error(path: Path, exc: BaseException) -> BaseException:
    """DCP's failure to write as the one-line :class:`CheckpointWriteError`; other errors as they are.

    DCP gathers each rank's error into a ``CheckpointException`` (a BaseException whose text is every rank's
    traceback); a write cut short reaches it as torch.save's RuntimeError ("unexpected pos ...").
    """
    from torch.distributed.checkpoint.api import CheckpointException

    failed = exc
    if isinstance(exc, CheckpointException) and exc.failures:
        failed = exc.failures[min(exc.failures)][0]
    if isinstance(failed, OSError) or "unexpected pos" in str(failed):
        return write_error(path, failed, "checkpoint")
    return exc


def write_dcp_async(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, payload: dict[str, Any], *,
                    main: bool, group: Any) -> Future[None]:
    """:func:`write_dcp` in the background (``torch.distributed.checkpoint.async_save``); returns at once.

    The weights and optimizer state are copied before this returns (DCP's staging), so training goes on while
    the copy is written. The returned future is done once the checkpoint is whole *and* rank 0 swapped it in:
    until then ``checkpoint.dcp`` is the previous one, exactly as with :func:`write_dcp` (the swap happens in
    DCP's writer thread, after ``.metadata``). Wait for it before the next checkpoint (which reuses the temp
    directory) and before the run ends. ``group``: the process group DCP coordinates on (gloo, so that its
    collectives never interleave with DDP's on the training thread); None alone.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    tmp, state = _dcp_start(path, model, opt, payload, main=main)
    if not dist.is_initialized():
        # DCP warns from its writer thread, where _single_process_is_fine cannot reach ("assuming the intent
        # is to save in a single process": it is)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning,
                                module=r"torch\.distributed")
    done: Future[None] = Future()

    def finish(written: Future[Any]) -> None:  # DCP's writer thread, once every rank's part is written
        try:
            written.result()
            if main:
                swap_dir(tmp, path)
        except BaseException as exc:  # handed to the training thread, which raises it
            done.set_exception(_dcp_write_error(path, exc))
        else:
            done.set_result(None)

    try:
        written = dcp.async_save(state, checkpoint_id=tmp, process_group=group, no_dist=group is None)
    except OSError as exc:
        raise write_error(path, exc, "checkpoint") from exc
    if not isinstance(written, Future):  # an AsyncSaveResponse: only with a stager of our own, never passed
        written = written.upload_completion
    written.add_done_callback(finish)
    return done


def load_dcp_into(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint's model and optimizer state into ``model`` / ``opt`` (any number of processes).

    The directory was scanned by :func:`load_checkpoint` before (DCP unpickles its ``.metadata``).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    with _single_process_is_fine():
        dcp.load({"model": msd, "optimizer": osd}, checkpoint_id=path)  # in place
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a resume checkpoint (a run directory or its ``checkpoint.pt``) with ``weights_only=True``.

    Raises:
        InputError: missing, truncated or not a torchkeep training checkpoint.
    """
    p = Path(path)
    if p.is_dir() and not (p / DCP_METADATA).exists():
        recover_dir(p / DCP_DIR, DCP_METADATA)
        if not (p / CHECKPOINT).exists() and (p / DCP_DIR / DCP_METADATA).exists():
            p = p / DCP_DIR
        else:
            p = p / CHECKPOINT
    if p.is_dir():
        return _load_dcp_train_state(p)
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


def _load_dcp_train_state(p: Path) -> dict[str, Any]:
    """The training state of a DCP checkpoint (its model and optimizer load later, by :func:`load_dcp_into`)."""
    # dcp.load (load_dcp_into) unpickles .metadata and torch.loads every non-tensor entry with
    # weights_only=False: only a safe checkpoint is resumed from
    check_file(p, runs_code=True)
    try:
        state = torch.load(io.BytesIO(read_entry_blob(p, DCP_TRAIN_KEY)), map_location="cpu", weights_only=True)
        ckpt = torch.load(io.BytesIO(state.numpy().tobytes()), map_location="cpu", weights_only=True)
    except KeyError:
        raise InputError(
            "a DCP checkpoint without torchkeep's training state", path=p,
            fix="resume from a directory written by torchkeep train --checkpoint-format dcp",
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"checkpoint cannot be read ({type(exc).__name__}: {first})", path=p) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a torchkeep training checkpoint", path=p, fix="resume from a directory written by torchkeep train")
    ckpt["dcp"] = os.fspath(p)
    return ckpt
