"""The ops an ONNX model runs and the files it reads: part of :func:`torchkeep._scan_code.analyse_code`.

onnxruntime runs ops of the standard domains and its own contrib domain; a node of any other domain needs a
custom-op library registered with the session (native code), unless it calls a function defined in the model
(whose body is checked). ``com.microsoft`` ``ATen``/``PythonOp`` call into PyTorch or Python. Initializers with
external data are read from ``location`` relative to the model's folder: an absolute location, a ``..`` step, a
symlink leading out of the folder or onnxruntime's in-memory tag reads other files or memory. Each of these is
a ``dangerous`` finding. The protobuf is walked field by field (:mod:`torchkeep._onnx`); ``onnx`` is not
imported.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from torchkeep._onnx import _fields, _str, _Truncated, external_data_problem
from torchkeep._scan_report import CodeAnalysis, CodeFinding

__all__ = ["ONNX_DOMAINS", "analyse_onnx"]

#: ONNX domains onnxruntime implements itself ("" is ai.onnx).
ONNX_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft", "com.microsoft.nchwc",
     "com.ms.internal.nhwc"}
)
# contrib ops of onnxruntime that call into PyTorch (ATen) or a Python function
_ONNX_DENIED = frozenset({"com.microsoft::ATen", "com.microsoft::PythonOp", "com.microsoft::PythonOpGrad"})

_ONNX_DEPTH = 64  # nested subgraphs / functions followed


def analyse_onnx(p: Path, out: CodeAnalysis) -> None:
    """Add the findings, ops and notes of the ONNX model at ``p`` to ``out``; never raises for a bad file."""
    walker = _OnnxWalker(p, out)
    try:
        with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            walker.model(mm)
    except (_Truncated, TypeError, ValueError, IndexError, RecursionError) as exc:
        out.findings.append(CodeFinding("onnx-unparsed", p.name, "model",
                                        f"the ONNX protobuf cannot be followed to its end ({type(exc).__name__}): "
                                        "cannot judge which ops it runs or which files it reads"))
        return
    except OSError:
        return  # the scan reports files it cannot read
    walker.finish()


class _OnnxWalker:
    def __init__(self, p: Path, out: CodeAnalysis) -> None:
        self.path = p
        self.out = out
        self.nodes: list[tuple[str, str, str]] = []  # (domain, op_type, where)
        self.functions: set[tuple[str, str]] = set()
        self.locations: list[tuple[str, str]] = []  # (location, tensor name)

    def model(self, buf) -> None:
        for num, wt, val in _fields(buf, 0, len(buf)):
            if wt != 2:
                continue
            if num == 7:
                self.graph(buf, val, "graph", 0)
            elif num == 25:
                self.function(buf, val, 0)
            elif num == 20:  # TrainingInfoProto: initialization (1) and algorithm (2) graphs
                for tnum, twt, tval in _fields(buf, *val):
                    if tnum in (1, 2) and twt == 2:
                        self.graph(buf, tval, "training_info", 0)

    def graph(self, buf, sl, where: str, depth: int) -> None:
        if depth > _ONNX_DEPTH:
            raise RecursionError
        for num, wt, val in _fields(buf, *sl):
            if wt != 2:
                continue
            if num == 1:
                self.node(buf, val, where, depth)
            elif num == 5:
                self.tensor(buf, val)
            elif num == 15:
                self.sparse(buf, val)

    def function(self, buf, sl, depth: int) -> None:
        name = domain = ""
        nodes: list[tuple[int, int]] = []
        for num, wt, val in _fields(buf, *sl):
            if wt != 2:
                continue
            if num == 1:
                name = _str(buf, val)
            elif num == 10:
                domain = _str(buf, val)
            elif num == 7:
                nodes.append(val)
        self.functions.add((domain, name))
        for val in nodes:
            self.node(buf, val, f"function {domain}::{name}", depth + 1)

    def node(self, buf, sl, where: str, depth: int) -> None:
        op = domain = ""
        for num, wt, val in _fields(buf, *sl):
            if wt != 2:
                continue
            if num == 4:
                op = _str(buf, val)
            elif num == 7:
                domain = _str(buf, val)
            elif num == 5:
                self.attribute(buf, val, f"{where}/{op or 'node'}", depth)
        self.nodes.append((domain, op, where))

    def attribute(self, buf, sl, where: str, depth: int) -> None:
        for num, wt, val in _fields(buf, *sl):
            if wt != 2:
                continue
            if num in (6, 11):  # g, graphs: If/Loop/Scan bodies
                self.graph(buf, val, where, depth + 1)
            elif num in (5, 10):  # t, tensors (Constant)
                self.tensor(buf, val)
            elif num in (22, 23):  # sparse_tensor, sparse_tensors
                self.sparse(buf, val)

    def sparse(self, buf, sl) -> None:
        """A SparseTensorProto: its values (1) and indices (2) are TensorProtos."""
        for num, wt, val in _fields(buf, *sl):
            if num in (1, 2) and wt == 2:
                self.tensor(buf, val)

    def tensor(self, buf, sl) -> None:
        name = ""
        locations: list[str] = []
        for num, wt, val in _fields(buf, *sl):
            if wt != 2:
                continue
            if num == 8:
                name = _str(buf, val)
            elif num == 13:  # external_data: StringStringEntryProto key (1) / value (2)
                key = value = ""
                for knum, kwt, kval in _fields(buf, *val):
                    if kwt == 2 and knum == 1:
                        key = _str(buf, kval)
                    elif kwt == 2 and knum == 2:
                        value = _str(buf, kval)
                if key == "location":
                    locations.append(value)
        self.locations += [(loc, name) for loc in locations]

    def finish(self) -> None:
        out = self.out
        used: dict[str, set[str]] = {}
        for domain, op, where in self.nodes:
            key = f"{domain or 'ai.onnx'}::{op}"
            used.setdefault(where if where.startswith("function") else "graph", set()).add(key)
            if (domain, op) in self.functions:
                continue  # a call of a function defined in the model: its nodes are checked
            if f"{domain}::{op}" in _ONNX_DENIED:
                out.findings.append(CodeFinding("onnx-custom-op", key, where,
                                                f"{key} calls into PyTorch or a Python function when onnxruntime runs it"))
            elif domain not in ONNX_DOMAINS:
                out.findings.append(CodeFinding(
                    "onnx-custom-op", key, where,
                    f"op {op!r} of the custom domain {domain!r}: onnxruntime runs it only with a custom-op library "
                    "registered (native code torchkeep cannot judge)"))
        out.code.update({k: sorted(v) for k, v in used.items()})
        # onnxruntime reads external data relative to the model path it was given (not its resolved target)
        folder = self.path.absolute().parent
        seen: set[str] = set()
        for loc, tensor in self.locations:
            if loc in seen:
                continue
            seen.add(loc)
            why = external_data_problem(folder, loc)
            if why:
                out.findings.append(CodeFinding("onnx-external-data", loc, f"initializer {tensor}",
                                                f"external data location {loc!r} {why}"))
        if seen:
            out.notes.append(f"ONNX external data read from: {', '.join(sorted(seen)[:5])}")
