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


def test_every_public_name_resolves_where_the_lazy_map_says():
    """A typo in ``__all__`` or in the lazy map fails here (``test_all_names_resolve`` skips the lazy names)."""
    code = (
        "import importlib, sys, torchkeep\n"
        "for name, module in torchkeep._LAZY.items():\n"
        "    assert getattr(importlib.import_module(module), name) is getattr(torchkeep, name), name\n"
        "for name in torchkeep.__all__:\n"
        "    assert getattr(torchkeep, name) is not None, name\n"
        "assert sorted(torchkeep.__all__) == sorted(set(torchkeep.__all__))\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_subpackages_are_attributes():
    code = (
        "import sys, torchkeep\n"
        "names = [a.name for a in torchkeep.models.list_models()]\n"
        "assert 'cifar10_cnn' in names and 'torch' not in sys.modules\n"  # listing stays cheap
        "m = torchkeep.models.build('cifar10_cnn', num_classes=3)\n"
        "assert m.torchkeep_spec.num_classes == 3\n"
        "assert callable(torchkeep.data.open_dataset) and callable(torchkeep.training.train)\n"
        "assert {'data', 'models', 'training'} <= set(dir(torchkeep))\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_error_is_in_errors_and_exported_and_old_paths_still_work():
    import torchkeep.errors as errors
    from torchkeep._export import ParityError
    from torchkeep.training import CheckpointWriteError, TrainingInterrupted
    from torchkeep.training._checkpoint import CheckpointWriteError as FromCheckpoint
    from torchkeep.training._loop import TrainingInterrupted as FromLoop

    for name in errors.__all__:
        assert name in torchkeep.__all__ and getattr(torchkeep, name) is getattr(errors, name), name
    assert ParityError is errors.ParityError and issubclass(ParityError, errors.TorchkeepError)
    assert CheckpointWriteError is FromCheckpoint is errors.CheckpointWriteError
    assert TrainingInterrupted is FromLoop is errors.TrainingInterrupted
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)


def test_a_refusal_carries_its_report_as_a_field():
    import pytest
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(torchkeep.CompatibilityError) as info:
        torchkeep.load_into(model, {"other.weight": torch.zeros(7, 7)})
    report = info.value.report
    assert isinstance(report, torchkeep.LoadReport) and report.verdict.startswith("REFUSED")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # left unchanged
    assert torchkeep.CompatibilityError("plain").report is None
