"""One epoch: train on its batches, validate, record it and write what it leaves on disk (``_saving``).

The data order of epoch *e* is a function of ``(seed, e)``, the learning rate a closed-form function of the
epoch (``_schedule``): a resumed epoch sees the very same batches at the very same learning rate.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from torchkeep.errors import UsageError
from torchkeep.training._distributed import (
    ENV_KILL_AT_STEP,
    Dist,
    all_sum,
    all_sum_tensor,
    barrier,
    broadcast_buffers,
    epoch_seed,
    rank_seed,
)
from torchkeep.training._progress import EPOCH_START, STEP, STEP_EVERY, report
from torchkeep.training._run import Run
from torchkeep.training._saving import save_epoch, save_mid_epoch, wait_checkpoint
from torchkeep.training._schedule import lr_at

__all__ = ["Interrupt", "end_epoch", "seed_everything", "train_epoch", "validate"]


class Interrupt:
    """Ctrl-C, handled between two training steps: the first one asks the loop to stop (and checkpoint
    exactly where it is), a second one interrupts at once. Only in the main thread (where signals arrive)."""

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self._prev: Any = None
        self._installed = False
        self._enabled = enabled  # not in a process group: ranks cannot stop at different steps

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> Interrupt:
        if self._enabled and threading.current_thread() is threading.main_thread():
            self._prev = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Tally:
    """The epoch's loss sum, correct and seen so far, on top of ``base`` (what a resumed epoch had done).

    Per-step values stay on the device (no host sync per step) and are summed when read.
    """

    def __init__(self, d: Dist, device: torch.device, base: dict[str, float]) -> None:
        self.d, self.device, self.base = d, device, dict(base)
        self.losses: list[torch.Tensor] = []
        self.corrects: list[torch.Tensor] = []
        self.sizes: list[int] = []

    def add(self, mean_loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.losses.append(mean_loss)
        self.corrects.append((out.detach().argmax(1) == y).sum())
        self.sizes.append(int(y.shape[0]))

    def _local(self) -> tuple[float, int, int]:
        if not self.sizes:
            return 0.0, 0, 0
        w = torch.tensor(self.sizes, dtype=torch.float64, device=self.device)
        return float((torch.stack(self.losses).double() * w).sum()), int(torch.stack(self.corrects).sum()), sum(self.sizes)

    def totals(self, everyone: bool = False) -> dict[str, float]:
        """Loss sum, correct and seen so far (of all ranks with ``everyone``: a collective)."""
        loss_sum, correct, seen = self._local()
        if everyone and self.d.world > 1:
            loss_sum, c, n = all_sum(self.d, [loss_sum, correct, seen])
            correct, seen = int(c), int(n)
        return {
            "loss_sum": self.base["loss_sum"] + loss_sum,
            "correct": self.base["correct"] + correct,
            "seen": self.base["seen"] + seen,
        }


def _begin(run: Run) -> int:
    """Seed the epoch's data order and set its learning rate; returns the epoch's number (from 1)."""
    cfg, d = run.cfg, run.d
    epoch = run.state.epoch + 1
    run.data.sampler.set_epoch(epoch, start=run.state.sample_in_epoch)
    # the loader's generator seeds worker processes: per-epoch, so resumed epochs see the same seeds
    run.data.loader_gen.manual_seed(epoch_seed(cfg.seed, epoch) + 1)
    if d.world > 1:  # each rank draws (augmentation, dropout) from its own seed, the same on any resume
        seed_everything(rank_seed(cfg.seed, d.rank, epoch))
    lr = lr_at(run.segments, run.state.epoch)  # closed form: a resumed epoch gets the very same value
    for group in run.opt.param_groups:
        group["lr"] = lr
    run.trainer.train()
    # a frozen backbone keeps its BatchNorm statistics too (train mode would keep updating them)
    for m in run.frozen_norms:
        m.eval()
    return epoch


def _logits(out: Any) -> torch.Tensor:
    """The main logits of a forward pass: GoogLeNet and Inception v3 return ``(logits, aux...)`` in train mode."""
    return out if isinstance(out, torch.Tensor) else out.logits


# what DDP says at the next step when some parameters got no gradient (find_unused_parameters=False)
_UNUSED_PARAMETERS = "Expected to have finished reduction in the prior iteration"


def _forward(run: Run, x: torch.Tensor) -> Any:
    try:
        return run.trainer(x)
    except RuntimeError as exc:
        if _UNUSED_PARAMETERS not in str(exc):
            raise
        raise UsageError(
            f"{run.cfg.arch} has parameters that got no gradient in a step (a branch the loss does not use): "
            "DistributedDataParallel needs to be told to look for them",
            fix="add --find-unused-parameters (TrainConfig(find_unused_parameters=True))",
        ) from None


def _step(run: Run, x: torch.Tensor, y: torch.Tensor, global_size: int, loss_fn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this process's share of a global batch; returns (logits, the share's mean loss)."""
    world, opt = run.d.world, run.opt
    with torch.autocast(device_type=run.device.type, enabled=run.amp):
        out = _logits(_forward(run, x))
        # DDP averages gradients over ranks: sum / global batch x world gives the gradient of the global
        # batch's mean loss, whatever the share of each rank (loss_fn sums in a process group)
        loss = loss_fn(out, y) * (world / global_size) if world > 1 else loss_fn(out, y)
    opt.zero_grad(set_to_none=True)
    if run.amp:
        run.scaler.scale(loss).backward()
        run.scaler.step(opt)
        run.scaler.update()
    else:
        loss.backward()
        opt.step()
    mean = loss.detach() * (global_size / world / max(len(y), 1)) if world > 1 else loss.detach()
    return out, mean


