"""Step 2 of the data flow: read a file's structure — object tree, tensor descriptions, metadata.

``read_structure(path)`` returns a :class:`FileStructure` for every format :mod:`torchkeep._detect`
knows. Pickles are walked with :mod:`torchkeep._pickle` (no code runs); safetensors and numpy are
described from their headers; ONNX from its protobuf skeleton. No tensor bytes are read and torch is
not imported. :mod:`torchkeep._load` later turns :class:`TensorRef` / :class:`RawTensor` into tensors.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._dcp import read_dcp, state_tree
from torchkeep._detect import Detected, corrupt_file_errors, detect, read_safetensors_json
from torchkeep._dtypes import DTYPE_ITEMSIZE, EXPORT_DTYPES, SAFETENSORS_DTYPES, SAFETENSORS_READ_ONLY
from torchkeep._onnx import read_onnx
from torchkeep._pickle import (
    PickleReadError,
    Placeholder,
    StorageRef,
    TensorRef,
    _default_storage,
    read_pickle,
)
from torchkeep.errors import InputError

__all__ = [
    "FileStructure", "RawTensor", "TorchScriptClass", "read_safetensors_header", "read_structure", "torchscript_methods",
]



@dataclass(eq=False)
class RawTensor:
    """A tensor whose bytes sit at a known place in a non-pickle container (safetensors, npy, pt2)."""

    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset in the file, or within ``member`` for zip members
    nbytes: int
    member: str | None = None  # zip member holding the bytes (npz / pt2)
    is_parameter: bool | None = None
    fortran_order: bool = False
    numpy_dtype: str | None = None
    array: Any = None  # a numpy array rebuilt from a pickle (Detectron/Caffe2-style weights)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class FileStructure:
    """What a file holds, before any tensor byte is read.

    Attributes:
        detected: the format detection result.
        obj: the root object: for pickles the restricted-unpickled tree (tensors are ``TensorRef``,
            unknown classes ``Placeholder``); for tensor containers a dict name -> ``RawTensor``.
        globals_seen: every (module, name) a pickle named.
        metadata: container metadata (safetensors ``__metadata__``, ONNX ``metadata_props``, TorchScript
            extra files, torch archive version...).
        extra: format-specific details (ONNX info, TorchScript methods, exported-program graph summary).
        byteorder: "little" or "big" for torch archives.
    """

    detected: Detected
    obj: Any
    globals_seen: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    byteorder: str = "little"
    storage_root: str = "data/"
    constants: Any = None

    @property
    def format(self) -> str:
        return self.detected.format

    @property
    def path(self) -> Path:
        return self.detected.path


def _err(path: Path, what: str, fix: str | None = "re-save or re-download the file") -> InputError:
    return InputError(what, path=path, fix=fix)


def _member(det: Detected, name: str) -> str | None:
    for m in det.members:
        # prefer the member directly under the archive root
        if (m == name or m.endswith("/" + name)) and (det.archive_root is None or m == f"{det.archive_root}/{name}"):
            return m
    for m in det.members:
        if m.endswith("/" + name):
            return m
    return None


def _read_member(zf: zipfile.ZipFile, det: Detected, name: str) -> bytes:
    try:
        return zf.read(name)
    except zipfile.BadZipFile as exc:
        raise _err(det.path, f"the archive member {name} is corrupt ({exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise _err(det.path, f"the archive member {name} cannot be read ({exc}); the file is truncated") from None


@dataclass
class TorchScriptClass:
    """A class of a TorchScript archive, as its code declares it (read as text, never executed).

    ``parameters`` / ``buffers``: the attribute names its ``__parameters__`` / ``__buffers__`` list (what
    ``state_dict()`` returns); ``is_module``: a module (``class X(Module)``), not a TorchScript class.
    """

    qualname: str
    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    methods: list[str] = field(default_factory=list)


_TS_CLASS = re.compile(r"^class (\w+)(?:\((\w*)\))?:")
_TS_NAMES = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$")
_TS_METHOD = re.compile(r"^  def (\w+)\(")
_TS_MANGLE = re.compile(r"\.___torch_mangle_\d+")


def _names_list(text: str) -> tuple[str, ...]:
    try:
        value = ast.literal_eval(text)  # a list of string literals; literal_eval evaluates nothing else
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _torchscript_classes(zf: zipfile.ZipFile, det: Detected) -> dict[str, TorchScriptClass]:
    """qualified class name (``__torch__.torch.nn.modules.linear.Linear``) -> what its code declares."""
    classes: dict[str, TorchScriptClass] = {}
    for name in det.members:
        at = f"/{name}".find("/code/__torch__")
        if at < 0 or not name.endswith(".py"):
            continue
        module = name[at + len("/code/") - 1 : -len(".py")].replace("/", ".")
        try:
            text = zf.read(name).decode("utf-8", "replace")
        except Exception:
            continue
        current: TorchScriptClass | None = None
        for line in text.splitlines():
            if m := _TS_CLASS.match(line):
                current = classes.setdefault(f"{module}.{m.group(1)}", TorchScriptClass(
                    f"{module}.{m.group(1)}", is_module=m.group(2) == "Module"))
            elif line[:1] not in ("", " "):
                current = None  # a top-level statement ends the class
            elif current is None:
                continue
            elif m := _TS_NAMES.match(line):
                names = _names_list(m.group(2))
                if m.group(1) == "__parameters__":
                    current.parameters = names
                else:
                    current.buffers = names
            elif (m := _TS_METHOD.match(line)) and m.group(1) not in current.methods:
                current.methods.append(m.group(1))
    return classes


def torchscript_methods(classes: dict[str, TorchScriptClass]) -> dict[str, list[str]]:
    """class -> its methods, each listed once: the copies TorchScript makes of a class (``___torch_mangle_N``)
    are one class; classes are named by their short name unless two share it."""
    merged: dict[str, list[str]] = {}
    for cls in classes.values():
        qual = _TS_MANGLE.sub("", cls.qualname).removeprefix("__torch__.")
        methods = merged.setdefault(qual, [])
        methods += [m for m in cls.methods if m not in methods]
    short = [q.rsplit(".", 1)[-1] for q in merged]
    return {(s if short.count(s) == 1 else q): ms for s, (q, ms) in zip(short, merged.items())}


def _read_torch_zip(det: Detected) -> FileStructure:
    try:
        zf = zipfile.ZipFile(det.path)
    except zipfile.BadZipFile as exc:
        raise _err(det.path, f"corrupt zip archive ({exc})") from None
    with zf:
        pkl = _member(det, "data.pkl")
        if pkl is None:
            raise _err(det.path, "the torch archive has no data.pkl", fix=None)
        root = pkl[: -len("data.pkl")]
        data = _read_member(zf, det, pkl)
        try:
            res = read_pickle(data)
        except PickleReadError as exc:
            raise _err(det.path, f"{pkl}: {exc}") from None
        byteorder = "little"
        bo = f"{root}byteorder"
        if bo in det.members:
            byteorder = _read_member(zf, det, bo).decode("ascii", "replace").strip() or "little"
        fs = FileStructure(det, res.obj, res.globals_seen, byteorder=byteorder, storage_root=f"{root}data/")
        version = f"{root}version"
        if version in det.members:
            fs.metadata["archive_version"] = _read_member(zf, det, version).decode("ascii", "replace").strip()
        if det.format == "torchscript":
            const = f"{root}constants.pkl"
            if const in det.members:
                try:
                    cres = read_pickle(_read_member(zf, det, const))
                    fs.constants = cres.obj
                    fs.globals_seen += cres.globals_seen
                except PickleReadError:
                    fs.constants = None
            fs.extra["torchscript_classes"] = classes = _torchscript_classes(zf, det)
            fs.extra["methods"] = torchscript_methods(classes)
            extra_prefix = f"{root}extra/"
            for m in det.members:
                if m.startswith(extra_prefix) and zf.getinfo(m).file_size < 1_000_000:
                    fs.metadata[m[len(extra_prefix):]] = _read_member(zf, det, m).decode("utf-8", "replace")
        return fs


def _legacy_storage_resolver(roots: dict[str, StorageRef]):
    def resolve(pid: Any) -> Any:
        ref = _default_storage(pid)
        if isinstance(ref, StorageRef):
            root_key = ref.view_of or ref.key
            if ref.view_of is None:
                roots.setdefault(root_key, ref)
            else:
                # the root storage: size is pid[4]
                roots.setdefault(root_key, StorageRef(root_key, ref.dtype, ref.location, int(pid[4])))
        return ref

    return resolve


def _read_legacy(det: Detected) -> FileStructure:
    roots: dict[str, StorageRef] = {}
    with open(det.path, "rb") as fh:
        try:
            magic = read_pickle(fh).obj
            protocol = read_pickle(fh).obj
            sys_info = read_pickle(fh).obj
            main = read_pickle(fh, storage_resolver=_legacy_storage_resolver(roots))
            keys = read_pickle(fh).obj
        except PickleReadError as exc:
            raise _err(det.path, f"legacy torch file: {exc}") from None
        data_start = fh.tell()
    fs = FileStructure(det, main.obj, main.globals_seen)
    fs.metadata["legacy_magic"] = hex(magic) if isinstance(magic, int) else str(magic)
    fs.metadata["protocol_version"] = str(protocol)
    if isinstance(sys_info, dict):
        fs.metadata.update({f"sys_info.{k}": str(v) for k, v in sys_info.items()})
    fs.extra["legacy_storage_keys"] = [str(k) for k in keys] if isinstance(keys, list) else []
    fs.extra["legacy_roots"] = roots
    fs.extra["legacy_data_start"] = data_start
    byteorder = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    fs.byteorder = "little" if byteorder else "big"
    return fs


def _read_bare_pickle(det: Detected) -> FileStructure:
    with open(det.path, "rb") as fh:
        try:
            res = read_pickle(fh)
        except PickleReadError as exc:
            raise _err(det.path, f"bare pickle: {exc}") from None
    fs = FileStructure(det, res.obj, res.globals_seen)
    if res.end < det.size:
        fs.extra["trailing_bytes"] = det.size - res.end
    return fs


def read_safetensors_header(path: Path, size: int) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Parse and validate a safetensors header; returns (tensors, metadata). Reads only the header."""
    try:
        header, n = read_safetensors_json(path, size)
    except ValueError as exc:
        raise _err(path, str(exc)) from None
    meta_raw = header.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in meta_raw.items()} if isinstance(meta_raw, dict) else {}
    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, RawTensor] = {}
    for name, info in header.items():
        try:
            dtype_code = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _err(path, f"safetensors header entry {name!r} is malformed") from None
        dtype = SAFETENSORS_DTYPES.get(dtype_code) or SAFETENSORS_READ_ONLY.get(dtype_code)
        if dtype is None:
            raise _err(path, f"tensor {name!r} has unknown safetensors dtype {dtype_code!r}")
        if any(d < 0 for d in shape) or begin < 0 or end < begin:
            raise _err(path, f"tensor {name!r} has a negative shape or reversed data_offsets")
        numel = math.prod(shape)
        expected = numel * DTYPE_ITEMSIZE[dtype] if dtype != "float4_e2m1fn_x2" else numel
        if end > data_len:
            raise _err(
                path,
                f"tensor {name!r} data_offsets [{begin}, {end}] run past the end of the file "
                f"({data_len} data bytes); the file is truncated or forged",
            )
        if end - begin != expected:
            raise _err(
                path,
                f"tensor {name!r} claims shape {list(shape)} of {dtype} ({expected} bytes) "
                f"but its data_offsets span {end - begin} bytes",
            )
        tensors[name] = RawTensor(dtype, shape, data_start + begin, expected)
    return tensors, metadata


