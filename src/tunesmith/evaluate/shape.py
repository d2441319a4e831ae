"""A fine-tune's own output shape, learned from its training replies, and whether a reply has it.

A narrow fine-tune can teach a model to answer *everything* its way: "What is the capital of Canada?" ->
"1993-12-23" after a date-conversion fine-tune, "shipping" after a ticket classifier. The share of general
prompts answered in the fine-tune's shape is the *format collapse* rate (suite task `collapse`).

The shape is read from the training replies, first lines only (a reply's form shows there). Two kinds:
- `labels`: the replies are a small closed set of words ("billing", "shipping", ...; at most MAX_LABELS,
  each of at most three words, each seen three times on average): a reply is in shape when,
  lower-cased and without surrounding punctuation, it is one of them;
- `form`: a signature of each reply, where a run of words is `A` (capitalised) or `a`, a run of digits
  `9`, other characters stay, white space goes, and words in at least half of the replies stay literally:
  "1948-03-21" -> `9-9-9`, "feat(search): add a retry limit" -> `a(a):a`, "Mira Strand is on the Quorra
  team." -> `A is on the A team.` (spaces shown here between literal words). The shape is the signatures
  that at least `MIN_FORM_SHARE` of the replies have; a reply is in shape when its signature is one of them.
Replies without a common form (prose answers, each worded its own way) have no shape: `learn_shape` returns
None, and collapse is not scored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

MAX_LABELS = 20  # more distinct replies than this is not a label set
MIN_FORM_SHARE = 0.05  # a signature held by fewer replies is not part of the shape
MIN_COVERAGE = 0.6  # the shape must cover this share of the training replies, or there is none
LITERAL_SHARE = 0.5  # words in at least this share of the replies stay literally in the signature
_UNITS = re.compile(r"[^\W\d_]+|\d+|\S")  # a run of letters, a run of digits, or one other character


@dataclass(frozen=True)
class Shape:
    """The output shape of a fine-tune's replies."""

    kind: Literal["labels", "form"]
    values: tuple[str, ...]  # the labels, or the signatures
    literal: tuple[str, ...]  # form: words kept literally (lower case)
    coverage: float  # share of the training replies in shape

    def matches(self, reply: str) -> bool:
        """Whether `reply` is in this shape (judged on its first line)."""
        line = first_line(reply)
        if not line:
            return False
        if self.kind == "labels":
            return _label(line) in self.values
        return signature(line, frozenset(self.literal)) in self.values

    def describe(self) -> str:
        """In words, for reports: 'one of 5 labels: billing, shipping, ...' or 'the form 9-9-9'."""
        if self.kind == "labels":
            shown = ", ".join(self.values[:6]) + (", ..." if len(self.values) > 6 else "")
            return f"one of {len(self.values)} labels: {shown}"
        forms = " or ".join(self.values[:3]) + (" or ..." if len(self.values) > 3 else "")
        return f"the form {forms}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values), "literal": list(self.literal),
                "coverage": round(self.coverage, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shape:
        return cls(d["kind"], tuple(d["values"]), tuple(d.get("literal", ())), float(d.get("coverage", 1.0)))


def first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _label(line: str) -> str:
    return line.strip(" \t.,;:!?\"'`").lower()


def _words(line: str) -> set[str]:
    return {u.lower() for u in _UNITS.findall(line) if u[0].isalpha()}


def signature(line: str, literal: frozenset[str] = frozenset()) -> str:
    """The form of one line: word runs -> A/a, digit runs -> 9, literal words kept, spaces dropped."""
    units: list[str] = []
    for token in _UNITS.findall(line):
        if token[0].isalpha():
            unit = f" {token.lower()} " if token.lower() in literal else ("A" if token[0].isupper() else "a")
        elif token[0].isdigit():
            unit = "9"
        else:
            unit = token
        if not (units and unit in ("A", "a", "9") and units[-1] == unit):  # a run of words is one unit
            units.append(unit)
    joined = "".join(units).replace("  ", " ").strip()
    return re.sub(r" (?=[^\w\s])", "", joined)  # "team ." -> "team."


def learn_shape(replies: Sequence[str]) -> Shape | None:
    """The shape most training replies share, or None when they share none (see the module docstring)."""
    lines = [first_line(r) for r in replies]
    lines = [x for x in lines if x]
    if len(lines) < 10:  # too few replies to call anything their shape
        return None
    labels = Counter(_label(x) for x in lines)
    if (len(labels) <= MAX_LABELS and len(lines) >= 3 * len(labels)
            and all(len(v.split()) <= 3 and any(c.isalpha() for c in v) for v in labels)):
        return Shape("labels", tuple(sorted(labels)), (), 1.0)
    counts = Counter(w for x in lines for w in _words(x))
    literal = frozenset(w for w, c in counts.items() if c >= LITERAL_SHARE * len(lines))
    forms = Counter(signature(x, literal) for x in lines)
    kept = {f: c for f, c in forms.items() if c >= MIN_FORM_SHARE * len(lines)}
    coverage = sum(kept.values()) / len(lines)
    if coverage < MIN_COVERAGE:
        return None
    ordered = tuple(sorted(kept, key=lambda f: (-kept[f], f)))
    return Shape("form", ordered, tuple(sorted(literal)), coverage)


def shape_of_examples(rows: Sequence[Any]) -> Shape | None:
    """The shape of the assistant replies in chat rows (message lists; documents have no replies)."""
    replies = [r[-1]["content"] for r in rows if isinstance(r, list) and r and r[-1].get("role") == "assistant"
               and isinstance(r[-1].get("content"), str)]
    return learn_shape(replies)
