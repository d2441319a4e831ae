"""The training-time guard on the tiny model: same model passes, a damaged one fails, train mode survives."""

from __future__ import annotations

import copy

import pytest
import torch

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tunesmith.evaluate.guard import GUARD_PROSE, GUARD_TASKS, TrainingGuard, guard_tasks


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from tunesmith.model.loading import load_model

    return load_model(str(tiny_model_dir))


def test_guard_slice_is_small_seeded_and_spread_over_tasks():
    tasks = guard_tasks(12, seed=0)
    assert [t.name for t in tasks] == [*GUARD_TASKS, "prose"]
    assert [len(t.items) for t in tasks] == [4, 4, 4, GUARD_PROSE]
    assert [t.items for t in tasks] == [t.items for t in guard_tasks(12, seed=0)]
    assert [t.items for t in tasks] != [t.items for t in guard_tasks(12, seed=1)]


def test_unchanged_model_passes_and_train_mode_is_restored(model, tiny_tokenizer):
    guard = TrainingGuard(tiny_tokenizer, items=12)
    model.train()
    first = guard.baseline(model)
    assert model.training
    assert set(first) == {"guard/capitals", "guard/elements", "guard/arithmetic", "guard/prose_ppl"}
    assert first["guard/prose_ppl"] > 1
    metrics, verdict = guard.check(model)
    assert metrics == pytest.approx(first) and verdict == "pass" and model.training


def test_damaged_model_fails(model, tiny_tokenizer):
    guard = TrainingGuard(tiny_tokenizer, items=12)
    before = guard.baseline(model)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged.model.embed_tokens.weight.mul_(8)  # tied with the LM head: sharp, wrong predictions
    metrics, verdict = guard.check(damaged)
    assert metrics["guard/prose_ppl"] > 1.25 * before["guard/prose_ppl"]
    assert verdict == "fail"


def test_check_before_baseline_is_a_programming_error(model, tiny_tokenizer):
    with pytest.raises(RuntimeError, match=r"check\(\) called before baseline\(\)"):
        TrainingGuard(tiny_tokenizer, items=3).check(model)
