"""A zip directory read the way torch's own reader reads it.

``torch.load``, ``torch.jit.load`` and ``torch.export.load`` do not use Python's :mod:`zipfile`: they use
caffe2's ``PyTorchStreamReader`` over miniz 3.0.2 (``mz_zip_reader_init`` / ``mz_zip_reader_extract_*``).
The two readers accept different archives and can see different members in the same bytes, so the
scanner reads the directory both ways and scans what each one sees. This module is miniz's side, in
Python, following its rules:

- the end-of-central-directory record is the *last* ``PK\\x05\\x06`` with at least 22 bytes after it,
  searched backwards in 4 KiB blocks over about the last 64 KiB (zipfile first tries the last 22 bytes,
  then the last occurrence anywhere, even one too close to the end to be a record);
- a ZIP64 locator right before that record points at the ZIP64 end record *by its offset* (zipfile reads
  the ZIP64 record just before the locator, whatever the locator says);
- the central directory is read from the recorded offset, never shifted by data before the archive
  (zipfile shifts every offset by ``record position - directory size - directory offset``); exactly the
  recorded number of entries is read (zipfile reads entries until the recorded size is used up), and
  bytes left after them are ignored;
- names are raw bytes: no decoding, no check of the UTF-8 flag (bit 11) and no truncation at NUL (zipfile
  decodes them as UTF-8 or cp437 and refuses the archive when a UTF-8 name does not decode); nothing
  checks "version needed to extract" (zipfile refuses anything above 6.3);
- a member's data starts after *its local header's* name and extra field; sizes, method and CRC come from
  the central directory; CRCs are not checked (torch builds miniz with
  ``MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS``); names are looked up case-insensitively (ASCII).

Nothing here decompresses anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

__all__ = ["ZipDirError", "ZipEntry", "local_data_offset", "read_central_directory", "zipfile_name"]

_EOCD_SIG, _EOCD_SIZE = 0x06054B50, 22
_LOCATOR_SIG, _LOCATOR_SIZE = 0x07064B50, 20
_EOCD64_SIG, _EOCD64_SIZE = 0x06064B50, 56
_CDH_SIG, _CDH_SIZE = 0x02014B50, 46
_LOCAL_SIG, _LOCAL_SIZE = 0x04034B50, 30
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_SEARCH_BLOCK = 4096
_FLAG_MASKED_DIRECTORY = 0x2000  # central directory encryption: miniz refuses the archive
_FLAG_UTF8 = 0x800


class ZipDirError(Exception):
    """torch's reader refuses the archive (or a member); the message says why, as miniz would."""


