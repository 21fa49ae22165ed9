"""Compressed files that joblib.load (and others) inflate before unpickling: zlib, gzip, bz2, xz, lzma, lz4
and joblib's old "ZF" files. They are inflated (bounded by :data:`MAX_DECOMPRESSED`) and what comes out is
scanned as the loader would unpickle it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchkeep._detect import detect
from torchkeep._scan_report import Finding, _Collector
from torchkeep._streams import Walker

#: first bytes -> codec of the compressed files joblib.load reads transparently: joblib's own prefixes
#: (joblib.compressor: a file that starts with b"x" is inflated as zlib, b"]\x00" as lzma...) and "ZF",
#: joblib < 0.9.3's zlib files, which joblib.load still inflates and unpickles
_COMPRESSED = ((b"ZF", "joblib-zf"), (b"\x1f\x8b", "gzip"), (b"BZ", "bz2"), (b"\xfd7zXZ", "xz"),
               (b"\x5d\x00", "lzma"), (b"\x04\x22\x4d\x18", "lz4"), (b"x", "zlib"))
#: magics short enough to start files that are not compressed at all
_WEAK_MAGIC = {"zlib", "lzma", "bz2"}
#: a joblib "ZF" file: b"ZF", the inflated length in hex padded to 19 characters, (joblib <= 0.8.4) one space,
#: then a zlib stream (joblib.numpy_pickle_compat.read_zfile)
_ZF_HEADER = 2 + 19
#: a compressed file is inflated for scanning up to this many bytes; beyond, it is not called safe
MAX_DECOMPRESSED = 1 << 30


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(_ZF_HEADER + 1)
    codec = next((codec for magic, codec in _COMPRESSED if head.startswith(magic)), None)
    if codec == "joblib-zf" and _zf_data_start(head) is None:
        return None  # joblib.load fails on the length before it inflates or unpickles anything
    return codec


def _zf_data_start(head: bytes) -> int | None:
    """Where the zlib stream of a joblib "ZF" file starts (``head``: its first bytes), as read_zfile finds it;
    ``None`` where read_zfile fails on the length field (``int(field, 16)``) before reading on."""
    try:
        int(head[2:_ZF_HEADER], 16)
    except ValueError:
        return None
    return _ZF_HEADER + (head[_ZF_HEADER : _ZF_HEADER + 1] == b" ")


def _detects(path: Path) -> bool:
    """Whether ``path`` is a model format :func:`detect` names (not just bytes that start like a compressed stream)."""
    try:
        detect(path)
    except Exception:
        return False
    return True


def _inflate(path: Path, codec: str) -> tuple[bytes, Exception | None]:
    """As many bytes as a streaming decompressor yields (up to MAX_DECOMPRESSED + 1), and the error that stopped
    it early, if any: a loader that unpickles while it inflates has already read everything before the error."""
    import bz2
    import gzip
    import lzma
    import zlib

    opener: Any = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open, "lzma": lzma.open}.get(codec)
    if codec == "lz4":
        import lz4.frame  # type: ignore[import-not-found]  # ImportError: handled by the caller

        opener = lz4.frame.open
    out = bytearray()
    chunk = 4 << 10  # small reads: a stream that fails at its end (CRC) still gives what came before
    try:
        if opener is not None:
            with opener(path, "rb") as fh:
                while len(out) <= MAX_DECOMPRESSED and (part := fh.read(chunk)):
                    out += part
        else:
            with open(path, "rb") as raw:
                head = raw.read(_ZF_HEADER + 1)
                raw.seek((_zf_data_start(head) or 0) if codec == "joblib-zf" else 0)
                d = zlib.decompressobj()
                while len(out) <= MAX_DECOMPRESSED and (part := raw.read(chunk)):
                    out += d.decompress(part, MAX_DECOMPRESSED + 1 - len(out))
                    while d.unconsumed_tail and len(out) <= MAX_DECOMPRESSED:
                        out += d.decompress(d.unconsumed_tail, MAX_DECOMPRESSED + 1 - len(out))
    except Exception as exc:  # corrupt or truncated streams: what came out before still counts
        return bytes(out), exc
    return bytes(out), None


def _scan_compressed(path: Path, codec: str, col: _Collector) -> tuple[int, Finding | None]:
    """Inflate (bounded) and scan what a loader that decompresses first would unpickle.

    Returns the number of bytes inflated and, when the stream could not be inflated to its end, a finding
    saying so (the caller decides whether it applies: a file of another format may just start like a stream).
    """
    place = f"{codec}-decompressed"
    try:
        data, exc = _inflate(path, codec)
    except ImportError:
        return 1, Finding("error", "", "", place, None,
                          f"{codec}-compressed (joblib.dump(compress='{codec}')), and the {codec} package is not "
                          f"installed here: what joblib.load would unpickle cannot be scanned (pip install {codec})",
                          "unreadable")
    problem = None
    if exc is not None:
        problem = Finding("error", "", "", place, None, f"the {codec} stream cannot be decompressed to its end "
                          f"({type(exc).__name__}: {str(exc)[:120]}); what came out before was scanned", "unreadable")
    if len(data) > MAX_DECOMPRESSED:
        problem = Finding("dangerous", "", "", place, None, f"it decompresses to more than {MAX_DECOMPRESSED >> 20} "
                          "MiB; the rest was not scanned (fail closed)", "scan-incomplete")
        data = data[:MAX_DECOMPRESSED]
    if data:
        col.notes.append(f"{codec}-compressed: {len(data)} bytes decompressed and scanned (joblib.load reads it so)")
        Walker(col.sink).blob(data, place)
    return len(data), problem
