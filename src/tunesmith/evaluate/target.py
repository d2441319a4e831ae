"""The target task: how well base and tuned do on the user's own evaluation examples.

Each example is a chat whose last message is the reference assistant reply. We score
- the loss on the supervised tokens (what training minimises) and its perplexity;
- the greedy reply to everything before the reference, against the reference: exact match, token F1,
  ROUGE-L; and, for questions that list the `facts` a right reply states, fact recall (the share of those
  questions whose reply states every fact: `metrics.fact_recall`);
and keep every example's two replies side by side, so the report can show the largest wins and regressions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.tokenize import Message
from tunesmith.evaluate import tools as tool_task
from tunesmith.evaluate.metrics import completion_nll, fact_recall, text_scores
from tunesmith.evaluate.verdict import Thresholds, paired_bootstrap

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Chat = list[Message]
Facts = tuple[tuple[str, ...], ...]  # what a right reply states: each fact a tuple of alternatives
GENERATION_BATCH = 16
SHOWN = 5  # wins and regressions listed in the report


def load_target_data(path: str, limit: int) -> list[Chat] | tool_task.ToolTask:
    """The first `limit` examples of a dataset file, as message lists ending with the reference reply; with
    tools, a tool task instead (scored turn by turn, see `tunesmith.evaluate.tools`).

    Documents (a `text` run's eval split) have no reply to compare, so they are not a target task."""
    from tunesmith.data.formats import load_examples

    examples = [ex for ex in load_examples(path)[: max(limit, 0)] if ex.messages]
    return tool_task.task(examples) or [ex.messages for ex in examples]


def load_target_facts(path: str, limit: int) -> list[Facts] | None:
    """The `facts` of the same examples as `load_target_data`, or None when no example lists any."""
    from tunesmith.data.formats import load_examples

    facts = [ex.facts for ex in load_examples(path)[: max(limit, 0)] if ex.messages]
    return facts if any(facts) else None


@dataclass(frozen=True)
class TargetScores:
    """One model on the target examples."""

    nll: list[tuple[float, int]]  # (summed NLL, supervised tokens) per example
    replies: list[str]  # greedy reply per example


def score_target(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Chat], max_length: int,
    max_new_tokens: int,
) -> TargetScores:
    if isinstance(examples, tool_task.ToolTask):
        return tool_task.score(model, tokenizer, examples, max_length, max_new_tokens)  # type: ignore[return-value]
    nll = completion_nll(model, tokenizer, examples, max_length)
    return TargetScores(nll, _replies(model, tokenizer, examples, max_new_tokens))


def _replies(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Chat], cap: int
) -> list[str]:
    """Greedy replies; each batch generates a little more than its longest reference (at most `cap`)."""
    from tunesmith.evaluate.scoring import generate

    need = [len(tokenizer(ex[-1]["content"], add_special_tokens=False)["input_ids"]) for ex in examples]
    budget = [max(8, min(cap, int(1.25 * n) + 16)) for n in need]
    order = sorted(range(len(examples)), key=lambda i: budget[i])
    out = [""] * len(examples)
    for start in range(0, len(order), GENERATION_BATCH):
        batch = order[start : start + GENERATION_BATCH]
        replies = generate(model, tokenizer, [examples[i][:-1] for i in batch], max(budget[i] for i in batch))
        for i, reply in zip(batch, replies, strict=True):
            out[i] = reply
    return out


_METRICS = (  # name, higher is better
    ("eval_loss", False), ("perplexity", False), ("exact_match", True), ("token_f1", True), ("rouge_l", True),
)


def _per_example(
    examples: Sequence[Chat], scores: TargetScores, facts: Sequence[Facts] | None
) -> dict[str, list[float]]:
    rows = [text_scores(r, ex[-1]["content"]) for r, ex in zip(scores.replies, examples, strict=True)]
    out = {k: [row[k] for row in rows] for k in ("exact_match", "token_f1", "rouge_l")}
    if facts is not None:  # a question without facts has no say in fact recall (its weight is 0)
        out["fact_recall"] = [fact_recall(r, f) for r, f in zip(scores.replies, facts, strict=True)]
        out["fact_weight"] = [float(bool(f)) for f in facts]
    return out


