"""Held-out questions right: is the expected fact in the model's greedy reply?

Reads the report.json of `tunesmith eval ... --data examples/docs/questions.jsonl` (it keeps both models'
greedy replies) and counts, for base and tuned, the replies that contain the expected fact, both normalised
(case, spacing and punctuation other than hyphens ignored: "Fernhill-Staff." contains "fernhill-staff", but
a reply repeating the question's "Fernhill staff Wi-Fi" does not). Exact match (the whole reply equals the
fact) is in the report as well; a model that answers in a sentence rarely scores there.

    python examples/docs/score.py runs/handbook-cpt/eval/report.json
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path


def normalise(text: str) -> str:
    """Lower case; punctuation but hyphens, and runs of space, collapsed to one space."""
    return " ".join(re.sub(r"[^\w-]+", " ", unicodedata.normalize("NFKC", text).lower()).split())


def found(fact: str, reply: str | None) -> bool:
    return reply is not None and f" {normalise(fact)} " in f" {normalise(reply)} "


def main(path: str) -> None:
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = report["target_task"]["per_example"]
    labels = (report["base"]["label"] if report.get("base") else "base", report["tuned"]["label"])
    totals = [0, 0]
    for r in rows:
        marks = [found(r["reference"], r[key]) for key in ("base", "tuned")]
        totals = [t + m for t, m in zip(totals, marks, strict=True)]
        print(f"{'✓' if marks[0] else '·'} {'✓' if marks[1] else '·'}  {r['prompt']}  [{r['reference']}]")
        print(f"      base:  {r['base']!r}\n      tuned: {r['tuned']!r}")
    for label, total in zip(labels, totals, strict=True):
        print(f"{label}: {total}/{len(rows)} held-out questions right (fact in the greedy reply)")


if __name__ == "__main__":
    main(sys.argv[1])
