"""Entry point of the ``torchkeep`` command.

Subcommands are loaded lazily (``inspect`` and ``scan`` must start fast and never import torch), each
from its own module under ``torchkeep._cli``; a module exposes a click command named ``command``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

import click

from torchkeep._cli.common import emit_error, error_payload
from torchkeep.errors import TorchkeepError, TorchkeepWarning

# name -> (module under torchkeep._cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect", "Describe any model file without running its code or reading tensor bytes."),
    "scan": ("scan", "Find code that a model file would run when loaded (safe / custom-code / dangerous)."),
    "identify": ("identify", "Name the architecture of a weights file from its tensor names and shapes alone."),
    "convert": ("convert", "Convert any readable model file into weights-only safetensors or a .pt state_dict."),
    "models": ("models", "List the architectures torchkeep can build."),
    "adapt": ("adapt", "Load weights into an architecture (prefixes, renames, new heads) and save a model file."),
    "train": ("train", "Train an image classifier with kill-safe checkpoints, TensorBoard and plots."),
    "eval": ("eval", "Evaluate a model file on a dataset: accuracy, per-class metrics, confusion matrix."),
    "predict": ("predict", "Classify images with a model file."),
    "export": ("export", "Export a model file to TorchScript, ONNX, safetensors or a state_dict, with a parity check."),
    "diff": ("diff", "Compare the weights of two model files."),
    "serve": ("serve", "Serve model files over HTTP: a web page, a JSON API, Open Inference Protocol v2, metrics."),
    "demo": ("demo", "Run the whole story on the embedded digits dataset (the README's main command)."),
}

EXIT_USAGE = 64


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"torchkeep._cli.{COMMANDS[cmd_name][0]}")
        cmd: click.Command = module.command
        cmd.name = cmd_name
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


def _version() -> str:
    from torchkeep import __version__

    return __version__


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, envvar="TORCHKEEP_DEBUG", help="Show full tracebacks on errors.")
@click.version_option(version=_version(), prog_name="torchkeep")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """torchkeep: the whole life of a PyTorch model file, without running untrusted code.

    Exit codes: 0 ok; 1 a negative result (scan: custom code; diff: different; predict: some inputs
    failed); 2 dangerous file; 3 unreadable input; 4 operation failed; 64 usage error; 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _global_flags(args: list[str]) -> tuple[list[str], bool, bool]:
    """``--debug`` may come anywhere (``torchkeep inspect x --debug``): it is moved before the subcommand.

    Returns the arguments for click, whether a traceback was asked for and whether ``--json`` was given
    (then errors are JSON on stdout too). A lone ``--`` ends the options: what follows is left alone.
    """
    end = args.index("--") if "--" in args else len(args)
    options, rest = args[:end], args[end:]
    debug = "--debug" in options
    as_json = "--json" in options
    if debug:
        options = ["--debug", *(a for a in options if a != "--debug")]
    return options + rest, debug or os.environ.get("TORCHKEEP_DEBUG", "") not in ("", "0"), as_json


def _explain(exc: BaseException) -> str | None:
    """The torchkeep fix for a classic PyTorch error (size mismatch, missing keys, CUDA on CPU...)."""
    try:
        from torchkeep._explain import explain_error

        return explain_error(exc)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; never returns (exits with the command's code)."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run(args))


def run(args: list[str]) -> int:
    """Run the CLI with ``args`` and return the exit code (used by tests and ``main``)."""
    args, debug, as_json = _global_flags(args)
    state: dict = {}
    try:
        with _warnings_as_lines():
            rv = cli.main(args=args, prog_name="torchkeep", standalone_mode=False, obj=state)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:  # usage errors: bad options, missing arguments
        exc.show()
        return _failed(as_json, state, exc, "UsageError", exc.format_message(), EXIT_USAGE)
    except (click.Abort, KeyboardInterrupt) as exc:
        click.echo("torchkeep: interrupted", err=True)
        return _failed(as_json, state, exc, "Interrupted", "interrupted", 130)
    except TorchkeepError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"torchkeep: error: {exc}", err=True)
        return _failed(as_json, state, exc, type(exc).__name__, str(exc), exc.exit_code)
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        first = (str(exc).strip().splitlines() or [""])[0]
        if debug:
            traceback.print_exc()
        else:
            click.echo(
                f"torchkeep: internal error: {type(exc).__name__}: {first} (re-run with --debug for the traceback)",
                err=True,
            )
        hint = _explain(exc)
        if hint:
            click.echo(f"torchkeep: hint: {hint}", err=True)
        return _failed(as_json, state, exc, "InternalError", f"{type(exc).__name__}: {first}", 4, hint=hint)
    return int(rv or 0)


def _failed(as_json: bool, state: dict, exc: BaseException, kind: str, message: str, code: int,
            hint: str | None = None) -> int:
    """With ``--json``, the error as a JSON document on stdout too (unless the command wrote its own)."""
    if as_json and not state.get("error_emitted"):
        emit_error(error_payload(exc, kind, message, code, hint))
    return code


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """torchkeep's own warnings (``TorchkeepWarning``) print as ``torchkeep: warning: ...`` on stderr."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, TorchkeepWarning):
            click.echo(f"torchkeep: warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
