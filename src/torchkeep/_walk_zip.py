"""Zip archives (torch zip, TorchScript, ``.pt2``, ``.npz``, any zip), read the way their loaders read them.

Each archive is read twice: the way torch's own reader (miniz, :mod:`torchkeep._zipdir`) locates members
and the way Python's :mod:`zipfile` does (``np.load`` and most tools). Every member either reader sees is
scanned by content whatever its name; any disagreement between the readers (one refuses the archive,
different members, names, offsets or sizes) is a ``dangerous`` finding. Deflated members are inflated on
demand to their end, within the scan's budget (:mod:`torchkeep._inflate`), past which the scan fails
closed. Zips inside members are walked recursively (up to :data:`torchkeep._walk_stacked.MAX_DEPTH`).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import IO

from torchkeep._detect import NPY_MAGIC, ZIP_LOCAL, is_flatbuffer_module
from torchkeep._inflate import _Budget, _Inflated
from torchkeep._region import Region
from torchkeep._walk_npy import NpyWalker
from torchkeep._walk_stacked import MAX_DEPTH, _looks_like_pickle_start
from torchkeep._zipdir import ZipDirError, local_data_offset, read_central_directory, zipfile_name

__all__ = ["FLATBUFFER_WHY", "ZipWalker", "zip_names", "zip_start"]

_PICKLE_NAMES = ("data.pkl", "constants.pkl")
# torch.export.load hands every member under data/aotinductor/<model>/ to AOTIModelPackageLoader, which dlopen()s
# the compiled library it finds there (pt2_archive/_package.py: load_pt2): native code no scan can judge
_AOTI_DIR = "data/aotinductor/"
FLATBUFFER_WHY = ("bytes 4..8 say 'PTMF': torch.jit.load (and torch.load, for a zip it passes on) reads this as a "
                  "TorchScript flatbuffer module and runs its methods; torchkeep cannot read that format to judge it")
# what zipfile raises on a directory it cannot read (NotImplementedError: a "version needed" above 6.3)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, struct.error)
_ZIP_ENCRYPTED = 0x01 | 0x40  # traditional and strong encryption: neither reader can serve the bytes


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


class ZipWalker(NpyWalker):
    """Walks zip archives (and the ``.npy`` files, pickles and archives their members hold)."""

    budget: _Budget  # what inflating may still cost in this scan

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
            starts_as_zip = fh.read(4) == ZIP_LOCAL
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
            region: IO[bytes] = Region(fh, m.data_start, m.data_start + length)  # type: ignore[assignment]
        elif m.method == zipfile.ZIP_DEFLATED:
            csize = min(m.compress_size, max(size - m.data_start, 0))
            inflater = _Inflated(fh, m.data_start, csize, m.file_size, self.budget)
            length = m.file_size
            region = Region(inflater, 0, length)  # type: ignore[arg-type,assignment]
        else:
            self.sink.on_finding(
                "dangerous", "zip-method", place, None,
                f"compression method {m.method} cannot be scanned; no model writer uses it",
            )  # fmt: skip
            return
        region.seek(0)
        head = region.read(16)
        region.seek(0)
        if m.name.split("/", 1)[-1].lower().startswith(_AOTI_DIR):
            self.sink.on_finding(
                "dangerous", "native-code", place, None,
                "a member of an AOTInductor package: torch.export.load extracts the compiled library of "
                "data/aotinductor/ and loads it (dlopen), running native code no scan can judge",
            )  # fmt: skip
        if is_flatbuffer_module(head):
            self.sink.on_finding("dangerous", "torchscript-flatbuffer", place, None, FLATBUFFER_WHY)
        whole = False  # was the member read as something a loader reads to its end (a pickle, an archive)?
        if head.startswith(ZIP_LOCAL):
            self.nested_zip(region, place, depth)
            whole = True
        elif head.startswith(NPY_MAGIC):
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
        names = zip_names(region)
        self.zip_archive(region, place + "!/", depth + 1, torchscript_root=_is_torchscript(names))
        self.nested_torchscript(names, place)

    def nested_torchscript(self, names: list[str], place: str) -> None:
        """An archive inside the file that torch.load would pass to torch.jit.load (it holds a ``constants.pkl``
        record: serialization.py's ``_is_torchscript_zip``), as it does for the bytes of
        ``torch.storage._load_from_bytes`` and a ``.pt2``'s pickled weights and sample inputs: its TorchScript
        methods run. Their code is judged only in a file of its own; no writer nests TorchScript."""
        if any(n.lower().endswith("constants.pkl") for n in names):  # names: zip_names of the archive
            self.sink.on_finding(
                "dangerous", "nested-torchscript", place, None,
                "a TorchScript archive inside the file: torch.load hands it to torch.jit.load, which runs its "
                "methods; its code is not judged here (extract it and scan it on its own)",
            )  # fmt: skip


def zip_names(fh: IO[bytes]) -> list[str]:
    """Member names as either zip reader sees them (NUL cuts a name short in torch's record listing too)."""
    torch_view, py_view, _ = _read_views(fh)
    fh.seek(0)
    return [m.name.split("\0", 1)[0] for view in (torch_view, py_view) if not isinstance(view, str) for m in view]


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or n.startswith("code/") for n in names)


def zip_start(fh: IO[bytes]) -> int:
    """Offset of the first member of the zip archive at the end of ``fh`` (either reader), or -1 if none."""
    torch_view, py_view, _ = _read_views(fh)
    offsets = [m.header_offset for view in (torch_view, py_view) if not isinstance(view, str) for m in view]
    return min(offsets, default=-1)
