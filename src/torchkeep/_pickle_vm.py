"""Follow a pickle with the loader's own parser, and record what it would import and call.

The scanner must not parse a pickle differently from the loaders it protects (``torch.load`` and
``pickle.load`` use CPython's C unpickler; joblib, dill and torch's ``weights_only`` unpickler the pure-
Python one). So :func:`analyze` runs **CPython's own unpicklers** — ``_pickle.Unpickler`` and
``pickle._Unpickler`` — over the stream, with ``find_class`` and ``persistent_load`` answering inert
recording stand-ins:

- every global becomes a fresh stand-in *class* (so ``NEWOBJ`` accepts it) that imports nothing;
- calling it (REDUCE, INST, OBJ), constructing it (NEWOBJ, NEWOBJ_EX), BUILD, SETITEMS, APPENDS and
  ADDITEMS on what it returned are recorded with their arguments, and nothing else happens;
- a few pure data constructors (``_codecs.encode``, ``collections.OrderedDict``, builtin containers) on
  constant arguments return the real value, so that the stream goes on exactly as it would in a loader.

Strings are decoded the way each loader decodes them (``utf-8`` as torch.load, ``latin1`` as legacy
files); reads never go past the bytes present. Where the parsers disagree, or a stand-in cannot do what
the real object would (the stream stops early), the stream is *not fully understood*: that is a
dangerous finding (fail closed), never ``safe``.

The recorded globals and calls are judged allow-list first by :mod:`torchkeep._scan_rules`.
"""

from __future__ import annotations

import _pickle
import contextlib
import io
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

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
from torchkeep._region import Region
from torchkeep._scan_names import is_class
from torchkeep._scan_rules import (
    CALLS,
    CATEGORY_SEVERITY,
    DATA_CLASSES,
    RECONSTRUCTORS,
    VALUES,
    category,
    resolve_names,
)

__all__ = ["CallRecord", "RawFinding", "StreamResult", "analyze", "concrete"]

_MAX_NODES = 1_000_000  # container nodes walked to judge one call's arguments; more is not plain data
_BUDGET = 5_000_000  # nodes walked for all calls of one stream (~3 s); past it, too complex to judge
_MAX_CALLS_KEPT = 200  # calls listed in a report per stream (all are judged)


@dataclass(frozen=True)
class RawFinding:
    """A finding inside one stream (offsets relative to the stream's reader)."""

    severity: str
    rule: str
    module: str
    name: str
    offset: int | None
    why: str


@dataclass(frozen=True)
class CallRecord:
    """One call a loader would make: ``target(args)`` at ``offset``, and how (REDUCE, NEWOBJ, ...)."""

    target: str
    how: str
    args: str
    offset: int | None


@dataclass
class StreamResult:
    """What :func:`analyze` learned about one pickle stream.

    Attributes:
        findings: everything not safe.
        imports: every global named, as ``(module, name)`` (after ``fix_imports``).
        end: offset just after ``STOP``; ``None`` when the stream does not parse to its end.
        error: why parsing stopped early, if it did.
        value: the object at ``STOP``: plain Python data where the stream is plain data, stand-ins
            (:class:`Global`, :class:`Value`) elsewhere.
        pids: the persistent ids (``BINPERSID`` arguments), for the storage table of legacy files.
        opcodes: bytes consumed (a measure of how much of the stream parsed).
        nested: ``(offset, bytes)`` of files embedded in the pickle that a load unpickles too
            (``torch.storage._load_from_bytes(b)`` calls ``torch.load(b, weights_only=False)``).
        calls: the calls a loader would make (the first :data:`_MAX_CALLS_KEPT`), for the report.
    """

    findings: list[RawFinding] = field(default_factory=list)
    imports: list[tuple[str, str]] = field(default_factory=list)
    end: int | None = None
    error: str | None = None
    value: Any = None
    pids: list[Any] = field(default_factory=list)
    opcodes: int = 0
    nested: list[tuple[int, bytes]] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    ends_somewhere: bool = False  # some unpickler (not necessarily the first) read the stream to a STOP


