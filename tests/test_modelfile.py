"""Self-describing model files: save / load / read_spec, tied weights, fresh-process round trips, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import torchkeep
from torchkeep._modelfile import load, read_spec, save
from torchkeep._spec import METADATA_KEY, ModelSpec
from torchkeep.errors import CompatibilityError, InputError, UntrustedCodeError, UsageError
from torchkeep.models import build


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_round_trip_seed_identical_outputs(tmp_path: Path):
    torch.manual_seed(0)
    m = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8, class_names=list("0123456789"))
    path = save(m, tmp_path / "digits.safetensors")
    assert path == tmp_path / "digits.safetensors"
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta[METADATA_KEY])["arch"] == "cifar10_cnn" and meta["format"] == "pt"

    back = torchkeep.load(path, device="cpu")
    assert not back.training
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(outputs(m, x), back(x))
    spec = back.torchkeep_spec
    assert spec.class_names == list("0123456789") and spec.input_size == (8, 8)
    assert read_spec(path) == spec


def test_round_trip_transfer_learning_model_rebuilds_the_modification(tmp_path: Path):
    m = build("resnet18", num_classes=3, head="append", freeze="backbone")
    torch.nn.init.normal_(m.fc.add_linear.weight)  # "fine-tuned"
    path = save(m, tmp_path / "r18.safetensors")
    back = load(path, device="cpu")
    assert list(back.fc._modules) == ["0", "add_linear"]
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(outputs(m, x), back(x))
    # the frozen backbone stays frozen after reloading (training resumes the same way)
    assert [n for n, p in back.named_parameters() if p.requires_grad] == [
        "fc.add_linear.weight",
        "fc.add_linear.bias",
    ]


def test_round_trip_in_a_fresh_process(tmp_path: Path):
    """The loading process never imported the code that built or trained the model."""
    torch.manual_seed(1)
    m = build("mobilenet_v3_small", num_classes=10, head="append", input_size=64)
    m.train()
    m(torch.rand(4, 3, 64, 64))  # "training": BatchNorm running statistics move away from their init
    x = torch.rand(2, 3, 64, 64)
    save(m, tmp_path / "net.safetensors")
    save_file({"x": x, "y": outputs(m, x)}, tmp_path / "io.safetensors")
    script = textwrap.dedent(
        """
        import sys, torch, torchkeep
        from safetensors.torch import load_file
        model = torchkeep.load(sys.argv[1], device="cpu")
        io = load_file(sys.argv[2])
        with torch.no_grad():
            y = model(io["x"])
        assert not model.training
        assert model.classifier.add_linear.out_features == 10
        assert torch.equal(y, io["y"]), (y - io["y"]).abs().max()
        print("identical")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "net.safetensors"), str(tmp_path / "io.safetensors")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "identical"


