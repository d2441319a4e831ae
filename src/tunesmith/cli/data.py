"""`tunesmith data ...`: validate and report on datasets, write clean train/eval splits."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tunesmith.cli.common import COLUMNS_HELP, DATA_HELP, FORMAT_HELP, console, quiet_libraries
from tunesmith.errors import DataError

if TYPE_CHECKING:
    from rich.table import Table

    from tunesmith.data.formats import Dataset
    from tunesmith.data.quality import Report

app = typer.Typer(help="Check and prepare datasets.", no_args_is_help=True)

MODEL_HELP = "Tokenizer and chat template to measure with: built-in name, local folder or hub id."
SHOWN = 5  # locations listed per finding; the counts cover everything
EXIT_PROBLEMS = 1  # `data check` exit code when the verdict is "problems" (invalid data exits 2)


@app.command("check")
def check(
    file: str = typer.Argument(..., help=f"Dataset: {DATA_HELP}"),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    columns: str = typer.Option(None, "--columns", help=COLUMNS_HELP),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
    max_length: int = typer.Option(1024, "--max-length", min=1, help="Tokens per example before truncation."),
    eval_file: str | None = typer.Option(None, "--eval", help="An eval set to check for leakage from FILE."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Validate a dataset and report on its quality. Exit 2: invalid data; 1: the verdict is 'problems'."""
    from tunesmith.api import check_data

    data = _load(file, fmt, columns, as_json)
    eval_data = _load(eval_file, fmt, columns, as_json) if eval_file is not None else None
    quiet_libraries()
    report = check_data(data, model=model, max_length=max_length, eval_data=eval_data)
    if as_json:
        typer.echo(json.dumps({"valid": True, "model": model, **report.to_dict()}, indent=2, ensure_ascii=False))
    else:
        _print_report(report, model)
    if report.verdict.level == "problems":
        raise typer.Exit(EXIT_PROBLEMS)


@app.command("prepare")
def prepare(
    file: str = typer.Argument(..., help=f"Dataset: {DATA_HELP}"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, eval.jsonl and report.json."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share held out for eval (0 = none)."),
    seed: int = typer.Option(0, "--seed", help="Decides the split; same seed, same files."),
    dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="Drop exact and near duplicates."),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    columns: str = typer.Option(None, "--columns", help=COLUMNS_HELP),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
    max_length: int = typer.Option(1024, "--max-length", min=1, help="Tokens per example, for the report."),
    force: bool = typer.Option(False, "--force", help="Overwrite the outputs in a non-empty --out folder."),
) -> None:
    """Write a deduplicated, seeded train/eval split (chat JSONL; text JSONL for documents) and report.json."""
    from tunesmith.api import PrepareConfig, prepare_data

    data = _load(file, fmt, columns, as_json=False)
    quiet_libraries()
    config = PrepareConfig(eval_fraction=eval_fraction, seed=seed, dedup=dedup, max_length=max_length, force=force)
    result = prepare_data(data, out, config, model=model)
    exact = sum(1 for r in result.removed if r.reason == "exact duplicate")
    console.print(f"[bold]{data.path}[/]: {len(data.examples)} examples ({data.format})", highlight=False)
    console.print(f"  removed   {exact} exact and {len(result.removed) - exact} near duplicates"
                  + ("" if dedup else " (--no-dedup)"), highlight=False)
    for path, rows in ((out / "train.jsonl", result.train), (out / "eval.jsonl", result.eval)):
        if rows:
            console.print(f"  wrote     {path}  ({len(rows)} examples)", highlight=False)
    if eval_fraction > 0 and not result.eval:
        console.print("  [yellow]no eval split[/]: every example shares its prompt group", highlight=False)
    console.print(f"  wrote     {out / 'report.json'}", highlight=False)
    _print_verdict(result.report["quality"]["verdict"])


def _load(file: str, fmt: str, columns: str | None, as_json: bool) -> Dataset:
    """Load and validate; with --json, invalid data is reported as JSON on stdout (exit 2 either way)."""
    from tunesmith.api import load_data

    try:
        return load_data(file, fmt, columns)
    except DataError as e:
        if not as_json:
            raise
        typer.echo(json.dumps({"valid": False, "path": str(file), "problems": e.problems}, indent=2,
                              ensure_ascii=False))
        raise typer.Exit(e.exit_code) from None


