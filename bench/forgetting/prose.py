"""How often would the training guard's prose check agree with the full `tunesmith eval`, for N passages?

`bench/forgetting/slices.py` replays the guard's rate tasks from the flips an eval report keeps; prose
(perplexity) it cannot, because the report keeps no per-passage losses. This scores every prose passage of
the suite with the base model and with each benchmark cell's exported model (its run folder must still
exist), judges the whole set as `tunesmith eval` does, and replays the guard's prose verdict for several
passage counts, each drawn with seeds 0..N-1 as `tunesmith.evaluate.guard.guard_tasks` draws them.

Run:  python bench/forgetting/prose.py RESULTS.jsonl [...] [--sizes 4,8,12] [--draws 200] [--base smollm2-135m]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tunesmith.evaluate import guard
from tunesmith.evaluate.suite import Task, TaskScores, load_task, run_task
from tunesmith.evaluate.verdict import Thresholds, compare_task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402


def subset(scores: TaskScores, picked: Task) -> TaskScores:
    """`scores` restricted to the items of `picked` (a sample of the same task)."""
    index = {item["id"]: k for k, item in enumerate(scores.task.items)}
    ks = [index[item["id"]] for item in picked.items]
    return TaskScores(picked, [scores.num[k] for k in ks], [scores.den[k] for k in ks])


def guard_sample(n: int, seed: int) -> Task:
    """The guard's prose passages with `n` of them, drawn with `seed` as the guard draws them."""
    return next(t for t in guard.guard_tasks(guard.GUARD_SIZES, seed, prose=n) if t.name == "prose")


def agreement(base: TaskScores, tuned: TaskScores, n: int, draws: int) -> tuple[str, float]:
    """The full set's verdict, and the share of `draws` guard samples of `n` passages whose verdict equals it."""
    full = compare_task(base, tuned, Thresholds(), 0).verdict
    small = Thresholds(resamples=guard.GUARD_RESAMPLES)
    same = 0
    for seed in range(draws):
        picked = guard_sample(n, seed)
        same += compare_task(subset(base, picked), subset(tuned, picked), small, seed).verdict == full
    return full, same / draws


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    from tunesmith.model.adapters import load_for_inference, resolve_target
    from tunesmith.model.loading import load_model, load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--sizes", default="4,8,12", help="passage counts to replay (default: 4,8,12)")
    p.add_argument("--draws", type=int, default=200, help="samples per cell and size (default: 200)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base", default="smollm2-135m", help="the cells' base model (default: smollm2-135m)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    prose = load_task("prose")
    base = run_task(load_model(args.base).eval(), load_tokenizer(args.base), prose)
    print("| cell | full prose Δ | full verdict | " + " | ".join(f"{n} passages" for n in sizes) + " |")
    print("| :--- | ---: | :--- |" + " ---: |" * len(sizes))
    for path in args.results:
        for row in _results.read_rows(path):
            run = Path(row["run"]["dir"])
            if not run.is_dir():
                print(f"{row['task']}/{row['recipe']}/s{row['seed']}: {run} is gone; skipped", file=sys.stderr)
                continue
            tuned = run_task(*load_for_inference(resolve_target(str(run))), prose)
            rates = [agreement(base, tuned, n, args.draws) for n in sizes]
            print(f"| {row['task']}/{row['recipe']}/s{row['seed']} | {100 * (tuned.value / base.value - 1):+.1f} % | "
                  f"{rates[0][0]} | " + " | ".join(f"{100 * r:.0f} %" for _, r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
