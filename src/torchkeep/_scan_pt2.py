"""The code a ``torch.export`` archive (``.pt2``) carries in its graph JSON (red-team round 11).

``torch.export.load`` turns strings of the graph into Python it runs:

- every symbolic shape's ``expr_str`` goes through ``sympy.sympify`` (``torch/_export/serde/serialize.py``,
  ``_parse_sym_expr``), which ``eval``\\ s the text: ``__import__('os').system(...)`` runs, and so does a string
  argument of any sympy function (``Max("...")`` sympifies it again);
- node targets and subgraph names are written into the Python source FX generates and compiles
  (``torch/fx/graph.py``, ``_format_target``: ``getattr(self, "<name>")``) without escaping; a quote ends the
  string, and a lone ``\\r`` (a line break to ``compile``, none to FX's indenting) reaches module level, which
  ``GraphModule.recompile`` executes at load.

Both are judged against what torch writes, allow-list first: an ``expr_str`` must parse as an expression of
numbers, symbol names and calls of sympy/torch function classes on them (no strings but a ``Symbol``'s name, no
attributes, subscripts, lambdas or private names); names and targets must be dotted identifiers; no string of the
graph may hold ``\\r``, nor a line break outside a ``stack_trace``. Anything else is ``dangerous`` (rule
``pt2-graph``). Nothing is imported or evaluated here.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from torchkeep._scan_report import CodeAnalysis, CodeFinding

__all__ = ["analyse_export_graphs", "sym_expr_problem"]

#: graph JSON read per archive; torch.export writes a few MB for the largest models
_GRAPH_LIMIT = 256 << 20
# graph members: models/<name>.json (torch >= 2.8) and serialized_exported_program.json (the older layout)
_GRAPH_MEMBER = re.compile(r"(?:^|/)(?:models/[^/]+\.json|serialized_exported_program\.json)\Z", re.I)
# names FX writes into generated source (node targets, subgraph and attribute names): dotted identifiers
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::)[A-Za-z0-9_]+)*\Z")
_NAME_KEYS = frozenset({"name", "target"})
# lower-case sympy functions a shape expression may call; function classes (FloorDiv, Max, Symbol, ...) are
# capitalised, as torch's own (serialize.py's sympy_functions) and sympy's are
_LOWER_FUNCTIONS = frozenset({"floor", "ceiling", "sqrt", "exp", "log", "sign", "sin", "cos", "tan"})
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Constant,
          ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Tuple)


def sym_expr_problem(text: str) -> str | None:
    """Why ``text`` is not a symbolic-shape expression as torch writes one (``None`` if it is)."""
    if len(text) > 10_000:
        return "longer than any shape expression"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression (sympy's parser would read it its own way)"
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return f"a {type(node).__name__} (only numbers, symbols and function calls are written)"
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return f"the private name {node.id!r}"
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool, str):
            return f"the constant {node.value!r}"
        if isinstance(node, ast.keyword) and not (
            isinstance(node.value, ast.Constant) and type(node.value.value) in (bool, int)
        ):
            return "a keyword argument that is not a number or a boolean"
        if isinstance(node, ast.Call):
            problem = _call_problem(node)
            if problem:
                return problem
    strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) is str]
    named = {id(c.args[0]) for c in ast.walk(tree) if isinstance(c, ast.Call) and _called(c) == "Symbol" and c.args}
    for s in strings:
        if id(s) not in named or not _NAME.match(str(s.value)):
            return f"the string {str(s.value)[:40]!r}, which sympy would parse and evaluate"
    return None


def _called(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else None


def _call_problem(node: ast.Call) -> str | None:
    name = _called(node)
    if name is None:
        return "a call of something other than a named function"
    if not (name[:1].isupper() or name in _LOWER_FUNCTIONS):
        return f"a call of {name!r}, which is no sympy or torch function class"
    return None


def analyse_export_graphs(path: Path, out: CodeAnalysis) -> None:
    """Judge the graph JSON of every torch.export archive member of the zip at ``path`` into ``out``."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, UnicodeDecodeError):
        return  # the zip walker reports archives whose directory cannot be read
    with zf:
        budget = _GRAPH_LIMIT
        for info in zf.infolist():
            if not _GRAPH_MEMBER.search(info.filename):
                continue
            name = info.filename
            try:
                with zf.open(info) as fh:
                    raw = fh.read(budget + 1)
                if len(raw) > budget:
                    out.findings.append(CodeFinding("pt2-graph", name, name, f"more than {_GRAPH_LIMIT >> 20} MiB "
                                                    "of graph JSON: not judged"))
                    return
                budget -= len(raw)
                doc = json.loads(raw)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
                    RecursionError) as exc:
                out.findings.append(CodeFinding("pt2-graph", name, name, f"graph JSON that cannot be read "
                                                f"({type(exc).__name__}): what torch.export.load runs is not known"))
                continue
            problem = _walk(doc)
            if problem:
                out.findings.append(CodeFinding("pt2-graph", name, name, f"{problem}: torch.export.load turns "
                                                "such strings into Python it runs (sympify, FX code generation)"))


def _walk(doc: Any) -> str | None:
    stack: list[tuple[Any, str | None]] = [(doc, None)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, k if isinstance(k, str) else None) for k, v in value.items())
            stack.extend((k, "<key>") for k in value if isinstance(k, str))
        elif isinstance(value, list):
            stack.extend((v, key) for v in value)
        elif isinstance(value, str):
            problem = _string_problem(value, key)
            if problem:
                return problem
    return None


def _string_problem(value: str, key: str | None) -> str | None:
    if "\r" in value:
        return f"a carriage return in {key or 'a string'} ({value[:40]!r})"
    if "\n" in value and key != "stack_trace":
        return f"a line break in {key or 'a string'} ({value[:40]!r})"
    if key == "expr_str":
        why = sym_expr_problem(value)
        return f"the shape expression {value[:60]!r} holds {why}" if why else None
    if key in _NAME_KEYS and value and not _NAME.match(value):
        return f"the {key} {value[:60]!r} is not a dotted identifier"
    return None
