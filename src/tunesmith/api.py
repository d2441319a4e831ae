"""The whole pipeline on one screen: check data -> plan -> train -> evaluate -> merge / export / serve.

Each function is what the matching CLI command calls; use them from Python the same way. The CLI only
parses arguments, calls these, and prints what they return.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import TrainConfig, load_config, resume_config
from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from tunesmith.data.formats import Dataset, Example
    from tunesmith.data.prepare import PrepareConfig, Prepared
    from tunesmith.data.quality import Report
    from tunesmith.evaluate.remedy import Remedy
    from tunesmith.model.merge import MergeResult
    from tunesmith.plan import Plan
    from tunesmith.train.loop import Hooks
    from tunesmith.train.run import RunResult


# The settings objects of each stage, importable from here without loading their stage up front.
_SETTINGS = {"PrepareConfig": "tunesmith.data.prepare", "EvalOptions": "tunesmith.evaluate.runner",
             "ServeConfig": "tunesmith.serve.app", "Limits": "tunesmith.serve.engine",
             "SamplingParams": "tunesmith.serve.generate", "Conversation": "tunesmith.serve.chat"}


def __getattr__(name: str) -> Any:
    if name in _SETTINGS:
        import importlib

        return getattr(importlib.import_module(_SETTINGS[name]), name)
    raise AttributeError(f"module 'tunesmith.api' has no attribute '{name}'")


# -- data -------------------------------------------------------------------------------------------------


def load_data(path: str | Path, fmt: str = "auto", columns: str | None = None) -> Dataset:
    """Read and validate a dataset (every problem at once, with file:line); the file is only read."""
    from tunesmith.data.formats import load_dataset

    return load_dataset(path, fmt, columns)  # type: ignore[arg-type]  # an unknown format is a ConfigError


def check_data(data: Dataset, *, model: str = "smollm2-135m", max_length: int = 1024,
               eval_data: Dataset | None = None) -> Report:
    """`tunesmith data check`: the quality report (duplicates, conflicts, lengths, leakage into `eval_data`)."""
    from tunesmith.data.quality import build_report
    from tunesmith.model.loading import load_tokenizer

    return build_report(data, load_tokenizer(model), max_length, eval_data)


def prepare_data(data: Dataset, out: str | Path, config: PrepareConfig, *, model: str = "smollm2-135m") -> Prepared:
    """`tunesmith data prepare`: deduplicate, split by prompt group, write train/eval JSONL and report.json."""
    from tunesmith.data.prepare import prepare
    from tunesmith.model.loading import load_tokenizer

    return prepare(data, out, config, load_tokenizer(model))


# -- training -----------------------------------------------------------------------------------------------


def load_train_config(path: str | Path | None = None, *, resume: str | Path | None = None,
                      **overrides: Any) -> TrainConfig:
    """Settings for `train`: a YAML file with overrides on top, or a run's own settings when resuming
    (then only the resumable overrides are allowed: more steps or epochs, eval/save cadence, device, threads)."""
    if resume is None:
        return load_config(path, **overrides)
    from tunesmith.errors import ConfigError, RunError
    from tunesmith.runfolder import RunFolder, describe_non_run, is_run

    if path is not None:
        raise ConfigError("--resume uses the run's own config.yaml; drop --config")
    if not is_run(resume):
        raise RunError(f"{resume}: {describe_non_run(Path(resume))}; nothing to resume")
    return resume_config(RunFolder.open(resume).config(), **overrides)


def plan(config: TrainConfig, *, gpu_memory_gb: float | None = None, world: int = 1,
         calibrate: bool = False) -> Plan:
    """What `fine_tune(config)` will cost on `config.device` (`world` ranks): memory by part, time, and the
    configurations that fit. With `config.data`, tokens are counted as training will see them."""
    from tunesmith.model.arch import load_arch
    from tunesmith.model.loading import DEFAULT_MODEL, load_tokenizer, pick_device
    from tunesmith.plan import data_stats, estimate

    load_arch(config.model)  # a wrong model name fails here, before the data is read
    notes, stats = [], None
    if config.data:
        try:
            tokenizer = load_tokenizer(config.model)
        except ModelError:  # a config.json alone: count with the built-in tokenizer, and say so
            tokenizer = load_tokenizer(DEFAULT_MODEL)
            notes.append(f"tokens counted with {DEFAULT_MODEL}'s tokenizer: '{config.model}' has none here")
        added: list[Example] = []

        def replay_rows(rows: Sequence[Example]) -> list[Example]:
            added.extend(_replay(config, rows)[1])
            return added

        stats = data_stats(config, tokenizer, extra=replay_rows)
        if added:
            notes.append(f"the data counts {len(added)} general replay examples that training mixes in "
                         "(--replay; 0 turns them off)")
    result = estimate(config, device=pick_device(config.device), world=world, gpu_memory_gb=gpu_memory_gb,
                      data=stats, calibrate_speed=calibrate)
    result.notes.extend(notes)
    return result


def fine_tune(config: TrainConfig, *, resume: bool = False, force: bool = False,
              hooks: Hooks | None = None) -> RunResult:
    """Train per `config`, with the forgetting guard and replay mixing (`replay: auto` chooses the share from
    the data size; none for documents). The shape of the training replies goes to the guard (format collapse) and
    into the run's manifest, where `tunesmith eval` finds it."""
    from tunesmith.errors import ConfigError
    from tunesmith.evaluate import guard as guard_mod
    from tunesmith.evaluate.shape import shape_of_examples
    from tunesmith.train.run import Extras, train

    if not config.data:
        raise ConfigError("config: no training data given (DATA argument or 'data:' in the config file)")
    examples = _examples(config)
    config, replay = _replay(config, examples)
    shape = shape_of_examples([ex.messages for ex in examples])
    guard_factory = None
    if config.guard:
        def guard_factory(tokenizer: Any) -> Any:
            return guard_mod.TrainingGuard(tokenizer, seed=config.seed, shape=shape)
    extras = Extras(guard_factory, [ex.messages for ex in replay], {"shape": shape.to_dict() if shape else None})
    return train(config, resume=resume, force=force, hooks=hooks, extras=extras)


