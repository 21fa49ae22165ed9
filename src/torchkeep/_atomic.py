"""Atomic file writes: a temporary file in the target's directory, flush + fsync, then ``os.replace``.

A process killed at any instant leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from torchkeep.errors import TorchkeepError, UsageError

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "dir_sides", "recover_dir", "swap_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``torch.jit.save``,
    ``torch.onnx.export``). On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError("is a directory; the output needs a file name", path=target,
                         fix=f"name a file inside it, e.g. {target / 'model.safetensors'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # errors of the writer itself (disk full...) pass through unchanged below
        raise TorchkeepError(f"cannot write the file here ({exc.strerror or exc})", path=target,
                             fix="check that the folder exists and is writable") from None
    # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 minus umask),
    # or keep the mode of the file it replaces
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # again after the writer: some replace the path with a file of their own (safetensors' save_file
        # writes a private 0600 temporary and renames it over ``tmp``)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def dir_sides(path: Path) -> tuple[Path, Path]:
    """The two hidden siblings of a directory written atomically: ``.NAME.tmp`` (being written), ``.NAME.old``."""
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def swap_dir(new: Path, path: Path) -> None:
    """Put the whole directory ``new`` in the place of ``path`` (two renames; see :func:`recover_dir`)."""
    import shutil

    _, old = dir_sides(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path, complete: str) -> None:
    """Undo what a process killed during :func:`swap_dir` left: the old directory comes back when the new
    one is missing (``complete``: the file a whole directory has); half-written ones are removed."""
    import shutil

    tmp, old = dir_sides(path)
    if not path.exists() and (old / complete).exists():
        os.replace(old, path)
    for p in (old, tmp):
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
