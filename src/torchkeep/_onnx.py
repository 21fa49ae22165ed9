"""Read an ONNX model's structure from its protobuf bytes without reading tensor data.

A tiny protobuf wire-format walker: length-delimited fields we do not need (``raw_data`` of
initializers) are skipped by offset, so a 500 MB model is described from a few KB of reads. No ``onnx``
import is needed for inspection; :func:`read_onnx_tensors` decodes the tensors with the ``onnx`` package.

The weights of an ONNX model are every tensor it stores, wherever it stores it:

- initializers of the main graph, under their own names;
- initializers of subgraphs (the bodies of ``If`` / ``Loop`` / ``Scan``, at any depth), under
  ``<subgraph path>/<name>``, the path naming each node and attribute on the way (``loop/body/w``;
  an unnamed node is ``<op_type>#<index in its graph>``);
- the values of ``Constant`` nodes (attribute ``value``, or ``value_float(s)`` / ``value_int(s)``) under
  their output's name, with the same subgraph prefix.

Tensor data kept in external files is read only from the model's folder (:func:`external_data_problem`).
"""

from __future__ import annotations

import math
import mmap
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._protobuf import Truncated as _Truncated
from torchkeep._protobuf import fields as _fields
from torchkeep._protobuf import text as _str
from torchkeep._protobuf import varint as _varint
from torchkeep.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ONNX_DTYPES", "OnnxInfo", "OnnxTensorInfo", "OnnxValueInfo", "external_data_problem", "looks_like_onnx",
    "read_onnx", "read_onnx_tensors",
]

# TensorProto.DataType -> (name, bytes per element)
ONNX_DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
    7: ("int64", 8), 8: ("string", 0), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8),
    12: ("uint32", 4), 13: ("uint64", 8), 14: ("complex64", 8), 15: ("complex128", 16), 16: ("bfloat16", 2),
    17: ("float8_e4m3fn", 1), 18: ("float8_e4m3fnuz", 1), 19: ("float8_e5m2", 1), 20: ("float8_e5m2fnuz", 1),
    21: ("uint4", 1), 22: ("int4", 1), 24: ("float8_e8m0fnu", 1),
}

#: deepest nesting of subgraphs followed (If inside Loop inside ...); deeper files are refused as corrupt
MAX_GRAPH_DEPTH = 64

_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


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
    """A tensor the model stores (see the module docstring for where and under which name).

    ``span``: the bytes of its ``TensorProto`` in the file; ``inline``: for ``value_float(s)`` /
    ``value_int(s)`` constants, the value as little-endian float32 / int64 bytes (no ``TensorProto``).
    """

    name: str
    dtype: str
    shape: list[int]
    numel: int
    nbytes: int
    external: bool = False
    stored: str = "initializer"  # "initializer" | "constant"
    graph: str = ""  # "" for the main graph, else the subgraph path
    span: tuple[int, int] = (0, 0)
    inline: bytes | None = None


@dataclass
class OnnxInfo:
    ir_version: int = 0
    producer: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    graph_name: str = ""
    inputs: list[OnnxValueInfo] = field(default_factory=list)
    outputs: list[OnnxValueInfo] = field(default_factory=list)
    tensors: list[OnnxTensorInfo] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    #: tensors that are not numeric weights: ``"<name> (string)"``, ``"<name> (sparse)"``
    skipped: list[str] = field(default_factory=list)


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
    return OnnxTensorInfo(name, dname, dims, numel, numel * itemsize, external, span=(sl[0], sl[1]))


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


