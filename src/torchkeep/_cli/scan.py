"""``torchkeep scan PATH... [--recursive] [--json] [--sarif FILE]``: find code a model file would run.

Exit codes: 0 all safe; 1 custom code found (nothing dangerous); 2 something dangerous; 3 a file could
not be read (nothing dangerous); 64 usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from torchkeep._cli.common import console, emit, json_option, progress

_STYLE = {"safe": "green", "custom-code": "yellow", "dangerous": "bold red", "error": "magenta"}
_SEV_STYLE = {"dangerous": "red", "custom-code": "yellow", "error": "magenta", "warning": "cyan"}


def _human(result: dict, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    reports = result["_reports"]
    for rep in reports:
        style = _STYLE[rep.verdict]
        head = f"[{style}]{rep.verdict}[/{style}]  {escape(rep.path)}  [dim]({rep.format or 'unknown format'}"
        head += f", {len(rep.streams)} pickle stream{'s' if len(rep.streams) != 1 else ''})[/dim]"
        out.print(head)
        if rep.verdict == "safe" and not rep.findings:
            continue
        if rep.error:
            out.print(f"  [magenta]cannot read:[/magenta] {escape(rep.error)}")
        if rep.verdict == "custom-code":
            out.print(f"  loading imports and runs: {escape(', '.join(rep.custom_classes))}")
        shown = [f for f in rep.findings if f.severity != "custom-code" or rep.verdict == "custom-code"]
        if not shown:
            continue
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1), pad_edge=False)
        for col in ("severity", "where", "what", "why"):
            table.add_column(col, overflow="fold")
        for f in shown[:limit]:
            where = f.stream + (f" @ {f.offset}" if f.offset is not None else "")
            sev = _SEV_STYLE.get(f.severity, "white")
            table.add_row(f"[{sev}]{f.severity}[/{sev}]", escape(where), escape(f.target), escape(f.why))
        out.print(table)
        if len(shown) > limit:
            out.print(f"  … {len(shown) - limit} more findings (--limit 0 or --json for all)")
    if len(reports) > 1:
        summary = Table(title="summary", title_justify="left", box=None, padding=(0, 2), pad_edge=False)
        summary.add_column("verdict")
        summary.add_column("files", justify="right")
        for verdict in ("safe", "custom-code", "dangerous", "error"):
            n = result["summary"][verdict]
            style = _STYLE[verdict] if n else "dim"
            summary.add_row(f"[{style}]{verdict}[/{style}]", str(n))
        out.print(summary)
    if result["skipped"]:
        names = ", ".join(Path(p).name for p in result["skipped"][:5]) + (" …" if len(result["skipped"]) > 5 else "")
        out.print(f"[dim]skipped {len(result['skipped'])} file(s) that are not model files: {escape(names)}[/dim]")
    if result["sarif"]:
        out.print(f"SARIF log written to {escape(result['sarif'])}")


@click.command(
    help="Find code a model file would run when loaded, without running it: safe / custom-code / dangerous.\n\n"
    "PATH may be files or directories (their files; all levels with --recursive). "
    "Exit 0 all safe, 1 custom code found, 2 dangerous, 3 a file could not be read."
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--recursive", "-r", is_flag=True, help="Scan directories' subdirectories too.")
@click.option("--sarif", type=click.Path(dir_okay=False, path_type=str), help="Also write a SARIF 2.1.0 log to FILE.")
@click.option("--limit", type=int, default=20, show_default=True, help="Findings to show per file (0: all).")
@json_option
def command(paths: tuple[str, ...], recursive: bool, sarif: str | None, limit: int, as_json: bool) -> int:
    from torchkeep._atomic import atomic_write
    from torchkeep._scan import exit_code, iter_files, scan, to_sarif
    from torchkeep.errors import InputError

    files = list(iter_files(paths, recursive))
    named = {Path(p) for p in paths if not Path(p).is_dir()}
    if not files:
        nested = any(Path(p).is_dir() and any(c.is_dir() for c in Path(p).iterdir()) for p in paths)
        raise InputError(
            "no files to scan",
            path=", ".join(paths),
            fix="pass --recursive to scan subdirectories" if nested and not recursive else "name model files",
        )
    show_bar = any(Path(p).is_dir() for p in paths) and not as_json and sys.stderr.isatty()
    scanned = [scan(f) for f in progress(files, total=len(files), description="scanning", enabled=show_bar)]
    # Files found inside directories that are not model files at all (README, configs) are skipped;
    # a file named on the command line that cannot be read is an error (exit 3).
    skip = [r.unknown_format and Path(r.path) not in named for r in scanned]
    reports = [r for r, s in zip(scanned, skip) if not s]
    skipped = [r.path for r, s in zip(scanned, skip) if s]
    code = exit_code(reports)
    if sarif:
        with atomic_write(sarif, "w") as fh:
            json.dump(to_sarif(reports), fh, indent=2)
            fh.write("\n")
    summary = {v: sum(r.verdict == v for r in reports) for v in ("safe", "custom-code", "dangerous", "error")}
    result = {
        "files": [r.to_dict() for r in reports],
        "summary": summary,
        "skipped": skipped,
        "exit_code": code,
        "sarif": sarif,
    }
    if as_json:
        emit(result, True, lambda _: None)
    else:
        _human({**result, "_reports": reports}, limit if limit > 0 else 1 << 30)
    return code
