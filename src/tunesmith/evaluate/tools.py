"""The target task on tool-calling data: at every assistant turn, does the model call what it should?

Each trained assistant turn of each evaluation conversation is one item: the model gets the conversation
before it (the reference history, tools rendered as in training) and replies greedily; the reply is read
back with the same call syntax (`tool_template.parse_reply`). Items whose reference calls tools measure
- `function_name_accuracy`: the reply calls the same function(s);
- `arguments_exact_match`: ... with JSON-equal arguments (calls compared as a multiset, order aside);
items whose reference is text measure
- `false_call_rate`: the reply begins a call where the user's message needs none (lower is better);
- `answer_token_f1`, `answer_rouge_l`: after a tool result, the answer against the reference (0 if it calls);
and every reply that begins a call counts for
- `call_parse_rate`: it parses into calls (else a server would return it as text);
- `arguments_schema_valid`: every call names a declared function and passes its parameter schema.
`eval_loss` and `perplexity` are on the supervised tokens, tools in the prompt, as training computes them.
Base and tuned are compared with the paired bootstrap of the forgetting guard, over the items of each metric.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.formats import Example
from tunesmith.data.tool_template import Reply, parse_reply, syntax
from tunesmith.data.tools import argument_errors, parse_arguments
from tunesmith.evaluate.metrics import completion_nll, text_scores
from tunesmith.evaluate.verdict import Thresholds, paired_bootstrap

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Message = dict[str, Any]

SHOWN = 5  # turns listed as the largest wins and regressions
METRICS = (  # name, higher is better
    ("eval_loss", False), ("perplexity", False), ("call_parse_rate", True), ("function_name_accuracy", True),
    ("arguments_exact_match", True), ("arguments_schema_valid", True), ("false_call_rate", False),
    ("answer_token_f1", True), ("answer_rouge_l", True),
)


@dataclass(frozen=True)
class Turn:
    """One assistant turn to reproduce: the conversation before it, and the reference."""

    row: int  # index of the example
    prompt: list[Message]
    tools: list[dict[str, Any]] | None
    reference: Message
    after: str  # role of the message before it: "user" or "tool"


@dataclass(frozen=True)
class ToolTask:
    """Evaluation examples with tools, and the assistant turns they hold."""

    examples: list[Example]
    turns: list[Turn]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass(frozen=True)
class ToolScores:
    """One model on a tool task: loss per example, and each turn's reply, raw and read back as calls."""

    nll: list[tuple[float, int]]
    replies: list[str]
    parsed: list[Reply]  # with the call syntax of this model's own template


def task(examples: list[Example]) -> ToolTask | None:
    """The tool task of these examples; None when none declares tools (an ordinary target task)."""
    if not any(e.tools for e in examples):
        return None
    turns = [Turn(k, e.messages[:i], e.tools, m, e.messages[i - 1]["role"])
             for k, e in enumerate(examples) for i, m in enumerate(e.messages)
             if m["role"] == "assistant" and m.get("weight", 1) != 0]
    return ToolTask(examples, turns)


def score(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, t: ToolTask, max_length: int, max_new_tokens: int
) -> ToolScores:
    from tunesmith.data.tokenize import encode_prompt
    from tunesmith.evaluate.scoring import generate_ids

    nll = completion_nll(model, tokenizer, [e.messages for e in t.examples], max_length, [e.tools for e in t.examples])
    prompts = [encode_prompt(tokenizer, turn.prompt, turn.tools) for turn in t.turns]
    budgets = [_budget(tokenizer, turn.reference, max_new_tokens) for turn in t.turns]
    replies = generate_ids(model, tokenizer, prompts, budgets)
    syn = syntax(tokenizer)
    return ToolScores(nll, replies, [parse_reply(r, syn) for r in replies])


def _budget(tokenizer: PreTrainedTokenizerBase, reference: Message, cap: int) -> int:
    """A little more than the reference needs (its text and calls), at most `cap` tokens."""
    text = reference["content"] + json.dumps(reference.get("tool_calls") or "")
    return max(16, min(cap, int(1.25 * len(tokenizer(text, add_special_tokens=False)["input_ids"])) + 16))


