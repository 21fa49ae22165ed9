"""Red-team round 11 (issue 9): a ``.pt2`` graph's strings that ``torch.export.load`` runs as Python, and DCP
checkpoints with only rank-local metadata (``__<rank>.metadata``), which ``dcp.load`` falls back to.

Payloads only write a ``PWNED_MARKER`` file in ``tmp_path``; each shape is shown to run under its real loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep
from torchkeep import scan
from torchkeep._detect import is_dcp_dir
from torchkeep._scan_pt2 import sym_expr_problem

MARKER = "PWNED_MARKER"
SYMBOL = "Symbol('s77', positive=True, integer=True)"


def _runs(code: str, marker: Path) -> None:
    """The shape is real: ``code`` (a loader call) creates ``marker`` in a fresh interpreter."""
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], timeout=180, capture_output=True)
    assert marker.exists(), "the loader did not run the payload: the test shape is wrong"
    marker.unlink()


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _dynamic_pt2(path: Path) -> None:
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(_Linear(), (torch.randn(3, 4),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, str(path))


def _rewrite_graph(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                data = edit(data.decode()).encode()
            zout.writestr(info.filename, data)


def test_a_shape_expression_sympify_would_run_is_dangerous(tmp_path):
    base = tmp_path / "base.pt2"
    _dynamic_pt2(base)
    assert SYMBOL in zipfile.ZipFile(base).read(
        next(n for n in zipfile.ZipFile(base).namelist() if n.endswith("models/model.json"))
    ).decode()
    assert scan(base).verdict == "safe"
    marker = tmp_path / f"{MARKER}_sympify"
    evil = tmp_path / "evil.pt2"
    _rewrite_graph(base, evil, lambda s: s.replace(SYMBOL, f"(__import__('os').system('touch {marker}')) + {SYMBOL}", 1))
    _runs(f"import torch; torch.export.load({str(evil)!r})", marker)
    report = scan(evil)
    assert report.verdict == "dangerous" and any(f.rule == "pt2-graph" for f in report.findings), report.findings


def test_a_node_target_fx_would_write_into_code_is_dangerous(tmp_path):
    base = tmp_path / "base.pt2"
    _dynamic_pt2(base)

    def edit(text: str) -> str:
        doc = json.loads(text)
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["target"] = 'torch.ops.aten.linear.default"); __import__("os").system("true'
        return json.dumps(doc)

    evil = tmp_path / "evil.pt2"
    _rewrite_graph(base, evil, edit)
    report = scan(evil)
    assert report.verdict == "dangerous" and any(f.rule == "pt2-graph" for f in report.findings), report.findings


@pytest.mark.parametrize(
    "text",
    [
        SYMBOL,
        "Add(Mul(Integer(2), Symbol('s77', positive=True, integer=True)), Integer(-1))",
        "GreaterThan(Symbol('u0', integer=True), Integer(0))",
        "FloorDiv(s0, 2) + Max(1, s1)",
        "2*s0 + 1",
    ],
)
def test_shape_expressions_torch_writes_pass(text):
    assert sym_expr_problem(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "Max('__import__(\"os\").system(\"x\")')",  # sympy functions sympify string arguments again
        "Symbol('a b')",
        "s0.__class__",
        "eval('1')",
        "sympify('1')",
        "(lambda: 1)()",
        "Symbol('s0', positive='x')",
        "Function('f')(s0)",
        "[s0][0]",
    ],
)
def test_shape_expressions_that_run_code_are_refused(text):
    assert sym_expr_problem(text) is not None


def test_benign_exports_stay_safe(tmp_path):
    class Cond(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cond(x.sum() > 0, lambda x: x.cos(), lambda x: x.sin(), (x,))

    class NonZero(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nonzero(x).float().sum() + x.sum()

    for name, module, args in (("cond", Cond(), (torch.randn(3),)), ("unbacked", NonZero(), (torch.ones(3),))):
        path = tmp_path / f"{name}.pt2"
        torch.export.save(torch.export.export(module, args), str(path))
        report = scan(path)
        assert report.verdict == "safe", (name, report.findings)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _rank_local_dcp(path: Path, state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    os.rename(path / ".metadata", path / "__0.metadata")  # as ranks write it without a coordinator


def test_a_dcp_checkpoint_with_only_rank_metadata_is_judged(tmp_path):
    benign = tmp_path / "benign"
    _rank_local_dcp(benign, {"w": torch.arange(4.0)})
    assert is_dcp_dir(benign)
    assert scan(benign).verdict == "safe"
    assert [t.name for t in torchkeep.inspect(benign).tensors] == ["w"]

    marker = tmp_path / f"{MARKER}_dcp"
    evil = tmp_path / "evil"
    _rank_local_dcp(evil, {"w": torch.zeros(4), "obj": _RunsShell(marker)})
    _runs(
        "import torch, torch.distributed.checkpoint as dcp\n"
        f"sd = {{'w': torch.empty(4), 'obj': None}}\ndcp.load(sd, checkpoint_id={str(evil)!r}, no_dist=True)",
        marker,
    )
    report = scan(evil)
    assert report.verdict == "dangerous", report.findings
