"""A bounded reader over one region of a file: the one way the scanner reads part of a file.

The container walkers read zip members, ``.npy`` headers and pickles in place through it, and the
unpicklers of :mod:`torchkeep._pickle_vm` read streams that are not in memory through it. Reads never go
past the region's end, so a forged length field allocates nothing and never reads bytes that belong to
something else.
"""

from __future__ import annotations

import io
from typing import IO, Any

__all__ = ["Region", "SizedReader"]


class SizedReader(io.RawIOBase):
    """A read-only, seekable binary file of a known :meth:`size`: the position bookkeeping of :class:`Region`
    and of the inflated zip members (:class:`torchkeep._inflate._Inflated`)."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size()}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def size(self) -> int:
        raise NotImplementedError


class Region(SizedReader):
    """A read-only view of ``[start, end)`` of a seekable binary file; offsets are relative to ``start``.

    ``end=None``: to the end of ``fh``. A read asking past ``end`` is answered one of two ways:

    - by default (file semantics, for zipfile, numpy and the walkers): what is left when it asks for at most
      one chunk (:attr:`_CHUNK`) more, nothing when it asks for more (a length field asking past the region's
      end: the data is truncated, nothing is read);
    - ``truncated_reads=True`` (how the unpicklers read a stream): nothing, and the position moves to the end:
      the pickle is truncated there, every loader fails at the same byte. ``readinto`` fills what is left.
    """

    _CHUNK = 1 << 16  # the unpicklers read opcode by opcode: serve small reads from a buffer

    def __init__(self, fh: IO[bytes], start: int, end: int | None = None, *, truncated_reads: bool = False) -> None:
        if end is None:
            here = fh.tell()
            end = fh.seek(0, io.SEEK_END)
            fh.seek(here)
        self._fh, self._start, self._end, self._pos = fh, start, end, 0
        self._truncated_reads = truncated_reads
        self._buf, self._buf_pos = b"", 0  # buffered bytes and their offset (relative to start)

    def size(self) -> int:
        return self._end - self._start

    def read(self, n: int | None = -1) -> bytes:
        left = self._end - self._start - self._pos
        if self._truncated_reads and n is not None and n > max(left, 0):
            self._pos = max(self._pos, self._end - self._start)
            return b""
        if left <= 0:
            return b""
        if n is not None and n > max(left, self._CHUNK):
            return b""
        n = left if n is None or n < 0 else min(n, left)
        rel = self._pos - self._buf_pos
        if rel >= 0 and rel + n <= len(self._buf):
            data = self._buf[rel : rel + n]
        elif n < self._CHUNK:
            self._fh.seek(self._start + self._pos)
            self._buf = self._fh.read(min(self._CHUNK, left))
            self._buf_pos = self._pos
            data = self._buf[:n]
        else:
            self._fh.seek(self._start + self._pos)
            data = self._fh.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        with memoryview(b) as view:
            n = len(view)
            data = self.read(min(n, max(self.size() - self._pos, 0)) if self._truncated_reads else n)
            view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        # the unpicklers read protocol-0 arguments with readline; read in chunks so it stays fast
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            want = 256 if size is None or size < 0 else min(256, size - len(out))
            chunk = self.read(min(want, max(self.size() - self._pos, 0)))
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                out += chunk[: nl + 1]
                self._pos -= len(chunk) - nl - 1
                break
            out += chunk
        return bytes(out)

    def byte_at(self, offset: int) -> bytes:
        """The byte at ``offset`` (relative to the start), without moving the position."""
        if offset < 0 or offset >= self.size():
            return b""
        here = self._fh.tell()
        self._fh.seek(self._start + offset)
        data = self._fh.read(1)
        self._fh.seek(here)
        return data
