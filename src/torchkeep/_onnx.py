"""Read an ONNX model's structure from its protobuf bytes without reading initializer data.

A tiny protobuf wire-format walker: length-delimited fields we do not need (``raw_data`` of
initializers, node attributes) are skipped by offset, so a 500 MB model is described from a few KB of
reads. No ``onnx`` import is needed for inspection; loading weights uses the ``onnx`` package.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep.errors import InputError

__all__ = ["ONNX_DTYPES", "OnnxInfo", "OnnxTensorInfo", "OnnxValueInfo", "looks_like_onnx", "read_onnx"]

# TensorProto.DataType -> (name, bytes per element)
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
    7: ("int64", 8), 8: ("string", 0), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8),
    12: ("uint32", 4), 13: ("uint64", 8), 14: ("complex64", 8), 15: ("complex128", 16), 16: ("bfloat16", 2),
    17: ("float8_e4m3fn", 1), 18: ("float8_e4m3fnuz", 1), 19: ("float8_e5m2", 1), 20: ("float8_e5m2fnuz", 1),
    21: ("uint4", 1), 22: ("int4", 1),
}

_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


class _Truncated(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Truncated


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) where value is an int or a (start, end) slice."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield num, wt, val
        elif wt == 1:
            if pos + 8 > end:
                raise _Truncated
            yield num, wt, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Truncated
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise _Truncated
            yield num, wt, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise _Truncated


def looks_like_onnx(path: Path, head: bytes, size: int) -> bool:
    """True if the top level of the file parses as an ONNX ModelProto with a graph."""
    if not head or head[0] not in (0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42):
        return False
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            seen_graph = False
            for num, wt, _ in _fields(mm, 0, size):
                if _MODEL_FIELDS.get(num) != wt:
                    return False
                seen_graph |= num == 7
            return seen_graph
    except (_Truncated, ValueError, OSError):
        return False


@dataclass
class OnnxValueInfo:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class OnnxTensorInfo:
    name: str
    dtype: str
    shape: list[int]
    numel: int
    nbytes: int
    external: bool = False


@dataclass
class OnnxInfo:
    ir_version: int = 0
    producer: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    graph_name: str = ""
    inputs: list[OnnxValueInfo] = field(default_factory=list)
    outputs: list[OnnxValueInfo] = field(default_factory=list)
    initializers: list[OnnxTensorInfo] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _str(buf, sl) -> str:
    return bytes(buf[sl[0] : sl[1]]).decode("utf-8", "replace")


def _value_info(buf, sl) -> OnnxValueInfo:
    name, dtype, shape = "", "?", []
    for num, _, val in _fields(buf, *sl):
        if num == 1:
            name = _str(buf, val)
        elif num == 2:  # TypeProto
            for tnum, _, tval in _fields(buf, *val):
                if tnum != 1:  # tensor_type
                    continue
                for fnum, _, fval in _fields(buf, *tval):
                    if fnum == 1:
                        dtype = ONNX_DTYPES.get(fval, (f"type{fval}", 0))[0]
                    elif fnum == 2:  # TensorShapeProto
                        for _dnum, _, dval in _fields(buf, *fval):
                            dim: int | str = "?"
                            for knum, _, kval in _fields(buf, *dval):
                                if knum == 1:
                                    dim = int(kval)
                                elif knum == 2:
                                    dim = _str(buf, kval)
                            shape.append(dim)
    return OnnxValueInfo(name, dtype, shape)


def _tensor_info(buf, sl) -> OnnxTensorInfo:
    name, dims, dtype_id, external = "", [], 1, False
    for num, wt, val in _fields(buf, *sl):
        if num == 1:
            if wt == 0:
                dims.append(int(val))
            else:  # packed
                pos, end = val
                while pos < end:
                    d, pos = _varint(buf, pos, end)
                    dims.append(d)
        elif num == 2:
            dtype_id = int(val)
        elif num == 8:
            name = _str(buf, val)
        elif num == 14:
            external = val == 1
    numel = math.prod(dims)
    dname, itemsize = ONNX_DTYPES.get(dtype_id, (f"type{dtype_id}", 0))
    return OnnxTensorInfo(name, dname, dims, numel, numel * itemsize, external)


def read_onnx(path: str | os.PathLike[str]) -> OnnxInfo:
    """Describe an ONNX file: opsets, inputs/outputs, initializers (no data read), ops, metadata."""
    p = Path(path)
    info = OnnxInfo()
    try:
        with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for num, _, val in _fields(mm, 0, len(mm)):
                if num == 1:
                    info.ir_version = int(val)
                elif num == 2:
                    info.producer = _str(mm, val) + info.producer
                elif num == 3:
                    info.producer += " " + _str(mm, val)
                elif num == 8:
                    domain, version = "", 0
                    for onum, _, oval in _fields(mm, *val):
                        if onum == 1:
                            domain = _str(mm, oval)
                        elif onum == 2:
                            version = int(oval)
                    info.opsets[domain or "ai.onnx"] = version
                elif num == 14:
                    key = value = ""
                    for knum, _, kval in _fields(mm, *val):
                        if knum == 1:
                            key = _str(mm, kval)
                        elif knum == 2:
                            value = _str(mm, kval)
                    info.metadata[key] = value
                elif num == 7:
                    _read_graph(mm, val, info)
    except (_Truncated, TypeError, ValueError, IndexError):  # TypeError: a field of the wrong wire type
        raise InputError("the ONNX protobuf is truncated or corrupt", path=p, fix="re-export the model") from None
    info.producer = info.producer.strip()
    return info


def _read_graph(buf, sl, info: OnnxInfo) -> None:
    initializer_names: set[str] = set()
    inputs: list[OnnxValueInfo] = []
    for num, _, val in _fields(buf, *sl):
        if num == 1:  # NodeProto
            op = ""
            domain = ""
            for nnum, _, nval in _fields(buf, *val):
                if nnum == 4:
                    op = _str(buf, nval)
                elif nnum == 7:
                    domain = _str(buf, nval)
            key = f"{domain}::{op}" if domain else op
            info.op_counts[key] = info.op_counts.get(key, 0) + 1
        elif num == 2:
            info.graph_name = _str(buf, val)
        elif num == 5:
            t = _tensor_info(buf, val)
            initializer_names.add(t.name)
            info.initializers.append(t)
        elif num == 11:
            inputs.append(_value_info(buf, val))
        elif num == 12:
            info.outputs.append(_value_info(buf, val))
    # Old exporters list initializers among the graph inputs; they are not real inputs.
    info.inputs = [v for v in inputs if v.name not in initializer_names]
