"""``train(config)``: the training loop, with kill-safe checkpoints and exact resume.

Order of work per epoch (why: the checkpoint is the single source of truth, written last):

1. train on the epoch's batches (data order = f(seed, epoch), independent of global RNG state);
2. validate in ``eval()`` mode under ``torch.inference_mode()``;
3. update the in-memory state (history, best, epoch counter; the learning rate is a function of the epoch);
4. write ``best`` / top-k / ``last`` model files, then ``checkpoint.pt``, then ``metrics.csv`` - each atomic.

A kill before 4 finishes leaves the previous checkpoint; resuming replays the epoch and, since every
RNG and the data order are restored, produces the very same numbers.

Here: the run's setup (device, data, model, optimizer, process group) and the loop over epochs. One epoch is
``_epoch``, what it writes ``_saving``, resuming ``_resume``; the settings are resolved once (``_config``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from torchkeep._atomic import atomic_write_bytes
from torchkeep._device import resolve_device
from torchkeep._preprocess import transform_for
from torchkeep.data import ImageSource, TransformedSubset, open_dataset, split_indices
from torchkeep.errors import (
    CompatibilityError,
    TorchkeepError,
    TorchkeepWarning,
    TrainingInterrupted,
    UsageError,
)
from torchkeep.models import build, find_head, list_models
from torchkeep.models._heads import get_module
from torchkeep.training._checkpoint import has_checkpoint
from torchkeep.training._config import RunConfig, TrainConfig, TrainResult
from torchkeep.training._distributed import (
    ENV_LOG_SAMPLES,
    SINGLE,
    Dist,
    GlobalBatchSampler,
    check_world,
    checkpoint_group,
    init_from_env,
    launched_by_torchrun,
    share,
    shutdown,
)
from torchkeep.training._epoch import Interrupt, end_epoch, seed_everything, train_epoch
from torchkeep.training._layout import (
    BEST,
    CHECKPOINT,
    CONFIG,
    DCP_DIR,
    LAST,
    METRICS_CSV,
    TENSORBOARD,
    clean_stale_temp,
)
from torchkeep.training._progress import EPOCH_END, RUN_END, report
from torchkeep.training._resume import open_resume, restore
from torchkeep.training._run import Data, Run
from torchkeep.training._saving import save_interrupted, wait_checkpoint, write_metrics, write_plots
from torchkeep.training._schedule import Segment
from torchkeep.training._tensorboard import TensorBoard
from torchkeep.training._writer import FileWriter

# BEST, CHECKPOINT, LAST: the run's layout, read from here by torchkeep._modelpath
__all__ = ["BEST", "CHECKPOINT", "LAST", "TrainingInterrupted", "train"]


# --------------------------------------------------------------------------- setup


def _device_and_amp(cfg: RunConfig, d: Dist, notes: list[str]) -> tuple[torch.device, bool]:
    device = resolve_device(cfg.device)
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        notes.append(f"--amp has an effect on CUDA only; training in float32 on {device.type}")
        amp = False
    return device, amp


def _open_data(cfg: RunConfig) -> tuple[ImageSource, list[int], list[int]]:
    """The dataset (its first ``subset`` images) and the seeded train / validation split."""
    src = open_dataset(cfg.data, root=cfg.data_root, split="train", download=cfg.download)
    if cfg.subset is not None and cfg.subset < len(src):
        src = dataclasses.replace(src, targets=src.targets[: cfg.subset])
    train_idx, val_idx = split_indices(len(src), cfg.val_fraction, cfg.seed)
    if not train_idx:
        raise UsageError("no training images left after the validation split", fix="lower --val-fraction")
    return src, train_idx, val_idx


def _class_names(cfg: RunConfig, src: ImageSource) -> list[str]:
    """The model's outputs: the dataset's classes, then ``class_N`` up to ``--num-classes``."""
    num_classes = cfg.num_classes if cfg.num_classes is not None else src.num_classes
    if num_classes < src.num_classes:
        raise UsageError(
            f"--num-classes {num_classes} is smaller than the {src.num_classes} classes of {cfg.data}",
            fix=f"use --num-classes {src.num_classes} or leave it out",
        )
    return list(src.classes) + [f"class_{i}" for i in range(src.num_classes, num_classes)]


def _in_channels(arch: str, channels: int) -> int | None:
    """The dataset's channels for architectures built from scratch; None (3, RGB) for torchvision's,
    whose preprocessing converts grayscale images to RGB (their stem takes 3 channels)."""
    info = next((a for a in list_models() if a.name == arch), None)
    return None if info is not None and info.source == "torchvision" else channels


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


def _build_model(cfg: RunConfig, src: ImageSource, classes: list[str], notes: list[str]) -> tuple[nn.Module, Any]:
    """The model (``models.build``) and its spec, which records the dataset and the split."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TorchkeepWarning)
        model = build(
            cfg.arch,
            num_classes=len(classes),
            in_channels=_in_channels(cfg.arch, src.channels),
            input_size=cfg.input_size if cfg.input_size is not None else src.image_size,
            pretrained=cfg.pretrained,
            freeze=cfg.freeze,
            head=cfg.head,
            class_names=classes,
        )
    for w in caught:  # shown now (the CLI prints torchkeep's as one line) and kept in the result's notes
        if issubclass(w.category, TorchkeepWarning):
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    spec: Any = model.torchkeep_spec
    if cfg.pretrained is None:
        spec = _with_defaults_for_scratch(spec)
    spec.provenance.dataset = cfg.data
    spec.extra["training"] = {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "subset": cfg.subset, "data": cfg.data}
    model.torchkeep_spec = spec
    return model, spec


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _data(
    cfg: RunConfig, d: Dist, device: torch.device, src: ImageSource, split: tuple[list[int], list[int]], spec: Any,
    batchnorm: bool, notes: list[str],
) -> Data:
    """The two splits through the spec's transforms, the sampler of global batches and the loaders."""
    train_idx, val_idx = split
    # deterministic transforms are cached in memory (same values, no per-epoch decode) for small
    # datasets and in-process loading
    cache_ok = cfg.workers == 0 and len(src) <= 60_000
    train_ds = TransformedSubset(src, train_idx, transform_for(spec, train=True, augment=cfg.augment),
                                 cache=cache_ok and not cfg.augment)
    val_ds = TransformedSubset(src, val_idx, transform_for(spec, train=False), cache=cache_ok)
    pin = device.type == "cuda"
    check_world(d, cfg.batch_size, device.type, cfg.sync_bn)
    # BatchNorm cannot train on a batch of one image (a single value per channel once features are
    # 1x1): the epoch's lone last image is left out, a different one each epoch (the order is shuffled)
    drop_last = len(train_ds) % cfg.batch_size == 1 and len(train_ds) > 1 and batchnorm
    if drop_last:
        notes.append(
            f"1 training image per epoch left out: {len(train_ds)} images in batches of {cfg.batch_size} "
            "leave a last batch of one, which BatchNorm cannot train on"
        )
    sampler = GlobalBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, d, drop_single=drop_last)
    loader_gen = torch.Generator()
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        train_ds, batch_sampler=sampler, num_workers=cfg.workers,
        pin_memory=pin, generator=loader_gen, persistent_workers=False,
    )
    # exact distributed evaluation: each validation image is evaluated once, by one process
    lo, hi = share(len(val_ds), d.rank, d.world)
    val_part = val_ds if d.world == 1 else torch.utils.data.Subset(val_ds, range(lo, hi))
    val_loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        val_part, batch_size=max(256, cfg.batch_size), shuffle=False, num_workers=cfg.workers, pin_memory=pin
    )
    return Data(src, train_ds, val_ds, sampler, loader, loader_gen, val_loader)


