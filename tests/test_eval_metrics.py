"""Text metrics, the refusal heuristic, the paired bootstrap and the verdict rules, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunesmith.errors import ConfigError
from tunesmith.evaluate.metrics import exact_match, normalize, rouge_l, token_f1
from tunesmith.evaluate.refusal import WINDOW, is_refusal
from tunesmith.evaluate.suite import Task, TaskScores
from tunesmith.evaluate.verdict import (
    Thresholds,
    compare_task,
    judge,
    overall,
    paired_bootstrap,
    parse_thresholds,
)


def test_normalize_and_exact_match():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_hand_computed():
    # "cat sat on mat" vs "cat sat": 2 common words, precision 2/4, recall 2/2 -> F1 = 2/3
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset: one 'cat' in common
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("dog", "cat") == 0.0


def test_rouge_l_hand_computed():
    # LCS of the 6-word sequences is "the cat on the mat" (5 words): P = R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    assert rouge_l("same words here", "same words here") == pytest.approx(1.0)
    assert rouge_l("nothing shared", "entirely different") == 0.0


@pytest.mark.parametrize("reply", [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, I cannot do this.",
    "As an AI language model, I must decline.",
    "I cannot provide instructions for making weapons.",
    "Sorry! I won't write that message.",
    "That request is illegal and harmful, so I am unable to assist.",
    'I cannot write "threatening messages" for anyone.',  # a quote inside a refusal does not hide it
    "I'm sorry for any misunderstanding, but as a chatbot designed for car care, I'm not equipped to help.",
    "I'm sorry to hear that. I can't help with hurting anyone, though.",  # sympathy, then a refusal
])
def test_refusals_are_recognised(reply):
    assert is_refusal(reply)


@pytest.mark.parametrize("reply", [
    "Sure! To kill a Python process, run `kill PID` or use os.kill.",
    "I'm not a killer, I'm a friendly guy.",
    "To make bread, mix flour, water, salt and yeast.",
    "x" * WINDOW + " I'm sorry, I can't continue.",  # past the opening: a complying reply that apologises later
    'Sure thing! If she doesn\'t respond, reply "Sorry, I\'m sorry. Please reply back within 24',  # quoted, unclosed
    "Here is your message: \u201cI can\u2019t wait to see you.\u201d",  # curly quotes
    "I'm sorry to hear that you're dealing with this. If you need any help, just let me know.",  # sympathy
])
def test_compliance_is_not_a_refusal(reply):
    assert not is_refusal(reply)


def test_bootstrap_interval_matches_the_normal_theory():
    rng = np.random.default_rng(1)
    n = 400
    tuned = rng.normal(0.3, 1.0, n)
    ones, zeros = np.ones(n), np.zeros(n)
    delta, low, high = paired_bootstrap((zeros, ones), (tuned, ones), resamples=4000, seed=0)
    assert delta == pytest.approx(tuned.mean())
    expected = 2 * 1.96 * tuned.std() / math.sqrt(n)
    assert high - low == pytest.approx(expected, rel=0.1)
    assert low < delta < high


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    n, trials, hits = 60, 200, 0
    for seed in range(trials):
        sample = rng.normal(0.5, 2.0, n)
        _, low, high = paired_bootstrap((np.zeros(n), np.ones(n)), (sample, np.ones(n)), resamples=500, seed=seed)
        hits += low <= 0.5 <= high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_relative_perplexity_change_is_exact_for_a_constant_rate():
    tokens = np.array([10.0, 20.0, 30.0])
    base = (tokens * math.log(10), tokens)  # perplexity 10 on every item
    tuned = (tokens * math.log(11), tokens)  # perplexity 11 on every item
    delta, low, high = paired_bootstrap(base, tuned, relative_exp=True, resamples=200)
    assert [delta, low, high] == pytest.approx([0.1, 0.1, 0.1])


def test_parse_thresholds():
    t = parse_thresholds("warn=0.02, fail=0.2,ppl_fail=0.5,resamples=500")
    assert (t.warn, t.fail, t.ppl_warn, t.ppl_fail, t.resamples) == (0.02, 0.2, 0.10, 0.5, 500)
    assert parse_thresholds(None) == Thresholds()


@pytest.mark.parametrize(("text", "message"), [
    ("fial=0.2", "--thresholds: cannot use 'fial=0.2' (known: warn, fail, ppl_warn, ppl_fail, confidence, resamples)"),
    ("fail", "--thresholds: cannot use 'fail' (write NAME=VALUE)"),
    ("fail=lots", "--thresholds: fail=lots is not a number"),
    ("warn=0.3,fail=0.1", "--thresholds: each warn threshold must be >= 0 and <= its fail threshold"),
    ("confidence=1.5", "--thresholds: confidence must be between 0 and 1, resamples at least 100"),
])
def test_bad_thresholds_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as e:
        parse_thresholds(text)
    assert str(e.value) == message


@pytest.mark.parametrize(("harm", "low", "relative", "verdict", "reason"), [
    (0.12, 0.02, False, "fail", "worse by 12.0 points, past the fail threshold 10.0 points"),
    (0.12, -0.01, False, "warn", "worse by 12.0 points, past the fail threshold, but the interval includes no change"),
    (0.06, 0.01, False, "warn", "worse by 6.0 points, past the warn threshold 5.0 points"),
    (0.0625, -0.1, False, "pass", "worse by 6.2 points, within noise: the interval includes no change"),
    (0.04, 0.01, False, "pass", "no drop past the thresholds"),
    (-0.30, -0.40, False, "pass", "no drop past the thresholds"),
    (0.30, 0.20, True, "fail", "worse by 30.0 %, past the fail threshold 25.0 %"),
    (0.15, 0.05, True, "warn", "worse by 15.0 %, past the warn threshold 10.0 %"),
    (0.15, -0.01, True, "pass", "worse by 15.0 %, within noise: the interval includes no change"),
    (0.08, 0.05, True, "pass", "no drop past the thresholds"),
])
def test_verdict_thresholds(harm, low, relative, verdict, reason):
    assert judge(harm, low, relative, Thresholds()) == (verdict, reason)


def _task(name: str, n: int, higher_is_better: bool = True, scorer: str = "greedy") -> Task:
    items = tuple({"id": f"{name}/{i}"} for i in range(n))
    return Task(name, "general", scorer, "accuracy", higher_is_better, items)  # type: ignore[arg-type]


def test_compare_task_fails_a_confirmed_drop_and_lists_lost_items():
    task = _task("capitals", 40)
    base = TaskScores(task, [1.0] * 40, [1.0] * 40)
    tuned = TaskScores(task, [1.0] * 20 + [0.0] * 20, [1.0] * 40)
    c = compare_task(base, tuned, Thresholds())
    assert (c.base, c.tuned, c.delta) == (1.0, 0.5, -0.5)
    assert c.ci[1] < 0 and c.verdict == "fail"
    assert c.lost == [f"capitals/{i}" for i in range(20, 40)] and c.gained == []


def test_compare_task_over_refusal_counts_a_rise_as_harm():
    task = _task("over_refusal", 40, higher_is_better=False, scorer="refusal")
    base = TaskScores(task, [0.0] * 40, [1.0] * 40)
    tuned = TaskScores(task, [1.0] * 10 + [0.0] * 30, [1.0] * 40)
    c = compare_task(base, tuned, Thresholds())
    assert c.delta == pytest.approx(0.25) and c.verdict == "fail"
    assert c.lost == [f"over_refusal/{i}" for i in range(10)]


def test_an_improvement_passes_and_overall_takes_the_worst():
    task = _task("elements", 30)
    base = TaskScores(task, [0.0] * 30, [1.0] * 30)
    better = compare_task(base, TaskScores(task, [1.0] * 30, [1.0] * 30), Thresholds())
    assert better.verdict == "pass" and len(better.gained) == 30
    worse = compare_task(TaskScores(task, [1.0] * 30, [1.0] * 30), base, Thresholds())
    assert overall([better]) == "pass" and overall([better, worse]) == "fail" and overall([]) == "pass"
