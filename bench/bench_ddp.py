"""Distributed training: ``torchkeep train --nproc N`` against a minimal hand-written DDP loop, 1 and 2 processes.

Both sides train the seeds' CIFAR-10 CNN on the embedded digits with the same model, data (the spec's
preprocessing, cached in memory), AdamW, global batch, epochs and one torch thread per process. The hand side is
PyTorch's own DDP tutorial loop (``distributed/ddp-tutorial-series/multigpu_torchrun.py``): ``DistributedSampler``,
``DistributedDataParallel``, gloo, launched by torchrun; with one process, the plain loop without DDP. The
torchkeep side is the CLI as a user runs it (``python -m torchkeep train`` / ``--nproc N``), with its checkpoint,
model files and exact distributed validation every epoch (TensorBoard and plots off: bench_train.py times those).

Measured: images per second inside the training batches (each side times its own training steps, all processes
together) and the wall time of the whole launch. Runs alternate (hand, torchkeep, ...); medians of ``--repeats``.

    python bench/bench_ddp.py                  # 1 and 2 processes, 10 epochs, median of 3

``--checkpoint-cost`` measures instead what checkpointing within the epoch costs the training steps: the same
``torchkeep train --nproc N`` run without mid-epoch checkpoints (the baseline), then with a DCP checkpoint every
``--every`` steps written in the training thread (``--checkpoint-format dcp``) and in the background
(``--async-checkpoint``). The seconds each checkpoint adds are the training time over the baseline's, divided by
the number of checkpoints.

    python bench/bench_ddp.py --checkpoint-cost --arch resnet18 --nproc 2 --every 2 --subset 480 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def hand_worker(epochs: int, batch_size: int) -> None:
    """One process of the hand-written loop (under torchrun when WORLD_SIZE is set); rank 0 prints JSON."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from torchkeep._preprocess import transform_for
    from torchkeep.data import TransformedSubset, open_dataset, split_indices
    from torchkeep.models import build
    from torchkeep.training._config import _DEFAULT_LR, _DEFAULT_WD
    from torchkeep.training._loop import _with_defaults_for_scratch

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)
    spec = _with_defaults_for_scratch(model.torchkeep_spec)
    src = open_dataset("digits")
    train_idx, _ = split_indices(len(src), 0.2, 0)
    train_ds = TransformedSubset(src, train_idx, transform_for(spec, train=True), cache=True)
    sampler = torch.utils.data.DistributedSampler(train_ds, seed=0) if world > 1 else None
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size // world, sampler=sampler,
                                         shuffle=sampler is None, generator=torch.Generator().manual_seed(0))
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(ddp.parameters(), lr=_DEFAULT_LR["adamw"], weight_decay=_DEFAULT_WD["adamw"])
    loss_fn = nn.CrossEntropyLoss()
    train_s, images = 0.0, 0
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(y) * world
        train_s += time.perf_counter() - t0
    if world > 1:
        del ddp
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"images": images, "train_seconds": train_s}))


def _run(cmd: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout[res.stdout.index("{"):]), wall


def hand(nproc: int, epochs: int, batch: int) -> tuple[float, float]:
    worker = [os.fspath(HERE), "--worker", "--epochs", str(epochs), "--batch-size", str(batch)]
    if nproc == 1:
        out, wall = _run([sys.executable, *worker])
    else:
        out, wall = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                          str(nproc), *worker])
    return out["images"] / out["train_seconds"], wall