def _replay(config: TrainConfig, examples: Sequence[Example]) -> tuple[TrainConfig, list[Example]]:
    """`config` with `replay: auto` resolved for `examples` (the user's own), and the general replay examples
    training mixes in at that share (none for a share of 0)."""
    from tunesmith.config import resolve_replay
    from tunesmith.data.formats import Example
    from tunesmith.evaluate.guard import replay_examples

    config = resolve_replay(config, len(examples), documents=any(ex.text is not None for ex in examples))
    if not config.replay:
        return config, []
    n = round(config.replay / (1 - config.replay) * len(examples))
    return config, [Example(messages=m, source=f"replay:{i}") for i, m in enumerate(replay_examples(n, config.seed))]


def guard_summary(result: RunResult) -> str:
    """One sentence: what the forgetting guard said about the exported weights, and how general skills moved."""
    if not result.guard:
        return "guard: off; `tunesmith eval` compares the tuned model with its base"
    base, exported = result.guard.get("base", {}), result.guard.get("exported", {})
    verdict = exported.get("guard_verdict")
    if verdict is None:
        return f"guard: the exported step {result.exported_step} was not scored; `tunesmith eval` checks it"
    moves = [f"{k.removeprefix('guard/')} {base[k]:.2f} -> {exported[k]:.2f}" for k in sorted(exported)
             if k.startswith("guard/") and k in base]
    words = {"pass": "general skills held", "warn": "some general skills slipped",
             "fail": "general skills were lost"}[verdict]
    scale = result.guard.get("scale")
    where = f"step {result.exported_step}" + (f" scaled {scale:g} toward the base" if scale and scale < 1 else "")
    return f"guard at {where}: {verdict.upper()}, {words} ({', '.join(moves)})"


def remedy(run: str | Path) -> Remedy:
    """What to try when a run forgets: a `tunesmith train` command line (the run's settings plus the next
    remedy it did not use: LoRA, more replay, interpolation, a lower learning rate, fewer epochs) and why."""
    from tunesmith.config import TrainConfig, resolve_defaults, resolve_replay
    from tunesmith.evaluate.remedy import remedy_for
    from tunesmith.runfolder import RunFolder

    folder = RunFolder.open(run)
    config, manifest = folder.config(), folder.manifest()
    data, spe = manifest.get("data") or {}, (manifest.get("schedule") or {}).get("steps_per_epoch", 1)
    rows = int(data.get("train_examples", 0))
    own = rows - int(data.get("replay_examples", 0)) + int(data.get("eval_examples", 0))
    plain = TrainConfig(data=config.data, method=config.method, out=config.out)
    return remedy_for(config, resolve_defaults(resolve_replay(plain, own), rows, spe))


