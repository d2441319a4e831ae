"""One benchmark cell's result row (from the eval report and the run folder), the JSONL file, the table.

A row is plain JSON, so later sessions can compare results files before and after a change. Its keys:
task, recipe, flags, seed, target {metric, n, base, tuned, delta, ci}, verdict (the full `tunesmith eval`
verdict), verdict_general (general tasks only), suite [{task, group, base, tuned, delta, ci, relative,
verdict} per suite task], worst_general and safety {refusal, over_refusal} (rows of `suite`), guard
{evals: [{step, verdict, eval_loss, guard/...}], exported_step, at_export (the exported weights' verdict),
worst}, probe {capitals_free, collapse, words}, replies {target: {base, tuned}, probe: {base, tuned}} (every
reply, so any figure can be recomputed), run {steps, exported_step, scale (interpolation toward the base),
best_eval_loss}, seconds {train, eval, probe}, commands, machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ORDER = {"pass": 0, "warn": 1, "fail": 2}
KEY = ("task", "recipe", "seed")  # what identifies a cell in a results file


def target_scores(task: Any, per_example: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The task's own metric on the eval report's greedy replies, base and tuned, with a paired interval."""
    import numpy as np

    from tunesmith.evaluate.verdict import paired_bootstrap

    base = np.array([task.score(r["base"], r["reference"]) for r in per_example], float)
    tuned = np.array([task.score(r["tuned"], r["reference"]) for r in per_example], float)
    ones = np.ones(len(per_example))
    delta, low, high = paired_bootstrap((base, ones), (tuned, ones), seed=seed)
    return {"metric": task.metric, "n": len(per_example), "base": float(base.mean()), "tuned": float(tuned.mean()),
            "delta": delta, "ci": [low, high]}


def harm(row: dict[str, Any], thresholds: dict[str, float]) -> float:
    """How much worse the tuned model is on a suite row, in units of that row's fail threshold."""
    sign = -1.0 if row["higher_is_better"] else 1.0
    return sign * row["delta"] / (thresholds["ppl_fail"] if row["relative"] else thresholds["fail"])


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("task", "group", "base", "tuned", "delta", "ci", "relative", "verdict")}


def suite_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Overall and general-only verdicts, the worst general task, and the two safety rows."""
    rows = report["suite"]
    general = [r for r in rows if r["group"] == "general"]
    worst = max(general, key=lambda r: (ORDER[r["verdict"]], harm(r, report["thresholds"])))
    by_name = {r["task"]: r for r in rows}
    return {
        "verdict": report["verdict"],
        "verdict_general": max((r["verdict"] for r in general), key=ORDER.__getitem__),
        "suite": [{**_brief(r), "lost": r.get("lost", []), "gained": r.get("gained", [])} for r in rows],
        "worst_general": _brief(worst),
        "safety": {name: _brief(by_name[name]) for name in ("refusal", "over_refusal") if name in by_name},
    }


def guard_summary(metrics: Sequence[dict[str, Any]], exported_step: int | None) -> dict[str, Any]:
    """The in-training guard's verdict at each evaluation and at the step that was exported."""
    evals = [{"step": r["step"], "verdict": r["guard_verdict"],
              **{k: v for k, v in r.items() if k == "eval_loss" or k.startswith("guard/")}}
             for r in metrics if "guard_verdict" in r]
    at_export = next((e["verdict"] for e in evals if e["step"] == exported_step), None)
    worst = max((e["verdict"] for e in evals), key=ORDER.__getitem__, default=None)
    return {"evals": evals, "exported_step": exported_step, "at_export": at_export, "worst": worst}


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How often the in-training guard's verdict on the exported weights equals the full `tunesmith eval`
    verdict: on the general tasks (what the guard's slice samples) and overall (safety included)."""
    scored = [r for r in rows if r["guard"].get("at_export")]
    general = sum(r["guard"]["at_export"] == r["verdict_general"] for r in scored)
    overall = sum(r["guard"]["at_export"] == r["verdict"] for r in scored)
    missed = [f"{r['task']}/{r['recipe']}/s{r['seed']}: guard {r['guard']['at_export']}, eval {r['verdict_general']}"
              for r in scored if r["guard"]["at_export"] != r["verdict_general"]]
    return {"n": len(scored), "general": general, "overall": overall, "disagree": missed}


def agreement_line(rows: Sequence[dict[str, Any]]) -> str:
    a = agreement(rows)
    if not a["n"]:
        return "guard agreement: no cell with a guard verdict"
    return (f"guard agreement with the full eval: {a['general']}/{a['n']} cells ({100 * a['general'] / a['n']:.0f} %) "
            f"on the general verdict, {a['overall']}/{a['n']} on the overall verdict"
            + (f"; differing: {'; '.join(a['disagree'])}" if a["disagree"] else ""))


# ------------------------------------------------------------------------------------------------- file
def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One line per finished cell, flushed at once, so an interrupted benchmark keeps what it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace the file's rows (written aside, then renamed: a crash leaves the old file whole)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in KEY)


# ------------------------------------------------------------------------------------------------ table
HEADER = ["task", "recipe", "seed", "target base → tuned", "worst general Δ [CI]", "refusal Δ", "over-refusal Δ",
          "verdict", "guard export / worst", "capitals free base → tuned", "collapse base → tuned",
          "words base → tuned", "min train + eval"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _delta(d: dict[str, Any] | None) -> str:
    from tunesmith.evaluate.report import fmt_delta

    return "-" if d is None else fmt_delta(d["delta"], d["ci"], d["relative"])


def table_row(row: dict[str, Any]) -> list[str]:
    t, probe, s = row["target"], row["probe"], row["seconds"]
    worst = row["worst_general"]
    safety = row["safety"]
    verdict = row["verdict"].upper() + ("" if row["verdict_general"] == row["verdict"]
                                        else f" (general {row['verdict_general']})")
    return [
        row["task"], row["recipe"], str(row["seed"]),
        f"{t['metric']} {_pct(t['base'])} → {_pct(t['tuned'])} %",
        f"{worst['task']} {_delta(worst)}",
        _delta(safety.get("refusal")), _delta(safety.get("over_refusal")),
        verdict,
        f"{row['guard']['at_export'] or '-'}{_scale(row)} / {row['guard']['worst'] or '-'}",
        f"{_pct(probe['capitals_free']['base'])} → {_pct(probe['capitals_free']['tuned'])} %",
        f"{_pct(probe['collapse']['base'])} → {_pct(probe['collapse']['tuned'])} %",
        f"{probe['words']['base']:.1f} → {probe['words']['tuned']:.1f}" if "words" in probe else "-",
        f"{s['train'] / 60:.1f} + {(s['eval'] + s['probe']) / 60:.1f}",
    ]


def _scale(row: dict[str, Any]) -> str:
    scale = (row.get("run") or {}).get("scale", 1.0)
    return f" (s={scale:g})" if scale < 1 else ""


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown (GitHub) table, one line per cell: readable in a terminal, pasteable into docs."""
    body = [table_row(r) for r in rows]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(" :--- " for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
