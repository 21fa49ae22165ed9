"""The code a model file carries (TorchScript methods and ops, ONNX custom ops and external data) and the
scan-then-refuse gate in front of every loader.

Malicious TorchScript files are real ``torch.jit.script`` modules (and hand edits of their printed code)
whose payload only writes a file named ``PWNED_MARKER...``; ``test_payloads_run_under_plain_torch_jit_load``
proves in a subprocess that plain ``torch.jit.load`` runs every one of them. Every other test asserts that
no marker appears.
"""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

import torchkeep
from _files import SetstateSaves, rewrite_zip_member, tiny_model, torchscript_pt
from torchkeep._export import TORCHSCRIPT_SPEC_FILE
from torchkeep._gate import check_file
from torchkeep._scan import scan
from torchkeep._scan_code import classify_op
from torchkeep._spec import ModelSpec, Preprocessing
from torchkeep.errors import InputError, UnsafeFileError, UntrustedCodeError
from torchkeep.models import build

MARKER = "PWNED_MARKER"


# -- malicious TorchScript modules (payloads write a marker file and nothing else) ---------------------------
class ForwardSaves(nn.Module):
    """forward writes a file with torch.save (aten::save): runs at predict."""

    def __init__(self, marker: str):
        super().__init__()
        self.p = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.p)
        return x.mean((2, 3))


