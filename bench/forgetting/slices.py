"""How often would the training guard's verdict agree with the full `tunesmith eval`, for a given slice?

The guard scores a seeded sample of each suite task's items (`tunesmith.evaluate.guard.guard_tasks`) and
compares them with the base's, as `tunesmith eval` does on every item. Only the items that changed between
base and tuned move a paired difference, and every full evaluation's report keeps them per task (`lost`,
`gained`). So the guard's verdict on a cell's exported weights can be replayed for any slice size, any
sampling seed and any thresholds, from the report alone, without a model.

For each benchmark cell (a row of bench/forgetting.py's results: its suite rows keep the flips, or for older
rows its run folder still has the eval report) and each slice configuration, this draws the guard's items
with seeds 0..N-1 and prints how often the replayed verdict equals the full eval's verdict on the general
tasks. Prose (perplexity) is not replayed: its per-passage losses are not in the report; the replay stands
in the full eval's prose verdict.

Run:  python bench/forgetting/slices.py RESULTS.jsonl [...] [--draws 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.evaluate.guard import (
    GUARD_RESAMPLES,
    GUARD_SIZES,
    UNCONFIRMED_WARN,
    collapse_task,
    guard_tasks,
    is_noise,
)
from tunesmith.evaluate.suite import TaskScores
from tunesmith.evaluate.verdict import Thresholds, compare_task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402


@dataclass(frozen=True)
class Slice:
    """A guard configuration to replay: items per task, and from what size an unconfirmed drop of a rate
    warns (0.10: the verdict's own rule, the fail threshold; None: never; the guard's: UNCONFIRMED_WARN)."""

    name: str
    sizes: Mapping[str, int]
    unconfirmed_at: float | None = 0.10

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(resamples=GUARD_RESAMPLES)


SHIPPED = Slice("the guard's (unconfirmed from UNCONFIRMED_WARN)", GUARD_SIZES, UNCONFIRMED_WARN)


def _with(**sizes: int) -> dict[str, int]:
    return {**GUARD_SIZES, **sizes}


SLICES = (
    Slice("the guard's sizes, the verdict's own rule", GUARD_SIZES),
    Slice("the guard's sizes, confirmed only", GUARD_SIZES, None),
    Slice("16 capitals (before), unconfirmed from 20 pts", _with(capitals=16), 0.20),
    Slice("32 capitals, unconfirmed from 20 pts", _with(capitals=32), 0.20),
    Slice("48 capitals, unconfirmed from 20 pts", _with(capitals=48), 0.20),
    Slice("all elements too, unconfirmed from 20 pts", _with(elements=50), 0.20),
    Slice("16 capitals, 24 free, unconfirmed from 20 pts", _with(capitals=16, capitals_free=24), 0.20),
)


def flips(report: Mapping[str, Any]) -> dict[str, tuple[set[str], set[str]]]:
    """Per suite task of a full eval: (item ids lost, item ids gained)."""
    return {r["task"]: (set(r.get("lost") or ()), set(r.get("gained") or ())) for r in report["suite"]}


def replay(cell: Mapping[str, tuple[set[str], set[str]]], full: Mapping[str, str], s: Slice, seed: int) -> str:
    """The guard's overall verdict on the cell's exported weights, with slice `s` drawn with `seed`."""
    worst = full.get("prose", "pass")  # not replayable: the full eval's verdict stands in
    tasks = [t for t in guard_tasks(s.sizes, seed) if t.name != "prose"]
    free = next((t for t in tasks if t.name == "capitals_free"), None)
    if free is not None and "collapse" in cell:  # the guard's collapse check reads the free replies' prompts
        tasks.append(collapse_task(free, None))
    for task in tasks:
        if task.name not in cell:
            continue
        lost, gained = cell[task.name]
        ids = [str(i["id"]) for i in task.items]
        good_then = [1.0 if i in lost else 0.0 for i in ids]  # the base right, the tuned model not
        good_now = [1.0 if i in gained else 0.0 for i in ids]
        base, tuned = (good_then, good_now) if task.higher_is_better else (good_now, good_then)
        ones = [1.0] * len(ids)
        row = compare_task(TaskScores(task, base, ones), TaskScores(task, tuned, ones), s.thresholds, seed)
        verdict = "pass" if is_noise(row, s.unconfirmed_at) else row.verdict
        worst = max(worst, verdict, key=_results.ORDER.__getitem__)
    return worst

def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--draws", type=int, default=200, help="slice seeds per cell (default: 200)")
    args = p.parse_args(argv)
    cells, agree = [], 0
    for path in args.results:
        for row in _results.read_rows(path):
            report = Path(row["run"]["dir"]) / "eval" / "report.json"
            data = row if all("lost" in r for r in row["suite"]) else (  # rows keep the flips since issue 12
                json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None)
            if data is not None:
                name, cell, full = (f"{row['task']}/{row['recipe']}/s{row['seed']}", flips(data),
                                    {r["task"]: r["verdict"] for r in data["suite"]})
                cells.append((name, cell, full, row["verdict_general"]))
                own = replay(cell, full, SHIPPED, row["seed"])  # the guard's own items: drawn with the run's seed
                agree += own == row["verdict_general"]
                print(f"{name}: the full eval says {row['verdict_general']}; the guard said "
                      f"{row['guard'].get('at_export')} during the run, the replay of its slice says "
                      f"{replay(cell, full, SLICES[0], row['seed'])} by the verdict's own rule, {own} by the guard's")
    if not cells:
        raise SystemExit("no cell with an eval report (the run folders are gone?)")
    print(f"the guard's own slices (each run's seed), by its rule: {agree}/{len(cells)} cells agree with the full "
          "eval's general verdict\n")
    print(f"{len(cells)} cells, {args.draws} slice draws each; agreement: the replayed guard verdict equals the "
          "full eval's general verdict")
    print("| slice | " + " | ".join(f"{name} ({want})" for name, _, _, want in cells) + " | mean |")
    print("| :--- |" + " ---: |" * (len(cells) + 1))
    for s in (*SLICES, SHIPPED):
        rates = []
        for _, cell, full, want in cells:
            rates.append(sum(replay(cell, full, s, seed) == want for seed in range(args.draws)) / args.draws)
        print(f"| {s.name} | " + " | ".join(f"{100 * r:.0f} %" for r in rates)
              + f" | **{100 * sum(rates) / len(rates):.0f} %** |")


if __name__ == "__main__":
    main()
