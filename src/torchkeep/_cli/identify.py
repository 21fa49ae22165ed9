"""``torchkeep identify FILE``: name the architecture of a weights file from its tensor names and shapes.

Exit 0 when an architecture is named (an exact or close match), 1 when none is (a tie, or weights of no known
architecture), 3 when FILE cannot be read, 64 on bad arguments.
"""

from __future__ import annotations

import click

from torchkeep._cli.common import complete_arch, console, emit, json_option

MAX_KEYS = 12


def _keys(names: list[str]) -> str:
    from torchkeep._keys import collapse_keys

    shown = collapse_keys(names)
    return ", ".join(shown[:MAX_KEYS]) + (f", … ({len(names)} tensors)" if len(shown) > MAX_KEYS else "")


def _print_match(con, r) -> None:
    """How the named architecture matched, and the input it takes."""
    from rich.markup import escape

    what = ("exact: every tensor's name and shape explained" if r.match == "exact"
            else f"close: {r.differences} difference(s)")
    con.print(f"  match       {what} ({r.tensors} tensors, {', '.join(r.dtypes)}); confidence {r.confidence:.2f}")
    extra = []
    if r.in_channels is not None:
        extra.append(f"{r.in_channels} input channel(s)")
    if r.input_size:
        extra.append(f"input {r.input_size[0]}x{r.input_size[1]}")
    if r.arch_kwargs:
        extra.append(", ".join(f"{k}={v!r}" for k, v in r.arch_kwargs.items()))
    if extra:
        con.print(f"  input       {escape('; '.join(extra))}")


def _candidates_table(candidates):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="candidates", title_justify="left")
    for col in ("architecture", "classes", "match", "differences", "confidence"):
        table.add_column(col, justify="right" if col in ("classes", "differences", "confidence") else "left")
    for c in candidates:
        name = c.architecture + (f" ({', '.join(f'{k}={v!r}' for k, v in c.arch_kwargs.items())})"
                                 if c.arch_kwargs else "")
        table.add_row(escape(name), str(c.num_classes if c.num_classes is not None else "?"), c.match,
                      str(c.differences), f"{c.confidence:.2f}")
    return table


def _human(r) -> None:
    from rich.markup import escape

    con = console()
    con.print(f"[bold]{escape(r.path or '<state_dict>')}[/bold]")
    style = "green" if r.match == "exact" and r.architecture else ("yellow" if r.architecture else "red")
    con.print(f"  looks like  [{style}]{escape(r.summary())}[/{style}]")
    if r.architecture:
        _print_match(con, r)
    where = []
    if r.weights_location:
        where.append(f"in {r.weights_location!r}")
    if r.prefix:
        where.append(f"prefix {r.prefix!r} stripped")
    if where:
        con.print(f"  weights     {escape(', '.join(where))}")
    if r.missing:
        con.print(f"  missing     {escape(_keys(r.missing))}")
    if r.unexpected:
        con.print(f"  unexpected  {escape(_keys(r.unexpected))}")
    for m in r.reshaped[:MAX_KEYS]:
        con.print(f"  reshaped    {escape(m.name)} {m.shape} (expected {escape(str(m.expected))})")
    for note in r.notes:
        con.print(f"  note        {escape(note)}")
    if r.architecture and r.source in ("seed", "torchvision") and r.path:
        adapt = f"torchkeep adapt {escape(r.path)} --arch auto -o model.safetensors"
        if r.match == "exact":
            con.print(f"  next        torchkeep predict {escape(r.path)} IMAGES   |   {adapt}")
        else:
            con.print(f"  next        {adapt}  (loads what fits; the report lists the rest)")
    if r.candidates:
        con.print(_candidates_table(r.candidates))
    if r.layers:
        con.print("[bold]layers[/bold] (what the weights determine)")
        for ly in r.layers:
            con.print(f"  {escape(ly.name or '(root)'):<32} {escape(ly.description)}")
    if r.skeleton:
        con.print("[bold]skeleton[/bold] (loads the weights with strict=True; --skeleton FILE writes it)")
        con.print(escape(r.skeleton))


@click.command(help="Name the architecture of a weights file (state_dict, checkpoint) from its names and shapes.")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@json_option
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True, help="Candidates to list.")
@click.option("--key", metavar="ENTRY", help="The checkpoint entry holding the weights (dotted), if not the automatic choice.")
@click.option("--arch", "archs", multiple=True, metavar="NAME", shell_complete=complete_arch,
              help="Compare with these architectures only (repeatable; timm's as timm/NAME).")
@click.option("--skeleton", "skeleton_out", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="Write the nn.Module skeleton of unknown weights to FILE (.py).")
@click.pass_context
def command(ctx: click.Context, file: str, as_json: bool, top: int, key: str | None, archs: tuple[str, ...],
            skeleton_out: str | None) -> int:
    from torchkeep._atomic import atomic_write_bytes
    from torchkeep._identify import identify

    result = identify(file, top=top, key=key, architectures=list(archs) or None)
    if skeleton_out and result.skeleton:
        atomic_write_bytes(skeleton_out, result.skeleton.encode())
    emit(result, as_json, _human)
    return 0 if result.architecture else 1