# -- stand-ins -----------------------------------------------------------------------------------------
class _Meta(type):
    """Metaclass of the stand-in classes: calling one records a call instead of constructing."""

    _tk_run: _Run
    _tk_kind: str  # category() of the global: "call", "value", "data-class", "model", "dangerous", ...
    _tk_why: str
    _tk_value: bool  # only data (VALUES or a data class): may appear in plain data
    module: str
    name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # REDUCE / INST / OBJ
        return cls._tk_run.call(cls, args, kwargs, "REDUCE")

    def __setstate__(cls, state: Any) -> None:  # BUILD on a class: monkey-patching
        cls._tk_run.build(cls, state)

    # SETITEM(S) / APPENDS / ADDITEMS on an imported object (a module-level dict, list or set): the loader
    # changes it in place and goes on; recorded as monkey-patching, and the stream followed further
    def __setitem__(cls, key: Any, value: Any) -> None:
        cls._tk_run.build(cls, {key: value})

    def append(cls, item: Any) -> None:
        cls._tk_run.build(cls, [item])

    def extend(cls, items: Any) -> None:
        cls._tk_run.build(cls, list(items))

    def add(cls, item: Any) -> None:
        cls._tk_run.build(cls, {item})

    def __repr__(cls) -> str:
        return f"{cls.module}.{cls.name}"


class Global(metaclass=_Meta):
    """Base of the stand-in classes ``find_class`` returns, one per lookup."""

    module = ""
    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ / NEWOBJ_EX (cls.__new__(cls, *args))
        return cls._tk_run.call(cls, args, kwargs, "NEWOBJ")


class Value:
    """What a recorded call returned; records what the stream does to it."""

    __slots__ = ("call", "kind", "mutations", "run")

    def __init__(self, run: _Run, call: _Call | None, kind: str) -> None:
        self.run = run
        self.call = call
        self.kind = kind  # "tensor", "data", "ndarray", "model", "storage", "persistent", "dangerous", ...
        self.mutations: list[tuple[str, Any, int]] = []  # (op, argument, offset)

    def _record(self, op: str, arg: Any) -> None:
        self.run.mutate(self, op, arg)

    def __setstate__(self, state: Any) -> None:
        self._record("BUILD", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._record("SETITEMS", (key, value))

    def append(self, value: Any) -> None:
        self._record("APPENDS", value)

    def extend(self, values: Any) -> None:
        self._record("APPENDS", values)

    def add(self, value: Any) -> None:
        self._record("ADDITEMS", value)

    def __repr__(self) -> str:
        return f"<{self.call.target if self.call else 'persistent object'}()>"


@dataclass(eq=False)
class _Call:
    run: _Run
    func: Any
    args: tuple
    kwargs: dict
    how: str
    offset: int
    result: Value | None = None

    @property
    def target(self) -> str:
        return repr(self.func) if isinstance(self.func, _Meta) else f"<{type(self.func).__name__}>"


# -- judging -------------------------------------------------------------------------------------------
_SPENT = [0]  # nodes walked by _plain in the current pass (reset per pass; checked against _BUDGET)
_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray, range, slice)
_VALUE_KINDS = {"tensor", "data", "ndarray", "np-dtype", "bitgen", "layout", "storage"}


def _plain(obj: Any, *, allow_kinds: frozenset[str] | set[str] = _VALUE_KINDS, model_globals: bool = True,
           globals_: bool = True) -> bool:
    """Constants, containers of constants, and values of safe calls; iteratively, bounded.

    ``allow_kinds``: the kinds of call results accepted ("model" also accepts classes of model code as
    values unless ``model_globals`` is False); ``globals_``: data globals (dtypes, builtin types) accepted.
    """
    todo = [obj]
    seen: set[int] = set()
    while todo:
        x = todo.pop()
        _SPENT[0] += 1  # every visit costs, repeated references included (K calls on one big list)
        if id(x) in seen:
            continue
        seen.add(id(x))
        if len(seen) > _MAX_NODES:
            return False
        if isinstance(x, _PLAIN_TYPES):
            continue
        if type(x) in (list, tuple, set, frozenset):
            todo.extend(x)
        elif type(x) in (dict, OrderedDict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, Value):
            if x.kind not in allow_kinds:
                return False
        elif isinstance(x, _Meta):
            # a class of model code passed to model code (partial(LayerNorm)): custom-code, judged at import
            # ...a class only: a function handed to a class or a partial is called by it at load time
            # (LambdaLR(opt, partial(<library function>, ...)) calls it while it is built: red-team round 3)
            model_ok = (model_globals and "model" in allow_kinds and x._tk_kind in ("model", "stdlib-object")
                        and not _is_function_name(x.name))
            if not globals_ or not (x._tk_value or model_ok):
                return False
        else:
            return False
    return True


