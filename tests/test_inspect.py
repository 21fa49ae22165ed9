import json
import subprocess
import sys

import pytest
import torch

from _files import (
    checkpoint_pt,
    cuda_saved_pt,
    full_model_pt,
    legacy_pt,
    npz_file,
    onnx_file,
    pt2_file,
    safetensors_file,
    state_dict_pt,
    tiny_model,
    torchscript_pt,
)
from torchkeep import inspect

SD_NAMES = list(tiny_model().state_dict())


def test_state_dict(tmp_path):
    r = inspect(state_dict_pt(tmp_path))
    assert r.format == "torch-zip" and r.kind == "state_dict"
    assert [t.name for t in r.tensors] == SD_NAMES
    conv = r.tensors[0]
    assert (conv.shape, conv.dtype, conv.numel, conv.nbytes) == ([4, 3, 3, 3], "float32", 108, 432)
    assert r.totals.tensors == 9
    assert r.totals.roles == "inferred"
    assert r.totals.parameter_elements == 108 + 4 + 4 + 4 + 8 + 2
    assert r.totals.buffers == 3
    assert r.totals.by_dtype["int64"].tensors == 1
    assert any("weights only" in n for n in r.notes)


def test_module_prefix(tmp_path):
    r = inspect(state_dict_pt(tmp_path, prefix="module."))
    assert r.prefixes == ["module."]
    assert any("DataParallel" in n for n in r.notes)
    r2 = inspect(state_dict_pt(tmp_path, name="c.pt", prefix="module._orig_mod."))
    assert r2.prefixes == ["module._orig_mod."]


def test_checkpoint(tmp_path):
    r = inspect(checkpoint_pt(tmp_path))
    assert r.kind == "checkpoint"
    assert r.weights_location == "model_state_dict"
    roles = {e["key"]: e["role"] for e in r.checkpoint}
    assert roles["model_state_dict"] == "model weights"
    assert roles["optimizer_state_dict"] == "optimizer state"
    assert roles["epoch"] == "scalar"
    assert roles["args"] == "object argparse.Namespace"
    assert r.scalars == {"epoch": 5, "best_acc": 0.875}
    assert "argparse.Namespace" in r.classes
    assert [t.name for t in r.tensors] == SD_NAMES


def test_full_pickled_model_without_importing_it(tmp_path):
    r = inspect(full_model_pt(tmp_path))
    assert r.kind == "full_model"
    assert r.model_class == "_files.TinyNet"
    assert [t.name for t in r.tensors] == SD_NAMES  # the non-persistent buffer is left out
    assert r.totals.roles == "known"
    assert r.totals.parameters == 6 and r.totals.buffers == 3
    assert any("full pickled model" in n for n in r.notes)


def test_legacy(tmp_path):
    r = inspect(legacy_pt(tmp_path))
    assert r.format == "torch-legacy" and r.kind == "state_dict"
    assert [t.name for t in r.tensors] == SD_NAMES


def test_dtypes_tied_and_views(tmp_path):
    w = torch.randn(4, 6)
    sd = {
        "half": torch.randn(3).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "emb.weight": w,
        "head.weight": w,  # tied
        "t": w.t(),  # non-contiguous view of the same storage
        "row": w[1],
    }
    torch.save(sd, tmp_path / "m.pt")
    r = inspect(tmp_path / "m.pt")
    by = {t.name: t for t in r.tensors}
    assert by["half"].dtype == "float16" and by["half"].nbytes == 6
    assert by["bf16"].dtype == "bfloat16"
    assert by["t"].shape == [6, 4] and by["t"].contiguous is False
    assert by["emb.weight"].contiguous is True
    assert r.shared == [["emb.weight", "head.weight", "t", "row"]]


def test_torchscript(tmp_path):
    r = inspect(torchscript_pt(tmp_path))
    assert r.kind == "torchscript"
    assert "forward" in r.details["torchscript"]["methods"]["TinyNet"]
    assert {"conv.weight", "fc.bias", "bn.running_var"} <= {t.name for t in r.tensors}