def grade(turn: Turn, reply: Reply) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) of each reply metric for one turn; (0, 0) where the turn does not count."""
    out = {name: (0.0, 0.0) for name, _ in METRICS[2:]}
    if reply.attempted:
        out["call_parse_rate"] = (float(not reply.malformed), 1.0)
    if reply.calls:
        out["arguments_schema_valid"] = (float(all(_valid(c, turn.tools) for c in reply.calls)), 1.0)
    expected = turn.reference.get("tool_calls") or []
    if expected:
        want = [(c["function"]["name"], parse_arguments(c["function"]["arguments"])[0]) for c in expected]
        got = [(c["name"], c["arguments"]) for c in reply.calls]
        out["function_name_accuracy"] = (float(sorted(n for n, _ in got) == sorted(n for n, _ in want)), 1.0)
        out["arguments_exact_match"] = (float(_multiset(got) == _multiset(want)), 1.0)
    elif turn.after == "tool":
        scores = text_scores(reply.content, turn.reference["content"]) if not reply.attempted else {}
        out["answer_token_f1"] = (scores.get("token_f1", 0.0), 1.0)
        out["answer_rouge_l"] = (scores.get("rouge_l", 0.0), 1.0)
    else:
        out["false_call_rate"] = (float(reply.attempted), 1.0)
    return out


def _multiset(calls: list[tuple[str, Any]]) -> Counter[str]:
    return Counter(json.dumps([name, args], sort_keys=True) for name, args in calls)


def _valid(call: dict[str, Any], tools: list[dict[str, Any]] | None) -> bool:
    tool = next((t for t in tools or [] if t["function"]["name"] == call["name"]), None)
    return tool is not None and not argument_errors(tool, call["arguments"])


def compare(
    t: ToolTask, base: ToolScores | None, tuned: ToolScores, thresholds: Thresholds | None = None, seed: int = 0,
) -> dict[str, Any]:
    """The target-task section of the report: metrics with intervals, and every turn's replies."""
    th = thresholds or Thresholds()
    graded_t = [grade(turn, r) for turn, r in zip(t.turns, tuned.parsed, strict=True)]
    graded_b = [grade(turn, r) for turn, r in zip(t.turns, base.parsed, strict=True)] if base else None
    metrics = [_metric(name, better, t, base, tuned, graded_b, graded_t, th, seed) for name, better in METRICS]
    rows = _rows(t, base, tuned, graded_b, graded_t)
    delta = [(r["score_tuned"] - r["score_base"]) if base else 0.0 for r in rows]
    ranked = sorted(range(len(rows)), key=lambda i: delta[i])
    return {
        "examples": len(t.examples), "kind": "tool_calls", "turns": len(t.turns),
        "turn_counts": {"call": sum(1 for x in t.turns if x.reference.get("tool_calls")),
                        "no_call_after_user": sum(1 for x in t.turns if not x.reference.get("tool_calls")
                                                  and x.after != "tool"),
                        "answer_after_result": sum(1 for x in t.turns if not x.reference.get("tool_calls")
                                                   and x.after == "tool")},
        "metrics": metrics, "per_example": rows,
        "wins": [i for i in reversed(ranked) if delta[i] > 0][:SHOWN],
        "regressions": [i for i in ranked if delta[i] < 0][:SHOWN],
    }


def _metric(
    name: str, higher: bool, t: ToolTask, base: ToolScores | None, tuned: ToolScores,
    graded_b: list[dict[str, tuple[float, float]]] | None, graded_t: list[dict[str, tuple[float, float]]],
    th: Thresholds, seed: int,
) -> dict[str, Any]:
    import numpy as np

    def arrays(scores: ToolScores, graded: list[dict[str, tuple[float, float]]]) -> tuple[Any, Any]:
        pairs = scores.nll if name in ("eval_loss", "perplexity") else [g[name] for g in graded]
        return np.array([a for a, _ in pairs], float), np.array([b for _, b in pairs], float)

    nt, dt = arrays(tuned, graded_t)
    row: dict[str, Any] = {"name": name, "higher_is_better": higher, "relative": name == "perplexity",
                           "tuned": _value(name, nt, dt), "base": None, "delta": None, "ci": None}
    if base is None or graded_b is None:
        row["n"] = int((dt > 0).sum())
        return row
    nb, db = arrays(base, graded_b)
    keep = (dt > 0) | (db > 0)  # the items this metric is about, for either model
    row.update(base=_value(name, nb, db), n=int(keep.sum()))
    if db[keep].sum() > 0 and dt[keep].sum() > 0:
        row["delta"], low, high = paired_bootstrap(
            (nb[keep], db[keep]), (nt[keep], dt[keep]), relative_exp=name == "perplexity",
            resamples=th.resamples, confidence=th.confidence, seed=seed)
        row["ci"] = (low, high) if math.isfinite(low) and math.isfinite(high) else None
    return row


def _value(name: str, num: Any, den: Any) -> float | None:
    if den.sum() == 0:
        return None
    ratio = float(num.sum() / den.sum())
    return math.exp(ratio) if name == "perplexity" else ratio


def _rows(
    t: ToolTask, base: ToolScores | None, tuned: ToolScores, graded_b: Any, graded_t: Any
) -> list[dict[str, Any]]:
    rows = []
    for i, turn in enumerate(t.turns):
        asked = next((m for m in reversed(turn.prompt) if m["role"] in ("user", "tool")), {"content": ""})
        rows.append({
            "index": i, "example": t.examples[turn.row].source, "prompt": asked["content"],
            "reference": _shown(turn.reference), "tuned": tuned.replies[i], "base": base.replies[i] if base else None,
            "tuned_scores": {k: v[0] for k, v in graded_t[i].items() if v[1]},
            "base_scores": {k: v[0] for k, v in graded_b[i].items() if v[1]} if graded_b else None,
            "score_tuned": _turn_score(graded_t[i]), "score_base": _turn_score(graded_b[i]) if graded_b else None,
        })
    return rows


def _turn_score(g: dict[str, tuple[float, float]]) -> float:
    """How right one reply is (1 best): the exact call, no call where none is needed, the answer's F1."""
    if g["arguments_exact_match"][1]:
        return g["arguments_exact_match"][0]
    if g["false_call_rate"][1]:
        return 1.0 - g["false_call_rate"][0]
    return g["answer_token_f1"][0]


def _shown(m: Message) -> str:
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or []]
    return " ".join([m["content"], *calls]).strip()
