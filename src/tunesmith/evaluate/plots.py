"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Each function returns PNG bytes, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = {"pass": "#2e7d32", "warn": "#ef8f00", "fail": "#c62828", None: "#455a64"}
TRAIN_KEYS = ("train/loss", "train_loss", "loss")
EVAL_KEYS = ("eval/loss", "eval_loss", "val_loss")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves(records: Sequence[dict[str, Any]]) -> bytes | None:
    """Training and eval loss over steps; guard metrics in a second panel when the run logged them."""
    from matplotlib.figure import Figure

    losses = [(k, _series(records, k)) for k in (*TRAIN_KEYS, *EVAL_KEYS)]
    losses = [(k, s) for k, s in losses if s[0]]
    guard_keys = sorted({k for r in records for k in r if k.startswith("guard/") and not k.endswith("_ppl")})
    guards = [(k, s) for k in guard_keys if (s := _series(records, k))[0]]
    if not losses and not guards:
        return None
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2 if guards else 1, squeeze=False)[0]
    for key, (x, y) in losses:
        axes[0].plot(x, y, marker="o" if key in EVAL_KEYS else None, markersize=3, label=key)
    axes[0].set(xlabel="step", ylabel="loss", title="Loss")
    axes[0].legend(fontsize=8)
    if guards:
        for key, (x, y) in guards:
            axes[1].plot(x, [100 * v for v in y], marker="o", markersize=3, label=key.removeprefix("guard/"))
        axes[1].set(xlabel="step", ylabel="accuracy (%)", title="Forgetting guard", ylim=(0, 100))
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def delta_points(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(label, delta, low, high) per task, in the table's own units and signs (points, or % for perplexity)."""
    out = []
    for r in rows:
        if r.get("delta") is None:
            continue
        unit = "% perplexity, lower is better" if r["relative"] else (
            "pts, higher is better" if r["higher_is_better"] else "pts, lower is better")
        out.append((f"{r['task']} ({unit})", 100 * r["delta"], 100 * r["ci"][0], 100 * r["ci"][1]))
    return out


def suite_deltas(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """One row per task: the change and its interval exactly as the table prints them, coloured by verdict."""
    from matplotlib.figure import Figure

    points = delta_points(rows)
    if not points:
        return None
    verdicts = [r["verdict"] for r in rows if r.get("delta") is not None]
    fig = Figure(figsize=(8, 0.45 * len(points) + 1.2))
    ax = fig.subplots()
    for y, ((_, x, lo, hi), verdict) in enumerate(zip(reversed(points), reversed(verdicts), strict=True)):
        ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", color=COLORS[verdict], capsize=3)
        ax.annotate(f"{x:+.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_yticks(range(len(points)), [label for label, *_ in reversed(points)])
    ax.axvline(0, color="#888", lw=1)
    ax.set(xlabel="tuned - base (as in the table; colour = verdict)", title="Suite: tuned vs base")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def target_bars(metrics: Sequence[dict[str, Any]]) -> bytes | None:
    """Base vs tuned bars for the target task's text metrics."""
    from matplotlib.figure import Figure

    names = ("exact_match", "token_f1", "rouge_l", "fact_recall", "function_name_accuracy", "arguments_exact_match",
             "false_call_rate", "answer_token_f1")  # the rates of a plain and of a tool-calling target task
    shown = [m for m in metrics if m["name"] in names and m["tuned"] is not None]
    if not shown:
        return None
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    xs = range(len(shown))
    if any(m["base"] is not None for m in shown):
        bars = ax.bar([x - 0.2 for x in xs], [m["base"] or 0 for m in shown], width=0.4, label="base", color="#90a4ae")
        ax.bar_label(bars, labels=[f"{100 * (m['base'] or 0):.1f}%" for m in shown], fontsize=8)
    bars = ax.bar([x + 0.2 for x in xs], [m["tuned"] for m in shown], width=0.4, label="tuned", color="#1565c0")
    ax.bar_label(bars, labels=[f"{100 * m['tuned']:.1f}%" for m in shown], fontsize=8)  # a 0 % bar still shows
    ax.set_xticks(list(xs), [m["name"].replace("_", "\n", 1) for m in shown], fontsize=7)  # tool rates: many names
    ax.set(ylim=(0, 1.1), title="Target task")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
