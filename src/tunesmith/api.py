"""The whole pipeline on one screen: check data -> plan -> train -> evaluate -> merge / export / serve.

Each function is what the matching CLI command calls; use them from Python the same way. The CLI only
parses arguments, calls these, and prints what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import TrainConfig, load_config, resume_config
from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from tunesmith.model.merge import MergeResult
    from tunesmith.plan import Plan
    from tunesmith.train.loop import Hooks
    from tunesmith.train.run import RunResult


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
        stats = data_stats(config, tokenizer)
    result = estimate(config, device=pick_device(config.device), world=world, gpu_memory_gb=gpu_memory_gb,
                      data=stats, calibrate_speed=calibrate)
    result.notes.extend(notes)
    return result


def fine_tune(config: TrainConfig, *, resume: bool = False, force: bool = False,
              hooks: Hooks | None = None) -> RunResult:
    """Train per `config`, with the forgetting guard and replay mixing when the config asks for them."""
    from tunesmith.errors import ConfigError
    from tunesmith.train.run import Extras, train

    if not config.data:
        raise ConfigError("config: no training data given (DATA argument or 'data:' in the config file)")
    guard_factory = None
    replay: list[Any] = []
    if config.guard or config.replay:
        from tunesmith.evaluate import guard as guard_mod

        if config.guard:
            def guard_factory(tokenizer: Any) -> Any:
                return guard_mod.TrainingGuard(tokenizer, seed=config.seed)
        if config.replay:
            n_train = _count_examples(config)
            n = round(config.replay / (1 - config.replay) * n_train)
            replay = guard_mod.replay_examples(n, seed=config.seed)
    return train(config, resume=resume, force=force, hooks=hooks, extras=Extras(guard_factory, replay))


def guard_summary(result: RunResult) -> str:
    """One sentence: what the forgetting guard said about the exported step, and how general skills moved."""
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
    return f"guard at step {result.exported_step}: {verdict.upper()}, {words} ({', '.join(moves)})"


def merge_adapter(target: str | Path, out: str | Path, *, adapter: str | Path | None = None,
                  force: bool = False) -> MergeResult:
    """Fold a LoRA adapter into its base model and save a plain model folder."""
    from tunesmith.model.merge import merge

    return merge(target, out, adapter=adapter, force=force)


def export_gguf(target: str | Path, out: str | Path | None = None, **options: Any) -> Any:
    """Write a run as GGUF (merged, optionally base + LoRA adapter) plus an Ollama Modelfile, checked against it."""
    from tunesmith.export.gguf_export import export_gguf as export

    return export(target, out, **options)


def _count_examples(config: TrainConfig) -> int:
    from tunesmith.data.formats import load_examples

    return len(load_examples(config.data, config.format, config.columns))
