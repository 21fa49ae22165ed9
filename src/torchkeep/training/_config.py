"""What a training run takes and returns: ``TrainConfig`` (the user's settings, ``None`` = the default),
resolved once into ``RunConfig`` (every default filled in, every value checked), and ``TrainResult``.

The choices and defaults live here and nowhere else; ``torchkeep train --help`` reads them, so this module
imports nothing heavy (no torch).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep.errors import UsageError

if TYPE_CHECKING:
    from torchkeep.training._progress import TrainProgress

__all__ = [
    "CHECKPOINT_FORMATS", "DEFAULTS", "DEFAULT_LR", "DEFAULT_WD", "DEVICES", "FREEZE", "HEADS", "METRICS",
    "OPTIMIZERS", "SCHEDULERS", "RunConfig", "TrainConfig", "TrainResult",
]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N, mps:N
HEADS = ("replace", "append")
FREEZE = ("backbone",)
CHECKPOINT_FORMATS = ("torch", "dcp")

# Defaults for fields left as None. Measured on the embedded digits with cifar10_cnn on 2 CPU cores:
# AdamW 3e-3 + cosine over 15 epochs of batch 32 reaches ~98.5% validation accuracy in a few seconds
# (SGD needs a larger lr and more epochs to be as reliable).
DEFAULTS: dict[str, Any] = {
    "arch": "cifar10_cnn",
    "data": "digits",
    "epochs": 15,
    "batch_size": 32,
    "optimizer": "adamw",
    "scheduler": "cosine",
    "seed": 0,
    "val_fraction": 0.2,
    "augment": False,
    "keep": 1,
    "metric": "val_acc",
    "head": "replace",
    "checkpoint_format": "torch",
    "async_checkpoint": False,
}
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}
DEFAULT_WD = {"adamw": 0.01, "sgd": 5e-4}
_DEFAULT_LR, _DEFAULT_WD = DEFAULT_LR, DEFAULT_WD  # their names before (bench/ imports them)
DEFAULT_DEVICE = "auto"
DEFAULT_WORKERS = 0

# fields that must match the checkpoint when resuming (the weights or optimizer state would not fit)
IDENTITY_FIELDS = (
    "arch", "data", "num_classes", "input_size", "head", "optimizer", "subset", "val_fraction", "seed",
    "checkpoint_format",
)
# fields a resumed run does not take from its saved config: where to resume from, and the callbacks
_NOT_INHERITED = ("resume", "progress", "on_epoch_end")

ProgressFn = Callable[["TrainProgress"], None]
EpochEndFn = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` means "the default", or "as before" when resuming.

    :meth:`resolved` turns it into a :class:`RunConfig`, where every default is filled in and every value checked.

    Attributes:
        arch: architecture name (``torchkeep models`` lists them); default ``cifar10_cnn``.
        data: ``digits``, ``cifar10``, ``fashion-mnist`` or ``folder:PATH``; default ``digits``.
        out: run directory (created); default ``runs/<arch>-<data>``; the resumed run's directory on resume.
        epochs: total epochs; default 15. On resume, the new total: a run that finished its schedule trains
            the added epochs as a new segment of it (a warm restart, ``training._schedule``), an unfinished
            one has its schedule end at the new total.
        batch_size: training batch size; default 32.
        lr: learning rate (the peak of the schedule); default 3e-3 for adamw, 0.05 for sgd. On resume: the
            peak of a new segment (the run's own when None).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        weight_decay: default 0.01 for adamw, 5e-4 for sgd.
        scheduler: ``cosine`` (per epoch, to 0 at the last epoch), ``step`` (x0.1 every third of the run) or
            ``none``; on resume, the kind of a new segment.
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``.
        amp: mixed precision; None = on when training on CUDA. Ignored (with a note) elsewhere.
        pretrained: weights file or torchvision weights name to start from.
        freeze: ``backbone`` trains only the head (warns without ``pretrained``: the backbone would stay random).
        head: how the model gets the dataset's classes: ``replace`` (default) its last classifier layer, or
            ``append`` ``Linear(outputs, classes)`` after it (the seeds' VGG16 recipe:
            ``vgg.classifier.add_module("add_linear", nn.Linear(1000, 10))``); see ``torchkeep.models.build``.
        num_classes: model outputs; default the dataset's number of classes.
        input_size: model input size ``H`` or ``(H, W)``; default the dataset's native size (digits 8x8,
            cifar10 32x32), or the architecture's own for folders of varied sizes.
        seed: seeds the split, initialisation, data order and augmentation.
        val_fraction: share of the data held out for validation (seeded split).
        subset: use only the first N images of the dataset (quick experiments, tests).
        augment: standard augmentation from the spec's transform (random crop/flip...).
        workers: DataLoader worker processes; default 0 (in-process: fastest for small images).
        threads: CPU threads for torch during the run; default 1 for inputs of 16x16 pixels or fewer on
            the CPU (measured: tiny convolutions gain nothing from intra-op threads, and on a busy 2-core
            machine two spinning threads made the digits run 25x slower), torch's default otherwise.
        data_root: where cifar10 / fashion-mnist live (``--data-root``).
        download: allow torchvision to download cifar10 / fashion-mnist.
        keep: how many best model files to keep (``best.safetensors`` is always the best; K>1 also keeps
            ``top/epochNNN-<metric>.safetensors`` for the K best epochs).
        metric: what "best" means: ``val_acc`` (default), ``val_loss``, ``train_acc``, ``train_loss``.
        resume: a run directory (or its ``checkpoint.pt``) to continue exactly.
        overwrite: allow starting a new run in a directory that already holds one.
        progress: called with a :class:`~torchkeep.training.TrainProgress` as the run goes (each epoch's start,
            every 10 steps with the running loss and accuracy, each epoch's metrics), in the process of
            rank 0 only; ``torchkeep train`` draws its progress bars with it. None (or False): no reports.
        tensorboard: write TensorBoard event files under ``<out>/tensorboard``.
        plots: write ``curves.png`` and ``confusion.png`` at the end.
        checkpoint_every: also write the resume checkpoint every N training steps (global batches) within an
            epoch; a run killed mid-epoch then resumes from there, on any number of processes.
        checkpoint_format: ``torch`` (``checkpoint.pt``, one file) or ``dcp`` (``checkpoint.dcp/``, a
            torch.distributed.checkpoint directory: every process writes its part).
        async_checkpoint: write the DCP checkpoint in the background (``checkpoint_format="dcp"`` only):
            training goes on while it is written; it becomes ``checkpoint.dcp`` only once every process wrote
            its part, the next checkpoint and the run's end wait for it. Default off (as before on resume).
        sync_bn: synchronise BatchNorm statistics across processes (``SyncBatchNorm``; CUDA only).
        find_unused_parameters: let DistributedDataParallel find, each step, the parameters the loss did not
            use (``DistributedDataParallel(find_unused_parameters=True)``): needed by models with a branch
            that gets no gradient (an unused layer, a head the loss ignores); it costs a graph walk per step.
            None: on for architectures with auxiliary heads (Inception's ``AuxLogits``, GoogLeNet's
            ``aux1`` / ``aux2``: the loss uses the main logits), off otherwise. Only in a process group.
        on_epoch_end: called with each epoch's metrics after its checkpoint is written; return True to
            stop (the run stays resumable: early stopping, time boxes).
    """

    arch: str | None = None
    data: str | None = None
    out: str | os.PathLike[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    scheduler: str | None = None
    device: str = DEFAULT_DEVICE
    amp: bool | None = None
    pretrained: str | None = None
    freeze: str | None = None
    head: str | None = None
    num_classes: int | None = None
    input_size: int | tuple[int, int] | None = None
    seed: int | None = None
    val_fraction: float | None = None
    subset: int | None = None
    augment: bool | None = None
    workers: int = DEFAULT_WORKERS
    threads: int | None = None
    data_root: str | None = None
    download: bool = True
    keep: int | None = None
    metric: str | None = None
    resume: str | os.PathLike[str] | None = None
    overwrite: bool = False
    progress: ProgressFn | bool | None = None
    tensorboard: bool = True
    plots: bool = True
    checkpoint_every: int | None = None
    checkpoint_format: str | None = None
    async_checkpoint: bool | None = None
    sync_bn: bool = False
    find_unused_parameters: bool | None = None
    on_epoch_end: EpochEndFn | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready settings; callbacks are left out."""
        return _settings(self)

    def resolved(self, saved: dict[str, Any] | None = None) -> RunConfig:
        """Fill ``None`` fields from ``saved`` (the resumed run's config) and then the defaults; check every value.

        Raises:
            UsageError: a value out of range or not among the choices (one line naming it and the choices).
        """
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, v in values.items():
            if v is None and saved is not None and saved.get(name) is not None and name not in _NOT_INHERITED:
                values[name] = saved[name]
        for name, default in DEFAULTS.items():
            if values[name] is None:
                values[name] = default
        opt = values["optimizer"]
        _check_choice("optimizer", opt, OPTIMIZERS)
        if values["lr"] is None:
            values["lr"] = DEFAULT_LR[opt]
        if values["weight_decay"] is None:
            values["weight_decay"] = DEFAULT_WD[opt]
        if values["out"] is None:
            values["out"] = values["resume"] or Path("runs") / f"{values['arch']}-{_slug(values['data'])}"
        values["out"] = Path(os.fspath(values["out"]))
        if values["resume"] is not None:
            values["resume"] = Path(os.fspath(values["resume"]))
        if isinstance(values["input_size"], list):
            values["input_size"] = tuple(values["input_size"])
        values["progress"] = _progress_fn(values["progress"])
        cfg = RunConfig(**values)
        _validate(cfg)
        return cfg


@dataclass(frozen=True)
class RunConfig:
    """A :class:`TrainConfig` resolved: every default filled in, every value checked (``TrainConfig.resolved``).

    The fields are those of ``TrainConfig``. Still ``None`` only where the value comes from what the run finds
    (the dataset, the device) or where "none" is a setting: ``amp`` (on with CUDA), ``num_classes`` and
    ``input_size`` (the dataset's), ``threads`` (1 for tiny inputs on a CPU), ``pretrained``, ``freeze``,
    ``subset``, ``data_root``, ``resume``, ``checkpoint_every`` (never), ``find_unused_parameters`` (as the
    architecture needs), ``progress`` and ``on_epoch_end``.
    """

    arch: str
    data: str
    out: Path
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    scheduler: str
    device: str
    amp: bool | None
    pretrained: str | None
    freeze: str | None
    head: str
    num_classes: int | None
    input_size: int | tuple[int, int] | None
    seed: int
    val_fraction: float
    subset: int | None
    augment: bool
    workers: int
    threads: int | None
    data_root: str | None
    download: bool
    keep: int
    metric: str
    resume: Path | None
    overwrite: bool
    progress: ProgressFn | None
    tensorboard: bool
    plots: bool
    checkpoint_every: int | None
    checkpoint_format: str
    async_checkpoint: bool
    sync_bn: bool
    find_unused_parameters: bool | None
    on_epoch_end: EpochEndFn | None = field(default=None, repr=False)

    @property
    def lower_is_better(self) -> bool:
        """The best epoch is the one with the lowest ``metric`` (a loss), else the highest (an accuracy)."""
        return self.metric.endswith("loss")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready settings (``config.json``, the checkpoint's ``config``); callbacks are left out."""
        return _settings(self)


def _settings(cfg: TrainConfig | RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "on_epoch_end":
            continue
        if f.name == "progress":  # a callback: recorded as whether progress was reported
            v = bool(v)
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _progress_fn(progress: ProgressFn | bool | None) -> ProgressFn | None:
    if progress is None or progress is False:
        return None
    if progress is True or not callable(progress):
        raise UsageError(
            f"progress must be a callable taking a TrainProgress, not {progress!r}: the library draws nothing",
            fix="pass progress=your_function (torchkeep train draws progress bars with it), or leave it out",
        )
    return progress


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}", fix="use one of: " + ", ".join(choices))


def _at_least(name: str, value: int | None, low: int, unit: str = "") -> None:
    if value is not None and value < low:
        raise UsageError(f"{name} must be at least {low}{unit}, not {value}")


def _validate(cfg: RunConfig) -> None:
    _check_choice("scheduler", cfg.scheduler, SCHEDULERS)
    _check_choice("metric", cfg.metric, METRICS)
    if cfg.device not in DEVICES and not str(cfg.device).startswith(("cuda:", "mps:")):
        raise UsageError(f"unknown device {cfg.device!r}", fix="use auto, cpu, cuda, cuda:N or mps")
    if cfg.freeze is not None and cfg.freeze not in FREEZE:
        raise UsageError(f"cannot freeze {cfg.freeze!r}", fix="use --freeze backbone")
    if cfg.head not in HEADS:
        raise UsageError(f"unknown head {cfg.head!r}", fix="use --head replace or --head append")
    _check_choice("checkpoint format", cfg.checkpoint_format, CHECKPOINT_FORMATS)
    if cfg.async_checkpoint and cfg.checkpoint_format != "dcp":
        raise UsageError("--async-checkpoint writes a DCP checkpoint in the background, not a checkpoint.pt",
                         fix="add --checkpoint-format dcp, or leave out --async-checkpoint")
    _at_least("epochs", cfg.epochs, 1)
    _at_least("batch-size", cfg.batch_size, 1)
    _at_least("keep", cfg.keep, 1)
    _at_least("num-classes", cfg.num_classes, 1)
    _at_least("subset", cfg.subset, 2, " images")
    _at_least("checkpoint-every", cfg.checkpoint_every, 1, " step")
    if not 0 < cfg.lr < math.inf:
        raise UsageError(f"learning rate must be positive (and finite), not {cfg.lr}")
    if not 0 <= cfg.weight_decay < math.inf:
        raise UsageError(f"weight-decay must be >= 0, not {cfg.weight_decay:g}")
    if not 0 <= cfg.val_fraction < 1:
        raise UsageError(f"val-fraction must be in [0, 1), not {cfg.val_fraction}")
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"threads must be >= 1, not {cfg.threads}")
    if cfg.workers < 0:
        raise UsageError(f"workers must be >= 0, not {cfg.workers}")


def _slug(data: str) -> str:
    if data.startswith("folder:"):
        return Path(data[len("folder:") :]).name or "folder"
    return data


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run directory.
        best_path: the best model file (by ``metric``), self-describing (``torchkeep.load``).
        last_path: the model after the last epoch.
        checkpoint_path: the resume checkpoint, ``checkpoint.pt`` or ``checkpoint.dcp`` (``--resume run_dir``).
        metric: the metric that chose the best model; best_value / best_epoch: its best value and epoch.
        epochs: total epochs of the run; epochs_done: epochs completed; epochs_this_run: run by this call.
        resumed_from: the epoch the run resumed from (0 for a fresh run).
        stopped_early: ``on_epoch_end`` asked to stop before ``epochs``.
        final: metrics of the last epoch (train/val loss and accuracy, lr).
        history: metrics of every epoch.
        classes: class names (saved in the model files).
        train_size / val_size: images in each split; skipped_files: unreadable dataset files left out.
        device / amp: where and how it trained.
        seconds: wall time of this call; images_per_second: training throughput (train images per second, all processes together).
        top_k: the kept top-k model files, best first.
        config_path, metrics_csv, tensorboard_dir, curves_png, confusion_png: the other run files
            (None when disabled).
    """

    run_dir: Path
    best_path: Path
    last_path: Path
    checkpoint_path: Path
    metric: str
    best_value: float
    best_epoch: int
    epochs: int
    epochs_done: int
    epochs_this_run: int
    resumed_from: int
    stopped_early: bool
    final: dict[str, Any]
    history: list[dict[str, Any]]
    classes: list[str]
    train_size: int
    val_size: int
    skipped_files: int
    device: str
    amp: bool
    seconds: float
    images_per_second: float
    top_k: list[Path]
    config_path: Path
    metrics_csv: Path
    tensorboard_dir: Path | None
    curves_png: Path | None
    confusion_png: Path | None
    notes: list[str] = field(default_factory=list)
