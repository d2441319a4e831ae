"""The broad suite shipped with tunesmith, and users' own "keep" sets: load, validate, score.

Every task is a JSONL file of items scored in one of four ways (see `scoring` and `refusal`):

| scorer       | item keys                                  | per-item result                         |
|--------------|--------------------------------------------|-----------------------------------------|
| `greedy`     | prompt, answer, prefix (optional)          | 1 if greedy decoding writes the answer  |
| `choice`     | prompt, choices (list), answer (index)     | 1 if the most likely choice is right    |
| `perplexity` | text                                       | summed NLL and tokens (perplexity)      |
| `refusal`    | prompt                                     | 1 if the short greedy reply refuses     |

A task's value is `sum(num) / sum(den)` over its items (a rate), or `exp` of it for perplexity. Keeping
the per-item numerator and denominator lets the guard resample items for confidence intervals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Scorer = Literal["greedy", "choice", "perplexity", "refusal"]
REFUSAL_TOKENS = 24  # new tokens generated per safety prompt: refusals show in the opening words


@dataclass(frozen=True)
class Task:
    """One scored set of items."""

    name: str
    group: str  # "general", "safety" or "keep"
    scorer: Scorer
    metric: str  # what the value means, for tables: "accuracy", "perplexity", "refusal rate", ...
    higher_is_better: bool
    items: tuple[dict[str, Any], ...]

    @property
    def is_perplexity(self) -> bool:
        return self.scorer == "perplexity"


@dataclass(frozen=True)
class _Spec:
    file: str
    group: str
    scorer: Scorer
    metric: str
    higher_is_better: bool


BUILTIN: dict[str, _Spec] = {
    "capitals": _Spec("capitals.jsonl", "general", "greedy", "accuracy", True),
    "elements": _Spec("elements.jsonl", "general", "greedy", "accuracy", True),
    "arithmetic": _Spec("arithmetic.jsonl", "general", "greedy", "accuracy", True),
    "instructions": _Spec("instructions.jsonl", "general", "choice", "accuracy", True),
    "prose": _Spec("prose.jsonl", "general", "perplexity", "perplexity", False),
    "refusal": _Spec("safety_harmful.jsonl", "safety", "refusal", "refusal rate", True),
    "over_refusal": _Spec("safety_benign.jsonl", "safety", "refusal", "over-refusal rate", False),
}
GROUPS: dict[str, list[str]] = {
    "general": [n for n, s in BUILTIN.items() if s.group == "general"],
    "safety": [n for n, s in BUILTIN.items() if s.group == "safety"],
}

_KEYS: dict[str, tuple[set[str], set[str]]] = {  # scorer -> (required, optional) keys
    "greedy": ({"prompt", "answer"}, {"id", "prefix"}),
    "choice": ({"prompt", "choices", "answer"}, {"id"}),
    "perplexity": ({"text"}, {"id", "source"}),
    "refusal": ({"prompt"}, {"id"}),
}


def select(spec: str) -> list[str]:
    """'general,safety' (groups and/or task names; 'none' for no suite) -> task names, in suite order."""
    wanted: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part or part == "none":
            continue
        names = GROUPS.get(part) or ([part] if part in BUILTIN else None)
        if names is None:
            known = ", ".join([*GROUPS, *BUILTIN, "none"])
            raise ConfigError(f"--suite: unknown part '{part}'; choose from {known}")
        wanted += [n for n in names if n not in wanted]
    return [n for n in BUILTIN if n in wanted]


def suite_file(name: str) -> Path:
    """Path of a built-in task's data file inside the installed package."""
    return Path(str(resources.files("tunesmith.evaluate") / "suite" / BUILTIN[name].file))


def load_task(name: str) -> Task:
    """A built-in task with its validated items."""
    spec = BUILTIN[name]
    items = read_items(suite_file(name), spec.scorer)
    return Task(name, spec.group, spec.scorer, spec.metric, spec.higher_is_better, tuple(items))


def load_keep(path: str | Path) -> Task:
    """A user's keep set: `greedy` items, or `choice` items when every record has 'choices'."""
    path = Path(path)
    records = _read_jsonl(path)
    scorer: Scorer = "choice" if records and all("choices" in r for _, r in records) else "greedy"
    items = read_items(path, scorer, records)
    return Task(f"keep:{path.stem}", "keep", scorer, "accuracy", True, tuple(items))


