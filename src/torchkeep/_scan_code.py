"""The code a model file carries: TorchScript methods and the operators they call, ONNX custom ops and
external data. Part of :func:`torchkeep.scan`; nothing is executed, ``torch`` and ``onnx`` are not imported.

**TorchScript.** ``torch.jit.load`` compiles every ``<root>/code/**.py`` member of the archive (TorchScript
source in Python syntax) and runs ``__setstate__`` methods while loading; ``forward`` and the other methods
run when the model is called. Each member is parsed with :mod:`ast` (never executed) and every operator
reference is resolved the way TorchScript's importer resolves it (``torch/csrc/jit/serialization/
import_source.cpp``): ``torch.X`` and ``torch.autograd.X`` are ``aten::X``; ``ops.NS.X`` is ``NS::X``
(``ops.NS.autograd.X`` is ``aten::X``); ``__torch__.torch.classes.NS.C`` is a C++ class registered by a
library; ``x.X(...)`` on a tensor is ``aten::X`` too.

What is allowed is decided allow-list first, and fails closed:

- an operator must be in one of torch's own compute namespaces (:data:`COMPUTE_NAMESPACES`) or be one of
  the few named operators of other namespaces in :data:`COMPUTE_OPS` (profiler ranges, torchvision's
  detection ops). Any other namespace — a custom op a library registers (``ops.image.write_file`` of
  torchvision, ``ops.c10d.*`` networking, ``ops.myns.*``) — is ``dangerous``: it is native code torchkeep
  cannot judge;
- inside those namespaces, an operator whose name has a word of file, process, network or Python access
  (:data:`IO_WORDS`: ``aten::save``, ``aten::from_file``, ``prim::PythonOp``, ``prim::rpc_async``...) is
  ``dangerous``. ``tests/test_scan_code.py`` checks against the installed torch's operator registry that
  every operator taking a file name or path argument is caught, so a torch upgrade that adds one fails the
  tests rather than passing silently;
- a C++ class outside :data:`CUSTOM_CLASS_NAMESPACES` (quantized packed weights, xnnpack/mkldnn op
  contexts) and :data:`CUSTOM_CLASSES` is ``dangerous``, in the code or in ``data.pkl``;
- source that torch's own printer (``torch.jit.save``) never writes is ``dangerous``, because Python's
  parser and TorchScript's lexer could read it differently: bytes outside printable ASCII and newline,
  comments (TorchScript compiles ``# type:`` comments), string literals with prefixes or triple quotes,
  an operator namespace used as a value (``m = torch``), or a member that does not parse at all.

**ONNX.** onnxruntime runs ops of the standard domains and its own contrib domain; a node of any other
domain needs a custom-op library registered with the session (native code), unless it calls a function
defined in the model (whose body is checked). ``com.microsoft`` ``ATen``/``PythonOp`` call into PyTorch
or Python. Initializers with external data are read from ``location`` relative to the model's folder:
an absolute location, a ``..`` step, a symlink leading out of the folder or onnxruntime's in-memory tag
reads other files or memory. Each of these is a ``dangerous`` finding.
"""

from __future__ import annotations

import ast
import io
import os
import re
import time
import tokenize
import zipfile
from collections.abc import Iterable
from pathlib import Path

from torchkeep._scan_onnx import ONNX_DOMAINS, analyse_onnx
from torchkeep._scan_report import CodeAnalysis, CodeFinding

__all__ = [
    "COMPUTE_NAMESPACES",
    "COMPUTE_OPS",
    "CUSTOM_CLASSES",
    "CUSTOM_CLASS_NAMESPACES",
    "IO_WORDS",
    "ONNX_DOMAINS",
    "CodeAnalysis",
    "CodeFinding",
    "analyse_code",
    "classify_op",
]