def _kill_hook(d: Dist) -> tuple[int | None, int]:
    """The test hook ``TORCHKEEP_KILL_AT_STEP``: ``STEP`` (every rank) or ``RANK:STEP`` (that rank, first attempt)."""
    spec = os.environ.get(ENV_KILL_AT_STEP, "")
    if not spec:
        return None, -1
    rank_s, _, step_s = spec.rpartition(":")
    if rank_s and d.restart > 0:
        return None, -1
    return (int(rank_s) if rank_s else None), int(step_s)


def _kill_self(rank: int | None, d: Dist) -> None:
    """SIGKILL (one rank, as a crash would) or a hard exit of every rank (a whole job killed mid-epoch)."""
    if rank is None:
        os._exit(17)
    if rank == d.rank:
        os.kill(os.getpid(), signal.SIGKILL)


def train_epoch(run: Run, stop: Interrupt) -> dict[str, float]:
    """Train the epoch's batches (the rest of them, resumed mid-epoch); returns its train loss and accuracy and
    ``seen``, the images of all processes trained by this call."""
    cfg, d, st = run.cfg, run.d, run.state
    epoch = _begin(run)
    loss_fn = nn.CrossEntropyLoss(reduction="sum" if d.world > 1 else "mean")
    tally = _Tally(d, run.device, st.partial)
    n_batches = st.batch_in_epoch + len(run.data.sampler)
    global_sizes = [len(b) for b in run.data.sampler.global_batches()]
    kill_rank, kill_step = _kill_hook(d)
    report(cfg.progress, EPOCH_START, epoch, cfg.epochs, step=st.batch_in_epoch, steps=n_batches)
    try:
        for i, (x, y) in enumerate(run.data.loader):
            x = x.to(run.device, non_blocking=True)
            y = y.to(run.device, non_blocking=True)
            if run.sample_log is not None:
                run.sample_log.write(f"{epoch} {st.step + 1} {' '.join(map(str, run.data.sampler.last))}\n")
                run.sample_log.flush()
            out, mean_loss = _step(run, x, y, global_sizes[i], loss_fn)
            tally.add(mean_loss, out, y)
            st.step += 1
            st.batch_in_epoch += 1
            st.sample_in_epoch += global_sizes[i]
            if cfg.progress is not None and (st.batch_in_epoch % STEP_EVERY == 0 or st.batch_in_epoch == n_batches):
                t = tally.totals()
                report(cfg.progress, STEP, epoch, cfg.epochs, step=st.batch_in_epoch, steps=n_batches,
                       loss=t["loss_sum"] / max(t["seen"], 1), acc=t["correct"] / max(t["seen"], 1))
            if cfg.checkpoint_every is not None and st.step % cfg.checkpoint_every == 0 and i + 1 < len(global_sizes):
                save_mid_epoch(run, tally.totals(everyone=True))
            if st.step == kill_step:
                run.files.wait()  # the hook kills right after a checkpoint is on disk, deterministically
                wait_checkpoint(run)
                if cfg.async_checkpoint:
                    barrier(d)  # and rank 0 swapped it in
                _kill_self(kill_rank, d)
            if stop.requested:  # Ctrl-C: between two steps, so the checkpoint is exact
                raise KeyboardInterrupt
    except BaseException as exc:
        # keep what this epoch has done so far, for the Ctrl-C checkpoint (alone: no collective here)
        st.partial = tally.totals()
        if stop.requested and not isinstance(exc, KeyboardInterrupt):
            # DataLoader workers got the SIGINT too and died: that is the interrupt, not a crash
            raise KeyboardInterrupt from exc
        raise
    # the epoch's batches are done: keep the totals in the state (a Ctrl-C during validation resumes here)
    st.partial = tally.totals(everyone=True)
    seen = st.partial["seen"]
    return {
        "train_loss": st.partial["loss_sum"] / max(seen, 1),
        "train_acc": st.partial["correct"] / max(seen, 1),
        "seen": int(seen - tally.base["seen"]),
    }


