"""The code a ``torch.export`` archive (``.pt2``) carries in its graph JSON (red-team round 11).

``torch.export.load`` turns strings of the graph into Python it runs:

- every symbolic shape's ``expr_str`` goes through ``sympy.sympify`` (``torch/_export/serde/serialize.py``,
  ``_parse_sym_expr``), which ``eval``\\ s the text: ``__import__('os').system(...)`` runs, and so does a string
  argument of any sympy function (``Max("...")`` sympifies it again);
- node targets and subgraph names are written into the Python source FX generates and compiles
  (``torch/fx/graph.py``, ``_format_target``: ``getattr(self, "<name>")``) without escaping; a quote ends the
  string, and a lone ``\\r`` (a line break to ``compile``, none to FX's indenting) reaches module level, which
  ``GraphModule.recompile`` executes at load.

- the guards an export records (``guards_code``) are pasted into ``torch._assert(...)`` and ``exec``-ed by
  ``ep.module()`` (``torch/export/_unlift.py``, red-team round 12).

Every string of the graph is judged by the key it sits under, allow-list first (red-team round 12 found strings
under keys the first version did not look at): an ``expr_str`` (and a ``range_constraints`` key) must parse as an
expression of numbers, symbol names and calls of sympy/torch function classes on them (no strings but a
``Symbol``'s name, no attributes, subscripts, lambdas or private names); a guard must be arithmetic and comparisons
on ``L['input'].size()[i]`` and the like; stack traces, module stacks, assertion messages and pytree specs are data
(no carriage return, and one line but for a stack trace); every other string, and every other key, must be a dotted
identifier, as names, targets, parameter and buffer names are. Every member under ``models/`` is a graph to the
loader, whatever its name. Anything else is ``dangerous`` (rule ``pt2-graph``). Nothing is imported or evaluated here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from torchkeep._scan_code import MEMBER_READ_ERRORS, classify_op, open_zip
from torchkeep._scan_report import CodeAnalysis, CodeFinding

__all__ = ["analyse_export_graphs", "guard_problem", "spec_problem", "sym_expr_problem"]

#: graph JSON read per archive; torch.export writes a few MB for the largest models
_GRAPH_LIMIT = 256 << 20
# graph members: anything under models/ (torch >= 2.8 loads every member there, cutting 5 characters off the
# name) and serialized_exported_program.json (the older layout)
_GRAPH_MEMBER = re.compile(r"(?:[^/]*/)?(?:models/.+|serialized_exported_program\.json)\Z", re.I | re.S)
# names FX writes into generated source (node targets, subgraph, parameter, buffer and SymInt names): dotted
# identifiers; also what every string under a key not listed in _TEXT_KEYS must be
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::)[A-Za-z0-9_]+)*\Z")
_VERSION = re.compile(r"[0-9A-Za-z_.+-]*\Z")
# strings torch.export.load reads as data only: any text on one line (a stack trace: several lines, which FX
# cuts to one for a comment)
_TEXT_KEYS = frozenset({"stack_trace", "nn_module_stack", "torch_fn", "as_string"})
# the pytree specs of the inputs and outputs (JSON in a string): ep.module() writes a dict context's keys into the
# code of forward (torch/export/_unlift.py _get_codegen), and treespec_loads imports what an "__enum__" context
# names: only the containers torch writes, and contexts of plain names (red-team round 13)
_SPEC_KEYS = frozenset({"in_spec", "out_spec"})
_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# a string input's value, which ep.module() pastes between quotes into the guards it execs
_QUOTABLE = re.compile(r"[^'\"\\\n\r]*\Z")
# lower-case sympy functions a shape expression may call; function classes (FloorDiv, Max, Symbol, ...) are
# capitalised, as torch's own (serialize.py's sympy_functions) and sympy's are
_LOWER_FUNCTIONS = frozenset({"floor", "ceiling", "sqrt", "exp", "log", "sign", "sin", "cos", "tan"})
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Constant,
          ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Tuple)


def _nodes(text: str, allowed: tuple[type, ...], kinds: str) -> list[ast.AST] | str:
    """The nodes of ``text`` read as one Python expression, or why it is not one torch writes: what torch writes
    is short, parses, holds only the ``allowed`` node types (``kinds`` names them) and plain constants."""
    if len(text) > 10_000:
        return "more text than torch writes there"
    try:
        nodes = list(ast.walk(ast.parse(text, mode="eval")))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "no Python expression (the loader's parser would read it its own way)"
    for node in nodes:
        if not isinstance(node, allowed):
            return f"a {type(node).__name__} ({kinds})"
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool, str):
            return f"the constant {node.value!r}"
    return nodes


def sym_expr_problem(text: str) -> str | None:
    """Why ``text`` is not a symbolic-shape expression as torch writes one (``None`` if it is)."""
    nodes = _nodes(text, _NODES, "only numbers, symbols and function calls are written")
    if isinstance(nodes, str):
        return nodes
    for node in nodes:
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return f"the private name {node.id!r}"
        if isinstance(node, ast.keyword) and not (
            isinstance(node.value, ast.Constant) and type(node.value.value) in (bool, int)
        ):
            return "a keyword argument that is not a number or a boolean"
        if isinstance(node, ast.Call):
            problem = _call_problem(node)
            if problem:
                return problem
    strings = [n for n in nodes if isinstance(n, ast.Constant) and type(n.value) is str]
    named = {id(c.args[0]) for c in nodes if isinstance(c, ast.Call) and _called(c) == "Symbol" and c.args}
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
    zf = open_zip(path)
    if zf is None:
        return
    with zf:
        budget = _GRAPH_LIMIT
        for info in zf.infolist():
            if not _GRAPH_MEMBER.match(info.filename):  # under the archive's one root folder, as torch reads it
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
            except (*MEMBER_READ_ERRORS, RecursionError) as exc:  # json.loads: ValueError, RecursionError
                out.findings.append(CodeFinding("pt2-graph", name, name, f"graph JSON that cannot be read "
                                                f"({type(exc).__name__}): what torch.export.load runs is not known"))
                continue
            problem = _walk(doc)
            if problem:
                out.findings.append(CodeFinding("pt2-graph", name, name, f"{problem}: torch.export.load turns "
                                                "such strings into Python it runs (sympify, FX code generation)"))


def _walk(doc: Any) -> str | None:
    # (value, the key it sits under, the key the dict holding it sits under)
    stack: list[tuple[Any, str | None, str | None]] = [(doc, None, None)]
    while stack:
        value, key, owner = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                problem = _key_problem(k, key)
                if problem:
                    return problem
                stack.append((v, k, key))
        elif isinstance(value, list):
            stack.extend((v, key, owner) for v in value)
        elif isinstance(value, str):
            problem = _string_problem(value, key)
            if problem is None and key == "as_string" and owner in ("inputs", "outputs") and not _QUOTABLE.match(value):
                problem = f"the string input {value[:40]!r}, which ep.module() pastes between quotes into code"
            if problem:
                return problem
    return None


def spec_problem(text: str) -> str | None:
    """Why ``text`` is not a pytree spec (``in_spec``/``out_spec``) as torch.export writes one (``None`` if it is)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return "no JSON"
    if not (type(doc) is list and len(doc) == 2 and doc[0] == 1):
        return "no protocol-1 spec"
    stack = [doc[1]]
    while stack:
        node = stack.pop()
        if type(node) is not dict or set(node) != {"type", "context", "children_spec"}:
            return "a node that is not {type, context, children_spec}"
        if node["type"] not in _SPEC_TYPES:
            return f"the container type {str(node['type'])[:60]!r}"
        context = node["context"]
        try:
            context = json.loads(context) if type(context) is str else context
        except (ValueError, RecursionError):
            return "a context that is no JSON"
        if context is not None and not (
            type(context) is list and all(type(k) is str and _IDENTIFIER.match(k) for k in context)
        ):
            return f"the context {str(context)[:60]!r} (only names are written)"
        if type(node["children_spec"]) is not list:
            return "children that are not a list"
        stack.extend(node["children_spec"])
    return None


