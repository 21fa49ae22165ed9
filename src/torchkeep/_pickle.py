"""A restricted pickle reader that never imports or calls anything named in the file.

Every global a pickle names goes through :meth:`RestrictedUnpickler.find_class`. A short allowlist of
rebuild functions is answered with torchkeep's own inert stand-ins (a tensor becomes a
:class:`TensorRef` that records dtype, shape, stride and where its bytes live; nothing is read).
Plain containers and scalars are rebuilt as themselves. Everything else — ``__main__.Net``,
``argparse.Namespace``, ``os.system`` — becomes a :class:`Placeholder` subclass that keeps its
``module``/``name``, the arguments it was called with and the state it was given, and does nothing.

No module is imported on behalf of the file (numpy is imported only to decode numpy scalars and
arrays, with numpy's own reconstruct functions, which run no code from the file). numpy trusts a pickled
dtype's state (an object field with ``flags=0`` turns raw bytes into object pointers), so numpy is handed a
dtype or array state only once :mod:`torchkeep._npstate` found it exactly what numpy writes.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchkeep._dtypes import DTYPE_ITEMSIZE, STORAGE_DTYPES, TORCH_DTYPE_ALIASES
from torchkeep._npstate import (
    NpDtype,
    NumpyStateError,
    array_state,
    dtype_name,
    dtype_spec,
    frombuffer_args,
    reconstruct_args,
    scalar_args,
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


class PickleReadError(Exception):
    """The pickle could not be parsed (truncated, corrupt, unsupported)."""


@dataclass(eq=False)
class DTypeRef:
    """A torch dtype named in a pickle (``torch.float16``)."""

    name: str

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(eq=False)
class StorageRef:
    """Where a storage's bytes live; nothing is read.

    ``key`` is the archive member name under ``data/`` (zip) or the legacy root key; ``numel`` counts
    elements of ``dtype``.
    """

    key: str
    dtype: str
    location: str
    numel: int
    # legacy files: a storage may be a view into another (root) storage
    view_of: str | None = None
    view_offset: int = 0

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE.get(self.dtype, 1)


@dataclass(eq=False)
class TensorRef:
    """A tensor as described by its pickle: no bytes are read."""

    storage: StorageRef | None
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
    quantized: bool = False
    note: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE.get(self.dtype, 1)

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, st in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and st != expected:
                return False
            expected *= size
        return True

    def __repr__(self) -> str:
        return f"TensorRef({self.dtype}{list(self.shape)})"


class Placeholder:
    """Stand-in for a class or function the pickle names; records what was done to it.

    Subclasses are made per (module, name) by :func:`_placeholder_class`; instances keep
    ``_tk_args`` (constructor/call arguments), ``_tk_state`` (the last ``__setstate__`` / BUILD state, for
    classes with a ``__setstate__`` of their own), ``_tk_dict`` (the instance ``__dict__`` every BUILD merged
    into, as pickle does for a class without ``__setstate__``), ``_tk_builds`` (how many BUILDs) and
    ``_tk_items`` / ``_tk_list`` for SETITEMS / APPENDS on them.
    """

    _tk_module: str = ""
    _tk_name: str = ""
    _tk_args: tuple
    _tk_kwargs: dict
    _tk_state: Any
    _tk_dict: dict
    _tk_builds: int
    _tk_items: dict
    _tk_list: list

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_tk_args", args)
        object.__setattr__(obj, "_tk_kwargs", kwargs)
        object.__setattr__(obj, "_tk_state", None)
        object.__setattr__(obj, "_tk_dict", {})
        object.__setattr__(obj, "_tk_builds", 0)
        object.__setattr__(obj, "_tk_items", {})
        object.__setattr__(obj, "_tk_list", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_tk_args", args)
        object.__setattr__(self, "_tk_kwargs", kwargs)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_tk_state", state)
        object.__setattr__(self, "_tk_builds", self._tk_builds + 1)
        # pickle's load_build on a class without __setstate__: a (state, slotstate) pair splits; the state
        # dict is merged into __dict__ (str keys interned), then each slotstate item is set with setattr
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        for part in (state, slotstate):
            if isinstance(part, dict):
                self._tk_dict.update({sys.intern(k) if type(k) is str else k: v for k, v in part.items()})

    def __setitem__(self, key: Any, value: Any) -> None:
        self._tk_items[key] = value

    def append(self, value: Any) -> None:
        self._tk_list.append(value)

    def extend(self, values: Any) -> None:
        self._tk_list.extend(values)

    @property
    def tk_qualname(self) -> str:
        return f"{self._tk_module}.{self._tk_name}"

    @property
    def tk_state_dict(self) -> dict[str, Any]:
        """The instance ``__dict__`` every BUILD left (dict states and (dict, slots) pairs merged in order)."""
        return self._tk_dict

    def __repr__(self) -> str:
        return f"<{self.tk_qualname}>"


def placeholder_name(obj: Any) -> str | None:
    """``module.name`` of a placeholder instance or class, else None."""
    if isinstance(obj, Placeholder):
        return obj.tk_qualname
    if isinstance(obj, type) and issubclass(obj, Placeholder):
        return f"{obj._tk_module}.{obj._tk_name}"
    return None


_PLACEHOLDERS: dict[tuple[str, str], type[Placeholder]] = {}


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    key = (module, name)
    cls = _PLACEHOLDERS.get(key)
    if cls is None:
        safe_name = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "Anonymous"
        cls = type(safe_name, (Placeholder,), {"_tk_module": module, "_tk_name": name, "__module__": "torchkeep.placeholders"})
        _PLACEHOLDERS[key] = cls
    return cls


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


def _numpy_global(module: str, name: str) -> Any | None:
    """numpy's own reconstruct functions and types, behind :mod:`torchkeep._npstate`'s check of what they get."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy", "dtype"): _np_dtype,
    }
    if (module, name) in allowed:
        return allowed[(module, name)]
    if (module, name) == ("numpy", "ndarray"):
        return _placeholder_class(module, name)  # only _reconstruct's argument: numpy's constructor is never called
    if (module == "numpy" and name.endswith("DType")) or module == "numpy.dtypes":
        return lambda *a, **k: _np_dtype_of_class(name)
    return None