class SetstateFromFile(nn.Module):
    """__setstate__ creates a file with torch.from_file(shared=True) (aten::from_file)."""

    def __init__(self, marker: str):
        super().__init__()
        self.p = marker
        self.t = torch.zeros(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.p, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.p = state[0]
        self.training = state[1]
        self.t = torch.from_file(self.p, True, 4)


class ForwardWritesImageFile(nn.Module):
    """forward writes a file with torchvision.io.write_file (ops.image.write_file, registered by torchvision)."""

    def __init__(self, marker: str):
        super().__init__()
        self.p = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the op returns a tensor: its result is used, or TorchScript drops the call as dead code
        written = torchvision.io.write_file(self.p, torch.zeros(3, dtype=torch.uint8))
        return x.mean((2, 3)) + written.numel() * 0


class MeanColour(nn.Module):
    """A benign classifier: the mean of each channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


PAYLOADS = {
    "forward-save": (ForwardSaves, "aten::save"),
    "setstate-save": (SetstateSaves, "aten::save"),
    "setstate-from_file": (SetstateFromFile, "aten::from_file"),
    "forward-image-write_file": (ForwardWritesImageFile, "image::write_file"),
}
# the printed call of torch.save(x, p) in forward, spelt the other ways TorchScript's importer resolves it
REWRITES = {
    "ops-aten": ("ops.aten.save(x, p)", "aten::save"),
    "torch-autograd": ("torch.autograd.save(x, p)", "aten::save"),
    "ns-autograd": ("ops.anything.autograd.save(x, p)", "aten::save"),
    "module-alias": ("m = torch\n    m.save(x, p)", "torch"),
    "function-alias": ("f = torch.save\n    f(x, p)", "aten::save"),
}
SPEC = ModelSpec(
    arch="cifar10_cnn", num_classes=3, class_names=["r", "g", "b"], input_size=(8, 8),
    preprocessing=Preprocessing(resize=[8, 8]),
)


def _save_scripted(module: nn.Module, path: Path, spec: ModelSpec | None = SPEC) -> Path:
    extra = {TORCHSCRIPT_SPEC_FILE: spec.to_json()} if spec is not None else {}
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


def _edit_code(src: Path, dst: Path, old: str, new: str) -> Path:
    """Copy a TorchScript archive, replacing ``old`` by ``new`` in the code member that holds it."""
    with zipfile.ZipFile(src) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".py") and old.encode() in zf.read(n))

    def edit(data: bytes) -> bytes:
        return data.replace(old.encode(), new.encode())

    return rewrite_zip_member(src, dst, member, edit)


def _build_malicious(d: Path, marker_dir: Path) -> dict[str, tuple[Path, str]]:
    """kind -> (file, the operator the scan must name)."""
    files: dict[str, tuple[Path, str]] = {}
    for kind, (cls, op) in PAYLOADS.items():
        files[kind] = (_save_scripted(cls(str(marker_dir / f"{MARKER}_{kind}")), d / f"{kind}.pt"), op)
    fwd = files["forward-save"][0]
    for kind, (new, op) in REWRITES.items():
        files[kind] = (_edit_code(fwd, d / f"{kind}.pt", "torch.save(x, p)", new), op)
    # torch's zip reader finds members ignoring ASCII case: archive/CODE/....PY is compiled too
    upper = d / "upper-case-code.pt"
    with zipfile.ZipFile(fwd) as zin, zipfile.ZipFile(upper, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = re.sub(r"/code/(.*)\.py$", lambda m: f"/CODE/{m.group(1)}.PY", info.filename)
            zout.writestr(name, zin.read(info.filename))
    files["upper-case-code"] = (upper, "aten::save")
    return files


@pytest.fixture(scope="module")
def malicious(tmp_path_factory) -> tuple[Path, dict[str, tuple[Path, str]]]:
    d = tmp_path_factory.mktemp("malicious_torchscript")
    return d, _build_malicious(d, d)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "red.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path)
    return path


def _markers(d: Path) -> list[Path]:
    return sorted(d.rglob(f"*{MARKER}*"))


# -- payloads are real ------------------------------------------------------------------------------------
def test_payloads_run_under_plain_torch_jit_load(tmp_path_factory):
    """Plain torch.jit.load (then one forward) runs every payload: the files the gate refuses are real."""
    d = tmp_path_factory.mktemp("verify")
    files = _build_malicious(d, d)
    # one subprocess (importing torch is the slow part): load each file, report whether a marker appeared
    code = (
        "import pathlib, sys, torch, torchvision\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "for p in sys.argv[2:]:\n"
        f"    for m in d.glob('*{MARKER}*'):\n"
        "        m.unlink()\n"
        "    torch.jit.load(p)(torch.zeros(1, 3, 8, 8))\n"
        f"    print(p, any(d.glob('*{MARKER}*')))\n"
    )
    paths = [str(path) for path, _ in files.values()]
    proc = subprocess.run([sys.executable, "-c", code, str(d), *paths], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]
    ran = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    assert ran == dict.fromkeys(paths, "True"), ran
    for m in _markers(d):
        m.unlink()


# -- scan --------------------------------------------------------------------------------------------------
def test_malicious_torchscript_is_dangerous_and_names_the_op(malicious):
    d, files = malicious
    for kind, (path, op) in files.items():
        report = scan(path)
        assert report.verdict == "dangerous", kind
        code_findings = [f for f in report.findings if f.rule == "torchscript-op"]
        assert any(f.name == op for f in code_findings), (kind, report.findings)
        assert all(f.severity == "dangerous" and f.module == "" and f.stream.lower().endswith(".py")
                   for f in code_findings)
        assert report.exit_code == 2
    # what runs at load is marked, with the ops it calls
    code = scan(files["setstate-from_file"][0]).code
    (load_time,) = [k for k in code if k.endswith("__setstate__ (runs at load)")]
    assert "aten::from_file" in code[load_time]
    assert not _markers(d)


def test_benign_torchscript_is_safe_with_its_code_listed(tmp_path):
    scripted = torchscript_pt(tmp_path)
    traced = tmp_path / "traced.pt"
    torch.jit.trace(tiny_model().eval(), torch.randn(1, 3, 8, 8)).save(str(traced))
    for path, conv in ((scripted, "aten::conv2d"), (traced, "aten::_convolution")):
        report = scan(path)
        assert report.verdict == "safe" and not report.findings, report.findings
        ops = {op for called in report.code.values() for op in called}
        assert conv in ops and "aten::batch_norm" in ops
        assert any(conv in n for n in report.to_dict()["notes"])  # the JSON report says what the code calls


class _Rich(nn.Module):
    """Ops beyond conv/linear: an LSTM, a profiler range (a torch C++ class), torchvision's nms, printing."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.profiler.record_function("block"):
            y, _ = self.lstm(x)
        keep = torchvision.ops.nms(torch.rand(3, 4) * 10, torch.rand(3), 0.5)
        if y.sum() > 1e9:
            print("large", keep.numel())
        return y


def test_real_models_beyond_conv_and_linear_stay_safe(tmp_path):
    files = [_save_scripted(_Rich(), tmp_path / "rich.pt", None)]
    quantized = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), {nn.Linear}, dtype=torch.qint8
    )
    files.append(_save_scripted(quantized, tmp_path / "quantized.pt", None))
    squeeze = torchvision.models.squeezenet1_1(weights=None, num_classes=3).eval()
    files.append(_save_scripted(squeeze, tmp_path / "squeezenet.pt", None))
    frozen = torch.jit.freeze(torch.jit.script(tiny_model().eval()))
    frozen.save(str(tmp_path / "frozen.pt"))
    files.append(tmp_path / "frozen.pt")
    for path in files:
        report = scan(path)
        assert report.verdict == "safe", (path.name, report.findings)
    ops = {op for called in scan(files[0]).code.values() for op in called}
    assert {"torchvision::nms", "aten::lstm", "builtins.print"} <= ops


