"""Training past one process, with real process groups: torchrun's elastic agent, gloo on 127.0.0.1.

One uninterrupted 2-process run is the reference; every other run (killed and resumed on 1 or 3 processes, a
rank SIGKILLed under --max-restarts, two "nodes") is compared to it or to a single-process run: the sample ids
of every step (the hidden test hook ``TORCHKEEP_LOG_SAMPLES``) and the final weights.

Every process is started with a timeout and killed (its whole process group) if it outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchkeep.training import TrainConfig, train
from torchkeep.training._distributed import ENV_KILL_AT_STEP, ENV_LOG_SAMPLES, Dist, GlobalBatchSampler, share

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, gloo on loopback")

# 200 digits -> 160 training images: 5 global batches of 32 per epoch, 10 steps in 2 epochs;
# a checkpoint every 3 steps (3, 5 = end of epoch 1, 6, 9, 10)
RUN = ["--subset", "200", "--epochs", "2", "--checkpoint-every", "3", "--no-plots", "--no-tensorboard", "--quiet"]
TIMEOUT = 240


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(ENV_KILL_AT_STEP, None)
    env.pop(ENV_LOG_SAMPLES, None)
    return {**env, **extra}


def _torchkeep(*args: str | os.PathLike[str], timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess:
    """``python -m torchkeep train ARGS`` in its own process group, killed whole if it runs past ``timeout``."""
    cmd = [sys.executable, "-m", "torchkeep", "train", *[os.fspath(a) for a in args]]
    proc = subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout}s:\n{err[-3000:]}")
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # workers the agent left behind, if any
    except ProcessLookupError:
        pass


def _steps(prefix: Path) -> dict[int, list[int]]:
    """Step -> the global batch's sample ids (each rank's share, in rank order) from the per-rank logs.

    A step logged twice (a replay after a kill) must have had the very same samples both times.
    """
    shares: dict[int, dict[int, list[int]]] = {}
    for f in sorted(prefix.parent.glob(prefix.name + ".rank*")):
        rank = int(f.name.rsplit("rank", 1)[1])
        for line in f.read_text().splitlines():
            _epoch, step, *ids = line.split()
            got = [int(i) for i in ids]
            old = shares.setdefault(int(step), {}).setdefault(rank, got)
            assert old == got, f"step {step} of rank {rank} saw other samples on replay"
    return {step: [i for r in sorted(by_rank) for i in by_rank[r]] for step, by_rank in sorted(shares.items())}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def single(tmp_path_factory, monkeypatch_module) -> tuple[Path, dict[int, list[int]]]:
    """One process, in this process: the global order every world size must reproduce."""
    d = tmp_path_factory.mktemp("single")
    monkeypatch_module.setenv(ENV_LOG_SAMPLES, os.fspath(d / "log"))
    prev = torch.get_num_threads()
    try:
        train(TrainConfig(out=d / "run", subset=200, epochs=2, checkpoint_every=3, plots=False, tensorboard=False,
                          progress=False))
    finally:
        torch.set_num_threads(prev)
        monkeypatch_module.delenv(ENV_LOG_SAMPLES)
    return d / "run", _steps(d / "log")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, dict[int, list[int]], list[str]]:
    """The uninterrupted 2-process reference run: two torchrun agents (--nnodes 2 on 127.0.0.1, one process
    each) meeting at a c10d rendezvous. ``--nproc 2`` on one node must give the very same bits (tested below)."""
    d = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    args = ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "120",
            "--out", d / "run", *RUN, "--json"]
    cmd = [sys.executable, "-m", "torchkeep", "train", *map(os.fspath, args)]
    env = _env(TORCHKEEP_LOG_SAMPLES=os.fspath(d / "log"))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(2)]
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            _kill_group(p.pid)
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    return d / "run", _steps(d / "log"), [r[0] for r in results]


def test_sampler_shares_each_global_batch():
    n, b = 23, 8
    alone = list(GlobalBatchSampler(n, b, seed=3))
    for world in (2, 3, 5):
        per_rank = [GlobalBatchSampler(n, b, seed=3, d=Dist(rank=r, world=world)) for r in range(world)]
        merged = [[i for part in parts for i in part] for parts in zip(*per_rank, strict=True)]
        assert merged == alone
    # resumed from a global offset on another world size: exactly the rest, in order
    rest = GlobalBatchSampler(n, b, seed=3, d=Dist(rank=1, world=3))
    rest.set_epoch(0, start=16)
    assert list(rest) == [alone[2][slice(*share(7, 1, 3))]]
    assert [share(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_two_nodes_train_like_one_process(ddp, single):
    run, steps, stdouts = ddp
    ref_run, ref_steps = single
    assert steps == ref_steps  # the same global batches, step by step
    assert len(steps) == 10
    # one set of files, written by rank 0, no "module." anywhere
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint.pt", "config.json", "last.safetensors", "metrics.csv"
    ]
    w, ref = _weights(run), _weights(ref_run)
    assert w.keys() == ref.keys() and not any(k.startswith("module.") for k in w)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"]) and ckpt["world"] == 2
    for k in w:  # the same training up to the order of floating-point reductions
        torch.testing.assert_close(w[k], ref[k], atol=1e-4, rtol=1e-4)
    import json

    reports = [o for o in stdouts if o.strip()]
    assert len(reports) == 1  # rank 0 alone reported
    out = json.loads(reports[0])
    single_hist = torch.load(ref_run / "checkpoint.pt", weights_only=True)["history"]
    # exact distributed evaluation: every validation image counted once
    assert [h["val_acc"] for h in out["history"]] == [h["val_acc"] for h in single_hist]


def test_resume_a_killed_two_process_run_on_one_and_on_three(single, tmp_path, monkeypatch):
    """2 processes killed at step 8 (last checkpoint: step 6, mid-epoch 2), resumed in 1 process and in 3: steps
    7-10 see exactly the samples of the uninterrupted run, none skipped, none repeated, in the same order."""
    import shutil

    run = tmp_path / "run"
    res = _torchkeep("--nproc", "2", "--out", run, *RUN, TORCHKEEP_LOG_SAMPLES=os.fspath(tmp_path / "a"),
                     TORCHKEEP_KILL_AT_STEP="8")
    assert res.returncode == 17, res.stderr[-3000:]
    assert "exited with code 17" in res.stderr
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["step"], ckpt["sample_in_epoch"], ckpt["world"]) == (6, 32, 2)
    first = _steps(tmp_path / "a")
    shutil.copytree(run, tmp_path / "run3")

    monkeypatch.setenv(ENV_LOG_SAMPLES, os.fspath(tmp_path / "one"))
    prev = torch.get_num_threads()
    try:
        train(TrainConfig(resume=run, progress=False))
    finally:
        torch.set_num_threads(prev)
    one = _steps(tmp_path / "one")
    assert sorted(one) == [7, 8, 9, 10]
    assert {**first, **one} == single[1]

    res = _torchkeep("--nproc", "3", "--resume", tmp_path / "run3", "--quiet", TORCHKEEP_LOG_SAMPLES=os.fspath(tmp_path / "three"))
    assert res.returncode == 0, res.stderr[-3000:]
    three = _steps(tmp_path / "three")
    assert {**first, **three} == single[1]
    assert len(list(tmp_path.glob("three.rank*"))) == 3  # each rank took its share (32 = 11 + 11 + 10)
    for k, v in _weights(run).items():  # the same training, up to the order of floating-point sums
        torch.testing.assert_close(v, _weights(tmp_path / "run3")[k], atol=1e-4, rtol=1e-4)


def test_sigkilled_rank_restarts_from_dcp_and_ends_with_the_same_weights(ddp, tmp_path):
    """``--nproc 2``: rank 1 SIGKILLs itself after step 8; torchrun restarts the group, which resumes from the DCP
    checkpoint of step 6 and ends with the reference run's weights, bit for bit."""
    run = tmp_path / "run"
    res = _torchkeep("--nproc", "2", "--max-restarts", "1", "--checkpoint-format", "dcp", "--out", run, *RUN,
                     TORCHKEEP_LOG_SAMPLES=os.fspath(tmp_path / "log"), TORCHKEEP_KILL_AT_STEP="1:8")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoint.dcp" / ".metadata").is_file() and not (run / "checkpoint.pt").exists()
    assert not list(run.glob(".checkpoint.dcp.*"))
    assert _steps(tmp_path / "log") == ddp[1]
    w, ref = _weights(run), _weights(ddp[0])
    assert w.keys() == ref.keys() and all(torch.equal(w[k], ref[k]) for k in w)  # bit for bit
    # each rank wrote its part; the directory converts to one file bit-exact with DCP's own conversion
    import warnings

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    import torchkeep

    ckpt = run / "checkpoint.dcp"
    assert len(list(ckpt.glob("*.distcp"))) == 2
    assert torchkeep.scan(ckpt).verdict == "safe"
    assert torchkeep.inspect(ckpt).details["training"]["world"] == 2
    torchkeep.convert(ckpt, tmp_path / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(ckpt, tmp_path / "ref.pt")
    ref_sd = torch.load(tmp_path / "ref.pt", weights_only=False)["model"]
    got = load_file(tmp_path / "model.safetensors")
    assert got.keys() == ref_sd.keys() and all(torch.equal(got[k], ref_sd[k]) for k in got)


def test_a_node_that_never_joins_fails_in_one_line(tmp_path):
    port = _free_port()
    res = _torchkeep("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "3",
                     "--out", tmp_path / "run", *RUN, timeout=120)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("torchkeep: error")]
    assert len(errors) == 1 and "rendezvous timed out" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_async_dcp_checkpoints_restart_and_end_like_the_reference(ddp, tmp_path):
    """``--async-checkpoint``, 2 processes: DCP writes each checkpoint in the background (its own gloo group)
    while DDP trains; rank 1 SIGKILLs itself after step 8, the group restarts from the last checkpoint written
    in the background and ends with the reference run's weights and optimizer state, bit for bit."""
    import warnings

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run = tmp_path / "run"
    res = _torchkeep("--nproc", "2", "--max-restarts", "1", "--checkpoint-format", "dcp", "--async-checkpoint",
                     "--out", run, *RUN, TORCHKEEP_LOG_SAMPLES=os.fspath(tmp_path / "log"), TORCHKEEP_KILL_AT_STEP="1:8")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _steps(tmp_path / "log") == ddp[1]
    assert not list(run.glob(".checkpoint.dcp.*"))  # the run's end waited for the last write and its swap
    w, ref = _weights(run), _weights(ddp[0])
    assert w.keys() == ref.keys() and all(torch.equal(w[k], ref[k]) for k in w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(run / "checkpoint.dcp", tmp_path / "ckpt.pt")
    got = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    sync = torch.load(ddp[0] / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(got["model"][k], sync["model"][k]) for k in sync["model"])
    # checkpoint.pt keys the optimizer state by parameter index, DCP by name
    names = dict(zip(sync["optimizer"]["param_groups"][0]["params"], got["optimizer"]["param_groups"][0]["params"]))
    assert len(names) == len(sync["optimizer"]["state"]) > 0
    for i, st in sync["optimizer"]["state"].items():
        for n in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got["optimizer"]["state"][names[i]][n], st[n])


