"""The training-time guard on the tiny model: same model passes, a damaged one fails, train mode survives."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tunesmith.evaluate.guard import (
    GUARD_PROSE,
    GUARD_RESAMPLES,
    GUARD_SIZES,
    GUARD_TASKS,
    TrainingGuard,
    guard_tasks,
)
from tunesmith.evaluate.shape import learn_shape
from tunesmith.evaluate.suite import TaskScores, load_task
from tunesmith.evaluate.verdict import Comparison, Thresholds, compare_task

SMALL = {"capitals": 4, "elements": 4, "arithmetic": 4, "capitals_free": 6}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from tunesmith.model.loading import load_model

    return load_model(str(tiny_model_dir))


def test_guard_slice_is_small_seeded_and_spread_over_tasks():
    tasks = guard_tasks(SMALL, seed=0)
    assert [t.name for t in tasks] == [*GUARD_TASKS, "prose"]
    assert [len(t.items) for t in tasks] == [*SMALL.values(), GUARD_PROSE]
    assert [t.items for t in tasks] == [t.items for t in guard_tasks(SMALL, seed=0)]
    assert [t.items for t in tasks] != [t.items for t in guard_tasks(SMALL, seed=1)]
    # it runs at every evaluation: teacher-forced items are cheap (about 0.02 s each on the built-in model),
    # free generation dominates its cost; capitals are the whole task (a confirmed drop hid in 16 of them)
    assert all(k <= len(load_task(name).items) for name, k in GUARD_SIZES.items())
    assert GUARD_SIZES["capitals"] == len(load_task("capitals").items)
    assert sum(v for k, v in GUARD_SIZES.items() if k != "capitals_free") <= 120


def test_with_a_shape_the_slice_counts_collapse_on_the_free_replies():
    shape = learn_shape([f"19{n:02d}-01-01" for n in range(12)])
    tasks = {t.name: t for t in guard_tasks(SMALL, seed=0, shape=shape)}
    assert tasks["collapse"].shape == shape and not tasks["collapse"].higher_is_better
    assert [i["prompt"] for i in tasks["collapse"].items] == [i["prompt"] for i in tasks["capitals_free"].items]


def test_unchanged_model_passes_and_train_mode_is_restored(model, tiny_tokenizer):
    shape = learn_shape([f"19{n:02d}-01-01" for n in range(12)])
    guard = TrainingGuard(tiny_tokenizer, sizes=SMALL, shape=shape)
    model.train()
    first = guard.baseline(model)
    assert model.training
    assert set(first) == {"guard/capitals", "guard/elements", "guard/arithmetic", "guard/capitals_free",
                          "guard/prose_ppl", "guard/collapse"}
    assert first["guard/prose_ppl"] > 1
    metrics, verdict, flags = guard.check(model)
    assert metrics == pytest.approx(first) and verdict == "pass" and flags == {} and model.training


def test_damaged_model_fails(model, tiny_tokenizer):
    guard = TrainingGuard(tiny_tokenizer, sizes=SMALL)
    before = guard.baseline(model)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged.model.embed_tokens.weight.mul_(8)  # tied with the LM head: sharp, wrong predictions
    metrics, verdict, flags = guard.check(damaged)
    assert metrics["guard/prose_ppl"] > 1.25 * before["guard/prose_ppl"]
    assert verdict == "fail" and flags["prose"] == "fail"


def test_check_before_baseline_is_a_programming_error(model, tiny_tokenizer):
    with pytest.raises(RuntimeError, match=r"check\(\) called before baseline\(\)"):
        TrainingGuard(tiny_tokenizer, sizes={"capitals": 3}).check(model)


def _row(lost: int, n: int = 16) -> Comparison:
    """Base vs tuned on `n` items of which the tuned model lost `lost`, judged as the guard judges."""
    task = replace(load_task("elements"), items=load_task("elements").items[:n])
    base, tuned, ones = [1.0 if i < lost else 0.0 for i in range(n)], [0.0] * n, [1.0] * n
    return compare_task(TaskScores(task, base, ones), TaskScores(task, tuned, ones),
                        Thresholds(resamples=GUARD_RESAMPLES))


def test_the_slice_calls_a_small_unconfirmed_drop_noise_and_flags_it():
    from tunesmith.evaluate.guard import UNCONFIRMED_WARN, _slice_verdict, is_noise

    two = _row(2)  # 12.5 points: past the fail threshold, not confirmed on 16 items
    assert two.verdict == "warn" and not two.confirmed and two.harm < UNCONFIRMED_WARN
    assert is_noise(two) and _slice_verdict(two).verdict == "pass"
    big = _row(12)  # 75 points: confirmed
    assert big.confirmed and _slice_verdict(big).verdict == "fail" and not is_noise(big)
    assert _slice_verdict(_row(0)).verdict == "pass" and not is_noise(_row(0))


def test_check_flags_an_unconfirmed_drop_without_warning(tiny_tokenizer, monkeypatch):
    """Interpolation toward the base reads the flag, so the noise rule must not swallow it."""
    task = replace(load_task("elements"), items=load_task("elements").items[:16])
    ones = [1.0] * 16
    guard = TrainingGuard(tiny_tokenizer, sizes={"elements": 16})
    guard.tasks = [task]
    scripted = iter([[1.0] * 16, [0.0, 0.0] + [1.0] * 14, [0.0] * 12 + [1.0] * 4])
    monkeypatch.setattr(guard, "_score", lambda model: {"elements": TaskScores(task, next(scripted), ones)})
    guard.baseline(None)
    _, verdict, flags = guard.check(None)  # two of 16 lost: noise on the slice, but flagged
    assert verdict == "pass" and flags == {"elements": "unconfirmed"}
    _, verdict, flags = guard.check(None)  # twelve lost: confirmed
    assert verdict == "fail" and flags == {"elements": "fail"}