def _short(obj: Any, budget: int = 120) -> str:
    """A bounded repr of call arguments for reports (never recursive without bound)."""
    out: list[str] = []
    todo: list[Any] = [obj]
    while todo and sum(map(len, out)) < budget:
        x = todo.pop()
        if isinstance(x, str) and x in ("(", ")", "[", "]", ", "):
            out.append(x)
        elif type(x) in (tuple, list):
            o, c = ("(", ")") if type(x) is tuple else ("[", "]")
            todo.append(c)
            for i, item in enumerate(reversed(x[:8])):
                todo.append(item)
                if i < min(len(x), 8) - 1:
                    todo.append(", ")
            out.append(o)
            if len(x) > 8:
                out.append(f"...{len(x)} items ")
        elif isinstance(x, (Value, _Meta)):
            out.append(repr(x))
        elif isinstance(x, (str, bytes, bytearray)):
            out.append(repr(x[:40]) + ("..." if len(x) > 40 else ""))
        elif isinstance(x, (int, float, bool, type(None))):
            text = repr(x) if not isinstance(x, int) or x.bit_length() < 200 else "<big int>"
            out.append(text)
        else:
            out.append(f"<{type(x).__name__}>")
    text = "".join(out)
    return text if len(text) <= budget else text[: budget - 3] + "..."


