"""Kill-safety with real processes: SIGKILL at random moments, Ctrl-C (SIGINT), a real file-size limit."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchkeep
from torchkeep.training import TrainConfig, train

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ARGS = ["--subset", "160", "--no-plots", "--quiet"]


def _train_cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "torchkeep", "train", *[os.fspath(a) for a in args]]


def _env() -> dict[str, str]:
    # one thread, as in the test process: the same kernels, so the same bits as the in-process run
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def _assert_loadable(run_dir: Path) -> int:
    """Everything in the run directory is whole: the checkpoint (weights_only) and both model files."""
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    torchkeep.load(run_dir / "last.safetensors", device="cpu")
    torchkeep.load(run_dir / "best.safetensors", device="cpu")
    return int(ckpt["epoch"])


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# many short epochs (128 training images): checkpoints are written several times a second
EPOCHS = 30


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run that killed-and-resumed runs must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    return train(TrainConfig(out=out, epochs=EPOCHS, subset=160, plots=False, progress=False)).last_path


def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    rng = random.Random(20240611)
    epochs_seen = []
    for attempt in range(3):
        args = ["--epochs", str(EPOCHS), "--out", out] if attempt == 0 else ["--resume", out]
        proc = subprocess.Popen(_train_cmd(*args, *ARGS), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ckpt = out / "checkpoint.pt"
        if attempt == 0:
            _wait_for(ckpt, proc)
        else:
            before = ckpt.stat().st_mtime_ns
            t0 = time.monotonic()
            while ckpt.stat().st_mtime_ns == before and time.monotonic() - t0 < 60:
                time.sleep(0.01)
        # checkpoints are being written several times a second now: kill at a random instant
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        epochs_seen.append(_assert_loadable(out))
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] < EPOCHS, epochs_seen
    done = subprocess.run(_train_cmd("--resume", out, *ARGS), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob(".*.tmp"))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in ckpt["history"]] == list(range(1, EPOCHS + 1))
    # TensorBoard: epochs a killed process logged after its last checkpoint were purged on resume
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("Accuracy/val")] == list(range(1, EPOCHS + 1))
    # killed three times and resumed: the very same weights as one uninterrupted run
    assert _same_weights(out / "last.safetensors", straight)


def test_ctrl_c_saves_a_resumable_checkpoint_and_says_how_to_resume(tmp_path, straight):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd("--epochs", str(EPOCHS), "--out", out, *ARGS), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.pt", proc)
    time.sleep(random.Random(7).uniform(0.2, 0.5))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"Resume with: torchkeep train --resume {out}" in err and "Traceback" not in err
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert 1 <= ckpt["epoch"] < EPOCHS
    done = subprocess.run(_train_cmd("--resume", out, *ARGS), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # mid-epoch position, partial metrics and RNG were saved: resuming gives the uninterrupted result
    assert _same_weights(out / "last.safetensors", straight)


def test_file_size_limit_while_saving_keeps_the_previous_checkpoint(tmp_path):
    """A real failing write (RLIMIT_FSIZE: writes past 600 KB fail with EFBIG) during the checkpoint."""
    out = tmp_path / "run"
    train(TrainConfig(out=out, epochs=1, subset=160, plots=False, progress=False))
    before = (out / "checkpoint.pt").read_bytes()
    assert len(before) > 600_000  # model files (~330 KB) fit under the limit, the checkpoint does not

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    full = subprocess.run(_train_cmd("--resume", out, "--epochs", "2", *ARGS), env=_env(), capture_output=True,
                          text=True, preexec_fn=limit)
    assert full.returncode == 4, full.stderr
    assert "could not write checkpoint.pt (file too large" in full.stderr
    assert "the previous checkpoint is intact" in full.stderr and "Traceback" not in full.stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
    again = subprocess.run(_train_cmd("--resume", out, "--epochs", "2", *ARGS), env=_env(), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    assert _assert_loadable(out) == 2