def evaluate(opts: Any, progress: Any = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """`tunesmith eval`: score the tuned model and its base on the suite and the target task, write the report
    (report.json, report.md, report.html) and return it with the paths written."""
    from tunesmith.evaluate.report import write
    from tunesmith.evaluate.runner import evaluate as run_evaluation
    from tunesmith.evaluate.runner import out_dir, run_dir_of

    report = run_evaluation(opts, progress or (lambda _: None))
    return report, write(report, out_dir(opts, report["tuned"]["label"]), run_dir_of(opts))


def advise_from_data(data: Dataset) -> Any:
    """The decision table answered from what the data shows (fine-tune, RAG, both, or prompting)."""
    from tunesmith.advise import Answers, decide, evidence_from

    evidence = evidence_from(data.examples) if data.examples and data.format != "text" else None
    return decide(Answers(), evidence)


QUICK_STEPS = 24  # `run --quick`: enough steps to see the task being learned, a few minutes on a CPU
QUICK_EVAL_EXAMPLES = 16


def quick(config: TrainConfig) -> TrainConfig:
    """`run --quick`: a short run that still goes through every stage (at most QUICK_STEPS optimizer steps)."""
    import dataclasses

    steps = min(config.max_steps or QUICK_STEPS, QUICK_STEPS)
    return dataclasses.replace(config, max_steps=steps, eval_every=steps // 2)


def fitted(config: TrainConfig, planned: Plan) -> TrainConfig | None:
    """`config`, or the planner's recommended configuration when `config` does not fit (None: nothing fits)."""
    import dataclasses

    r = planned.recommendation
    if r.fits is False:
        return None
    if r.fits is None or not planned.options:
        return config
    best = planned.options[0]
    keys = ("method", "quantize", "gradient_checkpointing", "batch_size", "grad_accum", "max_length")
    if planned.required_memory_bytes <= (planned.available_memory_bytes or 0) * 0.9:
        return config
    return dataclasses.replace(config, **{k: best[k] for k in keys})


def merge_adapter(target: str | Path, out: str | Path, *, adapter: str | Path | None = None,
                  force: bool = False) -> MergeResult:
    """Fold a LoRA adapter into its base model and save a plain model folder."""
    from tunesmith.model.merge import merge

    return merge(target, out, adapter=adapter, force=force)


def export_gguf(target: str | Path, out: str | Path | None = None, **options: Any) -> Any:
    """Write a run as GGUF (merged, optionally base + LoRA adapter) plus an Ollama Modelfile, checked against it."""
    from tunesmith.export.gguf_export import export_gguf as export

    return export(target, out, **options)


def _examples(config: TrainConfig) -> list[Any]:
    from tunesmith.data.formats import load_examples

    return load_examples(config.data, config.format, config.columns)


# -- use it ------------------------------------------------------------------------------------------------


def load_for_chat(target: str, adapter: str | Path | None = None, *, device: str = "auto",
                  quantize: str = "auto") -> tuple[Any, Any]:
    """The model `generate` and `chat` talk to (base, run folder or adapter) in eval mode, and its tokenizer."""
    import warnings

    from tunesmith.model.adapters import load_for_inference, resolve_target
    from tunesmith.model.loading import pick_device
    from tunesmith.serve.generate import inference_dtype

    dev = pick_device(device)
    with warnings.catch_warnings():  # PEFT calls an API transformers 5 deprecates; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return load_for_inference(resolve_target(target, adapter, quantize=quantize), device=dev,
                                  dtype=inference_dtype(dev))


def prompt_ids(tokenizer: Any, text: str, *, system: str | None = None, raw: bool = False,
               notes: Any = None) -> list[int]:
    """Token ids for one user message through the chat template (as training rendered it), or `raw` text.
    `notes`: a `retrieval.Retriever` whose best notes for `text` go into the system message."""
    from tunesmith.data.tokenize import encode_prompt
    from tunesmith.retrieval import answer_with_notes

    if raw:
        return list(tokenizer(text)["input_ids"])
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    if notes is not None:
        messages = answer_with_notes(notes, messages, tokenizer)
    return encode_prompt(tokenizer, messages)


def notes_for(target: str | Path) -> Any:
    """The retriever a run trained with notes (`train --rag`) answers with; None for anything else."""
    from tunesmith.retrieval import for_run

    found = for_run(target)
    return found[0] if found else None


def stream_reply(model: Any, tokenizer: Any, ids: list[int], params: Any) -> Iterator[Any]:
    """The reply, a step (text piece, token count, finish reason) at a time."""
    from tunesmith.serve.generate import stream

    return stream(model, tokenizer, ids, params)


def build_engine(model: str | None, adapters: list[tuple[str, str]], *, device: str = "auto", limits: Any = None,
                 engine: str = "auto", int8: bool = False, compile: bool = False) -> Any:
    """The serving engine: one base model (or a LoRA run's base, its adapter served under the run's name) and
    any number of named adapters on top. Without a model, the base the first adapter was trained on (the
    built-in model when there is no adapter either)."""
    from tunesmith.model.adapters import resolve_target
    from tunesmith.model.loading import DEFAULT_MODEL
    from tunesmith.serve.engine import Engine

    if model is None:
        first = resolve_target(adapters[0][1]).model if adapters else None
        model = DEFAULT_MODEL if first is None else first.name if first.kind in ("builtin", "hub") else first.path
    target = resolve_target(model)
    base_id = target.model.name if target.adapter is not None else target.label
    served = Engine(target.model, base_id=base_id, device=device, limits=limits, engine=engine, int8=int8,
                    compile=compile)
    if target.adapter is not None:  # --model RUN_DIR of a LoRA run: serve its adapter under the run's name
        served.add_adapter(target.label, Path(model))
    for name, path in adapters:
        served.add_adapter(name, path)
    return served


def serve(engine: Any, config: Any) -> None:
    """Serve `engine` over the OpenAI-compatible HTTP API until interrupted."""
    import uvicorn

    from tunesmith.serve.app import create_app

    uvicorn.run(create_app(engine, config), host=config.host, port=config.port, log_level="info",
                timeout_graceful_shutdown=5)