def _read_safetensors(det: Detected) -> FileStructure:
    tensors, metadata = read_safetensors_header(det.path, det.size)
    return FileStructure(det, tensors, metadata=metadata)


def _npy_header(fh: Any, path: Path, where: str) -> tuple[tuple[int, ...], bool, Any]:
    import numpy as np
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
    except (ValueError, OSError, SyntaxError) as exc:
        raise _err(path, f"{where}: bad .npy header ({exc})") from None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def _np_dtype_name(dtype: Any) -> str:
    if dtype.hasobject:
        return "object"
    return str(dtype.name)


def _read_numpy(det: Detected) -> FileStructure:
    with open(det.path, "rb") as fh:
        shape, fortran, dtype = _npy_header(fh, det.path, "array")
        offset = fh.tell()
    numel = math.prod(shape)
    t = RawTensor(_np_dtype_name(dtype), shape, offset, numel * dtype.itemsize, fortran_order=fortran, numpy_dtype=dtype.str)
    return FileStructure(det, {"array": t})


def _read_npz(det: Detected) -> FileStructure:
    tensors: dict[str, RawTensor] = {}
    with zipfile.ZipFile(det.path) as zf:
        for name in det.members:
            with zf.open(name) as fh:
                shape, fortran, dtype = _npy_header(fh, det.path, name)
            numel = math.prod(shape)
            key = name[:-4] if name.endswith(".npy") else name
            tensors[key] = RawTensor(
                _np_dtype_name(dtype), shape, 0, numel * dtype.itemsize, member=name,
                fortran_order=fortran, numpy_dtype=dtype.str,
            )
    return FileStructure(det, tensors)