class _Run:
    """One pass of one unpickler over the stream: stand-ins, records and the judgement."""

    def __init__(self, fh: Any, torchscript: bool, data: bytes | None = None) -> None:
        self.fh = fh
        self.data = data
        self._final = 0
        self.torchscript = torchscript
        self.findings: list[RawFinding] = []
        self.imports: list[tuple[str, str]] = []
        self.instantiating = False  # the pure-Python pass is executing INST / OBJ
        self.calls: list[_Call] = []
        self.pids: list[Any] = []
        self.nested: list[tuple[int, bytes]] = []
        self._dedupe: set[tuple[str, str, str, str]] = set()
        self.np_dtypes: dict[_Call, NpDtype] = {}  # numpy.dtype calls whose state is numpy's (torchkeep._npstate)
        self.np_used: set[_Call] = set()  # ...already used by an array, a scalar or another dtype

    def detach(self) -> None:
        """Drop the stream's bytes once the pass is over: stand-ins and values keep this run alive in
        reference cycles (class <-> run), freed only by the cyclic collector; the bytes must not be."""
        self._final = self.pos()
        self.fh = None
        self.data = None

    def left(self) -> int:
        """Bytes of the stream not read yet."""
        if self.data is not None:
            return len(self.data) - self.pos()
        return int(self.fh.size() - self.fh.tell())

    def byte_at(self, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + 1]
        raw = getattr(self.fh, "raw", self.fh)  # a BufferedReader over a Region: ask the Region
        return raw.byte_at(offset) if hasattr(raw, "byte_at") else b""

    def pos(self) -> int:
        if self.fh is None:
            return self._final
        try:
            return int(self.fh.tell())
        except (OSError, ValueError):
            return -1

    def find(self, severity: str, rule: str, why: str, module: str = "", name: str = "", offset: int | None = None) -> None:
        key = (severity, rule, module + "." + name, why)
        if key in self._dedupe:
            return
        self._dedupe.add(key)
        self.findings.append(RawFinding(severity, rule, module, name, self.pos() if offset is None else offset, why))

    def refuse(self, rule: str, why: str, func: _Meta, c: _Call) -> tuple[str, Any]:
        """A dangerous finding on the call ``c`` to ``func``; the judgement of a refused call."""
        self.find("dangerous", rule, why, func.module, func.name, c.offset)
        return "dangerous", _NO_VALUE

    # -- find_class / persistent_load --------------------------------------------------------------
    def global_(self, module: str, name: str) -> _Meta:
        resolved = resolve_names(module, name)
        worst_kind, worst_why, shown = "value", "", resolved[0]
        for mod, nm in resolved:
            self.imports.append((mod, nm))
            kind, why = category(mod, nm, torchscript=self.torchscript)
            if CATEGORY_SEVERITY[kind] >= CATEGORY_SEVERITY[worst_kind] or not worst_why:
                worst_kind, worst_why, shown = kind, why, (mod, nm)
        offset = self.global_offset(module, name)
        mod, nm = shown
        cls = _Meta(
            "".join(c if c.isalnum() else "_" for c in nm)[:60] or "Anonymous",
            (Global,),
            {"module": mod, "name": nm, "_tk_run": self, "_tk_kind": worst_kind, "_tk_why": worst_why,
             "_tk_value": f"{mod}.{nm}" in VALUES or worst_kind in ("value", "data-class"),
             "__module__": "torchkeep.scanned"},
        )
        if worst_kind == "dangerous":
            self.find("dangerous", "dangerous-import", f"imports {mod}.{nm}: {worst_why}", mod, nm, offset)
        elif worst_kind in ("model", "stdlib-object", "model-function"):
            self.find("custom-code", "custom-class", worst_why, mod, nm, offset)
        return cls

    def global_offset(self, module: str, name: str) -> int:
        """Offset of the GLOBAL / INST / STACK_GLOBAL opcode that asked for ``module name``."""
        here = self.pos()
        text = len(module.encode("utf-8", "surrogatepass")) + len(name.encode("utf-8", "surrogatepass")) + 3
        if here >= text and self.byte_at(here - text) in (b"c", b"i"):
            return here - text
        return here - 1  # STACK_GLOBAL

    def persistent(self, pid: Any) -> Any:
        self.pids.append(pid)
        if _is_storage_pid(pid):
            return Value(self, None, "storage")
        if _is_module_source_pid(pid):
            return pid[1]  # legacy torch.save(model): the loader returns the class it already imported
        if type(pid) in (int, str) and str(pid).isdigit() and len(str(pid)) <= 20:
            # torch < 0.1.10's tar format names a tensor by its key ("2"): legacy_load looks it up with int()
            return Value(self, None, "tensor")
        self.find(
            "dangerous",
            "persistent-id",
            "a persistent id that is not a torch storage ('storage', <type>, key, location, numel): loaders "
            "with a custom persistent_load run code here",
        )
        return Value(self, None, "persistent")

    # -- calls -------------------------------------------------------------------------------------
    def call(self, func: _Meta, args: tuple, kwargs: dict, how: str) -> Any:
        c = _Call(self, func, args, kwargs, how, self.pos())
        self.calls.append(c)
        if _SPENT[0] > _BUDGET:
            raise _TooComplex(f"judging the arguments of {len(self.calls)} calls took more than {_BUDGET} steps")
        kind, result = self.judge_call(c)
        if result is not _NO_VALUE:
            return result
        c.result = Value(self, c, kind)
        return c.result

    def judge_call(self, c: _Call) -> tuple[str, Any]:
        func, args, how = c.func, c.args, c.how
        qual = repr(func)
        fkind = func._tk_kind
        if fkind == "dangerous":
            return "dangerous", _NO_VALUE  # already a finding at its import
        if c.kwargs and how != "NEWOBJ":
            return self.refuse("unexpected-call", f"{qual} called with keyword arguments", func, c)
        if qual in RECONSTRUCTORS:
            cls = args[0] if args else None
            if not isinstance(cls, _Meta):
                return self.refuse("indirect-call", f"{qual} on a value that is not a class", func, c)
            if qual == "copyreg._reconstructor" and not (
                len(args) == 3 and isinstance(args[1], _Meta) and args[1]._tk_value
            ):
                return self.refuse("unexpected-call", f"{qual} with a base class that is not a builtin type", func, c)
            return self.construct(cls, c)
        if how == "NEWOBJ" and fkind in ("model", "model-function", "stdlib-object") and not _builds(self, func, c):
            # INST / OBJ without arguments build a class with cls.__new__(cls) but CALL anything else (CPython's
            # instantiate(): PyType_Check): only what is known to be a class is built (NEWOBJ itself refuses a
            # non-type, so it never calls)
            why = f"calls {qual} (INST/OBJ on something that is not known to be a class calls it)"
            return self.refuse("unexpected-call", why, func, c)
        if how == "NEWOBJ":
            return self.construct(func, c)
        if fkind == "call":
            return self.checked_call(qual, c)
        if fkind == "model-function":
            why = f"calls {qual}, a function of torch or the standard library (only their classes rebuild models)"
            return self.refuse("unexpected-call", why, func, c)
        if fkind == "model" and _is_function_name(func.name):
            why = (f"calls {qual}, a function (only classes are rebuilt from model code; a library function can "
                   "evaluate or run what it is given)")
            return self.refuse("unexpected-call", why, func, c)
        if fkind in ("model", "stdlib-object"):
            # A class of model code called with constant arguments (an enum member, a Path, a config
            # object): custom-code. Computed arguments mean a chain of calls a plain pickler never writes.
            if _plain(args, allow_kinds=_VALUE_KINDS | {"model"}):
                return "model", _NO_VALUE
            why = f"{qual} called with the result of another call or a callable ({_short(args)})"
            return self.refuse("indirect-call", why, func, c)
        if fkind == "data-class" and _plain(args):
            return "data", _NO_VALUE
        return self.refuse("unexpected-call", f"calls {qual}, which files only use as a value", func, c)

    def construct(self, cls: _Meta, c: _Call) -> tuple[str, Any]:
        """NEWOBJ / copyreg reconstructors: ``cls.__new__(cls)`` then usually BUILD."""
        kind = cls._tk_kind
        torchscript_class = kind == "value" and repr(cls).startswith("__torch__")
        if repr(cls) in DATA_CLASSES or torchscript_class:
            # only classes whose __new__ builds plain data (never a type, a storage, a tensor from arguments)
            if _plain(c.args[1:] if c.func is not cls else c.args, allow_kinds=_VALUE_KINDS | {"model"}):
                return "data", _NO_VALUE
        elif kind in ("model", "stdlib-object"):
            # NEWOBJ arguments reach __new__ (a partial's function, a scheduler's lambda): classes and data
            # only, as for REDUCE (red-team round 4: partial built with NEWOBJ around a function)
            args = c.args[1:] if c.func is not cls else c.args
            if _plain((args, tuple(c.kwargs.values())), allow_kinds=_VALUE_KINDS | {"model"}):
                return "model", _NO_VALUE
            self.find("dangerous", "indirect-call",
                      f"constructs {cls!r} ({c.how}) around a function or a computed value ({_short(args)})",
                      cls.module, cls.name, c.offset)
            return "dangerous", _NO_VALUE
        elif kind == "dangerous":
            return "dangerous", _NO_VALUE
        self.find(
            "dangerous",
            "unexpected-call",
            f"constructs {cls!r} ({c.how}), which is not a data class or model code",
            cls.module,
            cls.name,
            c.offset,
        )
        return "dangerous", _NO_VALUE

    def checked_call(self, qual: str, c: _Call) -> tuple[str, Any]:
        shapes, result_kind = CALLS[qual]
        bad = _check_args(shapes, c.args)
        if bad is not None:
            self.find(
                "dangerous",
                "unexpected-argument",
                f"{qual}: {bad} ({_short(c.args)}); torch.save/numpy never write this",
                c.func.module,
                c.func.name,
                c.offset,
            )
            return "dangerous", _NO_VALUE
        if qual in ("torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type"):
            inner = c.args[0]
            bad = _check_args(CALLS[repr(inner)][0], tuple(c.args[2]))
            if bad is not None:
                self.find("dangerous", "unexpected-argument", f"{qual} -> {inner!r}: {bad}", c.func.module, c.func.name, c.offset)
                return "dangerous", _NO_VALUE
            if c.args[1]._tk_kind == "model":
                return "model", _NO_VALUE
        if qual.startswith("numpy."):
            bad = self.numpy_call(qual, c)
            if bad is not None:
                self.find("dangerous", "unexpected-argument", f"{qual}: {bad}", c.func.module, c.func.name, c.offset)
                return "dangerous", _NO_VALUE
        if result_kind == "nested":  # torch.load(bytes): the embedded file is scanned like any other
            self.nested.append((c.offset, bytes(c.args[0])))
            return "storage", _NO_VALUE
        emulated = _emulate(qual, c.args)
        return result_kind, emulated

    # -- numpy dtypes and arrays: only the exact state numpy writes (torchkeep._npstate) ----------------
    def np_dtype(self, x: Any) -> NpDtype:
        """The accepted dtype a ``numpy.dtype`` call's value stands for (``resolve`` of torchkeep._npstate)."""
        spec = self.np_dtypes.get(x.call) if isinstance(x, Value) and x.kind == "np-dtype" and x.call else None
        if spec is None:
            raise NumpyStateError(f"expected a numpy dtype numpy writes, got {_describe(x)}")
        self.np_used.add(x.call)
        return spec

    def numpy_call(self, qual: str, c: _Call) -> str | None:
        """What is wrong with the arguments of a numpy rebuild call, else None (the dtype's default recorded)."""
        name = qual.rsplit(".", 1)[-1]
        try:
            if qual == "numpy.dtype":
                dt = dtype_name(c.args)
                self.np_dtypes[c] = dtype_spec(dt, None, self.np_dtype)
            elif name == "_reconstruct":
                reconstruct_args(c.args)
            elif name == "scalar":
                scalar_args(c.args, self.np_dtype)
            elif name == "_frombuffer":
                frombuffer_args(c.args, self.np_dtype)
        except NumpyStateError as exc:
            return str(exc)
        return None

    def numpy_build(self, target: Value, op: str, arg: Any) -> str | None:
        """What is wrong with ``op`` on a numpy dtype or array, else None: numpy writes one BUILD of its own state."""
        if op != "BUILD" or sum(m[0] == "BUILD" for m in target.mutations) > 1 or target.call is None:
            return f"numpy writes one BUILD on a dtype or array, not {op} {'again' if op == 'BUILD' else ''}".rstrip()
        try:
            if target.kind == "np-dtype":
                spec = self.np_dtypes.pop(target.call, None)  # refused: later uses of the dtype are refused too
                if spec is None:
                    raise NumpyStateError("a dtype whose construction was refused")
                if target.call in self.np_used:  # numpy changes the dtype in place under the arrays that use it
                    raise NumpyStateError("state set on a dtype already in use (numpy writes it first)")
                self.np_dtypes[target.call] = dtype_spec(target.call.args[0], arg, self.np_dtype)
            elif target.call.target.endswith("._reconstruct"):
                array_state(arg, self.np_dtype)
            else:
                raise NumpyStateError(f"BUILD on the result of {target.call.target}")
        except NumpyStateError as exc:
            return str(exc)
        return None

    # -- BUILD / SETITEMS / APPENDS / ADDITEMS --------------------------------------------------------
    def build(self, cls: _Meta, state: Any) -> None:
        self.find(
            "dangerous",
            "build-on-global",
            "BUILD sets attributes on an imported module or class (monkey-patching at load time)",
            cls.module,
            cls.name,
        )

    def mutate(self, target: Value, op: str, arg: Any) -> None:
        target.mutations.append((op, arg, self.pos()))
        what = target.call.target if target.call else "a persistent object"
        if target.kind == "dangerous":
            return  # a finding already
        if op == "BUILD":
            # BUILD without a class __setstate__ sets instance attributes; the unpicklers then look up
            # __setstate__/append/extend/add on the *instance*: a callable stored there is called by the
            # loader itself with what follows (torch.load of bytes, ...). torch.save never writes that.
            hook = _sets_unpickler_hook(arg)
            if hook is not None:
                self.find("dangerous", "unexpected-build",
                          f"BUILD on {what} sets {hook!r}: objects torch.save writes never carry it (the unpickler, "
                          "or the loader after it, would call or use what is stored there)", "", "")
                return
        if target.kind == "data":
            bad = _data_build(target, op, arg)
            if bad is not None:
                self.find("dangerous", "unexpected-build", f"{op} on {what}: {bad}", "", "")
                return
        if target.kind == "model" and not (target.call is not None and target.call.func._tk_kind == "stdlib-object"):
            return  # model code runs its own __setstate__/__setitem__: custom-code already
        # a standard-library state holder (partial, Namespace) keeps what BUILD gives it, and the loader's
        # code calls it later (a partial's function, a namespace's 'setdefault'): classes and data only
        if target.kind == "model" and _plain(arg, allow_kinds=_VALUE_KINDS | {"model"}):
            return
        if target.kind in ("ndarray", "np-dtype"):
            bad = self.numpy_build(target, op, arg)
            if bad is not None:
                self.find("dangerous", "unexpected-build", f"{op} on {what}: {bad}", "", "")
                return
        if target.kind in ("data", "ndarray", "np-dtype", "bitgen") and _plain(arg, allow_kinds=_VALUE_KINDS | {"model"}, model_globals=False):
            return  # data objects only store data (arrays of objects may hold model objects)
        self.find("dangerous", "unexpected-build", f"{op} on {what} with {_short(arg)}: torch.save/numpy never write this", "", "")


