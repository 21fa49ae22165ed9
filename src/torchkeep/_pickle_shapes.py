"""What torch.save, numpy and torch.distributed.checkpoint write: the shapes of a rebuild call's arguments,
the persistent ids, the states BUILD sets; and the few pure data constructors whose real result keeps a
stream going exactly as in a loader (:func:`_emulate`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from torchkeep._pickle_standins import (
    _NO_VALUE,
    _PLAIN_TYPES,
    Value,
    _Call,
    _describe,
    _is_function_name,
    _Meta,
    _plain,
    _short,
    _value_of,
)
from torchkeep._scan_names import is_class
from torchkeep._scan_rules import CALLS, RECONSTRUCTORS

if TYPE_CHECKING:
    from torchkeep._pickle_run import _Run

_UNPICKLER_HOOKS = ("__setstate__", "append", "extend", "add")

_DCP = "torch.distributed.checkpoint."
#: torch.distributed.checkpoint's metadata classes -> the fields pickle writes: dataclasses without __slots__
#: or __setstate__ (one BUILD of their __dict__, keys among these fields; none when the __dict__ is empty),
#: and TensorProperties (None), whose own __getstate__ writes a 5-tuple
_DCP_FIELDS: dict[str, frozenset[str] | None] = {
    f"{_DCP}metadata.Metadata": frozenset({"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}),
    f"{_DCP}metadata.TensorStorageMetadata": frozenset({"properties", "size", "chunks"}),
    f"{_DCP}metadata.ChunkStorageMetadata": frozenset({"offsets", "sizes"}),
    f"{_DCP}metadata.BytesStorageMetadata": frozenset(),
    f"{_DCP}metadata.MetadataIndex": frozenset({"fqn", "offset", "index"}),
    f"{_DCP}metadata.StorageMeta": frozenset({"checkpoint_id", "save_id", "load_id", "modules"}),
    f"{_DCP}filesystem._StorageInfo": frozenset({"relative_path", "offset", "length", "transform_descriptors"}),
    f"{_DCP}planner.WriteItem": frozenset({"index", "type", "bytes_io_data", "tensor_data"}),
    f"{_DCP}planner.ReadItem": frozenset({"type", "dest_index", "dest_offsets", "storage_index", "storage_offsets", "lengths"}),
    f"{_DCP}metadata.TensorProperties": None,
}


def _data_build(target: Value, op: str, arg: Any) -> str | None:
    """What is wrong with ``op`` on a data object, else None. pickle writes at most one BUILD per object (a
    second one is merged into ``__dict__`` by loaders, where a reader may keep only the last); a DCP metadata
    class gets exactly the state its class writes (red-team round 6: two BUILDs on a Metadata, a
    (None, slotstate) pair on the frozen MetadataIndex that pickle.load cannot set, so DCP reads another file)."""
    if op == "BUILD" and sum(m[0] == "BUILD" for m in target.mutations) > 1:
        return "a second BUILD on one object (pickle writes one)"
    call = target.call
    if call is None:
        return None
    cls = call.args[0] if repr(call.func) in RECONSTRUCTORS and call.args else call.func
    qual = repr(cls) if isinstance(cls, _Meta) else ""
    if qual not in _DCP_FIELDS:
        return None
    fields = _DCP_FIELDS[qual]
    if op != "BUILD":
        return f"{qual} takes no {op} (torch writes one BUILD of its state)"
    if fields is None:
        return None if type(arg) is tuple and len(arg) == 5 else "a state that is not the 5-tuple TensorProperties writes"
    if type(arg) is tuple:
        return (f"a (state, slotstate) pair on {qual}, a dataclass without __slots__: pickle.load fails on it "
                "(loaders then read another file) while readers that merge the pair go on")
    if type(arg) is not dict:
        return f"a state that is not a dict of {qual}'s fields"
    odd = [k for k in arg if type(k) is not str or k not in fields]
    if odd:
        return f"state keys that are not fields of {qual} ({_short(odd, 60)})"
    return None


def _sets_unpickler_hook(state: Any) -> str | None:
    """What a BUILD state would set that no object torch.save writes has, else None: any dunder attribute
    (``__name__`` of a class, ``__class__``), an attribute name computed at load time (its value is unknown
    here), or one of the methods the unpicklers look up on the *instance* (``__setstate__``, ``append``,
    ``extend``, ``add``) holding something that may be callable."""
    parts = [state]
    if type(state) is tuple and len(state) == 2:
        parts = list(state)
    for part in parts:
        if type(part) not in (dict, OrderedDict):
            continue
        for key, value in part.items():
            if type(key) is not str:
                return f"<computed name {_short(key, 40)}>"
            if key.startswith("__") and key.endswith("__"):
                return key
            if key in _UNPICKLER_HOOKS and isinstance(value, (_Meta, Value)):
                return key
    return None


_CODECS = {"latin1": "latin-1", "latin-1": "latin-1", "iso-8859-1": "latin-1", "utf-8": "utf-8", "utf8": "utf-8",
           "ascii": "ascii"}  # the codecs encode() is emulated with (no encoding module the file names is looked up)


def _emulate(qual: str, args: tuple) -> Any:
    """The real result of a few pure data constructors on plain arguments, else ``_NO_VALUE``.

    Keeps the stream going exactly as in a loader where later opcodes use the value (bytes passed to
    numpy or torch.load, dict keys). Only constructors whose cost is bounded by the stream's own size.
    """
    try:
        if not all(isinstance(a, (*_PLAIN_TYPES, list, tuple, dict, set, frozenset)) for a in args):
            return _NO_VALUE
        if qual == "_codecs.encode":
            if len(args) == 2 and type(args[0]) is str and str(args[1]).lower().replace("_", "-") in _CODECS:
                return args[0].encode(_CODECS[str(args[1]).lower().replace("_", "-")])
            return _NO_VALUE
        if qual == "collections.OrderedDict":
            return OrderedDict(*args) if all(type(a) in (list, tuple, dict, OrderedDict) for a in args) else OrderedDict()
        if qual in ("builtins.set", "builtins.frozenset", "builtins.list", "builtins.tuple", "builtins.dict"):
            ctor = {"builtins.set": set, "builtins.frozenset": frozenset, "builtins.list": list,
                    "builtins.tuple": tuple, "builtins.dict": dict}[qual]
            if all(type(a) in (list, tuple, set, frozenset, dict) for a in args):
                return ctor(*args)
        # bytes(str, encoding) would look up (import) an encoding the file names: only bytes(bytes | list)
        if qual in ("builtins.bytes", "builtins.bytearray") and len(args) == 1 and type(args[0]) in (bytes, bytearray, list):
            return (bytes if qual.endswith("bytes") else bytearray)(args[0])
        if qual in ("builtins.bytes", "builtins.bytearray") and not args:  # pickle protocol 2 writes b"" as bytes()
            return b"" if qual.endswith("bytes") else bytearray()
        if qual == "builtins.complex" and all(type(a) in (int, float) for a in args):
            return complex(*args)
        if qual == "torch.Size":
            return tuple(args[0])
        if qual == "torch.device":
            return ":".join(str(a) for a in args)
    except (TypeError, ValueError, UnicodeError, OverflowError, MemoryError, LookupError):
        return _NO_VALUE
    return _NO_VALUE


# -- argument shapes -------------------------------------------------------------------------------------
def _is_ints(x: Any) -> bool:
    if type(x) in (tuple, list):
        return len(x) < 4096 and all(type(i) in (int, bool) for i in x)
    return isinstance(x, Value) and x.call is not None and x.call.target == "torch.Size"


def _shape_ok(shape: str, x: Any) -> str | None:
    """None if ``x`` fits ``shape``, else what is wrong."""
    if shape.startswith("opt:"):
        return None if x is None else _shape_ok(shape[4:], x)
    simple = {"int": (int,), "bool": (bool, int), "float": (float, int), "num": (int, float), "str": (str,),
              "bytes": (bytes, bytearray)}
    if shape in simple:
        return None if type(x) in simple[shape] else f"expected {shape}, got {_describe(x)}"
    if shape == "ints":
        return None if _is_ints(x) else f"expected a tuple of ints, got {_describe(x)}"
    if shape == "plain":
        return None if _plain(x) else f"expected plain data, got {_describe(x)}"
    if shape == "const":  # functions that return their argument: a global passed through would be laundered
        return None if _plain(x, globals_=False) else f"expected data without globals, got {_describe(x)}"
    if shape in ("tensor", "ndarray", "storage", "np-dtype", "bitgen"):
        return None if isinstance(x, Value) and x.kind == shape else f"expected a {shape}, got {_describe(x)}"
    if shape == "tensors":
        ok = type(x) in (list, tuple) and all(isinstance(t, Value) and t.kind == "tensor" for t in x)
        return None if ok else f"expected tensors, got {_describe(x)}"
    if shape == "sparse-parts":  # torch 2.x: (indices, values, size[, is_coalesced]) or (cidx, pidx, values, size)
        tensors = [t for t in x if isinstance(t, Value) and t.kind == "tensor"] if type(x) is tuple else []
        ok = (type(x) is tuple and len(x) in (3, 4) and len(tensors) in (2, 3) and _is_ints(x[len(tensors)])
              and all(t is None or type(t) is bool for t in x[len(tensors) + 1:]))
        return None if ok else f"expected a sparse tensor's parts, got {_describe(x)}"
    if shape == "hooks":
        empty = x is None or (type(x) in (dict, OrderedDict) and not x)
        return None if empty else f"backward hooks that would run code ({_describe(x)})"
    if shape == "qparams":
        ok = type(x) is tuple and len(x) > 0 and _value_of(x[0]) == "qscheme" and _plain(x[1:])
        return None if ok else f"expected quantizer parameters, got {_describe(x)}"
    if shape == "type":
        return None if _value_of(x) == "type" else f"expected a builtin type, got {_describe(x)}"
    if shape == "tensor-type":
        if isinstance(x, _Meta) and x._tk_kind == "model":
            return None  # a tensor subclass of model code: custom-code (judged at its import)
        return None if _value_of(x) == "tensor-type" else f"expected a tensor class, got {_describe(x)}"
    if shape == "rebuild":
        ok = isinstance(x, _Meta) and repr(x) in CALLS and CALLS[repr(x)][1] == "tensor" and repr(x) != "torch._tensor._rebuild_from_type_v2"  # fmt: skip
        return None if ok else f"expected a tensor rebuild function, got {_describe(x)}"
    if shape == "rebuild-args":
        return None if type(x) in (tuple, list) else f"expected an argument tuple, got {_describe(x)}"
    if shape in ("bitgen-name", "bitgen-any"):
        ok = type(x) is str or _value_of(x) == "bitgen-type" or (shape == "bitgen-any" and isinstance(x, Value) and x.kind == "bitgen")  # fmt: skip
        return None if ok else f"expected a bit generator, got {_describe(x)}"
    if shape == "bitgen-ctor":
        ok = isinstance(x, _Meta) and repr(x) == "numpy.random._pickle.__bit_generator_ctor"
        return None if ok else f"expected numpy's bit generator constructor, got {_describe(x)}"
    if shape == "seedseq-type":
        return None if _value_of(x) == "seedseq-type" else f"expected SeedSequence, got {_describe(x)}"
    if shape in ("dtype", "layout", "ndarray-type"):
        if shape == "layout" and isinstance(x, Value) and x.kind == "layout":
            return None
        return None if _value_of(x) == shape else f"expected a {shape}, got {_describe(x)}"
    return f"unknown argument shape {shape}"


def _check_args(shapes: tuple[str, ...], args: tuple) -> str | None:
    """None if ``args`` fit ``shapes`` (see :data:`torchkeep._scan_rules.CALLS`), else what is wrong."""
    if type(args) is not tuple:
        return "arguments that are not a tuple"
    star = shapes[-1] == "*"
    fixed = shapes[:-1] if star else shapes
    if len(args) > len(fixed) and not star:
        return f"{len(args)} arguments, at most {len(fixed)} expected"
    for i, x in enumerate(args):
        shape = fixed[min(i, len(fixed) - 1)]
        bad = _shape_ok(shape, x)
        if bad is not None:
            return f"argument {i + 1}: {bad}"
    return None


def _builds(run: _Run, func: _Meta, c: _Call) -> bool:
    """Whether the loader builds ``func`` (``cls.__new__(cls)``) rather than calling it, at this NEWOBJ-like step.

    The NEWOBJ / NEWOBJ_EX opcodes refuse anything but a type; INST and OBJ call anything that is not a type.
    So past INST/OBJ (known in the pure-Python pass; the findings of all passes are merged) only a class is
    built: one its source shows as a ``class`` or, where the source cannot be read (not installed here, an
    extension module), a name spelled like a class.
    """
    if not run.instantiating:
        return True
    known = is_class(func.module, func.name)
    return known if known is not None else not _is_function_name(func.name)


def _is_storage_pid(pid: Any) -> bool:
    """The persistent ids torch writes: ('storage', <storage type>, key, location, numel[, view])."""
    if type(pid) is not tuple or len(pid) not in (5, 6):
        return False
    tag, stype, key, location, numel = pid[:5]
    if isinstance(tag, bytes):
        tag = tag.decode("ascii", "replace")
    view_ok = len(pid) == 5 or pid[5] is None or (
        type(pid[5]) is tuple and len(pid[5]) == 3 and type(pid[5][0]) is str and all(type(v) is int for v in pid[5][1:])
    )
    return (
        tag == "storage"
        and _value_of(stype) == "storage-type"
        and type(key) in (str, int)
        and type(location) in (str, bytes)
        and type(numel) is int
        and view_ok
    )


def _is_module_source_pid(pid: Any) -> bool:
    """The id legacy ``torch.save(model)`` writes per module class: ('module', <class>, source_file, source).

    torch's legacy loader only compares that source text with the installed class (no code runs from it)
    and returns the class, which its own GLOBAL opcode has already been judged for.
    """
    if type(pid) is not tuple or len(pid) != 4:
        return False
    tag, cls, source_file, source = pid
    return (
        tag == "module"
        and isinstance(cls, _Meta)
        and cls._tk_kind == "model"  # torch's legacy loader writes .patch files named after the class
        and all(isinstance(v, str | type(None)) for v in (source_file, source))
    )
