"""Find every pickle stream a file holds, by content, and the container tricks around them.

Containers walked (nothing is decompressed beyond the pickles themselves, tensor bytes are skipped):

- zip archives (torch zip, TorchScript, ``.pt2``, ``.npz``, any zip): every member is peeked at; members
  that parse as a pickle are scanned whatever their name; members that are zips are walked recursively
  (up to :data:`MAX_DEPTH`); ``.npy`` members are checked for object arrays. The central directory is
  compared with the local headers (name mismatch, duplicates, bad CRC, data before the archive).
- legacy torch files: the five stacked pickles (magic, protocol, sys_info, the object, the storage keys),
  then the storage table is walked record by record (its raw bytes are not pickles).
- bare pickles: stacked pickles one after another; bytes after the last ``STOP`` that are not a pickle.
- ``.npy``: the pickle after the header of an object (``O``) array.

The walker reports through :class:`Sink`; the pickle analysis itself lives in :mod:`torchkeep._pickle_vm`.
"""

from __future__ import annotations

import ast
import io
import os
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from torchkeep._pickle_vm import StreamResult, analyze, concrete

__all__ = ["MAX_DEPTH", "Sink", "analyze_start", "walk_file"]

MAX_DEPTH = 3  # zip inside zip inside zip: deeper nesting is refused, not silently skipped
MAX_INFLATE = 512 << 20  # a compressed member is inflated for scanning only up to this size
PROBE = 1 << 20  # members not named like pickles are first parsed within this many bytes
MAX_STACKED = 1024  # stacked pickles scanned in one region; more is refused (no writer produces that)
_ZIP_LOCAL = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_BYTES = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # LONG1 of the magic number
_PICKLE_FIRST = {op.code.encode("latin-1") for op in __import__("pickletools").opcodes}
_PICKLE_NAMES = ("data.pkl", "constants.pkl")
# what zipfile raises on a directory it cannot read (NotImplementedError: a "version needed" above 6.3)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError)

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
            return res
    return analyze(_Window(fh, start, end), torchscript=torchscript)  # type: ignore[arg-type]


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


def _only_padding(fh: IO[bytes], start: int, end: int) -> bool:
    """True if ``[start, end)`` is empty or only whitespace/NUL bytes (harmless padding)."""
    fh.seek(start)
    left = end - start
    while left > 0:
        chunk = fh.read(min(left, 1 << 16))
        if not chunk:
            break
        if chunk.strip(b" \t\r\n\x00"):
            return False
        left -= len(chunk)
    return True


