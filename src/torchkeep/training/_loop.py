"""``train(config)``: the training loop, with kill-safe checkpoints and exact resume.

Order of work per epoch (why: the checkpoint is the single source of truth, written last):

1. train on the epoch's batches (data order = f(seed, epoch), independent of global RNG state);
2. validate in ``eval()`` mode under ``torch.inference_mode()``;
3. update the in-memory state (history, best, epoch counter; the learning rate is a function of the epoch);
4. write ``best`` / top-k / ``last`` model files, then ``checkpoint.pt``, then ``metrics.csv`` - each atomic.

A kill before 4 finishes leaves the previous checkpoint; resuming replays the epoch and, since every
RNG and the data order are restored, produces the very same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchkeep._atomic import atomic_write_bytes
from torchkeep._device import resolve_device
from torchkeep._modelfile import save
from torchkeep.data import ImageSource, TransformedSubset, open_dataset, split_indices
from torchkeep.errors import (
    CompatibilityError,
    TorchkeepError,
    TorchkeepWarning,
    TrainingInterrupted,
    UsageError,
)
from torchkeep.models import list_models
from torchkeep.training._checkpoint import (
    DCP_DIR,
    capture_rng,
    has_checkpoint,
    load_checkpoint,
    load_dcp_into,
    restore_rng,
    write_checkpoint,
    write_dcp,
    write_error,
)
from torchkeep.training._config import DEFAULTS, IDENTITY_FIELDS, TrainConfig, TrainResult
from torchkeep.training._distributed import (
    ENV_KILL_AT_STEP,
    ENV_LOG_SAMPLES,
    SINGLE,
    Dist,
    GlobalBatchSampler,
    all_sum,
    all_sum_tensor,
    barrier,
    broadcast_buffers,
    check_world,
    epoch_seed,
    init_from_env,
    launched_by_torchrun,
    rank_seed,
    share,
    shutdown,
)
from torchkeep.training._schedule import Segment, extend, from_checkpoint, lr_at, to_checkpoint
from torchkeep.training._writer import FileWriter

__all__ = ["TrainingInterrupted", "train"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
LAST = "last.safetensors"


# --------------------------------------------------------------------------- small pieces


class _Interrupt:
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

    def __enter__(self) -> _Interrupt:
        if self._enabled and threading.current_thread() is threading.main_thread():
            self._prev = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    assert cfg.lr is not None and cfg.weight_decay is not None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _with_defaults_for_scratch(spec: Any) -> Any:
    """A model trained from scratch gets inputs centred on 0 (mean/std 0.5), recorded in its spec."""
    pre = spec.preprocessing
    if pre.mean is not None:
        return spec
    c = len(pre.channels)
    new_pre = type(pre)(
        resize=pre.resize, crop=pre.crop, interpolation=pre.interpolation, mean=[0.5] * c, std=[0.5] * c,
        channels=pre.channels,
    )
    return spec.replace(preprocessing=new_pre)


# --------------------------------------------------------------------------- the run


class _Run:
    """State of one training run; methods are the steps of :func:`train`."""

    def __init__(self, cfg: TrainConfig, ckpt: dict[str, Any] | None, console: Any, d: Dist = SINGLE):
        self.cfg = cfg
        self.ckpt = ckpt
        self.console = console
        self.d = d
        self.dir = Path(os.fspath(cfg.out or "."))
        self.notes: list[str] = []
        self.ddp: Any = None
        self.sample_log: Any = None
        # alone with checkpoint.pt, files are written off the training thread (in order, from snapshots)
        self.files = FileWriter(background=d.world == 1 and cfg.checkpoint_format != "dcp")

    # ---- setup
    def setup(self) -> None:
        from torchkeep._preprocess import transform_for
        from torchkeep.models import build

        cfg = self.cfg
        assert cfg.seed is not None and cfg.data is not None and cfg.arch is not None
        self.device = resolve_device(cfg.device)
        if self.d.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.d.local_rank)  # one GPU per process
            torch.cuda.set_device(self.device)
        self.amp = bool(cfg.amp if cfg.amp is not None else self.device.type == "cuda")
        if self.amp and self.device.type != "cuda":
            self.notes.append(f"--amp has an effect on CUDA only; training in float32 on {self.device.type}")
            self.amp = False

        src = open_dataset(cfg.data, root=cfg.data_root, split="train", download=cfg.download)
        if cfg.subset is not None and cfg.subset < len(src):
            src = _head(src, cfg.subset)
        self.source = src
        assert cfg.val_fraction is not None
        train_idx, val_idx = split_indices(len(src), cfg.val_fraction, cfg.seed)
        if not train_idx:
            raise UsageError("no training images left after the validation split", fix="lower --val-fraction")
        num_classes = cfg.num_classes or src.num_classes
        if num_classes < src.num_classes:
            raise UsageError(
                f"--num-classes {num_classes} is smaller than the {src.num_classes} classes of {cfg.data}",
                fix=f"use --num-classes {src.num_classes} or leave it out",
            )
        class_names = list(src.classes) + [f"class_{i}" for i in range(src.num_classes, num_classes)]

        _seed_everything(cfg.seed)  # initialisation of a fresh model depends on the seed only
        input_size = cfg.input_size if cfg.input_size is not None else src.image_size
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TorchkeepWarning)
            model = build(
                cfg.arch,
                num_classes=num_classes,
                in_channels=_in_channels(cfg.arch, src.channels),
                input_size=input_size,
                pretrained=cfg.pretrained,
                freeze=cfg.freeze,
                head=cfg.head or "replace",
                class_names=class_names,
            )
        for w in caught:  # shown now (the CLI prints torchkeep's as one line) and kept in the result's notes
            if issubclass(w.category, TorchkeepWarning):
                self.notes.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        spec: Any = model.torchkeep_spec
        if cfg.pretrained is None:
            spec = _with_defaults_for_scratch(spec)
        spec.provenance.dataset = cfg.data
        spec.extra["training"] = {
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            "subset": cfg.subset,
            "data": cfg.data,
        }
        model.torchkeep_spec = spec
        self.spec = spec
        self.model = model.to(self.device)
        self.classes = class_names

        augment = bool(cfg.augment)
        tf_train = transform_for(spec, train=True, augment=augment)
        tf_val = transform_for(spec, train=False)
        # deterministic transforms are cached in memory (same values, no per-epoch decode) for small
        # datasets and in-process loading
        cache_ok = cfg.workers == 0 and len(src) <= 60_000
        self.train_ds = TransformedSubset(src, train_idx, tf_train, cache=cache_ok and not augment)
        self.val_ds = TransformedSubset(src, val_idx, tf_val, cache=cache_ok)
        self.loader_gen = torch.Generator()
        pin = self.device.type == "cuda"
        assert cfg.batch_size is not None
        check_world(self.d, cfg.batch_size, self.device.type, bool(cfg.sync_bn))
        # BatchNorm cannot train on a batch of one image (a single value per channel once features are
        # 1x1): the epoch's lone last image is left out, a different one each epoch (the order is shuffled)
        drop_last = len(self.train_ds) % cfg.batch_size == 1 and len(self.train_ds) > 1 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        )
        if drop_last:
            self.notes.append(
                f"1 training image per epoch left out: {len(self.train_ds)} images in batches of {cfg.batch_size} "
                "leave a last batch of one, which BatchNorm cannot train on"
            )
        # --batch-size is the global batch: this process takes its share of each (all of it when alone)
        self.sampler = GlobalBatchSampler(len(self.train_ds), cfg.batch_size, cfg.seed, self.d, drop_single=drop_last)
        self.loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            self.train_ds, batch_sampler=self.sampler, num_workers=cfg.workers,
            pin_memory=pin, generator=self.loader_gen, persistent_workers=False,
        )
        # exact distributed evaluation: each validation image is evaluated once, by one process
        lo, hi = share(len(self.val_ds), self.d.rank, self.d.world)
        val_part = self.val_ds if self.d.world == 1 else torch.utils.data.Subset(self.val_ds, range(lo, hi))
        self.val_loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            val_part, batch_size=max(256, cfg.batch_size), shuffle=False, num_workers=cfg.workers, pin_memory=pin
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.frozen_norms = [
            m for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters(recurse=False))
        ] if cfg.freeze else []
        if not params:
            raise UsageError(f"{cfg.arch} has no trainable parameters (all frozen)", fix="leave out --freeze")
        self.opt = _make_optimizer(cfg, params)
        assert cfg.epochs is not None and cfg.lr is not None and cfg.scheduler is not None
        self.segments = [Segment(0, int(cfg.epochs), float(cfg.lr), cfg.scheduler)]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.criterion = nn.CrossEntropyLoss()

        # bookkeeping (replaced by the checkpoint's on resume)
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # global batches done in the epoch in progress (a checkpoint mid-epoch)
        self.sample_in_epoch = 0  # samples of the epoch consumed by all processes together
        self.step = 0
        self.partial: dict[str, float] = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_cm: list[list[int]] | None = None
        self.top_k: list[dict[str, Any]] = []  # {"value", "epoch", "file"}
        self.resumed_from = 0
        self.files_pending = False
        if self.ckpt is not None:
            self._restore(self.ckpt)
        else:
            _seed_everything(cfg.seed)
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.notes.append(
                f"{self.d.world} processes ({'nccl' if self.device.type == 'cuda' else 'gloo'}), "
                f"{cfg.batch_size} images per global batch"
            )

            if cfg.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            # the wrapper trains; self.model (no "module." prefix) is what every file holds
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        path = self.dir / CHECKPOINT
        old_classes = ckpt.get("classes")
        if old_classes is not None and list(old_classes) != self.classes:
            raise CompatibilityError(
                f"cannot resume: the dataset's classes changed since the checkpoint "
                f"({', '.join(map(str, old_classes[:6]))}... -> {', '.join(self.classes[:6])}...)",
                path=path,
                fix="restore the dataset as it was, or start a new run with another --out",
            )
        old_n = ckpt.get("dataset_size")
        if old_n is not None and int(old_n) != len(self.source):
            raise CompatibilityError(
                f"cannot resume: the dataset has {len(self.source)} images, the run was trained on {old_n} "
                "(the split and the data order would not be the same)",
                path=path,
                fix="restore the dataset as it was, or start a new run with another --out",
            )
        try:
            if "dcp" in ckpt:  # a DCP checkpoint: model and optimizer are in its shards
                load_dcp_into(Path(ckpt["dcp"]), self.model, self.opt)
            else:
                self.model.load_state_dict(ckpt["model"])
                self.opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CompatibilityError(
                f"the checkpoint does not fit this model ({str(exc).splitlines()[0]})",
                path=self.dir / CHECKPOINT,
                fix="resume with the run's own --arch/--num-classes, or start a new run with another --out",
            ) from exc
        cfg = self.cfg
        assert cfg.epochs is not None and cfg.lr is not None and cfg.scheduler is not None
        segments = from_checkpoint(ckpt.get("scheduler"), dict(ckpt.get("config") or {}), cfg.lr, cfg.scheduler)
        # --epochs raised on resume: a finished schedule gets a new segment (else the new epochs would all
        # train at the learning rate 0 where cosine ended), an unfinished one now ends at the new total
        self.segments, note = extend(segments, int(ckpt["epoch"]), int(cfg.epochs), cfg.lr, cfg.scheduler)
        if note:
            self.notes.append(note)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        # samples consumed: a global offset, valid for any number of processes (older checkpoints: batches)
        self.sample_in_epoch = int(ckpt.get("sample_in_epoch", self.batch_in_epoch * int(cfg.batch_size or 1)))
        self.step = int(ckpt["step"])
        self.partial = dict(ckpt.get("partial") or self.partial)
        self.history = [dict(h) for h in ckpt.get("history", [])]
        self.best_value = ckpt.get("best_value")
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        cm = ckpt.get("best_confusion")
        self.best_cm = cm.tolist() if isinstance(cm, torch.Tensor) and cm.numel() else None
        self.top_k = [dict(t) for t in ckpt.get("top_k", [])]
        self.resumed_from = self.epoch
        if self.d.world == 1 and int(ckpt.get("world", 1)) == 1:
            restore_rng(ckpt["rng"])  # exact; distributed runs draw from per-rank seeds set each epoch

    # ---- helpers
    def _lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _improved(self, value: float) -> bool:
        if self.best_value is None or math.isnan(self.best_value):
            return not math.isnan(value)
        return value < self.best_value if self.cfg.metric.endswith("loss") else value > self.best_value  # type: ignore[union-attr]

    def _payload(self, tensors: bool = True) -> dict[str, Any]:
        """The checkpoint's content; without ``tensors`` the training state alone (model and optimizer go to DCP).

        Written in the background, it is a snapshot: copies of the weights and optimizer state of this moment.
        """
        cfg = self.cfg
        weights: dict[str, Any] = {}
        snap = self.files.background
        if tensors:
            weights = {
                "model": {k: v.detach().clone() if snap else v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.opt.state_dict()) if snap else self.opt.state_dict(),
            }
        return {
            **weights,
            "scheduler": to_checkpoint(self.segments),
            "scaler": self.scaler.state_dict() if self.amp else {},
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "world": self.d.world,
            "step": self.step,
            "partial": dict(self.partial),
            "history": [dict(h) for h in self.history],
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_confusion": torch.tensor(self.best_cm or [], dtype=torch.int64),
            "top_k": [dict(t) for t in self.top_k],
            "rng": capture_rng(),
            "config": {k: v for k, v in cfg.to_dict().items() if isinstance(v, (str, int, float, bool, list)) or v is None},
            "classes": list(self.classes),
            "dataset_size": len(self.source),
            "spec": self.spec.to_json(),
        }

    def _save_model(self, path: Path, model: nn.Module | None = None) -> None:
        if not self.d.main:  # rank 0 alone writes files
            return
        try:
            save(model if model is not None else self.model, path, spec=self.spec)
        except TorchkeepError:
            raise
        except Exception as exc:
            # safetensors reports a full disk as SafetensorError("... I/O error: ... (os error 28)")
            if isinstance(exc, OSError) or "I/O error" in str(exc) or "os error" in str(exc):
                raise write_error(path, exc, "model file") from exc
            raise

    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (a DCP directory: every rank its part); nobody goes on before it is whole.

        Alone, ``checkpoint.pt`` is written in the background (a snapshot of this moment, after the files
        queued before it); in a process group the write is done before the barrier.
        """
        if self.cfg.checkpoint_format == "dcp":
            write_dcp(self.dir / DCP_DIR, self.model, self.opt, self._payload(tensors=False), main=self.d.main)
        elif self.d.main:
            payload = self._payload()
            self.files.submit(lambda: write_checkpoint(self.dir / CHECKPOINT, payload))
        barrier(self.d)

    def save_interrupted(self) -> None:
        """The Ctrl-C checkpoint; finishes the epoch's model files first if the interrupt cut them short."""
        self.files.wait()  # what was queued (a finished epoch's files) is on disk first
        if self.files_pending:
            if self.best_epoch == self.epoch:
                self._save_model(self.dir / BEST)
            self._save_model(self.dir / LAST)
            self.files_pending = False
        self.save_checkpoint()
        self.files.wait()
        self.write_metrics()

    # ---- one epoch
    def train_epoch(self, bar: Any, stop: _Interrupt) -> dict[str, float]:
        cfg = self.cfg
        model = self.ddp if self.ddp is not None else self.model
        opt, scaler, crit, dev, amp = self.opt, self.scaler, self.criterion, self.device, self.amp
        crit_sum = nn.CrossEntropyLoss(reduction="sum")
        d = self.d
        epoch = self.epoch + 1
        self.sampler.set_epoch(epoch, start=self.sample_in_epoch)
        # the loader's generator seeds worker processes: per-epoch, so resumed epochs see the same seeds
        self.loader_gen.manual_seed(epoch_seed(cfg.seed or 0, epoch) + 1)
        if d.world > 1:  # each rank draws (augmentation, dropout) from its own seed, the same on any resume
            _seed_everything(rank_seed(cfg.seed or 0, d.rank, epoch))
        lr = lr_at(self.segments, self.epoch)  # closed form: a resumed epoch gets the very same value
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        if self.frozen_norms:
            # a frozen backbone keeps its BatchNorm statistics too (train mode would keep updating them)
            for m in self.frozen_norms:
                m.eval()
        # per-step values stay on the device (no host sync per step); summed when needed
        losses: list[torch.Tensor] = []
        corrects: list[torch.Tensor] = []
        sizes: list[int] = []
        base: dict[str, float] = dict(self.partial)
        n_batches = self.batch_in_epoch + len(self.sampler)
        every = int(cfg.checkpoint_every or 0)
        global_sizes = [len(b) for b in self.sampler.global_batches()]
        kill_rank, kill_step = _kill_hook(d)

        def local_totals() -> tuple[float, int, int]:
            if not sizes:
                return 0.0, 0, 0
            w = torch.tensor(sizes, dtype=torch.float64, device=dev)
            return float((torch.stack(losses).double() * w).sum()), int(torch.stack(corrects).sum()), sum(sizes)

        def totals(everyone: bool = False) -> dict[str, float]:
            """This epoch's loss sum, correct and seen so far (of all ranks with ``everyone``: a collective)."""
            loss_sum, correct, seen = local_totals()
            if everyone and d.world > 1:
                loss_sum, c, n = all_sum(d, [loss_sum, correct, seen])
                correct, seen = int(c), int(n)
            return {
                "loss_sum": base["loss_sum"] + loss_sum,
                "correct": base["correct"] + correct,
                "seen": base["seen"] + seen,
            }

        task = bar.start_epoch(epoch, n_batches, self.batch_in_epoch) if bar else None
        try:
            for i, (x, y) in enumerate(self.loader):
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if self.sample_log is not None:
                    self.sample_log.write(f"{epoch} {self.step + 1} {' '.join(map(str, self.sampler.last))}\n")
                    self.sample_log.flush()
                with torch.autocast(device_type=dev.type, enabled=amp):
                    out = _logits(model(x))
                    if d.world > 1:
                        # DDP averages gradients over ranks: sum / global batch x world gives the gradient of
                        # the global batch's mean loss, whatever the share of each rank
                        loss = crit_sum(out, y) * (d.world / global_sizes[i])
                    else:
                        loss = crit(out, y)
                opt.zero_grad(set_to_none=True)
                if amp:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                # the mean loss of this rank's share, for the metrics
                losses.append(loss.detach() * (global_sizes[i] / d.world / max(len(y), 1)) if d.world > 1 else loss.detach())
                corrects.append((out.detach().argmax(1) == y).sum())
                sizes.append(int(y.shape[0]))
                self.step += 1
                self.batch_in_epoch += 1
                self.sample_in_epoch += global_sizes[i]
                if task is not None and (self.batch_in_epoch % 10 == 0 or self.batch_in_epoch == n_batches):
                    t = totals()
                    bar.update(task, self.batch_in_epoch, t["loss_sum"] / max(t["seen"], 1), t["correct"] / max(t["seen"], 1))
                if every and self.step % every == 0 and i + 1 < len(global_sizes):
                    self.save_mid_epoch(totals(everyone=True))
                if self.step == kill_step:
                    self.files.wait()  # the hook kills right after a checkpoint is on disk, deterministically
                    _kill_self(kill_rank, d)
                if stop.requested:  # Ctrl-C: between two steps, so the checkpoint is exact
                    raise KeyboardInterrupt
        except BaseException as exc:
            # keep what this epoch has done so far, for the Ctrl-C checkpoint (alone: no collective here)
            self.partial = totals()
            if stop.requested and not isinstance(exc, KeyboardInterrupt):
                # DataLoader workers got the SIGINT too and died: that is the interrupt, not a crash
                raise KeyboardInterrupt from exc
            raise
        # the epoch's batches are done: keep the totals in the state (a Ctrl-C during validation resumes here)
        self.partial = totals(everyone=True)
        tot = self.partial["seen"]
        return {
            "train_loss": self.partial["loss_sum"] / max(tot, 1),
            "train_acc": self.partial["correct"] / max(tot, 1),
            "seen": int(tot - base["seen"]),  # images of all processes trained by this call
        }

    def save_mid_epoch(self, partial: dict[str, float]) -> None:
        """A checkpoint in the middle of an epoch (``--checkpoint-every``): all ranks, then all agree."""
        saved = self.partial
        self.partial = partial
        try:
            self.save_checkpoint()
        finally:
            self.partial = saved

    def validate(self) -> tuple[float, float, list[list[int]]]:
        """Loss, accuracy and confusion matrix on the validation split (eval mode, inference_mode).

        Distributed: each rank evaluates its contiguous share of the split once (no padding, no duplicate),
        with rank 0's buffers, and the sums are added up: the numbers of ``torchkeep eval`` on the saved model.
        """
        model, dev = self.model, self.device
        n_cls = len(self.classes)
        cm = torch.zeros((n_cls, n_cls), dtype=torch.int64)
        if len(self.val_ds) == 0:
            return float("nan"), float("nan"), cm.tolist()
        broadcast_buffers(self.d, model)
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        with torch.inference_mode():
            for x, y in self.val_loader:
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                with torch.autocast(device_type=dev.type, enabled=self.amp):
                    out = model(x)
                loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
                pred = out.argmax(1)
                cm += torch.bincount(y.cpu() * n_cls + pred.cpu(), minlength=n_cls * n_cls).reshape(n_cls, n_cls)
        model.train(was_training)
        if self.d.world > 1:
            cm = all_sum_tensor(self.d, cm)
            loss_sum = all_sum_tensor(self.d, loss_sum.cpu().reshape(1)).reshape(())
        n = len(self.val_ds)
        return float(loss_sum) / n, float(cm.diag().sum()) / n, cm.tolist()

    def end_epoch(self, train_m: dict[str, float], seconds: float, writer: Any) -> dict[str, Any]:
        cfg = self.cfg
        val_loss, val_acc, cm = self.validate()
        lr = self._lr()
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_m["train_loss"],
            "train_acc": train_m["train_acc"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": round(seconds, 3),
        }
        self.history.append(row)
        self.batch_in_epoch = 0
        self.sample_in_epoch = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0}
        value = float(row[cfg.metric or "val_acc"])
        improved = self._improved(value)
        if improved:
            self.best_value, self.best_epoch, self.best_cm = value, self.epoch, cm
        # TensorBoard and models first, the checkpoint last (it is what resume trusts): a kill in between
        # replays this epoch, and TensorBoard's purge_step drops the events it logged the first time
        if writer is not None:  # rank 0's alone
            writer.epoch(row)
        self.files_pending = True
        # the files of this epoch, from a snapshot when they are written in the background
        model = copy.deepcopy(self.model) if self.files.background else self.model
        top_new, top_gone = self._update_top_k(value)
        history = [dict(h) for h in self.history]

        def write_models() -> None:
            if improved:
                self._save_model(self.dir / BEST, model)
            for path in top_new:
                self._save_model(path, model)
            for path in top_gone:
                with contextlib.suppress(OSError):
                    path.unlink()
            self._save_model(self.dir / LAST, model)

        if self.d.main:
            self.files.submit(write_models)
        self.save_checkpoint()
        self.files_pending = False
        if self.d.main:
            self.files.submit(lambda: self.write_metrics(history))
        return row

    def write_metrics(self, history: list[dict[str, Any]] | None = None) -> None:
        """metrics.csv from the history (rebuilt whole, so it always matches the checkpoint)."""
        from torchkeep.training._plots import write_metrics_csv

        if not self.d.main:
            return

        with contextlib.suppress(OSError):  # a convenience copy: the checkpoint holds the history
            write_metrics_csv(self.history if history is None else history, self.dir / "metrics.csv")

    def _update_top_k(self, value: float) -> tuple[list[Path], list[Path]]:
        """The kept top-k after this epoch; returns the files to write and the files to delete."""
        keep = int(self.cfg.keep or 1)
        if keep <= 1:
            return [], []
        entries = [*self.top_k, {"value": value, "epoch": self.epoch, "file": ""}]
        lower_better = (self.cfg.metric or "").endswith("loss")
        entries.sort(key=lambda e: (e["value"] if lower_better else -e["value"], e["epoch"]))
        kept, dropped = entries[:keep], entries[keep:]
        new: list[Path] = []
        for e in kept:
            if e["epoch"] == self.epoch:
                e["file"] = f"top/epoch{self.epoch:03d}-{self.cfg.metric}={value:.4f}.safetensors"
                new.append(self.dir / e["file"])
        self.top_k = kept
        return new, [self.dir / e["file"] for e in dropped if e["file"]]


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


