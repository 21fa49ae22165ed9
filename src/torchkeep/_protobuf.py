"""The protobuf wire format, read by offset: varints, and (field number, wire type, value) of a message.

Length-delimited values are returned as ``(start, end)`` slices of the buffer, never copied, so a caller
skips what it does not need (an initializer's ``raw_data``) without reading it. Used by :mod:`torchkeep._onnx`
(structure) and :mod:`torchkeep._scan_onnx` (custom ops, external data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["Truncated", "fields", "text", "varint"]


class Truncated(Exception):
    """A field runs past the end of its message (or a varint past 10 bytes): the file is cut or corrupt."""


def varint(buf, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise Truncated
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise Truncated


def fields(buf, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) where value is an int or a (start, end) slice."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = varint(buf, pos, end)
            yield num, wt, val
        elif wt == 1:
            if pos + 8 > end:
                raise Truncated
            yield num, wt, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wt == 2:
            n, pos = varint(buf, pos, end)
            if pos + n > end:
                raise Truncated
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise Truncated
            yield num, wt, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise Truncated


def text(buf, sl) -> str:
    """The UTF-8 string in the slice ``sl`` of ``buf`` (undecodable bytes replaced)."""
    return bytes(buf[sl[0] : sl[1]]).decode("utf-8", "replace")