class Walker:
    """Walks one file; see the module docstring."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.blob_depth = 0

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
        """Scan stacked pickles in ``[start, end)`` of ``fh``.

        ``required``: a loader unpickles the first stream, so a malformed stream or bytes after ``STOP``
        that are not a pickle are findings. Otherwise the region is only a candidate (a zip member no
        loader unpickles, possibly tensor bytes): only the imports it names are findings (structural
        oddities of a few random bytes that happen to parse are not), and ``None`` is returned when it is
        not a pickle.
        """
        results: list[StreamResult] = []
        pos = start
        index = 0
        while pos < end:
            if index >= MAX_STACKED:
                self.sink.on_finding(
                    "dangerous",
                    "too-many-streams",
                    name,
                    base + pos,
                    f"more than {MAX_STACKED} stacked pickles; the rest ({end - pos} bytes) was not scanned",
                )
                return results
            probing = index == 0 and not required and end - pos > PROBE
            # Tensor bytes can start with an opcode whose length field asks for gigabytes: a member that is
            # not known to be a pickle is parsed within PROBE bytes first, fully only if it is clearly one.
            res = _analyze_region(fh, pos, pos + PROBE if probing else end, torchscript)
            if probing and res.end is None and res.opcodes >= 256:
                res = _analyze_region(fh, pos, end, torchscript)
            label = name if index == 0 else f"{name} (stacked {what} {index + 1} at byte {base + pos})"
            if not required:
                # Keep what a candidate imports; drop structural findings (EXT1 + STOP is 3 random bytes).
                res.findings[:] = [f for f in res.findings if f.rule in ("dangerous-import", "custom-class")]
            if res.end is None:
                dangerous = [f for f in res.findings if f.rule == "dangerous-import"]
                if not required:
                    if dangerous and index == 0:
                        res.findings[:] = dangerous
                        self._emit(label, res, base + pos)
                        return [res]
                    return results if index else None
                if index > 0:
                    # Not another pickle: garbage after STOP (keep deny-listed imports it happens to name).
                    self.sink.on_finding(
                        "dangerous",
                        "trailing-data",
                        name,
                        base + pos,
                        f"{end - pos} bytes after the pickle's STOP are not a pickle: loaders ignore them, "
                        "scanners that stop at the first error miss what follows; writers never add them",
                    )
                    if dangerous:
                        res.findings[:] = dangerous
                        self._emit(label, res, base + pos)
                    return results
                self._emit(label, res, base + pos)
                self.sink.on_finding(
                    "error",
                    "malformed-pickle",
                    label,
                    base + pos,
                    f"malformed pickle: {res.error} (a loader runs every opcode before this point)",
                )
                results.append(res)
                return results
            # A candidate that is a tiny valid pickle followed by more bytes is tensor data by chance.
            if index == 0 and not required and not res.findings and not _only_padding(fh, pos + res.end, end):
                return None
            self._emit(label, res, base + pos)
            results.append(res)
            pos += res.end
            index += 1
            if _only_padding(fh, pos, end):
                break
        return results

    # -- zip archives ----------------------------------------------------------------------------
    def zip_archive(self, fh: IO[bytes], prefix: str, depth: int, *, torchscript_root: bool) -> None:
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as exc:
            self.sink.on_finding("error", "zip-unreadable", prefix or "archive", None, f"zip directory unreadable: {exc}")
            return
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for dup, count in Counter(names).items():
            if count > 1:
                self.sink.on_finding(
                    "dangerous",
                    "zip-duplicate",
                    prefix + dup,
                    None,
                    f"the archive holds {count} members named {dup!r}: different readers pick different ones",
                )
        if infos:
            first = min(i.header_offset for i in infos)
            if first > 0:
                self.sink.on_finding(
                    "dangerous",
                    "zip-prepended",
                    prefix or "archive",
                    0,
                    f"{first} bytes before the first zip member: torch.load reads such a file as a legacy pickle",
                )
                self.stacked(fh, 0, first, f"{prefix}<{first} bytes before the archive>", required=False)
        for info in infos:
            self.zip_member(fh, info, prefix, depth, torchscript_root)

    def zip_member(self, fh: IO[bytes], info: zipfile.ZipInfo, prefix: str, depth: int, torchscript: bool) -> None:
        place = prefix + info.filename
        header = b""
        if info.header_offset >= 0:  # zipfile shifts offsets by the data it thinks precedes the archive
            fh.seek(info.header_offset)
            header = fh.read(30)
        if len(header) < 30 or header[:4] != _ZIP_LOCAL:
            self.sink.on_finding("dangerous", "zip-bad-header", place, info.header_offset, "no local header where the directory points")
            return
        (_, _, _, flags, _method, _, _, _crc, _csize, _usize, nlen, xlen) = struct.unpack("<4s2B4HL2L2H", header)
        raw_name = fh.read(nlen)
        local_name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if local_name != info.filename:
            self.sink.on_finding(
                "dangerous",
                "zip-name-mismatch",
                place,
                info.header_offset,
                f"the local header names this member {local_name!r}, the central directory {info.filename!r}: "
                "readers disagree on what the file holds",
            )
        data_start = info.header_offset + 30 + nlen + xlen
        size = info.compress_size
        if info.compress_type == zipfile.ZIP_STORED:
            region: IO[bytes] = _Window(fh, data_start, data_start + size)  # type: ignore[assignment]
            length = size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            fh.seek(data_start)
            inflater = zlib.decompressobj(-15)
            try:
                data = inflater.decompress(fh.read(size), MAX_INFLATE)
            except zlib.error as exc:
                self.sink.on_finding("error", "zip-corrupt", place, None, f"cannot inflate the member: {exc}")
                return
            if inflater.unconsumed_tail:
                self.sink.on_finding(
                    "error",
                    "zip-too-large",
                    place,
                    None,
                    f"the member inflates to more than {MAX_INFLATE >> 20} MiB; only that much was scanned",
                )
            region, length = io.BytesIO(data), len(data)
        else:
            self.sink.on_finding(
                "dangerous",
                "zip-method",
                place,
                None,
                f"compression method {info.compress_type} cannot be scanned; no model writer uses it",
            )
            return
        region.seek(0)
        head = region.read(16)
        if head.startswith(_ZIP_LOCAL):
            self.nested_zip(region, length, place, depth)
        elif head.startswith(_NPY_MAGIC):
            self.npy(region, 0, length, place)
        elif _looks_like_pickle_start(head):
            base = info.filename.rsplit("/", 1)[-1].lower()  # torch's zip reader matches names case-insensitively
            required = base in _PICKLE_NAMES or base.endswith((".pkl", ".pickle"))
            results = self.stacked(region, 0, length, place, required=required, torchscript=torchscript)
            if results is not None:
                self._check_crc(region, length, info, place)

    def _check_crc(self, region: IO[bytes], length: int, info: zipfile.ZipInfo, place: str) -> None:
        region.seek(0)
        crc = 0
        left = length
        while left > 0:
            chunk = region.read(min(left, 1 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        if crc != info.CRC:
            self.sink.on_finding(
                "dangerous",
                "zip-bad-crc",
                place,
                None,
                f"the member's CRC-32 is {crc:08x}, the archive says {info.CRC:08x}: it was edited after writing "
                "(torch.load ignores CRCs; scanners that check them give up on the file)",
            )

    def nested_zip(self, region: IO[bytes], length: int, place: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.sink.on_finding(
                "dangerous",
                "zip-depth",
                place,
                None,
                f"an archive nested {depth + 1} levels deep was not scanned (limit {MAX_DEPTH})",
            )
            return
        self.sink.notes.append(f"{place}: a zip archive inside the archive, scanned")
        # Stored members are read in place (a .pt2 may hold a whole weights file); inflated ones are in memory.
        inner = region if isinstance(region, _Window) else io.BytesIO(region.getvalue())  # type: ignore[attr-defined]
        inner.seek(0)
        torchscript = _is_torchscript(inner)
        self.zip_archive(inner, place + "!/", depth + 1, torchscript_root=torchscript)

    # -- numpy -------------------------------------------------------------------------------------
    def npy(self, fh: IO[bytes], start: int, end: int, place: str) -> None:
        fh.seek(start)
        pre = fh.read(10)
        if len(pre) < 10 or not pre.startswith(_NPY_MAGIC):
            self.sink.on_finding("error", "npy-header", place, start, "not a .npy header")
            return
        if pre[6] == 1:
            hlen, header_start = int.from_bytes(pre[8:10], "little"), start + 10
        else:
            fh.seek(start + 8)
            raw = fh.read(4)
            if len(raw) < 4:
                self.sink.on_finding("error", "npy-header", place, start, "the .npy header is truncated")
                return
            hlen, header_start = int.from_bytes(raw, "little"), start + 12
        if hlen > 1 << 20:  # numpy itself refuses headers over 10 kB by default
            self.sink.on_finding("error", "npy-header", place, start, f"the .npy header claims {hlen} bytes")
            return
        fh.seek(header_start)
        text = fh.read(hlen).decode("latin-1", "replace")
        try:
            header = ast.literal_eval(text.strip())  # a dict literal: literal_eval evaluates no code
            descr = header["descr"]
        except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
            self.sink.on_finding("error", "npy-header", place, start, "the .npy header is not a readable dict")
            return
        if "O" in repr(descr) or _npy_has_object(descr):
            self.stacked(
                fh, header_start + hlen, end, f"{place} (object array pickle)", required=True, base=0
            )

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
            items = getattr(pid, "items", None)
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


def _npy_has_object(descr: Any) -> bool:
    """Whether numpy's ``descr_to_dtype`` could make an object dtype of ``descr`` (np.load then unpickles the
    data): a type string naming ``object`` / ``O``, in a sub-array tuple or a field, however it is nested."""
    if isinstance(descr, str):
        return "O" in descr or "object" in descr.lower()
    if isinstance(descr, tuple):
        return not descr or _npy_has_object(descr[0])
    try:
        return any(len(field) not in (2, 3) or _npy_has_object(field[1]) for field in descr)
    except (TypeError, IndexError, KeyError):
        return True  # numpy cannot read it either; scanning the data costs nothing


def _walk_tar(walker: Walker, fh: IO[bytes], place: str) -> None:
    """The oldest torch format (tar with sys_info, pickle, storages, tensors members), still read by torch.load."""
    fh.seek(0)
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tf:
            members = tf.getmembers()  # headers only, nothing is extracted
    except (tarfile.TarError, OSError, ValueError) as exc:
        walker.sink.on_finding("error", "tar-unreadable", place, None, f"tar directory unreadable: {exc}")
        return
    for m in members:
        if not m.isfile():
            continue
        start, end = m.offset_data, m.offset_data + m.size
        if m.name in ("storages", "tensors"):
            _tar_records(walker, fh, m.name, start, end)
        else:
            walker.stacked(fh, start, end, m.name, required=m.name in ("pickle", "sys_info"))


def _tar_records(walker: Walker, fh: IO[bytes], name: str, start: int, end: int) -> None:
    """A tar file's ``storages`` / ``tensors`` member as torch.load reads it: a count pickle, then per record
    an args pickle followed by raw bytes (a storage's int64 numel and data; a tensor's int32 ndim, 4 bytes,
    sizes, strides and offset), then for storages a views pickle. Every pickle is scanned, raw bytes skipped."""
    pos = start

    def one(label: str) -> StreamResult | None:
        nonlocal pos
        res = _analyze_region(fh, pos, end)
        walker._emit(f"{name}: {label} pickle", res, pos)
        if res.end is None:
            walker.sink.on_finding("error", "malformed-pickle", f"{name}: {label} pickle", pos, f"malformed pickle: {res.error}")
            return None
        pos += res.end
        return res

    def raw(n: int, what: str) -> int | None:
        """Skip ``n`` raw bytes; their value as a little-endian integer when ``n`` <= 8 (else 0)."""
        nonlocal pos
        if n < 0 or pos + n > end:
            walker.sink.on_finding("error", "legacy-truncated", name, pos, f"{what} runs past the end of the member")
            return None
        fh.seek(pos)
        value = int.from_bytes(fh.read(n), "little", signed=True) if n <= 8 else 0
        pos += n
        return value

    count_res = one("count")
    count = concrete(count_res.value) if count_res else None
    if not isinstance(count, int) or isinstance(count, bool):
        return
    for i in range(count):
        args = one(f"record {i + 1}")
        if args is None:
            return
        if name == "storages":
            items = getattr(args.value, "items", [])
            elem = _ELEMENT_SIZE.get(getattr(items[2], "name", "").replace("Storage", "")) if len(items) == 3 else None
            if elem is None:
                walker.sink.notes.append(f"{name}: records not walked past record {i + 1} (unknown storage type)")
                walker.stacked(fh, pos, end, f"{name}: bytes after record {i + 1}", required=False)
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
        walker.sink.notes.append(f"{name}: {end - pos} bytes after the records (torch.load never reads them)")
        walker.stacked(fh, pos, end, f"{name}: bytes after the records", required=False)


def _opens_as_tar(fh: IO[bytes]) -> bool:
    """Does ``fh`` open as an uncompressed tar, as torch.load tries first for every file that is not a zip?"""
    fh.seek(0)
    try:
        with tarfile.open(fileobj=fh, mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False


def _is_torchscript(fh: IO[bytes]) -> bool:
    try:
        names = zipfile.ZipFile(fh).namelist()
    except _ZIP_ERRORS:
        return False
    fh.seek(0)
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or n.startswith("code/") for n in names)


def _zip_start(fh: IO[bytes]) -> int:
    """Offset of the first member of the zip archive at the end of ``fh``, or -1 if there is none."""
    try:
        infos = zipfile.ZipFile(fh).infolist()
    except _ZIP_ERRORS:
        return -1
    return min((i.header_offset for i in infos), default=-1)


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
            _walk_tar(walker, fh, "tar part")
        if fmt in ("safetensors", "onnx"):
            # They hold no pickles, but torch.load reads any file that is not a zip as a legacy pickle: a
            # file whose first bytes are also a pickle that imports something is a polyglot.
            head = analyze_start(fh, size)
            if head.imports:
                sink.on_finding(
                    "dangerous",
                    "polyglot",
                    "file",
                    0,
                    f"the file is both {fmt} and a pickle that imports code: torch.load unpickles it",
                )
                if walker.stacked(fh, 0, size, "pickle", required=False) is None:
                    walker._emit("pickle", head, 0)  # one look was not enough for the candidate probe either
