"""``torchkeep train``: train an image classifier with kill-safe checkpoints, TensorBoard and plots."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from torchkeep._cli.common import complete_arch, console, emit, json_option

# the library's choices and defaults (no torch: --help stays instant)
from torchkeep.training._config import (
    CHECKPOINT_FORMATS,
    DEFAULT_DEVICE,
    DEFAULT_LR,
    DEFAULT_WD,
    DEFAULT_WORKERS,
    DEFAULTS,
    FREEZE,
    HEADS,
    METRICS,
    OPTIMIZERS,
    SCHEDULERS,
)
from torchkeep.training._progress import EPOCH_END, EPOCH_START, RUN_END, STEP, TrainProgress


class TrainBars:
    """Progress on stderr, drawn from the run's reports (``TrainConfig.progress``): a bar per epoch with live
    loss and accuracy, and one line per finished epoch (in logs too, where no bar is drawn).

    Use as a context manager around ``train`` (the bar goes away however the run ends)."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainBars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close()

    def _open(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True, highlight=False, file=sys.stderr),
                transient=True,
            )
            self._progress.__enter__()
        return self._progress

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = self._task = None

    def __call__(self, p: TrainProgress) -> None:
        if p.kind == EPOCH_START:
            progress = self._open()
            for t in list(progress.task_ids):
                progress.remove_task(t)
            self._task = progress.add_task(
                "train", total=p.steps, completed=p.step, epoch=p.epoch, epochs=p.epochs, loss="-", acc="-"
            )
        elif p.kind == STEP and self._task is not None:
            self._progress.update(self._task, completed=p.step, loss=f"{p.loss:.4f}", acc=f"{100 * (p.acc or 0):.2f}%")
        elif p.kind == EPOCH_END and p.metrics is not None:
            self._epoch_line(p.metrics, p.epochs, p.improved)
        elif p.kind == RUN_END:
            self._close()

    def _epoch_line(self, row: dict[str, Any], epochs: int, improved: bool) -> None:
        star = "  best" if improved else ""
        w = len(str(epochs))
        # one line under 80 columns (logs, CI); the learning rate is in metrics.csv and TensorBoard
        self._open().console.print(
            f"epoch {row['epoch']:>{w}}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.1f}%"
            f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.1f}%  {row['seconds']:.1f}s{star}",
            soft_wrap=True,
        )


def _lr_text(values: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in values.items())


def _human(result) -> None:
    from rich.table import Table

    out = console()
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    metric = result.metric
    value = f"{100 * result.best_value:.2f}%" if metric.endswith("acc") else f"{result.best_value:.4f}"
    what = "stopped early" if result.stopped_early else "done"
    resumed = f", resumed from epoch {result.resumed_from}" if result.resumed_from else ""
    out.print(
        f"[bold]{what}[/bold]: {result.epochs_done}/{result.epochs} epochs{resumed} in {result.seconds:.1f}s "
        f"on {result.device}{' (amp)' if result.amp else ''}, {result.images_per_second:,.0f} images/s; "
        f"best {metric} {value} at epoch {result.best_epoch}"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("best model", result.best_path),
        ("last model", result.last_path),
        ("resume", f"{result.checkpoint_path}  (torchkeep train --resume {result.run_dir})"),
        ("metrics", result.metrics_csv),
        ("plots", "  ".join(str(p) for p in (result.curves_png, result.confusion_png) if p) or "-"),
        ("tensorboard", f"tensorboard --logdir {result.tensorboard_dir}" if result.tensorboard_dir else "-"),
    ]
    if result.top_k:
        rows.insert(2, ("top-k", "  ".join(str(p) for p in result.top_k)))
    for k, v in rows:
        table.add_row(k, str(v))
    out.print(table)


