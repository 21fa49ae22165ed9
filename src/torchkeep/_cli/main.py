"""Entry point of the ``torchkeep`` command.

Subcommands are loaded lazily (``inspect`` and ``scan`` must start fast and never import torch), each
from its own module under ``torchkeep._cli``; a module exposes a click command named ``command``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from torchkeep.errors import TorchkeepError

# name -> (module under torchkeep._cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect", "Describe any model file without running its code or reading tensor bytes."),
    "scan": ("scan", "Find code that a model file would run when loaded (safe / custom-code / dangerous)."),
    "convert": ("convert", "Convert any readable model file into weights-only safetensors or a .pt state_dict."),
    "models": ("models", "List the architectures torchkeep can build."),
    "adapt": ("adapt", "Load weights into an architecture (prefixes, renames, new heads) and save a model file."),
    "train": ("train", "Train an image classifier with kill-safe checkpoints, TensorBoard and plots."),
    "eval": ("eval", "Evaluate a model file on a dataset: accuracy, per-class metrics, confusion matrix."),
    "predict": ("predict", "Classify images with a model file."),
    "export": ("export", "Export a model file to TorchScript, ONNX, safetensors or a state_dict, with a parity check."),
    "diff": ("diff", "Compare the weights of two model files."),
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


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("TORCHKEEP_DEBUG", "") not in ("", "0")


def _explain(exc: BaseException) -> str | None:
    """The torchkeep fix for a classic PyTorch error (size mismatch, missing keys, CUDA on CPU...)."""
    try:
        from torchkeep._adapt import explain_error

        return explain_error(exc)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; never returns (exits with the command's code)."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run(args))


def run(args: list[str]) -> int:
    """Run the CLI with ``args`` and return the exit code (used by tests and ``main``)."""
    debug = _debug_requested(args)
    try:
        rv = cli.main(args=args, prog_name="torchkeep", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.Abort:
        click.echo("torchkeep: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("torchkeep: interrupted", err=True)
        return 130
    except TorchkeepError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"torchkeep: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"torchkeep: internal error: {type(exc).__name__}: {first} (re-run with --debug for the traceback)",
                err=True,
            )
        hint = _explain(exc)
        if hint:
            click.echo(f"torchkeep: hint: {hint}", err=True)
        return 4
    return int(rv or 0)
