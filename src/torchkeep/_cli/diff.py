"""``torchkeep diff A B``: compare the weights of two model files (exit 0 identical, 1 different)."""

from __future__ import annotations

import click

from torchkeep._cli.common import console, emit, human_count, json_option


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _human(report, limit: int) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]A[/bold] {report.a}  ({report.tensors_a} tensors, {human_count(report.params_a)} values)"
    )
    out.print(
        f"[bold]B[/bold] {report.b}  ({report.tensors_b} tensors, {human_count(report.params_b)} values)"
    )
    for side, keys in (("A", report.only_in_a), ("B", report.only_in_b)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", … ({len(keys)} in all)" if len(keys) > limit else "")
            out.print(f"only in {side}: {shown}")
    if report.changed:
        table = Table(
            title=f"{len(report.changed)} of {report.common} common tensors differ", title_justify="left"
        )
        for col in ("tensor", "change", "max abs", "rel L2", "cosine"):
            table.add_column(col, justify="left" if col in ("tensor", "change") else "right")
        for d in report.changed[:limit]:
            if d.kind == "shape":
                change = f"shape {d.shape_a} → {d.shape_b}"
            elif d.kind == "dtype":
                change = f"dtype {d.dtype_a} → {d.dtype_b}"
            else:
                change = f"values {d.shape_a}"
            table.add_row(d.name, change, _fmt(d.max_abs), _fmt(d.rel_l2), _fmt(d.cosine, ".6f"))
        out.print(table)
        if len(report.changed) > limit:
            out.print(f"… {len(report.changed) - limit} more (use --limit 0 or --json for all)")
    out.print(
        f"{report.unchanged} of {report.common} common tensors equal; "
        f"{human_count(report.params_changed)} values in differing tensors"
    )
    style = "green" if report.identical else "yellow"
    out.print(f"[{style}]verdict:[/{style}] {report.verdict}")


@click.command(
    help="Compare the weights of two model files (any formats). Exit 0 if identical, 1 if different."
)
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option(
    "--atol", type=float, default=0.0, show_default=True, help="Values closer than this count as equal."
)
@click.option("--limit", type=int, default=20, show_default=True, help="Rows to show (0: all).")
@click.option("--trust", is_flag=True, help="Fully unpickle custom-code files (RUNS their classes' code).")
@json_option
def command(a: str, b: str, atol: float, limit: int, trust: bool, as_json: bool) -> int:
    from torchkeep._diff import diff

    report = diff(a, b, atol=atol, trust=trust)
    emit(report, as_json, lambda r: _human(r, limit if limit > 0 else 1 << 30))
    return report.exit_code