#: Operator namespaces of torch's own tensor computation (TorchScript ``torch.X`` is ``aten``).
COMPUTE_NAMESPACES = frozenset(
    {"aten", "prim", "prims", "quantized", "_quantized", "prepacked", "mkldnn", "mkldnn_prepacked", "onednn",
     "sparse", "quantization"}
)
#: Operators of other namespaces that only compute (torchvision's detection ops) or time a region.
COMPUTE_OPS = frozenset(
    {"profiler::_record_function_enter", "profiler::_record_function_enter_new",
     "profiler::_record_function_exit", "profiler::_call_end_callbacks_on_jit_fut",
     "torchvision::nms", "torchvision::roi_align", "torchvision::roi_pool", "torchvision::ps_roi_align",
     "torchvision::ps_roi_pool", "torchvision::deform_conv2d", "torchvision::box_iou_rotated",
     "torchvision::qnms", "torchvision::qroi_align", "torchvision::_cuda_version"}
)  # fmt: skip
#: Words of an operator's name that mean file, process, network or Python access (whatever its namespace).
IO_WORDS = frozenset(
    {"file", "files", "filename", "path", "save", "load", "open", "popen", "read", "write", "socket", "connect",
     "system", "exec", "spawn", "library", "dlopen", "rpc", "remote", "python", "url", "pickle", "unpickle",
     "mmap", "shm"}
)
# Method syntax (``x.save(p)`` is ``aten::save(x, p)`` on a tensor) cannot tell a tensor from a module whose
# attribute happens to be named like an operator, so only these exact names are refused there.
_IO_METHODS = frozenset(
    {"save", "from_file", "load", "_save", "_load", "_save_for_mobile", "_load_for_mobile", "read_file",
     "write_file", "load_tensor", "PythonOp", "IgnoredPythonOp", "rpc_async", "rpc_sync", "rpc_remote"}
)  # fmt: skip
#: Namespaces of torch's own C++ classes found in saved models (``__torch__.torch.classes.NS.C``): packed
#: quantized weights, xnnpack/mkldnn op contexts.
CUSTOM_CLASS_NAMESPACES = frozenset({"quantized", "rnn", "sparse", "mkldnn", "xnnpack"})
#: Single C++ classes of torch allowed outside those namespaces (``torch.autograd.profiler.record_function``).
CUSTOM_CLASSES = frozenset({"profiler._RecordFunction"})

# TorchScript's global names (ir_emitter.cpp, import_source.cpp) that are not operator namespaces
_BUILTINS = frozenset(
    {"print", "tuple", "float", "int", "bool", "str", "getattr", "hasattr", "isinstance", "_to_tensor", "len",
     "hex", "oct", "round", "hash", "id", "min", "max", "abs", "all", "any", "divmod", "sum", "list", "dict",
     "ord", "chr", "bin", "pow", "complex", "range", "zip", "enumerate", "rangelist", "sorted", "fork", "wait",
     "annotate", "unchecked_cast", "uninitialized", "AssertionError"}
)
# What judging TorchScript source may cost: parsing is linear but heavy (an AST of 8 MiB of one-line statements took
# 2.5 GB and 2 minutes, red-team round 10), so the work is bounded per member, per archive and in time; past any
# bound the code is not judged (a finding: not safe). torch.jit.save writes one member per class; the biggest
# seen in real models are far below a MiB.
_CODE_LIMIT = 32 << 20  # bytes of TorchScript source read per archive
_MEMBER_LIMIT = 4 << 20  # bytes of one source member
_CODE_SECONDS = 30.0  # time spent judging the code of one archive
_CODE_MEMBER = re.compile(r"(?:^|/)code/.*\.py\Z", re.S)
_PRINTABLE = re.compile(r"[^\n\x20-\x7e]")
_PLAIN_STRING = re.compile(r"""\A(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')\Z""", re.S)
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def classify_op(op: str) -> str | None:
    """Why ``op`` (``namespace::name``) is not allowed in a model's code, or ``None`` if it computes on tensors."""
    ns, _, name = op.partition("::")
    words = {w.lower() for w in _WORDS.findall(name)}
    io = sorted(words & IO_WORDS)
    if io:
        return f"its name says file, process, network or Python access ({', '.join(io)})"
    if op in COMPUTE_OPS or ns in COMPUTE_NAMESPACES:
        return None
    return (f"namespace {ns!r} is not one of torch's compute namespaces: an operator a library registered "
            "(native code torchkeep cannot judge)")


