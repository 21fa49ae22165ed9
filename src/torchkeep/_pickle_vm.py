"""A symbolic pickle machine: follows the stack and the memo of one pickle stream without running it.

:func:`analyze` walks the opcodes of one pickle with :func:`pickletools.genops` and keeps an *abstract*
stack: constants stay constants, ``GLOBAL``/``STACK_GLOBAL`` push a reference to the named global,
``REDUCE``/``NEWOBJ``/``BUILD`` record calls. Nothing is imported or executed. Because the memo is
followed exactly, names put in the memo and fetched again (the classic scanner bypass) are resolved like
the real unpickler resolves them, and anything the real unpickler could only know at run time (a
``STACK_GLOBAL`` whose module is computed by a call) is reported as structurally dangerous.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import IO, Any

from torchkeep._scan_rules import classify, normalize_module

__all__ = ["RawFinding", "StreamResult", "analyze"]

_MAX_ITEMS = 4096  # container items kept for analysis; big lists of numbers need none of them


@dataclass(frozen=True)
class RawFinding:
    """A finding inside one stream (offsets relative to the stream's reader)."""

    severity: str
    rule: str
    module: str
    name: str
    offset: int | None
    why: str


@dataclass
class StreamResult:
    """What :func:`analyze` learned about one pickle stream.

    Attributes:
        findings: everything not safe, in opcode order.
        imports: every global named, as ``(module, name)``.
        end: offset just after ``STOP``; ``None`` when the stream is malformed or truncated.
        error: why parsing stopped early, if it did.
        value: the abstract value on the stack at ``STOP`` (see :func:`concrete`).
        pids: abstract persistent ids (``BINPERSID`` arguments), for the storage table of legacy files.
        opcodes: number of opcodes read.
        nested: ``(offset, bytes)`` of files embedded in the pickle that a load unpickles too
            (``torch.storage._load_from_bytes(b)`` calls ``torch.load(b, weights_only=False)``).
    """

    findings: list[RawFinding] = field(default_factory=list)
    imports: list[tuple[str, str]] = field(default_factory=list)
    end: int | None = None
    error: str | None = None
    value: Any = None
    pids: list[Any] = field(default_factory=list)
    opcodes: int = 0
    nested: list[tuple[int, bytes]] = field(default_factory=list)


class _Mark:
    __slots__ = ()


_MARK = _Mark()


@dataclass(eq=False)
class Const:
    value: Any


@dataclass(eq=False)
class Global:
    module: str
    name: str
    severity: str


@dataclass(eq=False)
class Call:
    func: Any
    args: Any


@dataclass(eq=False)
class Seq:
    kind: str  # list, tuple, dict, set, frozenset
    items: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class Unknown:
    what: str = "?"


class _Malformed(Exception):
    pass


_CONST_OPS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
}  # fmt: skip
_EMPTY = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set", "EMPTY_TUPLE": "tuple"}
# allow-listed functions that call one of their arguments (position) while loading
_CALLS_ARGUMENT: dict[tuple[str, str], int] = {
    ("torch._tensor", "_rebuild_from_type_v2"): 0,  # func(*args)
    ("numpy.random._pickle", "__randomstate_ctor"): 1,  # bit_generator_ctor(name)
    ("numpy.random._pickle", "__generator_ctor"): 1,
    ("numpy.random._pickle", "__bit_generator_ctor"): 0,  # a BitGenerator class is instantiated
}
_LOAD_FROM_BYTES = ("torch.storage", "_load_from_bytes")  # torch.load(bytes): the bytes are scanned as a file
_SEVERITY_ORDER = {"safe": 0, "warning": 1, "custom-code": 2, "dangerous": 3}


def concrete(value: Any) -> Any:
    """Turn an abstract value built only of constants and containers into Python data (else ``None``)."""
    if isinstance(value, Const):
        return value.value
    if isinstance(value, Seq) and value.kind in ("list", "tuple"):
        items = [concrete(v) for v in value.items]
        return items if value.kind == "list" else tuple(items)
    return None