_NO_VALUE = object()
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


class _TooComplex(Exception):
    """The stream asks for more judging work than a weights file ever needs."""


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
def _is_function_name(name: str) -> bool:
    """By Python's naming convention a lower-case name is a function; Cython's generated
    ``__pyx_unpickle_<Class>`` reconstructors only fill a class's fields and count as the class."""
    last = name.split(".")[-1]
    return not last[:1].isupper() and not last.startswith("__pyx_unpickle_")


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


def _value_of(x: Any) -> str | None:
    """What data value a global is (:data:`torchkeep._scan_rules.VALUES`), or None."""
    if isinstance(x, _Meta) and x._tk_value:
        return VALUES.get(repr(x), "type" if repr(x).startswith("__torch__") else None)
    return None


def _describe(x: Any) -> str:
    if isinstance(x, _Meta):
        return f"the global {x!r}"
    if isinstance(x, Value):
        return f"the result of {x.call.target}()" if x.call else "a persistent object"
    return type(x).__name__


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


# -- the unpicklers --------------------------------------------------------------------------------------
def _recording(base: type) -> type:
    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, fh: Any, run: _Run, encoding: str) -> None:
            super().__init__(fh, encoding=encoding, errors="strict", fix_imports=True)
            self._tk_run = run

        def find_class(self, module: str, name: str) -> Any:
            return self._tk_run.global_(module, name)

        def persistent_load(self, pid: Any) -> Any:
            return self._tk_run.persistent(pid)

    return Recording


