"""One pass of one unpickler over a stream: the stand-ins it hands out, what they record, and the judgement.

:class:`_Run` answers ``find_class`` (a global: classified by :mod:`torchkeep._scan_rules`) and
``persistent_load``, and judges each call, construction and BUILD the stream makes, allow-list first:
argument shapes from :mod:`torchkeep._pickle_shapes`, numpy state from :mod:`torchkeep._npstate`. What it
finds is a :class:`RawFinding`.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from torchkeep._pickle_shapes import (
    _builds,
    _check_args,
    _data_build,
    _emulate,
    _is_module_source_pid,
    _is_storage_pid,
    _sets_unpickler_hook,
)
from torchkeep._pickle_standins import (
    _NO_VALUE,
    _SPENT,
    _VALUE_KINDS,
    Global,
    Value,
    _Call,
    _describe,
    _is_function_name,
    _Meta,
    _plain,
    _short,
)
from torchkeep._scan_rules import (
    CALLS,
    CATEGORY_SEVERITY,
    DATA_CLASSES,
    RECONSTRUCTORS,
    VALUES,
    category,
    resolve_names,
)

__all__ = ["RawFinding"]

_BUDGET = 5_000_000  # nodes walked for all calls of one stream (~3 s); past it, too complex to judge


@dataclass(frozen=True)
class RawFinding:
    """A finding inside one stream (offsets relative to the stream's reader)."""

    severity: str
    rule: str
    module: str
    name: str
    offset: int | None
    why: str


class _TooComplex(Exception):
    """The stream asks for more judging work than a weights file ever needs."""


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
