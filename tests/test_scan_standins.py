"""Where the scanner's stand-ins differ from the real objects, the scan does not stop short or misread a call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import torchkeep
from torchkeep._scan_names import _parse, _source

MARKER = "PWNED_MARKER"


@pytest.fixture
def fakepkg(tmp_path, monkeypatch):
    """An installed package with a function that writes a marker, and a module-level dict."""
    pkg = tmp_path / "lib" / "fakepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os\nREGISTRY = {}\nITEMS = []\n\n"
        f"def main():\n    open(os.path.join({str(tmp_path)!r}, {MARKER + '_main'!r}), 'w').close()\n\n"
        "class Thing:\n    def mark(self):\n        main()\n\nOBJ = Thing()\n\nclass lowercase:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    _source.cache_clear()
    _parse.cache_clear()
    yield tmp_path
    _source.cache_clear()
    _parse.cache_clear()


def _runs(tmp_path, path, marker) -> bool:
    code = f"import pickle\ntry:\n    pickle.load(open({str(path)!r}, 'rb'))\nexcept Exception:\n    pass\n"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib")}
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120, cwd=tmp_path)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


@pytest.mark.parametrize("opcodes", [b"(ifakepkg\nmain\n.", b"\x80\x02(cfakepkg\nmain\no.",
                                     b"\x80\x04(ifakepkg\nOBJ.mark\n."], ids=["INST", "OBJ", "method"])
def test_inst_or_obj_without_arguments_calls_a_function(fakepkg, opcodes):
    # CPython's instantiate() builds a class with cls.__new__(cls) but calls anything else: not a construction
    path = fakepkg / "model.pkl"
    path.write_bytes(opcodes)
    assert _runs(fakepkg, path, fakepkg / f"{MARKER}_main")
    report = torchkeep.scan(path)
    assert report.verdict == "dangerous", report.findings
    assert any("fakepkg." in f.why for f in report.dangerous)


def test_inst_builds_what_its_source_shows_is_a_class(fakepkg):
    # a class, whatever its name's case, is built (custom code), not called
    path = fakepkg / "model.pkl"
    path.write_bytes(b"(ifakepkg\nlowercase\n.")
    assert torchkeep.scan(path).verdict == "custom-code"


def _system(marker) -> bytes:
    cmd = f"touch '{marker}'".encode()
    return b"cos\nsystem\n" + b"X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R"


@pytest.mark.parametrize("mutation", ["setitems", "appends"])
@pytest.mark.parametrize("prefix", [b"\x80\x02", b"N0\x80\x02"], ids=["plain", "odd-start"])
def test_a_module_level_object_changed_in_place_does_not_end_the_scan(fakepkg, mutation, prefix):
    marker = fakepkg / f"{MARKER}_{mutation}"
    change = (b"cfakepkg\nREGISTRY\n(X\x01\x00\x00\x00kX\x01\x00\x00\x00vu" if mutation == "setitems"
              else b"cfakepkg\nITEMS\n(X\x01\x00\x00\x00ve")
    data = prefix + change + b"0" + _system(marker) + b"."
    d = fakepkg / "models"
    d.mkdir()
    path = d / "model.pkl"
    path.write_bytes(data)
    assert _runs(fakepkg, path, marker)  # the loader changes the dict/list and goes on to os.system
    report = torchkeep.scan(path)
    assert report.verdict == "dangerous" and "os.system" in report.imports, report.findings
    (dir_report,) = torchkeep.scan_paths([d])
    assert not dir_report.unknown_format and dir_report.verdict == "dangerous"  # never skipped in a directory



def test_text_that_reads_as_inst_of_no_importable_module_is_not_a_model(tmp_path):
    # "import torch\n..." is INST of module "mport torch": pickle.load cannot import it, nothing runs
    d = tmp_path / "repo"
    d.mkdir()
    (d / "train.py").write_text("import torch\nimport numpy as np\n\nx = 1\n")
    (rep,) = torchkeep.scan_paths([d])
    assert rep.unknown_format and rep.verdict == "error", rep.findings


def test_a_call_on_a_module_beside_the_file_is_not_skipped(tmp_path):
    # companion code shipped next to the weights (modelutils.py) is importable from the loader's working
    # directory even where the scanner cannot import it: a start that calls a global is a pickle
    d = tmp_path / "repo"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"N0cmodelutils\nsetup\n)R")
    (rep,) = torchkeep.scan_paths([d])
    assert not rep.unknown_format and rep.verdict == "dangerous", rep.findings