@pytest.mark.parametrize(
    "old, new, rule, name",
    [
        # custom-registered and networking namespaces
        ("torch.save(x, p)", "ops.myns.evil(x)", "torchscript-op", "myns::evil"),
        ("torch.save(x, p)", "ops.c10d.barrier(x)", "torchscript-op", "c10d::barrier"),
        ("torch.save(x, p)", "ops.prim.PythonOp(x)", "torchscript-op", "prim::PythonOp"),
        ("torch.save(x, p)", "m = ops.myns\n    m.evil(x)", "torchscript-op", "ops.myns"),
        ("torch.save(x, p)", "c = __torch__.torch.classes.myns.Evil(p)", "torchscript-op",
         "__torch__.torch.classes.myns.Evil"),
        ("torch.save(x, p)", "getattr(x, \"from_file\")(p)", "torchscript-op", "aten::from_file"),
        ("torch.save(x, p)", "m = __torch__.torch.classes\n    c = m.myns.Evil(p)", "torchscript-op",
         "__torch__.torch.classes"),
        # source torch.jit.save never writes: Python and TorchScript could read it differently
        ("torch.save(x, p)", "pass  # type: () -> None", "torchscript-unparsed", None),
        ("torch.save(x, p)", '_s = """a"\n    ops.myns.evil(x)\n    "b"""', "torchscript-unparsed", None),
        ("torch.save(x, p)", "_s = r'x'", "torchscript-unparsed", None),
        ("torch.save(x, p)", "_s = '\u00e9'", "torchscript-unparsed", None),
        ("torch.save(x, p)", "pass\r    ops.myns.evil(x)", "torchscript-unparsed", None),
        ("torch.save(x, p)", "torch.save(x, p", "torchscript-unparsed", None),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_code_the_scan_refuses(malicious, tmp_path, old, new, rule, name):
    d, files = malicious
    path = _edit_code(files["forward-save"][0], tmp_path / "edited.pt", old, new)
    report = scan(path)
    assert report.verdict == "dangerous"
    hits = [f for f in report.findings if f.rule == rule and (name is None or f.name == name)]
    assert hits, report.findings
    assert not _markers(d)


def test_every_registered_operator_taking_a_path_is_refused():
    """Drift check against the installed torch: an operator with a file/path argument, in any namespace,
    is refused; a new one in a torch upgrade fails here instead of passing the scan."""
    pathlike = re.compile(r"file|path|url|dir(?!ection)", re.I)
    checked = 0
    for schema in torch._C._jit_get_all_schemas():
        if any("str" in str(a.type) and pathlike.search(a.name) for a in schema.arguments):
            checked += 1
            assert classify_op(schema.name) is not None, schema.name
    assert checked >= 3  # aten::save, aten::from_file, image::read_file/write_file
    for op in ("aten::conv2d", "aten::linear", "prim::RaiseException", "quantized::linear_dynamic",
               "torchvision::nms", "profiler::_record_function_exit", "aten::format"):
        assert classify_op(op) is None, op


# -- the gate: every command refuses, --trust lets through --------------------------------------------------
def test_every_command_refuses_malicious_torchscript(malicious, image, tmp_path, cli):
    from torchkeep.training import TrainConfig, train

    d, files = malicious
    benign = torchscript_pt(tmp_path)
    for kind, (path, op) in files.items():
        with pytest.raises(UnsafeFileError, match=rf"{re.escape(path.name)}: refused: the file can execute code"
                                                  rf".*{re.escape(op)}"):
            torchkeep.predict(path, image, device="cpu")
        for verb, args, kwargs in (
            (torchkeep.load, (path,), {"device": "cpu"}),
            (torchkeep.export, (path, "onnx", tmp_path / "out.onnx"), {}),
            (torchkeep.evaluate, (path, "digits"), {}),
            (torchkeep.diff, (path, benign), {}),
            (torchkeep.load_state_dict, (path,), {}),
            (torchkeep.load_state_dict, (path,), {"trust": True}),  # dangerous: refused whatever trust says
        ):
            with pytest.raises(UnsafeFileError, match=re.escape(op)):
                verb(*args, **kwargs)
        run_dir = tmp_path / f"run-{kind}"
        run_dir.mkdir()
        (run_dir / "checkpoint.pt").write_bytes(path.read_bytes())
        with pytest.raises(UnsafeFileError, match=r"checkpoint\.pt: refused"):
            train(TrainConfig(resume=run_dir, progress=False))
        assert not _markers(d), kind
    path = files["setstate-save"][0]
    for args in (
        ("predict", path, image),
        ("eval", path, "--data", "digits"),
        ("diff", path, benign),
        ("export", path, "--format", "onnx", "-o", tmp_path / "x.onnx"),
        ("train", "--resume", tmp_path / "run-setstate-save"),
    ):
        code, _, err = cli(*args)
        assert code == 2 and "refused" in err and "aten::save" in err, (args, err)
        if args[0] == "predict":  # code would run: --trust is the way past (not for weights-only readers)
            assert "Fix: if you trust the file's source, pass --trust" in err
    code, out, _ = cli("scan", path, "--json")
    assert code == 2 and "torch.jit.load runs __torch__." in out and "__setstate__: aten::save" in out
    assert not _markers(d)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "x.onnx").exists()


def test_trust_lets_the_file_through(tmp_path_factory, image, cli):
    """--trust is the only way past the gate: the payload then runs (here: writes its marker)."""
    d = tmp_path_factory.mktemp("trusted")
    path = _save_scripted(ForwardSaves(str(d / f"{MARKER}_trusted")), d / "trusted.pt")
    (pred,) = torchkeep.predict(path, image, device="cpu", trust=True)
    assert pred.ok and _markers(d)
    for m in _markers(d):
        m.unlink()
    code, _, err = cli("predict", path, image, "--trust")
    assert code == 0, err
    assert _markers(d)
    for m in _markers(d):
        m.unlink()


def test_scan_comes_before_the_spec_check(malicious, tmp_path, image):
    """predict on a TorchScript file: the scan first (a payload in __setstate__ runs inside torch.jit.load),
    then the spec, then loading."""
    d, _ = malicious
    no_spec = _save_scripted(SetstateSaves(str(d / f"{MARKER}_nospec")), tmp_path / "nospec.pt", None)
    with pytest.raises(UnsafeFileError, match="aten::save"):
        torchkeep.predict(no_spec, image, device="cpu")
    benign = _save_scripted(MeanColour(), tmp_path / "benign.pt", None)
    with pytest.raises(InputError, match="torchkeep did not write: it does not say how an image becomes its input"):
        torchkeep.predict(benign, image, device="cpu")
    (pred,) = torchkeep.predict(benign, image, device="cpu", spec=SPEC)
    assert pred.ok and pred.label == "r"  # the image is red
    assert not _markers(d)


def test_gate_policies(tmp_path):
    full = tmp_path / "full.pt"
    torch.save(tiny_model(), full)  # a full pickled model: custom-code
    with pytest.raises(UntrustedCodeError, match=r"full.pt: refused: loading it would import and run .*TinyNet"
                                                 r".*--trust") as info:
        check_file(full)
    assert info.value.classes and info.value.exit_code == 1
    assert check_file(full, trust=True).verdict == "custom-code"
    assert check_file(full, runs_code=False).verdict == "custom-code"  # the restricted reader runs nothing
    cut = tmp_path / "cut.pt"
    data = torchscript_pt(tmp_path).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="refused: the scan could not read the whole file"):
        check_file(cut)
    assert check_file(cut, runs_code=False).verdict == "error"  # the reader then says what is wrong