@dataclass(frozen=True)
class ZipEntry:
    """One central directory entry as miniz reads it (ZIP64 extra fields applied).

    ``error`` is set when miniz would refuse to read this member (its ZIP64 extra field is malformed).
    """

    index: int
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    version_needed: int
    external_attr: int
    error: str | None = None

    @property
    def name(self) -> str:
        """The name for reports: UTF-8 as torch's Python bindings decode it, undecodable bytes escaped."""
        return self.raw_name.decode("utf-8", "backslashreplace")

    @property
    def is_directory(self) -> bool:
        """miniz skips reading such a member (its bytes are left unread, not served)."""
        return self.raw_name.endswith(b"/") or bool(self.external_attr & 0x10)


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _read_at(fh: IO[bytes], offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def _find_eocd(fh: IO[bytes], size: int) -> int:
    """Offset of the end-of-central-directory record, searched like ``mz_zip_reader_locate_header_sig``."""
    if size < _EOCD_SIZE:
        raise ZipDirError("not an archive (smaller than an end-of-directory record)")
    cur = max(size - _SEARCH_BLOCK, 0)
    while True:
        block = _read_at(fh, cur, min(_SEARCH_BLOCK, size - cur))
        sig = _EOCD_SIG.to_bytes(4, "little")
        i = block.rfind(sig)
        while i >= 0:
            if size - (cur + i) >= _EOCD_SIZE:
                return cur + i
            i = block.rfind(sig, 0, i + 3)  # an earlier occurrence (they may overlap by up to 3 bytes)
        if cur == 0 or size - cur >= _U16 + _EOCD_SIZE:
            raise ZipDirError("failed finding the central directory (no end-of-directory record)")
        cur = max(cur - (_SEARCH_BLOCK - 3), 0)


def _zip64_extra(extra: bytes, wants: tuple[bool, bool, bool]) -> tuple[list[int | None], str | None]:
    """Values of the ZIP64 extended information field for (file size, compressed size, header offset),
    in that order, each only where ``wants`` says the 32-bit field is 0xFFFFFFFF (``None`` elsewhere)."""
    values: list[int | None] = [None, None, None]
    pos = 0
    while pos < len(extra):
        if len(extra) - pos < 4:
            return values, "invalid header or archive is corrupted (truncated extra field)"
        field_id, field_size = _le(extra, pos, 2), _le(extra, pos + 2, 2)
        if field_size + 4 > len(extra) - pos:
            return values, "invalid header or archive is corrupted (extra field past its end)"
        if field_id == 0x0001:
            data, at = extra[pos + 4 : pos + 4 + field_size], 0
            for k, want in enumerate(wants):
                if want:
                    if len(data) - at < 8:
                        return values, "invalid header or archive is corrupted (short ZIP64 field)"
                    values[k] = _le(data, at, 8)
                    at += 8
            return values, None
        pos += 4 + field_size
    return values, None


def _directory_extent(fh: IO[bytes], size: int) -> tuple[int, int, int, int]:
    """The central directory's entry count, disk number, size and offset, from the end-of-directory record
    (and the ZIP64 one its locator points at), checked as ``mz_zip_reader_read_central_dir`` checks them."""
    eocd_at = _find_eocd(fh, size)
    eocd = _read_at(fh, eocd_at, _EOCD_SIZE)
    if len(eocd) != _EOCD_SIZE or _le(eocd, 0, 4) != _EOCD_SIG:
        raise ZipDirError("not an archive (unreadable end-of-directory record)")
    zip64 = False
    locator = b""
    eocd64 = b""
    if eocd_at >= _LOCATOR_SIZE + _EOCD64_SIZE:
        locator = _read_at(fh, eocd_at - _LOCATOR_SIZE, _LOCATOR_SIZE)
        if len(locator) == _LOCATOR_SIZE and _le(locator, 0, 4) == _LOCATOR_SIG:
            at = _le(locator, 8, 8)
            if at > size - _EOCD64_SIZE:
                raise ZipDirError("not an archive (the ZIP64 locator points past the end)")
            eocd64 = _read_at(fh, at, _EOCD64_SIZE)
            zip64 = len(eocd64) == _EOCD64_SIZE and _le(eocd64, 0, 4) == _EOCD64_SIG
    total = _le(eocd, 10, 2)
    on_disk = _le(eocd, 8, 2)
    this_disk = _le(eocd, 4, 2)
    cdir_disk = _le(eocd, 6, 2)
    cdir_size = _le(eocd, 12, 4)
    cdir_ofs = _le(eocd, 16, 4)
    if zip64:
        if _le(eocd64, 4, 8) < _EOCD64_SIZE - 12:
            raise ZipDirError("invalid header or archive is corrupted (ZIP64 record too small)")
        if _le(locator, 16, 4) != 1:
            raise ZipDirError("unsupported multidisk archive (ZIP64 locator)")
        total, on_disk, cdir_size64 = _le(eocd64, 32, 8), _le(eocd64, 24, 8), _le(eocd64, 40, 8)
        if total > _U32 or on_disk > _U32:
            raise ZipDirError("too many files")
        if cdir_size64 > _U32:
            raise ZipDirError("unsupported central directory size")
        cdir_size = cdir_size64
        this_disk, cdir_disk, cdir_ofs = _le(eocd64, 16, 4), _le(eocd64, 20, 4), _le(eocd64, 48, 8)
    if total != on_disk:
        raise ZipDirError("unsupported multidisk archive (entry counts differ)")
    if (this_disk | cdir_disk) != 0 and (this_disk != 1 or cdir_disk != 1):
        raise ZipDirError("unsupported multidisk archive (disk numbers)")
    if cdir_size < total * _CDH_SIZE:
        raise ZipDirError("invalid header or archive is corrupted (directory smaller than its entries)")
    if cdir_ofs + cdir_size > size:
        raise ZipDirError("invalid header or archive is corrupted (directory past the end of the file)")
    return total, this_disk, cdir_size, cdir_ofs


def read_central_directory(fh: IO[bytes], size: int) -> list[ZipEntry]:
    """Every entry of the archive in ``fh`` (``size`` bytes), as ``mz_zip_reader_init`` reads them.

    Raises:
        ZipDirError: miniz refuses the archive (``torch.load`` fails with "PytorchStreamReader failed
            reading zip archive"); the message names the reason.
    """
    total, this_disk, cdir_size, cdir_ofs = _directory_extent(fh, size)
    if not total:
        return []
    cdir = _read_at(fh, cdir_ofs, cdir_size)
    if len(cdir) != cdir_size:
        raise ZipDirError("file read failed (central directory)")
    entries: list[ZipEntry] = []
    p = 0
    has_zip64_fields = False
    for index in range(total):
        left = cdir_size - p
        if left < _CDH_SIZE or _le(cdir, p, 4) != _CDH_SIG:
            raise ZipDirError(f"invalid header or archive is corrupted (entry {index}: no central header)")
        (_, _made_by, needed, flags, method, mtime, _d, crc, csize, usize, nlen, xlen, clen, disk, _ia, ext_attr, lho) = (
            struct.unpack_from("<IHHHHHHIIIHHHHHII", cdir, p)
        )
        if not has_zip64_fields and xlen and max(csize, usize, lho) == _U32:
            if _CDH_SIZE + nlen + xlen > left:
                raise ZipDirError(f"invalid header or archive is corrupted (entry {index}: extra field)")
            extra = cdir[p + _CDH_SIZE + nlen : p + _CDH_SIZE + nlen + xlen]
            pos = 0
            while pos < len(extra):
                if len(extra) - pos < 4 or _le(extra, pos + 2, 2) + 4 > len(extra) - pos:
                    raise ZipDirError(f"invalid header or archive is corrupted (entry {index}: extra field)")
                if _le(extra, pos, 2) == 0x0001:
                    has_zip64_fields = True
                    break
                pos += 4 + _le(extra, pos + 2, 2)
        # miniz reads the method as a 32-bit word (method and modification time): a stored member whose sizes
        # differ is refused only when its time field is 0 too (torch then serves the uncompressed size)
        if csize != _U32 and usize != _U32 and (((method | mtime << 16) == 0 and usize != csize) or (usize and not csize)):
            raise ZipDirError(f"invalid header or archive is corrupted (entry {index}: sizes)")
        if disk == _U16 or (disk != this_disk and disk != 1):
            raise ZipDirError(f"unsupported multidisk archive (entry {index})")
        if csize != _U32 and lho + _LOCAL_SIZE + csize > size:
            raise ZipDirError(f"invalid header or archive is corrupted (entry {index}: data past the end)")
        if flags & _FLAG_MASKED_DIRECTORY:
            raise ZipDirError("unsupported encryption (masked local headers)")
        if _CDH_SIZE + nlen + xlen + clen > left:
            raise ZipDirError(f"invalid header or archive is corrupted (entry {index} runs past the directory)")
        name = cdir[p + _CDH_SIZE : p + _CDH_SIZE + nlen]
        error = None
        if max(csize, usize, lho) == _U32:  # mz_zip_file_stat_internal, per member
            (u64, c64, o64), error = _zip64_extra(
                cdir[p + _CDH_SIZE + nlen : p + _CDH_SIZE + nlen + xlen], (usize == _U32, csize == _U32, lho == _U32)
            )
            usize, csize, lho = (usize if u64 is None else u64), (csize if c64 is None else c64), (lho if o64 is None else o64)
        entries.append(ZipEntry(index, name, flags, method, crc, csize, usize, lho, needed, ext_attr, error))
        p += _CDH_SIZE + nlen + xlen + clen
    return entries


def local_data_offset(fh: IO[bytes], size: int, header_offset: int, compress_size: int) -> tuple[int, bytes]:
    """Where a member's data starts, from its local header (as miniz's extract functions compute it), and
    the name the local header gives.

    Raises:
        ZipDirError: no local header there, or the data would run past the end of the archive.
    """
    header = _read_at(fh, header_offset, _LOCAL_SIZE) if 0 <= header_offset < size else b""
    if len(header) != _LOCAL_SIZE or _le(header, 0, 4) != _LOCAL_SIG:
        raise ZipDirError("invalid header or archive is corrupted (no local header where the directory points)")
    nlen, xlen = _le(header, 26, 2), _le(header, 28, 2)
    start = header_offset + _LOCAL_SIZE + nlen + xlen
    if start + compress_size > size:
        raise ZipDirError("invalid header or archive is corrupted (member data past the end)")
    return start, _read_at(fh, header_offset + _LOCAL_SIZE, nlen)


def zipfile_name(raw: bytes, flags: int) -> str | None:
    """The name Python's zipfile gives ``raw`` (UTF-8 when flag bit 11 is set, else cp437; cut at the
    first NUL), or ``None`` when zipfile refuses it (an undecodable UTF-8 name)."""
    try:
        name = raw.decode("utf-8") if flags & _FLAG_UTF8 else raw.decode("cp437")
    except UnicodeDecodeError:
        return None
    return name.split("\0", 1)[0]