def _print_report(r: Report, model: str) -> None:
    from rich.table import Table

    text = r.format == "text"  # documents: no turns, replies or conflicts
    noun = "documents" if text else "examples"
    t = Table(title=f"{r.path}  ·  {r.format}  ·  {r.count} {noun}", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if text:
        t.add_row("documents", f"{r.count}")
    else:
        t.add_row("examples", _mark(r.count >= r.advised_min, f"{r.count} (advised: a few hundred, {r.advised_min}+)"))
        t.add_row("multi-turn / with system", f"{r.multi_turn} / {r.with_system}")
    if r.ignored_columns:
        t.add_row("ignored columns", ", ".join(r.ignored_columns))
    t.add_row("exact duplicates", _groups(r.exact_duplicates))
    t.add_row("near duplicates", _groups(r.near_duplicates))
    if not text:
        t.add_row("conflicting completions", _groups([c["sources"] for c in r.conflicts]))
    if r.tools is not None:
        _tool_rows(t, r.tools)
    if r.tokens is not None:
        _token_rows(t, r, model)
    t.add_row("likely secrets", _hits(r.secrets, bad=True))
    t.add_row("likely personal data", _hits(r.personal_data, bad=False))
    if r.leakage is not None:
        _leak_rows(t, r)
    console.print(t)
    _print_verdict(asdict(r.verdict))


def _token_rows(t: Table, r: Report, model: str) -> None:
    s = r.tokens
    assert s is not None
    t.add_row(f"tokens ({model})", f"min {s.min} · p50 {s.p50} · p95 {s.p95} · max {s.max} · mean {s.mean:g}")
    if r.format == "text":
        t.add_row("trained tokens", f"all {s.total}, packed into rows of {s.max_length}")
        t.add_row(f"longer than {s.max_length}", f"{s.split} documents, trained in pieces (nothing is cut off)")
        return
    t.add_row("supervised tokens", f"{s.supervised} of {s.total}")
    lost = f"{s.truncated} examples, {s.supervised_lost} supervised tokens lost"
    if s.emptied:
        lost += f"; {len(s.emptied)} lose all: {_where(s.emptied)}"
    t.add_row(f"truncated at {s.max_length}", _mark(not s.truncated, lost))
    fails = len(s.roundtrip_failures)
    t.add_row("template round-trip", _mark(not fails, f"{r.count - fails}/{r.count} ok"
                                           + (f"; fails: {_where(s.roundtrip_failures)}" if fails else ""), bad=True))


def _tool_rows(t: Table, s: Any) -> None:
    per_fn = " · ".join(f"{name} {n}" for name, n in s.calls_per_function.items())
    t.add_row("tool calls", _mark(not s.never_called, f"{s.calls} in {s.rows_with_calls} examples: {per_fn}"))
    t.add_row("  no call / parallel", _mark(s.rows_without_call > 0, f"{s.rows_without_call} examples without a call"
                                            f" · {s.parallel_calls} parallel"))
    cov = " · ".join(f"{name} {len(c['used'])}/{len(c['declared'])}" for name, c in s.coverage.items())
    t.add_row("  arguments set / declared", cov)


def _leak_rows(t: Table, r: Report) -> None:
    lk = r.leakage
    assert lk is not None
    exact = [f"{x['eval']} = {x['train']}" for x in lk.exact]
    near = [f"{x['eval']} ~ {x['train']} ({x['similarity']:.2f})" for x in lk.near]
    t.add_row(f"eval leakage ({lk.eval_count} in {lk.eval_path})", "")
    t.add_row("  same prompt", _mark(not exact, f"{len(exact)}" + (f": {_where(exact)}" if exact else ""), bad=True))
    t.add_row("  near duplicate", _mark(not near, f"{len(near)}" + (f": {_where(near)}" if near else "")))


def _print_verdict(v: dict[str, Any]) -> None:
    color = {"ok": "green", "warnings": "yellow", "problems": "red"}[v["level"]]
    console.print(f"[bold {color}]verdict: {v['level']}[/]", highlight=False)
    for reason in v["problems"]:
        console.print(f"  [red]problem[/]  {reason}", highlight=False)
    for reason in v["warnings"]:
        console.print(f"  [yellow]warning[/]  {reason}", highlight=False)


def _mark(ok: bool, text: str, bad: bool = False) -> str:
    from rich.markup import escape

    return f"[green]✓[/] {escape(text)}" if ok else f"[{'red' if bad else 'yellow'}]![/] {escape(text)}"


def _groups(groups: list[list[str]]) -> str:
    shown = "; ".join(", ".join(g) for g in groups[:SHOWN]) + (" …" if len(groups) > SHOWN else "")
    count = f"{len(groups)} group{'' if len(groups) == 1 else 's'}"
    return _mark(not groups, count + (f": {shown}" if groups else ""))


def _hits(hits: list[Any], bad: bool) -> str:
    shown = [f"{h.source} {h.field} {h.name} {h.masked}" for h in hits]
    return _mark(not hits, f"{len(hits)}" + (f": {_where(shown)}" if hits else ""), bad=bad)


def _where(items: list[str]) -> str:
    return "; ".join(items[:SHOWN]) + (f" … and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