# -- ONNX ---------------------------------------------------------------------------------------------------
def _onnx_model(nodes, *, initializers=(), functions=(), opsets=(("", 17),)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph(nodes, "g", [x], [y], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                             functions=list(functions))


def _write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_custom_domains(tmp_path):
    custom = _write(_onnx_model([helper.make_node("Evil", ["x"], ["y"], domain="my.ops")],
                                opsets=(("", 17), ("my.ops", 1))), tmp_path / "custom.onnx")
    python = _write(_onnx_model([helper.make_node("PythonOp", ["x"], ["y"], domain="com.microsoft")],
                                opsets=(("", 17), ("com.microsoft", 1))), tmp_path / "python.onnx")
    # a node of a custom domain that calls a function defined in the model is fine when the body is
    double = helper.make_function("local.fn", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                  [helper.make_opsetid("", 17)])
    function = _write(_onnx_model([helper.make_node("Double", ["x"], ["y"], domain="local.fn")], functions=[double],
                                  opsets=(("", 17), ("local.fn", 1))), tmp_path / "function.onnx")
    evil_fn = helper.make_function("local.fn", "Double", ["a"], ["b"], [helper.make_node("Evil", ["a"], ["b"],
                                   domain="my.ops")], [helper.make_opsetid("my.ops", 1)])
    hidden = _write(_onnx_model([helper.make_node("Double", ["x"], ["y"], domain="local.fn")], functions=[evil_fn],
                                opsets=(("", 17), ("local.fn", 1))), tmp_path / "hidden.onnx")
    # a custom op inside an If branch
    then = helper.make_graph([helper.make_node("Evil", ["x"], ["t"], domain="my.ops")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    branch = _write(_onnx_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                                initializers=[cond], opsets=(("", 17), ("my.ops", 1))), tmp_path / "branch.onnx")
    contrib = _write(_onnx_model([helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")],
                                 opsets=(("", 17), ("com.microsoft", 1))), tmp_path / "contrib.onnx")
    for path, op in ((custom, "my.ops::Evil"), (python, "com.microsoft::PythonOp"), (hidden, "my.ops::Evil"),
                     (branch, "my.ops::Evil")):
        report = scan(path)
        assert report.verdict == "dangerous", path.name
        assert [f.name for f in report.findings if f.rule == "onnx-custom-op"] == [op], report.findings
    for path in (function, contrib):
        report = scan(path)
        assert report.verdict == "safe", (path.name, report.findings)
    assert "local.fn::Double" in scan(function).code["graph"]


def _external(folder: Path, location: str, name: str) -> Path:
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([2])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return _write(_onnx_model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[t]), folder / name)


def test_onnx_external_data_outside_the_folder(tmp_path, image, cli):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    np.array([1.5, 2.5], dtype=np.float32).tofile(secret)
    np.array([3, 4], dtype=np.float32).tofile(folder / "weights.bin")
    os.symlink(secret, folder / "link.bin")
    bad = {
        "dotdot": ("../secret.bin", "'..'"),
        "absolute": (str(secret), "absolute path"),
        "symlink": ("link.bin", "symlink"),
        "memory": ("*/_ORT_MEM_ADDR_/*", "in-memory tag"),
    }
    for name, (location, why) in bad.items():
        report = scan(_external(folder, location, f"{name}.onnx"))
        assert report.verdict == "dangerous", name
        (finding,) = [f for f in report.findings if f.rule == "onnx-external-data"]
        assert finding.name == location and why in finding.why
    inside = _external(folder, "weights.bin", "inside.onnx")
    assert scan(inside).verdict == "safe"
    with pytest.raises(UnsafeFileError, match=r"dotdot\.onnx: refused.*secret\.bin"):
        torchkeep.load_state_dict(folder / "dotdot.onnx")
    code, _, err = cli("predict", folder / "absolute.onnx", image)
    assert code == 2 and "absolute path" in err


def test_onnx_that_cannot_be_followed_is_dangerous(tmp_path):
    # top level fine (a graph), but a node holds a field of wire type 3 (a protobuf group) that the walker
    # cannot follow: what comes after it is unknown
    node = b"\x22\x03Add" + b"\x0b"
    graph = b"\x0a" + bytes([len(node)]) + node
    path = tmp_path / "odd.onnx"
    path.write_bytes(b"\x08\x08" + b"\x3a" + bytes([len(graph)]) + graph)
    report = scan(path)
    assert report.format == "onnx" and report.verdict == "dangerous"
    assert [f.rule for f in report.findings] == ["onnx-unparsed"]


def test_torchkeep_exports_pass_their_own_scan(tmp_path):
    """What torchkeep export writes (traced TorchScript, dynamo ONNX) is safe: predict loads it without --trust."""
    torch.manual_seed(0)
    model = build("cifar10_cnn", num_classes=3, class_names=["r", "g", "b"])
    src = torchkeep.save(model, tmp_path / "m.safetensors")
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):
        out = torchkeep.export(src, fmt, tmp_path / name, check=False).output
        report = scan(out)
        assert report.verdict == "safe", (fmt, report.findings)
        assert report.code