def _classify_class(ns: str, name: str) -> str | None:
    if ns in CUSTOM_CLASS_NAMESPACES or f"{ns}.{name}" in CUSTOM_CLASSES:
        return None
    return f"a C++ class registered by a library (namespace {ns!r}): its methods are native code"


def analyse_code(path: str | os.PathLike[str], fmt: str | None, imports: Iterable[str] = ()) -> CodeAnalysis:
    """Find the code ``path`` carries: TorchScript in any zip archive, custom ops and external data in ONNX.

    Args:
        path: the file.
        fmt: its detected format (``"onnx"`` selects the ONNX checks; zips are recognised by content).
        imports: the globals its pickles name (``module.name``): TorchScript's ``data.pkl`` builds objects
            of C++ classes (``__torch__.torch.classes.NS.C``) by calling their native ``__setstate__``.

    Returns:
        A :class:`CodeAnalysis`; never raises for a bad file (what cannot be read is a finding).
    """
    p = Path(path)
    out = CodeAnalysis()
    for imp in imports:
        parts = imp.split(".")
        if parts[:3] == ["__torch__", "torch", "classes"] and len(parts) >= 4:
            why = _classify_class(parts[3], ".".join(parts[4:]))
            if why:
                out.findings.append(CodeFinding("torchscript-op", imp, "data.pkl", f"the pickle builds {imp}: {why}"))
    if fmt == "onnx":
        analyse_onnx(p, out)
        return out
    try:
        if zipfile.is_zipfile(p):
            _torchscript(p, out)
    except OSError:
        pass  # the pickle scan reports an unreadable file
    return out


# ------------------------------------------------------------------------------------------- TorchScript
#: what reading one zip member may raise (a bad member is a finding, the others are still read)
MEMBER_READ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError)


