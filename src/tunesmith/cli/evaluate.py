"""`tunesmith eval`: the tuned model against its base on the target task and the broad suite, with a verdict.

Exit codes: 0 when the verdict is pass or warn (a warning is printed), 1 when it is fail (so a pipeline
can gate on it), 2 on a user mistake (bad path, bad option, invalid data).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from tunesmith.cli.common import console, console_err, quiet_libraries

if TYPE_CHECKING:
    from rich.table import Table

EXIT_FAIL = 1
VERDICT_STYLE = {"pass": "bold green", "warn": "bold yellow", "fail": "bold red"}
THRESHOLDS_HELP = (
    "NAME=VALUE,... from warn (0.05), fail (0.10): accuracy/refusal drops in points; ppl_warn (0.10), "
    "ppl_fail (0.25): relative perplexity rise; confidence (0.95); resamples (2000)."
)


def register(app: typer.Typer) -> None:
    """Add `eval` to the root app."""

    @app.command("eval")
    def eval_cmd(
        target: str = typer.Argument(..., help="Run folder, adapter folder, or model (built-in name, folder, hub id)."),
        adapter: str | None = typer.Option(None, "--adapter", help="LoRA adapter folder to put on the model."),
        base: str | None = typer.Option(None, "--base", help="Model to compare against (default: the tuned model's base)."),
        data: str | None = typer.Option(None, "--data", help="Target-task examples (default: RUN/data/eval.jsonl)."),
        suite: str = typer.Option("general,safety", "--suite", help="Suite parts: general, safety, task names, or none."),
        keep: list[str] | None = typer.Option(None, "--keep", help="JSONL of items the model must keep right (repeatable)."),
        out: str | None = typer.Option(None, "--out", "-o", help="Report folder (default: RUN/eval, else eval/NAME)."),
        thresholds: str | None = typer.Option(None, "--thresholds", help=THRESHOLDS_HELP),
        limit: int = typer.Option(64, "--limit", min=0, help="Target-task examples scored (the first ones)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        quantize: str = typer.Option("auto", "--quantize", help="Base weights: auto (as the run trained), none, "
                                     "4bit or 8bit."),
        threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (1 is fastest on a busy CPU)."),
        rag: bool = typer.Option(False, "--rag", help="Also answer with notes retrieved (BM25) from the run's training split: scores prompt-only, RAG, fine-tuned and fine-tuned + RAG."),
        docs: str | None = typer.Option(None, "--docs", help="Retrieve from this instead (implies --rag): a data file's rows, or .txt/.md documents (a file or folder)."),
        rag_notes: int = typer.Option(3, "--rag-notes", min=1, help="Notes retrieved per question."),
        rag_tokens: int = typer.Option(384, "--rag-tokens", min=16, help="Most tokens of notes in a prompt."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
        report_to: str | None = typer.Option(None, "--report-to", help="Also log the verdict, deltas and report "
                                             "files to tensorboard, mlflow or both (a run's own trackers)."),
    ) -> None:
        """Compare a fine-tuned model with its base. Exit 0: pass or warn; 1: fail; 2: bad input."""
        from tunesmith.evaluate.runner import EvalOptions, gather_tasks, out_dir, rag_source, run_dir_of
        from tunesmith.evaluate.verdict import parse_thresholds

        opts = EvalOptions(
            target=target, adapter=adapter, base=base, data=data, suite=suite, keep=tuple(keep or ()), out=out,
            thresholds=parse_thresholds(thresholds), limit=limit, device=device, quantize=quantize, rag=rag, docs=docs,
            rag_notes=rag_notes, rag_tokens=rag_tokens,
        )
        gather_tasks(opts)  # a bad --suite or --keep file fails here, before any model loads
        rag_source(opts)  # so does --rag without anything to retrieve from
        trackers = _trackers(report_to)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        report = _run(opts, quiet=as_json)
        from tunesmith.evaluate.report import write

        out = out_dir(opts, report["tuned"]["label"])
        paths = write(report, out, run_dir_of(opts))
        tracked = _track(trackers, report, paths, opts, out)
        if as_json:
            typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            _print(report, paths["html"])
            for line in tracked:
                console.print(f"tracked: {line}", highlight=False, soft_wrap=True)
        if report["verdict"] in ("warn", "fail") and not as_json:
            _print_remedy(opts)
        if report["verdict"] == "fail":
            raise typer.Exit(EXIT_FAIL)


def _print_remedy(opts: Any) -> None:
    """What to try next, as a command line: the run's own settings plus the next remedy."""
    from tunesmith.cli.train import remedy_lines
    from tunesmith.errors import RunError
    from tunesmith.evaluate.runner import run_dir_of

    run = run_dir_of(opts)
    try:
        lines = remedy_lines(run) if run is not None else []
    except RunError:  # a run folder not written by `tunesmith train` (no config to repeat)
        lines = []
    for line in lines or ["try:  tunesmith train DATA --replay 0.5    [dim]# retrain with general examples mixed "
                          "in; a run folder of `tunesmith train` would give the exact command[/]"]:
        console.print(line, highlight=False, soft_wrap=True)


