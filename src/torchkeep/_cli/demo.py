"""``torchkeep demo``: the README's main command - train, evaluate and predict on the embedded digits."""

from __future__ import annotations

from pathlib import Path

import click

from torchkeep._cli.common import console, emit, json_option


def _print_tour(out, tour) -> None:
    """A table of the formats tour: one row per file written (tolerant of the entry type)."""
    from rich.table import Table

    from torchkeep._cli.common import human_bytes

    entries = tour if isinstance(tour, list) else [tour]
    table = Table(title="the same model, saved every way (torchkeep inspect on each)")
    for col in ("file", "kind", "size", "written with"):
        table.add_column(col, overflow="fold")
    for e in entries:
        ins = getattr(e, "inspection", None)
        err = getattr(e, "error", None)
        kind = f"[red]{err}[/red]" if err else str(getattr(ins, "kind", "") or "")
        size = human_bytes(ins.size_bytes) if ins is not None and getattr(ins, "size_bytes", None) else "-"
        table.add_row(Path(str(getattr(e, "file", e))).name, kind, size, str(getattr(e, "how", "")))
    out.print(table)


def _human(res) -> None:
    out = console()
    t, e = res.train, res.eval
    out.print()
    out.print(
        f"[bold]trained[/bold] {t.epochs_done} epochs in {t.seconds:.1f}s on {t.device}: "
        f"best validation accuracy [bold]{100 * t.best_value:.2f}%[/bold] (epoch {t.best_epoch})"
    )
    out.print(
        f"[bold]evaluated[/bold] {e.images} held-out digits: accuracy {100 * e.accuracy:.2f}%, macro F1 {e.macro_f1:.4f}"
    )
    if res.predictions:
        ok = sum(p.correct for p in res.predictions)
        out.print(f"[bold]predicted[/bold] {len(res.predictions)} held-out PNGs ({ok} right):")
        for p in res.predictions:
            mark = "[green]ok[/green]" if p.correct else "[red]wrong[/red]"
            what = f"predicted {p.predicted} ({p.probability:.2f})" if p.error is None else f"error: {p.error}"
            out.print(f"  {p.file.name:<34} {p.mode:<4} {p.size[0]}x{p.size[1]:<3} true {p.true}  {what}  {mark}")
    if res.tour is not None:
        _print_tour(out, res.tour)
    for note in res.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print()
    out.print(f"model file     {t.best_path}")
    out.print(f"plots          {t.curves_png}  {t.confusion_png}")
    out.print(f"tensorboard    tensorboard --logdir {t.tensorboard_dir}")
    out.print(f"try next       torchkeep inspect {t.best_path}")
    out.print(f"               torchkeep predict {t.best_path} {res.out_dir / 'pngs'}")
    out.print(f"               torchkeep train --resume {t.run_dir} --epochs {t.epochs + 5}")
    out.print(f"done in {res.seconds:.1f}s")


@click.command(
    help="Train the seeds' CIFAR-10 CNN on the embedded digits (default settings), evaluate it, predict "
    "held-out digit PNGs (grayscale, RGB, RGBA) and save it in every format. Runs offline."
)
@click.option("--out", type=click.Path(file_okay=False), default="torchkeep-demo", show_default=True,
              help="Demo directory.")
@click.option("--epochs", type=click.IntRange(min=1), help="Fewer epochs for a quicker run. [default: 15]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@json_option
def command(out: str, epochs: int | None, quiet: bool, as_json: bool) -> int:
    from torchkeep._cli.train import TrainBars
    from torchkeep._demo import run_demo

    say = None if as_json or quiet else (lambda msg: console().print(f"[bold cyan]{msg}[/bold cyan]"))
    with TrainBars() as bars:
        result = run_demo(out, epochs=epochs, progress=None if quiet else bars, log=say)
    emit(result, as_json, _human)
    return 0