def test_read_spec_needs_no_torch(tmp_path: Path):
    save(build("fashion_mlp"), tmp_path / "f.safetensors")
    code = (
        "import sys\n"
        "from torchkeep._modelfile import read_spec\n"
        f"spec = read_spec({str(tmp_path / 'f.safetensors')!r})\n"
        "assert spec.arch == 'fashion_mlp' and spec.in_channels == 1, spec\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tied_weights_are_saved_once_and_re_tied(tmp_path: Path, monkeypatch):
    (tmp_path / "tiedmod.py").write_text(
        "from torch import nn\n"
        "class TiedNet(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.enc = nn.Embedding(6, 4)\n"
        "        self.dec = nn.Linear(4, 6, bias=False)\n"
        "        self.dec.weight = self.enc.weight\n"
        "    def forward(self, idx):\n"
        "        return self.dec(self.enc(idx))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build("tiedmod:TiedNet")
    path = save(m, tmp_path / "tied.safetensors")
    assert set(load_file(path)) == {"enc.weight"}  # one copy on disk
    assert read_spec(path).tied == {"dec.weight": "enc.weight"}
    with pytest.raises(UntrustedCodeError, match=r"names the class 'tiedmod:TiedNet'.*trust=True"):
        load(path, device="cpu")
    back = load(path, device="cpu", trust=True)
    assert back.dec.weight is back.enc.weight
    assert torch.equal(back.enc.weight, m.enc.weight)
    sys.modules.pop("tiedmod", None)


def test_overlapping_views_are_cloned(tmp_path: Path):
    m = build("fashion_mlp")
    shared = torch.arange(12.0)
    m.register_buffer("a", shared[:6])
    m.register_buffer("b", shared[6:])
    spec = m.torchkeep_spec
    path = save(m, tmp_path / "views.safetensors", spec)
    stored = load_file(path)
    assert torch.equal(stored["a"], torch.arange(6.0)) and torch.equal(stored["b"], torch.arange(6.0, 12.0))


def test_compiled_and_data_parallel_models_save_plain_keys(tmp_path: Path):
    m = build("cifar10_cnn")
    save(torch.compile(m), tmp_path / "c.safetensors")  # compiling is lazy: nothing runs here
    save(nn.DataParallel(m), tmp_path / "d.safetensors")
    for name in ("c", "d"):
        assert next(iter(load_file(tmp_path / f"{name}.safetensors"))).startswith("model.0."), name
        load(tmp_path / f"{name}.safetensors", device="cpu")


def test_dtype_and_device(tmp_path: Path):
    path = save(build("fashion_mlp"), tmp_path / "f.safetensors")
    half = load(path, device="cpu", dtype="float16")
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert next(load(path, device="auto").parameters()).device.type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CompatibilityError, match=r"no CUDA GPU.*device='cpu'"):
            load(path, device="cuda")
    with pytest.raises(UsageError, match="unknown dtype"):
        load(path, device="cpu", dtype="int8")


def test_saving_needs_a_spec(tmp_path: Path):
    with pytest.raises(UsageError, match=r"Linear has no model spec.*torchkeep\.models\.build"):
        save(nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with torch.device("meta"):
        empty = build("fashion_mlp")
    with pytest.raises(UsageError, match="on the meta device and hold no data"):
        save(empty, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_bare_state_dict_explains_adapt(tmp_path: Path):
    m = nn.Sequential(nn.Linear(3, 4))  # no known architecture (one `identify` names loads: test_identify.py)
    save_file(m.state_dict(), tmp_path / "weights.safetensors")
    assert read_spec(tmp_path / "weights.safetensors") is None
    with pytest.raises(
        InputError, match=r"weights\.safetensors: holds weights only.*torchkeep adapt .* --arch NAME"
    ):
        load(tmp_path / "weights.safetensors")
    torch.save(m.state_dict(), tmp_path / "model.pth")
    assert read_spec(tmp_path / "model.pth") is None
    with pytest.raises(
        InputError, match=r"model\.pth: is a torch-zip file.*no architecture.*torchkeep adapt"
    ):
        load(tmp_path / "model.pth")


def test_torchscript_and_onnx_are_pointed_elsewhere(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "m.ts"))
    with pytest.raises(InputError, match=r"TorchScript archive.*torch\.jit\.load"):
        load(tmp_path / "m.ts")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"ONNX model.*torchkeep predict"):
        load(tmp_path / "m.onnx")


def test_missing_and_corrupt_files(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "nope.safetensors")
    path = save(build("fashion_mlp"), tmp_path / "f.safetensors")
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 : 8 + n] = b"{" + b"x" * (n - 1)
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="header is not valid JSON"):
        load(tmp_path / "bad.safetensors")


def test_spec_from_a_newer_torchkeep(tmp_path: Path):
    m = build("fashion_mlp")
    data = m.torchkeep_spec.to_dict() | {"spec_version": 99}
    save_file(m.state_dict(), tmp_path / "new.safetensors", metadata={METADATA_KEY: json.dumps(data)})
    with pytest.raises(
        InputError, match=r"new\.safetensors: the model spec has spec_version 99.*upgrade torchkeep"
    ):
        load(tmp_path / "new.safetensors")