def _trackers(report_to: str | None) -> list[str]:
    """--report-to as tracker names, checked (names, installed extras) before any model loads."""
    from tunesmith.config import TRACKERS, tracker_names
    from tunesmith.errors import ConfigError
    from tunesmith.track import require

    names = tracker_names(report_to or "")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--report-to: unknown tracker {', '.join(unknown)}; choose from {', '.join(TRACKERS)}")
    require(names)
    return names


def _track(names: list[str], report: dict[str, Any], paths: dict[str, Any], opts: Any, out: Any) -> list[str]:
    from pathlib import Path

    from tunesmith.evaluate.runner import run_of
    from tunesmith.track import log_evaluation

    if not names:
        return []
    files = [*paths.values(), *(Path(out) / f for f in report.get("figures", []))]
    return log_evaluation(names, report, files, run=run_of(opts), out=Path(out))


def _run(opts: Any, quiet: bool) -> dict[str, Any]:
    from tunesmith.evaluate.runner import evaluate

    quiet_libraries()

    def progress(message: str) -> None:
        if not quiet:
            console_err.print(f"[dim]scoring {message}[/]", highlight=False)

    return evaluate(opts, progress)


def _suite_table(report: dict[str, Any]) -> Table:
    from rich import box
    from rich.table import Table

    from tunesmith.evaluate.report import suite_table

    header, rows = suite_table(report["suite"])
    keep = [i for i, h in enumerate(header) if h != "metric"]  # the task names say it; keeps 80 columns
    table = Table(title="Broad suite", title_justify="left", box=box.SIMPLE_HEAD)
    for i in keep:
        table.add_column(header[i], justify="right" if header[i] in ("items", "base", "tuned", "value") else "left",
                         no_wrap=True)
    for row in rows:
        cells = [row[i] for i in keep]
        style = VERDICT_STYLE.get(cells[-1])
        table.add_row(*cells[:-1], f"[{style}]{cells[-1]}[/]" if style else cells[-1])
    return table


def _target_table(report: dict[str, Any]) -> Table:
    from rich import box
    from rich.table import Table

    from tunesmith.evaluate.report import target_table

    target = report["target_task"]
    header, rows = target_table(target["metrics"])
    table = Table(title=f"Target task: {target['examples']} examples from {report['data']}", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for h in header:
        table.add_column(h, justify="left" if h == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _forms_table(report: dict[str, Any]) -> Table:
    from rich import box
    from rich.table import Table

    from tunesmith.evaluate.report import forms_table

    header, rows = forms_table(report["forms"])
    r = report["retrieval"]
    table = Table(title=f"With and without retrieval: up to {r['k']} notes from {r['source']}", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for h in header:
        table.add_column(h, justify="left" if h == "form" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _print(report: dict[str, Any], html_path: Any) -> None:
    base = report["base"]
    console.print(f"[bold]tuned[/] {report['tuned']['source']}   [bold]base[/] "
                  f"{base['source'] if base else 'none: scored alone (pass --base to compare)'}", highlight=False)
    if report["suite"]:
        console.print(_suite_table(report))
    if report["target_task"]:
        console.print(_target_table(report))
    if report.get("forms"):
        console.print(_forms_table(report))
    for row in report["suite"]:
        if row["verdict"] in ("warn", "fail"):
            console.print(f"  {row['task']}: [{VERDICT_STYLE[row['verdict']]}]{row['verdict']}[/] ({row['reason']})",
                          highlight=False)
    verdict = report["verdict"]
    if verdict is not None:
        console.print(f"verdict: [{VERDICT_STYLE[verdict]}]{verdict.upper()}[/]", highlight=False)
        if verdict == "warn":
            console_err.print("[yellow]warning:[/] the tuned model got worse on part of the suite; see the report",
                              highlight=False)
    console.print(f"report: {html_path}  ({report['seconds']} s)", highlight=False)
