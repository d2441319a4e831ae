"""User-facing errors. The CLI prints one line for each and exits 2; no traceback for a user mistake.

An error may carry several problems (every invalid row of a dataset, every bad setting of a config): all
are collected before raising, the first 20 are shown and the rest counted.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """A mistake the user can fix: bad input, bad config, a missing file. Message says where, what, how."""

    exit_code = 2
    shown = 20

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = self.problems[: self.shown]
        more = len(self.problems) - len(head)
        text = "\n".join(head)
        if more > 0:
            text += f"\n... and {more} more problem{'s' if more != 1 else ''}"
        super().__init__(text)


class ConfigError(TunesmithError):
    """An unknown or invalid setting."""


class ModelError(TunesmithError):
    """A model that cannot be found or loaded safely."""


class RunError(TunesmithError):
    """A run folder that is missing, foreign or inconsistent (e.g. resuming the wrong folder)."""


class DiskFullError(RunError):
    """The disk filled up while a run wrote (a checkpoint, its export); what was written before is intact."""


class TrainingError(TunesmithError):
    """Training stopped for a reason the user must act on (e.g. a non-finite loss)."""


class DataError(TunesmithError):
    """One or more problems in a dataset. `problems` holds every one, as 'file:line: field: message'."""