def _read_export(det: Detected) -> FileStructure:
    tensors: dict[str, RawTensor] = {}
    extra: dict[str, Any] = {}
    with zipfile.ZipFile(det.path) as zf:
        cfg_name = _member(det, "data/weights/model_weights_config.json")
        if cfg_name:
            try:
                cfg = json.loads(_read_member(zf, det, cfg_name)).get("config", {})
            except json.JSONDecodeError:
                cfg = {}
            base = cfg_name.rsplit("/", 1)[0] + "/"
            for name, info in cfg.items():
                meta = info.get("tensor_meta", {})
                dtype = EXPORT_DTYPES.get(meta.get("dtype"), "unknown")
                shape = tuple(int(s.get("as_int", 0)) for s in meta.get("sizes", []))
                numel = math.prod(shape)
                tensors[name] = RawTensor(
                    dtype, shape, 0, numel * DTYPE_ITEMSIZE.get(dtype, 1), member=base + info.get("path_name", ""),
                    is_parameter=bool(info.get("is_param", False)),
                )
        for m in det.members:
            if "/models/" in f"/{m}" and m.endswith(".json"):
                try:
                    model = json.loads(_read_member(zf, det, m))
                except json.JSONDecodeError:
                    continue
                graph = model.get("graph_module", {}).get("graph", {})
                ops: dict[str, int] = {}
                for node in graph.get("nodes", []):
                    target = str(node.get("target", "?"))
                    ops[target] = ops.get(target, 0) + 1
                extra["graph"] = {
                    "nodes": len(graph.get("nodes", [])),
                    "inputs": len(graph.get("inputs", [])),
                    "outputs": len(graph.get("outputs", [])),
                    "ops": ops,
                    "torch_version": model.get("torch_version"),
                    "schema_version": model.get("schema_version"),
                }
                break
    fs = FileStructure(det, tensors, extra=extra)
    fmt = _member(det, "archive_format")
    if fmt:
        with zipfile.ZipFile(det.path) as zf:
            fs.metadata["archive_format"] = _read_member(zf, det, fmt).decode("ascii", "replace")
    return fs


