"""Deflated zip members, inflated on demand to their end within a per-file budget.

torch's reader and ``np.load`` inflate a member to its end whatever its size; the scanner follows them as far
as its budget (:class:`_Budget`) allows and fails closed past it. Memory stays bounded whatever a member
inflates to (:class:`_Inflated`).
"""

from __future__ import annotations

import bisect
import time
import zlib
from typing import IO, Any

from torchkeep._region import SizedReader


def _mib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


class _Budget:
    """What inflating may cost in one scan (bytes produced, seconds spent); past it, inflating stops and
    the members concerned get a dangerous finding: never a silent cap."""

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        self.bytes, self.seconds = 0, 0.0
        self.exceeded: str | None = None

    def charge(self, n: int, seconds: float) -> None:
        self.bytes += n
        self.seconds += seconds
        if self.exceeded is None and self.bytes > self.max_bytes:
            self.exceeded = f"inflating this file's compressed members needs more than {_mib(self.max_bytes)}"
        elif self.exceeded is None and self.seconds > self.max_seconds:
            self.exceeded = f"inflating this file's compressed members takes more than {self.max_seconds:g} s"


class _Inflated(SizedReader):
    """A deflated zip member as a seekable file of its declared size, inflated on demand within a budget.

    The first :attr:`_HEAD` inflated bytes stay in memory; beyond them only the last chunk does, and a
    read behind the inflater resumes from the nearest checkpoint (a copy of the inflater every
    :attr:`_STEP` bytes), so memory stays bounded whatever the member inflates to. ``finish`` inflates to
    the end of the stream for the size and CRC checks, keeping nothing.
    """

    _HEAD = 64 << 20
    _STEP = 64 << 20
    _OUT = 1 << 20  # output per inflate call
    _IN = 1 << 16  # compressed bytes read at a time (a corrupt stream is replayed over at most this many)

    def __init__(self, fh: IO[bytes], start: int, csize: int, size: int, budget: _Budget) -> None:
        self._fh, self._start, self._csize, self._size, self._budget = fh, start, csize, size, budget
        self._d = zlib.decompressobj(-15)
        self._fed = 0  # compressed bytes given to the inflater
        self._made = 0  # output offset the inflater is at
        self._checkpoints: list[tuple[int, Any, int]] = [(0, self._d.copy(), 0)]  # (output offset, inflater, fed)
        self._head = bytearray()
        self._chunk, self._chunk_at = b"", 0
        self._pos = 0
        self.stop_at: int | None = None  # where the stream ends (its end block, a corrupt block, the data's end)
        self.error: str | None = None  # why it ends there, when not at its end-of-stream block
        self.crc, self._crc_at = 0, 0

    def size(self) -> int:
        return self._size

    def _produce(self) -> bytes:
        """The next chunk of output; ``b""`` at the stream's end, on a corrupt stream or past the budget."""
        if (self.stop_at is not None and self._made >= self.stop_at) or self._budget.exceeded:
            return b""
        t0 = time.monotonic()
        out = b""
        d = self._d
        while not out:
            if d.eof:  # (zlib may keep input after the end block in unconsumed_tail too)
                self.stop_at = self._made
                break
            if d.unconsumed_tail:
                src = d.unconsumed_tail
            elif self._fed >= self._csize:
                self.error = self.error or "the deflate stream stops before its end-of-stream block"
                self.stop_at = self._made
                break
            else:
                self._fh.seek(self._start + self._fed)
                src = self._fh.read(min(self._IN, self._csize - self._fed))
                if not src:
                    self.error = self.error or "the member's compressed data is cut short"
                    self.stop_at = self._made
                    break
                self._fed += len(src)
            before = d.copy()
            try:
                out = d.decompress(src, self._OUT)
            except zlib.error as exc:
                # zlib drops what the failing call inflated: replay it byte by byte to keep what comes before
                # the error (a loader runs the opcodes there)
                out = b"".join(self._until_error(before, src))
                self.error = self.error or f"cannot inflate the member: {exc}"
                self.stop_at = self._made + len(out)
                break
        self._budget.charge(len(out), time.monotonic() - t0)
        if out:
            if self._made == self._crc_at:
                self.crc = zlib.crc32(out, self.crc)
                self._crc_at += len(out)
            if self._made == len(self._head) < self._HEAD:
                self._head += out[: self._HEAD - self._made]
            self._chunk, self._chunk_at = out, self._made
            self._made += len(out)
            if self._made >= self._checkpoints[-1][0] + self._STEP:
                self._checkpoints.append((self._made, d.copy(), self._fed))
        return out

    @staticmethod
    def _until_error(d: Any, src: bytes) -> list[bytes]:
        parts = []
        for i in range(len(src)):
            try:
                parts.append(d.decompress(src[i : i + 1]))
            except zlib.error:
                break
        return parts

    def read(self, n: int | None = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._pos + n, self._size)
        parts: list[bytes] = []
        while self._pos < end:
            p = self._pos
            if p < len(self._head):
                piece = bytes(self._head[p:end])
            elif self._chunk_at <= p < self._chunk_at + len(self._chunk):
                piece = self._chunk[p - self._chunk_at : end - self._chunk_at]
            else:
                if p < self._made:  # behind the inflater: resume from the last checkpoint before p
                    i = bisect.bisect_right([c[0] for c in self._checkpoints], p) - 1
                    at, saved, fed = self._checkpoints[i]
                    self._d, self._fed, self._made = saved.copy(), fed, at
                    self._chunk, self._chunk_at = b"", at
                if not self._produce():
                    break
                continue
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Inflate to the end of the stream (or the budget); nothing more is kept."""
        i = bisect.bisect_right([c[0] for c in self._checkpoints], self._crc_at) - 1
        at, saved, fed = self._checkpoints[i]
        if at > self._made:  # resume near where the CRC stopped, not from an earlier point
            self._d, self._fed, self._made = saved.copy(), fed, at
        while self._produce():
            pass

    @property
    def complete(self) -> bool:
        """The stream was inflated to its end-of-stream block."""
        return self.stop_at is not None and self.error is None and self._crc_at == self.stop_at