def _optimizer(cfg: RunConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, list[nn.Module]]:
    """The optimizer of the trainable parameters, and the BatchNorm layers of a frozen backbone."""
    params = [p for p in model.parameters() if p.requires_grad]
    frozen_norms: list[nn.Module] = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in m.parameters(recurse=False))
    ] if cfg.freeze else []
    if not params:
        raise UsageError(f"{cfg.arch} has no trainable parameters (all frozen)", fix="leave out --freeze")
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, frozen_norms


def _wrap_ddp(run: Run) -> None:
    from torch.nn.parallel import DistributedDataParallel

    cfg, d = run.cfg, run.d
    run.notes.append(
        f"{d.world} processes ({'nccl' if run.device.type == 'cuda' else 'gloo'}), "
        f"{cfg.batch_size} images per global batch"
    )
    if cfg.sync_bn:
        run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
    ids = [run.device.index] if run.device.type == "cuda" else None
    unused = cfg.find_unused_parameters
    if unused is None and _has_aux_heads(run.model):
        unused = True
        run.notes.append("auxiliary heads the loss does not use: DDP finds the unused parameters each step")
    # the wrapper trains; run.model (no "module." prefix) is what every file holds
    run.ddp = DistributedDataParallel(run.model, device_ids=ids, find_unused_parameters=bool(unused))


def _has_aux_heads(model: nn.Module) -> bool:
    """Auxiliary classifier heads (Inception's ``AuxLogits``, GoogLeNet's ``aux1``) that train: their logits
    are computed in train mode, but the loss uses the main logits alone, so they never get a gradient."""
    try:
        aux = find_head(model).aux_paths
    except CompatibilityError:  # no head torchkeep recognises: nothing known to be unused
        return False
    return any(p.requires_grad for path in aux for p in get_module(model, path).parameters())


