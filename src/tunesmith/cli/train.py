"""`tunesmith train` and `tunesmith merge`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from tunesmith.cli.common import console, quiet_libraries
from tunesmith.cli.options import RUN, config_file_option, config_options, keyword, settings_from, with_signature


def _settings_table(config: Any, manifest: dict[str, Any]) -> None:
    from rich.table import Table

    data = manifest["data"]
    sched = manifest["schedule"]
    t = Table(title="Training settings", show_header=False, box=None, padding=(0, 2))
    rows = [
        ("model", f"{config.model} ({manifest['base_model']['kind']})"),
        ("method", config.method + (f"  r={config.lora.r} alpha={config.lora.alpha} "
                                    f"dropout={config.lora.dropout} targets={config.lora.target_modules}"
                                    if config.method == "lora" else "")),
        ("data", f"{data['train_examples']} train / {data['eval_examples']} eval examples, "
                 f"{data['train_targets']} supervised tokens"
                 + (f", {data['replay_examples']} replay" if data.get("replay_examples") else "")),
        ("lr", f"{config.lr:g} {config.schedule}, warmup {config.warmup:g}"),
        ("steps", f"{sched['total_steps']} ({sched['steps_per_epoch']}/epoch, epochs {config.epochs:g})"),
        ("batch", f"{config.batch_size} x accum {config.grad_accum}, max_length {config.max_length}"),
        ("eval / save", f"every {config.eval_every} / {config.save_every} steps"),
        ("out", config.out),
    ]
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t)


def train_command(data: str | None = None, *, config_file: Path | None = None, resume: str | None = None,
                  force: bool = False, **settings: Any) -> None:
    """Fine-tune a model (LoRA or full) on a dataset; writes a self-describing run folder."""
    from tunesmith.api import load_train_config

    config = load_train_config(config_file, resume=resume, data=data, **settings_from(settings))
    _run_training(config, resume=bool(resume), force=force)


with_signature(train_command, [
    inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str | None,
                      default=typer.Argument(None, help="Training data (JSON, JSONL or CSV). Omit with --resume RUN.")),
    config_file_option(),
    keyword("resume", str | None, typer.Option(None, "--resume", help="Continue a run folder from its last "
                                               "checkpoint (with more --max-steps/--epochs if you like).",
                                               rich_help_panel=RUN)),
    keyword("force", bool, typer.Option(False, "--force", help="Replace an existing run folder.", rich_help_panel=RUN)),
    *config_options(),
])


def _run_training(config: Any, *, resume: bool, force: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from tunesmith.api import fine_tune
    from tunesmith.train.loop import Hooks

    quiet_libraries()
    progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=console, transient=False)
    task: dict[str, Any] = {}

    def on_start(cfg: Any, manifest: dict[str, Any]) -> None:
        _settings_table(cfg, manifest)
        progress.start()
        task["id"] = progress.add_task("train", total=manifest["schedule"]["total_steps"], info="")

    def on_step(r: dict[str, Any]) -> None:
        info = f"loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['tokens_per_s']:.0f} tok/s"
        progress.update(task["id"], completed=r["step"], info=info)
        if not console.is_terminal:  # logs and CI: a plain line per step instead of a live bar
            console.print(f"step {r['step']}: {info}", highlight=False)

    def on_eval(r: dict[str, Any]) -> None:
        extra = "".join(f"  {k.removeprefix('guard/')} {v:.3f}" for k, v in r.items()
                        if k.startswith("guard/") and isinstance(v, float))
        verdict = f"  guard {r['guard_verdict']}" if "guard_verdict" in r else ""
        loss = f" eval loss {r['eval_loss']:.4f}" if "eval_loss" in r else ""
        label = "base model" if r["step"] == 0 else f"step {r['step']}"
        progress.console.print(f"{label}:{loss}{extra}{verdict}"
                               + (f"  (stop: {r['early_stop']})" if "early_stop" in r else ""), highlight=False)

    try:
        result = fine_tune(config, resume=resume, force=force, hooks=Hooks(on_start, on_step, on_eval))
    finally:
        if "id" in task:  # a run that failed before it started has no bar to close (and prints no blank line)
            progress.stop()
    size = result.output_bytes / 1e6
    best = f", best eval loss {result.state.best_eval_loss:.4f}" if result.state.best_eval_loss else ""
    console.print(f"[green]done[/]: {result.state.step} steps{best}; exported step {result.exported_step} "
                  f"to {result.output} ({size:.1f} MB)")


def merge_command(
    target: str = typer.Argument(..., help="Run folder or adapter folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged model."),
    adapter: str = typer.Option(None, help="Adapter folder (when TARGET is a base model)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier merge in --out (never another folder)."),
) -> None:
    """Merge a LoRA adapter into its base model and save a full model folder."""
    from tunesmith.api import merge_adapter

    quiet_libraries()
    r = merge_adapter(target, out, adapter=adapter, force=force)
    console.print(f"merged into {r.out} ({r.bytes / 1e6:.1f} MB), on the full-precision base {r.base}; "
                  f"max |logit difference| adapter vs merged on probes: {r.max_abs_diff:.2e}", highlight=False)
    if r.quantized_diff is not None:
        console.print(f"the adapter trained on a {r.trained_on} base; the merged full-precision model differs from "
                      f"what it saw in training by up to {r.quantized_diff:.3f} in the logits on the probes",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train")(train_command)
    app.command("merge")(merge_command)
