"""``torchkeep export MODEL --format F -o OUT``: export with a parity check (exit 4 if it fails)."""

from __future__ import annotations

import click

from torchkeep._cli.common import console, emit, human_bytes, json_option
from torchkeep._cli.predict import contract_from, contract_options


def _parity_lines(result) -> list[str]:
    p = result.parity
    if p is None:
        return ["parity check: skipped (--no-check)"]
    verdict = "[green]passed[/green]" if p.passed else "[red]FAILED[/red]"
    lines = [
        f"parity check {verdict}: {p.reference} vs {result.format} on {p.inputs}",
        f"  max |Δlogit| {p.max_abs_diff:.3g}  (tolerance {p.tolerance:.3g} = relative x logit scale {p.logit_scale:.3g})",
        f"  top-1 agreement {p.top1_agree}/{p.samples}, top-{p.k} agreement {p.topk_agree}/{p.samples}"
        + (f" ({p.near_ties} near-ties)" if p.near_ties else "")
        + f", batch sizes {', '.join(map(str, p.batch_sizes))}",
    ]
    return lines


def _human(result) -> None:
    out = console()
    out.print(f"[bold]{result.output}[/bold]  {result.format}, {result.dtype}, {human_bytes(result.size)}")
    out.print(f"  exporter: {result.exporter}")
    batch = "dynamic" if result.dynamic_batch else "static (1)" if result.format == "onnx" else "any"
    out.print(f"  batch: {batch}; spec embedded: {'yes' if result.spec_embedded else 'no'}")
    for line in _parity_lines(result):
        out.print(line)
    for note in result.notes:
        out.print(f"  note: {note}")
    out.print(f"  {result.seconds:.1f} s")


@click.command(
    help="Export a model file to TorchScript, ONNX, safetensors or a plain state_dict, then check that the "
    "export computes what the eager model computes (max logit difference, top-1/top-k agreement); "
    "exit 4 and nothing written if it does not.\n\n"
    "A TorchScript/ONNX file becomes the same format (or TorchScript becomes ONNX) carrying its input contract, "
    "so that predict runs it alone; for one torchkeep did not write, give it with --input-size, --mean/--std "
    "(and --classes, --channels)."
)
@click.argument("model", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["torchscript", "onnx", "safetensors", "state-dict"]),
    required=True,
    help="Output format.",
)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--dynamic-batch", is_flag=True, help="ONNX: dynamic batch dimension (default: batch 1).")
@click.option("--half", is_flag=True, help="Export in float16 (checked against float32 eager).")
@click.option(
    "--samples",
    multiple=True,
    type=click.Path(exists=True),
    help="Images or folders for the parity check (default: scikit-learn's bundled sample photos).",
)
@click.option(
    "--tolerance", type=float, default=None, help="Relative tolerance (default 1e-3, 5e-2 with --half)."
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--trust", is_flag=True, help="Allow a model file naming a user class to import it.")
@click.option("--no-check", is_flag=True, help="Skip the parity check.")
@contract_options
@json_option
def command(
    model: str,
    fmt: str,
    out: str,
    dynamic_batch: bool,
    half: bool,
    samples: tuple[str, ...],
    tolerance: float | None,
    opset: int | None,
    no_check: bool,
    trust: bool,
    classes: str | None,
    input_size: int | None,
    mean: str | None,
    std: str | None,
    channels: str | None,
    as_json: bool,
) -> int:
    from torchkeep._export import export
    from torchkeep.errors import ParityError

    try:
        result = export(
            model,
            fmt,
            out,
            dynamic_batch=dynamic_batch,
            half=half,
            samples=list(samples) or None,
            tolerance=tolerance,
            opset=opset,
            check=not no_check,
            trust=trust,
            contract=contract_from(classes, input_size, mean, std, channels),
        )
    except ParityError as exc:
        # show the numbers before the one-line error so the user sees how far off it was
        if exc.result is not None:
            if as_json:
                emit(exc.result, True, _human)
            else:
                err = console(stderr=True)
                for line in _parity_lines(exc.result):
                    err.print(line)
        raise
    emit(result, as_json, _human)
    return 0