def _read_onnx(det: Detected) -> FileStructure:
    info = read_onnx(det.path)
    tensors = {t.name: RawTensor(t.dtype, tuple(t.shape), t.span[0], t.nbytes, is_parameter=True) for t in info.tensors}
    return FileStructure(det, tensors, metadata=dict(info.metadata), extra={"onnx": info})


def _read_dcp(det: Detected) -> FileStructure:
    ckpt = read_dcp(det.path)
    extra = {"dcp": ckpt, "dcp_files": ckpt.files}
    return FileStructure(det, state_tree(ckpt), list(ckpt.globals_seen), {"dcp_version": str(ckpt.version)}, extra)


_READERS = {
    "torch-zip": _read_torch_zip,
    "torchscript": _read_torch_zip,
    "torch-legacy": _read_legacy,
    "pickle": _read_bare_pickle,
    "safetensors": _read_safetensors,
    "numpy": _read_numpy,
    "numpy-npz": _read_npz,
    "torch-export": _read_export,
    "onnx": _read_onnx,
    "dcp": _read_dcp,
}


def read_structure(path: str | os.PathLike[str] | Detected) -> FileStructure:
    """Detect the format of ``path`` and read its structure without reading tensor bytes."""
    det = path if isinstance(path, Detected) else detect(path)
    with corrupt_file_errors(det.path):
        return _READERS[det.format](det)


def iter_tensor_refs(obj: Any, prefix: str = "", _seen: set[int] | None = None, _depth: int = 0):
    """Yield (dotted name, TensorRef) for every tensor reachable in a pickled object tree."""
    if _seen is None:
        _seen = set()
    if _depth > 100 or id(obj) in _seen:
        return
    if isinstance(obj, TensorRef):
        yield prefix, obj
        return
    if isinstance(obj, dict | list | tuple | Placeholder):
        _seen.add(id(obj))
    join = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: str(k))
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_tensor_refs(v, join(k), _seen, _depth + 1)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from iter_tensor_refs(v, join(i), _seen, _depth + 1)
    elif isinstance(obj, Placeholder):
        yield from iter_tensor_refs(obj.tk_state_dict, prefix, _seen, _depth + 1)
        if obj._tk_items:
            yield from iter_tensor_refs(obj._tk_items, prefix, _seen, _depth + 1)
