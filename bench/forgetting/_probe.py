"""Free generation: what the user sees when they ask a general question, base vs tuned.

The suite's `capitals` task scores teacher-forced ("The capital of Canada is" -> "Ottawa"?), which a model
that now answers everything in its fine-tune's format can still pass. Here the plain question is asked,
the reply generated greedily (tunesmith's own `evaluate.scoring.generate`), and the answer looked for in
it. The same replies, with those to the harmless how-to requests of `over_refusal`, give the *format
collapse* rate: the share of general prompts answered in the narrow task's output shape; and their mean
length in words, which shows a subtler collapse: "What is the capital of Norway?" -> "Norway".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

PROBE_TOKENS = 24  # the answer to a short question comes in the first sentence
BATCH = 48  # rows decoded together: on a CPU a wider batch costs little more per step
COLLAPSE_TASKS = ("capitals", "over_refusal")


def prompts() -> dict[str, list[dict[str, Any]]]:
    """The suite items asked freely, by task (capitals first: its answers are scored)."""
    from tunesmith.evaluate.suite import load_task

    return {name: list(load_task(name).items) for name in COLLAPSE_TASKS}


def answer_found(reply: str, answer: str) -> bool:
    """`answer` occurs in `reply` as whole words, any case ("Ottawa." counts, "Ottawan" does not)."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", reply, re.IGNORECASE) is not None


def replies(model: Any, tokenizer: Any, items: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Greedy replies of one model to every probe prompt, by task."""
    from tunesmith.evaluate.scoring import generate

    return {name: generate(model, tokenizer, [i["prompt"] for i in rows], PROBE_TOKENS, batch_size=BATCH)
            for name, rows in items.items()}


def generate_both(run_dir: str, cache: dict[str, dict[str, list[str]]]) -> tuple[dict, dict]:
    """(base replies, tuned replies) for a run folder; base replies are cached by base model across cells.

    The pair is the one `tunesmith eval RUN` compares: a LoRA run's base is its adapter switched off, a full
    fine-tune's is the model its manifest names.
    """
    from tunesmith.evaluate.runner import EvalOptions, open_contenders

    items = prompts()
    tuned, base = open_contenders(EvalOptions(target=run_dir))
    assert base is not None, f"{run_dir}: no base model to compare with"
    with tuned.use() as model:
        tuned_replies = replies(model, tuned.tokenizer, items)
    if base.source not in cache:
        with base.use() as model:
            cache[base.source] = replies(model, base.tokenizer, items)
    return cache[base.source], tuned_replies


def summarize(
    items: dict[str, list[dict[str, Any]]], base: dict[str, list[str]], tuned: dict[str, list[str]],
    in_shape: Any, seed: int = 0,
) -> dict[str, Any]:
    """Capitals answered freely (rates, delta and its paired interval) and the collapse rates."""
    import numpy as np

    from tunesmith.evaluate.verdict import paired_bootstrap

    answers = [i["answer"] for i in items["capitals"]]
    hit_b = np.array([answer_found(r, a) for r, a in zip(base["capitals"], answers, strict=True)], float)
    hit_t = np.array([answer_found(r, a) for r, a in zip(tuned["capitals"], answers, strict=True)], float)
    ones = np.ones(len(answers))
    delta, low, high = paired_bootstrap((hit_b, ones), (hit_t, ones), seed=seed)
    flat_b = [r for name in COLLAPSE_TASKS for r in base[name]]
    flat_t = [r for name in COLLAPSE_TASKS for r in tuned[name]]
    collapsed = [r for r in flat_t if in_shape(r)]
    words = {"base": _mean_words(flat_b), "tuned": _mean_words(flat_t)}
    return {
        "capitals_free": {"n": len(answers), "base": float(hit_b.mean()), "tuned": float(hit_t.mean()),
                          "delta": delta, "ci": [low, high]},
        "collapse": {"n": len(flat_t), "base": _share(flat_b, in_shape), "tuned": _share(flat_t, in_shape),
                     "examples": collapsed[:5]},
        "words": words,
    }


def _share(replies: Sequence[str], in_shape: Any) -> float:
    return sum(bool(in_shape(r)) for r in replies) / max(len(replies), 1)



def _mean_words(replies: Sequence[str]) -> float:
    return sum(len(r.split()) for r in replies) / max(len(replies), 1)