def trainer(nproc: int, epochs: int, batch: int, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "torchkeep", "train", "--epochs", str(epochs), "--batch-size", str(batch),
           "--threads", "1", "--out", os.fspath(out), "--overwrite", "--no-tensorboard", "--no-plots", "--quiet",
           "--json"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    res, wall = _run(cmd)
    return float(res["images_per_second"]), wall


def checkpoint_run(nproc: int, args: argparse.Namespace, out: Path, extra: list[str]) -> tuple[float, int]:
    """One ``torchkeep train`` run: its training images per second and the images trained."""
    cmd = [sys.executable, "-m", "torchkeep", "train", "--arch", args.arch, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--subset", str(args.subset), "--threads", "1",
           "--out", os.fspath(out), "--overwrite", "--no-tensorboard", "--no-plots", "--quiet", "--json", *extra]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    res, _ = _run(cmd)
    return float(res["images_per_second"]), int(res["train_size"]) * args.epochs


def checkpoint_cost(args: argparse.Namespace) -> int:
    variants = {
        "no mid-epoch checkpoint": [],
        "dcp, sync": ["--checkpoint-format", "dcp", "--checkpoint-every", str(args.every)],
        "dcp, --async-checkpoint": ["--checkpoint-format", "dcp", "--checkpoint-every", str(args.every),
                                    "--async-checkpoint"],
    }
    n = args.nproc[0]
    ips: dict[str, list[float]] = {k: [] for k in variants}
    images = 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):  # alternate the variants
            for name, extra in variants.items():
                got, images = checkpoint_run(n, args, Path(d) / f"run{i}", extra)
                ips[name].append(got)
    steps = -(-images // args.epochs // args.batch_size) * args.epochs
    n_ckpt = sum(1 for s in range(1, steps + 1) if s % args.every == 0 and s % (steps // args.epochs) != 0)
    base = images / statistics.median(ips["no mid-epoch checkpoint"])
    print(f"{args.arch} on digits ({images // args.epochs} training images), {n} processes (gloo, 1 torch thread "
          f"each), global batch {args.batch_size}, {steps} steps, a checkpoint every {args.every} steps "
          f"({n_ckpt} within epochs); median of {args.repeats}")
    print(f"{'':<26}{'images/s':>10}{'train s':>9}{'s per checkpoint':>18}")
    for name in variants:
        med = statistics.median(ips[name])
        secs = images / med
        per = f"{(secs - base) / n_ckpt:>18.3f}" if name != "no mid-epoch checkpoint" and n_ckpt else f"{'':>18}"
        print(f"{name:<26}{med:>10,.0f}{secs:>9.2f}{per}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32, help="the global batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--checkpoint-cost", action="store_true",
                    help="time DCP checkpoints within the epoch, sync and --async-checkpoint (first --nproc)")
    ap.add_argument("--arch", default="cifar10_cnn", help="with --checkpoint-cost")
    ap.add_argument("--every", type=int, default=2, help="with --checkpoint-cost: checkpoint every N steps")
    ap.add_argument("--subset", type=int, default=1797, help="with --checkpoint-cost: the first N digits")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        hand_worker(args.epochs, args.batch_size)
        return 0
    if args.checkpoint_cost:
        return checkpoint_cost(args)

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in args.nproc:
            h_ips, h_wall, t_ips, t_wall = [], [], [], []
            for i in range(args.repeats):
                a, b = hand(n, args.epochs, args.batch_size)
                h_ips.append(a)
                h_wall.append(b)
                a, b = trainer(n, args.epochs, args.batch_size, Path(d) / f"run{n}-{i}")
                t_ips.append(a)
                t_wall.append(b)
            rows.append((n, statistics.median(h_ips), statistics.median(t_ips), statistics.median(h_wall),
                         statistics.median(t_wall)))
    print(f"cifar10_cnn on digits 8x8, global batch {args.batch_size}, {args.epochs} epochs, 1 torch thread per "
          f"process, gloo; median of {args.repeats}")
    print(f"{'processes':>9}{'hand images/s':>15}{'torchkeep':>11}{'step overhead':>15}{'hand run s':>12}{'torchkeep s':>13}")
    for n, hi, ti, hw, tw in rows:
        print(f"{n:>9}{hi:>15,.0f}{ti:>11,.0f}{100 * (hi / ti - 1):>+14.1f}%{hw:>12.1f}{tw:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