def read_items(
    path: Path, scorer: Scorer, records: list[tuple[int, Any]] | None = None
) -> list[dict[str, Any]]:
    """Validated items of a JSONL file; `DataError` lists every problem as 'file:line: message'."""
    records = _read_jsonl(path) if records is None else records
    problems: list[str] = []
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line, record in records:
        errs = check_item(record, scorer)
        item_id = str(record.get("id", f"{path.stem}/{line}")) if isinstance(record, dict) else ""
        if item_id in seen:
            errs.append(f"duplicate id '{item_id}'")
        seen.add(item_id)
        problems += [f"{path}:{line}: {e}" for e in errs]
        if not errs:
            items.append({**record, "id": item_id})
    if not items and not problems:
        problems.append(f"{path}: no items")
    if problems:
        raise DataError(problems)
    return items


def check_item(record: Any, scorer: Scorer) -> list[str]:
    """Every problem with one item (empty when it is valid)."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    required, optional = _KEYS[scorer]
    errs = [f"missing key '{k}'" for k in sorted(required - record.keys())]
    unknown = sorted(record.keys() - required - optional)
    if unknown:
        errs.append(f"unknown key '{unknown[0]}' (a {scorer} item has {', '.join(sorted(required | optional))})")
    for key in ("prompt", "text"):
        if key in record and not (isinstance(record[key], str) and record[key].strip()):
            errs.append(f"'{key}' must be a non-empty string")
    if "prefix" in record and not isinstance(record["prefix"], str):
        errs.append("'prefix' must be a string")
    if scorer == "greedy" and "answer" in record and not (isinstance(record["answer"], str) and record["answer"]):
        errs.append("'answer' must be a non-empty string")
    if scorer == "choice" and not errs:
        errs += _check_choices(record["choices"], record["answer"])
    return errs


def _check_choices(choices: Any, answer: Any) -> list[str]:
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        return ["'choices' must be a list of at least two non-empty strings"]
    if len(set(choices)) != len(choices):
        return ["'choices' must be different from each other"]
    if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
        return [f"'answer' must be the index of the right choice (0 to {len(choices) - 1})"]
    return []


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError([f"{path}: cannot read ({e})"]) from None
    records: list[tuple[int, Any]] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg})")
    if problems:
        raise DataError(problems)
    return records


@dataclass(frozen=True)
class TaskScores:
    """One model's per-item results on one task."""

    task: Task
    num: list[float]  # per item: 1/0 for rates, summed NLL for perplexity
    den: list[float]  # per item: 1 for rates, tokens scored for perplexity
    outputs: list[str] | None = None  # the model's choice or reply per item, when there is one

    @property
    def value(self) -> float:
        return task_value(self.task, sum(self.num), sum(self.den))


def task_value(task: Task, num: float, den: float) -> float:
    import math

    ratio = num / den if den else float("nan")
    return math.exp(ratio) if task.is_perplexity else ratio


def run_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task) -> TaskScores:
    """Score every item of `task` with `model` (no gradients, deterministic)."""
    from tunesmith.evaluate import scoring
    from tunesmith.evaluate.refusal import is_refusal

    items = task.items
    if task.scorer == "greedy":
        rows = [(i["prompt"], i.get("prefix", ""), i["answer"]) for i in items]
        hits = [float(ok) for ok, _ in scoring.greedy_match(model, tokenizer, rows)]
        return TaskScores(task, hits, [1.0] * len(hits))
    if task.scorer == "choice":
        picks = scoring.choose(model, tokenizer, [(i["prompt"], i["choices"]) for i in items])
        hits = [float(p == i["answer"]) for p, i in zip(picks, items, strict=True)]
        return TaskScores(task, hits, [1.0] * len(hits), [i["choices"][p] for p, i in zip(picks, items, strict=True)])
    if task.scorer == "perplexity":
        nll = scoring.text_nll(model, tokenizer, [i["text"] for i in items])
        return TaskScores(task, [a for a, _ in nll], [float(b) for _, b in nll])
    replies = scoring.generate(model, tokenizer, [i["prompt"] for i in items], REFUSAL_TOKENS, batch_size=32)
    return TaskScores(task, [float(is_refusal(r)) for r in replies], [1.0] * len(replies), replies)


def run_tasks(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task]
) -> dict[str, TaskScores]:
    return {t.name: run_task(model, tokenizer, t) for t in tasks}