def setup(cfg: RunConfig, ckpt: dict[str, Any] | None, d: Dist, files: FileWriter) -> Run:
    """Everything the run needs, from a fresh start or where ``ckpt`` left it."""
    notes: list[str] = []
    device, amp = _device_and_amp(cfg, d, notes)
    src, train_idx, val_idx = _open_data(cfg)
    classes = _class_names(cfg, src)
    seed_everything(cfg.seed)  # initialisation of a fresh model depends on the seed only
    model, spec = _build_model(cfg, src, classes, notes)
    model = model.to(device)
    data = _data(cfg, d, device, src, (train_idx, val_idx), spec, _has_batchnorm(model), notes)
    opt, frozen_norms = _optimizer(cfg, model)
    run = Run(
        cfg=cfg, d=d, dir=cfg.out, files=files, device=device, amp=amp, spec=spec, model=model, classes=classes,
        data=data, opt=opt, scaler=torch.amp.GradScaler("cuda", enabled=amp),
        segments=[Segment(0, cfg.epochs, cfg.lr, cfg.scheduler)], frozen_norms=frozen_norms, notes=notes,
    )
    if ckpt is not None:
        restore(run, ckpt)
    else:
        seed_everything(cfg.seed)
    if d.world > 1:
        _wrap_ddp(run)
    if cfg.async_checkpoint:
        run.checkpoint_group = checkpoint_group(d)
    return run


def _threads(cfg: RunConfig, run: Run) -> int | None:
    """CPU threads for the run: ``--threads``, else 1 for tiny inputs on a CPU (else torch's own)."""
    h, w = run.spec.input_size
    if cfg.threads is None and run.device.type == "cpu" and h * w <= 16 * 16:
        return 1
    return cfg.threads


# --------------------------------------------------------------------------- public entry point


def train(config: TrainConfig) -> TrainResult:
    """Train an image classifier; every epoch writes model files and a resume checkpoint atomically.

    Started by torchrun (``torchkeep train --nproc N``, ``torchrun -m torchkeep train``: ``RANK`` and
    ``WORLD_SIZE`` are set), each process joins the process group and trains its share of every global
    batch with DistributedDataParallel; rank 0 alone writes files and reports progress (see
    ``training._distributed``).

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


def _resolve(config: TrainConfig, d: Dist) -> tuple[RunConfig, dict[str, Any] | None]:
    """The run's settings, once; and the checkpoint it resumes from."""
    if d.restart > 0 and config.resume is None:
        out = Path(os.fspath(config.out)) if config.out is not None else config.resolved().out
        if has_checkpoint(out):
            # torchrun restarted the group after a failure (--max-restarts): continue from the last complete
            # checkpoint
            config = dataclasses.replace(config, resume=out, out=None)
    ckpt = saved = None
    if config.resume is not None:
        ckpt, saved = open_resume(config)
    cfg = config.resolved(saved)
    if not d.main:  # rank 0 alone reports progress
        cfg = dataclasses.replace(cfg, progress=None)
    return cfg, ckpt


def _prepare_dir(cfg: RunConfig, resuming: bool, d: Dist) -> None:
    run_dir = cfg.out
    if not resuming and has_checkpoint(run_dir) and not cfg.overwrite:
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
        clean_stale_temp(run_dir)


def _sample_log(d: Dist) -> IO[str] | None:
    """The test hook ENV_LOG_SAMPLES: each rank appends the sample ids of every step to its own file."""
    log = os.environ.get(ENV_LOG_SAMPLES)
    return open(f"{log}.rank{d.rank}", "a") if log else None


def _train(config: TrainConfig, d: Dist, t_start: float) -> TrainResult:
    cfg, ckpt = _resolve(config, d)
    _prepare_dir(cfg, ckpt is not None, d)
    # alone with checkpoint.pt, files are written off the training thread (in order, from snapshots)
    files = FileWriter(background=d.world == 1 and cfg.checkpoint_format != "dcp")
    prev_threads = torch.get_num_threads()
    sample_log = None
    run = None
    try:
        sample_log = _sample_log(d)
        run = setup(cfg, ckpt, d, files)
        run.sample_log = sample_log
        threads = _threads(cfg, run)
        if threads:
            torch.set_num_threads(threads)
        return _train_loop(run, ckpt is not None, t_start)
    finally:
        torch.set_num_threads(prev_threads)
        files.close()  # also when setup failed: the writer thread ends
        if sample_log is not None:
            sample_log.close()
        if run is not None:
            run.ddp = None  # the wrapper goes before the process group (see shutdown)


# --------------------------------------------------------------------------- the loop over epochs


