"""torch.distributed.checkpoint (DCP) directories: written by training, read like any other file.

inspect (no torch), scan (.metadata and every pickled entry), load_state_dict and convert bit-exact with
``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``, ``convert --to dcp`` and back, resume from a DCP
checkpoint bit-exact with the ``checkpoint.pt`` path, and the kill-safe swap of the checkpoint directory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchkeep
from torchkeep._atomic import dir_sides
from torchkeep._cli.main import run as cli
from torchkeep.errors import UnsafeFileError
from torchkeep.training import TrainConfig, train


def _train(out: Path, **kw) -> torchkeep.TrainResult:
    prev = torch.get_num_threads()
    try:
        return train(TrainConfig(out=out, subset=120, plots=False, tensorboard=False, progress=False, **kw))
    finally:
        torch.set_num_threads(prev)


def _reference(dcp_dir: Path, tmp: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(dcp_dir, tmp / "ref.pt")
    return torch.load(tmp / "ref.pt", weights_only=False)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dcp") / "run"
    # 2 epochs planned, stopped after the first (the run stays resumable on its schedule)
    _train(out, epochs=2, checkpoint_format="dcp", on_epoch_end=lambda row: True)
    return out


def test_training_writes_a_dcp_checkpoint_read_like_a_file(dcp_run, tmp_path, capsys):
    d = dcp_run / "checkpoint.dcp"
    assert (d / ".metadata").is_file() and not (dcp_run / "checkpoint.pt").exists()
    assert torchkeep.scan(d).verdict == "safe"
    ins = torchkeep.inspect(d)
    assert ins.format == "dcp" and ins.kind == "checkpoint" and ins.weights_location == "model"
    assert ins.details["training"]["epoch"] == 1 and ins.details["training"]["arch"] == "cifar10_cnn"
    assert ins.details["dcp"]["shards"] == {"__0_0.distcp": (d / "__0_0.distcp").stat().st_size}
    ref = _reference(d, tmp_path)
    sd = torchkeep.load_state_dict(d)
    assert _equal(sd, ref["model"])
    # one portable file, bit-exact with DCP's own conversion
    assert cli(["convert", os.fspath(d), os.fspath(tmp_path / "model.safetensors")]) == 0
    assert _equal(load_file(tmp_path / "model.safetensors"), ref["model"])
    assert cli(["inspect", os.fspath(d)]) == 0
    out = capsys.readouterr().out
    assert "training epoch 1" in out and "__0_0.distcp" in out


def test_convert_to_dcp_and_back_is_bit_exact(dcp_run, tmp_path):
    src = dcp_run / "last.safetensors"
    assert cli(["convert", os.fspath(src), os.fspath(tmp_path / "ckpt"), "--to", "dcp"]) == 0
    assert torchkeep.scan(tmp_path / "ckpt").verdict == "safe"
    assert _equal(_reference(tmp_path / "ckpt", tmp_path), load_file(src))
    torchkeep.convert(tmp_path / "ckpt", tmp_path / "back.safetensors")
    assert _equal(load_file(tmp_path / "back.safetensors"), load_file(src))
    # converting again replaces the directory whole
    torchkeep.convert(tmp_path / "back.safetensors", tmp_path / "ckpt", fmt="dcp")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_resume_from_dcp_is_bit_exact_with_a_straight_run(dcp_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dcp_run, run)
    resumed = train(TrainConfig(resume=run, progress=False))
    straight = _train(tmp_path / "straight", epochs=2)
    assert _equal(load_file(resumed.last_path), load_file(straight.last_path))


def test_a_dcp_entry_that_runs_code_is_dangerous(tmp_path):
    import torch.distributed.checkpoint as dcp

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > marker",))

    d = tmp_path / "evil"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2), "extra": Payload()}, checkpoint_id=d, no_dist=True)
    report = torchkeep.scan(d)
    assert report.verdict == "dangerous"
    assert any("extra" in f.stream and f.name == "system" for f in report.dangerous)
    with pytest.raises(UnsafeFileError):
        torchkeep.load_state_dict(d)
    assert not (tmp_path / "marker").exists()


def test_a_swap_cut_short_leaves_the_previous_checkpoint(dcp_run, tmp_path):
    """Killed between the two renames: the previous checkpoint comes back on resume; a half-written one goes."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dcp_run, run)
    tmp, old = dir_sides(run / "checkpoint.dcp")
    os.replace(run / "checkpoint.dcp", old)
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"half")
    ckpt = torchkeep.training.load_checkpoint(run)
    assert ckpt["epoch"] == 1 and (run / "checkpoint.dcp" / ".metadata").is_file()
    assert not tmp.exists() and not old.exists()


def test_an_async_checkpoint_holds_what_a_sync_one_does(dcp_run, tmp_path):
    """--async-checkpoint alone (no process group): the checkpoint written in the background is the sync one,
    tensor for tensor, and the run's end waited for it (nothing left in the temp directory)."""
    run = tmp_path / "run"
    res = _train(run, epochs=2, checkpoint_format="dcp", async_checkpoint=True, on_epoch_end=lambda row: True)
    assert res.checkpoint_path == run / "checkpoint.dcp" and not list(run.glob(".checkpoint.dcp.*"))
    (tmp_path / "a").mkdir()
    (tmp_path / "s").mkdir()
    got, ref = _reference(run / "checkpoint.dcp", tmp_path / "a"), _reference(dcp_run / "checkpoint.dcp", tmp_path / "s")
    assert _equal(got["model"], ref["model"])
    flat = lambda sd: {f"{k}.{n}": v for k, st in sd["optimizer"]["state"].items() for n, v in st.items()}  # noqa: E731
    assert flat(got) and _equal(flat(got), flat(ref))
    state = torchkeep.training.load_checkpoint(run)
    assert (state["epoch"], state["step"], state["config"]["async_checkpoint"]) == (1, 3, True)


def test_async_checkpoint_needs_dcp(tmp_path, capsys):
    assert cli(["train", "--async-checkpoint", "--out", os.fspath(tmp_path / "r"), "--subset", "20"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--async-checkpoint" in err[0] and "--checkpoint-format dcp" in err[0]


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_a_failed_background_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """A real failing write (RLIMIT_FSIZE: writes past 600 KB fail) in DCP's writer thread: the run stops with
    one line, checkpoint.dcp is still the previous one, and resuming without the limit goes on from it."""
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    _train(out, epochs=1, checkpoint_format="dcp", async_checkpoint=True)
    before = {p.name: p.read_bytes() for p in (out / "checkpoint.dcp").iterdir()}
    assert max(len(b) for b in before.values()) > 600_000  # model files (~330 KB) fit under the limit

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    cmd = [sys.executable, "-m", "torchkeep", "train", "--resume", os.fspath(out), "--epochs", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=240)
    assert full.returncode == 4, full.stderr[-2000:]
    assert full.stderr.strip().splitlines() == [
        f"torchkeep: error: {out / 'checkpoint.dcp'}: could not write checkpoint.dcp (a write stopped short: the "
        "disk is full or a file size limit was reached); the previous checkpoint is intact. Fix: free space, then "
        f"continue with: torchkeep train --resume {out}"
    ]
    assert {p.name: p.read_bytes() for p in (out / "checkpoint.dcp").iterdir()} == before
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    assert torchkeep.training.load_checkpoint(out)["epoch"] == 2 and not list(out.glob(".checkpoint.dcp.*"))