def _key_problem(k: str, parent: str | None) -> str | None:
    if parent == "range_constraints":  # keyed by shape expressions
        why = sym_expr_problem(k)
        return f"the range constraint {k[:60]!r} holds {why}" if why else None
    return None if _NAME.match(k) else f"the key {k[:60]!r} is not an identifier"


def _string_problem(value: str, key: str | None) -> str | None:
    if "\r" in value:
        return f"a carriage return in {key or 'a string'} ({value[:40]!r})"
    if key == "stack_trace":
        return None
    if "\n" in value:
        return f"a line break in {key or 'a string'} ({value[:40]!r})"
    if key == "expr_str":
        why = sym_expr_problem(value)
        return f"the shape expression {value[:60]!r} holds {why}" if why else None
    if key == "guards_code":
        why = guard_problem(value)
        return f"the guard {value[:60]!r} holds {why}" if why else None
    if key in _SPEC_KEYS:
        why = spec_problem(value)
        return f"the {key} holds {why}" if why else None
    if key in _TEXT_KEYS:
        return None
    if key == "torch_version":
        return None if _VERSION.match(value) else f"the torch_version {value[:40]!r}"
    if value and not _NAME.match(value):
        return f"the {key or 'string'} {value[:60]!r} is not a dotted identifier"
    if key in ("target", "as_operator") and "." in value:  # an operator: a node's, or one passed to a higher-order op
        return _target_problem(value)
    return None