def _is_module_source_pid(pid: Any) -> bool:
    """The id legacy ``torch.save(model)`` writes per module class: ('module', <class>, source_file, source).

    torch's legacy loader only compares that source text with the installed class (no code runs from it)
    and returns the class, which its own GLOBAL opcode has already been judged for.
    """
    if not isinstance(pid, Seq) or pid.kind != "tuple" or len(pid.items) != 4:
        return False
    tag, cls, source_file, source = pid.items
    return (
        isinstance(tag, Const)
        and tag.value == "module"
        and isinstance(cls, Global)
        and all(isinstance(v, Const) and isinstance(v.value, str | type(None)) for v in (source_file, source))
    )


def _is_storage_pid(pid: Any) -> bool:
    """True for the persistent ids torch writes: ('storage', <StorageType>, key, location, numel[, view])."""
    if not isinstance(pid, Seq) or pid.kind != "tuple" or len(pid.items) not in (5, 6):
        return False
    tag, stype, key, location, numel = pid.items[:5]
    return (
        isinstance(tag, Const)
        and tag.value == "storage"
        and isinstance(stype, Global)
        and stype.severity == "safe"
        and (stype.name.endswith("Storage"))
        and isinstance(key, Const)
        and isinstance(key.value, str)
        and isinstance(location, Const)
        and isinstance(location.value, str)
        and isinstance(numel, Const)
        and isinstance(numel.value, int)
    )


