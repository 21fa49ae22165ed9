"""The pickled state numpy writes for its dtypes and arrays, exactly; one rule for the scanner and the reader.

numpy rebuilds a dtype from the state tuple of its own ``__reduce__`` (``arraydescr_setstate`` in
``numpy/_core/src/multiarray/descriptor.c``: ``(version, byteorder, subarray, names, fields, elsize,
alignment, flags[, metadata])``) and trusts it: the flags are not recomputed from the fields. A dtype with an
object field but ``flags=0`` makes an array rebuilt from raw bytes take 8 of them as an object pointer, which
the first ``str(arr)`` dereferences (red team round 5). So a state is accepted only in the exact shape numpy
writes for the dtype its name gives: plain scalars (numbers, bytes, text, datetimes), ``object`` with numpy's
object flags, and records and sub-arrays of accepted dtypes with the flags numpy computes from their fields.

:mod:`torchkeep._pickle_vm` (what a loader would do) and :mod:`torchkeep._pickle` (the restricted reader,
which then lets numpy rebuild the checked state) both judge with these functions. Nested dtypes (record
fields, sub-array bases) are passed as the caller's own objects and turned into :class:`NpDtype` by its
``resolve`` callback, which raises :class:`NumpyStateError` for anything that is not an accepted dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["NpDtype", "NumpyStateError", "array_state", "dtype_name", "dtype_spec", "frombuffer_args",
           "reconstruct_args", "scalar_args"]

# numpy's dtype flags (ndarraytypes.h)
_HASOBJECT = 0x01  # NPY_ITEM_HASOBJECT / NPY_ITEM_REFCOUNT
_NEEDS_INIT = 0x08
_NEEDS_PYAPI = 0x10
_ALIGNED_STRUCT = 0x80
_FROM_FIELDS = 0x1B  # NPY_NEEDS_INIT | NPY_LIST_PICKLE | NPY_ITEM_REFCOUNT | NPY_NEEDS_PYAPI
_OBJECT_FLAGS = 0x3F  # NPY_OBJECT_DTYPE_FLAGS

#: the names numpy's __reduce__ writes ('%c%d' of kind and size; text counts characters)
_NAME = re.compile(r"(?:b1|[iu][1248]|f(?:2|4|8|12|16)|c(?:8|16|24|32)|[Mm]8|O8|[SUV][0-9]{1,12})\Z")
_TIME_UNITS = {"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "\u03bcs", "ns", "ps", "fs", "as", "generic"}
_MAX_DIMS = 64  # numpy's NPY_MAXDIMS
_MAX_FIELDS = 100_000


class NumpyStateError(ValueError):
    """A numpy dtype or array state numpy itself never writes."""


@dataclass(frozen=True)
class NpDtype:
    """What an accepted dtype is: numpy kind character, item size in bytes, alignment and flags."""

    kind: str
    itemsize: int
    alignment: int
    flags: int

    @property
    def has_object(self) -> bool:
        return bool(self.flags & _HASOBJECT)


Resolve = Callable[[Any], NpDtype]


def _int(x: Any) -> bool:
    return type(x) is int


def _flag(x: Any, value: bool) -> bool:
    """numpy writes False/True (numpy 1.x: 0/1)."""
    return type(x) in (bool, int) and x == value


def dtype_name(args: Any) -> str:
    """The dtype name of ``numpy.dtype(*args)`` if the arguments are what numpy's ``__reduce__`` writes
    (``(name, False, True)``: no alignment, a copy), else :class:`NumpyStateError`."""
    if type(args) is not tuple or len(args) != 3:
        raise NumpyStateError(f"numpy.dtype called with {len(args) if type(args) is tuple else '?'} arguments; "
                              "numpy writes (name, False, True)")
    name, align, copy = args
    if type(name) is not str or not _NAME.match(name):
        shown = repr(name)[:40] if isinstance(name, str | bytes) else type(name).__name__
        raise NumpyStateError(f"numpy.dtype({shown}): not a name numpy writes for a pickled dtype")
    if not (_flag(align, False) and _flag(copy, True)):
        raise NumpyStateError(f"numpy.dtype({name!r}) with align={align!r}, copy={copy!r}; numpy writes False, True")
    return name


def _default(name: str) -> NpDtype:
    """The dtype ``numpy.dtype(name)`` gives before any state is set."""
    kind, n = name[0], int(name[1:])
    if kind == "O":
        return NpDtype("O", n, n, _OBJECT_FLAGS)
    if kind in "SV":
        return NpDtype(kind, n, 1, 0)
    if kind == "U":
        return NpDtype("U", 4 * n, 4, _NEEDS_INIT)
    part = n // 2 if kind == "c" else n
    return NpDtype(kind, n, part if part in (1, 2, 4, 8, 16) else 4, 0)


def _time_meta(extra: Any) -> bool:
    """Datetime state item 9 as numpy writes it: (metadata dict or None, (unit, num, den, events))."""
    if type(extra) is not tuple or len(extra) != 2 or not (extra[0] is None or type(extra[0]) is dict):
        return False
    info = extra[1]
    if type(info) is not tuple or not 2 <= len(info) <= 4 or not all(_int(v) for v in info[1:]):
        return False
    unit = info[0].decode("latin-1") if isinstance(info[0], bytes | bytearray) else info[0]
    return type(unit) is str and unit in _TIME_UNITS and 0 < info[1] < 2**31


def _shape(x: Any, what: str) -> tuple[int, ...]:
    if type(x) is not tuple or len(x) > _MAX_DIMS or not all(_int(d) and 0 <= d < 2**63 for d in x):
        raise NumpyStateError(f"{what}: expected a tuple of sizes")
    return x


def dtype_spec(name: str, state: Any, resolve: Resolve) -> NpDtype:
    """The dtype ``numpy.dtype(name, False, True).__setstate__(state)`` makes, if ``state`` is exactly what
    numpy writes for such a dtype (``state`` None: no state was set); else :class:`NumpyStateError`."""
    base = _default(name)
    if state is None:
        return base
    if type(state) is not tuple or len(state) not in (8, 9) or state[0] != len(state) - 5 or not _int(state[0]):
        raise NumpyStateError(f"numpy dtype {name!r}: state {_kind(state)} is not numpy's (version 3 or 4)")
    byteorder, sub, names, fields, elsize, alignment, flags = state[1:8]
    extra = state[8] if len(state) == 9 else None
    where = f"numpy dtype {name!r}"
    # numpy writes '|' where bytes have no order (and so an object pointer is never byte-swapped), else '<' or '>'
    orders = ("|",) if base.kind in "OSVb" or base.itemsize == 1 else ("<", ">", "=")
    if type(byteorder) is not str or byteorder not in orders:
        raise NumpyStateError(f"{where}: byte order {byteorder!r}")
    if not all(_int(v) for v in (elsize, alignment, flags)):
        raise NumpyStateError(f"{where}: size, alignment and flags must be integers")
    # numpy 1.x wrote the flags as a signed char (144 as -112); numpy then sets them to that plus 128 (sic)
    written, flags = (flags & 0xFF, flags + 128) if -128 <= flags < 0 else (flags, flags)
    if base.kind in "Mm":
        if not _time_meta(extra):
            raise NumpyStateError(f"{where}: datetime unit is not numpy's")
    elif extra is not None and type(extra) is not dict:
        raise NumpyStateError(f"{where}: metadata that is not a dict")
    if sub is None and names is None and fields is None:
        sized = base.kind in "SUV"
        want = (base.itemsize, base.alignment) if sized else (-1, -1)
        ok_flags = (0, _NEEDS_INIT) if base.kind == "U" else (base.flags,)  # numpy < 1.10 wrote 0 for text
        if (elsize, alignment) != want or written not in ok_flags:
            raise NumpyStateError(f"{where}: size {elsize}, alignment {alignment}, flags {flags}; numpy writes "
                                  f"{want[0]}, {want[1]}, {base.flags}")
        return NpDtype(base.kind, base.itemsize, base.alignment, flags)
    if base.kind != "V":
        raise NumpyStateError(f"{where}: fields or a sub-array on a dtype that is not a record")
    if sub is not None:
        return _subarray(where, base, sub, names, fields, elsize, alignment, flags, resolve)
    spec = _record(where, base, names, fields, elsize, alignment, written, resolve)
    return NpDtype("V", spec.itemsize, spec.alignment, flags)


def _subarray(where: str, base: NpDtype, sub: Any, names: Any, fields: Any, elsize: int, alignment: int, flags: int,
              resolve: Resolve) -> NpDtype:
    if names is not None or fields is not None or type(sub) is not tuple or len(sub) != 2:
        raise NumpyStateError(f"{where}: sub-array state is not numpy's")
    item = resolve(sub[0])
    shape = _shape(sub[1], f"{where}: sub-array shape")
    size = item.itemsize * math.prod(shape)
    if not elsize == size == base.itemsize or alignment not in (1, 2, 4, 8, 16) or flags != item.flags:
        raise NumpyStateError(f"{where}: sub-array of size {elsize}, alignment {alignment}, flags {flags}; numpy "
                              f"writes {size}, {item.alignment}, {item.flags}")
    return NpDtype("V", size, alignment, flags)


def _record(where: str, base: NpDtype, names: Any, fields: Any, elsize: int, alignment: int, flags: int,
            resolve: Resolve) -> NpDtype:
    if type(names) is not tuple or type(fields) is not dict or len(names) > _MAX_FIELDS:
        raise NumpyStateError(f"{where}: record names/fields are not numpy's")
    if not all(type(n) is str for n in names) or len(set(names)) != len(names) or set(fields) != set(names):
        raise NumpyStateError(f"{where}: record field names do not match its fields (titles are not read)")
    want = _NEEDS_PYAPI | (flags & _ALIGNED_STRUCT)
    spans: list[tuple[int, int, bool]] = []
    aligned, most = bool(flags & _ALIGNED_STRUCT), 1
    for n in names:
        entry = fields[n]
        if type(entry) is not tuple or len(entry) != 2 or not _int(entry[1]):
            raise NumpyStateError(f"{where}: field {n!r} is not (dtype, offset)")
        item = resolve(entry[0])
        start = entry[1]
        if start < 0 or start + item.itemsize > elsize:
            raise NumpyStateError(f"{where}: field {n!r} lies outside the record's {elsize} bytes")
        if aligned and start % item.alignment:
            raise NumpyStateError(f"{where}: field {n!r} at offset {start} in an aligned record")
        want |= item.flags & _FROM_FIELDS
        most = max(most, item.alignment)
        spans.append((start, start + item.itemsize, item.has_object))
    if any(obj for _, _, obj in spans):  # an object pointer must not share bytes with any other field
        spans.sort()
        if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
            raise NumpyStateError(f"{where}: fields overlap an object field")
    if flags != want:
        raise NumpyStateError(f"{where}: flags {flags}; numpy computes {want} for these fields")
    if elsize != base.itemsize:
        raise NumpyStateError(f"{where}: size {elsize} for a {base.itemsize}-byte record")
    if alignment != (most if aligned else 1) or elsize % alignment:  # numpy: the largest field alignment, or 1
        raise NumpyStateError(f"{where}: alignment {alignment} for a {'n aligned' if aligned else ' packed'} record")
    return NpDtype("V", elsize, alignment, flags)


def _kind(x: Any) -> str:
    return f"of {len(x)} items" if type(x) is tuple else f"of type {type(x).__name__}"


def _data_size(data: Any) -> int | None:
    if isinstance(data, bytes | bytearray):
        return len(data)
    if type(data) is str:  # Python 2 pickles read as latin1; numpy encodes it back
        return len(data) if all(ord(c) < 256 for c in data) else None
    return None


def reconstruct_args(args: tuple) -> None:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: numpy's ``__reduce__`` writes nothing else
    (the shape and dtype come with the state; a large shape here would allocate)."""
    if len(args) != 3 or args[1] != (0,) or type(args[1]) is not tuple or args[2] not in (b"b", "b"):
        raise NumpyStateError("numpy _reconstruct with a shape or type code numpy never writes (it writes (0,), b'b')")


