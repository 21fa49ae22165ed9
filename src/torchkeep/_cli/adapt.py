"""``torchkeep adapt SRC --arch NAME -o OUT``: load any weights into an architecture and save a model file.

Exit 0 when written (or previewed with ``--dry-run``), 4 when refused (too little would load, shapes differ
with ``--on-shape-mismatch error``, rename collisions), 3 when SRC cannot be read, 64 on bad arguments.
"""

from __future__ import annotations

import click

from torchkeep._cli.common import complete_arch, console, emit, emit_error, error_payload, json_option


def _keys_cell(keys: list[str], limit: int) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all; --limit 0 shows all)" if len(keys) > limit else "")


def _human(result, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    r = result.report
    out = console()
    out.print(f"[bold]source[/bold] {escape(r.source)}  →  [bold]{escape(result.arch)}[/bold]"
              + (f" ({result.num_classes} classes)" if result.num_classes else ""))
    if r.unwrapped:
        out.print(f"weights found under checkpoint[{escape(repr(r.unwrapped))}]")
    if r.prefix_stripped or r.prefix_added:
        parts = [f"stripped {r.prefix_stripped!r}" if r.prefix_stripped else "",
                 f"added {r.prefix_added!r}" if r.prefix_added else ""]
        out.print("prefix: " + escape(", ".join(p for p in parts if p)))
    table = Table(title_justify="left", show_lines=False)
    table.add_column("")
    table.add_column("tensors", justify="right")
    table.add_column("keys (repeated blocks collapsed)", overflow="fold")
    table.add_row("matched", str(len(r.matched)), escape(_keys_cell(r.collapsed("matched"), limit)))
    if r.renamed:
        table.add_row("renamed", str(len(r.renamed)), escape(_keys_cell(r.collapsed("renamed"), limit)))
    if r.shape_mismatched:
        shapes = [f"{m.key} {m.source_shape}→{m.target_shape}" for m in r.shape_mismatched]
        table.add_row("[yellow]shape mismatch[/yellow]", str(len(shapes)), escape(_keys_cell(shapes, limit)))
    if r.missing:
        table.add_row("[yellow]missing[/yellow]", str(len(r.missing)), escape(_keys_cell(r.collapsed("missing"), limit)))
    if r.unexpected:
        table.add_row(
            "[yellow]unused[/yellow]", str(len(r.unexpected)), escape(_keys_cell(r.collapsed("unexpected"), limit))
        )
    for d in r.dtype_converted:
        table.add_row("dtype", str(d.count), escape(f"{d.source_dtype} → {d.target_dtype}: {_keys_cell(d.keys, limit)}"))
    out.print(table)
    for note in r.notes:
        out.print(f"note: {escape(note)}")
    style = "green" if r.complete else ("red" if r.verdict.startswith("REFUSED") else "yellow")
    out.print(f"[{style}]verdict:[/{style}] {escape(r.verdict)}")
    pre = getattr(result, "preprocessing", None)
    if pre:  # what predict/eval will feed the model: say it, so a wrong guess is seen before it is used
        from torchkeep._spec import Preprocessing

        verb = "records" if result.out else "would record"
        out.print(f"preprocessing ({verb}; change with --input-size/--mean/--std): "
                  f"{escape(Preprocessing(**pre).describe())}")
    if result.out:
        out.print(f"wrote {escape(result.out)}")
    elif result.dry_run:
        out.print("dry run: nothing written")
    else:
        out.print("[red]refused: nothing written[/red]")


def floats(text: str, flag: str) -> list[float]:
    """``0.5`` or ``0.485,0.456,0.406`` as floats (--mean/--std of adapt, predict and export)."""
    from torchkeep.errors import UsageError

    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, not {text!r}", fix=f"e.g. {flag} 0.5,0.5,0.5") from None


@click.command(
    help="Load the weights of SRC (any format; no code runs) into architecture --arch and write a model file.\n\n"
    "Strips/adds module. / _orig_mod. / model. prefixes when that makes keys match, applies --rename rules, "
    "skips shape-mismatched tensors (a new head), pairs tensors by order when names differ or follow another "
    "scheme (not from safetensors, which keeps no order), and refuses when "
    "less than --min-match of the parameters would load. Exit 0 written, 4 refused, 3 unreadable SRC."
)
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, shell_complete=complete_arch,
              help="Architecture name (see `torchkeep models`), or auto: what `torchkeep identify SRC` names.")
