"""Where a global that a pickle names is really defined, read from the installed sources without importing them.

A pickler writes a class or function by its own ``__module__`` and ``__qualname__``: the module that
*defines* it. A name spelled through a module that only re-exports it (``from torch.fx import GraphModule``
inside a quantization module, ``from types import FunctionType`` inside a test library) is therefore never
written by ``torch.save`` — yet the unpickler's ``find_class`` imports it all the same and gets the
re-exported object. Judging such a global by how it is spelled would let a dangerous callable pass as
model code; :func:`definitions` follows the spelling to the definitions with :mod:`ast`, so the scanner
judges what the loader would get.

Modules are located with :class:`importlib.machinery.PathFinder` (which finds, but never executes, a
module) and parsed, never imported. A module that is not installed (the user's own ``__main__.Net``) or
has no Python source (an extension module) cannot be followed: its names are judged as spelled.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import PathFinder

__all__ = ["Definition", "definitions", "importable", "is_class", "module_shaped"]

_MAX_DEPTH = 8  # re-export chains longer than this are not followed (reported as unknown)
_MAX_SOURCE = 4 << 20  # modules larger than this are not parsed


@dataclass(frozen=True)
class Definition:
    """What a spelled global turned out to be.

    ``kind``: ``"defined"`` (a ``class``/``def`` in ``module``), ``"module"`` (the name is a module object),
    or ``"unknown"`` (bound by an assignment or built dynamically: cannot be followed statically).
    """

    module: str
    name: str
    kind: str
    how: str = ""  # for a re-export: the chain followed, e.g. "from torch.fx.graph_module import GraphModule"
    what: str = ""  # for "defined": "class" or "function" ("" when not known: a module without source)


def module_shaped(module: str) -> bool:
    """Whether ``module`` is a name an import can find at all (dotted identifiers), installed here or not: a
    module beside the file or in the loader's environment may be. ``lass Net(Module):`` read from text is not."""
    return all(part.isidentifier() for part in module.split("."))


@functools.lru_cache(maxsize=4096)
def importable(module: str) -> bool:
    """Whether an unpickler could import ``module`` here (found on the path, built in, or frozen)."""
    if module in sys.builtin_module_names or module in sys.stdlib_module_names:
        return True
    return _spec(module) is not None


@functools.lru_cache(maxsize=4096)
def _source(module: str) -> str | None:
    """The path of ``module``'s Python source, found without importing anything, or None."""
    spec = _spec(module)
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    return origin


def _spec(module: str) -> object | None:
    """``module``'s spec, found with PathFinder (which never executes a module), or None."""
    parts = module.split(".")
    path: list[str] | None = None
    spec = None
    for i in range(len(parts)):
        try:
            spec = PathFinder.find_spec(".".join(parts[: i + 1]), path)
        except Exception:  # namespace packages look their parent up in sys.modules (KeyError), odd paths...
            return None
        if spec is None:
            return None
        if i < len(parts) - 1:
            locations = spec.submodule_search_locations
            if locations is None:
                return None
            path = list(locations)
    return spec


@dataclass(frozen=True)
class _Module:
    package: str  # for relative imports
    bindings: dict[str, tuple[tuple[str, str], ...]]  # name -> ((kind, detail), ...)
    stars: tuple[str, ...]  # modules imported with "from X import *"
    classes: dict[str, dict[str, tuple[tuple[str, str], ...]]]  # class -> its body's bindings