_C_UNPICKLER = _recording(_pickle.Unpickler)
_PY_UNPICKLER = _recording(pickle._Unpickler)  # type: ignore[attr-defined]


def _load_bytearray8(self: Any) -> None:
    # pickle.py allocates bytearray(length) before reading: a forged length would allocate gigabytes here.
    (length,) = struct.unpack("<Q", self.read(8))
    frame = self._unframer.current_frame  # protocol 4+: the bytes are in the frame already read from the file
    left = frame.getbuffer().nbytes - frame.tell() if frame is not None else self._tk_run.left()
    if length > left:
        raise pickle.UnpicklingError("pickle data was truncated")
    b = bytearray(length)
    self.readinto(b)
    self.append(b)


def _instantiating(load: Any) -> Any:
    """INST / OBJ, marked while they run: CPython's instantiate() *calls* a global that is not a type, where
    the stand-ins (always types) are built; the pure-Python pass knows which opcode it is executing."""

    def run(self: Any) -> None:
        self._tk_run.instantiating = True
        try:
            load(self)
        finally:
            self._tk_run.instantiating = False

    return run


_PY_UNPICKLER.dispatch = {  # type: ignore[attr-defined]
    **pickle._Unpickler.dispatch,  # type: ignore[attr-defined]
    pickle.BYTEARRAY8[0]: _load_bytearray8,
    pickle.INST[0]: _instantiating(pickle._Unpickler.load_inst),  # type: ignore[attr-defined]
    pickle.OBJ[0]: _instantiating(pickle._Unpickler.load_obj),  # type: ignore[attr-defined]
}
#: (unpickler, encoding) passes: torch.load's (C, utf-8), legacy/numpy files' (C, latin1), and the
#: pure-Python unpickler of joblib, dill and torch's weights_only loader.
_PASSES = (
    (_C_UNPICKLER, "utf-8", "C unpickler"),
    (_C_UNPICKLER, "latin1", "C unpickler, latin1"),
    (_PY_UNPICKLER, "utf-8", "Python unpickler"),
    # pickle.load(open(path)), pickle.loads(bytes), np.load and torch's legacy loader read through a buffer
    # with peek(): the C unpickler then reads across a FRAME's end where from a BytesIO it drops the rest
    (_C_UNPICKLER, "utf-8", "C unpickler, buffered file"),
)