def test_weights_that_disagree_with_the_spec(tmp_path: Path):
    m = build("cifar10_cnn", num_classes=10)
    wrong = m.torchkeep_spec.replace(arch_kwargs={"num_classes": 7}, num_classes=7)
    path = save(m, tmp_path / "w.safetensors", spec=wrong)
    with pytest.raises(
        CompatibilityError, match=r"do not fit the architecture.*size mismatch for model\.8\.weight"
    ):
        load(path, device="cpu")
    other = ModelSpec(arch="fashion_mlp")
    path = save(m, tmp_path / "o.safetensors", spec=other)
    with pytest.raises(CompatibilityError, match=r"missing \['linear_relu_stack"):
        load(path, device="cpu")


def test_an_architecture_missing_here_names_the_writing_versions(tmp_path: Path):
    m = build("fashion_mlp")
    spec = m.torchkeep_spec.replace(arch="resnet9000", versions={"torchvision": "9.9.0"})
    save_file(m.state_dict(), tmp_path / "future.safetensors", metadata={METADATA_KEY: spec.to_json()})
    with pytest.raises(
        CompatibilityError, match=r"'resnet9000' is not available here.*torchvision 9\.9\.0.*pip install"
    ):
        load(tmp_path / "future.safetensors", device="cpu")


def test_spec_asking_for_a_huge_layer_is_refused_without_building_it(tmp_path: Path):
    # A file's spec says num_classes=2**40 but its weights hold 10 classes: the meta build finds the
    # mismatch; building for real would try to allocate petabytes.
    m = build("fashion_mlp", num_classes=10, input_size=8)
    path = save(m, tmp_path / "m.safetensors", spec=m.torchkeep_spec)
    huge = m.torchkeep_spec.replace(arch_kwargs={**m.torchkeep_spec.arch_kwargs, "num_classes": 2**40})
    save_file(load_file(path), tmp_path / "huge.safetensors", metadata={METADATA_KEY: huge.to_json()})
    with pytest.raises(CompatibilityError, match=r"size mismatch for linear_relu_stack\.4\.weight"):
        load(tmp_path / "huge.safetensors", device="cpu")


def test_round_trip_of_a_model_with_versioned_modules(tmp_path: Path):
    # MNASNet's loader needs module versions, which a safetensors file does not store
    m = build("mnasnet0_5", num_classes=3).eval()
    back = load(save(m, tmp_path / "mnas.safetensors"), device="cpu")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(outputs(m, x), outputs(back, x))


def test_save_with_a_spec_json_cannot_store_is_a_usage_error(tmp_path: Path):
    m = build("fashion_mlp", num_classes=3, input_size=8)
    spec = m.torchkeep_spec.replace(extra={"dataset_root": tmp_path})  # a Path, not a string
    with pytest.raises(UsageError, match="value JSON cannot store"):
        save(m, tmp_path / "m.safetensors", spec=spec)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_spec_metadata_that_is_not_a_string_is_an_input_error(tmp_path: Path):
    # safetensors metadata values are strings; a crafted header may hold anything
    for value in (5, {"arch": "resnet18"}, ["x"]):
        header = json.dumps({"__metadata__": {METADATA_KEY: value}}).encode()
        path = tmp_path / "crafted.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(InputError, match=r"crafted\.safetensors: invalid model spec: the torchkeep\.spec metadata"):
            read_spec(path)


def test_load_of_a_full_pickled_model_names_its_class(tmp_path):
    # torch.save(model) is named as such, with the command that turns it into a model file (never "a state_dict")
    import torch

    from torchkeep.errors import InputError

    path = tmp_path / "full.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), path)
    with pytest.raises(InputError, match=r"full pickled model of class torch\.nn\.modules\.container\.Sequential") as info:
        torchkeep.load(path)
    assert "state_dict" not in str(info.value) and "torchkeep adapt" in str(info.value)
