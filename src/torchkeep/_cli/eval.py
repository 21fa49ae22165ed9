"""``torchkeep eval MODEL``: accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import click

from torchkeep._cli.common import console, emit, json_option
from torchkeep._evaluate import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_SPLIT, SPLITS, evaluate


def _human(report) -> None:
    from rich.table import Table

    out = console()
    for note in report.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    split = report.split + (f" (seed {report.seed}, {report.val_fraction:g} held out)" if report.split == "val" else "")
    out.print(
        f"[bold]{report.model}[/bold] on {report.data}, {split}: {report.images} images, "
        f"[bold]accuracy {100 * report.accuracy:.2f}%[/bold], loss {report.loss:.4f}, macro F1 {report.macro_f1:.4f}"
    )
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for c in report.per_class:
        per.add_row(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    out.print(per)
    names = report.classes
    if len(names) <= 20:
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("true \\ pred")
        for n in names:
            cm.add_column(n, justify="right")
        for i, row in enumerate(report.confusion):
            cells = [(f"[bold green]{v}[/bold green]" if i == j else (f"[red]{v}[/red]" if v else "·"))
                     for j, v in enumerate(row)]
            cm.add_row(names[i], *cells)
        out.print(cm)
    else:
        out.print(f"({len(names)} classes: confusion matrix in --json or --png)")
    if report.png:
        out.print(f"confusion matrix image: {report.png}")


@click.command(
    help="Evaluate a model file (or a training run's directory: its best model file) on a dataset: accuracy, "
    "per-class precision/recall/F1 and the confusion matrix. By default on the same seeded validation split "
    "its training held out."
)
@click.argument("model", type=click.Path())
@click.option("--data", help="digits, cifar10, fashion-mnist or folder:PATH. [default: the model's training data]")
@click.option("--split", type=click.Choice(SPLITS), default=DEFAULT_SPLIT, show_default=True,
              help="val: seeded hold-out split; test: official test set (cifar10, fashion-mnist).")
@click.option("--seed", type=int, help="Split seed. [default: the training run's]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), help="[default: the training run's]")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where cifar10 / fashion-mnist are.")
@click.option("--no-download", is_flag=True, help="Never download datasets.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--device", default=DEFAULT_DEVICE, show_default=True)
@click.option("--png", type=click.Path(dir_okay=False), help="Write the confusion matrix as a PNG.")
@click.option("--trust", is_flag=True, help="Allow a model file naming a user class to import it.")
@json_option
def command(model, data, split, seed, val_fraction, data_root, no_download, batch_size, device, png, trust,
            as_json) -> int:
    report = evaluate(
        model, data, split=split, seed=seed, val_fraction=val_fraction, data_root=data_root,
        download=not no_download, batch_size=batch_size, device=device, png=png, trust=trust,
    )
    emit(report, as_json, _human)
    return 0