def _logits(out: Any) -> torch.Tensor:
    """The main logits of a forward pass: GoogLeNet and Inception v3 return ``(logits, aux...)`` in train mode."""
    return out if isinstance(out, torch.Tensor) else out.logits


def _in_channels(arch: str, channels: int) -> int | None:
    """The dataset's channels for architectures built from scratch; None (3, RGB) for torchvision's,
    whose preprocessing converts grayscale images to RGB (their stem takes 3 channels)."""
    info = next((a for a in list_models() if a.name == arch), None)
    return None if info is not None and info.source == "torchvision" else channels


def _head(src: ImageSource, n: int) -> ImageSource:
    """The first ``n`` images of ``src`` (``--subset``)."""

    return dataclasses.replace(src, targets=src.targets[:n])


def _clean_stale_temp(run_dir: Path) -> None:
    """Temporary files left by a process killed mid-write (the real files are intact)."""
    for d in (run_dir, run_dir / "top"):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()


def _check_identity(given: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to resume with a different architecture, dataset, ... (the state would not fit or mean anything)."""
    for name in IDENTITY_FIELDS:
        v = getattr(given, name)
        if v is None:
            continue
        old = saved.get(name, DEFAULTS.get(name))  # a field newer than the checkpoint had its default
        if isinstance(v, tuple):
            v = list(v)
        if v != old:
            flag = "--" + name.replace("_", "-")
            raise CompatibilityError(
                f"cannot resume: this run was trained with {flag} {old}, not {v}",
                path=path,
                fix=f"leave out {flag} to continue the run, or start a new run with a different --out",
            )


# --------------------------------------------------------------------------- public entry point


def train(config: TrainConfig) -> TrainResult:
    """Train an image classifier; every epoch writes model files and a resume checkpoint atomically.

    Started by torchrun (``torchkeep train --nproc N``, ``torchrun -m torchkeep train``: ``RANK`` and
    ``WORLD_SIZE`` are set), each process joins the process group and trains its share of every global
    batch with DistributedDataParallel; rank 0 alone writes files (see ``training._distributed``).

    Args:
        config: the run's settings; ``config.resume`` continues a run exactly where its checkpoint left it,
            on any number of processes.

    Returns:
        A :class:`TrainResult` naming the run's files and metrics.

    Raises:
        UsageError: unknown architecture / dataset / option values.
        InputError: the dataset or checkpoint cannot be read.
        CompatibilityError: resuming with a different architecture, dataset or class count.
        CheckpointWriteError: a file could not be written (disk full); the previous checkpoint is intact.
        TrainingInterrupted: Ctrl-C; a resumable checkpoint was written first.
    """
    t_start = time.perf_counter()
    d = init_from_env(resolve_device(config.device).type) if launched_by_torchrun() else SINGLE
    try:
        return _train(config, d, t_start)
    finally:
        if d.owned:
            shutdown()


def _train(config: TrainConfig, d: Dist, t_start: float) -> TrainResult:
    if d.restart > 0 and config.resume is None:
        out = Path(os.fspath(config.out if config.out is not None else config.resolved().out or "."))
        if has_checkpoint(out):
            # torchrun restarted the group after a failure (--max-restarts): continue from the last complete
            # checkpoint
            config = dataclasses.replace(config, resume=out, out=None)
    ckpt = None
    saved: dict[str, Any] | None = None
    if config.resume is not None:
        ckpt_path = Path(os.fspath(config.resume))
        ckpt = load_checkpoint(ckpt_path)
        saved = dict(ckpt.get("config") or {})
        run_dir = ckpt_path if ckpt_path.is_dir() and ckpt_path.name != DCP_DIR else ckpt_path.parent
        _check_identity(config, saved, run_dir / CHECKPOINT)
        if config.out is not None and Path(os.fspath(config.out)).resolve() != run_dir.resolve():
            raise UsageError(
                f"--resume {run_dir} continues that run in place; --out {config.out} is another directory",
                fix="leave out --out when resuming",
            )
        saved["out"] = os.fspath(run_dir)
    cfg = config.resolved(saved)
    run_dir = Path(os.fspath(cfg.out or "."))
    if ckpt is None and has_checkpoint(run_dir) and not cfg.overwrite:
        raise UsageError(
            "this directory already holds a training run",
            path=run_dir,
            fix=f"continue it with --resume {run_dir}, pick another --out, or pass --overwrite",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TorchkeepError(
            f"cannot create the run directory ({exc.strerror or exc})",
            path=run_dir,
            fix="check that the folder exists and is writable, or pick another --out",
        ) from None
    if d.main:
        _clean_stale_temp(run_dir)

    console = _console(cfg.progress and d.main)
    run = _Run(cfg, ckpt, console, d)
    prev_threads = torch.get_num_threads()
    try:
        log = os.environ.get(ENV_LOG_SAMPLES)
        if log:
            run.sample_log = open(f"{log}.rank{d.rank}", "a")  # noqa: SIM115 (closed below)
        run.setup()
        threads = cfg.threads
        h, w = run.spec.input_size
        if threads is None and run.device.type == "cpu" and h * w <= 16 * 16:
            threads = 1
        if threads:
            torch.set_num_threads(threads)
        return _train_loop(cfg, ckpt, run, run_dir, t_start)
    finally:
        torch.set_num_threads(prev_threads)
        run.files.close()  # also when setup failed: the writer thread ends
        if run.sample_log is not None:
            run.sample_log.close()
        run.ddp = None  # the wrapper goes before the process group (see shutdown)


def _train_loop(cfg: TrainConfig, ckpt: dict[str, Any] | None, run: _Run, run_dir: Path, t_start: float) -> TrainResult:
    if ckpt is not None and run.epoch >= int(cfg.epochs or 0) and run.batch_in_epoch == 0:
        run.notes.append(f"the run already completed {run.epoch} epochs; raise --epochs to train further")
    if run.d.main:
        atomic_write_bytes(run_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    if ckpt is not None:
        run.write_metrics()  # a kill after the last checkpoint may have left metrics.csv one epoch behind

    writer = None
    if cfg.tensorboard and run.d.main:
        from torchkeep.training._tensorboard import TensorBoard

        writer = TensorBoard(run_dir / "tensorboard", purge_step=run.epoch + 1 if ckpt is not None else None)
        if ckpt is None:
            writer.first_batch(run.model, run.train_ds, run.device, submit=run.files.submit if run.files.background else None)

    from torchkeep.training._progress import Bar

    bar = Bar(run.console, int(cfg.epochs or 0)) if cfg.progress else None
    stopped_early = False
    train_seconds = 0.0
    train_images = 0
    epochs_this_run = 0
    try:
        with bar if bar is not None else contextlib.nullcontext(), _Interrupt(enabled=run.d.world == 1) as stop:
            while run.epoch < int(cfg.epochs or 0):
                t0 = time.perf_counter()
                tm = run.train_epoch(bar, stop)
                dt = time.perf_counter() - t0
                train_seconds += dt
                train_images += int(tm["seen"])
                row = run.end_epoch(tm, dt, writer)
                epochs_this_run += 1
                if bar is not None:
                    bar.epoch_done(row, improved=run.best_epoch == run.epoch)
                if stop.requested:  # Ctrl-C during validation or saving: the epoch is complete and on disk
                    raise KeyboardInterrupt
                if cfg.on_epoch_end is not None and cfg.on_epoch_end(dict(row)) and run.epoch < int(cfg.epochs or 0):
                    stopped_early = True
                    break
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        # Ctrl-C: write where we are (mid-epoch included) so --resume continues from here
        run.save_interrupted()
        msg = (
            f"interrupted at epoch {run.epoch + (1 if run.batch_in_epoch else 0)}, step {run.step}; "
            f"checkpoint saved to {run_dir / CHECKPOINT}. Resume with: torchkeep train --resume {run_dir}"
        )
        raise TrainingInterrupted(msg, run_dir) from None
    finally:  # whatever ended the loop, the queued files are written, the event file flushed and closed
        run.files.close()
        if writer is not None:
            writer.close()
    run.files.raise_error()  # a write of the last epoch failed (disk full): the run did not end well

    curves = confusion = None
    if cfg.plots and run.history and run.d.main:
        from torchkeep.training._plots import plot_confusion, plot_curves

        title = f"{cfg.arch} on {cfg.data}"
        curves = plot_curves(run.history, run_dir / "curves.png", title=title)
        if run.best_cm is not None:
            confusion = plot_confusion(
                run.best_cm, run.classes, run_dir / "confusion.png",
                title=f"{title}: validation, best epoch {run.best_epoch}",
            )
    final = dict(run.history[-1]) if run.history else {}
    return TrainResult(
        run_dir=run_dir,
        best_path=run_dir / BEST,
        last_path=run_dir / LAST,
        checkpoint_path=run_dir / (DCP_DIR if cfg.checkpoint_format == "dcp" else CHECKPOINT),
        metric=str(cfg.metric),
        best_value=float(run.best_value) if run.best_value is not None else float("nan"),
        best_epoch=run.best_epoch,
        epochs=int(cfg.epochs or 0),
        epochs_done=run.epoch,
        epochs_this_run=epochs_this_run,
        resumed_from=run.resumed_from,
        stopped_early=stopped_early,
        final=final,
        history=run.history,
        classes=run.classes,
        train_size=len(run.train_ds),
        val_size=len(run.val_ds),
        skipped_files=len(run.source.skipped),
        device=str(run.device),
        amp=run.amp,
        seconds=time.perf_counter() - t_start,
        images_per_second=train_images / train_seconds if train_seconds > 0 else 0.0,
        top_k=[run_dir / e["file"] for e in run.top_k if e.get("file")],
        config_path=run_dir / "config.json",
        metrics_csv=run_dir / "metrics.csv",
        tensorboard_dir=(run_dir / "tensorboard") if cfg.tensorboard else None,
        curves_png=curves,
        confusion_png=confusion,
        notes=run.notes + ([f"skipped {len(run.source.skipped)} unreadable files"] if run.source.skipped else []),
    )


def _console(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False, file=sys.stderr)
