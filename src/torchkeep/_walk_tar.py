"""The oldest torch format: a tar read by ``torch.load`` through :mod:`tarfile`.

Every member is scanned as ``TarFile.extractfile`` serves it: members of unknown types as regular files,
hard and symbolic links as their targets; a link that leads out of the archive is a finding. torch.load
*extracts* members, so an archive holding torch's members is judged only when it is plain (regular members,
unique plain names, no sparse or extension headers, data inside the file); and since torch.load reads the
file as a pickle from byte 0 when tarfile fails, byte 0 is scanned as a pickle too.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections import Counter
from typing import IO

from torchkeep._detect import LEGACY_MAGIC
from torchkeep._pickle_vm import StreamResult, concrete
from torchkeep._walk_legacy import LegacyWalker, _element_size, _items
from torchkeep._walk_stacked import _analyze_region, _names_a_module, _only_padding, analyze_start

__all__ = ["opens_as_tar", "walk_tar"]

#: the members torch's tar writer (torch < 0.1.10) wrote; legacy_load extracts ``storages`` and ``tensors`` to a
#: temporary folder with ``tar.extract`` and reads ``pickle`` with ``tar.extractfile``
_TORCH_TAR_MEMBERS = ("sys_info", "pickle", "tensors", "storages")
_TAR_KINDS = {
    tarfile.LNKTYPE: "hard link", tarfile.SYMTYPE: "symbolic link", tarfile.DIRTYPE: "directory", tarfile.FIFOTYPE: "FIFO",
    tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "GNU sparse file",
}  # fmt: skip


def walk_tar(walker: LegacyWalker, fh: IO[bytes], place: str, *, pickle_at_start: bool = True) -> None:
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


def _tar_start_pickle(walker: LegacyWalker, fh: IO[bytes], size: int, place: str) -> None:
    """torch.load reads a file it opened as a tar as a legacy torch file (pickles from byte 0) when reading the
    archive raises a ``TarError`` (data past the end of the file, a sparse map, a bad later header, a filter
    refusing a member): there the first header's name field is a pickle. It is scanned, every finding kept,
    when it can run anything: it names a global an import can find, or it parses to a ``STOP`` (torch reads on
    only after the magic number: then the whole file is read as a legacy file). A plain name such as
    ``sys_info`` is no pickle that names anything (a ``GLOBAL`` argument runs into the header's NUL bytes)."""
    label = f"{place} read as a pickle from byte 0 (torch.load's fallback)"
    head = analyze_start(fh, size)
    names = _names_a_module(head)
    if head.end is not None and concrete(head.value) == LEGACY_MAGIC:
        walker.legacy(fh, size, label)
    elif names or head.end is not None or head.ends_somewhere:
        first = _analyze_region(fh, 0, size)
        walker._emit(label, first, 0)
        if first.end is not None:  # a pickle.load loop reads on: what is stacked after the first STOP runs too
            walker.stacked(fh, first.end, size, f"{label}, stacked after byte {first.end}", required=False)


def _tar_records(walker: LegacyWalker, fh: IO[bytes], label: str, name: str, end: int, base: int) -> None:
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
            elem = _element_size(getattr(items[2], "name", "")) if len(items) == 3 else None
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


def opens_as_tar(fh: IO[bytes]) -> bool:
    """Does ``fh`` open as an uncompressed tar, as torch.load tries first for every file that is not a zip?"""
    fh.seek(0)
    try:
        with tarfile.open(fileobj=fh, mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False
