"""Issue 10, item 5: TorchScript and ONNX files that torchkeep did not write, and full pickled models.

predict and export say exactly which fact such a file lacks and take it from flags (--classes, --input-size,
--mean/--std, --channels) instead of sending the user from one command to the other; a full pickled model is
named with its class and the command that turns it into a model file. The files are real: torch.jit.script /
torch.jit.trace / torch.onnx.export / torch.save of a small CNN, with no torchkeep metadata.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

import torchkeep
from torchkeep._modelpath import InputContract
from torchkeep.errors import InputError, UsageError

torch.set_num_threads(1)

CONTRACT = ["--input-size", "32", "--mean", "0.5", "--std", "0.25"]


class SmallNet(nn.Module):
    """A model defined by some other project: three classes, RGB 32x32 input normalised with 0.5 / 0.25."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().eval()


@pytest.fixture(scope="module")
def files(net, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("foreign")
    out = {"scripted": d / "scripted.pt", "traced": d / "traced.pt", "onnx": d / "plain.onnx", "full": d / "full.pt"}
    torch.jit.script(net).save(str(out["scripted"]))
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(out["traced"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(out["onnx"]), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    plain = SmallNet()  # a module torch.jit.script has not touched (scripting adds attributes to its instances)
    plain.load_state_dict(net.state_dict())
    torch.save(plain, out["full"])  # a full pickled model of class test_foreign_exports.SmallNet
    china = Image.fromarray(load_sample_images().images[0])
    out["image"] = d / "china.png"
    china.resize((48, 32)).save(out["image"])
    out["labels"] = d / "labels.txt"
    out["labels"].write_text("cat\ndog\nbird\n")
    return out


def _expected(net: nn.Module, image: Path) -> torch.Tensor:
    """The probabilities the net gives the image fed as its authors feed it (resize 32x32, (x - 0.5) / 0.25)."""
    x = np.asarray(Image.open(image).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    t = (torch.from_numpy(x / 255.0).permute(2, 0, 1) - 0.5) / 0.25
    with torch.no_grad():
        return torch.softmax(net(t[None]), dim=1)[0]


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_foreign_torchscript_names_what_is_missing(files, kind, cli):
    code, _, err = cli("predict", files[kind], files["image"])
    assert code == 3, err
    assert "is a TorchScript file that torchkeep did not write" in err
    assert "Missing: the input size (--input-size N" in err and "the normalisation (--mean/--std" in err
    assert "3 input channels" in err  # read from the first convolution's weight, not asked for
    assert "torchkeep export" not in err and "spec=ModelSpec" not in err  # no sending the user elsewhere
    code, _, err = cli("predict", files[kind], files["image"], "--input-size", "32")
    assert code == 3 and "--input-size" not in err.split("Missing:")[1] and "--mean" in err


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_foreign_torchscript_predicts_with_flags(net, files, kind, cli):
    code, out, err = cli("predict", files[kind], files["image"], *CONTRACT, "--classes", files["labels"],
                         "-k", "3", "--json")
    assert code == 0, err
    p = json.loads(out)[0]
    want = _expected(net, files["image"])
    assert p["index"] == int(want.argmax()) and p["label"] == ["cat", "dog", "bird"][p["index"]]
    assert p["probability"] == pytest.approx(float(want.max()), abs=1e-5)
    # the library takes the same facts as an InputContract
    preds = torchkeep.predict(files[kind], [files["image"]], contract=InputContract(
        input_size=(32, 32), mean=[0.5], std=[0.25], class_names=["a", "b", "c"]))
    assert preds[0].label == "abc"[p["index"]]


def test_foreign_onnx_takes_its_input_size_from_the_file(net, files, cli):
    code, _, err = cli("predict", files["onnx"], files["image"])
    assert code == 3 and "is an ONNX model that torchkeep did not write" in err
    missing = err.split("Missing:")[1]
    assert "--mean/--std" in missing and "--input-size" not in missing
    assert "input size 32x32" in err and "3 outputs" in err
    code, out, err = cli("predict", files["onnx"], files["image"], "--mean", "0.5", "--std", "0.25", "--json")
    assert code == 0, err
    p = json.loads(out)[0]
    assert p["label"] == f"class {p['index']}"
    assert p["probability"] == pytest.approx(float(_expected(net, files["image"]).max()), abs=1e-5)
    # class names are checked against the outputs the file declares, before anything runs
    code, _, err = cli("predict", files["onnx"], files["image"], "--mean", "0.5", "--std", "0.25", "--classes", "a,b")
    assert code == 64 and "2 class names for a model with 3 outputs" in err
    # what the file fixes cannot be overridden into something it cannot run
    code, _, err = cli("predict", files["onnx"], files["image"], "--mean", "0.5", "--std", "0.25",
                       "--input-size", "64")
    assert code == 64 and "input size is fixed at 32x32; 64x64 cannot run" in err


def test_export_embeds_the_contract_so_predict_runs_the_file_alone(net, files, tmp_path, cli):
    want = _expected(net, files["image"])
    for src, fmt in [("scripted", "torchscript"), ("traced", "onnx"), ("onnx", "onnx")]:
        out = tmp_path / f"{src}-{fmt}.{'pt' if fmt == 'torchscript' else 'onnx'}"
        code, stdout, err = cli("export", files[src], "--format", fmt, "-o", out, *CONTRACT,
                                "--classes", "cat,dog,bird", "--json")
        assert code == 0, err
        result = json.loads(stdout)
        assert result["parity"]["passed"] and result["parity"]["reference"] == "source file"
        assert any("was not written by torchkeep" in n for n in result["notes"])
        code, stdout, err = cli("predict", out, files["image"], "--json")  # no flags: the file carries them
        assert code == 0, err
        p = json.loads(stdout)[0]
        assert p["label"] == ["cat", "dog", "bird"][int(want.argmax())]
        assert p["probability"] == pytest.approx(float(want.max()), abs=1e-5)


def test_export_without_the_contract_names_it_and_refuses_what_cannot_be(files, tmp_path, cli):
    code, _, err = cli("export", files["traced"], "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert code == 3 and "Missing: the input size" in err and "torchkeep predict" not in err
    code, _, err = cli("export", files["onnx"], "--format", "torchscript", "-o", tmp_path / "x.pt", *CONTRACT)
    assert code == 64 and "an ONNX model cannot become TorchScript" in err and "--format onnx" in err
    code, _, err = cli("export", files["scripted"], "--format", "safetensors", "-o", tmp_path / "x.safetensors",
                       *CONTRACT)
    assert code == 64 and f"torchkeep adapt {files['scripted']} --arch NAME" in err
    assert not list(tmp_path.iterdir())


def test_full_pickled_model_is_named_with_its_class(files, tmp_path, cli):
    for args in (["predict", files["full"], files["image"]],
                 ["export", files["full"], "--format", "onnx", "-o", tmp_path / "x.onnx"],
                 ["eval", files["full"], "--data", "digits"]):
        code, _, err = cli(*args)
        assert code == 3, err
        assert "is a full pickled model of class test_foreign_exports.SmallNet" in err
        assert f"torchkeep adapt {files['full']} --arch NAME -o model.safetensors" in err
        assert "state_dict or checkpoint" not in err
    with pytest.raises(InputError, match="full pickled model of class"):
        torchkeep.predict(files["full"], [files["image"]])


def test_contract_overrides_a_model_files_spec(files, tmp_path):
    model = torchkeep.models.build("cifar10_cnn")
    path = torchkeep.save(model, tmp_path / "m.safetensors")
    names = [f"n{i}" for i in range(10)]
    preds = torchkeep.predict(path, [files["image"]], contract=InputContract(class_names=names))
    assert preds[0].label in names
    with pytest.raises(UsageError, match="3 class names for a model with 10 outputs"):
        torchkeep.predict(path, [files["image"]], contract=InputContract(class_names=["a", "b", "c"]))
