import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from _files import checkpoint_pt, full_model_pt, legacy_pt, state_dict_pt, tiny_model, torchscript_pt
from torchkeep import convert, load_state_dict
from torchkeep._convert import file_sha256
from torchkeep.errors import UsageError

EXPECTED = tiny_model().state_dict()


@pytest.mark.parametrize("builder", [state_dict_pt, checkpoint_pt, full_model_pt, legacy_pt, torchscript_pt])
def test_to_safetensors_bit_exact(tmp_path, builder):
    src = builder(tmp_path)
    res = convert(src, tmp_path / "out.safetensors")
    got = load_file(tmp_path / "out.safetensors")
    for k, v in EXPECTED.items():
        assert torch.equal(got[k], v), k
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["torchkeep.source_sha256"] == file_sha256(src) == res.source_sha256
    assert meta["torchkeep.source_kind"] == res.source_kind
    assert "torchkeep.version" in meta


def test_every_dtype_is_preserved(tmp_path):
    sd = {
        "f64": torch.randn(3, dtype=torch.float64),
        "f32": torch.randn(3),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(5).bfloat16(),
        "i64": torch.arange(4),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([250, 3], dtype=torch.uint8),
        "b": torch.tensor([True, False]),
        "special": torch.tensor([float("nan"), float("-inf"), -0.0]).bfloat16(),
    }
    torch.save(sd, tmp_path / "m.pt")
    for out in ("m.safetensors", "m2.pt"):
        convert(tmp_path / "m.pt", tmp_path / out)
        got = load_state_dict(tmp_path / out)
        for k, v in sd.items():
            assert got[k].dtype == v.dtype, k
            assert torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)), k  # bit for bit


def test_tied_weights_stored_once_and_views_copied(tmp_path):
    w = torch.randn(6, 4)
    torch.save({"emb.weight": w, "head.weight": w, "row": w[2], "t": w.t()}, tmp_path / "tied.pt")
    res = convert(tmp_path / "tied.pt", tmp_path / "tied.safetensors")
    assert res.aliases == {"head.weight": "emb.weight"}
    assert sorted(res.copied_views) == ["row", "t"]
    got = load_file(tmp_path / "tied.safetensors")
    assert set(got) == {"emb.weight", "row", "t"}
    assert torch.equal(got["row"], w[2]) and torch.equal(got["t"], w.t())
    with safe_open(tmp_path / "tied.safetensors", "pt") as f:
        assert json.loads(f.metadata()["torchkeep.aliases"]) == {"head.weight": "emb.weight"}


def test_strip_prefix_and_cast(tmp_path):
    src = state_dict_pt(tmp_path, prefix="module.")
    res = convert(src, tmp_path / "o.safetensors", dtype="fp16")
    assert res.stripped_prefix == "module."
    got = load_file(tmp_path / "o.safetensors")
    assert set(got) == set(EXPECTED)
    assert got["conv.weight"].dtype == torch.float16
    assert got["bn.num_batches_tracked"].dtype == torch.int64  # integers are never cast
    assert res.cast == 8
    res = convert(src, tmp_path / "keep.safetensors", strip_prefix="none")
    assert set(load_file(tmp_path / "keep.safetensors")) == {"module." + k for k in EXPECTED}


def test_refuses_to_overwrite_its_input_and_leaves_no_partial_file(tmp_path):
    src = state_dict_pt(tmp_path)
    with pytest.raises(UsageError, match="overwrite the input"):
        convert(src, src)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="not a model file"):
        convert(bad, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()
    assert not list(tmp_path.glob(".never*"))


def test_cli(tmp_path, cli):
    src = full_model_pt(tmp_path)
    code, out, _ = cli("convert", src, tmp_path / "w.safetensors", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["source_kind"] == "full_model" and data["tensors"] == 9 and data["format"] == "safetensors"
    code, out, _ = cli("convert", src, tmp_path / "w.pt", "--dtype", "bf16")
    assert code == 0 and "cast" in out
    assert load_state_dict(tmp_path / "w.pt")["fc.weight"].dtype == torch.bfloat16


def test_the_output_format_follows_the_suffix_or_convert_refuses(tmp_path, cli):
    src = state_dict_pt(tmp_path)
    # out.onnx once held safetensors, exit 0: now a one-line refusal naming what convert writes, and no file
    code, _, err = cli("convert", src, tmp_path / "out.onnx")
    assert code == 64 and not (tmp_path / "out.onnx").exists()
    assert len(err.strip().splitlines()) == 1
    assert "cannot write an ONNX file: convert writes safetensors (.safetensors) or a PyTorch state_dict" in err
    assert "torchkeep export MODEL --format onnx -o out.onnx" in err
    for name, match in (("out.npz", r"cannot write a \.npz file"), ("out", "without a suffix.*or pass --format")):
        with pytest.raises(UsageError, match=match):
            convert(src, tmp_path / name)
    with pytest.raises(UsageError, match=r"cannot write pt under a \.safetensors name"):
        convert(src, tmp_path / "x.safetensors", fmt="pt")
    with pytest.raises(UsageError, match=r"cannot write a \.onnx file|ONNX"):
        convert(src, tmp_path / "x.onnx", fmt="safetensors")
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob("x.*"))
    # each suffix writes what it says; --format names the format of a name without one
    for name, fmt in (("a.safetensors", "safetensors"), ("a.pth", "pt"), ("a.bin", "pt"), ("a.CKPT", "pt")):
        assert convert(src, tmp_path / name).format == fmt
    assert convert(src, tmp_path / "weights", fmt="pt").format == "pt"
    assert set(load_state_dict(tmp_path / "weights")) == set(EXPECTED)
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert set(f.keys()) == set(EXPECTED)


def test_the_old_keyword_names_warn_and_still_work(tmp_path):
    """convert(src, out, *, fmt=...) spells its parameters as export does; dst= and format= still work."""
    src = state_dict_pt(tmp_path)
    with pytest.warns(DeprecationWarning, match=r"convert\(dst=\.\.\.\) is deprecated.*convert\(out=") as rec:
        res = convert(src, dst=tmp_path / "old.safetensors")
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert res.destination == str(tmp_path / "old.safetensors") and res.format == "safetensors"
    with pytest.warns(DeprecationWarning, match=r"convert\(format=\.\.\.\) is deprecated.*convert\(fmt="):
        assert convert(src, tmp_path / "weights", format="pt").format == "pt"
    assert set(load_state_dict(tmp_path / "weights")) == set(EXPECTED)
    with pytest.raises(UsageError, match=r"both out= and its old name dst="):
        convert(src, tmp_path / "a.pt", dst=tmp_path / "b.pt")
    with pytest.raises(UsageError, match="needs the output path"):
        convert(src)
