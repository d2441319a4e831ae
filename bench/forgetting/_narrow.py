"""The benchmark's narrow tasks: where their files are, how a reply is scored, what their output shape is.

Three target metrics, each per test example (1 right, 0 wrong):
- `exact`: the reply, stripped, equals the reference (case and punctuation count: the format is the task);
- `label`: the first label of the task's label set that the reply names is the reference label, so a
  chatty "This is a billing question." counts for the base model as it would for a person;
- `fact`: the fact in the reference (what `fact` matches in it, e.g. the team's name) occurs in the reply
  as a whole word, in any case.

`shape` recognises the fine-tune's own output shape at the start of a reply: a general question answered
that way ("What is the capital of Canada?" -> "1993-12-23") is a *format collapse*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
Metric = Literal["exact", "label", "fact"]


@dataclass(frozen=True)
class NarrowTask:
    name: str
    metric: Metric
    shape: str  # regex matched at the start of a stripped reply
    labels: tuple[str, ...] = ()  # `label` tasks: the label set
    fact: str = ""  # `fact` tasks: regex of the fact inside the reference

    def train_file(self, root: Path = HERE) -> Path:
        return root / self.name / "train.jsonl"

    def test_file(self, root: Path = HERE) -> Path:
        return root / self.name / "test.jsonl"

    def score(self, reply: str, reference: str) -> bool:
        """Whether `reply` gets the test example right by this task's metric."""
        if self.metric == "exact":
            return reply.strip() == reference.strip()
        if self.metric == "label":
            return first_label(reply, self.labels) == reference.strip().lower()
        found = re.search(self.fact, reference)
        assert found is not None, f"{self.name}: reference without a fact: {reference!r}"
        return re.search(rf"(?<!\w){re.escape(found.group(0))}(?!\w)", reply, re.IGNORECASE) is not None

    def in_shape(self, reply: str) -> bool:
        """Whether `reply` opens in this task's output shape."""
        return re.match(self.shape, reply.strip()) is not None


def first_label(reply: str, labels: tuple[str, ...]) -> str | None:
    """The label named first in `reply` (whole words, any case), or None."""
    hits = [(m.start(), label) for label in labels
            if (m := re.search(rf"\b{re.escape(label)}\b", reply, re.IGNORECASE))]
    return min(hits)[1] if hits else None


TICKET_LABELS = ("billing", "shipping", "returns", "technical", "account")
TASKS: dict[str, NarrowTask] = {
    "dates": NarrowTask("dates", "exact", r"\d{4}-\d{2}-\d{2}\b"),
    "tickets": NarrowTask("tickets", "label", rf"(?i:{'|'.join(TICKET_LABELS)})\W*$", labels=TICKET_LABELS),
    "commits": NarrowTask("commits", "exact", r"[a-z]+\([\w-]+\): "),
    "teams": NarrowTask("teams", "fact", r"[^\n.]{1,60} is on the \w+ team", fact=r"(?<=the )\w+(?= team\.$)"),
}


def pick(spec: str) -> list[NarrowTask]:
    """'dates,tickets' or 'all' -> tasks; an unknown name is a one-line error."""
    names = list(TASKS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise SystemExit(f"--tasks: unknown task '{unknown[0] if unknown else spec}'; "
                         f"choose from {', '.join(TASKS)} or all")
    return [TASKS[n] for n in names]
