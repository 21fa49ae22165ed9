"""Red-team round 10 (issue 9): code a loader runs that the scan did not see.

- TorchScript flatbuffer modules: torch.jit.load reads any buffer with ``PTMF`` at bytes 4..8 as one, before it
  looks for a zip, and runs its methods; torchkeep reads no flatbuffer module, so such a file is never ``safe``.
- TorchScript archives inside a file (``torch.storage._load_from_bytes``, a ``.pt2``'s pickled weights): torch.load
  hands them to torch.jit.load.
- AOTInductor libraries in a ``.pt2``: torch.export.load dlopens them.
- Directory scans follow symlinked folders, as a loader opening ``sub/model.pkl`` does.
- TorchScript code is judged within a bounded cost.
Payloads only write a ``PWNED_MARKER`` file in ``tmp_path``; each shape is shown to run under its real loader.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import torchkeep
from _files import SetstateSaves
from torchkeep import scan, scan_paths

MARKER = "PWNED_MARKER"


def _runs(code: str, marker: Path) -> None:
    """The shape is real: ``code`` (a loader call) creates ``marker`` in a fresh interpreter."""
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, timeout=120, capture_output=True)
    assert marker.exists(), "the loader did not run the payload: the test shape is wrong"
    marker.unlink()


def _torchscript_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(SetstateSaves(str(marker))), buf)
    return buf.getvalue()


def test_a_torchscript_flatbuffer_module_is_never_safe(tmp_path):
    marker = tmp_path / f"{MARKER}_flatbuffer"
    path = tmp_path / "model.ptl"
    torch.jit.save_jit_module_to_flatbuffer(torch.jit.script(SetstateSaves(str(marker))), str(path))
    _runs(f"import torch; torch.jit.load({str(path)!r})", marker)
    report = scan(path)
    assert report.verdict == "dangerous" and report.format == "torchscript-flatbuffer", report.findings
    assert any(f.rule == "torchscript-flatbuffer" for f in report.findings)
    # a directory scan lists it (it is not skipped as "not a model file")
    (tmp_path / "notes.txt").write_text("hello\n")
    reports = {Path(r.path).name: r for r in scan_paths([tmp_path], recursive=True)}
    assert reports["model.ptl"].verdict == "dangerous"
    with pytest.raises(torchkeep.errors.UnknownFormatError, match="TorchScript flatbuffer"):
        torchkeep.inspect(path)
    assert not marker.exists()


def test_the_flatbuffer_id_inside_a_pickle_or_a_zip_is_not_safe(tmp_path):
    """torch.jit.load looks at bytes 4..8 before the zip magic: a benign pickle or TorchScript zip that carries
    the id there is a flatbuffer module to it."""
    pkl = tmp_path / "s.pkl"
    pkl.write_bytes(b"\x8c\x06\x00\x00PTMF.")  # SHORT_BINUNICODE of 6 bytes, STOP: a string to pickle.load
    assert pickle.loads(pkl.read_bytes()) == "\x00\x00PTMF"
    assert scan(pkl).verdict == "dangerous"
    ts = bytearray(_torchscript_bytes(tmp_path / "unused"))
    ts[4:8] = b"PTMF"  # version-needed and flags of the first local header: both zip readers ignore them
    path = tmp_path / "ts.pt"
    path.write_bytes(bytes(ts))
    report = scan(path)
    assert report.verdict == "dangerous" and any(f.rule == "torchscript-flatbuffer" for f in report.findings)


class _LoadFromBytes:
    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.data,))


def test_torchscript_inside_a_torch_save_file_is_not_safe(tmp_path):
    """torch.storage._load_from_bytes(b) is torch.load(b, weights_only=False): a TorchScript archive there goes to
    torch.jit.load, and its __setstate__ runs."""
    marker = tmp_path / f"{MARKER}_nested_ts"
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2), "extra": _LoadFromBytes(_torchscript_bytes(marker))}, path)
    _runs(f"import torch; torch.load({str(path)!r}, weights_only=False)", marker)
    report = scan(path)
    assert report.verdict == "dangerous" and any(f.rule == "nested-torchscript" for f in report.findings), report.findings


def test_a_torch_save_blob_that_is_a_benign_torch_file_stays_as_before(tmp_path):
    inner = io.BytesIO()
    torch.save({"w": torch.ones(2)}, inner)
    path = tmp_path / "ckpt.pt"
    torch.save({"extra": _LoadFromBytes(inner.getvalue())}, path)
    assert not any(f.rule == "nested-torchscript" for f in scan(path).findings)


def _export_pt2(path: Path) -> None:
    class Tiny(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.export.save(torch.export.export(Tiny(), (torch.ones(2),)), str(path))


def test_an_aotinductor_library_in_a_pt2_is_native_code(tmp_path):
    """torch.export.load hands data/aotinductor/<model>/ to AOTIModelPackageLoader, which dlopens the library
    (the red team ran an ELF constructor this way); no scan can judge native code."""
    path = tmp_path / "m.pt2"
    _export_pt2(path)
    assert scan(path).verdict == "safe"
    with zipfile.ZipFile(path) as zf:
        root = zf.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(f"{root}/data/aotinductor/model/model.wrapper.so", b"\x7fELF" + bytes(60))
    report = scan(path)
    assert report.verdict == "dangerous" and any(f.rule == "native-code" for f in report.findings), report.findings


def test_directory_scans_follow_symlinked_folders(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.pkl").write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x85R.")  # never loaded
    top = tmp_path / "models"
    top.mkdir()
    os.symlink(elsewhere, top / "sub")
    os.symlink(top, elsewhere / "loop")  # a loop of links ends
    reports = scan_paths([top], recursive=True)
    names = [Path(r.path).relative_to(top).as_posix() for r in reports]
    assert "sub/model.pkl" in names
    assert max(r.verdict == "dangerous" for r in reports)
    assert len(names) == len(set(os.path.realpath(r.path) for r in reports))  # each real file once


def test_torchscript_code_is_judged_within_a_bound(tmp_path):
    """An AST of several MiB of one-line statements costs GBs: past the per-member bound the code is not judged
    (fail closed), quickly."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.ReLU()), buf)
    path = tmp_path / "big.pt"
    path.write_bytes(buf.getvalue())
    assert scan(path).verdict == "safe"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            data = src.read(info)
            if "/code/" in info.filename and info.filename.endswith(".py"):
                data += b"\ndef f():\n" + b"  x = 1\n" * ((5 << 20) // 8)
            out.writestr(info.filename, data)
    report = scan(path)
    assert report.verdict == "dangerous"
    assert any(f.rule == "torchscript-unparsed" and "MiB" in f.why for f in report.findings), report.findings


@pytest.mark.parametrize("layout", ["coo", "coalesced", "csr", "csc", "bsr", "bsc"])
def test_sparse_tensors_scan_safe(tmp_path, layout):
    """False alarm of round 10: torch 2.x saves (indices, values, size, is_coalesced) for sparse tensors."""
    dense = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    sparse = {
        "coo": lambda: dense.to_sparse(), "coalesced": lambda: dense.to_sparse().coalesce(),
        "csr": lambda: dense.to_sparse_csr(), "csc": lambda: dense.to_sparse_csc(),
        "bsr": lambda: dense.to_sparse_bsr((1, 1)), "bsc": lambda: dense.to_sparse_bsc((1, 1)),
    }[layout]()
    path = tmp_path / "sparse.pt"
    torch.save({"w": sparse}, path)
    report = scan(path)
    assert report.verdict == "safe", report.findings
    assert torch.equal(torch.load(path, weights_only=True)["w"].to_dense(), dense)
