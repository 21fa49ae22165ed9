"""Find every pickle stream a file holds, by content, and the container tricks around them.

Containers are read the way their loaders read them, and every member is scanned in one strict mode:

- zip archives (torch zip, TorchScript, ``.pt2``, ``.npz``, any zip) are read twice: the way torch's own
  reader (miniz, :mod:`torchkeep._zipdir`) locates members and the way Python's :mod:`zipfile` does
  (``np.load`` and most tools). Every member either reader sees is scanned by content whatever its name;
  any disagreement between the readers (one refuses the archive, different members, names, offsets or
  sizes) is a ``dangerous`` finding. Deflated members are inflated on demand to their end, within a
  byte and time budget (:data:`INFLATE_MAX_BYTES`, :data:`INFLATE_MAX_SECONDS`) past which the scan fails
  closed. Zips inside members are walked recursively (up to :data:`MAX_DEPTH`).
- legacy torch files: the five stacked pickles (magic, protocol, sys_info, the object, the storage keys),
  then the storage table is walked record by record (its raw bytes are not pickles).
- the oldest torch format (a tar read by ``torch.load`` through :mod:`tarfile`): every member as
  ``TarFile.extractfile`` serves it: members of unknown types as regular files, hard and symbolic links
  as their targets; a link that leads out of the archive is a finding. torch.load *extracts* members, so
  an archive holding torch's members is judged only when it is plain (regular members, unique plain
  names, no sparse or extension headers, data inside the file); and since torch.load reads the file as a
  pickle from byte 0 when tarfile fails, byte 0 is scanned as a pickle too.
- bare pickles: stacked pickles one after another; bytes after the last ``STOP`` that are not a pickle.
- ``.npy`` (alone or in an ``.npz``): the header is parsed by numpy itself, and the data is scanned as a
  pickle whenever numpy's dtype unpickles (``dtype.hasobject``, numpy 2's ``StringDType``).

One strict mode: a region a loader unpickles (``data.pkl``, a bare pickle, an object array) is scanned
with every finding kept; any other region is first asked whether it is a pickle at all. Tensor bytes
(no ``STOP`` reached, or a short accidental pickle followed by more data, and no global named) are not;
anything that names a global, or parses as pickles to its end, keeps *all* its findings.

The walker reports through :class:`Sink`; the pickle analysis itself lives in :mod:`torchkeep._pickle_vm`.
"""

from __future__ import annotations

import bisect
import importlib
import io
import os
import pickletools
import posixpath
import re
import struct
import tarfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from torchkeep._pickle_vm import RawFinding, StreamResult, analyze, concrete
from torchkeep._zipdir import ZipDirError, local_data_offset, read_central_directory, zipfile_name

__all__ = ["INFLATE_MAX_BYTES", "INFLATE_MAX_SECONDS", "MAX_DEPTH", "Sink", "analyze_start", "walk_file"]

MAX_DEPTH = 3  # zip inside zip inside zip: deeper nesting is refused, not silently skipped
# Inflating compressed members, per scanned file: past either budget the scan stops inflating and reports
# a dangerous finding (what was not inflated was not scanned). Memory stays bounded whatever the sizes.
INFLATE_MAX_BYTES = 32 << 30
INFLATE_MAX_SECONDS = 300.0
NPY_MAX_HEADER = 16 << 20  # np.load(allow_pickle=True) parses .npy headers of any size; larger are refused here
PROBE = 1 << 20  # regions not known to be pickles are first parsed within this many bytes
MAX_STACKED = 1024  # stacked pickles scanned in one region; more is refused (no writer produces that)
_ZIP_LOCAL = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_BYTES = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # LONG1 of the magic number
_PICKLE_FIRST = {op.code.encode("latin-1") for op in pickletools.opcodes}
_PICKLE_NAMES = ("data.pkl", "constants.pkl")
# what zipfile raises on a directory it cannot read (NotImplementedError: a "version needed" above 6.3)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, struct.error)
_ZIP_ENCRYPTED = 0x01 | 0x40  # traditional and strong encryption: neither reader can serve the bytes

# element sizes of legacy storage types (the storage table stores element counts)
_ELEMENT_SIZE = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
    "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QUInt8": 1, "QInt8": 1, "QInt32": 4, "QUInt4x2": 1,
    "QUInt2x4": 1, "Untyped": 1, "Typed": 1,
}  # fmt: skip


@dataclass
class Sink:
    """Collects what the walker finds.

    ``on_stream(name, result, base)`` is called for each pickle stream scanned (``base`` is added to the
    stream's offsets to report them relative to the file or member named); ``on_finding`` for container
    findings.
    """

    on_stream: Callable[[str, StreamResult, int], None]
    on_finding: Callable[[str, str, str, int | None, str], None]  # severity, rule, stream/place, offset, why
    notes: list[str] = field(default_factory=list)


class _Window(io.RawIOBase):
    """A read-only view of ``[start, end)`` of a seekable binary file; offsets are relative to ``start``."""

    _CHUNK = 1 << 16  # pickletools reads opcode by opcode: serve small reads from a buffer

    def __init__(self, fh: IO[bytes], start: int, end: int) -> None:
        self._fh, self._start, self._end, self._pos = fh, start, end, 0
        self._buf, self._buf_pos = b"", 0  # buffered bytes and their offset (relative to start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._end - self._start}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        left = self._end - self._start - self._pos
        if left <= 0:
            return b""
        if n is not None and n > max(left, self._CHUNK):
            return b""  # a length field asking past the region's end: the pickle is truncated, read nothing
        n = left if n is None or n < 0 else n
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
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        # pickletools reads protocol-0 arguments with readline; read in chunks so it stays fast.
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            chunk = self.read(256 if size is None or size < 0 else min(256, size - len(out)))
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                out += chunk[: nl + 1]
                self._pos -= len(chunk) - nl - 1
                break
            out += chunk
        return bytes(out)

    def size(self) -> int:
        return self._end - self._start


_IN_MEMORY = (1 << 20, 64 << 20)  # pickles are parsed from memory (fast C reads) if they end within these


