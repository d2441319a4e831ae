"""What every command shares: consoles, error printing, quieting third-party progress bars."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from tunesmith.errors import TunesmithError

console = Console()
console_err = Console(stderr=True)

DATA_HELP = "JSONL, JSON, CSV, Parquet, Arrow, a `datasets` folder, a hub id, or .txt/.md documents (a file or folder)."
FORMAT_HELP = "auto | prompt_completion | chat | alpaca | sharegpt | chat_prompt_completion | text."
COLUMNS_HELP = "Other column names, KEY=COLUMN: prompt=question,completion=answer."


def fail(e: TunesmithError) -> NoReturn:
    """Print a user-facing error (one line, or the first 20 problems of a dataset) and exit."""
    if len(e.problems) > 1:
        console_err.print(f"[bold red]error:[/] {len(e.problems)} problems found", highlight=False)
        for line in str(e).splitlines():
            console_err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    else:
        console_err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)


def quiet_libraries() -> None:
    """Silence transformers' own progress bars and advisory warnings (call after heavy imports are allowed)."""
    import warnings

    import transformers

    # Deprecation chatter between transformers and peft is for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