class _Machine:
    def __init__(self, torchscript: bool) -> None:
        self.torchscript = torchscript
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.result = StreamResult()
        self.proto = 0

    # -- helpers -------------------------------------------------------------------------------
    def find(self, severity: str, rule: str, why: str, pos: int | None, module: str = "", name: str = "") -> None:
        self.result.findings.append(RawFinding(severity, rule, module, name, pos, why))

    def pop(self) -> Any:
        if not self.stack:
            raise _Malformed("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Malformed("no MARK on the stack")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> Any:
        if not self.stack:
            raise _Malformed("stack underflow")
        return self.stack[-1]

    def add_global(self, module: str, name: str, pos: int, opname: str) -> Global:
        module = normalize_module(module)
        severity, why = classify(module, name, torchscript=self.torchscript)
        self.result.imports.append((module, name))
        if severity == "dangerous":
            self.find("dangerous", "dangerous-import", f"{opname}: {why}", pos, module, name)
        elif severity == "custom-code":
            self.find("custom-code", "custom-class", why, pos, module, name)
        return Global(module, name, severity)

    def call(self, func: Any, args: Any, pos: int, opname: str) -> Call:
        if not isinstance(func, Global):
            what = "the result of another call" if isinstance(func, Call) else "a value that is not a global"
            self.find(
                "dangerous",
                "indirect-call",
                f"{opname} calls {what} (getattr/attrgetter-style chain): a plain pickler never writes this",
                pos,
            )
        return Call(func, args)

    def load_from_bytes(self, args: Any, pos: int) -> None:
        # Plain pickle.dumps(tensor) embeds a torch.save file and unpickles it with torch.load: the
        # embedded file is scanned like any other (constant bytes only; computed bytes are refused).
        data = args.items[0] if isinstance(args, Seq) and len(args.items) == 1 else None
        if isinstance(data, Const) and isinstance(data.value, (bytes, bytearray)):
            self.result.nested.append((pos, bytes(data.value)))
        else:
            self.find(
                "dangerous",
                "nested-load",
                "torch.storage._load_from_bytes (torch.load) on bytes computed at load time",
                pos,
                "torch.storage",
                "_load_from_bytes",
            )

    def check_called_argument(self, func: Global, args: Any, pos: int) -> None:
        # Allow-listed functions that call one of their arguments: that argument must be a plain global
        # (classified on its own) or a constant, never a computed value (a partial, a getattr result...).
        # Nor a global whose arguments this machine must see to judge the call (torch.load's bytes, another
        # forwarding function): the arguments it would get are forwarded at run time, unseen here.
        index = _CALLS_ARGUMENT[(func.module, func.name)]
        items = args.items if isinstance(args, Seq) else []
        arg = items[index] if index < len(items) else None
        if arg is None or isinstance(arg, Const):
            return
        if not isinstance(arg, Global):
            why = "which is a computed value, not a global"
        elif (arg.module, arg.name) in _CALLS_ARGUMENT or (arg.module, arg.name) == _LOAD_FROM_BYTES:
            why = f"{arg.module}.{arg.name}, with arguments this scanner cannot follow (a loader never writes this)"
        else:
            return
        self.find(
            "dangerous",
            "indirect-call",
            f"{func.module}.{func.name} calls its argument {index + 1}, {why}",
            pos,
            func.module,
            func.name,
        )

    @staticmethod
    def _append(container: Any, values: list[Any]) -> None:
        if isinstance(container, Seq) and len(container.items) < _MAX_ITEMS:
            container.items.extend(values[: _MAX_ITEMS - len(container.items)])

    # -- the opcodes ---------------------------------------------------------------------------
    def step(self, opname: str, arg: Any, pos: int) -> bool:
        """Apply one opcode; returns True at STOP."""
        st = self.stack
        if opname in _CONST_OPS:
            st.append(Const(arg))
        elif opname in ("GET", "BINGET", "LONG_BINGET"):
            idx = int(arg)
            if idx not in self.memo:
                self.find("dangerous", "memo-missing", f"{opname} {idx} reads a memo slot never written", pos)
                st.append(Unknown("missing memo"))
            else:
                st.append(self.memo[idx])
        elif opname in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            idx = len(self.memo) if opname == "MEMOIZE" else int(arg)
            if idx in self.memo:
                self.find(
                    "dangerous",
                    "memo-overwrite",
                    f"{opname} overwrites memo slot {idx}: picklers never reuse a slot; scanners that track the memo loosely are fooled",
                    pos,
                )
            self.memo[idx] = self.top()
        elif opname == "PROTO":
            self.proto = int(arg)
        elif opname in ("FRAME", "READONLY_BUFFER"):
            pass
        elif opname == "NONE":
            st.append(Const(None))
        elif opname in ("NEWTRUE", "NEWFALSE"):
            st.append(Const(opname == "NEWTRUE"))
        elif opname == "NEXT_BUFFER":
            st.append(Unknown("out-of-band buffer"))
        elif opname in _EMPTY:
            st.append(Seq(_EMPTY[opname]))
        elif opname == "MARK":
            self.metastack.append(st)
            self.stack = []
        elif opname in ("TUPLE", "LIST", "FROZENSET"):
            items = self.pop_mark()
            self.stack.append(Seq(opname.lower(), items[:_MAX_ITEMS]))
        elif opname == "DICT":
            items = self.pop_mark()
            self.stack.append(Seq("dict", items[:_MAX_ITEMS]))
        elif opname in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(opname[-1])
            items = [self.pop() for _ in range(n)][::-1]
            st.append(Seq("tuple", items))
        elif opname == "APPEND":
            value = self.pop()
            self._append(self.top(), [value])
        elif opname in ("APPENDS", "ADDITEMS"):
            items = self.pop_mark()
            self._append(self.top(), items)
        elif opname == "SETITEM":
            value = self.pop()
            key = self.pop()
            self._append(self.top(), [key, value])
        elif opname == "SETITEMS":
            items = self.pop_mark()
            self._append(self.top(), items)
        elif opname == "POP":
            if st:
                st.pop()
            else:
                self.pop_mark()  # POP on an empty stack discards a mark, as the unpickler does
        elif opname == "POP_MARK":
            self.pop_mark()
        elif opname == "DUP":
            st.append(self.top())
        elif opname == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            st.append(self.add_global(module, name, pos, "GLOBAL"))
        elif opname == "STACK_GLOBAL":
            name_v = self.pop()
            module_v = self.pop()
            if (
                isinstance(module_v, Const)
                and isinstance(name_v, Const)
                and isinstance(module_v.value, str)
                and isinstance(name_v.value, str)
            ):
                st.append(self.add_global(module_v.value, name_v.value, pos, "STACK_GLOBAL"))
            else:
                self.find(
                    "dangerous",
                    "non-constant-global",
                    "STACK_GLOBAL imports a name that is not a string constant (computed at load time)",
                    pos,
                )
                st.append(Global("?", "?", "dangerous"))
        elif opname == "INST":
            module, _, name = str(arg).partition(" ")
            args = self.pop_mark()
            g = self.add_global(module, name, pos, "INST")
            self.find(
                "dangerous",
                "inst-obj",
                "INST imports and calls in one opcode; Python 3 picklers never write it",
                pos,
                g.module,
                g.name,
            )
            self.stack.append(Call(g, Seq("tuple", args)))
        elif opname == "OBJ":
            items = self.pop_mark()
            if not items:
                raise _Malformed("OBJ without a class")
            cls = items[0]
            self.find(
                "dangerous",
                "inst-obj",
                "OBJ calls the first value after MARK; Python 3 picklers never write it",
                pos,
                getattr(cls, "module", ""),
                getattr(cls, "name", ""),
            )
            self.stack.append(Call(cls, Seq("tuple", items[1:])))
        elif opname in ("EXT1", "EXT2", "EXT4"):
            self.find(
                "dangerous",
                "ext-opcode",
                f"{opname} {arg} imports through the copyreg extension registry, which the file cannot name",
                pos,
            )
            st.append(Global("?", f"<extension {arg}>", "dangerous"))
        elif opname == "REDUCE":
            args = self.pop()
            func = self.pop()
            if isinstance(func, Global) and (func.module, func.name) == _LOAD_FROM_BYTES:
                self.load_from_bytes(args, pos)
            if isinstance(func, Global) and (func.module, func.name) in _CALLS_ARGUMENT:
                self.check_called_argument(func, args, pos)
            st.append(self.call(func, args, pos, "REDUCE"))
        elif opname == "NEWOBJ":
            args = self.pop()
            cls = self.pop()
            st.append(self.call(cls, args, pos, "NEWOBJ"))
        elif opname == "NEWOBJ_EX":
            self.pop()  # kwargs
            args = self.pop()
            cls = self.pop()
            st.append(self.call(cls, args, pos, "NEWOBJ_EX"))
        elif opname == "BUILD":
            self.pop()  # state
            target = self.top()
            if isinstance(target, Global):
                self.find(
                    "dangerous",
                    "build-on-global",
                    "BUILD sets attributes on an imported module or class (monkey-patching at load time)",
                    pos,
                    target.module,
                    target.name,
                )
        elif opname in ("PERSID", "BINPERSID"):
            pid = Const(arg) if opname == "PERSID" else self.pop()
            self.result.pids.append(pid)
            if not (_is_storage_pid(pid) or _is_module_source_pid(pid)):
                self.find(
                    "dangerous",
                    "persistent-id",
                    f"{opname} asks the loader for an object that is not a torch storage "
                    "('storage', <type>, key, location, numel): loaders with custom persistent_load run code here",
                    pos,
                )
            # a module-source id resolves to its class; anything else is an opaque loader object
            st.append(pid.items[1] if isinstance(pid, Seq) and _is_module_source_pid(pid) else Unknown("persistent object"))
        elif opname == "STOP":
            self.result.value = self.pop()
            return True
        else:  # an opcode added after this code was written
            self.find("dangerous", "unknown-opcode", f"unknown opcode {opname}", pos)
            raise _Malformed(f"unknown opcode {opname}")
        return False


def analyze(fh: IO[bytes], *, torchscript: bool = False) -> StreamResult:
    """Analyse one pickle stream read from ``fh`` (from its current position) up to ``STOP``.

    Args:
        fh: a binary reader positioned at the start of the pickle; offsets are ``fh.tell()`` values.
        torchscript: the stream belongs to a TorchScript archive (``__torch__`` classes are safe).

    Returns:
        A :class:`StreamResult`; ``end`` is ``None`` if the stream is malformed or truncated, in which
        case ``findings`` still holds everything seen before the error (a real unpickler runs those
        opcodes before it fails).
    """
    vm = _Machine(torchscript)
    res = vm.result
    try:
        for opcode, arg, pos in pickletools.genops(fh):
            res.opcodes += 1
            if vm.step(opcode.name, arg, pos if pos is not None else -1):
                res.end = fh.tell()
                break
        else:
            res.error = "the pickle ends without a STOP opcode"
    except _Malformed as exc:
        res.error = str(exc)
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError, TypeError) as exc:
        res.error = str(exc) or type(exc).__name__
    if res.end is None and res.error is None:
        res.error = "the pickle is truncated"
    return res


def worst(severities: list[str]) -> str:
    """The most severe of ``severities`` (``safe`` for none)."""
    return max(severities, key=lambda s: _SEVERITY_ORDER.get(s, 0), default="safe")