class _GraphReader:
    """Walks the main graph and every subgraph, collecting the tensors they store under unique names."""

    def __init__(self, buf, info: OnnxInfo) -> None:
        self.buf = buf
        self.info = info
        self.taken: set[str] = set()

    def add(self, t: OnnxTensorInfo, graph: str, name: str) -> None:
        full = f"{graph}/{name}" if graph else name
        unique, n = full, 1
        while unique in self.taken:  # two tensors of one name only in a malformed model; keep both
            n += 1
            unique = f"{full}#{n}"
        self.taken.add(unique)
        t.name, t.graph = unique, graph
        if t.dtype == "string":
            self.info.skipped.append(f"{unique} (string)")
        else:
            self.info.tensors.append(t)

    def graph(self, sl, path: str, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise _Truncated
        buf, info = self.buf, self.info
        initializer_names: set[str] = set()
        inputs: list[OnnxValueInfo] = []
        nodes: list[tuple[int, int]] = []
        for num, _, val in _fields(buf, *sl):
            if num == 1:  # NodeProto
                nodes.append(val)
            elif num == 2 and not path:
                info.graph_name = _str(buf, val)
            elif num == 5:
                t = _tensor_info(buf, val)
                initializer_names.add(t.name)
                self.add(t, path, t.name)
            elif num == 15:  # sparse_initializer: not read as weights
                info.skipped.append(f"{path + '/' if path else ''}sparse initializer #{len(info.skipped)} (sparse)")
            elif num == 11 and not path:
                inputs.append(_value_info(buf, val))
            elif num == 12 and not path:
                info.outputs.append(_value_info(buf, val))
        # a graph's own initializers first, then what its nodes hold (Constant values, subgraphs) in node order
        for index, val in enumerate(nodes):
            self.node(val, path, index, depth)
        if not path:
            # Old exporters list initializers among the graph inputs; they are not real inputs.
            info.inputs = [v for v in inputs if v.name not in initializer_names]

    def node(self, sl, path: str, index: int, depth: int) -> None:
        buf = self.buf
        op = domain = name = ""
        outputs: list[str] = []
        attributes: list[tuple[int, int]] = []
        for num, _, val in _fields(buf, *sl):
            if num == 2:
                outputs.append(_str(buf, val))
            elif num == 3:
                name = _str(buf, val)
            elif num == 4:
                op = _str(buf, val)
            elif num == 5:
                attributes.append(val)
            elif num == 7:
                domain = _str(buf, val)
        key = f"{domain}::{op}" if domain else op
        self.info.op_counts[key] = self.info.op_counts.get(key, 0) + 1
        label = name or f"{op or 'node'}#{index}"
        is_constant = op == "Constant" and domain in ("", "ai.onnx")
        for attr in attributes:
            self.attribute(attr, path, label, outputs[0] if is_constant and outputs else None, depth)

    def attribute(self, sl, path: str, label: str, constant: str | None, depth: int) -> None:
        """Follow subgraphs; for a Constant node (``constant``: its output), record its value."""
        attr = self._fields_of(sl, path, constant)
        for i, (num, g) in enumerate(attr.graphs):
            sub = f"{label}/{attr.name}" + (f"[{i}]" if num == 11 else "")
            self.graph(g, f"{path}/{sub}" if path else sub, depth + 1)
        if constant is not None:
            self.constant(attr, path, constant)

    def _fields_of(self, sl, path: str, constant: str | None) -> _Attribute:
        """An AttributeProto's name and subgraphs; its value too for a Constant node's attribute."""
        buf = self.buf
        attr = _Attribute()
        for num, wt, val in _fields(buf, *sl):
            if num == 1:
                attr.name = _str(buf, val)
            elif num in (6, 11):  # g, graphs
                attr.graphs.append((num, val))
            elif constant is None:
                continue
            elif num == 5:  # t
                attr.value = _tensor_info(buf, val)
            elif num == 2:  # f
                attr.floats.append(int(val).to_bytes(4, "little"))
            elif num == 7:  # floats: packed or one per field
                attr.floats += [int(val).to_bytes(4, "little")] if wt == 5 else [
                    bytes(buf[i : i + 4]) for i in range(val[0], val[1] - 3, 4)]
            elif num == 3:  # i
                attr.ints.append(int(val))
            elif num == 8:  # ints: packed varints or one per field
                if wt == 0:
                    attr.ints.append(int(val))
                else:
                    pos, end = val
                    while pos < end:
                        v, pos = _varint(buf, pos, end)
                        attr.ints.append(v)
            elif num in (4, 9, 22):  # s, strings, sparse_tensor
                where = f"{path}/{constant}" if path else constant
                self.info.skipped.append(f"{where} ({'sparse' if num == 22 else 'string'})")
        return attr

    def constant(self, attr: _Attribute, path: str, constant: str) -> None:
        """Record the value a Constant node's attribute gives its output ``constant``."""
        aname = attr.name
        raw: bytes | None = None
        if aname == "value" and attr.value is not None:
            attr.value.stored = "constant"
            self.add(attr.value, path, constant)
        elif aname in ("value_float", "value_floats"):
            floats = attr.floats
            raw = b"".join(floats) if aname == "value_floats" else (floats[-1] if floats else bytes(4))
            dtype, itemsize = "float32", 4
        elif aname in ("value_int", "value_ints"):
            # int64 as two's complement; a varint longer than 64 bits keeps its low 64 bits, as protobuf does
            vals = attr.ints if aname == "value_ints" else attr.ints[-1:] or [0]
            raw = b"".join((v & (1 << 64) - 1).to_bytes(8, "little") for v in vals)
            dtype, itemsize = "int64", 8
        if raw is not None:
            n = len(raw) // itemsize
            shape = [n] if aname.endswith("s") else []
            self.add(OnnxTensorInfo("", dtype, shape, n, len(raw), stored="constant", inline=raw), path, constant)


@dataclass
class _Attribute:
    """The parts of an AttributeProto the reader uses."""

    name: str = ""
    graphs: list[tuple[int, tuple[int, int]]] = field(default_factory=list)
    value: OnnxTensorInfo | None = None
    floats: list[bytes] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)


def _read_graph(buf, sl, info: OnnxInfo) -> None:
    _GraphReader(buf, info).graph(sl, "", 0)


