"""numpy values in a pickle read by :mod:`torchkeep._pickle`: numpy's own reconstruct functions and types,
called only behind :mod:`torchkeep._npstate`'s check of what they get.

numpy trusts a pickled dtype's state (an object field with ``flags=0`` turns raw bytes into object pointers),
so numpy is handed a dtype or array state only once :mod:`torchkeep._npstate` found it exactly what numpy
writes. numpy is imported only when a pickle names it.
"""

from __future__ import annotations

from typing import Any

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
from torchkeep._pickle_refs import PickleReadError, _placeholder_class, placeholder_name

__all__ = ["NumpyDtypeRef"]


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
