"""``.npy`` files (alone, in an ``.npz`` or any zip): the header parsed by numpy itself, and the data scanned
as a pickle whenever numpy's dtype unpickles (``dtype.hasobject``, numpy 2's ``StringDType``)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import IO, Any

from torchkeep._detect import NPY_MAGIC
from torchkeep._inflate import _mib
from torchkeep._region import Region
from torchkeep._walk_stacked import StackedWalker

__all__ = ["NPY_MAX_HEADER", "NpyWalker"]

NPY_MAX_HEADER = 16 << 20  # np.load(allow_pickle=True) parses .npy headers of any size; larger are refused here


class NpyWalker(StackedWalker):
    def npy(self, fh: IO[bytes], start: int, end: int, place: str) -> bool:
        """Judge a ``.npy`` header the way ``np.load(allow_pickle=True)`` does; scan the data as a pickle
        when numpy would unpickle it. Returns whether the data was scanned as a pickle."""
        try:
            dtype, data_start = _npy_header(Region(fh, start, end))  # type: ignore[arg-type]
        except _NpyHeaderError as exc:
            self.sink.on_finding(exc.severity, "npy-header", place, start, str(exc))
            if exc.data_start is not None and start + exc.data_start < end:
                # no numpy here reads past this header; scan what follows it anyway, as a candidate
                self.stacked(fh, start + exc.data_start, end, f"{place} (after an unreadable header)", required=False)
            return False
        if not _npy_unpickles(dtype):
            return False
        self.stacked(fh, start + data_start, end, f"{place} (object array pickle)", required=True)
        return True


# -- numpy ---------------------------------------------------------------------------------------------
class _NpyHeaderError(Exception):
    """numpy cannot read the header (``error``), or this scanner will not parse it (``dangerous``)."""

    def __init__(self, why: str, data_start: int | None, severity: str = "error") -> None:
        super().__init__(why)
        self.data_start, self.severity = data_start, severity


def _numpy_header_reader() -> Callable[..., Any] | None:
    """numpy's own header parser (private, the exact one np.load calls), where this numpy has it."""
    for module in ("numpy.lib._format_impl", "numpy.lib.format"):
        try:
            reader = getattr(importlib.import_module(module), "_read_array_header", None)
        except ImportError:
            continue
        if reader is not None:
            return reader  # type: ignore[no-any-return]
    return None


def _npy_header(view: IO[bytes]) -> tuple[Any, int]:
    """``(dtype, data offset)`` of the .npy in ``view``, parsed as ``np.load(allow_pickle=True)`` parses it."""
    from numpy.lib import format as npformat

    magic = view.read(8)
    if len(magic) < 8 or not magic.startswith(NPY_MAGIC):
        raise _NpyHeaderError("not a .npy header", None)
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise _NpyHeaderError(f".npy format version {version[0]}.{version[1]}: numpy reads only 1.0, 2.0 and 3.0", None)
    width = 2 if version == (1, 0) else 4
    raw = view.read(width)
    if len(raw) < width:
        raise _NpyHeaderError("the .npy header is truncated", None)
    hlen = int.from_bytes(raw, "little")
    data_start = 8 + width + hlen
    if hlen > NPY_MAX_HEADER:
        raise _NpyHeaderError(
            f"the .npy header claims {hlen} bytes, more than the {_mib(NPY_MAX_HEADER)} this scanner parses; "
            "np.load(allow_pickle=True) parses headers of any size, so its dtype was not judged",
            data_start,
            "dangerous",
        )
    view.seek(8)
    reader = _numpy_header_reader()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about Python 2 headers it has to filter
            if reader is not None:
                _, _, dtype = reader(view, version, max_header_size=2**64)
            elif version == (1, 0):
                _, _, dtype = npformat.read_array_header_1_0(view, max_header_size=2**64)
            else:  # 2.0 (3.0 differs only by a UTF-8 header, refused below when it is not ASCII)
                _, _, dtype = npformat.read_array_header_2_0(view, max_header_size=2**64)
    except Exception as exc:  # whatever numpy raises, np.load raises too
        raise _NpyHeaderError(f"numpy cannot read the .npy header ({type(exc).__name__}: {exc})"[:300], data_start) from None
    if reader is None and version == (3, 0):
        view.seek(12)
        if not view.read(hlen).isascii():
            raise _NpyHeaderError("a .npy 3.0 header in UTF-8 this numpy cannot parse", data_start, "dangerous")
    return dtype, data_start


def _npy_unpickles(dtype: Any) -> bool:
    """Does np.load(allow_pickle=True) unpickle data of this dtype? numpy's own answer is ``hasobject``
    (object fields at any depth, and numpy 2's variable-width ``StringDType``, whose data it pickles);
    the StringDType test stands in case a numpy version reports it otherwise."""
    if dtype.hasobject:
        return True
    import numpy as np

    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    if string_dtype is not None and isinstance(dtype, string_dtype):
        return True
    if dtype.subdtype is not None:
        return _npy_unpickles(dtype.subdtype[0])
    return any(_npy_unpickles(dtype.fields[n][0]) for n in dtype.names or ())
