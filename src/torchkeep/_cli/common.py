"""Helpers shared by the CLI commands: JSON output, tables, progress bars."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

__all__ = ["complete_arch", "console", "emit", "emit_error", "error_payload", "human_bytes", "human_count", "json_option", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths, enums, tuples, sets and numpy/torch scalars into JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (os.PathLike, Path)):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except Exception:
            pass
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


def complete_arch(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of ``--arch``: the architecture names (from the catalog: no torch import)."""
    from click.shell_completion import CompletionItem

    from torchkeep.models import arch_names

    return [CompletionItem(n) for n in arch_names() if n.startswith(incomplete)]


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema in docs/).")(f)


def console(stderr: bool = False):
    """A rich Console (imported lazily)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped output is read by people too: don't squeeze it into 80 columns
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print ``result`` as JSON or through the ``human`` formatter."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), indent=2) + "\n")
    else:
        human(result)


def error_payload(exc: BaseException, kind: str, message: str, code: int, hint: str | None = None) -> dict:
    """``{"error": {"type", "message", "exit_code", "what", "path", "fix", ...}}``: a failure under ``--json``."""
    from torchkeep.errors import TorchkeepError

    error: dict[str, Any] = {"type": kind, "message": message, "exit_code": code}
    if isinstance(exc, TorchkeepError):
        error.update(what=exc.what, path=exc.path, fix=exc.fix)
        for extra in ("findings", "classes"):  # UnsafeFileError, UntrustedCodeError
            if getattr(exc, extra, None):
                error[extra] = getattr(exc, extra)
    if hint:
        error["hint"] = hint
    return {"error": error}


def emit_error(payload: dict) -> None:
    """Print a failure's JSON document on stdout (``--json``); the CLI then prints no second one."""
    sys.stdout.write(json.dumps(to_jsonable(payload), indent=2) + "\n")
    ctx = click.get_current_context(silent=True)
    if ctx is not None and isinstance(ctx.obj, dict):
        ctx.obj["error_emitted"] = True


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def progress(iterable: Iterable, total: int | None = None, description: str = "", enabled: bool = True):
    """Iterate with a rich progress bar on stderr (hidden when not a terminal or disabled)."""
    if not enabled:
        yield from iterable
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
