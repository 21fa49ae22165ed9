"""``Run``: what a training run works with once it is set up (``training._loop.setup`` builds it), handed to
the epoch (``_epoch``) and to what an epoch leaves on disk (``_saving``)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkeep.data import ImageSource, TransformedSubset
from torchkeep.training._config import RunConfig
from torchkeep.training._distributed import Dist, GlobalBatchSampler
from torchkeep.training._schedule import Segment
from torchkeep.training._state import RunState
from torchkeep.training._writer import FileWriter

__all__ = ["Data", "Run"]


@dataclass
class Data:
    """The dataset and its two splits, transformed as the model's spec says, and their loaders."""

    source: ImageSource
    train_ds: TransformedSubset
    val_ds: TransformedSubset
    sampler: GlobalBatchSampler  # --batch-size is the global batch: this process takes its share of each
    loader: torch.utils.data.DataLoader
    loader_gen: torch.Generator  # seeds DataLoader workers, per epoch
    val_loader: torch.utils.data.DataLoader  # this process's contiguous share of the validation split


@dataclass
class Run:
    """One training run, set up: settings, process group, model, data, optimizer and where it stands."""

    cfg: RunConfig
    d: Dist
    dir: Path
    files: FileWriter  # model files, checkpoint.pt and metrics.csv, in order (off the training thread alone)
    device: torch.device
    amp: bool
    spec: Any  # the model's ModelSpec, saved in every model file
    model: nn.Module  # what every file holds (never the DDP wrapper)
    classes: list[str]
    data: Data
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    segments: list[Segment]  # the learning-rate schedule
    frozen_norms: list[nn.Module]  # BatchNorm layers of a frozen backbone: kept in eval mode
    state: RunState = field(default_factory=RunState)
    notes: list[str] = field(default_factory=list)
    ddp: Any = None  # the DistributedDataParallel wrapper that trains, in a process group
    sample_log: Any = None  # the test hook ENV_LOG_SAMPLES: a file of each step's sample ids
    # --async-checkpoint: the process group DCP's background writes use (gloo, apart from DDP's), and the
    # checkpoint being written (done once it is whole and swapped in)
    checkpoint_group: Any = None
    pending_checkpoint: Future[None] | None = None

    @property
    def trainer(self) -> nn.Module:
        """The module a training step calls: the DDP wrapper in a process group, else the model."""
        return self.ddp if self.ddp is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])