def validate(run: Run) -> tuple[float, float, list[list[int]]]:
    """Loss, accuracy and confusion matrix on the validation split (eval mode, inference_mode).

    Distributed: each rank evaluates its contiguous share of the split once (no padding, no duplicate),
    with rank 0's buffers, and the sums are added up: the numbers of ``torchkeep eval`` on the saved model.
    """
    model, dev = run.model, run.device
    n_cls = len(run.classes)
    cm = torch.zeros((n_cls, n_cls), dtype=torch.int64)
    n = len(run.data.val_ds)
    if n == 0:
        return float("nan"), float("nan"), cm.tolist()
    broadcast_buffers(run.d, model)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    with torch.inference_mode():
        for x, y in run.data.val_loader:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, enabled=run.amp):
                out = model(x)
            loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
            pred = out.argmax(1)
            cm += torch.bincount(y.cpu() * n_cls + pred.cpu(), minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    model.train(was_training)
    if run.d.world > 1:
        cm = all_sum_tensor(run.d, cm)
        loss_sum = all_sum_tensor(run.d, loss_sum.cpu().reshape(1)).reshape(())
    return float(loss_sum) / n, float(cm.diag().sum()) / n, cm.tolist()


def end_epoch(run: Run, train_m: dict[str, float], seconds: float, writer: Any) -> tuple[dict[str, Any], bool]:
    """Validate, record the epoch, write its files (checkpoint last); returns its metrics row and whether it
    is the best so far."""
    cfg, st = run.cfg, run.state
    val_loss, val_acc, cm = validate(run)
    st.epoch += 1
    row = {
        "epoch": st.epoch,
        "step": st.step,
        "train_loss": train_m["train_loss"],
        "train_acc": train_m["train_acc"],
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": run.lr,
        "seconds": round(seconds, 3),
    }
    value = float(row[cfg.metric])
    improved = st.end_epoch(row, cm, value, cfg.lower_is_better)
    save_epoch(run, row, value, improved, writer)
    return row, improved
