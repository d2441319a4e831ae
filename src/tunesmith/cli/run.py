"""`tunesmith run`: the main job, from a dataset to a checked model in one command.

Five stages, each the same API call its own command makes: check the data (stop on invalid data or a
'problems' verdict), the advice in one paragraph, the plan (adjusted to what fits, or stop), training with
the forgetting guard, and the full evaluation against the base with its report. It ends with a card: what
improved, what was lost, where the output is, and what to run next. Exit codes as `eval`: 0 pass or warn,
1 fail (or stopped before training), 2 bad input.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tunesmith.cli.common import console, console_err, quiet_libraries
from tunesmith.cli.options import RUN, config_file_option, config_options, keyword, settings_from, with_signature

EXIT_STOPPED = 1
STAGES = 5


def run_command(data: str, *, quick: bool = False, config_file: Path | None = None, force: bool = False,
                **settings: Any) -> None:
    """Check the data, advise, plan, train with the forgetting guard, evaluate against the base: one command."""
    from tunesmith.api import load_train_config
    from tunesmith.api import quick as quick_config

    config = load_train_config(config_file, data=data, **settings_from(settings))
    if quick:
        config = quick_config(config)
    quiet_libraries()
    dataset = _stage_data(config)
    _stage_advice(dataset)
    config = _stage_plan(config)
    result = _stage_train(config, force)
    report, paths = _stage_eval(result, quick)
    _card(result, report, paths)
    if report.get("verdict") == "fail":
        raise typer.Exit(EXIT_STOPPED)


with_signature(run_command, [
    inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                      default=typer.Argument(..., help="Training data (JSONL, JSON, CSV, Parquet, a folder of "
                                             "documents, ...).")),
    keyword("quick", bool, typer.Option(False, "--quick", help="A short run through every stage (at most 24 "
                                        "steps, 16 target examples): minutes on a CPU.", rich_help_panel=RUN)),
    config_file_option(),
    keyword("force", bool, typer.Option(False, "--force", help="Replace an existing run folder.", rich_help_panel=RUN)),
    *config_options(),
])


def _stage(k: int, title: str) -> None:
    console.rule(f"[bold]{k}/{STAGES} {title}[/]", align="left", style="dim")


def _stage_data(config: Any) -> Any:
    from tunesmith.api import check_data, load_data

    _stage(1, "data")
    dataset = load_data(config.data, config.format, config.columns)  # invalid data: every problem, exit 2
    report = check_data(dataset, model=config.model, max_length=config.max_length)
    v = report.verdict
    console.print(f"{dataset.path}: {report.count} {'documents' if dataset.format == 'text' else 'examples'} "
                  f"({dataset.format}); verdict [bold]{v.level}[/]", highlight=False)
    for line in v.problems:
        console.print(f"  [red]problem[/]  {escape(line)}", highlight=False)
    for line in v.warnings:
        console.print(f"  [yellow]warning[/]  {escape(line)}", highlight=False)
    if v.level == "problems":
        console_err.print(f"stopped: fix the problems above (`tunesmith data check {config.data}` shows where), "
                          f"or train anyway with `tunesmith train {config.data}`", highlight=False)
        raise typer.Exit(EXIT_STOPPED)
    return dataset


def _stage_advice(dataset: Any) -> None:
    from tunesmith.api import advise_from_data

    _stage(2, "advice")
    if dataset.format == "text":
        console.print("documents: continued pre-training teaches the model their wording and facts; pair it with "
                      "retrieval (RAG) when they change (docs/documents.md)", highlight=False)
        return
    advice = advise_from_data(dataset)
    label = {"rag": "RAG", "fine-tune": "fine-tune", "rag+fine-tune": "RAG + fine-tune", "prompting": "prompting"}
    console.print(f"[bold]{label[advice.choice]}[/]", highlight=False)
    for reason in advice.reasons:
        console.print(f"  - {escape(reason)}", highlight=False)
    if advice.choice in ("rag", "prompting"):
        console.print("  [yellow]fine-tuning anyway[/]: `tunesmith advise --data FILE --baseline` compares "
                      "prompting on the same examples", highlight=False)


def _stage_plan(config: Any) -> Any:
    from tunesmith.api import fitted, plan
    from tunesmith.plan import gb

    _stage(3, "plan")
    planned = plan(config, calibrate=False)
    adjusted = fitted(config, planned)
    where = "RAM" if planned.device == "cpu" else "GPU memory"
    need = f"needs {gb(planned.required_memory_bytes)}"
    if planned.available_memory_bytes is not None:
        need += f" of {gb(planned.available_memory_bytes)} {where}"
    epoch = planned.seconds_per_epoch
    time = "" if not epoch else f", about {epoch / 60:.0f} min per epoch" if epoch >= 90 else f", about {epoch:.0f} s per epoch"
    console.print(f"{planned.method}, batch {planned.batch_size} x {planned.seq_len} tokens: {need}{time}",
                  highlight=False)
    if adjusted is None:
        for line in planned.recommendation.reasons:
            console_err.print(f"  {escape(line)}", highlight=False)
        console_err.print("stopped: no configuration fits this machine", highlight=False)
        raise typer.Exit(EXIT_STOPPED)
    if adjusted != config:
        console.print(f"  [yellow]does not fit as asked[/]: training as {escape(planned.options[0]['label'])}, "
                      f"batch {adjusted.batch_size} x {adjusted.grad_accum} accumulation", highlight=False)
    return adjusted


def _stage_train(config: Any, force: bool) -> Any:
    from tunesmith.api import fine_tune
    from tunesmith.cli.train import TrainView

    _stage(4, "train")
    view = TrainView()
    with view.showing_stages():
        result = fine_tune(config, force=force, hooks=view.hooks())
    console.print(f"done: {result.state.step} steps; exported step {result.exported_step} to {result.output} "
                  f"({result.output_bytes / 1e6:.1f} MB)", highlight=False)
    return result


def _stage_eval(result: Any, quick: bool) -> tuple[dict[str, Any], dict[str, Path]]:
    from tunesmith.api import QUICK_EVAL_EXAMPLES, EvalOptions, evaluate

    _stage(5, "evaluate against the base")
    config = result.config  # a model trained with notes (--rag) answers with notes as well
    opts = EvalOptions(target=str(result.run_dir), limit=QUICK_EVAL_EXAMPLES if quick else 64,
                       device=config.device, rag=config.rag or bool(config.rag_docs), docs=config.rag_docs)

    def progress(message: str) -> None:
        console.print(f"[dim]· scoring {escape(message)}[/]", highlight=False)

    return evaluate(opts, progress)


def _card(result: Any, report: dict[str, Any], paths: dict[str, Path]) -> None:
    from tunesmith.api import guard_summary
    from tunesmith.evaluate.report import fmt_delta

    run = result.run_dir
    console.rule(f"[bold]{run.name}[/]", align="left")
    noted = bool(report.get("target_task_rag"))  # trained with notes (--rag): it is used, and judged, with them
    target = (report.get("target_task_rag") if noted else report.get("target_task")) or {}
    learned = [f"{m['name'].replace('_', ' ')} {_value(m, 'base')} -> {_value(m, 'tuned')}"
               + (f" {fmt_delta(m['delta'], m['ci'], m['relative'])}" if m["name"] != "eval_loss" and m.get("ci")
                  else "") for m in target.get("metrics", []) if m["name"] != "perplexity"]
    console.print("[bold]learned[/]  " + ("with notes: " if noted else "")
                  + escape("; ".join(learned) or "no target examples scored"), highlight=False)
    verdict = report.get("verdict") or "-"
    lost = [f"{r['task']} {r['verdict']}" for r in report.get("suite", []) if r["verdict"] in ("warn", "fail")]
    console.print(f"[bold]kept[/]     full evaluation verdict [bold]{verdict.upper()}[/]"
                  + (f" ({escape(', '.join(lost))})" if lost else ": general skills and safety held"),
                  highlight=False)
    console.print(f"         {escape(guard_summary(result))}", highlight=False, soft_wrap=True)
    if verdict in ("warn", "fail"):
        from tunesmith.cli.train import remedy_lines

        for line in remedy_lines(run):
            console.print(f"         {line}", highlight=False, soft_wrap=True)
    console.print(f"[bold]output[/]   {result.output} ({result.output_bytes / 1e6:.1f} MB); report {paths['html']}",
                  highlight=False)
    name = run.name
    for k, cmd in enumerate((f"tunesmith chat {run}", f"tunesmith serve --adapter {name}={run}",
                             f"tunesmith merge {run} --out models/{name}",
                             f"tunesmith export {run} --format gguf --out models/{name}-gguf")):
        console.print(("[bold]next[/]     " if k == 0 else "         ") + escape(cmd), highlight=False)


def _value(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    return f"{v:.3f}" if m["name"] in ("eval_loss", "perplexity") else f"{100 * v:.1f} %"


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
