"""Forgetting benchmark: does a narrow fine-tune learn its task *and* keep the model's general skills?

For each task x recipe x seed (a *cell*), with the real CLI, as a user would run it:
1. `tunesmith train TASK/train.jsonl --out RUNS/TASK-RECIPE-sSEED --seed SEED --threads N [recipe flags]`;
2. `tunesmith eval RUN --data TASK/test.jsonl --limit ALL --threads N --json`: the broad suite with its
   verdict, and the greedy replies of base and tuned to every held-out test prompt, which the task's own
   metric scores (exact match, label accuracy, fact found; see bench/forgetting/_narrow.py);
3. a free-generation probe (bench/forgetting/_probe.py): the plain capitals questions answered greedily with
   the answer looked for in the reply, and the share of general prompts answered in the task's own output
   shape (format collapse), base vs tuned;
4. the in-training guard's verdicts, from the run's metrics.jsonl (at each evaluation) and manifest (the
   exported weights', after any interpolation toward the base), and how often they agree with the full eval.
Each finished cell appends one JSON line to --results; the table of every row in that file and the guard's
agreement with the full verdict end the run.
A recipe is a name and extra `tunesmith train` flags: `default` adds none (today's defaults: replay and
interpolation `auto` since issue 12), `plain` turns both off (the defaults just before; the older
results/baseline.jsonl cells came before guard-aware export too), `destructive` is a planted full
fine-tune at lr 1e-3 that must FAIL; `--recipe NAME='FLAGS'` adds one.
A cell's checkpoints are deleted once it is recorded (the exported adapter or model, logs and report stay).

Run:  python bench/forgetting.py [--tasks all] [--recipes default] [--recipe NAME='--flag v'] [--seeds 0]
      [--threads 1] [--results FILE] [--runs DIR] [--resume] [--show] [--rescore]
The tasks' data: python bench/forgetting/make_tasks.py (deterministic; the files are committed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "forgetting"))

import _narrow  # noqa: E402
import _probe  # noqa: E402
import _results  # noqa: E402

RECIPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "destructive": ("--method", "full", "--lr", "1e-3", "--max-steps", "20"),
    # the defaults before issue 12: no replay, no interpolation toward the base (guard-aware export stays)
    "plain": ("--replay", "0", "--interpolate", "off"),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    flags: tuple[str, ...]


def parse_recipes(names: str, extra: list[str]) -> list[Recipe]:
    """`--recipes a,b` (built-in names) plus `--recipe NAME='FLAGS'` definitions, in that order."""
    recipes = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in RECIPES:
            raise SystemExit(f"--recipes: unknown recipe '{name}'; built in: {', '.join(RECIPES)} "
                             "(define others with --recipe NAME='FLAGS')")
        recipes.append(Recipe(name, RECIPES[name]))
    for spec in extra:
        name, sep, flags = spec.partition("=")
        if not sep or not name.strip() or "/" in name:
            raise SystemExit(f"--recipe: write NAME='--flag value ...', got '{spec}'")
        recipes.append(Recipe(name.strip(), tuple(shlex.split(flags))))
    if len({r.name for r in recipes}) != len(recipes):
        raise SystemExit("--recipes/--recipe: a recipe name is used twice")
    return recipes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="all", help=f"comma-separated, from {', '.join(_narrow.TASKS)}; or all")
    p.add_argument("--recipes", default="default", help=f"built-in recipes, comma-separated: {', '.join(RECIPES)}")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME='FLAGS'",
                   help="another recipe: a name and extra `tunesmith train` flags (repeatable)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for train, eval and probe (default: 1)")
    p.add_argument("--results", type=Path, default=HERE / "forgetting" / "results" / "latest.jsonl",
                   help="JSON lines, one per finished cell (default: bench/forgetting/results/latest.jsonl)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "forgetting", help="where the run folders go")
    p.add_argument("--resume", action="store_true", help="keep --results and skip the cells it already has")
    p.add_argument("--show", action="store_true", help="print the table of --results and exit")
    p.add_argument("--rescore", action="store_true",
                   help="recompute the target and probe figures of --results from its stored replies, and exit")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ folder")
    return p.parse_args(argv)


def seeds_of(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected integers separated by commas, got '{text}'") from None


# ------------------------------------------------------------------------------------------------ a cell
def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def tunesmith(args: list[str], log: Path, ok: tuple[int, ...] = (0,), capture: bool = False) -> str:
    """Run `tunesmith ARGS` with this interpreter; its output goes to `log`, stdout returned with `capture`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as err:
        err.write("$ tunesmith " + shlex.join(args) + "\n")
        err.flush()
        done = subprocess.run([sys.executable, "-m", "tunesmith", *args], stdout=subprocess.PIPE if capture else err,
                              stderr=err, text=True, env={**os.environ, "COLUMNS": "160"})
    if done.returncode not in ok:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-8:])
        raise SystemExit(f"tunesmith {args[0]} exited {done.returncode}; log: {log}\n{tail}")
    return done.stdout or ""


