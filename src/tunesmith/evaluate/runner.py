"""`tunesmith eval` as a function: load base and tuned, score both on the same items, compare, report.

The tuned model is what the user names (run folder, adapter folder, model). Its base is found, in order:
`--base`; the same weights with the LoRA adapter switched off (one copy of the weights, PEFT's
`disable_adapter`); the base model a full fine-tune's manifest names. A plain model without `--base` is
scored alone: numbers, no verdict.

With `rag` (or `docs`), both models answer the target task a second time with notes retrieved into the
prompt (`tunesmith.retrieval`): from `docs`, else the run's own training split, never from the examples
being scored. The report then holds four forms on the same questions: prompt-only (the base), RAG (the
base with notes), fine-tuned, and fine-tuned + RAG.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.evaluate.suite import Task, TaskScores, load_keep, load_task, run_tasks, select
from tunesmith.evaluate.target import (
    TargetScores,
    compare_target,
    load_target_data,
    load_target_facts,
    score_target,
)
from tunesmith.evaluate.verdict import Thresholds, compare, overall

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunesmith.model.adapters import Target
    from tunesmith.runfolder import RunFolder

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvalOptions:
    """Settings of one evaluation; field comments are the CLI help."""

    target: str  # run folder, adapter folder or model
    adapter: str | None = None  # LoRA adapter folder to put on the model
    base: str | None = None  # model to compare against (default: the tuned model's base)
    data: str | None = None  # target-task file (default: a run folder's data/eval.jsonl)
    suite: str = "general,safety"  # suite groups or task names, comma-separated; 'none' for none
    keep: tuple[str, ...] = ()  # JSONL files of items the model must keep getting right
    out: str | None = None  # report folder (default: RUN/eval, else eval/<name>)
    thresholds: Thresholds = field(default_factory=Thresholds)
    limit: int = 64  # target-task examples scored (the first ones of the file)
    max_new_tokens: int = 256  # longest generated reply on the target task
    max_length: int | None = None  # tokens per target example for the loss (default: the run's, else 1024)
    device: str = "auto"
    seed: int = 0
    quantize: str = "auto"  # load a run's base as it trained (auto), or none / 4bit / 8bit
    rag: bool = False  # also answer with retrieved notes in the prompt (from docs, else the run's training split)
    docs: str | None = None  # notes to retrieve from: a data file's rows or .txt/.md documents (implies rag)
    rag_notes: int = 3  # notes retrieved per question
    rag_tokens: int = 384  # most tokens of notes per prompt


@dataclass
class Contender:
    """A model to score, and how to get it in scoring state."""

    label: str
    source: str  # model name/path (+ adapter), for the report
    tokenizer: PreTrainedTokenizerBase
    use: Callable[[], AbstractContextManager[PreTrainedModel]]


def run_of(opts: EvalOptions) -> RunFolder | None:
    """The run folder being evaluated, if the target is one."""
    from tunesmith.runfolder import RunFolder, is_run

    return RunFolder.open(opts.target) if is_run(opts.target) else None


def run_dir_of(opts: EvalOptions) -> Path | None:
    run = run_of(opts)
    return run.path if run is not None else None


def out_dir(opts: EvalOptions, label: str) -> Path:
    if opts.out:
        return Path(opts.out)
    run = run_of(opts)
    return run.eval_dir if run is not None else Path("eval") / label.replace("/", "_")


def default_data(opts: EvalOptions) -> str | None:
    run = run_of(opts)
    if opts.data is None and run is not None and (held_out := run.data_file("eval")) is not None:
        return str(held_out)
    return opts.data


def max_length(opts: EvalOptions) -> int:
    """--max-length, else the run's training setting (so eval loss matches training's), else 1024."""
    from tunesmith.errors import RunError

    run = run_of(opts)
    if opts.max_length is None and run is not None:
        with suppress(RunError):  # a run folder without its config.yaml: the default
            return run.config().max_length
    return opts.max_length or 1024


def rag_source(opts: EvalOptions) -> str | None:
    """What retrieval reads (`docs`, else the run's training split), None without RAG; checked before models load."""
    from tunesmith.errors import ConfigError

    if not (opts.rag or opts.docs):
        return None
    if opts.docs:
        return opts.docs
    run = run_of(opts)
    trained_on = _trained_rag_docs(run)
    if trained_on:  # a run trained with notes from documents: the same documents
        return trained_on
    train = run.data_file("train") if run is not None else None
    if train is None:
        raise ConfigError(f"--rag: {opts.target} is not a run folder with its training split (data/train.jsonl); "
                          "name what to retrieve from with --docs PATH (a data file or a folder of .txt/.md)")
    return str(train)


def _trained_rag_docs(run: Any) -> str | None:
    """The documents a run was trained to retrieve from (`train --rag-docs`), if any."""
    from tunesmith.errors import RunError

    if run is None:
        return None
    with suppress(RunError):
        return run.config().rag_docs
    return None


def _with_notes(
    opts: EvalOptions, source: str, examples: list[Any], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[Any], dict[str, Any]]:
    """The target examples with notes from `source` in their prompts, and what the report says about it."""
    from tunesmith.data.formats import Example, load_examples
    from tunesmith.retrieval import Retriever, describe, with_notes

    held_out = [Example(messages=chat, source=f"target:{i}") for i, chat in enumerate(examples)]
    retriever = Retriever.from_examples(load_examples(source), exclude=held_out)
    augmented, sources = with_notes(retriever, examples, tokenizer, k=opts.rag_notes, budget=opts.rag_tokens)
    return augmented, {**describe(retriever, source, opts.rag_notes, opts.rag_tokens), "retrieved": sources}


def gather_tasks(opts: EvalOptions) -> list[Task]:
    """Built-in tasks named by --suite, then the keep sets (validated before any model loads)."""
    return [load_task(n) for n in select(opts.suite)] + [load_keep(k) for k in opts.keep]


def with_shape(tasks: list[Task], opts: EvalOptions, data: str | None) -> tuple[list[Task], dict[str, Any] | None]:
    """The tasks with the fine-tune's output shape set on `collapse` (dropped when there is no shape), and
    the shape's record for the report. The shape: the one training recorded in the run's manifest; else
    learned from the run's training replies; else from the target data's references."""
    from dataclasses import replace

    if not any(t.scorer == "collapse" for t in tasks):
        return tasks, None
    shape, source = _find_shape(opts, data)
    if shape is None:
        return [t for t in tasks if t.scorer != "collapse"], {"shape": None, "source": source}
    record = {"shape": shape.to_dict(), "describe": shape.describe(), "source": source}
    return [replace(t, shape=shape) if t.scorer == "collapse" else t for t in tasks], record


def _find_shape(opts: EvalOptions, data: str | None) -> tuple[Any, str]:
    from tunesmith.data.formats import load_examples
    from tunesmith.evaluate.shape import Shape, shape_of_examples

    run = run_of(opts)
    if run is not None and (recorded := run.manifest().get("shape")) is not None:
        return Shape.from_dict(recorded), f"{run.path}: the training replies (as recorded by training)"
    train = run.data_file("train") if run is not None else None
    source = train or (Path(data) if data else None)
    if source is None:
        return None, "no training or target data to learn the fine-tune's output shape from"
    shape = shape_of_examples([ex.messages for ex in load_examples(source)])
    return shape, f"{source}: its replies" + ("" if shape else " share no narrow form: collapse not scored")


def open_contenders(opts: EvalOptions) -> tuple[Contender, Contender | None]:
    """(tuned, base or None), weights loaded once where an adapter can be switched off."""
    from tunesmith.model.adapters import load_for_inference, resolve_target
    from tunesmith.model.loading import pick_device

    device = pick_device(opts.device)
    target = resolve_target(opts.target, opts.adapter, quantize=opts.quantize)
    model, tokenizer = load_for_inference(target, device=device)
    tuned = Contender(target.label, _source(target), tokenizer, lambda: nullcontext(model))
    base_target = resolve_target(opts.base) if opts.base else _manifest_base(opts, target)
    if base_target is not None:
        base_model, base_tok = load_for_inference(base_target, device=device)
        return tuned, Contender(base_target.label, _source(base_target), base_tok, lambda: nullcontext(base_model))
    if target.adapter is not None:
        return tuned, Contender(target.model.name, target.model.name, tokenizer, lambda: _adapter_off(model))
    return tuned, None


def _manifest_base(opts: EvalOptions, target: Target) -> Target | None:
    """A full fine-tune's base model, found by the run's record (a LoRA run's base is the adapter switched off)."""
    from tunesmith.model.adapters import Target

    run = run_of(opts)
    if run is None or target.adapter is not None:
        return None
    base = run.base()
    return Target(base, None, base.name)


@contextmanager
def _adapter_off(model: Any) -> Iterator[PreTrainedModel]:
    with model.disable_adapter():
        yield model


def _source(target: Target) -> str:
    return target.model.name + (f" + {target.adapter}" if target.adapter is not None else "")


def score(
    contender: Contender, tasks: list[Task], examples: list[Any] | None, opts: EvalOptions, progress: Progress,
    rag_examples: list[Any] | None = None,
) -> tuple[dict[str, TaskScores], TargetScores | None, TargetScores | None]:
    """One model's suite scores and target-task scores, without and with retrieved notes."""
    with contender.use() as model:
        progress(f"{contender.label}: suite ({len(tasks)} tasks)")
        suite_scores = run_tasks(model, contender.tokenizer, tasks)
        target = rag = None
        if examples:
            progress(f"{contender.label}: target task ({len(examples)} examples)")
            target = score_target(model, contender.tokenizer, examples, max_length(opts), opts.max_new_tokens)
        if rag_examples:
            progress(f"{contender.label}: target task with retrieved notes")
            rag = score_target(model, contender.tokenizer, rag_examples, max_length(opts), opts.max_new_tokens)
    return suite_scores, target, rag


def evaluate(opts: EvalOptions, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Run the whole evaluation and return the report (JSON-able); `report.write` saves it."""
    started = time.time()
    tasks = gather_tasks(opts)
    data = default_data(opts)
    examples = load_target_data(data, opts.limit) if data else None
    facts = load_target_facts(data, opts.limit) if data else None
    source = rag_source(opts)  # a --rag without a source fails before any model loads
    tasks, shape = with_shape(tasks, opts, data)
    tuned, base = open_contenders(opts)
    rag_examples, retrieval = _with_notes(opts, source, examples, tuned.tokenizer) if examples and source else (
        None, None)
    tuned_suite, tuned_target, tuned_rag = score(tuned, tasks, examples, opts, progress, rag_examples)
    report: dict[str, Any] = _header(opts, tuned, base, data)
    base_suite = base_target = base_rag = None
    report["shape"] = shape
    if base is None:
        report["suite"] = [_single_row(s) for s in tuned_suite.values()]
    else:
        base_suite, base_target, base_rag = score(base, tasks, examples, opts, progress, rag_examples)
        comparisons = compare(base_suite, tuned_suite, opts.thresholds, opts.seed)
        report["verdict"] = overall(comparisons) if comparisons else None
        report["suite"] = [c.to_dict() for c in comparisons]
    if examples:
        report["target_task"] = compare_target(examples, base_target, tuned_target, opts.thresholds, opts.seed,
                                               facts)
    if rag_examples and tuned_rag is not None:
        report["target_task_rag"] = compare_target(rag_examples, base_rag, tuned_rag, opts.thresholds, opts.seed,
                                                   facts)
        report["retrieval"] = retrieval
        report["forms"] = forms(report["target_task"], report["target_task_rag"])
    for row in report["suite"]:
        row["outputs"] = _outputs(row["task"], base_suite, tuned_suite)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _header(opts: EvalOptions, tuned: Contender, base: Contender | None, data: str | None) -> dict[str, Any]:
    from datetime import datetime, timezone

    from tunesmith import __version__

    run = run_dir_of(opts)
    return {
        "tunesmith_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tuned": {"label": tuned.label, "source": tuned.source},
        "base": {"label": base.label, "source": base.source} if base else None,
        "run_dir": str(run) if run is not None else None,
        "data": data,
        "verdict": None,
        "thresholds": asdict(opts.thresholds),
        "suite": [],
        "target_task": None,
        "target_task_rag": None,  # the same examples with retrieved notes in the prompt (--rag)
        "retrieval": None,
        "forms": None,  # prompt-only, RAG, fine-tuned, fine-tuned + RAG: one row each (--rag)
    }


def forms(plain: dict[str, Any], rag: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per form (the base's two only when there is a base): each target metric's value."""
    out = []
    for name, section, side in (("prompt-only", plain, "base"), ("RAG", rag, "base"), ("fine-tuned", plain, "tuned"),
                                ("fine-tuned + RAG", rag, "tuned")):
        values = {m["name"]: m[side] for m in section["metrics"]}
        if any(v is not None for v in values.values()):
            out.append({"form": name, **values})
    return out


def _outputs(
    name: str, base: dict[str, TaskScores] | None, tuned: dict[str, TaskScores]
) -> list[dict[str, Any]]:
    """Per item: what each model replied or chose (refusal and choice tasks), so verdicts can be audited."""
    t = tuned[name]
    if t.outputs is None:
        return []
    b = base[name].outputs if base is not None else None
    return [
        {"id": item["id"], "base": b[k] if b else None, "base_score": base[name].num[k] if base else None,
         "tuned": t.outputs[k], "tuned_score": t.num[k]}
        for k, item in enumerate(t.task.items)
    ]


def _single_row(s: TaskScores) -> dict[str, Any]:
    t = s.task
    return {
        "task": t.name, "group": t.group, "metric": t.metric, "higher_is_better": t.higher_is_better,
        "relative": t.is_perplexity, "n": len(s.num), "base": None, "tuned": s.value, "delta": None,
        "ci": None, "verdict": None, "reason": "", "lost": [], "gained": [],
    }
