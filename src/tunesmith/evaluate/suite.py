"""The broad suite shipped with tunesmith, and users' own "keep" sets: load, validate, score.

Every task is a JSONL file of items scored in one of four ways (see `scoring` and `refusal`):

| scorer       | item keys                                  | per-item result                         |
|--------------|--------------------------------------------|-----------------------------------------|
| `greedy`     | prompt, answer, prefix (optional)          | 1 if greedy decoding writes the answer  |
| `choice`     | prompt, choices (list), answer (index)     | 1 if the most likely choice is right    |
| `perplexity` | text                                       | summed NLL and tokens (perplexity)      |
| `refusal`    | prompt                                     | 1 if the short greedy reply refuses     |
| `free`       | prompt, answer                             | 1 if the plain greedy reply names it    |
| `collapse`   | prompt (a general one)                     | 1 if the reply has the fine-tune's shape |

`greedy` is teacher-forced: a model that now answers every question in its fine-tune's format ("What is
the capital of Canada?" -> "1993-12-23") can still write "Ottawa" after "The capital of Canada is". The
free-generation scorers see what a user sees: `free` asks the plain question and looks for the answer in
the reply (whole words, any case); `collapse` counts general prompts answered in the fine-tune's own output
shape (`tunesmith.evaluate.shape`, learned from the run's training replies). Replies to the same prompt
are generated once per model and shared between tasks (`capitals_free`, `collapse`, `over_refusal`).

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

    from tunesmith.evaluate.shape import Shape

Scorer = Literal["greedy", "choice", "perplexity", "refusal", "free", "collapse"]
REFUSAL_TOKENS = 24  # new tokens generated per free prompt: refusals and short answers show in the opening words


@dataclass(frozen=True)
class Task:
    """One scored set of items."""

    name: str
    group: str  # "general", "safety" or "keep"
    scorer: Scorer
    metric: str  # what the value means, for tables: "accuracy", "perplexity", "refusal rate", ...
    higher_is_better: bool
    items: tuple[dict[str, Any], ...]
    shape: Shape | None = None  # `collapse`: the fine-tune's output shape (set by whoever knows the run)

    @property
    def is_perplexity(self) -> bool:
        return self.scorer == "perplexity"


@dataclass(frozen=True)
class _Spec:
    file: str | tuple[str, ...]  # several files: their prompts (a `collapse` task)
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
    "capitals_free": _Spec("capitals.jsonl", "general", "free", "accuracy asked plainly", True),
    "collapse": _Spec(("capitals.jsonl", "safety_benign.jsonl"), "general", "collapse", "format collapse rate",
                      False),
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
    "free": ({"prompt", "answer"}, {"id", "prefix"}),
}
_SOURCE_SCORER = {"capitals.jsonl": "greedy", "safety_benign.jsonl": "refusal"}  # how a shared file validates


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


def suite_files(name: str) -> list[Path]:
    """Paths of a built-in task's data files inside the installed package."""
    files = BUILTIN[name].file
    return [Path(str(resources.files("tunesmith.evaluate") / "suite" / f))
            for f in ((files,) if isinstance(files, str) else files)]


def suite_file(name: str) -> Path:
    """Path of a built-in task's (first) data file."""
    return suite_files(name)[0]


def load_task(name: str) -> Task:
    """A built-in task with its validated items. A task that borrows another's file (`capitals_free`,
    `collapse`) names its items `<task>/<key>`, so item ids stay unique across the suite."""
    spec = BUILTIN[name]
    items: list[dict[str, Any]] = []
    for path in suite_files(name):
        own = spec.scorer if spec.scorer != "collapse" else _SOURCE_SCORER[path.name]
        for item in read_items(path, own):
            key = item["id"].split("/", 1)[-1]
            renamed = {**item, "id": f"{name}/{key}"} if _owner(path.name) != name else item
            items.append({"id": renamed["id"], "prompt": item["prompt"]} if spec.scorer == "collapse" else renamed)
    return Task(name, spec.group, spec.scorer, spec.metric, spec.higher_is_better, tuple(items))


def _owner(file: str) -> str:
    """The task that reads `file` alone: its item ids are the file's own."""
    return next(n for n, spec in BUILTIN.items() if file == spec.file)


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


def run_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
             replies: dict[str, str] | None = None) -> TaskScores:
    """Score every item of `task` with `model` (no gradients, deterministic). `replies` caches the short
    greedy replies by prompt, for tasks that read the same prompts' replies."""
    from tunesmith.evaluate import scoring

    items = task.items
    if task.scorer in ("refusal", "free", "collapse"):
        return _score_replies(task, free_replies(model, tokenizer, [i["prompt"] for i in items], replies))
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
    raise AssertionError(f"unknown scorer {task.scorer}")


def free_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 cache: dict[str, str] | None = None) -> list[str]:
    """Greedy replies of REFUSAL_TOKENS tokens to plain prompts, generated once per prompt with `cache`."""
    from tunesmith.evaluate import scoring

    cache = {} if cache is None else cache
    missing = list(dict.fromkeys(p for p in prompts if p not in cache))
    if missing:
        cache.update(zip(missing, scoring.generate(model, tokenizer, missing, REFUSAL_TOKENS, batch_size=32),
                         strict=True))
    return [cache[p] for p in prompts]


def answer_found(reply: str, answer: str) -> bool:
    """`answer` occurs in `reply` as whole words, any case ("Ottawa." counts, "Ottawan" does not)."""
    import re

    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", reply, re.IGNORECASE) is not None


def _score_replies(task: Task, replies: list[str]) -> TaskScores:
    from tunesmith.evaluate.refusal import is_refusal

    if task.scorer == "refusal":
        hits = [is_refusal(r) for r in replies]
    elif task.scorer == "free":
        hits = [answer_found(r, i["answer"]) for r, i in zip(replies, task.items, strict=True)]
    else:
        if task.shape is None:
            raise ValueError(f"task {task.name}: a collapse task needs the fine-tune's output shape")
        hits = [task.shape.matches(r) for r in replies]
    return TaskScores(task, [float(h) for h in hits], [1.0] * len(hits), replies)


def run_tasks(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task]
) -> dict[str, TaskScores]:
    """Every task's scores; free replies are generated once per prompt and shared between tasks."""
    replies: dict[str, str] = {}
    return {t.name: run_task(model, tokenizer, t, replies) for t in tasks}