def run_cell(task: _narrow.NarrowTask, recipe: Recipe, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, probe one cell; return its result row."""
    run = args.runs / f"{task.name}-{recipe.name}-s{seed}"
    if run.exists():  # an interrupted cell starts over
        shutil.rmtree(run)
    n_test = len(_results.read_rows(task.test_file()))
    train = ["train", _shown(task.train_file()), "--out", _shown(run), "--seed", str(seed),
             "--threads", str(args.threads), *recipe.flags]
    evaluate = ["eval", _shown(run), "--data", _shown(task.test_file()), "--limit", str(n_test),
                "--threads", str(args.threads), "--json"]
    load = os.getloadavg()
    t0 = time.time()
    tunesmith(train, args.runs / "logs" / f"{run.name}.train.log")
    t1 = time.time()
    report = json.loads(tunesmith(evaluate, args.runs / "logs" / f"{run.name}.eval.log", ok=(0, 1), capture=True))
    t2 = time.time()
    probe_base, probe_tuned = probe_replies(run, args.threads)
    t3 = time.time()
    per_example = report["target_task"]["per_example"]
    row = {"task": task.name, "recipe": recipe.name, "flags": shlex.join(recipe.flags), "seed": seed,
           "target": _results.target_scores(task, per_example, seed),
           **_results.suite_summary(report), **run_facts(run),
           "probe": _probe.summarize(_probe.prompts(), probe_base, probe_tuned, task.in_shape, seed),
           "replies": {"target": {k: [r[k] for r in per_example] for k in ("reference", "base", "tuned")},
                       "probe": {"base": probe_base, "tuned": probe_tuned}},
           "seconds": {"train": round(t1 - t0, 1), "eval": round(t2 - t1, 1), "probe": round(t3 - t2, 1)},
           "commands": ["tunesmith " + shlex.join(train), "tunesmith " + shlex.join(evaluate)],
           "machine": machine(load)}
    if not args.keep_checkpoints:
        from tunesmith.runfolder import RunFolder

        shutil.rmtree(RunFolder(run).checkpoints, ignore_errors=True)
    return row


_BASE_REPLIES: dict[str, dict[str, list[str]]] = {}  # base model -> probe replies, shared by the cells


def probe_replies(run: Path, threads: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The free-generation replies of the run's base and tuned models (in this process)."""
    import torch

    from tunesmith.cli.common import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    return _probe.generate_both(str(run), _BASE_REPLIES)


def run_facts(run: Path) -> dict[str, Any]:
    """What training did, from the run folder's manifest and metrics (read through its owner module)."""
    from tunesmith.runfolder import RunFolder

    folder = RunFolder.open(run)
    result = folder.manifest()["result"]
    exported = result["exported_step"]
    scale = (result.get("interpolation") or {}).get("scale", 1.0)
    guard = _results.guard_summary(folder.metrics(), exported)
    if result.get("guard_verdict") is not None:  # the exported weights' own verdict (after interpolation)
        guard["at_export"] = result["guard_verdict"]
    return {"run": {"dir": _shown(run), "steps": result["steps"], "exported_step": exported, "scale": scale,
                    "best_eval_loss": result["best_eval_loss"]},
            "guard": guard}


@functools.cache
def code_commit() -> str:
    """The commit checked out when the benchmark started (the code every cell of this invocation runs)."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    import tunesmith

    commit = code_commit()
    return {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "tunesmith": tunesmith.__version__,
            "commit": commit, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def rescore(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its target and probe figures computed again from its replies (after a scorer change)."""
    task = _narrow.TASKS[row["task"]]
    target, probe = row["replies"]["target"], row["replies"]["probe"]
    references = target.get("reference") or [r["completion"] for r in _results.read_rows(task.test_file())]
    per_example = [{"reference": ref, "base": b, "tuned": t}
                   for ref, b, t in zip(references, target["base"], target["tuned"], strict=True)]
    return {**row, "target": _results.target_scores(task, per_example, row["seed"]),
            "probe": _probe.summarize(_probe.prompts(), probe["base"], probe["tuned"], task.in_shape, row["seed"])}


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rescore:
        _results.write_rows(args.results, [rescore(r) for r in _results.read_rows(args.results)])
    if args.show or args.rescore:
        print(_results.markdown_table(_results.read_rows(args.results)))
        print(_results.agreement_line(_results.read_rows(args.results)))
        return
    code_commit()
    tasks = _narrow.pick(args.tasks)
    recipes = parse_recipes(args.recipes, args.recipe)
    seeds = seeds_of(args.seeds)
    done = _results.read_rows(args.results)
    if done and not args.resume:
        raise SystemExit(f"{args.results}: already holds {len(done)} results; --resume to add the missing cells, "
                         "or choose another --results")
    finished = {_results.cell_key(r): r for r in done}
    for seed in seeds:
        for recipe in recipes:
            for task in tasks:
                old = finished.get((task.name, recipe.name, seed))
                if old is not None:
                    if old["flags"] != shlex.join(recipe.flags):
                        raise SystemExit(f"{args.results}: recipe '{recipe.name}' was run with flags "
                                         f"'{old['flags']}'; give the new flags another name")
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {task.name} x {recipe.name} (seed {seed})", file=sys.stderr)
                row = run_cell(task, recipe, seed, args)
                _results.append_row(args.results, row)
                print("  " + " | ".join(_results.table_row(row)), file=sys.stderr)
    print(_results.markdown_table(_results.read_rows(args.results)))
    print(_results.agreement_line(_results.read_rows(args.results)))


if __name__ == "__main__":
    main()
