"""A global is judged by what the loader would get, not by how the pickle spells it (re-exports followed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from torchkeep import scan
from torchkeep._scan_names import _parse, _source, definitions
from torchkeep._scan_rules import category

PACKAGE = '''
import os as operating_system
from os import system as run_it
from threading import Thread as Worker
from types import *
from .models import Net as PublicNet

class Net:
    class Inner:
        pass
    Helper = operating_system.system

Alias = Net
Built = type("Built", (), {})
'''


@pytest.fixture
def fakepkg(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PACKAGE)
    (pkg / "models.py").write_text("class Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _source.cache_clear()
    _parse.cache_clear()
    yield tmp_path
    _source.cache_clear()
    _parse.cache_clear()


def test_re_exports_are_followed_to_their_definition(fakepkg):
    assert category("fakepkg", "run_it")[0] == "dangerous"  # os.system
    assert category("fakepkg", "Worker")[0] == "dangerous"  # threading.Thread
    assert category("fakepkg", "FunctionType")[0] == "dangerous"  # through `from types import *`
    assert category("fakepkg", "operating_system")[0] == "dangerous"  # a module object
    assert category("fakepkg", "Net.Helper")[0] == "dangerous"  # a class attribute bound to os.system
    # model code stays model code, however it is reached
    assert category("fakepkg", "Net")[0] == "model"
    assert category("fakepkg", "Net.Inner")[0] == "model"
    assert category("fakepkg", "Alias")[0] == "model"
    assert category("fakepkg", "PublicNet")[0] == "model"
    assert category("fakepkg", "Built")[0] == "model"  # built dynamically: cannot be followed, custom code
    assert category("not_installed_pkg", "Net")[0] == "model"
    (d,) = definitions("fakepkg", "PublicNet")
    assert (d.module, d.name, d.kind) == ("fakepkg.models", "Net", "defined")


def test_torch_names_re_exported_under_model_packages():
    kind, why = category("torch.ao.quantization.fx.graph_module", "GraphModule")
    assert kind == "dangerous" and "torch.fx" in why
    assert category("torch.nn.modules.linear", "Linear")[0] == "model"
    assert category("torchvision.models.resnet", "ResNet")[0] == "model"


def test_a_re_exported_callable_runs_under_pickle_and_is_dangerous(fakepkg, tmp_path):
    marker = tmp_path / "marker"
    payload = f"touch {marker}".encode()
    data = b"\x80\x02cfakepkg\nrun_it\nq\x00" + b"X" + len(payload).to_bytes(4, "little") + payload + b"\x85R."
    path = tmp_path / "reexport.pkl"
    path.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(fakepkg)}
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"],
                   env=env, check=True, timeout=60)
    assert marker.exists()  # the loader really runs it
    report = scan(path)
    assert report.verdict == "dangerous"
    assert any("os.system" in f.why or "re-exported" in f.why for f in report.dangerous)


def test_a_module_reached_through_its_package_importing_itself():
    # torch.nn.modules.conv does `from torch.nn import functional as F`; torch/nn/__init__ binds `functional`
    # by importing it from itself: F is the torch.nn.functional module, not model code
    kind, why = category("torch.nn.modules.conv", "F")
    assert kind == "dangerous" and "torch.nn.functional" in why