@click.command(
    help="Train an image classifier. Every epoch writes best/last model files and a resume checkpoint "
    "atomically; --resume RUN_DIR continues exactly (model, optimizer, scheduler, RNG, data order).\n\n"
    "DATA: digits (embedded), cifar10, fashion-mnist, or folder:PATH (one sub-folder per class).\n\n"
    "Example: torchkeep train --arch cifar10_cnn --data digits --out runs/digits\n\n"
    "Several processes (DDP): torchkeep train --nproc 2 ... or torchrun --nproc-per-node 2 -m torchkeep train ..."
)
@click.option("--arch", shell_complete=complete_arch,
              help=f"Architecture (torchkeep models lists them). [default: {DEFAULTS['arch']}]")
@click.option("--data", help=f"Dataset: digits, cifar10, fashion-mnist or folder:PATH. [default: {DEFAULTS['data']}]")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory. [default: runs/ARCH-DATA]")
@click.option("--epochs", type=click.IntRange(min=1), help=f"Total epochs (raise it on --resume to train longer). [default: {DEFAULTS['epochs']}]")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), help=f"[default: {DEFAULTS['batch_size']}]")
@click.option("--lr", type=float, help=f"Learning rate. [default: {_lr_text(DEFAULT_LR)}]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=f"[default: {DEFAULTS['optimizer']}]")
@click.option("--weight-decay", type=float, help=f"[default: {_lr_text(DEFAULT_WD)}]")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), help=f"[default: {DEFAULTS['scheduler']}]")
@click.option("--device", default=DEFAULT_DEVICE, show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only). [default: on with CUDA]")
@click.option("--pretrained", help="Start from a weights file or a torchvision weights name (IMAGENET1K_V1).")
@click.option("--freeze", type=click.Choice(FREEZE), help="Train only the head (use with --pretrained).")
@click.option("--head", type=click.Choice(HEADS),
              help="Give the model the dataset's classes by replacing its last classifier layer, or by appending "
              f"Linear(outputs, classes) after it (the VGG16 recipe: classifier.add_linear). [default: {DEFAULTS['head']}]")