# serialize.py's deserialize_operator resolves a dotted target by getattr from torch, operator or math: a node
# then calls what it names ("torch.os.system" is os.system). Targets torch writes: operators (torch.ops.NS.OP,
# judged like TorchScript's), higher-order ops, operator/math functions and torch's symbolic helpers.
_TARGET = re.compile(r"(?:_operator|math)\.[a-z_0-9]+|torch\.(?:_?sym_[a-z_0-9]+|_check[a-z_]*|_assert[a-z_]*)\Z")
_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)(?:\.[A-Za-z0-9_]+)?\Z")


def _target_problem(target: str) -> str | None:
    op = _OP_TARGET.match(target)
    if op:
        if op.group(1) == "higher_order":
            return None  # control flow (cond, while_loop, map...) over the graph's own subgraphs
        why = classify_op(f"{op.group(1)}::{op.group(2)}")  # as TorchScript's operators are judged
        return f"the node target {target!r}: {why}" if why else None
    return None if _TARGET.fullmatch(target) else f"the node target {target!r}, which is no operator torch writes"


# what a guard may call on an input (torch's guard printer writes L['x'].size()[0] and the like)
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Attribute,
                ast.Subscript, ast.Name, ast.Constant, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def guard_problem(text: str) -> str | None:
    """Why ``text`` is not a shape guard as torch writes one (``None`` if it is): ``ep.module()`` execs it."""
    nodes = _nodes(text, _GUARD_NODES, "guards are arithmetic and comparisons on the inputs' sizes")
    if isinstance(nodes, str):
        return nodes
    for node in nodes:
        if isinstance(node, ast.Name) and node.id != "L":
            return f"the name {node.id!r} (guards read only the inputs, L)"
        if isinstance(node, ast.Constant) and type(node.value) is str and not _NAME.match(node.value):
            return f"the string {node.value[:40]!r}"
        if isinstance(node, ast.Call) and (
            node.args or node.keywords or not isinstance(node.func, ast.Attribute)
            or node.func.attr not in _GUARD_METHODS
        ):
            return "a call other than .size()/.stride()/.storage_offset()/.dim()/.numel()"
        if isinstance(node, ast.Attribute) and node.attr not in _GUARD_METHODS:
            return f"the attribute {node.attr!r}"
    return None