def array_state(state: Any, resolve: Resolve) -> tuple[NpDtype, tuple[int, ...]]:
    """Check an ndarray's ``__setstate__`` state ``(1, shape, dtype, is_fortran, data)``: an accepted dtype,
    bytes of exactly the array's size (a list of objects for object dtypes, as numpy writes them)."""
    if type(state) is not tuple or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
        raise NumpyStateError(f"numpy array state {_kind(state)} is not numpy's (1, shape, dtype, fortran, data)")
    shape, dtype, fortran, data = state[-4:]
    shape = _shape(shape, "numpy array shape")
    spec = resolve(dtype)
    if type(fortran) not in (bool, int) or fortran not in (0, 1):
        raise NumpyStateError("numpy array order flag is not a bool")
    count = math.prod(shape)
    if spec.has_object:
        if type(data) is not list or len(data) != count:
            raise NumpyStateError("numpy object array whose data is not the list of its items")
    elif _data_size(data) != count * spec.itemsize:
        raise NumpyStateError(f"numpy array data is not {count * spec.itemsize} bytes ({count} x {spec.itemsize})")
    return spec, shape


def scalar_args(args: tuple, resolve: Resolve) -> NpDtype:
    """``numpy.core.multiarray.scalar(dtype, data)``: a dtype without objects and its bytes."""
    if len(args) != 2:
        raise NumpyStateError("numpy scalar without its bytes")
    spec = resolve(args[0])
    if spec.has_object or _data_size(args[1]) != spec.itemsize:
        raise NumpyStateError(f"numpy scalar data is not the {spec.itemsize} bytes of a dtype without objects")
    return spec


def frombuffer_args(args: tuple, resolve: Resolve) -> NpDtype:
    """``numpy._core.numeric._frombuffer(buf, dtype, shape, order)`` (protocol 5): bytes of exactly the size."""
    if len(args) != 4 or args[3] not in ("C", "F"):
        raise NumpyStateError("numpy _frombuffer arguments are not numpy's (buffer, dtype, shape, 'C' or 'F')")
    spec = resolve(args[1])
    shape = _shape(tuple(args[2]) if type(args[2]) is list else args[2], "numpy _frombuffer shape")
    if spec.has_object or _data_size(args[0]) != math.prod(shape) * spec.itemsize:
        raise NumpyStateError("numpy _frombuffer data is not the bytes of its shape and dtype")
    return spec