def _analyze_region(
    fh: IO[bytes], start: int, end: int, torchscript: bool = False, looks: tuple[int, ...] = _IN_MEMORY
) -> StreamResult:
    """Analyse the pickle at ``start`` (offsets relative to it): from memory when it ends within the first
    1 MiB, then 64 MiB (``looks``); beyond that in place over the whole region. A look that fails before its
    last byte is final (more bytes cannot change it); one still valid where it ends (a long constant, many
    opcodes) goes on to the next."""
    for size in looks:
        chunk_end = min(end, start + size)
        fh.seek(start)
        data = fh.read(chunk_end - start)
        probe = io.BytesIO(data)
        res = analyze(probe, torchscript=torchscript)
        if res.end is not None or chunk_end >= end or probe.tell() < len(data):
            return _frame_readings(res, data, torchscript)
    # (a stream this long is not re-read for frames here: the pure-Python pass of analyze() refuses a frame
    # crossing, which makes it a parser-differential finding already)
    return analyze(_Window(fh, start, end), torchscript=torchscript)  # type: ignore[arg-type]


def _frame_crossing(data: bytes) -> tuple[int | None, bytes]:
    """Offset of the first opcode whose bytes run past the end of the FRAME it starts in (``None`` if none),
    and the stream as a reader that ignores frames reads it (FRAME opcodes removed).

    pickle's writer never crosses a frame's end, and the C unpickler then reads differently depending on
    the stream it is given: ``pickle.loads(bytes)`` and files with ``peek()`` (``pickle.load(open(...))``,
    ``np.load``, torch's legacy loader) read on across the frame's end, a ``BytesIO`` (torch.load's zip
    records) or an unbuffered file drops the rest of the frame and reads on after it. (The pure-Python
    unpickler refuses such a stream.)"""
    reader = io.BytesIO(data)
    frame_end = None
    crossing = None
    frames: list[int] = []
    try:
        for op, arg, pos in pickletools.genops(reader):
            end = reader.tell()
            if frame_end is not None and pos is not None and pos < frame_end < end and crossing is None:
                crossing = pos
            if op.name == "FRAME" and pos is not None:
                frame_end = end + int(arg or 0)
                frames.append(pos)
            elif frame_end is not None and pos is not None and pos >= frame_end:
                frame_end = None
    except Exception:  # the stream is malformed further on: what came before was checked
        pass
    kept, at = [], 0
    for pos in frames:
        kept.append(data[at:pos])
        at = pos + 9  # FRAME and its 8-byte length
    kept.append(data[at:])
    return crossing, b"".join(kept)


def _frame_readings(res: StreamResult, data: bytes, torchscript: bool) -> StreamResult:
    """``res`` (the stream as the unpicklers read it from a ``BytesIO``) when no opcode crosses a FRAME's end;
    otherwise a dangerous ``frame-differential`` finding is added and the reading that ignores frames is
    scanned too (its findings, imports and embedded files are merged in). Streams are checked when they
    declare protocol 4 or 5 (the ones with frames), when they do not parse to their end, or when analyze()
    saw its unpicklers disagree (the pure-Python one refuses a frame crossing that the C one reads)."""
    suspect = (
        data[:2] in (b"\x80\x04", b"\x80\x05")
        or res.end is None
        or any(f.rule == "parser-differential" for f in res.findings)
    )
    if not suspect or b"\x95" not in data:
        return res
    at, unframed = _frame_crossing(data)
    if at is None:
        return res
    other = analyze(io.BytesIO(unframed), torchscript=torchscript)
    seen = {(f.rule, f.module, f.name, f.why) for f in res.findings}
    res.findings.extend(f for f in other.findings if (f.rule, f.module, f.name, f.why) not in seen)
    res.imports.extend(i for i in other.imports if i not in res.imports)
    res.nested.extend(other.nested)
    res.calls.extend(other.calls)
    res.findings.append(
        RawFinding(
            "dangerous", "frame-differential", "", "", at,
            "an opcode runs past the end of its FRAME (pickle's writer never does that): the C unpickler reads on "
            "across it from bytes or a file with peek() (pickle.load(open(...)), np.load, torch's legacy loader) "
            "and skips the rest of the frame from a BytesIO (torch.load's zip records); both readings are scanned "
            "(offsets of the first one)",
        )
    )  # fmt: skip
    return res


def analyze_start(fh: IO[bytes], size: int) -> StreamResult:
    """The pickle at the start of a file of ``size`` bytes, for files that may be anything: one bounded look
    (no 64 MiB read for a length field that happens to ask for gigabytes), then in place if still valid."""
    return _analyze_region(fh, 0, size, looks=(PROBE,))


def _looks_like_pickle_start(head: bytes) -> bool:
    if not head:
        return False
    if head[:1] == b"\x80":
        return len(head) > 1 and head[1] <= 5
    return head[:1] in _PICKLE_FIRST


def _only_padding(fh: IO[bytes], start: int, end: int, pad: bytes = b" \t\r\n\x00") -> bool:
    """True if ``[start, end)`` is empty or only ``pad`` bytes (whitespace/NUL: harmless padding)."""
    fh.seek(start)
    left = end - start
    while left > 0:
        chunk = fh.read(min(left, 1 << 16))
        if not chunk:
            break
        if chunk.strip(pad):
            return False
        left -= len(chunk)
    return True


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


class _Inflated(io.RawIOBase):
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

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

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


def _importable(module: str) -> bool:
    return all(part.isidentifier() for part in module.split("."))


def _can_run_code(res: StreamResult) -> bool:
    """Could a loader of this stream call anything? Only through a global it can import: a stream that
    names none cannot (text such as TorchScript source "names" modules like ``lass Net(Module):`` that no
    import finds; EXT opcodes import only what the copyreg registry holds). A stream that stops short
    must also have a dangerous finding: a loader runs its opcodes only up to where it fails."""
    importable = any(_importable(m) for m, _ in res.imports) or any(f.module and _importable(f.module) for f in res.findings)
    return importable and (res.end is not None or any(f.severity == "dangerous" for f in res.findings))


@dataclass(frozen=True)
class _ZipMember:
    """A zip member as one reader locates it."""

    name: str  # as that reader names it
    raw_name: bytes  # the bytes the central directory holds
    header_offset: int
    compress_size: int
    file_size: int
    method: int
    flags: int
    crc: int
    data_start: int | None = None
    local_name: bytes | None = None
    error: str | None = None  # why that reader cannot serve it
    unserved: bool = False  # torch's reader takes it for a directory and serves uninitialized memory instead

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.header_offset, self.compress_size, self.file_size, self.method)

    @property
    def lookup(self) -> bytes:
        """What torch's lookup compares: the raw name, ASCII letters lowercased (miniz's MZ_TOLOWER)."""
        return self.raw_name.lower()


