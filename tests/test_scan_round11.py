"""Red-team rounds 11 and 12 (issue 9): a ``.pt2`` graph's strings that ``torch.export.load`` (or the module it
returns) runs as Python, and DCP checkpoints with only rank-local metadata (``__<rank>.metadata``), which
``dcp.load`` falls back to.

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
from torchkeep._scan_pt2 import guard_problem, spec_problem, sym_expr_problem

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


def _rewrite_graph(src: Path, dst: Path, edit, rename: str | None = None) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data, name = zin.read(info), info.filename
            if name.endswith("models/model.json"):
                data = edit(data.decode()).encode()
                name = name[: -len("model.json")] + (rename or "model.json")
            zout.writestr(name, data)


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


def test_a_graph_under_any_name_in_models_is_judged(tmp_path):
    """torch.export.load takes every member under models/ (cutting 5 characters off the name): round 12."""
    base = tmp_path / "base.pt2"
    _dynamic_pt2(base)
    marker = tmp_path / f"{MARKER}_renamed"
    evil = tmp_path / "evil.pt2"
    payload = f"(__import__('os').system('touch {marker}')) + {SYMBOL}"
    _rewrite_graph(base, evil, lambda s: s.replace(SYMBOL, payload, 1), rename="model_json")
    _runs(f"import torch; torch.export.load({str(evil)!r})", marker)
    assert scan(evil).verdict == "dangerous"


def _edited(tmp_path: Path, name: str, edit_doc) -> Path:
    base = tmp_path / "base.pt2"
    if not base.exists():
        _dynamic_pt2(base)

    def edit(text: str) -> str:
        doc = json.loads(text)
        edit_doc(doc)
        return json.dumps(doc)

    out = tmp_path / f"{name}.pt2"
    _rewrite_graph(base, out, edit)
    return out


def _first(doc, key):
    """The first dict in ``doc`` holding ``key`` (depth first)."""
    stack = [doc]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            if key in cur:
                return cur
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    raise AssertionError(f"no {key} in the graph")


def test_guards_and_names_that_reach_generated_code_are_dangerous(tmp_path):
    """Round 12: ep.module() execs guards_code; FX writes as_name and parameter names into the code it compiles;
    a dotted target resolves by getattr from torch ("torch.os.system" is os.system)."""
    evil = {
        "guards": lambda d: d.__setitem__("guards_code", ["__import__('os').system('true') == 0"]),
        "as_name": lambda d: d["graph_module"]["graph"]["inputs"].append(
            {"as_sym_int": {"as_name": "s=__import__('os').system('true')"}}
        ),
        "parameter": lambda d: _first(d, "parameter_name").__setitem__("parameter_name", 'w",0)or exec("1")or("'),
        "target": lambda d: _first(d, "target").__setitem__("target", "torch.os.system"),
        "custom-op": lambda d: _first(d, "target").__setitem__("target", "torch.ops.aten.save.default"),
    }
    base = _edited(tmp_path, "same", lambda d: None)
    assert scan(base).verdict == "safe"
    for name, edit in evil.items():
        report = scan(_edited(tmp_path, name, edit))
        assert report.verdict == "dangerous" and any(f.rule == "pt2-graph" for f in report.findings), name


@pytest.mark.parametrize(
    "text",
    [
        "(L['x'].size()[0] % (L['x'].size()[0] // 2)) == 0",
        "(-1) + 2*L['x'].size()[0] <= L['y'].size()[0] + L['x'].size()[0]",
        "L['x'].stride()[1] == 1",
    ],
)
def test_guards_torch_writes_pass(text):
    assert guard_problem(text) is None


@pytest.mark.parametrize(
    "text",
    ["__import__('os').system('x') == 0", "L['x'].size()[0] == eval('1')", "L['x'].__class__ == 1",
     "L['a b'].size()[0] == 1", "[x for x in L] == 1", "L['x'].size(exec) == 1"],
)
def test_guards_that_run_code_are_refused(text):
    assert guard_problem(text) is not None


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


def test_a_kwargs_export_and_a_string_input_stay_safe(tmp_path):
    class Kw(nn.Module):
        def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            return x * scale

    path = tmp_path / "kw.pt2"
    torch.export.save(torch.export.export(Kw(), (torch.ones(2),), {"scale": torch.ones(2)}), str(path))
    report = scan(path)
    assert report.verdict == "safe", report.findings


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ('[1, {"type": null, "context": null, "children_spec": []}]', True),
        ('[1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": "builtins.dict", '
         '"context": "[\\"scale\\"]", "children_spec": [{"type": null, "context": null, "children_spec": []}]}]}]', True),
        # round 13: a kwargs name ep.module() writes into forward's code, and an enum context treespec_loads imports
        ('[1, {"type": "builtins.dict", "context": "[\\"_tk=__import__(\'os\').system(\'x\')):#\\"]", '
         '"children_spec": []}]', False),
        ('[1, {"type": "builtins.dict", "context": "[{\\"__enum__\\": 1, \\"fqn\\": \\"this:__name__\\", '
         '\\"name\\": 0}]", "children_spec": []}]', False),
        ('[1, {"type": "collections.defaultdict", "context": "null", "children_spec": []}]', False),
        ('[2, {"type": null, "context": null, "children_spec": []}]', False),
    ],
)
def test_pytree_specs(spec, ok):
    assert (spec_problem(spec) is None) is ok


def test_a_string_input_pasted_into_guards_is_dangerous(tmp_path):
    """Round 13: ep.module() writes a string input's value between quotes into the guards it execs."""
    evil = _edited(
        tmp_path, "strguard",
        lambda d: d["graph_module"]["graph"]["inputs"].append({"as_string": "a' or __import__('os').system('x') or '"}),
    )
    report = scan(evil)
    assert report.verdict == "dangerous" and any(f.rule == "pt2-graph" for f in report.findings), report.findings