def test_onnx(tmp_path):
    r = inspect(onnx_file(tmp_path))
    onnx = r.details["onnx"]
    assert r.kind == "onnx"
    assert onnx["opsets"]["ai.onnx"] >= 9
    assert onnx["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert onnx["outputs"][0]["name"] == "logits"
    assert onnx["initializers"] == len(r.tensors) > 0
    assert "Conv" in onnx["op_counts"]


def test_safetensors_metadata_and_spec(tmp_path):
    spec = {"spec_version": 1, "arch": "tiny", "num_classes": 2, "class_names": ["cat", "dog"]}
    r = inspect(safetensors_file(tmp_path, metadata={"torchkeep.spec": json.dumps(spec), "author": "me"}))
    assert r.kind == "model_file"
    assert r.spec == spec
    assert r.metadata == {"author": "me"}
    assert sorted(t.name for t in r.tensors) == sorted(SD_NAMES)


def test_npz_and_pt2(tmp_path):
    r = inspect(npz_file(tmp_path))
    assert r.kind == "tensors" and len(r.tensors) == 9
    e = inspect(pt2_file(tmp_path))
    assert e.kind == "exported_program"
    assert e.details["exported_program"]["nodes"] > 0
    assert e.totals.roles == "known" and e.totals.parameters == 6


def test_gpu_saved_file_reports_device(tmp_path):
    r = inspect(cuda_saved_pt(tmp_path))
    assert r.devices == ["cuda:0"]
    assert any("cuda:0" in n for n in r.notes)


def test_tree_and_filter(tmp_path):
    r = inspect(state_dict_pt(tmp_path))
    tree = r.tree()
    assert tree[0]["path"] == "" and tree[0]["tensors"] == 9
    bn = next(n for n in tree if n["path"] == "bn")
    assert bn["own"] == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert bn["parameters"] == 8
    f = r.filtered(r"^bn\.")
    assert len(f.tensors) == 5 and f.totals.tensors == 5


def test_cli_human_json_tree(tmp_path, cli):
    p = checkpoint_pt(tmp_path)
    code, out, _ = cli("inspect", p)
    assert code == 0
    assert "checkpoint" in out and "model_state_dict" in out and "conv.weight" in out
    code, out, _ = cli("inspect", p, "--json")
    data = json.loads(out)
    assert data["kind"] == "checkpoint" and data["schema_version"] == 1
    assert data["tensors"][0] == {"name": "conv.weight", "shape": [4, 3, 3, 3], "dtype": "float32", "numel": 108,
                                  "nbytes": 432, "role": "parameter", "storage": "0", "device": "cpu",
                                  "contiguous": True}
    code, out, _ = cli("inspect", p, "--tree")
    assert code == 0 and "bn" in out and "running_mean" in out
    code, out, _ = cli("inspect", p, "--json", "--tree", "--filter", "fc")
    data = json.loads(out)
    assert [t["name"] for t in data["tensors"]] == ["fc.weight", "fc.bias"]
    assert data["tree"][0]["tensors"] == 2


def test_cli_errors_are_one_line(tmp_path, cli):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00\x01\x02" * 50)
    code, _, err = cli("inspect", bad)
    assert code == 3
    assert err.count("\n") == 1 and "garbage.pt" in err and "Traceback" not in err
    code, _, err = cli("inspect", tmp_path / "missing.pt")
    assert code == 3 and "no such file" in err
    code, _, err = cli("inspect", state_dict_pt(tmp_path), "--filter", "([")
    assert code == 64


def test_inspect_never_imports_torch(tmp_path):
    p = checkpoint_pt(tmp_path)
    code = (
        "import sys, torchkeep; r = torchkeep.inspect(sys.argv[1]); "
        "assert r.kind == 'checkpoint'; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("proto", [0, 1, 2, 4, 5])
def test_bare_pickles_of_any_protocol(tmp_path, proto):
    import pickle

    p = tmp_path / "meta.pkl"
    p.write_bytes(pickle.dumps({"epoch": 3, "lr": 0.1, "classes": ["a", "b"]}, protocol=proto))
    r = inspect(p)
    assert r.format == "pickle" and r.kind == "object" and r.tensors == []


def test_forged_lengths_in_a_pickle_allocate_nothing(tmp_path):
    import struct

    from torchkeep.errors import InputError

    p = tmp_path / "forged.pkl"
    # BINBYTES8 / BYTEARRAY8 claiming a terabyte, followed by three bytes
    for opcode in (b"\x8e", b"\x96"):
        p.write_bytes(b"\x80\x05" + opcode + struct.pack("<Q", 2**40) + b"abc")
        with pytest.raises(InputError, match="cannot parse the pickle"):
            inspect(p)
