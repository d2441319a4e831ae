"""The forgetting guard during training: a cheap slice of the broad suite, scored before training starts
and at every evaluation, compared with `tunesmith.evaluate.verdict`; and the general "replay" examples
mixed into training against forgetting.

The slice scores what a user will see, beside the teacher-forced scores: `capitals_free` asks the plain
question and looks for the answer in the greedy reply, and `collapse` counts those replies that come in
the fine-tune's own output shape (learned from its training replies, `tunesmith.evaluate.shape`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING

from tunesmith.evaluate.suite import Task, TaskScores, load_task, run_tasks
from tunesmith.evaluate.verdict import Comparison, Thresholds, Verdict, compare, overall

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunesmith.evaluate.shape import Shape


# Items per task in the training guard's slice. The teacher-forced tasks catch a model losing knowledge;
# the free-generation one catches it answering in the fine-tune's format, which teacher forcing misses.
# The free sample is nearly the whole task (72 of 75): a drop of 15 points on plain questions, which the
# full eval fails, hides in 24 questions (bench/forgetting/slices.py: 79 % agreement with 24, 98 % with 72).
# The capitals are all 75: a drop of 12 points that the full eval confirms showed as 2 lost of 16 (an
# unconfirmed flag), and teacher-forced items are cheap (75 cost 1 s more than 16 on the built-in model with
# two threads). Replayed on the benchmark's 19 cells: 95 % agreement with 16 capitals, 93 % with 32 or 48,
# 99 % with all 75; the other two tasks at full size add nothing.
GUARD_SIZES: dict[str, int] = {"capitals": 75, "elements": 16, "arithmetic": 16, "capitals_free": 72}
GUARD_TASKS = tuple(GUARD_SIZES)
# Prose passages: a continuous signal that moves before accuracy does. With 4 of the 16, one draw in 50 had
# 3 passages rise 13 % where the whole set rose 3 %, a confirmed warning the full eval does not give (the
# forgetting benchmark's teams cell); with 8 none of 200 draws did. Each passage costs about 0.15 s here.
GUARD_PROSE = 8
# On a slice this small an unconfirmed drop is mostly noise (two flipped items of 16 are 12.5 points, past
# the fail threshold, which `tunesmith eval` would call a warning). The guard warns on an unconfirmed drop
# only from this size; a smaller one is flagged "unconfirmed" and leaves the verdict alone. Chosen on the
# forgetting benchmark (bench/forgetting/slices.py): the guard's verdict on the exported weights then
# agrees with the full eval's general verdict most often.
UNCONFIRMED_WARN = 0.20
GUARD_RESAMPLES = 1000  # bootstrap draws per comparison: the guard runs at every evaluation


class TrainingGuard:
    """A cheap slice of the suite, scored before and during training to catch forgetting early.

    `baseline(model)` scores the model as training starts (a fresh LoRA adapter changes nothing);
    `check(model)` scores it again and compares on the same items: the metrics, named `guard/<task>`
    (accuracy), `guard/prose_ppl` and, with a `shape`, `guard/collapse`; the overall verdict; and the
    verdict of each task that does not pass (`flags`, e.g. {"elements": "warn"}).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, sizes: Mapping[str, int] | None = None,
        thresholds: Thresholds | None = None, seed: int = 0, shape: Shape | None = None,
    ):
        self.tokenizer = tokenizer
        self.thresholds = replace(thresholds or Thresholds(), resamples=GUARD_RESAMPLES)
        self.seed = seed
        self.tasks = guard_tasks(GUARD_SIZES if sizes is None else sizes, seed, shape)
        self._baseline: dict[str, TaskScores] | None = None

    def baseline(self, model: PreTrainedModel) -> dict[str, float]:
        self._baseline = self._score(model)
        return self.metrics(self._baseline)

    def check(self, model: PreTrainedModel) -> tuple[dict[str, float], Verdict, dict[str, Verdict]]:
        if self._baseline is None:
            raise RuntimeError("TrainingGuard.check() called before baseline()")
        scores = self._score(model)
        raw = compare(self._baseline, scores, self.thresholds, self.seed)
        rows = [_slice_verdict(r) for r in raw]
        flags = {r.task: r.verdict for r in rows if r.verdict != "pass"}
        flags.update({r.task: "unconfirmed" for r in raw if is_noise(r)})
        return self.metrics(scores), overall(rows), flags

    @staticmethod
    def metrics(scores: Mapping[str, TaskScores]) -> dict[str, float]:
        return {f"guard/{n}_ppl" if s.task.is_perplexity else f"guard/{n}": s.value for n, s in scores.items()}

    def _score(self, model: PreTrainedModel) -> dict[str, TaskScores]:
        was_training = model.training
        model.eval()
        try:
            return run_tasks(model, self.tokenizer, self.tasks)
        finally:
            model.train(was_training)


def is_noise(row: Comparison, at: float | None = UNCONFIRMED_WARN) -> bool:
    """A rate's drop past the fail threshold that the slice cannot confirm and that is below `at` (None: any)."""
    return row.verdict == "warn" and not row.relative and not row.confirmed and (at is None or row.harm < at)


def _slice_verdict(row: Comparison) -> Comparison:
    return replace(row, verdict="pass", reason="unconfirmed: noise on a slice this small") if is_noise(row) else row


def guard_tasks(sizes: Mapping[str, int], seed: int = 0, shape: Shape | None = None,
                prose: int = GUARD_PROSE) -> list[Task]:
    """A seeded sample of `sizes[task]` items of each task, plus `prose` prose passages; with a `shape`,
    a `collapse` task on the prompts of the `capitals_free` sample (their replies are generated once)."""
    rng = random.Random(seed)
    tasks = []
    for name, k in [*sizes.items(), ("prose", prose)]:
        task = load_task(name)
        picked = rng.sample(range(len(task.items)), min(k, len(task.items)))
        tasks.append(replace(task, items=tuple(task.items[i] for i in sorted(picked))))
    free = next((t for t in tasks if t.scorer == "free"), None)
    if shape is not None and free is not None:
        tasks.append(collapse_task(free, shape))
    return tasks


def collapse_task(free: Task, shape: Shape | None) -> Task:
    """The `collapse` task on the prompts of a free-generation sample (`capitals_free/<key>` ->
    `collapse/<key>`), judged against `shape`."""
    items = tuple({"id": "collapse/" + i["id"].split("/", 1)[1], "prompt": i["prompt"]} for i in free.items)
    return replace(load_task("collapse"), items=items, shape=shape)


def replay_examples(n: int, seed: int) -> list[list[dict[str, str]]]:
    """`n` general chat examples (message lists) to mix into training against forgetting.

    They come from `suite/replay.jsonl`, written for tunesmith and disjoint from the evaluation items.
    Past the file's size the examples repeat, each pass in a new order.
    """
    path = resources.files("tunesmith.evaluate") / "suite" / "replay.jsonl"
    pool = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        order = list(range(len(pool)))
        rng.shuffle(order)
        out += [[dict(m) for m in pool[i]] for i in order[: n - len(out)]]
    return out