@click.option("--num-classes", type=click.IntRange(min=1), help="Model outputs. [default: the dataset's classes]")
@click.option("--input-size", type=click.IntRange(min=1), help="Model input size. [default: the dataset's native size]")
@click.option("--seed", type=int, help=f"Seeds the split, init, data order and augmentation. [default: {DEFAULTS['seed']}]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), help=f"Held out for validation. [default: {DEFAULTS['val_fraction']}]")
@click.option("--subset", type=click.IntRange(min=2), help="Use only the first N images (quick runs).")
@click.option("--augment/--no-augment", default=None, help="Standard augmentation from the model's transform.")
@click.option("--workers", type=click.IntRange(min=0), default=DEFAULT_WORKERS, show_default=True,
              help="DataLoader worker processes.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads. [default: 1 for inputs <= 16x16, else torch's]")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where cifar10 / fashion-mnist are (or go).")
@click.option("--no-download", is_flag=True, help="Never download datasets.")
@click.option("--keep", type=click.IntRange(min=1), help=f"Keep the K best model files (top/). [default: {DEFAULTS['keep']}]")
@click.option("--metric", type=click.Choice(METRICS), help=f"What 'best' means. [default: {DEFAULTS['metric']}]")
@click.option("--resume", type=click.Path(), help="Continue the run in this directory exactly.")
@click.option("--overwrite", is_flag=True, help="Start a new run in a directory that already holds one.")
@click.option("--no-tensorboard", is_flag=True, help="Do not write TensorBoard event files.")
@click.option("--no-plots", is_flag=True, help="Do not write curves.png / confusion.png.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--checkpoint-every", type=click.IntRange(min=1),
              help="Also checkpoint every N steps within an epoch (resume mid-epoch, on any number of processes).")
@click.option("--checkpoint-format", type=click.Choice(CHECKPOINT_FORMATS),
              help="checkpoint.pt, or checkpoint.dcp/ (torch.distributed.checkpoint: each process its part). "
              f"[default: {DEFAULTS['checkpoint_format']}]")
@click.option("--async-checkpoint/--no-async-checkpoint", default=None,
              help="Write the DCP checkpoint in the background while training goes on (with --checkpoint-format dcp).")
@click.option("--sync-bn", is_flag=True, help="Synchronise BatchNorm statistics across processes (CUDA).")
@click.option("--find-unused-parameters/--no-find-unused-parameters", default=None,
              help="DDP looks for parameters the loss did not use each step (models with an unused branch). "
              "[default: on for architectures with auxiliary heads]")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Train in N processes (DDP) on this node: starts torchrun's elastic agent. --batch-size stays the global batch.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes (with --nproc): run the same command on each, with the same --rdzv-endpoint.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="Where the nodes meet (with --nnodes > 1).")
@click.option("--rdzv-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for every node to join.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
              help="Restart the group this many times after a failure; it resumes from the last complete checkpoint.")
@json_option
@click.pass_context
def command(
    ctx, arch, data, out, epochs, batch_size, lr, optimizer, weight_decay, scheduler, device, amp, pretrained, freeze,
    head, num_classes, input_size, seed, val_fraction, subset, augment, workers, threads, data_root, no_download, keep,
    metric, resume, overwrite, no_tensorboard, no_plots, quiet, checkpoint_every, checkpoint_format, async_checkpoint,
    sync_bn, find_unused_parameters, nproc, nnodes, rdzv_endpoint, rdzv_timeout, max_restarts, as_json,
) -> int:
    if nproc is None and (nnodes != 1 or rdzv_endpoint or max_restarts):
        from torchkeep.errors import UsageError

        raise UsageError("--nnodes, --rdzv-endpoint and --max-restarts go with --nproc N",
                         fix="add --nproc N (processes per node), or use torchrun's own flags")
    if nproc is not None:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            from torchkeep.errors import UsageError

            raise UsageError("--nproc starts torchrun; this process already runs under torchrun",
                             fix="leave out --nproc (torchrun's --nproc-per-node sets the processes)")
        return _launch(ctx, nproc, nnodes, rdzv_endpoint, rdzv_timeout, max_restarts)
    from torchkeep.training import TrainConfig, TrainingInterrupted, train

    bars = TrainBars()
    config = TrainConfig(
        arch=arch, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        weight_decay=weight_decay, scheduler=scheduler, device=device, amp=amp, pretrained=pretrained,
        freeze=freeze, head=head, num_classes=num_classes, input_size=input_size, seed=seed, val_fraction=val_fraction,
        subset=subset, augment=augment, workers=workers, threads=threads, data_root=data_root, download=not no_download,
        keep=keep, metric=metric, resume=resume, overwrite=overwrite, progress=None if quiet else bars,
        tensorboard=not no_tensorboard, plots=not no_plots, checkpoint_every=checkpoint_every,
        checkpoint_format=checkpoint_format, async_checkpoint=async_checkpoint, sync_bn=sync_bn,
        find_unused_parameters=find_unused_parameters,
    )
    try:
        with bars:
            result = train(config)
    except TrainingInterrupted as exc:
        click.echo(f"torchkeep: {exc.message}", err=True)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone reports
        emit(result, as_json, _human)
    return 0


_LAUNCH_PARAMS = ("nproc", "nnodes", "rdzv_endpoint", "rdzv_timeout", "max_restarts")


def _worker_args(ctx: click.Context) -> list[str]:
    """The options given on this command line, minus the launcher's: what every worker runs."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in _LAUNCH_PARAMS or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(name) in (click.core.ParameterSource.DEFAULT, None):
            continue
        value = ctx.params[name]
        if param.is_flag:
            if param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def _launch(ctx: click.Context, nproc: int, nnodes: int, endpoint: str | None, timeout: float, restarts: int) -> int:
    from torchkeep.training._launch import launch

    result = launch(
        _worker_args(ctx), nproc=nproc, nnodes=nnodes, rdzv_endpoint=endpoint, max_restarts=restarts,
        join_timeout=timeout,
    )
    if result.exit_code:
        click.echo(f"torchkeep: error: {result.message}", err=True)
    return result.exit_code
