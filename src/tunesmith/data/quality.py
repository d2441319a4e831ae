"""The quality report of a valid dataset: size, duplicates, conflicts, token lengths, leakage, secrets.

`build_report` is a pure function of the examples (and optionally a tokenizer and an eval set); it returns
a `Report` whose `verdict` is "ok", "warnings" or "problems" with one reason per finding. Problems are what
would make training or evaluation wrong (secrets the model could repeat, eval examples the model trains
on, prompts that do not round-trip through the template); warnings are worth a look. A `text` dataset is
documents: no roles, replies or conflicts, every token trained on, and a document longer than max_length
split into pieces rather than truncated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.data import pii, similarity
from tunesmith.data.formats import Dataset, Example
from tunesmith.data.tokenize import encode, encode_text
from tunesmith.data.tools import iter_calls, parse_arguments

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ADVISED_MIN = 200  # the walkthrough: "you typically need at least a few hundred high-quality examples"


@dataclass(frozen=True)
class TokenStats:
    """Token lengths of the rendered examples (chat template applied, EOS included)."""

    max_length: int
    min: int
    p50: int
    p95: int
    max: int
    mean: float
    total: int  # tokens of all examples, before truncation
    supervised: int  # tokens the loss is computed on, before truncation
    truncated: int  # examples longer than max_length
    supervised_lost: int  # supervised tokens cut off by truncation
    emptied: list[str]  # examples that lose every supervised token (they teach nothing)
    roundtrip_failures: list[str]  # examples whose training tokens differ from what inference feeds
    split: int = 0  # documents longer than max_length, trained as consecutive pieces (nothing lost)


@dataclass(frozen=True)
class ToolStats:
    """Tool calling in the data: who is called how often, and which declared arguments the calls exercise."""

    rows_with_tools: int  # examples that declare tools
    rows_with_calls: int
    rows_without_call: int  # examples with tools that never call one (they teach when not to call)
    calls: int
    calls_per_function: dict[str, int]  # every declared function, 0 when never called
    parallel_calls: int  # assistant messages with more than one call
    untrained_turns: int  # assistant messages with weight 0
    coverage: dict[str, dict[str, list[str]]]  # function -> {"declared": properties, "used": set by some call}

    @property
    def never_called(self) -> list[str]:
        return [name for name, n in self.calls_per_function.items() if n == 0]


@dataclass(frozen=True)
class Leakage:
    eval_path: str
    eval_count: int
    exact: list[dict[str, str]]  # {"eval": source, "train": source}: the same prompt in both
    near: list[dict[str, Any]]  # {"eval", "train", "similarity"}: near-duplicate texts


@dataclass(frozen=True)
class Verdict:
    level: Literal["ok", "warnings", "problems"]
    problems: list[str]
    warnings: list[str]


@dataclass(frozen=True)
class Report:
    path: str
    format: str
    count: int
    advised_min: int
    multi_turn: int  # examples with more than one user turn
    with_system: int  # examples with a system message
    exact_duplicates: list[list[str]]  # groups of sources, first occurrence first
    near_duplicates: list[list[str]]
    conflicts: list[dict[str, Any]]  # {"prompt": excerpt, "sources": [...]}
    secrets: list[pii.Hit]
    personal_data: list[pii.Hit]
    tokens: TokenStats | None = None
    leakage: Leakage | None = None
    tools: ToolStats | None = None  # when some example declares tools
    ignored_columns: list[str] = field(default_factory=list)  # table columns the format does not use

    @property
    def verdict(self) -> Verdict:
        return verdict(self)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": asdict(self.verdict)}


def build_report(
    data: Dataset,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = 1024,
    eval_data: Dataset | None = None,
) -> Report:
    """Everything `tunesmith data check` reports about `data` (token figures only with a tokenizer)."""
    ex = data.examples
    hits = pii.scan(ex)
    return Report(
        path=data.path,
        format=data.format,
        count=len(ex),
        advised_min=0 if data.format == "text" else ADVISED_MIN,  # knowledge is not counted in documents
        multi_turn=sum(1 for e in ex if sum(m["role"] == "user" for m in e.messages) > 1),  # tool turns aside
        with_system=sum(1 for e in ex if e.messages and e.messages[0]["role"] == "system"),
        exact_duplicates=_sources(ex, similarity.exact_duplicates(ex)),
        near_duplicates=_sources(ex, similarity.near_duplicates(ex)),
        conflicts=[{"prompt": _excerpt(next(m["content"] for m in reversed(ex[g[0]].messages) if m["role"] == "user")),
                    "sources": [ex[i].source for i in g]} for g in similarity.conflicts(ex)],
        secrets=[h for h in hits if h.kind == "secret"],
        personal_data=[h for h in hits if h.kind == "pii"],
        tokens=token_stats(ex, tokenizer, max_length) if tokenizer is not None else None,
        leakage=leakage(ex, eval_data) if eval_data is not None else None,
        ignored_columns=list(data.ignored_columns),
        tools=tool_stats(ex),
    )


def tool_stats(examples: Sequence[Example]) -> ToolStats | None:
    """Counts of calls per function, rows with and without calls, parallel calls and argument coverage."""
    with_tools = [e for e in examples if e.tools]
    if not with_tools:
        return None
    per_fn: dict[str, int] = {}
    coverage: dict[str, dict[str, list[str]]] = {}
    for e in with_tools:
        for t in e.tools or []:
            fn = t["function"]
            per_fn.setdefault(fn["name"], 0)
            props = list((fn.get("parameters") or {}).get("properties") or {})
            coverage.setdefault(fn["name"], {"declared": props, "used": []})
    for e in with_tools:
        for _, _, call in iter_calls(e.messages):
            name = call["function"]["name"]
            per_fn[name] = per_fn.get(name, 0) + 1
            args, _ = parse_arguments(call["function"]["arguments"])
            used = coverage.setdefault(name, {"declared": [], "used": []})["used"]
            used += [k for k in args or {} if k not in used]
    assistant = [m for e in examples for m in e.messages if m["role"] == "assistant"]
    calling = sum(1 for e in with_tools if any(True for _ in iter_calls(e.messages)))
    return ToolStats(
        rows_with_tools=len(with_tools), rows_with_calls=calling, rows_without_call=len(with_tools) - calling,
        calls=sum(per_fn.values()), calls_per_function=per_fn,
        parallel_calls=sum(1 for m in assistant if len(m.get("tool_calls") or []) > 1),
        untrained_turns=sum(1 for m in assistant if m.get("weight", 1) == 0), coverage=coverage,
    )


def token_stats(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> TokenStats:
    if any(e.text is not None for e in examples):
        return _document_stats(examples, tokenizer, max_length)
    encoded = [encode(tokenizer, e.messages, max_length, tools=e.tools) for e in examples]
    pairs = list(zip(examples, encoded, strict=True))
    lengths = sorted(e.full_length for e in encoded)
    return TokenStats(
        max_length=max_length,
        min=lengths[0],
        p50=percentile(lengths, 50),
        p95=percentile(lengths, 95),
        max=lengths[-1],
        mean=round(sum(lengths) / len(lengths), 1),
        total=sum(lengths),
        supervised=sum(e.supervised + e.supervised_lost for e in encoded),
        truncated=sum(1 for e in encoded if e.truncated),
        supervised_lost=sum(e.supervised_lost for e in encoded),
        emptied=[x.source for x, e in pairs if e.truncated and e.supervised == 0],
        roundtrip_failures=[x.source for x, e in pairs if not e.roundtrip_ok],
    )


def _document_stats(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> TokenStats:
    """Documents: every token is trained on; a long one is split into max_length pieces, none truncated."""
    pieces = [encode_text(tokenizer, e.text or "", max_length) for e in examples]
    lengths = sorted(sum(len(p.input_ids) for p in doc) for doc in pieces)
    total = sum(lengths)
    return TokenStats(max_length=max_length, min=lengths[0], p50=percentile(lengths, 50),
                      p95=percentile(lengths, 95), max=lengths[-1], mean=round(total / len(lengths), 1),
                      total=total, supervised=total, truncated=0, supervised_lost=0, emptied=[],
                      roundtrip_failures=[], split=sum(1 for doc in pieces if len(doc) > 1))


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def leakage(train: Sequence[Example], eval_data: Dataset) -> Leakage:
    leaks = similarity.leakage(train, eval_data.examples)
    ev = eval_data.examples
    return Leakage(
        eval_path=eval_data.path,
        eval_count=len(ev),
        exact=[{"eval": ev[k.eval_index].source, "train": train[k.train_index].source}
               for k in leaks if k.kind == "exact"],
        near=[{"eval": ev[k.eval_index].source, "train": train[k.train_index].source,
               "similarity": k.similarity} for k in leaks if k.kind == "near"],
    )


def verdict(r: Report) -> Verdict:
    """Problems must be fixed before training; warnings deserve a look. One reason per finding."""
    problems: list[str] = []
    warnings: list[str] = []
    if r.secrets:
        problems.append(f"{_n(len(r.secrets), 'likely secret')} (API keys, tokens): remove them; "
                        "a model can repeat what it trains on")
    if r.leakage and r.leakage.exact:
        n = len(r.leakage.exact)
        problems.append(f"{n} of {r.leakage.eval_count} eval examples ask a prompt the training set "
                        "contains: evaluation would overstate quality")
    t = r.tokens
    if t and t.roundtrip_failures:
        problems.append(f"{_n(len(t.roundtrip_failures), 'example')} train on tokens inference never "
                        "feeds (chat template round-trip fails)")
    if r.count < r.advised_min:
        warnings.append(f"only {_n(r.count, 'example')}; at least a few hundred ({r.advised_min}+) "
                        "high-quality examples are advised")
    _add(warnings, len(r.exact_duplicates), "group", "of exact duplicates")
    _add(warnings, len(r.near_duplicates), "group", "of near duplicates")
    _add(warnings, len(r.conflicts), "prompt", "with conflicting completions")
    _add(warnings, len(r.personal_data), "likely personal data hit", "(emails, phone numbers)")
    if r.leakage and r.leakage.near:
        n = len(r.leakage.near)
        warnings.append(f"{n} of {r.leakage.eval_count} eval examples nearly duplicate a training example")
    if r.tools is not None:
        _tool_warnings(r.tools, warnings)
    if t and t.truncated:
        warnings.append(f"{_n(t.truncated, 'example')} longer than --max-length {t.max_length} lose "
                        f"{_n(t.supervised_lost, 'supervised token')}; {len(t.emptied)} lose all of them")
    level = "problems" if problems else "warnings" if warnings else "ok"
    return Verdict(level, problems, warnings)


def _tool_warnings(s: ToolStats, out: list[str]) -> None:
    if s.never_called:
        out.append(f"{_n(len(s.never_called), 'declared function')} never called ({', '.join(s.never_called)}): "
                   "the model cannot learn when to call them")
    if s.rows_without_call == 0:
        out.append("every example calls a tool: add examples that need no call, or the model learns to always call")
    unused = [f"{name}.{p}" for name, c in s.coverage.items() for p in c["declared"] if p not in c["used"]]
    if unused:
        out.append(f"{_n(len(unused), 'declared argument')} never set by any call: {', '.join(unused[:5])}"
                   + (" …" if len(unused) > 5 else ""))


def _add(out: list[str], count: int, noun: str, rest: str) -> None:
    if count:
        out.append(f"{_n(count, noun)} {rest}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _sources(examples: Sequence[Example], groups: list[list[int]]) -> list[list[str]]:
    return [[examples[i].source for i in g] for g in groups]


def _excerpt(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