_DATA_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                OverflowError, MemoryError, UnicodeError, RecursionError, struct.error, NotImplementedError)


_GUARD_MARGIN = 2 << 30  # address space a pass may add on top of what the process uses


@contextlib.contextmanager
def _memory_guard(stream_size: int) -> Iterator[None]:
    """Cap the address space while an unpickler runs over a stream (Linux).

    The C unpickler sizes some allocations from the stream itself before it reads: a LONG_BINPUT index of a
    billion grows its memo to 16 GB *and zeroes it*, a BINBYTES length allocates its buffer. A loader would
    fall over too; the scanner must not. Under the cap such a stream fails with MemoryError (its reason).
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError, AttributeError):
        yield
        return
    cap = used + max(_GUARD_MARGIN, 4 * stream_size)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield  # already tighter
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _reader(fh: IO[bytes], start: int, limit: int | None) -> Region:
    """``fh`` from ``start``, as the unpicklers read it: reads never go past ``limit`` bytes (default: the end of
    ``fh``), and one that asks past them reads nothing (a forged length allocates nothing)."""
    return Region(fh, start, None if limit is None else start + limit, truncated_reads=True)


def _one_pass(fh: IO[bytes], start: int, limit: int | None, unpickler: type, encoding: str, torchscript: bool,
              data: bytes | None, buffered: bool = False) -> tuple[_Run, Any, int | None, str | None]:
    # In-memory streams are read by the unpicklers from a BytesIO (C reads; reads never allocate past the
    # bytes present); streams on disk through a Region, bounded the same way.
    reader: Any = io.BytesIO(data) if data is not None else _reader(fh, start, limit)
    if buffered:
        reader = io.BufferedReader(reader if data is None else _reader(io.BytesIO(data), 0, len(data)))
    run = _Run(reader, torchscript, data)
    _SPENT[0] = 0
    size = len(data) if data is not None else (limit if limit is not None else 0)
    try:
        with _memory_guard(size):
            value = unpickler(reader, run, encoding).load()
        end: int | None = reader.tell()
        error = None
    except _TooComplex as exc:
        run.find("dangerous", "too-complex", f"{exc}: not judged further (fail closed)")
        value, end, error = None, None, str(exc)
    except _DATA_ERRORS as exc:
        value, end, error = None, None, (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]
    run.detach()
    return run, value, end, error


def _call_records(calls: list[_Call], per_target: int = 3) -> list[CallRecord]:
    """The calls for a report: the first few of each target with their arguments (a big checkpoint makes
    thousands of identical tensor-rebuild calls)."""
    seen: dict[str, int] = {}
    out: list[CallRecord] = []
    for c in calls:
        n = seen[c.target] = seen.get(c.target, 0) + 1
        if n <= per_target and len(out) < _MAX_CALLS_KEPT:
            out.append(CallRecord(c.target, c.how, _short(c.args), c.offset))
    return out


def _TRUNCATED(error: str) -> bool:
    """The stream ends early: every loader fails at the same byte, nothing more can run."""
    return any(t in error for t in ("truncated", "Ran out of input", "EOFError", "unexpected end", "no newline"))


_ERROR_RULES = (
    ("Memo value not found", "memo-missing"),
    ("memo", "memo-missing"),
    ("extension code", "ext-opcode"),
    ("STACK_GLOBAL requires str", "non-constant-global"),
    ("isn't a type object", "indirect-call"),
    ("NEWOBJ", "indirect-call"),
    ("not callable", "indirect-call"),
    ("has no attribute", "indirect-call"),
)


def analyze(fh: IO[bytes], *, torchscript: bool = False, limit: int | None = None) -> StreamResult:
    """Follow one pickle stream read from ``fh`` (from its current position) to ``STOP``.

    Args:
        fh: a seekable binary reader positioned at the start of the pickle.
        torchscript: the stream belongs to a TorchScript archive (``__torch__`` classes are data).
        limit: bytes available from the start (default: to the end of ``fh``).

    Returns:
        A :class:`StreamResult`; offsets are relative to the start. ``end`` is ``None`` when the stream
        does not parse to its end; ``findings`` still hold everything seen before (a loader runs those
        opcodes before it fails).
    """
    start = fh.tell()
    data: bytes | None = None
    if isinstance(fh, io.BytesIO):
        if start == 0 and limit is None:
            data = fh.getvalue()  # shares the buffer of a BytesIO made from bytes: no copy
        else:
            buf = fh.getbuffer()
            data = bytes(buf[start : len(buf) if limit is None else start + limit])
            del buf
    res = StreamResult()
    outcomes: list[tuple[str, int | None, str | None]] = []
    for i, (unpickler, encoding, label) in enumerate(_PASSES):
        run, value, end, error = _one_pass(fh, start, limit, unpickler, encoding, torchscript, data, "buffered" in label)
        outcomes.append((label, end, error))
        res.ends_somewhere = res.ends_somewhere or end is not None
        if i == 0:
            res.value, res.end, res.error, res.pids = value, end, error, run.pids
            res.opcodes = run.pos() if end is None else end
            res.calls = _call_records(run.calls)
        elif "buffered" not in label:  # how far the stream parses: the furthest any unpickler got
            # (a buffered reader's position on failure includes its read-ahead, not what was parsed)
            res.opcodes = max(res.opcodes, run.pos() if end is None else end)
        if i > 0:
            known = {c.target for c in res.calls}
            res.calls.extend(c for c in _call_records(run.calls) if c.target not in known)
        if end is None and error is not None and not _TRUNCATED(error) and (run.calls or run.imports or run.pids):
            # Past a global (a call, an import, a persistent id), a failure may be the stand-ins' (a real object
            # would have gone on, e.g. SETITEMS on a module-level dict): fail closed.
            rule = next((r for text, r in _ERROR_RULES if text in error), "malformed-pickle")
            run.find("dangerous", rule, f"the stream stops where the scanner's stand-ins cannot follow it ({error}); "
                     "a loader with the real objects may go on", offset=run.pos())
        for item in run.nested:  # an embedded file only one decoding produces is scanned too
            if all(item[1] != known for _, known in res.nested):
                res.nested.append(item)
        seen = {(f.rule, f.module, f.name, f.why) for f in res.findings}
        res.findings.extend(f for f in run.findings if (f.rule, f.module, f.name, f.why) not in seen)
        for imp in run.imports:
            if imp not in res.imports:
                res.imports.append(imp)
    # A pass that fails to decode a string (utf-8 vs latin1) only says which loaders can read the file;
    # everything each pass saw is judged above. Other disagreements on where the stream ends are findings.
    ends = {end for _, end, err in outcomes if not (err and ("codec can't decode" in err or "Unicode" in err))}
    if len(ends) > 1:
        detail = "; ".join(f"{label}: {'ends at byte ' + str(end) if end is not None else 'fails (' + str(err) + ')'}" for label, end, err in outcomes)  # fmt: skip
        res.findings.append(
            RawFinding("dangerous", "parser-differential", "", "", None,
                       f"the unpicklers read this stream differently ({detail}): a loader may run what the scan cannot see")
        )
    fh.seek(start + (res.end if res.end is not None else res.opcodes))
    return res


def concrete(value: Any) -> Any:
    """``value`` if it is plain Python data (ints, strings, lists, tuples, dicts of them), else ``None``."""
    return value if _plain(value, allow_kinds=set()) else None


