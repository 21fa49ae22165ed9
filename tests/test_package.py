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


def test_debug_works_after_the_subcommand_too(tmp_path, cli):
    missing = tmp_path / "missing.pt"
    for args in (("--debug", "inspect", missing), ("inspect", missing, "--debug")):
        code, _, err = cli(*args)
        assert code == 3 and "Traceback (most recent call last)" in err and "InputError" in err, args
    code, _, err = cli("inspect", missing)
    assert code == 3 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # after "--" it is an argument like any other: here a file name
    code, _, err = cli("inspect", "--", "--debug")
    assert code == 3 and "--debug: no such file" in err and "Traceback" not in err


def test_with_json_errors_are_json_on_stdout_as_well(tmp_path, cli):
    import json

    code, out, err = cli("inspect", tmp_path / "missing.pt", "--json")
    assert code == 3 and "no such file" in err  # the one line on stderr stays
    e = json.loads(out)["error"]
    assert e["type"] == "InputError" and e["exit_code"] == 3 and e["what"] == "no such file"
    assert e["path"] == str(tmp_path / "missing.pt") and e["fix"] == "check the path"
    assert e["message"] == err.strip().removeprefix("torchkeep: error: ")
    # usage errors found by click, and usage errors found by torchkeep
    code, out, _ = cli("inspect", "--json")
    assert code == 64 and json.loads(out)["error"] == {
        "type": "UsageError", "message": "Missing argument 'FILE'.", "exit_code": 64
    }
    code, out, _ = cli("models", "--filter", "(", "--json")
    assert code == 64 and json.loads(out)["error"]["what"].startswith("invalid --filter regular expression")
    # without --json stdout stays empty
    code, out, _ = cli("inspect", tmp_path / "missing.pt")
    assert code == 3 and out == ""