@dataclass
class _Pace:
    """What this call trained: epochs, and images and seconds in the training batches (throughput)."""

    epochs: int = 0
    images: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def _start_files(run: Run, resumed: bool) -> TensorBoard | None:
    """config.json, a metrics.csv that matches the checkpoint, and the TensorBoard writer (rank 0)."""
    cfg, st = run.cfg, run.state
    if resumed and st.epoch >= cfg.epochs and not st.mid_epoch:
        run.notes.append(f"the run already completed {st.epoch} epochs; raise --epochs to train further")
    if run.d.main:
        atomic_write_bytes(run.dir / CONFIG, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    if resumed:
        write_metrics(run)  # a kill after the last checkpoint may have left metrics.csv one epoch behind
    if not (cfg.tensorboard and run.d.main):
        return None
    writer = TensorBoard(run.dir / TENSORBOARD, purge_step=st.epoch + 1 if resumed else None)
    if not resumed:
        submit = run.files.submit if run.files.background else None
        writer.first_batch(run.model, run.data.train_ds, run.device, submit=submit)
    return writer


def _checkpoint_path(run: Run) -> Path:
    return run.dir / (DCP_DIR if run.cfg.checkpoint_format == "dcp" else CHECKPOINT)


def _interrupted(run: Run) -> TrainingInterrupted:
    """Ctrl-C: write where we are (mid-epoch included) so --resume continues from here."""
    save_interrupted(run)
    st = run.state
    msg = (
        f"interrupted at epoch {st.epoch + (1 if st.mid_epoch else 0)}, step {st.step}; "
        f"checkpoint saved to {_checkpoint_path(run)}. Resume with: torchkeep train --resume {run.dir}"
    )
    return TrainingInterrupted(msg, run.dir)


def _epochs(run: Run, writer: TensorBoard | None) -> _Pace:
    """Train epoch after epoch up to ``epochs`` (or until ``on_epoch_end`` says stop)."""
    cfg, st = run.cfg, run.state
    pace = _Pace()
    try:
        with Interrupt(enabled=run.d.world == 1) as stop:
            while st.epoch < cfg.epochs:
                t0 = time.perf_counter()
                tm = train_epoch(run, stop)
                dt = time.perf_counter() - t0  # the training batches alone
                pace.seconds += dt
                pace.images += int(tm["seen"])
                row, improved = end_epoch(run, tm, dt, writer)
                pace.epochs += 1
                report(cfg.progress, EPOCH_END, st.epoch, cfg.epochs, metrics=dict(row), improved=improved)
                if stop.requested:  # Ctrl-C during validation or saving: the epoch is complete and on disk
                    raise KeyboardInterrupt
                if cfg.on_epoch_end is not None and cfg.on_epoch_end(dict(row)) and st.epoch < cfg.epochs:
                    pace.stopped_early = True
                    break
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise _interrupted(run) from None
    finally:  # whatever ended the loop, the queued files are written, the event file flushed and closed
        try:
            wait_checkpoint(run)  # --async-checkpoint: the last checkpoint is whole and in place
        finally:
            run.files.close()
            if writer is not None:
                writer.close()
    run.files.raise_error()  # a write of the last epoch failed (disk full): the run did not end well
    report(cfg.progress, RUN_END, st.epoch, cfg.epochs)
    return pace


def _result(run: Run, pace: _Pace, t_start: float) -> TrainResult:
    cfg, st, run_dir = run.cfg, run.state, run.dir
    curves, confusion = write_plots(run)
    skipped = len(run.data.source.skipped)
    return TrainResult(
        run_dir=run_dir,
        best_path=run_dir / BEST,
        last_path=run_dir / LAST,
        checkpoint_path=_checkpoint_path(run),
        metric=cfg.metric,
        best_value=float(st.best_value) if st.best_value is not None else float("nan"),
        best_epoch=st.best_epoch,
        epochs=cfg.epochs,
        epochs_done=st.epoch,
        epochs_this_run=pace.epochs,
        resumed_from=st.resumed_from,
        stopped_early=pace.stopped_early,
        final=dict(st.history[-1]) if st.history else {},
        history=st.history,
        classes=run.classes,
        train_size=len(run.data.train_ds),
        val_size=len(run.data.val_ds),
        skipped_files=skipped,
        device=str(run.device),
        amp=run.amp,
        seconds=time.perf_counter() - t_start,
        images_per_second=pace.images / pace.seconds if pace.seconds > 0 else 0.0,
        top_k=[run_dir / e["file"] for e in st.top_k if e.get("file")],
        config_path=run_dir / CONFIG,
        metrics_csv=run_dir / METRICS_CSV,
        tensorboard_dir=(run_dir / TENSORBOARD) if cfg.tensorboard else None,
        curves_png=curves,
        confusion_png=confusion,
        notes=run.notes + ([f"skipped {skipped} unreadable files"] if skipped else []),
    )


def _train_loop(run: Run, resumed: bool, t_start: float) -> TrainResult:
    writer = _start_files(run, resumed)
    pace = _epochs(run, writer)
    return _result(run, pace, t_start)