BRANCHY = '''
from torch import nn


class Net(nn.Module):
    """A tiny CNN with a branch no step uses."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.unused = nn.Linear(4, num_classes)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))
'''


def test_a_branch_without_gradients_needs_find_unused_parameters(tmp_path):
    """DDP refuses a model whose parameters did not all get a gradient: one line names the flag, which works."""
    (tmp_path / "branchy.py").write_text(BRANCHY)
    args = ["--nproc", "2", "--arch", "branchy:Net", "--subset", "60", "--epochs", "1", "--no-plots",
            "--no-tensorboard", "--quiet"]
    res = _torchkeep(*args, "--out", tmp_path / "a", PYTHONPATH=os.fspath(tmp_path))
    assert res.returncode != 0
    errors = {line for line in res.stderr.splitlines() if line.startswith("torchkeep: error: branchy:Net")}
    assert len(errors) == 1 and "--find-unused-parameters" in errors.pop(), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    res = _torchkeep(*args, "--find-unused-parameters", "--out", tmp_path / "b", PYTHONPATH=os.fspath(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "b" / "last.safetensors").is_file()


def test_auxiliary_heads_turn_find_unused_parameters_on():
    from torchkeep.models import build
    from torchkeep.training._loop import _has_aux_heads

    assert _has_aux_heads(build("inception_v3", num_classes=10))  # AuxLogits: computed, never in the loss
    assert _has_aux_heads(build("googlenet", num_classes=10))  # aux1, aux2 (kept when trained from scratch)
    assert not _has_aux_heads(build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8))
