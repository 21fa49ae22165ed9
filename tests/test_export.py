"""torchkeep export: real exports of real models, loaded back, parity-checked, predicted on."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

import torchkeep
from torchkeep._export import ParityError
from torchkeep._spec import ModelSpec, Preprocessing
from torchkeep.errors import UsageError
from torchkeep.models import build

CLASSES = [f"digit {i}" for i in range(10)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("photos")
    out = []
    for name, arr in zip(("china", "flower"), load_sample_images().images):
        img = Image.fromarray(arr)
        out.append(d / f"{name}.jpg")
        img.save(out[-1])
        out.append(d / f"{name}_gray.png")
        img.crop((100, 100, 300, 260)).convert("L").save(out[-1])
    return out


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build("cifar10_cnn", num_classes=10, class_names=CLASSES)
    return Path(torchkeep.save(model, tmp_path_factory.mktemp("m") / "cnn.safetensors"))


def _top1(path, images, **kw) -> list[int | None]:
    return [p.index for p in torchkeep.predict(path, images, device="cpu", **kw)]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in torch 2.9+
def test_torchscript_carries_spec_and_passes_parity(cnn_file, images, tmp_path):
    out = tmp_path / "cnn.ts.pt"
    result = torchkeep.export(cnn_file, "torchscript", out)
    assert result.output == out and out.stat().st_size == result.size > 0
    assert result.parity is not None and result.parity.passed
    assert result.parity.max_abs_diff < 1e-4
    assert result.parity.top1_agree == result.parity.samples == 8
    assert result.parity.batch_sizes == [8, 1]
    extra = {"torchkeep_spec.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    spec = ModelSpec.from_json(extra["torchkeep_spec.json"])
    assert spec.class_names == CLASSES and spec.input_size == (32, 32)
    assert torchkeep.detect(out).format == "torchscript"
    assert _top1(out, images) == _top1(cnn_file, images)


def test_onnx_static_and_dynamic_batch(cnn_file, images, tmp_path):
    static = torchkeep.export(cnn_file, "onnx", tmp_path / "static.onnx")
    dynamic = torchkeep.export(cnn_file, "onnx", tmp_path / "dynamic.onnx", dynamic_batch=True)
    for result in (static, dynamic):
        assert result.parity.passed and result.parity.max_abs_diff < 1e-4
        assert "torch.onnx.export" in result.exporter
        proto = onnx.load(str(result.output))
        props = {p.key: p.value for p in proto.metadata_props}
        assert ModelSpec.from_json(props["torchkeep.spec"]).class_names == CLASSES
    dims = lambda r: onnx.load(str(r.output)).graph.input[0].type.tensor_type.shape.dim  # noqa: E731
    assert dims(static)[0].dim_value == 1
    assert dims(dynamic)[0].dim_param != ""
    assert dynamic.parity.batch_sizes == [8, 1]
    expected = _top1(cnn_file, images)
    assert _top1(static.output, images, batch_size=3) == expected  # a static export is fed one at a time
    assert _top1(dynamic.output, images) == expected


def test_exports_predict_without_the_model_registry(cnn_file, images, tmp_path):
    ts = torchkeep.export(cnn_file, "torchscript", tmp_path / "m.pt").output
    ox = torchkeep.export(cnn_file, "onnx", tmp_path / "m.onnx", dynamic_batch=True).output
    code = (
        "import sys, json; sys.modules['torchkeep.models'] = None; import torchkeep; "  # registry unimportable
        f"print(json.dumps([[p.label for p in torchkeep.predict(f, {[str(i) for i in images]!r}, device='cpu')] "
        f"for f in ({str(ts)!r}, {str(ox)!r})]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ts_labels, onnx_labels = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [p.label for p in torchkeep.predict(cnn_file, images, device="cpu")]
    assert ts_labels == onnx_labels == expected


def test_safetensors_and_state_dict(cnn_file, images, tmp_path):
    st = torchkeep.export(cnn_file, "safetensors", tmp_path / "copy.safetensors")
    assert st.parity.max_abs_diff == 0 and st.spec_embedded
    assert torchkeep.diff(cnn_file, st.output).identical
    sd = torchkeep.export(cnn_file, "state-dict", tmp_path / "model.pth")
    assert sd.parity.max_abs_diff == 0 and not sd.spec_embedded
    assert any("carries no spec" in n for n in sd.notes)
    state = torch.load(sd.output, weights_only=True)  # the FashionMNIST-tutorial way to read it back
    fresh = build("cifar10_cnn", num_classes=10)
    fresh.load_state_dict(state)
    assert torchkeep.diff(fresh, cnn_file).identical


def test_half_precision_exports(cnn_file, images, tmp_path):
    for fmt, name in (("onnx", "half.onnx"), ("torchscript", "half.pt"), ("safetensors", "half.safetensors")):
        result = torchkeep.export(cnn_file, fmt, tmp_path / name, half=True)
        assert result.dtype == "float16" and result.parity.passed, fmt
        assert 0 < result.parity.max_abs_diff <= result.parity.tolerance
        assert any("float16" in n for n in result.notes)
    proto = onnx.load(str(tmp_path / "half.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert _top1(tmp_path / "half.onnx", images) == _top1(cnn_file, images)
    loaded = torchkeep.load(tmp_path / "half.safetensors", device="cpu")
    assert next(loaded.parameters()).dtype == torch.float16


class Branchy(nn.Module):
    """Python control flow on the data: a trace records one branch, eager takes both."""

    def __init__(self) -> None:
        super().__init__()
        self.bright = nn.Linear(3 * 16 * 16, 3)
        self.dark = nn.Linear(3 * 16 * 16, 3)
        self.threshold = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if float(flat.mean()) > self.threshold:
            return self.bright(flat)
        return self.dark(flat)


def test_parity_failure_exits_4_and_writes_nothing(images, tmp_path, cli):
    from torchkeep._export import sample_inputs

    spec = ModelSpec(
        arch="tests:Branchy", num_classes=3, input_size=(16, 16), preprocessing=Preprocessing(resize=[16, 16])
    )
    torch.manual_seed(0)
    model = Branchy()
    x, _ = sample_inputs(spec)
    means = sorted(float(m) for m in x.flatten(1).mean(1))
    model.threshold = (means[0] + means[-1]) / 2  # some samples on each side
    out = tmp_path / "branchy.onnx"
    with pytest.raises(ParityError, match=r"parity check failed: max \|Δlogit\|") as info:
        torchkeep.export(model, "onnx", out, spec=spec)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    report = info.value.result.parity
    assert not report.passed and report.max_abs_diff > report.tolerance
    assert info.value.exit_code == 4
    assert any("tracer warned" in n for n in info.value.result.notes)
    assert "torch.where" in str(info.value)

    # the CLI: a torchkeep model file whose half export is held to a tolerance fp16 cannot meet
    torch.manual_seed(0)
    path = torchkeep.save(build("cifar10_cnn", num_classes=10), tmp_path / "cnn.safetensors")
    code, _, err = cli(
        "export", path, "--format", "onnx", "--half", "--tolerance", "1e-9", "-o", tmp_path / "x.onnx"
    )
    assert code == 4
    assert "parity check FAILED" in err and "nothing was written" in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_and_json(cnn_file, images, tmp_path, cli):
    out = tmp_path / "m.onnx"
    code, text, err = cli(
        "export", cnn_file, "--format", "onnx", "--dynamic-batch", "-o", out, "--samples", images[0].parent
    )
    assert code == 0, err
    assert "parity check passed" in text and "4 images from" in text and "top-1 agreement 4/4" in text
    code, text, err = cli("export", cnn_file, "--format", "torchscript", "-o", tmp_path / "m.pt", "--json")
    assert code == 0, err
    data = json.loads(text)
    assert data["format"] == "torchscript" and data["spec_embedded"] is True
    assert data["parity"]["passed"] is True and data["parity"]["samples"] == 8
    code, text, err = cli("predict", out, images[0], "--json")
    assert code == 0 and json.loads(text)[0]["label"] in CLASSES


def test_bad_export_requests(cnn_file, images, tmp_path, cli):
    with pytest.raises(UsageError, match="unknown export format"):
        torchkeep.export(cnn_file, "tflite", tmp_path / "x")
    with pytest.raises(UsageError, match="no torchkeep spec"):
        torchkeep.export(nn.Linear(2, 2), "onnx", tmp_path / "x.onnx")
    weights = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), weights)
    code, _, err = cli("export", weights, "--format", "onnx", "-o", tmp_path / "y.onnx")
    assert code == 3 and "w.pt" in err and "Traceback" not in err
    ts = torchkeep.export(cnn_file, "torchscript", tmp_path / "m.pt").output
    with pytest.raises(UsageError, match="runs on the torchscript backend"):
        torchkeep.predict(ts, images[0], backend="onnxruntime")
    assert zipfile.is_zipfile(ts)


def test_aspect_keeping_spec_exports(tmp_path):
    """resize=[N] without a crop keeps aspect ratios: parity runs on the inputs of one size."""
    spec = ModelSpec(
        arch="tests:Pooled", num_classes=4, input_size=(40, 40), preprocessing=Preprocessing(resize=[40])
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    result = torchkeep.export(model, "torchscript", tmp_path / "pooled.pt", spec=spec)
    assert result.parity.passed and 2 <= result.parity.samples < 8


def test_onnx_opset_asked_for_is_the_opset_written(cnn_file, tmp_path):
    """--opset 13 (an older runtime's limit) must give opset 13, not the exporter's own silently."""
    out = tmp_path / "m13.onnx"
    result = torchkeep.export(cnn_file, "onnx", out, opset=13)
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert "opset 13" in result.exporter and result.parity is not None and result.parity.passed
