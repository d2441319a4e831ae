"""Keep generated rows apart: a candidate too similar to a row already kept is skipped.

Uses tunesmith's own near-duplicate measure, so the generated files pass `tunesmith data check` without
near-duplicate warnings.
"""

from __future__ import annotations

from tunesmith.data.formats import Example
from tunesmith.data.similarity import NEAR_THRESHOLD, compared_text, jaccard, shingles


class Distinct:
    def __init__(self, threshold: float = NEAR_THRESHOLD):
        self.threshold = threshold
        self.kept: list[set[str]] = []

    def add(self, messages: list[dict[str, str]]) -> bool:
        """True (and remembered) when `messages` is not a near duplicate of any row kept so far."""
        sh = shingles(compared_text(Example(messages=messages, source="")))
        if any(jaccard(sh, other) >= self.threshold for other in self.kept):
            return False
        self.kept.append(sh)
        return True