def _torch_view(fh: IO[bytes], size: int) -> list[_ZipMember]:
    """Members as torch's reader (miniz) locates them; raises ZipDirError where it refuses the archive."""
    out = []
    for e in read_central_directory(fh, size):
        data_start, local_name, error = None, None, e.error
        if error is None:
            try:
                data_start, local_name = local_data_offset(fh, size, e.header_offset, e.compress_size)
            except ZipDirError as exc:
                error = str(exc)
        out.append(
            _ZipMember(
                e.name, e.raw_name, e.header_offset, e.compress_size, e.file_size, e.method, e.flags,
                e.crc, data_start, local_name, error, e.is_directory and e.file_size > 0,
            )
        )  # fmt: skip
    return out


def _zipfile_view(fh: IO[bytes], size: int) -> list[_ZipMember]:
    """Members as Python's zipfile locates them (offsets shifted by data it thinks precedes the archive)."""
    fh.seek(0)
    infos = zipfile.ZipFile(fh).infolist()
    out = []
    for i in infos:
        data_start, local_name, error = None, None, None
        try:
            data_start, local_name = local_data_offset(fh, size, i.header_offset, 0)
        except ZipDirError as exc:
            error = str(exc)
        raw = i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437", "surrogateescape")
        out.append(
            _ZipMember(
                i.filename, raw, i.header_offset, i.compress_size, i.file_size, i.compress_type,
                i.flag_bits, i.CRC, data_start, local_name, error,
            )
        )  # fmt: skip
    return out


def _read_views(fh: IO[bytes]) -> tuple[list[_ZipMember] | str, list[_ZipMember] | str, int]:
    """Both readers' members (or why each refuses the archive) and the archive's size."""
    fh.seek(0, 2)
    size = fh.tell()
    views: list[list[_ZipMember] | str] = []
    for reader in (_torch_view, _zipfile_view):
        try:
            views.append(reader(fh, size))
        except ZipDirError as exc:
            views.append(str(exc))
        except _ZIP_ERRORS as exc:
            views.append(f"{type(exc).__name__}: {exc}")
    return views[0], views[1], size


def _listing(members: list[_ZipMember]) -> str:
    names = [repr(m.name) for m in members[:5]]
    return ", ".join(names) + (f" and {len(members) - 5} more" if len(members) > 5 else "")


