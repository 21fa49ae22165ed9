"""``torchkeep predict MODEL INPUT...``: classify images (exit 1 if any input could not be read)."""

from __future__ import annotations

import csv
import io
import sys

import click

from torchkeep._cli.common import console, emit, json_option

# below this many images a progress bar only flickers
_PROGRESS_MIN = 64


def contract_options(fn):
    """--classes, --input-size, --mean/--std, --channels: the input contract of a TorchScript / ONNX file that
    torchkeep did not write (for a model file they override its spec). Shared by predict and export."""
    options = [
        click.option("--classes", metavar="FILE|a,b,c",
                     help="Output class names: a file (one per line, or a JSON list) or comma-separated."),
        click.option("--input-size", type=click.IntRange(min=1), metavar="N", help="Resize images to N x N."),
        click.option("--mean", metavar="M[,M,M]", help="Per-channel mean after scaling pixels to [0, 1] (with --std)."),
        click.option("--std", metavar="S[,S,S]", help="Per-channel std (with --mean)."),
        click.option("--channels", type=click.Choice(["1", "3", "4"]), help="Input channels: 1 gray, 3 RGB, 4 RGBA."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def contract_from(classes: str | None, input_size: int | None, mean: str | None, std: str | None,
                  channels: str | None):
    """The InputContract the flags give, or None when none was given."""
    from torchkeep._cli.adapt import floats
    from torchkeep._modelpath import InputContract, parse_classes

    if not any(v is not None for v in (classes, input_size, mean, std, channels)):
        return None
    return InputContract(
        class_names=parse_classes(classes) if classes is not None else None,
        input_size=(input_size, input_size) if input_size else None,
        mean=floats(mean, "--mean") if mean is not None else None,
        std=floats(std, "--std") if std is not None else None,
        channels=int(channels) if channels else None,
    )


def _human(predictions, topk: int) -> None:
    from rich.table import Table

    out = console()
    table = Table()
    table.add_column("input", overflow="fold")
    table.add_column("class")
    table.add_column("prob", justify="right")
    if topk > 1:
        table.add_column(f"top-{topk}")
    for p in predictions:
        if p.error is not None:
            row = [p.input, "[red]error[/red]", "-"]
            if topk > 1:
                row.append(f"[red]{p.error}[/red]")
            else:
                row[1] = f"[red]error: {p.error}[/red]"
        else:
            row = [p.input, p.label, f"{p.probability:.3f}"]
            if topk > 1:
                row.append(", ".join(f"{s.label} {s.probability:.3f}" for s in p.topk[1:]))
        table.add_row(*row)
    out.print(table)
    failed = sum(1 for p in predictions if p.error is not None)
    line = f"{len(predictions) - failed} classified"
    if failed:
        line += f", [red]{failed} unreadable (skipped)[/red]"
    out.print(line)


def _write_csv(predictions, path: str, topk: int) -> None:
    from torchkeep._atomic import atomic_write

    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["input", "label", "index", "probability"]
    for i in range(2, topk + 1):
        header += [f"label_{i}", f"probability_{i}"]
    writer.writerow([*header, "error"])
    for p in predictions:
        row: list[object] = [p.input, p.label or "", "" if p.index is None else p.index]
        row.append("" if p.probability is None else f"{p.probability:.6f}")
        for i in range(1, topk):
            if i < len(p.topk):
                row += [p.topk[i].label, f"{p.topk[i].probability:.6f}"]
            else:
                row += ["", ""]
        writer.writerow([*row, p.error or ""])
    if path == "-":
        sys.stdout.write(buf.getvalue())
        return
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


@click.command(
    help="Classify images with a model file (torchkeep model file, a training run's directory, or a "
    "TorchScript/ONNX file).\n\n"
    "INPUT: image files, folders (recursive) or glob patterns. Preprocessing comes from the model's spec; a "
    "TorchScript/ONNX file torchkeep did not write takes it from --input-size, --mean/--std (and --classes, "
    "--channels). Unreadable images are reported and skipped; the exit code is 1 if any failed."
)
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--topk", "-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes per image."
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option(
    "--backend",
    type=click.Choice(["eager", "torchscript", "onnxruntime"]),
    default=None,
    help="Runtime (default: eager for model files, the file's own for exports).",
)
@click.option("--half", is_flag=True, help="Run in float16 (slow on CPU).")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write a CSV file ('-': stdout)."
)
@click.option(
    "--trust",
    is_flag=True,
    help="Load the model whatever its scan says (TorchScript/ONNX code that is not safe, a user class the "
    "spec names). Only for files you trust.",
)
@click.option("--no-progress", is_flag=True, help="Never show a progress bar.")
@contract_options
@json_option
def command(
    model: str,
    inputs: tuple[str, ...],
    topk: int,
    batch_size: int,
    device: str,
    backend: str | None,
    half: bool,
    csv_path: str | None,
    no_progress: bool,
    trust: bool,
    classes: str | None,
    input_size: int | None,
    mean: str | None,
    std: str | None,
    channels: str | None,
    as_json: bool,
) -> int:
    from torchkeep._predict import predict

    contract = contract_from(classes, input_size, mean, std, channels)

    bar = None
    task = None
    if not no_progress and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(console=console(stderr=True), transient=True)

    def progress(done: int, total: int) -> None:
        nonlocal task
        if bar is None or total < _PROGRESS_MIN:
            return
        if task is None:  # started on the first batch, once the number of images is known
            bar.start()
            task = bar.add_task("predict", total=total)
        bar.update(task, completed=done)

    try:
        predictions = predict(
            model,
            list(inputs),
            topk=topk,
            batch_size=batch_size,
            device=device,
            backend=backend,
            half=half,
            progress=progress,
            trust=trust,
            contract=contract,
        )
    finally:
        if bar is not None and task is not None:
            bar.stop()

    if csv_path:
        _write_csv(predictions, csv_path, topk)
    if csv_path != "-":
        emit(predictions, as_json, lambda ps: _human(ps, topk))
    for p in predictions:
        if p.error is not None and not as_json:
            click.echo(f"torchkeep: {p.input}: {p.error}", err=True)
    return 1 if any(p.error is not None for p in predictions) else 0