def compare_target(
    examples: Sequence[Chat], base: TargetScores | None, tuned: TargetScores,
    thresholds: Thresholds | None = None, seed: int = 0, facts: Sequence[Facts] | None = None,
) -> dict[str, Any]:
    """Metrics with intervals (when there is a base), and every example's replies side by side."""
    if isinstance(examples, tool_task.ToolTask):
        return tool_task.compare(examples, base, tuned, thresholds, seed)  # type: ignore[arg-type]
    t = thresholds or Thresholds()
    text_t = _per_example(examples, tuned, facts)
    text_b = _per_example(examples, base, facts) if base else None
    names = _METRICS + ((("fact_recall", True),) if facts is not None else ())
    metrics = [_metric(name, better, tuned, text_t, base, text_b, t, seed) for name, better in names]
    rows = _rows(examples, tuned, text_t, base, text_b)
    if facts is not None:
        for row, f in zip(rows, facts, strict=True):
            row["facts"] = [list(alternatives) for alternatives in f]
            row["fact_tuned"] = text_t["fact_recall"][row["index"]] if f else None
            row["fact_base"] = text_b["fact_recall"][row["index"]] if f and text_b else None
    ranked = sorted(range(len(rows)), key=lambda i: rows[i]["rouge_l_delta"] or 0.0)
    return {
        "examples": len(examples),
        "metrics": metrics,
        "per_example": rows,
        "wins": [i for i in reversed(ranked) if (rows[i]["rouge_l_delta"] or 0) > 0][:SHOWN],
        "regressions": [i for i in ranked if (rows[i]["rouge_l_delta"] or 0) < 0][:SHOWN],
    }


def _arrays(name: str, scores: TargetScores, text: dict[str, list[float]]) -> tuple[Any, Any]:
    import numpy as np

    if name in ("eval_loss", "perplexity"):
        return np.array([a for a, _ in scores.nll], float), np.array([b for _, b in scores.nll], float)
    weight = text.get("fact_weight") if name == "fact_recall" else None
    return np.array(text[name], float), np.array(weight, float) if weight else np.ones(len(text[name]))


def _metric(
    name: str, higher: bool, tuned: TargetScores, text_t: dict[str, list[float]], base: TargetScores | None,
    text_b: dict[str, list[float]] | None, t: Thresholds, seed: int,
) -> dict[str, Any]:
    nt, dt = _arrays(name, tuned, text_t)
    row: dict[str, Any] = {"name": name, "higher_is_better": higher, "relative": name == "perplexity"}
    row["tuned"] = _value(name, nt.sum(), dt.sum())
    row["base"] = row["delta"] = row["ci"] = None
    if base is not None and text_b is not None and dt.sum() > 0:
        nb, db = _arrays(name, base, text_b)
        row["base"] = _value(name, nb.sum(), db.sum())
        row["delta"], low, high = paired_bootstrap(
            (nb, db), (nt, dt), relative_exp=name == "perplexity", resamples=t.resamples,
            confidence=t.confidence, seed=seed,
        )
        row["ci"] = (low, high)
    return row


def _value(name: str, num: float, den: float) -> float | None:
    if den == 0:
        return None
    return math.exp(num / den) if name == "perplexity" else float(num / den)


def _rows(
    examples: Sequence[Chat], tuned: TargetScores, text_t: dict[str, list[float]], base: TargetScores | None,
    text_b: dict[str, list[float]] | None,
) -> list[dict[str, Any]]:
    rows = []
    for i, ex in enumerate(examples):
        user = next((m["content"] for m in reversed(ex[:-1]) if m["role"] == "user"), "")
        row: dict[str, Any] = {
            "index": i, "prompt": user, "reference": ex[-1]["content"], "tuned": tuned.replies[i],
            "rouge_l_tuned": text_t["rouge_l"][i], "loss_tuned": _loss(tuned.nll[i]),
            "base": None, "rouge_l_base": None, "loss_base": None, "rouge_l_delta": None,
        }
        if base is not None and text_b is not None:
            row.update(base=base.replies[i], rouge_l_base=text_b["rouge_l"][i], loss_base=_loss(base.nll[i]))
            row["rouge_l_delta"] = row["rouge_l_tuned"] - row["rouge_l_base"]
        rows.append(row)
    return rows


def _loss(nll: tuple[float, int]) -> float | None:
    return nll[0] / nll[1] if nll[1] else None
