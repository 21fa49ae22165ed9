import pytest
import torch

from _files import (
    checkpoint_pt,
    cuda_saved_pt,
    full_model_pt,
    legacy_pt,
    npz_file,
    pt2_file,
    rewrite_zip_member,
    safetensors_file,
    state_dict_pt,
    tiny_model,
    torchscript_pt,
)
from torchkeep import load_state_dict
from torchkeep._load import read_weights
from torchkeep.errors import InputError

EXPECTED = tiny_model().state_dict()


def _same(got: dict, expected: dict = EXPECTED) -> None:
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize(
    "builder", [state_dict_pt, checkpoint_pt, full_model_pt, legacy_pt],
)
def test_bit_exact_from_every_format(tmp_path, builder):
    _same(load_state_dict(builder(tmp_path)))


def test_containers_with_their_own_order(tmp_path):
    for builder in (safetensors_file, npz_file, pt2_file):
        got = load_state_dict(builder(tmp_path))
        _same(dict(sorted(got.items())), dict(sorted(EXPECTED.items())))


def test_torchscript_parameters(tmp_path):
    got = load_state_dict(torchscript_pt(tmp_path))
    for k, v in EXPECTED.items():
        assert torch.equal(got[k], v)


def test_full_model_needs_no_class(tmp_path):
    lw = read_weights(full_model_pt(tmp_path))
    assert lw.source == "full_model" and lw.model_class == "_files.TinyNet"
    assert lw.parameters == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}


def test_every_dtype_bit_exact_and_ties_kept(tmp_path):
    w = torch.randn(5, 3)
    sd = {
        "f64": torch.randn(3, dtype=torch.float64),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(4).bfloat16(),
        "i8": torch.randint(-100, 100, (3,), dtype=torch.int8),
        "u8": torch.randint(0, 255, (3,), dtype=torch.uint8),
        "b": torch.tensor([True, False]),
        "c64": torch.randn(2, dtype=torch.complex64),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "a": w,
        "tied": w,
        "view": w.t()[1:],
        "empty": torch.empty(0, 3),
    }
    for legacy in (False, True):
        p = tmp_path / f"m{legacy}.pt"
        torch.save(sd, p, _use_new_zipfile_serialization=not legacy)
        got = load_state_dict(p)
        for k, v in sd.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].stride() == v.stride(), k
            assert torch.equal(got[k].view(torch.uint8) if v.numel() and v.is_contiguous() else got[k].contiguous(),
                               v.view(torch.uint8) if v.numel() and v.is_contiguous() else v.contiguous()), k
        assert got["a"].data_ptr() == got["tied"].data_ptr()
        assert got["view"].untyped_storage().data_ptr() == got["a"].untyped_storage().data_ptr()


def test_gpu_saved_file_loads_on_cpu(tmp_path):
    p = cuda_saved_pt(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(p, weights_only=True)
    got = load_state_dict(p)
    _same(got)
    assert all(t.device.type == "cpu" for t in got.values())


def test_truncated_storage_is_an_input_error(tmp_path):
    src = state_dict_pt(tmp_path)
    bad = rewrite_zip_member(src, tmp_path / "cut.pt", "data/0", lambda b: b[:10])
    with pytest.raises(InputError, match=r"cut.pt: storage .*data/0 should hold 432 bytes but the archive member has 10"):
        load_state_dict(bad)


def test_forged_tensor_beyond_storage(tmp_path):
    # a tensor whose pickle claims more elements than its storage has must not read out of bounds
    src = state_dict_pt(tmp_path)

    def grow(data: bytes) -> bytes:  # conv.weight shape (4,3,3,3) -> (9,3,3,3)
        return data.replace(b"K\x04K\x03K\x03K\x03", b"K\x09K\x03K\x03K\x03", 1)

    bad = rewrite_zip_member(src, tmp_path / "forged.pt", "data.pkl", grow)
    with pytest.raises(InputError, match="reaches past the end of its storage"):
        load_state_dict(bad)


def test_no_weights_found_names_keys(tmp_path):
    torch.save({"epoch": 3, "note": "nothing here"}, tmp_path / "meta.pt")
    with pytest.raises(InputError, match=r"found no model weights.*epoch, note"):
        load_state_dict(tmp_path / "meta.pt")


def test_explicit_key(tmp_path):
    sd = tiny_model().state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"model": sd, "ema": ema}, tmp_path / "two.pt")
    _same(load_state_dict(tmp_path / "two.pt"))
    assert torch.equal(load_state_dict(tmp_path / "two.pt", key="ema")["fc.bias"], ema["fc.bias"])


