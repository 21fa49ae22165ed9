"""``torchkeep convert SRC OUT``: format the result of :func:`torchkeep.convert`."""

from __future__ import annotations

import click

from torchkeep._cli.common import console, emit, human_bytes, json_option


@click.command(help="Convert any readable model file (or a DCP checkpoint directory) into weights-only "
               "safetensors (default), a .pt state_dict or a DCP directory (--to dcp). "
               "No code in SRC runs; dangerous files are refused.")
@click.argument("src", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default=None,
              help="Cast floating-point tensors (default: keep every value bit for bit).")
@click.option("--strip-prefix", default="auto", show_default=True, metavar="auto|none|PREFIX",
              help="Strip a wrapper prefix such as module. (DDP) or _orig_mod. (torch.compile).")
@click.option("--format", "--to", "fmt", type=click.Choice(["safetensors", "pt", "dcp"]), default=None,
              help="Output format, for an OUT whose suffix names none (the suffix decides: .safetensors; "
              ".pt/.pth/.bin/.ckpt for a state_dict; others are refused); dcp: a torch.distributed.checkpoint directory.")
@click.option("--key", default=None, help="Checkpoint entry holding the weights, if the automatic choice is wrong.")
@click.option("--trust", is_flag=True, help="Fully unpickle a custom-code file (RUNS its classes' code).")
@json_option
def command(src: str, out: str, dtype: str | None, strip_prefix: str, fmt: str | None, key: str | None,
            trust: bool, as_json: bool) -> None:
    from torchkeep._convert import convert

    result = convert(src, out, dtype=dtype, strip_prefix=strip_prefix, fmt=fmt, trust=trust, key=key)
    emit(result, as_json, _human)


def _human(r) -> None:
    con = console()
    con.print(f"wrote {r.destination} ({r.format}, {r.tensors} tensors, {human_bytes(r.bytes)})")
    con.print(f"  from   {r.source} ({r.source_kind}, {r.source_format}, scan: {r.scan_verdict}, sha256 {r.source_sha256[:16]}…)")
    if r.dtype:
        con.print(f"  cast   {r.cast} floating-point tensors to {r.dtype}")
    if r.stripped_prefix:
        con.print(f"  keys   stripped prefix {r.stripped_prefix!r}")
    if r.aliases:
        con.print(f"  tied   {len(r.aliases)} tensor(s) stored once: " +
                  ", ".join(f"{a} = {b}" for a, b in list(r.aliases.items())[:5]) + " (recorded in metadata)")
    if r.copied_views:
        con.print(f"  views  copied {len(r.copied_views)} overlapping view(s): {', '.join(r.copied_views[:5])}")
