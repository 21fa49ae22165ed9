"""What the restricted pickle reader (:mod:`torchkeep._pickle`) returns instead of real objects: references
to tensors, storages and dtypes (nothing is read or built), and a :class:`Placeholder` for every other global
the file names (it records what was done to it and does nothing)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from torchkeep._dtypes import DTYPE_ITEMSIZE

__all__ = ["DTypeRef", "PickleReadError", "Placeholder", "StorageRef", "TensorRef", "placeholder_name"]


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