@click.option("--num-classes", type=click.IntRange(min=1), help="Outputs of the model (default: the source's).")
@click.option("--class-names", help="Comma-separated class names, in index order.")
@click.option(
    "--rename", "renames", multiple=True, metavar="'REGEX=>REPL'",
    help="Rename source keys before matching (repeatable; captured groups: \\1 or $1).",
)
@click.option(
    "--strip-prefix", default="auto", show_default=True, metavar="auto|none|PREFIX",
    help="Strip wrapper prefixes when that makes keys match, never, or this prefix.",
)
@click.option("--allow-partial", is_flag=True, help="Write the file even below --min-match.")
@click.option("--min-match", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Refuse when less than this share of the model's parameters would load.")
@click.option("--on-shape-mismatch", type=click.Choice(["skip", "error"]), default="skip", show_default=True,
              help="Skip tensors whose shape differs (a new head) or refuse.")
@click.option("--no-match-by-order", is_flag=True, help="Never pair tensors by order when names differ.")
@click.option("--in-channels", type=click.IntRange(min=1), help="Input channels (seed and user architectures).")
@click.option("--input-size", type=click.IntRange(min=1), help="Input height = width (the recorded resize).")
@click.option("--mean", metavar="M[,M,M]", help="Per-channel mean the model file records (with --std), e.g. 0.5.")
@click.option("--std", metavar="S[,S,S]", help="Per-channel std the model file records (with --mean), e.g. 0.5.")
@click.option("--head", type=click.Choice(["replace", "append"]), default="replace", show_default=True,
              help="Reach --num-classes by replacing the last classifier layer, or by appending Linear(outputs, N) "
              "after it (the VGG16 recipe: classifier.add_linear; the source's whole head loads).")
@click.option("--key", help="Checkpoint entry holding the weights (dotted: 'ema', 'model.state_dict').")
@click.option("--trust", is_flag=True, help="Fully unpickle a custom-code file (RUNS its classes' code).")
@click.option("--dry-run", is_flag=True, help="Show the report, write nothing.")
@click.option("--limit", type=int, default=8, show_default=True, help="Key patterns shown per row (0: all).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="The model file to write (.safetensors).")
@json_option
def command(
    src: str,
    arch: str,
    num_classes: int | None,
    class_names: str | None,
    renames: tuple[str, ...],
    strip_prefix: str,
    allow_partial: bool,
    min_match: float,
    on_shape_mismatch: str,
    no_match_by_order: bool,
    in_channels: int | None,
    input_size: int | None,
    mean: str | None,
    std: str | None,
    head: str,
    key: str | None,
    trust: bool,
    dry_run: bool,
    limit: int,
    out: str | None,
    as_json: bool,
) -> int:
    from torchkeep._adapt import adapt, parse_rename
    from torchkeep.errors import CompatibilityError, UsageError

    if out is None and not dry_run:
        raise UsageError("adapt needs an output file", fix="pass -o OUT.safetensors, or --dry-run to preview")
    rules = [parse_rename(r) for r in renames]
    norm = [floats(v, flag) if v is not None else None for v, flag in ((mean, "--mean"), (std, "--std"))]
    names = [c.strip() for c in class_names.split(",")] if class_names else None
    try:
        result = adapt(
            src,
            arch=arch,
            num_classes=num_classes,
            renames=rules,
            strip_prefix=strip_prefix,
            allow_partial=allow_partial,
            out=out,
            dry_run=dry_run,
            class_names=names,
            in_channels=in_channels,
            input_size=input_size,
            min_match=min_match,
            match_by_order=False if no_match_by_order else "auto",
            on_shape_mismatch=on_shape_mismatch,  # type: ignore[arg-type]
            key=key,
            head=head,  # type: ignore[arg-type]
            mean=norm[0],
            std=norm[1],
            trust=trust,
        )
    except CompatibilityError as exc:
        report = exc.report
        if report is not None:  # refused: still show what would have loaded, then fail with one line
            if as_json:  # the error document, with what would have loaded
                payload = error_payload(exc, type(exc).__name__, str(exc), exc.exit_code)
                emit_error({**payload, "refused": True, "verdict": report.verdict, "report": report.to_dict()})
            else:
                from types import SimpleNamespace

                _human(SimpleNamespace(report=report, arch=arch, num_classes=num_classes, out=None, dry_run=False),
                       limit if limit > 0 else 1 << 30)
        raise
    emit(result, as_json, lambda r: _human(r, limit if limit > 0 else 1 << 30))
    return 0