def open_zip(path: Path) -> zipfile.ZipFile | None:
    """``path`` as zipfile reads it, or ``None`` (the zip walker reports archives whose directory cannot be read)."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, UnicodeDecodeError):
        return None


def _torchscript(p: Path, out: CodeAnalysis) -> None:
    zf = open_zip(p)
    if zf is None:
        return
    with zf:
        # torch's reader (miniz) looks names up ignoring ASCII case: archive/CODE/__torch__.PY is code too
        members = [i for i in zf.infolist() if _CODE_MEMBER.search(i.filename.lower())]
        budget = _CODE_LIMIT
        deadline = time.monotonic() + _CODE_SECONDS
        methods = 0
        load_time: list[str] = []
        for info in members:
            name = info.filename
            try:
                with zf.open(info) as fh:
                    data = fh.read(min(budget, _MEMBER_LIMIT) + 1)
            except MEMBER_READ_ERRORS as exc:
                out.findings.append(CodeFinding("torchscript-unparsed", name, name,
                                                f"TorchScript code that cannot be read ({exc}): cannot judge what it runs"))
                continue
            too_much = (f"more than {_MEMBER_LIMIT >> 20} MiB of TorchScript code in one member" if len(data) > _MEMBER_LIMIT
                        else f"more than {_CODE_LIMIT >> 20} MiB of TorchScript code" if len(data) > budget
                        else f"judging the code took more than {_CODE_SECONDS:.0f} s" if time.monotonic() > deadline
                        else None)  # fmt: skip
            if too_much:
                out.findings.append(CodeFinding("torchscript-unparsed", name, name,
                                                f"{too_much}: not analysed, so what it runs is not known"))
                return
            budget -= len(data)
            unit = _Unit(name, _qualifier(name), out)
            unit.analyse(data)
            methods += len(unit.methods)
            load_time += [m for m in unit.methods if m.endswith(".__setstate__")]
    if members:
        called = sorted({op for ops in out.code.values() for op in ops})
        out.notes.append(
            f"TorchScript code: {methods} methods/functions in {len(members)} file{'s' if len(members) > 1 else ''} "
            f"call {', '.join(called) or 'no operator'}"
        )
        for method in load_time:
            ops = out.code.get(f"{method} (runs at load)", [])
            out.notes.append(f"torch.jit.load runs {method}: {', '.join(ops) or 'no operator'}")


def _qualifier(member: str) -> str:
    """``archive/code/__torch__/torch/nn/modules/conv.py`` -> ``__torch__.torch.nn.modules.conv``."""
    parts = member[: -len(".py")].split("/")
    lower = [x.lower() for x in parts]
    return ".".join(parts[lower.index("code") + 1 :] if "code" in lower else parts)


class _Unit:
    """One TorchScript source member."""

    def __init__(self, member: str, qualifier: str, out: CodeAnalysis) -> None:
        self.member = member
        self.qualifier = qualifier
        self.out = out
        self.methods: list[str] = []
        self._flagged: set[tuple[str, str]] = set()

    def finding(self, rule: str, name: str, why: str) -> None:
        if (rule, name) not in self._flagged:
            self._flagged.add((rule, name))
            self.out.findings.append(CodeFinding(rule, name, self.member, why))

    def unparsed(self, why: str) -> None:
        self.finding("torchscript-unparsed", self.member, f"{why}: cannot judge what the code runs")

    def analyse(self, data: bytes) -> None:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            return self.unparsed("non-ASCII bytes, which torch.jit.save never writes in code")
        bad = _PRINTABLE.search(text)
        if bad:
            return self.unparsed(f"the control character {bad.group()!r}, which torch.jit.save never writes in code")
        if not self._canonical_tokens(text):
            return
        try:
            tree = ast.parse(text, filename=self.member)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            return self.unparsed(f"source that does not parse ({type(exc).__name__}: {str(exc)[:80]})")
        self._walk(tree)

    def _canonical_tokens(self, text: str) -> bool:
        """Strings and comments the way torch's printer writes them, so that Python and TorchScript see the
        same code: TorchScript compiles ``# type:`` comments and knows no string prefixes."""
        fstring = getattr(tokenize, "FSTRING_START", -1)
        try:
            for tok in tokenize.generate_tokens(io.StringIO(text).readline):
                if tok.type == tokenize.COMMENT:
                    self.unparsed(f"a comment (line {tok.start[0]}), which torch.jit.save never writes")
                    return False
                if tok.type == fstring or (tok.type == tokenize.STRING and not _PLAIN_STRING.match(tok.string)):
                    self.unparsed(f"a string literal with a prefix or triple quotes (line {tok.start[0]})")
                    return False
                if tok.type == tokenize.ERRORTOKEN:
                    self.unparsed(f"a token Python cannot read (line {tok.start[0]})")
                    return False
        except (tokenize.TokenError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            self.unparsed(f"source that does not tokenize ({type(exc).__name__})")
            return False
        return True

    def _walk(self, tree: ast.Module) -> None:
        # (node, where) pairs, depth first; ``where`` is the method or function whose body holds the node
        stack: list[tuple[ast.AST, str]] = [(tree, self.qualifier)]
        inner: set[int] = set()  # Attribute nodes already seen as part of a longer chain
        ops: dict[str, set[str]] = {}
        while stack:
            node, where = stack.pop()
            if isinstance(node, ast.ClassDef):
                where = f"{self.qualifier}.{node.name}"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{where}.{node.name}"
                self.methods.append(where)
                ops.setdefault(where, set())
            elif isinstance(node, ast.Attribute) and id(node) not in inner:
                self._chain(node, where, ops, inner)
            elif isinstance(node, ast.Name) and node.id in ("torch", "ops", "__torch__") and id(node) not in inner:
                self.finding("torchscript-op", node.id, f"{where} uses the operator namespace {node.id!r} as a "
                             "value: the operators it reaches cannot be followed")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                self._builtin_call(node, where, ops)
            stack.extend((child, where) for child in reversed(list(ast.iter_child_nodes(node))))
        for where, called in ops.items():
            key = f"{where} (runs at load)" if where.endswith(".__setstate__") else where
            self.out.code[key] = sorted(called)

    def _builtin_call(self, node: ast.Call, where: str, ops: dict[str, set[str]]) -> None:
        name = node.func.id  # type: ignore[attr-defined]
        if name not in _BUILTINS:
            return
        ops.setdefault(where, set()).add(f"builtins.{name}")
        # getattr(x, "save") is x.save: the attribute may be a tensor's operator
        if name in ("getattr", "hasattr") and len(node.args) >= 2:
            arg = node.args[1]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value in _IO_METHODS:
                self.finding("torchscript-op", f"aten::{arg.value}",
                             f"{where} reaches aten::{arg.value} through getattr: file, process or network access")

    def _chain(self, node: ast.Attribute, where: str, ops: dict[str, set[str]], inner: set[int]) -> None:
        attrs: list[str] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):
            attrs.append(cur.attr)
            if cur is not node:
                inner.add(id(cur))
            cur = cur.value
        attrs.reverse()
        root = cur.id if isinstance(cur, ast.Name) else None
        if isinstance(cur, ast.Name):
            inner.add(id(cur))
        if root == "torch":
            self._op("aten", attrs, where, ops)
        elif root == "ops":
            if len(attrs) < 2:
                self.finding("torchscript-op", "ops." + ".".join(attrs), f"{where} uses the operator namespace "
                             f"ops.{'.'.join(attrs)} as a value: the operators it reaches cannot be followed")
            else:
                self._op(attrs[0], attrs[1:], where, ops)
        elif root == "__torch__" and (attrs[:2] == ["torch", "classes"] or attrs == ["torch"]):
            name = "__torch__." + ".".join(attrs)
            if len(attrs) < 3:  # the namespace of C++ classes as a value: m.myns.Evil(...) would hide the class
                self.finding("torchscript-op", name, f"{where} uses the class namespace {name} as a value: the "
                             "classes it reaches cannot be followed")
                return
            ops.setdefault(where, set()).add(name)
            why = _classify_class(attrs[2], ".".join(attrs[3:]))
            if why:
                self.finding("torchscript-op", name, f"{where} uses {name}: {why}")
        elif root != "__torch__" and root != "CONSTANTS":
            # x.save(p) on a tensor is aten::save(x, p)
            for a in attrs:
                if a in _IO_METHODS:
                    self.finding("torchscript-op", f"aten::{a}", f"{where} calls .{a}(), which on a tensor is "
                                 f"aten::{a}: file, process or network access")

    def _op(self, ns: str, attrs: list[str], where: str, ops: dict[str, set[str]]) -> None:
        """Resolve ``NS.attr.attr...`` as TorchScript's BuiltinModule does: ``autograd`` is ``aten`` again."""
        i = 0
        while i < len(attrs) and attrs[i] == "autograd":
            ns, i = "aten", i + 1
        if i == len(attrs):
            self.finding("torchscript-op", f"{ns}::", f"{where} uses the operator namespace {ns!r} as a value: "
                         "the operators it reaches cannot be followed")
            return
        op = f"{ns}::{attrs[i]}"
        ops.setdefault(where, set()).add(op)
        why = classify_op(op)
        if why:
            self.finding("torchscript-op", op, f"{where} calls {op}: {why}")
