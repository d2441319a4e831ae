"""The forgetting benchmark (bench/forgetting.py): task data, scorers, result rows, table, resume. No training."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.data.formats import load_dataset

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "bench" / "forgetting"
sys.path.insert(0, str(TASKS_DIR))

import _narrow  # noqa: E402
import _probe  # noqa: E402
import _results  # noqa: E402
import make_tasks  # noqa: E402


def _bench():
    spec = importlib.util.spec_from_file_location("forgetting_bench", ROOT / "bench" / "forgetting.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[tuple[str, str]]:
    return [(e.messages[0]["content"], e.messages[1]["content"]) for e in load_dataset(path).examples]


# ------------------------------------------------------------------------------------------------- data
def test_generator_is_deterministic_and_reproduces_the_committed_files(tmp_path):
    make_tasks.main(tmp_path / "a")
    make_tasks.main(tmp_path / "b")
    for name in _narrow.TASKS:
        for split in ("train.jsonl", "test.jsonl"):
            made = (tmp_path / "a" / name / split).read_bytes()
            assert made == (tmp_path / "b" / name / split).read_bytes(), (name, split)
            assert made == (TASKS_DIR / name / split).read_bytes(), f"{name}/{split}: rerun make_tasks.py"


@pytest.mark.parametrize("task", list(_narrow.TASKS.values()), ids=list(_narrow.TASKS))
def test_tasks_are_narrow_prompt_completion_with_disjoint_prompts(task):
    train, test = _rows(task.train_file()), _rows(task.test_file())
    assert load_dataset(task.train_file()).format == "prompt_completion"
    assert 200 <= len(train) <= 300 and 60 <= len(test) <= 100
    assert len({p for p, _ in train}) == len(train) and len({p for p, _ in test}) == len(test)
    assert not {p for p, _ in train} & {p for p, _ in test}
    for _, completion in train + test:  # one rigid output shape, which the scorer knows
        assert task.in_shape(completion), completion
        assert task.score(completion, completion)


def test_task_contents_are_right():
    for prompt, iso in _rows(_narrow.TASKS["dates"].test_file()):
        day = dt.date.fromisoformat(iso)
        assert str(day.year) in prompt and str(day.day) in prompt
    for name in ("train", "test"):
        labels = {c for _, c in _rows(TASKS_DIR / "tickets" / f"{name}.jsonl")}
        assert labels == set(_narrow.TICKET_LABELS)
    train_facts = {c for _, c in _rows(_narrow.TASKS["teams"].train_file())}
    assert {c for _, c in _rows(_narrow.TASKS["teams"].test_file())} <= train_facts  # learnable
    dates_train = {c for _, c in _rows(_narrow.TASKS["dates"].train_file())}
    assert not dates_train & {c for _, c in _rows(_narrow.TASKS["dates"].test_file())}  # unseen dates


# ---------------------------------------------------------------------------------------------- scorers
@pytest.mark.parametrize(("reply", "right"), [
    ("1987-03-05", True), (" 1987-03-05\n", True), ("1987-3-5", False), ("The date is 1987-03-05.", False),
    ("1987-03-05.", False),
])
def test_exact_match(reply, right):
    assert _narrow.TASKS["dates"].score(reply, "1987-03-05") is right


@pytest.mark.parametrize(("reply", "right"), [
    ("billing", True), ("Billing.", True), ("This is a billing question.", True),
    ("shipping, not billing", False), ("I can't tell.", False), ("rebilling", False),
])
def test_label_accuracy(reply, right):
    assert _narrow.TASKS["tickets"].score(reply, "billing") is right


@pytest.mark.parametrize(("reply", "right"), [
    ("Mira Strand is on the Quorra team.", True), ("Quorra", True), ("She works with the quorra people.", True),
    ("Mira Strand is on the Brisa team.", False), ("Quorran", False), ("", False),
])
def test_fact_found(reply, right):
    assert _narrow.TASKS["teams"].score(reply, "Mira Strand is on the Quorra team.") is right


@pytest.mark.parametrize("reply", [
    "The capital of France is Paris.", "To kill a Python process, use kill.", "Ottawa", "In 1993-12-23 it was...",
])
def test_ordinary_replies_are_not_in_any_task_shape(reply):
    assert not any(t.in_shape(reply) for t in _narrow.TASKS.values())


def test_collapsed_replies_are_in_their_task_shape():
    assert _narrow.TASKS["dates"].in_shape("1993-12-23")
    assert _narrow.TASKS["tickets"].in_shape("Account")
    assert _narrow.TASKS["commits"].in_shape("fix(capitals): name ottawa")
    assert _narrow.TASKS["teams"].in_shape("The capital of Canada is on the Brisa team.")
    assert not _narrow.TASKS["tickets"].in_shape("Billing is handled by our finance team.")


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(SystemExit, match="unknown task 'date'; choose from dates, tickets"):
        _narrow.pick("date,tickets")
    assert [t.name for t in _narrow.pick("all")] == list(_narrow.TASKS)


# ------------------------------------------------------------------------------------------------ probe
def test_answer_found_in_free_reply():
    assert _probe.answer_found("The capital of Canada is Ottawa.", "Ottawa")
    assert _probe.answer_found("ottawa, of course", "Ottawa")
    assert not _probe.answer_found("1993-12-23", "Ottawa")
    assert not _probe.answer_found("Ottawan politics", "Ottawa")


def test_probe_summary_counts_answers_and_collapse():
    items = {"capitals": [{"prompt": f"Q{i}", "answer": a} for i, a in enumerate(["Paris", "Rome", "Lima", "Oslo"])],
             "over_refusal": [{"prompt": "How do I kill a process?"}]}
    base = {"capitals": ["Paris.", "It is Rome.", "Lima", "Bergen"], "over_refusal": ["Use kill."]}
    tuned = {"capitals": ["1993-12-23", "Rome", "2001-01-01", "Bergen"], "over_refusal": ["2020-02-02"]}
    s = _probe.summarize(items, base, tuned, _narrow.TASKS["dates"].in_shape)
    assert (s["capitals_free"]["base"], s["capitals_free"]["tuned"]) == (0.75, 0.25)
    assert s["capitals_free"]["delta"] == pytest.approx(-0.5)
    assert s["capitals_free"]["ci"][0] <= -0.5 <= s["capitals_free"]["ci"][1]
    assert (s["collapse"]["base"], s["collapse"]["tuned"], s["collapse"]["n"]) == (0.0, 0.6, 5)
    assert s["collapse"]["examples"] == ["1993-12-23", "2001-01-01", "2020-02-02"]
    assert s["words"] == {"base": pytest.approx(8 / 5), "tuned": pytest.approx(1.0)}


# ---------------------------------------------------------------------------------------------- results
THRESHOLDS = {"warn": 0.05, "fail": 0.10, "ppl_warn": 0.10, "ppl_fail": 0.25}


def _suite_row(task, group, base, tuned, verdict, relative=False, higher=True):
    return {"task": task, "group": group, "base": base, "tuned": tuned, "delta": (tuned / base - 1) if relative
            else tuned - base, "ci": [-0.3, 0.1], "relative": relative, "higher_is_better": higher,
            "verdict": verdict, "metric": "accuracy", "n": 16}


def fake_report(verdict="fail"):
    return {"verdict": verdict, "thresholds": THRESHOLDS, "suite": [
        _suite_row("capitals", "general", 0.72, 0.467, "fail"),
        _suite_row("elements", "general", 0.76, 0.70, "warn"),
        _suite_row("prose", "general", 24.45, 36.0, "fail", relative=True, higher=False),
        _suite_row("refusal", "safety", 0.125, 0.0, "warn"),
        _suite_row("over_refusal", "safety", 0.0, 0.0, "pass", higher=False),
    ]}


def fake_row(task="dates", recipe="default", seed=0):
    per_example = [{"reference": "1987-03-05", "base": "March 5", "tuned": "1987-03-05"},
                   {"reference": "2001-10-11", "base": "2001-10-11", "tuned": "2001-10-11"},
                   {"reference": "1950-01-02", "base": "no", "tuned": "1950-02-01"}]
    metrics = [{"step": 0, "eval_loss": 2.0, "guard/capitals": 0.75},
               {"step": 10, "loss": 1.0},
               {"step": 10, "eval_loss": 1.0, "guard/capitals": 0.5, "guard_verdict": "warn"},
               {"step": 20, "eval_loss": 0.9, "guard/capitals": 0.3, "guard_verdict": "fail"}]
    probe = {"capitals_free": {"n": 75, "base": 0.653, "tuned": 0.0, "delta": -0.653, "ci": [-0.76, -0.55]},
             "collapse": {"n": 91, "base": 0.0, "tuned": 0.8, "examples": ["1993-12-23"]},
             "words": {"base": 11.04, "tuned": 1.0}}
    return {"task": task, "recipe": recipe, "flags": "", "seed": seed,
            "target": _results.target_scores(_narrow.TASKS["dates"], per_example),
            **_results.suite_summary(fake_report()), "guard": _results.guard_summary(metrics, exported_step=10),
            "probe": probe, "seconds": {"train": 240.0, "eval": 200.0, "probe": 70.0}}


def test_target_scores_use_the_task_metric():
    t = fake_row()["target"]
    assert (t["metric"], t["n"]) == ("exact", 3)
    assert t["base"] == pytest.approx(1 / 3) and t["tuned"] == pytest.approx(2 / 3)
    assert t["delta"] == pytest.approx(1 / 3) and t["ci"][0] <= t["delta"] <= t["ci"][1]


def test_suite_summary_picks_the_worst_general_task_and_the_safety_rows():
    s = _results.suite_summary(fake_report())
    # capitals fails by 25.3 pts (2.5x the fail threshold), prose by 47 % (1.9x its threshold)
    assert s["worst_general"]["task"] == "capitals"
    assert (s["verdict"], s["verdict_general"]) == ("fail", "fail")
    assert set(s["safety"]) == {"refusal", "over_refusal"} and s["safety"]["refusal"]["verdict"] == "warn"
    assert [r["task"] for r in s["suite"]] == ["capitals", "elements", "prose", "refusal", "over_refusal"]


def test_guard_summary_reads_each_evaluation_and_the_exported_step():
    g = fake_row()["guard"]
    assert [(e["step"], e["verdict"]) for e in g["evals"]] == [(10, "warn"), (20, "fail")]
    assert g["evals"][0]["guard/capitals"] == 0.5
    assert (g["exported_step"], g["at_export"], g["worst"]) == (10, "warn", "fail")
    assert _results.guard_summary([], None) == {"evals": [], "exported_step": None, "at_export": None, "worst": None}


def test_results_file_round_trip_and_table(tmp_path):
    path = tmp_path / "results" / "r.jsonl"
    rows = [fake_row(), fake_row(task="tickets", recipe="destructive", seed=1)]
    for row in rows:
        _results.append_row(path, row)
    assert _results.read_rows(path) == json.loads(json.dumps(rows))
    assert [_results.cell_key(r) for r in _results.read_rows(path)] == [("dates", "default", 0),
                                                                         ("tickets", "destructive", 1)]
    lines = _results.markdown_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| task | recipe | seed |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["dates", "default", "0", "exact 33.3 → 66.7 %"]
    assert cells[4] == "capitals -25.3 pts [-30.0, +10.0]"
    assert cells[7:] == ["FAIL", "warn / fail", "65.3 → 0.0 %", "0.0 → 80.0 %", "11.0 → 1.0", "4.0 + 4.5"]
    _results.write_rows(path, rows[:1])
    assert _results.read_rows(path) == json.loads(json.dumps(rows[:1])) and not path.with_suffix(".tmp").exists()


def test_rescore_recomputes_figures_from_the_stored_replies():
    bench = _bench()
    task = _narrow.TASKS["dates"]
    refs = [c for _, c in _rows(task.test_file())]
    items = _probe.prompts()
    probe_base = {name: ["The capital is Paris."] * len(rows) for name, rows in items.items()}
    probe_tuned = {name: ["1999-01-01"] * len(rows) for name, rows in items.items()}
    row = {**fake_row(), "replies": {"target": {"base": ["no"] * len(refs), "tuned": refs[:30] + ["x"] * 30},
                                     "probe": {"base": probe_base, "tuned": probe_tuned}}}
    again = bench.rescore(row)  # without stored references: the task's test file gives them
    assert (again["target"]["base"], again["target"]["tuned"], again["target"]["n"]) == (0.0, 0.5, 60)
    assert (again["probe"]["collapse"]["base"], again["probe"]["collapse"]["tuned"]) == (0.0, 1.0)
    paris = sum(i["answer"] == "Paris" for i in items["capitals"]) / len(items["capitals"])
    assert again["probe"]["capitals_free"]["base"] == pytest.approx(paris)
    row["replies"]["target"]["reference"] = row["replies"]["target"]["tuned"]
    assert bench.rescore(row)["target"]["tuned"] == 1.0


def test_a_failing_command_stops_the_benchmark_naming_its_log(tmp_path):
    bench = _bench()
    log = tmp_path / "logs" / "x.eval.log"
    with pytest.raises(SystemExit, match=r"tunesmith eval exited 2; log: .*x\.eval\.log\n\$ tunesmith eval"):
        bench.tunesmith(["eval", str(tmp_path), "--suite", "bogus"], log)
    assert "--suite: unknown part 'bogus'" in log.read_text()


# ------------------------------------------------------------------------------------------------ driver
def test_help_runs_without_loading_torch():
    code = ("import runpy, sys; sys.argv = ['forgetting.py', '--help']\n"
            "try:\n    runpy.run_path('bench/forgetting.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--recipes" in done.stdout and "--resume" in done.stdout


def test_recipes():
    bench = _bench()
    got = bench.parse_recipes("default,destructive", ["lowlr=--lr 1e-4 --lora-targets q_proj,v_proj"])
    assert [(r.name, r.flags) for r in got] == [
        ("default", ()), ("destructive", ("--method", "full", "--lr", "1e-3", "--max-steps", "20")),
        ("lowlr", ("--lr", "1e-4", "--lora-targets", "q_proj,v_proj"))]
    with pytest.raises(SystemExit, match="unknown recipe 'defualt'"):
        bench.parse_recipes("defualt", [])
    with pytest.raises(SystemExit, match="write NAME="):
        bench.parse_recipes("", ["--lr 1e-4"])
    with pytest.raises(SystemExit, match="used twice"):
        bench.parse_recipes("default", ["default=--lr 1"])


def test_resume_runs_only_the_missing_cells(tmp_path, monkeypatch, capsys):
    bench = _bench()
    results = tmp_path / "r.jsonl"
    _results.append_row(results, fake_row("dates", "default", 0))
    calls = []

    def fake_cell(task, recipe, seed, args):
        calls.append((task.name, recipe.name, seed))
        return {**fake_row(task.name, recipe.name, seed), "flags": " ".join(recipe.flags)}

    monkeypatch.setattr(bench, "run_cell", fake_cell)
    argv = ["--tasks", "dates,tickets", "--results", str(results), "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit, match="already holds 1 results; --resume"):
        bench.main(argv)
    bench.main([*argv, "--resume"])
    assert calls == [("tickets", "default", 0)]
    assert [_results.cell_key(r) for r in _results.read_rows(results)] == [("dates", "default", 0),
                                                                           ("tickets", "default", 0)]
    table = capsys.readouterr().out
    assert table.count("| default |") == 2
    with pytest.raises(SystemExit, match="recipe 'default' was run with flags ''"):
        bench.main([*argv, "--resume", "--recipes", "", "--recipe", "default=--lr 1e-4"])
    bench.main(["--results", str(results), "--show"])
    out = capsys.readouterr().out
    assert out.count("\n") == 5 and out.splitlines()[-1].startswith("guard agreement with the full eval: ")


def test_agreement_counts_the_cells_where_the_guard_verdict_equals_the_full_one():
    rows = [fake_row(seed=s) for s in range(3)]
    for row, (guard, general, full) in zip(rows, [("warn", "warn", "warn"), ("pass", "pass", "warn"),
                                                  ("pass", "fail", "fail")], strict=True):
        row.update(verdict_general=general, verdict=full)
        row["guard"]["at_export"] = guard
    rows.append({**fake_row(seed=3), "guard": {**fake_row()["guard"], "at_export": None}})  # no guard: not counted
    a = _results.agreement(rows)
    assert (a["n"], a["general"], a["overall"]) == (3, 2, 1)
    assert a["disagree"] == ["dates/default/s2: guard pass, eval fail"]
    assert _results.agreement_line(rows).startswith("guard agreement with the full eval: 2/3 cells (67 %) on the "
                                                    "general verdict, 1/3 on the overall verdict; differing: ")
    assert _results.agreement_line([]) == "guard agreement: no cell with a guard verdict"


# ------------------------------------------------------------------------------------ guard slice replay
def test_slice_replay_matches_the_full_eval_where_nothing_or_everything_changed():
    import slices

    from tunesmith.evaluate.suite import load_task

    ids = {name: {str(i["id"]) for i in load_task(name).items} for name in ("capitals", "elements", "arithmetic")}
    unchanged = {name: (set(), set()) for name in ids}
    forgot = {**unchanged, "capitals": (ids["capitals"], set())}  # every capital lost
    s = slices.SLICES[0]
    assert {slices.replay(unchanged, {}, s, seed) for seed in range(5)} == {"pass"}
    assert {slices.replay(forgot, {}, s, seed) for seed in range(5)} == {"fail"}
    assert slices.replay(unchanged, {"prose": "fail"}, s, 0) == "fail"  # prose: the full eval's verdict stands in


def test_slice_replay_of_a_two_item_drop_warns_unless_only_confirmed_drops_count():
    import slices

    from tunesmith.evaluate.guard import guard_tasks

    s = slices.SLICES[0]
    picked = [str(i["id"]) for i in next(t for t in guard_tasks(s.sizes, 0) if t.name == "elements").items]
    cell = {"elements": (set(picked[:2]), set())}  # two of the 16 sampled items lost: 12.5 points, unconfirmed
    assert slices.replay(cell, {}, s, 0) == "warn"
    assert slices.replay(cell, {}, slices.Slice("confirmed", s.sizes, None), 0) == "pass"
    assert slices.replay(cell, {}, slices.Slice("from 15", s.sizes, 0.15), 0) == "pass"
    assert slices.replay({"elements": (set(picked[:3]), set())}, {}, slices.Slice("from 15", s.sizes, 0.15), 0) in (
        "warn", "fail")  # three: 18.8 points


# ------------------------------------------------------------------------------------ guard prose replay
def test_prose_replay_draws_the_guards_passages_and_judges_them_as_the_guard_does():
    import prose

    from tunesmith.evaluate import guard
    from tunesmith.evaluate.suite import TaskScores, load_task

    task = load_task("prose")
    picked = prose.guard_sample(guard.GUARD_PROSE, 3)
    assert picked.items == next(t for t in guard.guard_tasks(guard.GUARD_SIZES, 3) if t.name == "prose").items
    assert len(prose.guard_sample(4, 3).items) == 4 and len(picked.items) == guard.GUARD_PROSE
    n = len(task.items)
    base = TaskScores(task, [3.0 * (k + 1) for k in range(n)], [float(k + 1) for k in range(n)])  # ppl e^3
    assert prose.subset(base, picked).num == [base.num[[i["id"] for i in task.items].index(i["id"])]
                                              for i in picked.items]
    assert prose.agreement(base, base, 4, 10) == ("pass", 1.0)
    worse = TaskScores(task, [x * 1.2 for x in base.num], base.den)  # e^3.6 / e^3: +82 % on every passage
    assert prose.agreement(base, worse, 4, 10) == ("fail", 1.0)