def test_numpy_arrays_in_a_bare_pickle(tmp_path):
    # Detectron2 / Caffe2-style weights: {"model": {name: ndarray}, "__author__": ...}
    import pickle

    import numpy as np

    from torchkeep import inspect

    arrays = {"conv1.weight": np.random.rand(4, 3, 3, 3).astype(np.float32), "fc.bias": np.arange(3, dtype=np.int64)}
    p = tmp_path / "model_final.pkl"
    p.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron"}, protocol=2))
    got = load_state_dict(p)
    assert list(got) == ["conv1.weight", "fc.bias"]
    assert torch.equal(got["conv1.weight"], torch.from_numpy(arrays["conv1.weight"]))
    r = inspect(p)
    assert r.kind == "checkpoint" and r.weights_location == "model"
    assert r.tensors[0].shape == [4, 3, 3, 3] and r.tensors[1].dtype == "int64"


def test_load_refuses_every_malicious_file_and_reads_every_benign_one(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from torchkeep.errors import TorchkeepError, UnsafeFileError

    make_corpus = sys.modules.get("make_corpus")  # test_scan may have loaded it: one class object per process
    if make_corpus is None:
        script = Path(__file__).parent / "corpus" / "make_corpus.py"
        spec = importlib.util.spec_from_file_location("make_corpus", script)
        assert spec is not None and spec.loader is not None
        make_corpus = importlib.util.module_from_spec(spec)
        sys.modules["make_corpus"] = make_corpus
        spec.loader.exec_module(make_corpus)
    entries = make_corpus.build(tmp_path / "corpus")
    loaded = 0
    for e in entries:
        path = tmp_path / "corpus" / e["file"]
        if e["kind"] == "malicious":
            with pytest.raises(UnsafeFileError, match="refused: the file can execute code"):
                load_state_dict(path)
        else:
            try:
                sd = load_state_dict(path)
            except TorchkeepError as exc:  # benign files without weights (plain pickles) may say so
                assert any(w in str(exc) for w in ("no model weights", "bare pickle", "object arrays")), (e["file"], exc)
                continue
            assert sd and all(isinstance(t, torch.Tensor) for t in sd.values()), e["file"]
            loaded += 1
    assert loaded >= 8
    assert not list((tmp_path / "corpus").rglob(f"*{make_corpus.MARKER}*"))


def test_legacy_full_model_is_custom_code_and_loads_without_its_class(tmp_path):
    from torchkeep import scan

    p = tmp_path / "legacy_full.pt"
    torch.save(tiny_model(), p, _use_new_zipfile_serialization=False)
    report = scan(p)
    assert report.verdict == "custom-code", report.findings
    lw = read_weights(p)
    assert lw.source == "full_model" and lw.model_class == "_files.TinyNet"
    _same(lw.tensors)


def test_float8_and_unsigned_dtypes_saved_as_untyped_storage(tmp_path):
    # torch writes these with _rebuild_tensor_v3 over a torch.storage.UntypedStorage counted in bytes
    from torchkeep import inspect

    sd = {
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
        "f8b": torch.randn(3).to(torch.float8_e5m2),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.int32).to(torch.uint16),
        "u32": torch.tensor([7, 2**31], dtype=torch.int64).to(torch.uint32),
    }
    torch.save(sd, tmp_path / "f8.pt")
    got = load_state_dict(tmp_path / "f8.pt")
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)), k
    by = {t.name: t for t in inspect(tmp_path / "f8.pt").tensors}
    assert (by["f8"].dtype, by["f8"].nbytes, by["u32"].dtype, by["u32"].nbytes) == ("float8_e4m3fn", 4, "uint32", 8)
