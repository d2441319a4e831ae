"""`tunesmith data ...`: validate and report on datasets, write clean train/eval splits."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check and prepare datasets.", no_args_is_help=True)