class Walker:
    """Walks one file; see the module docstring."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.blob_depth = 0
        self.budget = _Budget(INFLATE_MAX_BYTES, INFLATE_MAX_SECONDS)

    def _emit(self, label: str, res: StreamResult, base: int) -> None:
        """Report a stream, then scan the files it embeds (``torch.storage._load_from_bytes``)."""
        self.sink.on_stream(label, res, base)
        for offset, data in res.nested:
            place = f"{label} @ {base + offset}: embedded torch file"
            if self.blob_depth >= MAX_DEPTH:
                self.sink.on_finding("dangerous", "zip-depth", place, None, f"embedded files nested deeper than {MAX_DEPTH}")
                continue
            self.blob_depth += 1
            try:
                self.blob(data, place)
            finally:
                self.blob_depth -= 1

    def blob(self, data: bytes, place: str) -> None:
        """Scan an in-memory file (a torch zip, a legacy torch file or a bare pickle)."""
        fh = io.BytesIO(data)
        if data.startswith(_ZIP_LOCAL):
            self.zip_archive(fh, place + "!/", self.blob_depth, torchscript_root=False)
        elif data[2:14] == _LEGACY_MAGIC_BYTES:
            self.legacy(fh, len(data), place)
        else:
            self.stacked(fh, 0, len(data), place, required=True)

    # -- pickles ---------------------------------------------------------------------------------
    def stacked(
        self,
        fh: IO[bytes],
        start: int,
        end: int,
        name: str,
        *,
        required: bool,
        torchscript: bool = False,
        base: int = 0,
        what: str = "pickle",
    ) -> list[StreamResult] | None:
        """Scan the pickles stacked in ``[start, end)`` of ``fh``; every stream reported keeps all its findings.

        ``required``: a loader unpickles the region, so it is reported whatever it holds (a malformed
        stream, or bytes after ``STOP`` that are not a pickle, are findings). Otherwise the region may be
        anything (tensor bytes, text) and is reported, in full, when it is a pickle that can run code
        (:func:`_can_run_code`), or a clean pickle (parsed to its end, no finding). Anything else cannot
        call anything: ``None`` is returned.
        """
        found: list[tuple[str, StreamResult, int]] = []
        tail: list[tuple[str, str, str, int, str]] = []  # container findings: severity, rule, place, offset, why
        must_report = required
        clean = True  # every stream parsed, without findings, and only padding follows the last one
        pos = start
        index = 0
        while pos < end:
            if index >= MAX_STACKED:
                tail.append(("dangerous", "too-many-streams", name, base + pos,
                             f"more than {MAX_STACKED} stacked pickles; the rest ({end - pos} bytes) was not scanned"))  # fmt: skip
                must_report = True  # fail closed: what follows was not looked at
                break
            # A region not known to be a pickle gets one bounded look first (tensor bytes can start with a
            # length field that asks for gigabytes), then is followed in place if still valid there.
            res = _analyze_region(fh, pos, end, torchscript, _IN_MEMORY if required else (PROBE,))
            label = name if index == 0 else f"{name} (stacked {what} {index + 1} at byte {base + pos})"
            must_report = must_report or _can_run_code(res)
            clean = clean and res.end is not None and not res.findings
            if res.end is None:
                if index == 0:
                    found.append((label, res, base + pos))
                    tail.append(("error", "malformed-pickle", label, base + pos,
                                 f"malformed pickle: {res.error} (a loader runs every opcode before this point)"))  # fmt: skip
                else:
                    if res.findings:  # a load-all loop runs what these bytes hold before they fail
                        found.append((label, res, base + pos))
                    tail.append(("dangerous", "trailing-data", name, base + pos,
                                 f"{end - pos} bytes after the pickle's STOP are not a pickle: loaders ignore them, "
                                 "scanners that stop at the first error miss what follows; writers never add them"))  # fmt: skip
                break
            found.append((label, res, base + pos))
            pos += res.end
            index += 1
            if _only_padding(fh, pos, end):
                break
        if not (must_report or clean):
            return None  # not a pickle that can run anything (tensor bytes, text, a short accidental pickle)
        for label, res, at in found:
            self._emit(label, res, at)
        for severity, rule, place, offset, why in tail:
            self.sink.on_finding(severity, rule, place, offset, why)
        return [res for _, res, _ in found]

    # -- zip archives ----------------------------------------------------------------------------
    def zip_archive(self, fh: IO[bytes], prefix: str, depth: int, *, torchscript_root: bool) -> None:
        """Scan every member of the zip in ``fh`` that torch's reader or Python's zipfile would serve."""
        place = prefix or "archive"
        torch_view, py_view, size = _read_views(fh)
        if isinstance(torch_view, str) and isinstance(py_view, str):
            self.sink.on_finding(
                "error", "zip-unreadable", place, None,
                f"zip directory unreadable by torch's reader ({torch_view}) and by zipfile ({py_view})",
            )  # fmt: skip
            return
        members = self._compare_views(torch_view, py_view, place)
        torchscript = torchscript_root
        for view in (torch_view, py_view):
            if not isinstance(view, str):
                self._duplicates(view, prefix)
        first = min((m.header_offset for m, _ in members), default=0)
        if first > 0:
            fh.seek(0)
            starts_as_zip = fh.read(4) == _ZIP_LOCAL
            self.sink.on_finding(
                "dangerous", "zip-prepended", place, 0,
                f"{first} bytes before the first member the directory lists"
                + (" (a local entry no directory lists)" if starts_as_zip
                   else ": torch.load reads such a file as a legacy pickle, zip readers as an archive"),
            )  # fmt: skip
            self.stacked(fh, 0, first, f"{prefix}<{first} bytes before the archive>", required=False)
        for m, view_note in members:
            self.zip_member(fh, size, m, prefix + m.name + view_note, depth, torchscript)

    def _compare_views(
        self, torch_view: list[_ZipMember] | str, py_view: list[_ZipMember] | str, place: str
    ) -> list[tuple[_ZipMember, str]]:
        """Report every way the two readers disagree; return the members to scan (each once) with a note
        naming the reader when only one of them sees it."""
        if isinstance(torch_view, str) or isinstance(py_view, str):
            refused, reason, other, seen = (
                ("torch's zip reader (torch.load)", torch_view, "Python's zipfile", py_view)
                if isinstance(torch_view, str)
                else ("Python's zipfile (np.load, most tools and scanners)", py_view, "torch's zip reader", torch_view)
            )
            assert not isinstance(seen, str)
            self.sink.on_finding(
                "dangerous", "zip-reader-mismatch", place, None,
                f"{refused} refuses this archive ({reason}) while {other} reads {len(seen)} member(s): "
                f"{_listing(seen)}; a reader that gives up sees nothing of what the other loads",
            )  # fmt: skip
            return [(m, "") for m in seen]
        by_key = {m.key: m for m in torch_view}
        py_keys = {m.key for m in py_view}
        only_torch = [m for m in torch_view if m.key not in py_keys]
        only_py = [m for m in py_view if m.key not in by_key]
        renamed = [
            (by_key[m.key], m) for m in py_view
            if m.key in by_key and zipfile_name(by_key[m.key].raw_name, by_key[m.key].flags) != m.name
        ]  # fmt: skip
        problems = []
        if only_torch:
            problems.append(f"only torch's reader sees {_listing(only_torch)}")
        if only_py:
            problems.append(f"only Python's zipfile sees {_listing(only_py)}")
        for t, p in renamed:
            problems.append(f"torch's reader names {t.name!r} what zipfile names {p.name!r}")
        if problems:
            self.sink.on_finding(
                "dangerous", "zip-reader-mismatch", place, None,
                "torch's zip reader and Python's zipfile read different archives from these bytes: "
                + "; ".join(problems),
            )  # fmt: skip
        members = [(m, " [torch's reader only]" if m in only_torch else "") for m in torch_view]
        return members + [(m, " [zipfile only]") for m in only_py]

    def _duplicates(self, view: list[_ZipMember], prefix: str) -> None:
        # Exact duplicates, and pickles whose names differ only in case: torch looks names up ignoring case
        # (a binary search picks one of them), zipfile and most tools take the last exact match.
        seen = Counter(m.lookup if m.lookup.endswith(b".pkl") else m.raw_name for m in view)
        for key, count in seen.items():
            if count > 1:
                dup = next(m.name for m in view if key in (m.lookup, m.raw_name))
                self.sink.on_finding(
                    "dangerous", "zip-duplicate", prefix + dup, None,
                    f"the archive holds {count} members named {dup!r} (torch compares names ignoring case): "
                    "different readers pick different ones",
                )  # fmt: skip

    def zip_member(self, fh: IO[bytes], size: int, m: _ZipMember, place: str, depth: int, torchscript: bool) -> None:
        """Scan one member's bytes by content, as the reader that locates it this way would serve them."""
        if m.error is not None or m.data_start is None:
            self.sink.on_finding("dangerous", "zip-bad-header", place, m.header_offset, m.error or "no local header")
            return
        if m.unserved:
            self.sink.on_finding(
                "dangerous", "zip-directory-data", place, m.header_offset,
                f"torch's reader takes this member for a directory (its name ends in '/' or its DOS directory "
                f"attribute is set) and hands the loader {m.file_size} bytes of uninitialized memory instead of "
                "its data: what torch.load would read is not in the file (its bytes are scanned as zipfile serves them)",
            )  # fmt: skip
        if m.flags & _ZIP_ENCRYPTED:
            self.sink.on_finding("dangerous", "zip-encrypted", place, None,
                                 "an encrypted member cannot be scanned; no model writer encrypts members")  # fmt: skip
            return
        if m.local_name is not None and m.local_name != m.raw_name:
            local = m.local_name.decode("utf-8", "backslashreplace")
            self.sink.on_finding(
                "dangerous", "zip-name-mismatch", place, m.header_offset,
                f"the local header names this member {local!r}, the central directory {m.name!r}: "
                "readers disagree on what the file holds",
            )  # fmt: skip
        inflater: _Inflated | None = None
        if m.method == zipfile.ZIP_STORED:
            if m.compress_size != m.file_size:
                self.sink.on_finding(
                    "dangerous", "zip-size-mismatch", place, None,
                    f"a stored member of {m.compress_size} bytes that the directory says holds {m.file_size}: torch's "
                    "reader serves the second number of bytes, zipfile the smaller one (both are scanned)",
                )  # fmt: skip
            # torch's reader serves file_size bytes from the data start; zipfile a prefix of them
            length = min(max(m.compress_size, m.file_size), max(size - m.data_start, 0))
            region: IO[bytes] = _Window(fh, m.data_start, m.data_start + length)  # type: ignore[assignment]
        elif m.method == zipfile.ZIP_DEFLATED:
            csize = min(m.compress_size, max(size - m.data_start, 0))
            inflater = _Inflated(fh, m.data_start, csize, m.file_size, self.budget)
            length = m.file_size
            region = _Window(inflater, 0, length)  # type: ignore[arg-type,assignment]
        else:
            self.sink.on_finding(
                "dangerous", "zip-method", place, None,
                f"compression method {m.method} cannot be scanned; no model writer uses it",
            )  # fmt: skip
            return
        region.seek(0)
        head = region.read(16)
        region.seek(0)
        whole = False  # was the member read as something a loader reads to its end (a pickle, an archive)?
        if head.startswith(_ZIP_LOCAL):
            self.nested_zip(region, place, depth)
            whole = True
        elif head.startswith(_NPY_MAGIC):
            whole = self.npy(region, 0, length, place)
        elif _looks_like_pickle_start(head):
            base = m.name.rsplit("/", 1)[-1].lower()  # torch's zip reader matches names case-insensitively
            required = base in _PICKLE_NAMES or base.endswith((".pkl", ".pickle"))
            whole = self.stacked(region, 0, length, place, required=required, torchscript=torchscript) is not None
        if inflater is not None:
            self._check_inflated(inflater, m, place, whole)
        elif whole:
            self._check_crc(region, length, m.crc, place)

    def _check_inflated(self, inflater: _Inflated, m: _ZipMember, place: str, whole: bool) -> None:
        """After scanning a deflated member: fail closed past the budget; size and CRC as loaders check them."""
        if whole:
            inflater.finish()
        if self.budget.exceeded:
            self.sink.on_finding(
                "dangerous", "zip-inflate-budget", place, None,
                f"{self.budget.exceeded}: this member was not inflated to its end, so what follows was not scanned "
                f"(torch.load and np.load inflate it all); budget: torchkeep._streams.INFLATE_MAX_BYTES / INFLATE_MAX_SECONDS",
            )  # fmt: skip
            return
        if inflater.error is not None:
            self.sink.on_finding(
                "dangerous", "zip-corrupt", place, inflater.stop_at,
                f"{inflater.error} after {inflater.stop_at} bytes: what inflates before was scanned; torch's "
                "inflater (miniz) does not stop at every error zlib reports and serves what it inflated, so the "
                "rest of this member may be read by torch.load but was not scanned",
            )  # fmt: skip
            return
        if not whole:
            return
        if inflater.stop_at != m.file_size:
            self.sink.on_finding(
                "dangerous", "zip-size-mismatch", place, None,
                f"the member inflates to {inflater.stop_at} bytes, the directory says {m.file_size}: torch's reader "
                "refuses it, zipfile serves its first bytes",
            )  # fmt: skip
        elif inflater.complete and inflater.crc != m.crc:
            self._bad_crc(place, inflater.crc, m.crc)

    def _check_crc(self, region: IO[bytes], length: int, expected: int, place: str) -> None:
        region.seek(0)
        crc = 0
        left = length
        while left > 0:
            chunk = region.read(min(left, 1 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        if crc != expected:
            self._bad_crc(place, crc, expected)

    def _bad_crc(self, place: str, crc: int, expected: int) -> None:
        self.sink.on_finding(
            "dangerous", "zip-bad-crc", place, None,
            f"the member's CRC-32 is {crc:08x}, the archive says {expected:08x}: it was edited after writing "
            "(torch.load ignores CRCs; scanners that check them give up on the file)",
        )  # fmt: skip

    def nested_zip(self, region: IO[bytes], place: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.sink.on_finding(
                "dangerous", "zip-depth", place, None,
                f"an archive nested {depth + 1} levels deep was not scanned (limit {MAX_DEPTH})",
            )  # fmt: skip
            return
        self.sink.notes.append(f"{place}: a zip archive inside the archive, scanned")
        self.zip_archive(region, place + "!/", depth + 1, torchscript_root=_is_torchscript(region))

    # -- numpy -------------------------------------------------------------------------------------
    def npy(self, fh: IO[bytes], start: int, end: int, place: str) -> bool:
        """Judge a ``.npy`` header the way ``np.load(allow_pickle=True)`` does; scan the data as a pickle
        when numpy would unpickle it. Returns whether the data was scanned as a pickle."""
        try:
            dtype, data_start = _npy_header(_Window(fh, start, end))  # type: ignore[arg-type]
        except _NpyHeaderError as exc:
            self.sink.on_finding(exc.severity, "npy-header", place, start, str(exc))
            if exc.data_start is not None and start + exc.data_start < end:
                # no numpy here reads past this header; scan what follows it anyway, as a candidate
                self.stacked(fh, start + exc.data_start, end, f"{place} (after an unreadable header)", required=False)
            return False
        if not _npy_unpickles(dtype):
            return False
        self.stacked(fh, start + data_start, end, f"{place} (object array pickle)", required=True)
        return True

    # -- legacy torch --------------------------------------------------------------------------------
    def legacy(self, fh: IO[bytes], size: int, place: str) -> None:
        labels = ["magic number", "protocol version", "sys_info", "object", "storage keys"]
        pos = 0
        results: list[StreamResult] = []
        for label in labels:
            res = _analyze_region(fh, pos, size)
            self._emit(f"{place}: {label} pickle", res, pos)
            if res.end is None:
                self.sink.on_finding(
                    "error", "malformed-pickle", f"{place}: {label} pickle", pos, f"malformed pickle: {res.error}"
                )
                return
            results.append(res)
            pos += res.end
        if concrete(results[0].value) != _LEGACY_MAGIC:
            self.sink.on_finding("dangerous", "legacy-magic", place, 0, "the first pickle is not torch's magic number")
        self._storage_table(fh, pos, size, place, results[3], results[4])

    def _storage_table(self, fh: IO[bytes], pos: int, size: int, place: str, obj: StreamResult, keys_res: StreamResult) -> None:
        keys = concrete(keys_res.value)
        sizes: dict[str, int] = {}
        for pid in obj.pids:
            items = _items(pid)
            if not items or len(items) < 5:
                continue
            stype = getattr(items[1], "name", "")
            key = concrete(items[2])
            elem = _ELEMENT_SIZE.get(stype.replace("Storage", ""))
            if isinstance(key, str) and elem:
                sizes[key] = elem
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self.sink.on_finding("dangerous", "legacy-keys", place, pos, "the storage keys pickle is not a list of strings")
            return
        for key in keys:
            fh.seek(pos)
            raw = fh.read(8)
            elem = sizes.get(key)
            if len(raw) < 8 or elem is None:
                self.sink.notes.append(f"{place}: storage table not walked past key {key!r}; stopped after the keys list")
                return
            (numel,) = struct.unpack("<q", raw)
            pos += 8 + numel * elem
            if numel < 0 or pos > size:
                self.sink.on_finding("error", "legacy-truncated", place, pos, f"storage {key!r} runs past the end of the file")
                return
        if pos < size and not _only_padding(fh, pos, size):
            self.sink.notes.append(f"{place}: {size - pos} bytes after the storage table (torch.load never reads them)")
            self.stacked(fh, pos, size, f"{place}: bytes after the storage table", required=False)


def _items(value: Any) -> tuple[Any, ...] | list[Any]:
    """The items of an abstract tuple, whichever way the pickle engine represents one."""
    if isinstance(value, tuple):
        return value
    items = getattr(value, "items", None)
    return items if isinstance(items, list) else ()


# -- numpy ---------------------------------------------------------------------------------------------
class _NpyHeaderError(Exception):
    """numpy cannot read the header (``error``), or this scanner will not parse it (``dangerous``)."""

    def __init__(self, why: str, data_start: int | None, severity: str = "error") -> None:
        super().__init__(why)
        self.data_start, self.severity = data_start, severity


def _numpy_header_reader() -> Callable[..., Any] | None:
    """numpy's own header parser (private, the exact one np.load calls), where this numpy has it."""
    for module in ("numpy.lib._format_impl", "numpy.lib.format"):
        try:
            reader = getattr(importlib.import_module(module), "_read_array_header", None)
        except ImportError:
            continue
        if reader is not None:
            return reader  # type: ignore[no-any-return]
    return None


def _npy_header(view: IO[bytes]) -> tuple[Any, int]:
    """``(dtype, data offset)`` of the .npy in ``view``, parsed as ``np.load(allow_pickle=True)`` parses it."""
    from numpy.lib import format as npformat

    magic = view.read(8)
    if len(magic) < 8 or not magic.startswith(_NPY_MAGIC):
        raise _NpyHeaderError("not a .npy header", None)
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise _NpyHeaderError(f".npy format version {version[0]}.{version[1]}: numpy reads only 1.0, 2.0 and 3.0", None)
    width = 2 if version == (1, 0) else 4
    raw = view.read(width)
    if len(raw) < width:
        raise _NpyHeaderError("the .npy header is truncated", None)
    hlen = int.from_bytes(raw, "little")
    data_start = 8 + width + hlen
    if hlen > NPY_MAX_HEADER:
        raise _NpyHeaderError(
            f"the .npy header claims {hlen} bytes, more than the {_mib(NPY_MAX_HEADER)} this scanner parses; "
            "np.load(allow_pickle=True) parses headers of any size, so its dtype was not judged",
            data_start,
            "dangerous",
        )
    view.seek(8)
    reader = _numpy_header_reader()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about Python 2 headers it has to filter
            if reader is not None:
                _, _, dtype = reader(view, version, max_header_size=2**64)
            elif version == (1, 0):
                _, _, dtype = npformat.read_array_header_1_0(view, max_header_size=2**64)
            else:  # 2.0 (3.0 differs only by a UTF-8 header, refused below when it is not ASCII)
                _, _, dtype = npformat.read_array_header_2_0(view, max_header_size=2**64)
    except Exception as exc:  # whatever numpy raises, np.load raises too
        raise _NpyHeaderError(f"numpy cannot read the .npy header ({type(exc).__name__}: {exc})"[:300], data_start) from None
    if reader is None and version == (3, 0):
        view.seek(12)
        if not view.read(hlen).isascii():
            raise _NpyHeaderError("a .npy 3.0 header in UTF-8 this numpy cannot parse", data_start, "dangerous")
    return dtype, data_start


def _npy_unpickles(dtype: Any) -> bool:
    """Does np.load(allow_pickle=True) unpickle data of this dtype? numpy's own answer is ``hasobject``
    (object fields at any depth, and numpy 2's variable-width ``StringDType``, whose data it pickles);
    the StringDType test stands in case a numpy version reports it otherwise."""
    if dtype.hasobject:
        return True
    import numpy as np

    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    if string_dtype is not None and isinstance(dtype, string_dtype):
        return True
    if dtype.subdtype is not None:
        return _npy_unpickles(dtype.subdtype[0])
    return any(_npy_unpickles(dtype.fields[n][0]) for n in dtype.names or ())


# -- tar (the oldest torch format) ----------------------------------------------------------------------
#: the members torch's tar writer (torch < 0.1.10) wrote; legacy_load extracts ``storages`` and ``tensors`` to a
#: temporary folder with ``tar.extract`` and reads ``pickle`` with ``tar.extractfile``
_TORCH_TAR_MEMBERS = ("sys_info", "pickle", "tensors", "storages")
_TAR_KINDS = {
    tarfile.LNKTYPE: "hard link", tarfile.SYMTYPE: "symbolic link", tarfile.DIRTYPE: "directory", tarfile.FIFOTYPE: "FIFO",
    tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "GNU sparse file",
}  # fmt: skip


def _walk_tar(walker: Walker, fh: IO[bytes], place: str, *, pickle_at_start: bool = True) -> None:
    """The oldest torch format (tar with sys_info, pickle, storages, tensors members), still read by torch.load
    through tarfile: every member is scanned as ``TarFile.extractfile`` serves it (a member of an unknown type
    as a regular file, a hard or symbolic link as the member it leads to). torch.load *extracts* ``storages``
    and ``tensors``, which writes other bytes than extractfile serves unless the archive is plain
    (:func:`_tar_not_plain`): an archive holding torch's members that is not plain is a finding. Where reading
    the archive fails with a ``TarError``, torch.load reads the file as a pickle from byte 0
    (:func:`_tar_start_pickle`; skipped with ``pickle_at_start=False`` where the caller scanned byte 0)."""
    size = fh.seek(0, 2)
    if pickle_at_start:
        _tar_start_pickle(walker, fh, size, place)
    fh.seek(0)
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 (closed below, after the members are walked)
        members = tf.getmembers()  # headers only, nothing is extracted
    except (tarfile.TarError, OSError, ValueError) as exc:
        walker.sink.on_finding("error", "tar-unreadable", place, None, f"tar directory unreadable: {exc}")
        return
    with tf:
        if any(posixpath.basename(posixpath.normpath(m.name)) in _TORCH_TAR_MEMBERS for m in members):
            for member, why in _tar_not_plain(tf, members, fh, size):
                walker.sink.on_finding(
                    "dangerous", "tar-not-plain", member if member.isprintable() else ascii(member), None,
                    f"{why}: torch.load extracts 'storages' and 'tensors' with tar.extract and reads the files it "
                    "wrote, and extraction and this scan (tarfile's extractfile) could see different bytes; torch's "
                    "tar writer only wrote plain regular members (fail closed)",
                )  # fmt: skip
        for m in members:
            if m.isdir() or m.isfifo() or m.ischr() or m.isblk():
                continue  # no content: extractfile serves nothing
            label = m.name if not (m.islnk() or m.issym()) else f"{m.name} (link to {m.linkname})"
            try:
                served = tf.extractfile(m)
            except (KeyError, RecursionError, tarfile.TarError) as exc:
                kind = "symbolic link" if m.issym() else "hard link"
                walker.sink.on_finding(
                    "dangerous", "tar-link", label, m.offset,
                    f"a {kind} to {m.linkname!r}, which the archive does not hold ({type(exc).__name__}): "
                    "torch.load's tarfile extracts it as a link to a file outside the archive, which this scan cannot see",
                )  # fmt: skip
                continue
            if served is None:
                continue
            with served:
                size = served.seek(0, 2)
                served.seek(0)
                base = getattr(getattr(served, "raw", None), "offset", 0)  # report file offsets
                try:
                    if m.name in ("storages", "tensors"):
                        _tar_records(walker, served, label, m.name, size, base)
                    else:
                        walker.stacked(served, 0, size, label, required=m.name in ("pickle", "sys_info"), base=base)
                except tarfile.TarError as exc:  # tar.extract fails there too: torch.load then reads byte 0
                    walker.sink.on_finding("error", "tar-unreadable", label, m.offset, f"member data unreadable: {exc}")


def _tar_not_plain(tf: tarfile.TarFile, members: list[tarfile.TarInfo], fh: IO[bytes], size: int) -> list[tuple[str, str]]:
    """(member, why) for everything in the archive that torch's tar writer did not write: only then does
    ``tar.extract`` write the bytes ``extractfile`` serves. Plain is: one 512-byte header per member (no pax,
    GNU long-name or sparse headers, which tarfile versions parse differently), regular files only (no links,
    directories, devices, FIFOs or unknown types, served and extracted differently), unique names of one
    path component (``getmember`` takes the last of duplicates, links resolve by name), data inside the
    file, and only NUL bytes after the end of the archive."""
    out: list[tuple[str, str]] = []
    if tf.pax_headers:
        out.append(("archive", f"a global pax header ({', '.join(sorted(tf.pax_headers))[:80]})"))
    counts = Counter(m.name for m in members)
    for m in members:
        if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            out.append((m.name, f"a {_TAR_KINDS.get(m.type, f'member of type {m.type!r}')}" + (f" to {m.linkname!r}" if m.linkname else "")))
        if m.sparse is not None or any(k.startswith("GNU.sparse") for k in m.pax_headers):
            out.append((m.name, "a sparse member (extraction writes its chunks at their offsets, extractfile serves them in order)"))
        elif m.pax_headers or m.offset_data != m.offset + tarfile.BLOCKSIZE:
            out.append((m.name, "a member with extension headers (pax or GNU long names)"))
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", m.name):
            out.append((m.name, f"the member name {m.name!r} is not one plain file name"))
        if counts[m.name] > 1:
            out.append((m.name, f"{counts[m.name]} members named {m.name!r} (tar.extract takes the last one)"))
        if m.isreg() and m.offset_data + m.size > size:
            out.append((m.name, f"its data runs {m.offset_data + m.size - size} bytes past the end of the file"))
    end = min(tf.offset, size)
    if not _only_padding(fh, end, size, pad=b"\x00"):
        out.append(("archive", f"bytes other than NUL after the end of the archive (offset {end}), which tarfile versions read differently"))
    return list(dict.fromkeys(out))


def _tar_start_pickle(walker: Walker, fh: IO[bytes], size: int, place: str) -> None:
    """torch.load reads a file it opened as a tar as a legacy torch file (pickles from byte 0) when reading the
    archive raises a ``TarError`` (data past the end of the file, a sparse map, a bad later header, a filter
    refusing a member): there the first header's name field is a pickle. It is scanned, every finding kept,
    when it can run anything: it names a global an import can find, or it parses to a ``STOP`` (torch reads on
    only after the magic number: then the whole file is read as a legacy file). A plain name such as
    ``sys_info`` is no pickle that names anything (a ``GLOBAL`` argument runs into the header's NUL bytes)."""
    label = f"{place} read as a pickle from byte 0 (torch.load's fallback)"
    head = analyze_start(fh, size)
    names = any(_importable(m) for m, _ in head.imports) or any(f.module and _importable(f.module) for f in head.findings)
    if head.end is not None and concrete(head.value) == _LEGACY_MAGIC:
        walker.legacy(fh, size, label)
    elif names or head.end is not None or head.ends_somewhere:
        first = _analyze_region(fh, 0, size)
        walker._emit(label, first, 0)
        if first.end is not None:  # a pickle.load loop reads on: what is stacked after the first STOP runs too
            walker.stacked(fh, first.end, size, f"{label}, stacked after byte {first.end}", required=False)


def _tar_records(walker: Walker, fh: IO[bytes], label: str, name: str, end: int, base: int) -> None:
    """A tar file's ``storages`` / ``tensors`` member (served as ``fh``, ``end`` bytes, ``base`` its offset in
    the file) as torch.load reads it: a count pickle, then per record an args pickle followed by raw bytes (a
    storage's int64 numel and data; a tensor's int32 ndim, 4 bytes, sizes, strides and offset), then for
    storages a views pickle. Every pickle is scanned, raw bytes skipped."""
    pos = 0

    def one(what: str) -> StreamResult | None:
        nonlocal pos
        res = _analyze_region(fh, pos, end)
        walker._emit(f"{label}: {what} pickle", res, base + pos)
        if res.end is None:
            walker.sink.on_finding(
                "error", "malformed-pickle", f"{label}: {what} pickle", base + pos, f"malformed pickle: {res.error}"
            )
            return None
        pos += res.end
        return res

    def raw(n: int, what: str) -> int | None:
        """Skip ``n`` raw bytes; their value as a little-endian integer when ``n`` <= 8 (else 0)."""
        nonlocal pos
        if n < 0 or pos + n > end:
            walker.sink.on_finding("error", "legacy-truncated", label, base + pos, f"{what} runs past the end of the member")
            return None
        fh.seek(pos)
        value = int.from_bytes(fh.read(n), "little", signed=True) if n <= 8 else 0
        pos += n
        return value

    count_res = one("count")
    count = concrete(count_res.value) if count_res else None
    if not isinstance(count, int) or isinstance(count, bool):
        if count_res is not None and pos < end and not _only_padding(fh, pos, end):
            walker.stacked(fh, pos, end, f"{label}: bytes after the count", required=False, base=base)
        return
    for i in range(count):
        args = one(f"record {i + 1}")
        if args is None:
            return
        if name == "storages":
            items = _items(args.value)
            elem = _ELEMENT_SIZE.get(getattr(items[2], "name", "").replace("Storage", "")) if len(items) == 3 else None
            if elem is None:
                walker.sink.notes.append(f"{label}: records not walked past record {i + 1} (unknown storage type)")
                walker.stacked(fh, pos, end, f"{label}: bytes after record {i + 1}", required=False, base=base)
                return
            numel = raw(8, "a storage")
            if numel is None or raw(numel * elem, "a storage") is None:
                return
        else:
            ndim = raw(4, "a tensor's geometry")
            if ndim is None or raw(4 + 16 * ndim + 8, "a tensor's geometry") is None:
                return
    if name == "storages" and one("storage views") is None:
        return
    if pos < end and not _only_padding(fh, pos, end):
        walker.sink.notes.append(f"{label}: {end - pos} bytes after the records (torch.load never reads them)")
        walker.stacked(fh, pos, end, f"{label}: bytes after the records", required=False, base=base)


def _opens_as_tar(fh: IO[bytes]) -> bool:
    """Does ``fh`` open as an uncompressed tar, as torch.load tries first for every file that is not a zip?"""
    fh.seek(0)
    try:
        with tarfile.open(fileobj=fh, mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False


def _zip_names(fh: IO[bytes]) -> list[str]:
    """Member names as either zip reader sees them (NUL cuts a name short in torch's record listing too)."""
    torch_view, py_view, _ = _read_views(fh)
    fh.seek(0)
    return [m.name.split("\0", 1)[0] for view in (torch_view, py_view) if not isinstance(view, str) for m in view]


def _is_torchscript(fh: IO[bytes]) -> bool:
    names = _zip_names(fh)
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or n.startswith("code/") for n in names)


def _zip_start(fh: IO[bytes]) -> int:
    """Offset of the first member of the zip archive at the end of ``fh`` (either reader), or -1 if none."""
    torch_view, py_view, _ = _read_views(fh)
    offsets = [m.header_offset for view in (torch_view, py_view) if not isinstance(view, str) for m in view]
    return min(offsets, default=-1)


def walk_file(path: os.PathLike[str] | str, fmt: str, sink: Sink) -> None:
    """Scan every pickle stream of ``path`` (detected format ``fmt``) into ``sink``."""
    walker = Walker(sink)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fmt in ("torch-zip", "torchscript", "torch-export", "numpy-npz", "zip"):
            walker.zip_archive(fh, "", 0, torchscript_root=fmt == "torchscript")
        elif fmt == "torch-legacy":
            walker.legacy(fh, size, "legacy file")
        elif fmt == "numpy":
            walker.npy(fh, 0, size, "array")
        elif fmt == "tar":
            _walk_tar(walker, fh, "tar")
        elif fmt == "pickle":
            results = walker.stacked(fh, 0, size, "pickle", required=True) or []
            parsed = sum(r.end or 0 for r in results)
            # A pickle glued in front of a zip: each reader sees one of them. (A zip embedded *inside*
            # the pickle's bytes, as plain pickle.dumps(tensor) writes, is scanned as a nested file.)
            if _zip_start(fh) >= parsed > 0:
                sink.on_finding(
                    "dangerous",
                    "polyglot",
                    "file",
                    None,
                    "the file is both a pickle and a zip archive: torch.load and unzip see different contents",
                )
                walker.zip_archive(fh, "zip part: ", 0, torchscript_root=False)
        if fmt not in ("torch-zip", "torchscript", "torch-export", "numpy-npz", "zip", "tar") and _opens_as_tar(fh):
            sink.on_finding(
                "dangerous",
                "polyglot",
                "file",
                0,
                f"the file is both {fmt} and a tar archive: torch.load opens any non-zip file as the old tar format first",
            )
            # (byte 0 of a pickle or legacy file was scanned above, as torch.load's fallback reads it)
            _walk_tar(walker, fh, "tar part", pickle_at_start=fmt not in ("pickle", "torch-legacy"))
        if fmt in ("safetensors", "onnx", "numpy"):
            # They hold no pickles, but torch.load reads any file that is not a zip as a legacy pickle, and a
            # loader that calls pickle.load in a loop reads the pickles stacked after the first one: a file
            # whose bytes from byte 0 are also pickles that import code is a polyglot. (A first pickle that
            # imports nothing does not clear the ones stacked after it: fuzz finding 4a2d840b64acaad6.)
            head = analyze_start(fh, size)
            if head.imports or head.end is not None:
                results = walker.stacked(fh, 0, size, "pickle", required=False)
                if head.imports or any(r.imports for r in results or ()):
                    sink.on_finding(
                        "dangerous",
                        "polyglot",
                        "file",
                        0,
                        f"the file is both {fmt} and a pickle that imports code: torch.load (or a pickle.load loop) "
                        "unpickles it",
                    )
                if results is None and head.imports:
                    walker._emit("pickle", head, 0)  # one look was not enough for the candidate probe either