def _absolute(package: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _collect(body: list[ast.stmt], package: str, out: dict[str, list[tuple[str, str]]], stars: list[str],
             classes: dict[str, dict[str, tuple[tuple[str, str], ...]]] | None) -> None:
    def bind(name: str, kind: str, detail: str = "") -> None:
        out.setdefault(name, []).append((kind, detail))

    for node in body:
        if isinstance(node, ast.ClassDef):
            bind(node.name, "def", "class")
            if classes is not None:
                inner: dict[str, list[tuple[str, str]]] = {}
                _collect(node.body, package, inner, [], None)
                classes[node.name] = {k: tuple(v) for k, v in inner.items()}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bind(node.name, "def", "function")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(package, node.level, node.module)
            for a in node.names:
                if a.name == "*":
                    stars.append(source)
                else:
                    bind(a.asname or a.name, "from", f"{source}:{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    bind(a.asname, "module", a.name)
                else:
                    top = a.name.split(".")[0]
                    bind(top, "module", top)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in targets:
                # only names are rebound (X = ..., a, b = ...); X.attr = ... and X[i] = ... leave X as it was
                stack: list[ast.expr] = [t]
                while stack:
                    leaf = stack.pop()
                    if isinstance(leaf, ast.Tuple | ast.List):
                        stack.extend(leaf.elts)
                    elif isinstance(leaf, ast.Starred):
                        stack.append(leaf.value)
                    elif isinstance(leaf, ast.Name):
                        dotted = _dotted(value) if value is not None and leaf is t else None
                        bind(leaf.id, "alias" if dotted else "other", dotted or "")
            _stores(value, bind)  # a walrus inside the value
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            blocks = ("body", "orelse", "finalbody")
            for field_name, child in ast.iter_fields(node):  # loop targets, `with ... as X`, walrus in a test
                if field_name not in (*blocks, "handlers"):
                    for item in child if isinstance(child, list) else [child]:
                        if isinstance(item, ast.AST):
                            _stores(item, bind)
            for block in blocks:
                _collect(getattr(node, block, []) or [], package, out, stars, classes)
            for handler in getattr(node, "handlers", []) or []:
                if handler.name:
                    bind(handler.name, "other")
                _collect(handler.body, package, out, stars, classes)
        else:  # expressions, match, type aliases...: any name they bind cannot be followed
            _stores(node, bind)


def _stores(node: ast.AST | None, bind: Callable[[str, str], None]) -> None:
    """Bind as unknown every name ``node`` stores into (walrus, loop targets...), outside nested scopes."""
    if node is None:
        return
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            bind(n.id, "other")
        elif isinstance(n, ast.MatchAs | ast.MatchStar) and n.name:
            bind(n.name, "other")
        # a walrus in a comprehension binds in the module too, so comprehensions are walked
        if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef) or n is node:
            stack.extend(ast.iter_child_nodes(n))


@functools.lru_cache(maxsize=512)
def _parse(module: str) -> _Module | None:
    path = _source(module)
    if path is None:
        return None
    try:
        if os.path.getsize(path) > _MAX_SOURCE:
            return None
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    bindings: dict[str, list[tuple[str, str]]] = {}
    stars: list[str] = []
    classes: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {}
    _collect(tree.body, package, bindings, stars, classes)
    return _Module(package, {k: tuple(v) for k, v in bindings.items()}, tuple(stars), classes)


def is_class(module: str, name: str) -> bool | None:
    """Whether ``module.name`` is known, from its source, to be a class (every definition a ``class``); None
    when its module cannot be read (not installed, or an extension without Python source)."""
    defs = definitions(module, name)
    if defs is None:
        return None
    return bool(defs) and all(d.kind == "defined" and d.what == "class" for d in defs)


def definitions(module: str, name: str) -> list[Definition] | None:
    """What ``module.name`` (as a pickle spells it) is defined as, following re-exports.

    Returns None when ``module`` is not installed or has no Python source (nothing to follow: judge the
    name as spelled); otherwise every definition the name may be bound to (several when the module binds
    it on more than one path, e.g. ``try: from a import X / except ImportError: class X``).
    """
    if _parse(module) is None:
        return None
    found: list[Definition] = []
    _follow(module, name, "", 0, found, set())
    return found


def _follow(module: str, name: str, how: str, depth: int, found: list[Definition], seen: set[tuple[str, str]]) -> None:
    if (module, name) in seen:
        return
    seen.add((module, name))
    parsed = _parse(module)
    if depth > _MAX_DEPTH or parsed is None:
        # a module without source (an extension) or not installed, reached through a re-export: its names
        # are what they are called, but only the first spelling was judged by name: say so
        found.append(Definition(module, name, "unknown" if depth > _MAX_DEPTH else "defined", how))
        return
    head, _, rest = name.partition(".")
    binds = parsed.bindings.get(head)
    if not binds:
        if parsed.stars:
            for star in parsed.stars:
                _follow(star, name, f"{how}; from {star} import *" if how else f"from {star} import *",
                        depth + 1, found, seen)
            return
        found.append(Definition(module, name, "unknown", how or "not bound by any statement of the module"))
        return
    for kind, detail in binds:
        if kind == "def":
            if rest:
                _class_attr(module, head, rest, how, parsed, found, depth, seen)
            else:
                found.append(Definition(module, name, "defined", how, detail))
        elif kind == "from":
            src, _, orig = detail.partition(":")
            step = f"{how}; from {src} import {orig}" if how else f"from {src} import {orig}"
            parent = _parse(src)
            binds_there = parent.bindings.get(orig, ()) if parent is not None else ()
            # `from pkg import sub` gives the submodule unless pkg binds the name otherwise (torch.nn's
            # __init__ binds `functional` by importing it from itself: still the submodule)
            self_import = all(k == "from" and d == f"{src}:{orig}" for k, d in binds_there)
            if self_import and _source(f"{src}.{orig}") is not None:
                _into_module(f"{src}.{orig}", rest, step, depth, found, seen)  # a submodule
            else:
                _follow(src, f"{orig}.{rest}" if rest else orig, step, depth + 1, found, seen)
        elif kind == "module":
            _into_module(detail, rest, f"{how}; import {detail}" if how else f"import {detail}", depth, found, seen)
        elif kind == "alias" and detail:
            first, _, tail = detail.partition(".")
            target = f"{detail}.{rest}" if rest else detail
            if first == head and not tail:
                found.append(Definition(module, name, "unknown", how))
                continue
            _follow(module, target, f"{how}; {head} = {detail}" if how else f"{head} = {detail}", depth + 1, found, seen)
        else:
            found.append(Definition(module, name, "unknown", f"{how}; {head} is assigned" if how else f"{head} is assigned"))


def _into_module(module: str, rest: str, how: str, depth: int, found: list[Definition], seen: set[tuple[str, str]]) -> None:
    """A name bound to a module object: the module itself, or (``mod.attr`` spelled through it) its attribute."""
    if rest:
        _follow(module, rest, how, depth + 1, found, seen)
    else:
        found.append(Definition(module, "", "module", how))


def _class_attr(module: str, cls: str, rest: str, how: str, parsed: _Module, found: list[Definition],
                depth: int, seen: set[tuple[str, str]]) -> None:
    """``Outer.Inner`` (a qualified name): a class or function of the class body, or what it is bound to."""
    attr, _, deeper = rest.partition(".")
    step = f"{how}; class attribute {cls}.{attr}" if how else f"class attribute {cls}.{attr}"
    for kind, detail in parsed.classes.get(cls, {}).get(attr, ()) or (("other", ""),):
        if kind == "def" and not deeper:
            found.append(Definition(module, f"{cls}.{rest}", "defined", how, detail))
        elif kind == "alias" and detail:  # Helper = os.system in a class body: resolved in the module's scope
            _follow(module, f"{detail}.{deeper}" if deeper else detail, f"{step} = {detail}", depth + 1, found, seen)
        else:
            found.append(Definition(module, f"{cls}.{rest}", "unknown", step))
