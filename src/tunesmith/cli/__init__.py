"""The `tunesmith` command: thin wrappers over the Python API. Heavy libraries load inside commands."""

from __future__ import annotations

import logging
import os
import sys

import typer

from tunesmith import __version__
from tunesmith.cli import data, evaluate, export, plan, run, serve, train
from tunesmith.cli.common import console_err, fail
from tunesmith.errors import TunesmithError

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune a pre-trained language model on your data: decide, prepare, plan, train, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
) -> None:
    """Fine-tune a pre-trained language model on your data."""


app.add_typer(data.app, name="data")
for module in (run, plan, train, evaluate, serve, export):
    module.register(app)


def main() -> None:
    """Console entry point: a user mistake prints one line and exits 2, never a traceback."""
    # Quiet third-party chatter; tunesmith prints what matters itself.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes (imported by peft) looks for optional CPU kernels on the hub and warns when there are none;
    # its own kernels work, so there is nothing for the user to act on.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    calibrating = sys.argv[1:2] == ["plan"] and "--no-calibrate" not in sys.argv  # times real training steps
    if sys.argv[1:2] in (["train"], ["run"]) or calibrating:
        from tunesmith.train.allocator import reexec_under_mimalloc

        reexec_under_mimalloc(sys.argv[1:])
    try:
        app()
    except TunesmithError as e:
        fail(e)
    except KeyboardInterrupt:
        console_err.print("interrupted")
        sys.exit(130)
