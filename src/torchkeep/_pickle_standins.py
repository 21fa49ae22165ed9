"""The inert stand-ins the scanner's unpicklers build instead of real objects, and what plain data is.

``find_class`` answers a fresh stand-in *class* per global (:class:`Global`, so that ``NEWOBJ`` accepts it);
calling or constructing one, and BUILD / SETITEMS / APPENDS / ADDITEMS on it or on what a call returned
(:class:`Value`), are handed to the pass that made it (:class:`torchkeep._pickle_run._Run`), which records and
judges them. Nothing is imported, nothing is called.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchkeep._scan_rules import VALUES

if TYPE_CHECKING:
    from torchkeep._pickle_run import _Run

__all__ = ["Global", "Value"]

_MAX_NODES = 1_000_000  # container nodes walked to judge one call's arguments; more is not plain data


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


_NO_VALUE = object()


def _is_function_name(name: str) -> bool:
    """By Python's naming convention a lower-case name is a function; Cython's generated
    ``__pyx_unpickle_<Class>`` reconstructors only fill a class's fields and count as the class."""
    last = name.split(".")[-1]
    return not last[:1].isupper() and not last.startswith("__pyx_unpickle_")


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