def _refuse(exc: NumpyStateError) -> PickleReadError:
    return PickleReadError(f"refused a numpy dtype or array state numpy never writes: {exc}")


class NumpyDtypeRef:
    """A numpy dtype named in a pickle (``numpy.dtype('f4', False, True)`` + its state).

    numpy builds it (:attr:`dtype`) only from a name and a state :mod:`torchkeep._npstate` accepts, as soon as
    the state is set; nested dtypes (record fields, sub-array bases) are references of this class too.
    """

    __slots__ = ("_built", "_used", "dtype", "name", "spec")

    def __init__(self, name: str) -> None:
        import numpy as np

        self.name = name
        self.spec = dtype_spec(name, None, _np_spec)
        self.dtype = np.dtype(name, False, True)
        self._built = False
        self._used = False  # numpy would change the dtype in place under the arrays already using it

    def __setstate__(self, state: Any) -> None:  # BUILD
        if self._built or self._used:
            raise PickleReadError(f"numpy dtype {self.name!r} given a state {'twice' if self._built else 'after use'}")
        try:
            self.spec = dtype_spec(self.name, state, _np_spec)
        except NumpyStateError as exc:
            raise _refuse(exc) from None
        self._built = True
        real = list(state)
        if state[2] is not None:  # sub-array (base, shape): numpy's own dtype for the base
            real[2] = (state[2][0].dtype, state[2][1])
        if state[4] is not None:  # record fields {name: (dtype, offset)}
            real[4] = {k: (v[0].dtype, v[1]) for k, v in state[4].items()}
        self.dtype.__setstate__(tuple(real))  # type: ignore[attr-defined]
        if self.dtype.itemsize != self.spec.itemsize or self.dtype.hasobject != self.spec.has_object:
            raise PickleReadError(f"numpy built dtype {self.name!r} differently from its checked state")

    def __repr__(self) -> str:
        return repr(self.dtype)


def _np_spec(x: Any) -> NpDtype:
    if not isinstance(x, NumpyDtypeRef):
        raise NumpyStateError(f"expected a pickled numpy dtype, got {type(x).__name__}")
    x._used = True
    return x.spec


def _np_dtype(*args: Any) -> NumpyDtypeRef:
    try:
        return NumpyDtypeRef(dtype_name(args))
    except NumpyStateError as exc:
        raise _refuse(exc) from None


def _np_dtype_of_class(name: str) -> NumpyDtypeRef:
    """``numpy.dtypes.Float32DType()``: the dtype of that class, if it is one numpy pickles by name."""
    import numpy as np

    try:
        reduced = np.dtype(name.replace("DType", "").lower() or "float64").__reduce__()
        return _np_dtype(*reduced[1])
    except (TypeError, ValueError, RuntimeError, IndexError):
        raise PickleReadError(f"numpy dtype class {name!r} is not read") from None


_ARRAY_TYPES: list[type] = []


def _reader_array() -> Any:
    """An empty array whose BUILD (``__setstate__``) numpy runs only on a state :mod:`torchkeep._npstate` accepts
    (a subclass named ``ndarray``: callers copy it into a plain array)."""
    import numpy as np

    if not _ARRAY_TYPES:

        class ndarray(np.ndarray):  # callers know numpy arrays by this name
            def __setstate__(self, state: Any) -> None:
                try:
                    array_state(state, _np_spec)
                except NumpyStateError as exc:
                    raise _refuse(exc) from None
                real = list(state)
                real[-3] = state[-3].dtype
                np.ndarray.__setstate__(self, tuple(real))

        _ARRAY_TYPES.append(ndarray)
    return np.ndarray.__new__(_ARRAY_TYPES[0], (0,), np.int8)


def _np_reconstruct(*args: Any) -> Any:
    try:
        reconstruct_args(args)
    except NumpyStateError as exc:
        raise _refuse(exc) from None
    if placeholder_name(args[0]) != "numpy.ndarray":
        raise PickleReadError("numpy _reconstruct of a class that is not numpy.ndarray")
    return _reader_array()


def _np_bytes(data: Any) -> bytes:
    return data.encode("latin1") if isinstance(data, str) else bytes(data)


def _np_scalar(*args: Any) -> Any:
    import numpy as np

    try:
        scalar_args(args, _np_spec)
    except NumpyStateError as exc:
        raise _refuse(exc) from None
    return np.ndarray((), dtype=args[0].dtype, buffer=_np_bytes(args[1]))[()]


def _np_frombuffer(*args: Any) -> Any:
    import numpy as np

    try:
        frombuffer_args(args, _np_spec)
    except NumpyStateError as exc:
        raise _refuse(exc) from None
    buf, dtype, shape, order = args
    return np.ndarray(tuple(shape), dtype=dtype.dtype, buffer=_np_bytes(buf), order=order).copy(order="K")


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
    allocate that many bytes first, so a forged length could claim terabytes.
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
