"""A restricted pickle reader that never imports or calls anything named in the file.

Every global a pickle names goes through :meth:`RestrictedUnpickler.find_class`. A short allowlist of
rebuild functions is answered with torchkeep's own inert stand-ins (a tensor becomes a
:class:`TensorRef` that records dtype, shape, stride and where its bytes live; nothing is read).
Plain containers and scalars are rebuilt as themselves. Everything else — ``__main__.Net``,
``argparse.Namespace``, ``os.system`` — becomes a :class:`Placeholder` subclass that keeps its
``module``/``name``, the arguments it was called with and the state it was given, and does nothing.

No module is imported on behalf of the file (numpy is imported only to decode numpy scalars and
arrays, with numpy's own reconstruct functions, which run no code from the file, on states
:mod:`torchkeep._npstate` checked: :mod:`torchkeep._pickle_numpy`). The stand-ins live in
:mod:`torchkeep._pickle_refs`.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchkeep._dtypes import DTYPE_ITEMSIZE, STORAGE_DTYPES, TORCH_DTYPE_ALIASES
from torchkeep._pickle_numpy import NumpyDtypeRef, _numpy_global
from torchkeep._pickle_refs import (
    DTypeRef,
    PickleReadError,
    Placeholder,
    StorageRef,
    TensorRef,
    _placeholder_class,
    placeholder_name,
)

__all__ = [
    "DTypeRef",
    "NumpyDtypeRef",
    "PickleReadError",
    "Placeholder",
    "RestrictedUnpickler",
    "StorageRef",
    "TensorRef",
    "placeholder_name",
    "read_pickle",
]


# --- rebuild functions answered with inert stand-ins -------------------------------------------------


def _dtype_of(storage: Any) -> str:
    if isinstance(storage, StorageRef):
        return storage.dtype
    return "unknown"


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any, *rest: Any) -> TensorRef:
    requires_grad = bool(rest[0]) if rest else False
    return TensorRef(
        storage if isinstance(storage, StorageRef) else None,
        int(storage_offset),
        tuple(int(s) for s in size),
        tuple(int(s) for s in stride),
        _dtype_of(storage),
        requires_grad,
    )


def _rebuild_tensor_v3(storage: Any, storage_offset: int, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, dtype: Any = None, *rest: Any) -> TensorRef:
    # v3 carries the dtype itself; the storage is an UntypedStorage counted in bytes (float8, uint16...)
    t = _rebuild_tensor(storage, storage_offset, size, stride, requires_grad)
    if isinstance(dtype, DTypeRef):
        t.dtype = dtype.name
    return t


def _rebuild_parameter(data: Any, requires_grad: Any = True, *rest: Any) -> Any:
    if isinstance(data, TensorRef):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    result = func(*args) if callable(func) else None
    if isinstance(result, TensorRef) and placeholder_name(new_type) == "torch.nn.parameter.Parameter":
        result.is_parameter = True
    return result


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False, *rest: Any) -> TensorRef:
    name = dtype.name if isinstance(dtype, DTypeRef) else "unknown"
    return TensorRef(None, 0, tuple(size), tuple(stride), name, bool(requires_grad), note="meta tensor (no data)")


def _rebuild_qtensor(storage: Any, storage_offset: int, size: Any, stride: Any, *rest: Any) -> TensorRef:
    t = _rebuild_tensor(storage, storage_offset, size, stride)
    t.quantized = True
    t.note = "quantized"
    return t


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes for protocol < 3 as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise PickleReadError(f"unsupported _codecs.encode call ({encoding!r})")
    return obj.encode(encoding, errors)


def _torch_size(*args: Any) -> tuple:
    return tuple(args[0]) if args else ()


_SAFE_BUILTINS: dict[str, Any] = {
    "set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict, "complex": complex,
    "slice": slice, "bytearray": bytearray, "bytes": bytes, "range": range, "int": int, "float": float,
    "bool": bool, "str": str, "object": object,
}

_REBUILDERS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _rebuild_meta,
    ("torch._utils", "_rebuild_qtensor"): _rebuild_qtensor,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._tensor", "_rebuild_from_type"): lambda func, type_, args, dict_: func(*args),
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): lambda *a: ":".join(str(x) for x in a),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals to inert stand-ins and storages to :class:`StorageRef`.

    ``globals_seen`` records every (module, name) the stream asked for, in order.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, *, storage_resolver: Callable[[tuple], Any] | None = None):
        super().__init__(file, encoding="latin1")
        self._storage_resolver = storage_resolver
        self.globals_seen: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str) -> Any:
        self.globals_seen.append((module, name))
        rebuild = _REBUILDERS.get((module, name))
        if rebuild is not None:
            return rebuild
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module in ("torch", "torch.storage"):
            if name.endswith("Storage") and name in STORAGE_DTYPES:
                return StorageType(STORAGE_DTYPES[name])
            dt = TORCH_DTYPE_ALIASES.get(name, name)
            if dt in DTYPE_ITEMSIZE:
                return DTypeRef(dt)
        if module.startswith("numpy"):
            np_obj = _numpy_global(module, name)
            if np_obj is not None:
                return np_obj
        return _placeholder_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_resolver is not None:
            return self._storage_resolver(pid)
        return _default_storage(pid)


@dataclass(frozen=True)
class StorageType:
    """A storage class named in a pickle (``torch.FloatStorage``); carries its dtype."""

    dtype: str


def _default_storage(pid: Any) -> Any:
    """Resolve a torch persistent id to a :class:`StorageRef` (zip format: key is the member name)."""
    if not isinstance(pid, tuple) or not pid:
        raise PickleReadError(f"unexpected persistent id {pid!r}")
    tag = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if tag == "storage" and len(pid) >= 5:
        storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if isinstance(storage_type, StorageType):
            dtype = storage_type.dtype
        elif isinstance(storage_type, DTypeRef):
            dtype = storage_type.name
        else:
            dtype = "unknown"
        ref = StorageRef(str(key), dtype, str(location), int(numel))
        if len(pid) >= 6 and pid[5] is not None:  # legacy view metadata: (view_key, offset, size)
            view_key, offset, view_size = pid[5]
            return StorageRef(str(view_key), dtype, str(location), int(view_size), view_of=str(key), view_offset=int(offset))
        return ref
    if tag == "module" and len(pid) >= 2:  # legacy torch.save(model): ('module', cls, source_file, source)
        return pid[1]
    raise PickleReadError(f"unexpected persistent id of kind {tag!r}")


class _BoundedReader:
    """File wrapper whose reads never ask for more than what is left in the file.

    The unpickler passes lengths taken from the pickle itself to ``read``; a buffered file would
    allocate that many bytes first, so a forged length could claim terabytes. (Not a
    :class:`torchkeep._region.Region`: this one keeps the file's ``peek()``, so the C unpickler reads the stream
    as ``pickle.load(open(...))`` and torch's legacy loader do, across a FRAME's end, and leaves the file
    positioned right after the pickle, where the next one of a legacy file starts.)
    """

    def __init__(self, fh: Any):
        self._fh = fh
        pos = fh.tell()
        fh.seek(0, io.SEEK_END)
        self._end = fh.tell()
        fh.seek(pos)

    def _left(self) -> int:
        return max(0, self._end - self._fh.tell())

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf)
        left = self._left()
        if len(view) > left:
            view = view[:left]
        return int(self._fh.readinto(view))

    def readline(self, limit: int = -1) -> bytes:
        return bytes(self._fh.readline(limit))

    def peek(self, n: int = 0) -> bytes:
        return bytes(self._fh.peek(n)) if hasattr(self._fh, "peek") else b""

    def tell(self) -> int:
        return int(self._fh.tell())


@dataclass
class PickleResult:
    obj: Any
    globals_seen: list[tuple[str, str]] = field(default_factory=list)
    end: int = 0


def read_pickle(data: bytes | memoryview | io.BufferedIOBase, *, storage_resolver: Callable[[tuple], Any] | None = None) -> PickleResult:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; returns the object and the globals seen.

    Raises:
        PickleReadError: the stream is truncated or corrupt.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | memoryview | bytearray) else _BoundedReader(data)
    up = RestrictedUnpickler(stream, storage_resolver=storage_resolver)  # type: ignore[arg-type]
    try:
        obj = up.load()
    except PickleReadError:
        raise
    except RecursionError:
        raise PickleReadError("the pickle nests too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, UnicodeDecodeError) as exc:
        msg = str(exc) or type(exc).__name__
        raise PickleReadError(f"cannot parse the pickle: {msg}") from None
    return PickleResult(obj, up.globals_seen, stream.tell())
