"""Time ``torchkeep.train`` against a minimal hand-written PyTorch loop: same model, data, batch size.

Both sides train the seeds' CIFAR-10 CNN on the embedded digits (the README's main run) with the same
optimizer, scheduler, batch size, epochs and identically built datasets (the spec's preprocessing,
cached in memory). The hand-written loop is what a tutorial writes: train, validate each epoch in
eval mode, ``torch.save(model.state_dict())`` each epoch. The trainer does everything it always does:
best/last model files and the resume checkpoint each epoch (atomic, fsync'ed), metrics.csv, TensorBoard
(scalars, image grid, graph), curves.png and confusion.png.

Runs alternate (hand, trainer, hand, trainer, ...) after a warm-up so that both see the same machine
state; the median of ``--repeats`` is reported.

    python bench/bench_train.py                      # the default run: 15 epochs, 8x8 digits
    python bench/bench_train.py --input-size 32      # 16x the compute per image: fixed costs amortised
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def hand_loop(model, train_ds, val_ds, *, epochs: int, batch_size: int, lr: float, wd: float, seed: int,
              out: Path) -> tuple[float, float]:
    """The tutorial loop. Returns (total seconds, seconds spent in the training batches)."""
    import torch
    from torch import nn

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=256)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    train_s = 0.0
    for _ in range(epochs):
        te = time.perf_counter()
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - te
        sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        torch.save(model.state_dict(), out / "model.pth")
    return time.perf_counter() - t0, train_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=8, help="8: native digits; larger: more compute per image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (1: what train picks for 8x8 inputs on a CPU)")
    args = ap.parse_args(argv)

    import torch

    from torchkeep._preprocess import transform_for
    from torchkeep.data import TransformedSubset, open_dataset, split_indices
    from torchkeep.models import build
    from torchkeep.training import TrainConfig, train
    from torchkeep.training._config import _DEFAULT_LR, _DEFAULT_WD
    from torchkeep.training._loop import _with_defaults_for_scratch

    torch.set_num_threads(args.threads)
    size = args.input_size
    src = open_dataset("digits")
    train_idx, val_idx = split_indices(len(src), 0.2, 0)

    def fresh_model():
        torch.manual_seed(0)
        m = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=size)
        return m, _with_defaults_for_scratch(m.torchkeep_spec)

    def datasets(spec):
        # built afresh for every run, as train() does: both sides pay the same first-epoch decoding
        return (TransformedSubset(src, train_idx, transform_for(spec, train=True), cache=True),
                TransformedSubset(src, val_idx, transform_for(spec, train=False), cache=True))

    train_ds, val_ds = datasets(fresh_model()[1])
    n_images = len(train_ds) * args.epochs

    def run_hand(tmp: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        model, spec = fresh_model()
        tr, va = datasets(spec)
        _, train_s = hand_loop(model, tr, va, epochs=args.epochs, batch_size=args.batch_size,
                                   lr=_DEFAULT_LR["adamw"], wd=_DEFAULT_WD["adamw"], seed=0, out=tmp)
        return time.perf_counter() - t0, train_s

    def run_trainer(tmp: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = train(TrainConfig(out=tmp / "run", epochs=args.epochs, batch_size=args.batch_size,
                              input_size=size, threads=args.threads, progress=False, overwrite=True))
        total = time.perf_counter() - t0
        return total, n_images / r.images_per_second

    hand_t, hand_train, tk_t, tk_train = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # warm-up: imports (TensorBoard, matplotlib), caches, allocator - paid once per process by both
        hand_loop(fresh_model()[0], train_ds, val_ds, epochs=1, batch_size=args.batch_size, lr=1e-3, wd=0.0,
                  seed=0, out=tmp)
        train(TrainConfig(out=tmp / "warm", epochs=1, batch_size=args.batch_size, input_size=size,
                          threads=args.threads, progress=False))
        for _ in range(args.repeats):
            a, b = run_hand(tmp)
            hand_t.append(a)
            hand_train.append(b)
            a, b = run_trainer(tmp)
            tk_t.append(a)
            tk_train.append(b)

    h, t = statistics.median(hand_t), statistics.median(tk_t)
    ht, tt = statistics.median(hand_train), statistics.median(tk_train)
    print(f"cifar10_cnn on digits {size}x{size}, {len(train_ds)} train images x {args.epochs} epochs, "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, median of {args.repeats}")
    print(f"{'':28}{'hand-written':>14}{'torchkeep':>12}{'ratio':>8}")
    print(f"{'whole run, images/s':28}{n_images / h:>14,.0f}{n_images / t:>12,.0f}{t / h:>8.3f}")
    print(f"{'training batches, images/s':28}{n_images / ht:>14,.0f}{n_images / tt:>12,.0f}{tt / ht:>8.3f}")
    print(f"{'whole run, seconds':28}{h:>14.2f}{t:>12.2f}")
    print(f"torchkeep overhead: {100 * (t / h - 1):+.1f}% whole run, {100 * (tt / ht - 1):+.1f}% in the training loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
