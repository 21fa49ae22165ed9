"""``TrainConfig`` and ``TrainResult``: what a training run takes and what it returns."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep.errors import UsageError

__all__ = ["DEFAULTS", "OPTIMIZERS", "SCHEDULERS", "TrainConfig", "TrainResult"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
DEVICES = ("auto", "cpu", "cuda", "mps")

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
}
_DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}
_DEFAULT_WD = {"adamw": 0.01, "sgd": 5e-4}

# fields that must match the checkpoint when resuming (the weights or optimizer state would not fit)
IDENTITY_FIELDS = (
    "arch", "data", "num_classes", "input_size", "head", "optimizer", "subset", "val_fraction", "seed",
    "checkpoint_format",
)
HEADS = ("replace", "append")
CHECKPOINT_FORMATS = ("torch", "dcp")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` means "the default", or "as before" when resuming.

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
        progress: show progress bars (stderr) with live loss and accuracy.
        tensorboard: write TensorBoard event files under ``<out>/tensorboard``.
        plots: write ``curves.png`` and ``confusion.png`` at the end.
        checkpoint_every: also write the resume checkpoint every N training steps (global batches) within an
            epoch; a run killed mid-epoch then resumes from there, on any number of processes.
        checkpoint_format: ``torch`` (``checkpoint.pt``, one file) or ``dcp`` (``checkpoint.dcp/``, a
            torch.distributed.checkpoint directory: every process writes its part).
        sync_bn: synchronise BatchNorm statistics across processes (``SyncBatchNorm``; CUDA only).
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
    device: str = "auto"
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
    workers: int = 0
    threads: int | None = None
    data_root: str | None = None
    download: bool = True
    keep: int | None = None
    metric: str | None = None
    resume: str | os.PathLike[str] | None = None
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    checkpoint_every: int | None = None
    checkpoint_format: str | None = None
    sync_bn: bool = False
    on_epoch_end: Callable[[dict[str, Any]], bool | None] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready settings (``config.json``); callbacks are left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "on_epoch_end":
                continue
            v = getattr(self, f.name)
            if isinstance(v, os.PathLike):
                v = os.fspath(v)
            if isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def resolved(self, saved: dict[str, Any] | None = None) -> TrainConfig:
        """Fill ``None`` fields from ``saved`` (the resumed run's config) and then the defaults; validate."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, v in values.items():
            if v is None and saved is not None and saved.get(name) is not None and name not in ("resume",):
                values[name] = saved[name]
        for name, default in DEFAULTS.items():
            if values[name] is None:
                values[name] = default
        opt = values["optimizer"]
        if opt not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {opt!r}", fix="use one of: " + ", ".join(OPTIMIZERS))
        if values["lr"] is None:
            values["lr"] = _DEFAULT_LR[opt]
        if values["weight_decay"] is None:
            values["weight_decay"] = _DEFAULT_WD[opt]
        if values["out"] is None:
            values["out"] = values["resume"] or Path("runs") / f"{values['arch']}-{_slug(values['data'])}"
        if isinstance(values["input_size"], list):
            values["input_size"] = tuple(values["input_size"])
        cfg = TrainConfig(**values)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {self.scheduler!r}", fix="use one of: " + ", ".join(SCHEDULERS))
        if self.metric not in METRICS:
            raise UsageError(f"unknown metric {self.metric!r}", fix="use one of: " + ", ".join(METRICS))
        if self.device not in DEVICES and not str(self.device).startswith(("cuda:", "mps:")):
            raise UsageError(f"unknown device {self.device!r}", fix="use auto, cpu, cuda, cuda:N or mps")
        if self.freeze not in (None, "backbone"):
            raise UsageError(f"cannot freeze {self.freeze!r}", fix="use --freeze backbone")
        if self.head not in HEADS:
            raise UsageError(f"unknown head {self.head!r}", fix="use --head replace or --head append")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.keep is not None and self.keep < 1:
            raise UsageError(f"keep must be at least 1, not {self.keep}")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise UsageError(f"learning rate must be positive (and finite), not {self.lr}")
        if self.weight_decay is not None and not 0 <= self.weight_decay < math.inf:
            raise UsageError(f"weight-decay must be >= 0, not {self.weight_decay:g}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, not {self.threads}")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0, not {self.workers}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise UsageError(f"unknown checkpoint format {self.checkpoint_format!r}", fix="use --checkpoint-format torch or dcp")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise UsageError(f"checkpoint-every must be at least 1 step, not {self.checkpoint_every}")
        if self.subset is not None and self.subset < 2:
            raise UsageError(f"subset must be at least 2 images, not {self.subset}")


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