def external_data_problem(folder: Path, location: str) -> str | None:
    """Why an external-data ``location`` reads something other than a file in the model's ``folder``, or None.

    ONNX runtimes read ``location`` relative to the folder of the model path they were given: an absolute
    path, a ``..`` step or a symlink leading out of the folder would read any file the model names.
    """
    if not location or "\0" in location:
        return "is empty or holds a NUL byte"
    if "_ORT_MEM_ADDR_" in location or location.startswith("*"):
        return "is onnxruntime's in-memory tag: it reads process memory at an address the file chooses"
    if location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", location) or os.path.isabs(location):
        return "is an absolute path: it reads a file outside the model's folder"
    if ".." in re.split(r"[\\/]", location):
        return "steps out of the model's folder with '..'"
    try:
        real = folder.resolve()
        target = (folder / location).resolve()
    except (OSError, RuntimeError, ValueError):
        return "cannot be resolved"
    if target != real and real not in target.parents:
        return f"resolves (through a symlink) to {target}, outside the model's folder"
    return None


def _external_bytes(proto: Any, name: str, model: Path) -> bytes:
    """The bytes an external-data TensorProto points at, read from the model's folder only."""
    entries = {e.key: e.value for e in proto.external_data}
    location = entries.get("location", "")
    folder = model.absolute().parent
    why = external_data_problem(folder, location)
    if why:
        raise InputError(f"tensor {name!r}: external data location {location!r} {why}", path=model,
                         fix="keep the data file beside the model and name it relative to the model's folder")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise InputError(f"tensor {name!r}: external data offset/length are not numbers", path=model,
                         fix="re-export the model") from None
    data_path = folder / location
    try:
        with open(data_path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if offset < 0 or (length is not None and (length < 0 or offset + length > size)) or offset > size:
                raise InputError(
                    f"tensor {name!r}: external data [{offset}, +{length}] runs past the end of {location} "
                    f"({size} bytes)", path=model, fix="the data file is truncated; re-export the model")
            fh.seek(offset)
            return fh.read(length if length is not None else size - offset)
    except OSError as exc:
        raise InputError(f"tensor {name!r}: cannot read its external data {location!r} ({exc.strerror or exc})",
                         path=model, fix="keep the data file beside the model, under the name it records") from None


# ONNX dtypes numpy has no type for: torch dtype name (onnx returns them as ml_dtypes arrays)
_VIEW_DTYPES = {
    "bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2": "float8_e5m2", "float8_e5m2fnuz": "float8_e5m2fnuz", "float8_e8m0fnu": "float8_e8m0fnu",
}


def read_onnx_tensors(path: str | os.PathLike[str], info: OnnxInfo, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Decode the tensors ``names`` of ``info`` (from :func:`read_onnx` of ``path``) into CPU tensors.

    Each ``TensorProto`` is parsed on its own from its bytes in the file and decoded by
    ``onnx.numpy_helper.to_array``, so values are bit-exact with what ``onnx`` returns; external data is
    read from the model's folder only.
    """
    import numpy as np
    import torch
    from onnx import TensorProto, numpy_helper

    p = Path(path)
    by_name = {t.name: t for t in info.tensors}
    out: dict[str, torch.Tensor] = {}
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name in names:
            t = by_name[name]
            if t.inline is not None:
                arr = np.frombuffer(t.inline, dtype="<f4" if t.dtype == "float32" else "<i8").reshape(t.shape)
                out[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
                continue
            proto = TensorProto()
            try:
                proto.ParseFromString(mm[t.span[0] : t.span[1]])
            except Exception as exc:  # protobuf's DecodeError
                raise InputError(f"tensor {name!r} cannot be decoded ({exc})", path=p, fix="re-export the model") from None
            if proto.data_location == TensorProto.EXTERNAL:
                proto.raw_data = _external_bytes(proto, name, p)
                del proto.external_data[:]
                proto.data_location = TensorProto.DEFAULT
            try:
                arr = numpy_helper.to_array(proto)
            except Exception as exc:  # a size that does not match the shape, an unknown type
                raise InputError(f"tensor {name!r} ({t.dtype}{t.shape}) cannot be decoded ({exc})", path=p,
                                 fix="the file is corrupt; re-export the model") from None
            view = _VIEW_DTYPES.get(t.dtype)
            if view is not None:
                dt = getattr(torch, view, None)
                if dt is None:
                    raise InputError(f"tensor {name!r} is {t.dtype}, which this torch ({torch.__version__}) has no "
                                     "dtype for", path=p, fix="upgrade torch")
                bits = np.ascontiguousarray(arr).view(np.uint16 if arr.dtype.itemsize == 2 else np.uint8)
                out[name] = torch.from_numpy(bits.copy()).view(dt)
            elif arr.dtype.kind not in "biufc":
                raise InputError(f"tensor {name!r} is ONNX type {t.dtype}, which torch has no dtype for", path=p,
                                 fix="dequantize or cast it in the ONNX model, or read it with onnx.numpy_helper")
            else:
                out[name] = torch.from_numpy(np.array(arr, copy=True))
    return out
