"""The whole pipeline on one screen: check data -> plan -> train -> evaluate -> merge / serve.

Each function is what the matching CLI command calls; use them from Python the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import TrainConfig
from tunesmith.train.loop import Hooks
from tunesmith.train.run import RunResult, train


def fine_tune(
    config: TrainConfig, *, resume: bool = False, force: bool = False, hooks: Hooks | None = None,
    on_start: Any = None,
) -> RunResult:
    """Train per `config`, with the forgetting guard and replay mixing when the config asks for them."""
    guard_factory = None
    replay: list[list[dict[str, str]]] = []
    if config.guard or config.replay:
        from tunesmith.evaluate import guard as guard_mod

        if config.guard:
            def guard_factory(tokenizer: Any) -> Any:
                return guard_mod.TrainingGuard(tokenizer, seed=config.seed)
        if config.replay:
            n_train = _count_examples(config)
            n = round(config.replay / (1 - config.replay) * n_train)
            replay = guard_mod.replay_examples(n, seed=config.seed)
    return train(config, resume=resume, force=force, hooks=hooks, guard_factory=guard_factory,
                 replay=replay, on_start=on_start)


def merge_adapter(target: str | Path, out: str | Path, *, adapter: str | Path | None = None,
                  force: bool = False) -> Any:
    """Fold a LoRA adapter into its base model and save a plain model folder."""
    from tunesmith.model.merge import merge

    return merge(target, out, adapter=adapter, force=force)


def _count_examples(config: TrainConfig) -> int:
    from tunesmith.data.formats import load_examples

    return len(load_examples(config.data, config.format))
