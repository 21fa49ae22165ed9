import subprocess
import sys

import torchkeep


def test_all_names_resolve():
    for name in torchkeep.__all__:
        if name in torchkeep._LAZY:
            continue
        assert hasattr(torchkeep, name), name


def test_lazy_names_are_exported():
    assert set(torchkeep._LAZY) <= set(torchkeep.__all__)


def test_import_does_not_import_torch():
    code = "import sys, torchkeep, torchkeep._cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_version_and_help(cli):
    code, out, _ = cli("--version")
    assert code == 0 and torchkeep.__version__ in out
    code, out, _ = cli("--help")
    assert code == 0 and "inspect" in out and "scan" in out


def test_unknown_command_is_usage_error(cli):
    code, _, err = cli("no-such-command")
    assert code == 64 and "no-such-command" in err
