import json
import os
import shutil
import struct
import zipfile

import pytest

from _files import (
    checkpoint_pt,
    full_model_pt,
    legacy_pt,
    npz_file,
    onnx_file,
    pt2_file,
    safetensors_file,
    state_dict_pt,
    torchscript_pt,
)
from torchkeep import detect
from torchkeep.errors import InputError, UnknownFormatError


@pytest.mark.parametrize(
    ("builder", "fmt"),
    [
        (state_dict_pt, "torch-zip"),
        (checkpoint_pt, "torch-zip"),
        (full_model_pt, "torch-zip"),
        (legacy_pt, "torch-legacy"),
        (torchscript_pt, "torchscript"),
        (safetensors_file, "safetensors"),
        (onnx_file, "onnx"),
        (npz_file, "numpy-npz"),
        (pt2_file, "torch-export"),
    ],
)
def test_detects_from_bytes_not_name(tmp_path, builder, fmt):
    path = builder(tmp_path)
    assert detect(path).format == fmt
    # a misleading extension changes nothing
    renamed = tmp_path / "innocent.txt"
    shutil.copy(path, renamed)
    assert detect(renamed).format == fmt


def test_npy_and_bare_pickle(tmp_path):
    import pickle

    import numpy as np

    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    assert detect(tmp_path / "a.npy").format == "numpy"
    for proto in range(6):
        p = tmp_path / f"p{proto}.bin"
        p.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=proto))
        assert detect(p).format == "pickle", proto


def test_random_bytes_say_what_they_look_like(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(UnknownFormatError, match=r"model.pt: not a model file.*starts with bytes c8 c9 ca"):
        detect(p)
    html = tmp_path / "model.pth"
    html.write_text("<!DOCTYPE html><html>404 Not Found</html>")
    with pytest.raises(UnknownFormatError, match="HTML/XML-like text"):
        detect(html)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty"),
    ],
)
def test_bad_paths(tmp_path, setup, message):
    p = tmp_path / "x.pt"
    setup(p)
    with pytest.raises(InputError, match=message):
        detect(p)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_permission_denied(tmp_path):
    p = state_dict_pt(tmp_path)
    p.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        detect(p)


def test_truncated_zip(tmp_path):
    p = state_dict_pt(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        detect(p)


def test_zip_without_data_pkl(tmp_path):
    p = tmp_path / "notmodel.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UnknownFormatError, match=r"no data.pkl.*readme.txt"):
        detect(p)


def _forged_safetensors(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_safetensors_offsets_past_end(tmp_path):
    from torchkeep import inspect

    p = tmp_path / "bad.safetensors"
    _forged_safetensors(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(InputError, match=r"bad.safetensors: tensor 'w' data_offsets \[0, 16\] run past the end"):
        inspect(p)


def test_safetensors_header_claims_a_terabyte(tmp_path):
    from torchkeep import inspect, load_state_dict

    p = tmp_path / "huge.safetensors"
    _forged_safetensors(p, {"w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(InputError, match=r"claims shape \[274877906944\]"):
        inspect(p)
    with pytest.raises(InputError):
        load_state_dict(p)
    # a header length larger than the file
    q = tmp_path / "len.safetensors"
    q.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError):
        inspect(q)
