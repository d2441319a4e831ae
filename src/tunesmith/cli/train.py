"""`tunesmith train` and `tunesmith merge`."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

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
                 + (f", {data['replay_examples']} replay" if data.get("replay_examples") else "")
                 + (f", packed into {data['train_rows']} rows" if "train_rows" in data else "")),
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
    from tunesmith.api import fine_tune

    quiet_libraries()
    view = TrainView()
    with view.showing_stages():
        result = fine_tune(config, resume=resume, force=force, hooks=view.hooks())
    view.finish(result)


class TrainView:
    """What `tunesmith train` shows: the settings, a progress bar with a steady ETA, one line per evaluation,
    the one-time steps (model conversion, base scoring) as they happen, and an ending that says what the
    guard found and what to run next. Under torchrun only rank 0 shows anything."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = int(os.environ.get("RANK", "0")) != 0
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 TextColumn("eta {task.fields[eta]}"), console=console, transient=False,
                                 disable=self.quiet)
        self.task: Any = None
        self.eta = Eta()

    def hooks(self) -> Any:
        from tunesmith.train.loop import Hooks

        return Hooks(self.on_start, self.on_step, self.on_eval)

    @contextlib.contextmanager
    def showing_stages(self) -> Iterator[None]:
        """tunesmith's INFO log lines (one-time steps) printed above the bar, dimmed; the bar closed after."""
        handler = _StageHandler(self)
        logger = logging.getLogger("tunesmith")
        previous = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)
            if self.task is not None:  # a run that failed before it started has no bar (and prints no blank line)
                self.progress.stop()

    def say(self, text: str, style: str = "") -> None:
        if not self.quiet:
            (self.progress.console if self.task is not None else console).print(
                f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False, soft_wrap=True)

    def on_start(self, cfg: Any, manifest: dict[str, Any]) -> None:
        if self.quiet:
            return
        _settings_table(cfg, manifest)
        self.progress.start()
        self.task = self.progress.add_task("train", total=manifest["schedule"]["total_steps"], info="", eta="-")
        self.eta.start(manifest["schedule"]["total_steps"])

    def on_step(self, r: dict[str, Any]) -> None:
        if self.task is None:
            return
        info = f"loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, completed=r["step"], info=info, eta=self.eta.step(r))
        if not console.is_terminal:  # logs and CI: a plain line per step instead of a live bar
            self.say(f"step {r['step']}: {info}")

    def on_eval(self, r: dict[str, Any]) -> None:
        self.eta.evaluated()
        extra = "".join(f"  {k.removeprefix('guard/')} {v:.3f}" for k, v in r.items()
                        if k.startswith("guard/") and isinstance(v, float))
        flagged = ", ".join(f"{k} {v}" for k, v in (r.get("guard_flags") or {}).items())
        verdict = f"  guard {r['guard_verdict']}" + (f" ({flagged})" if flagged else "") if "guard_verdict" in r else ""
        loss = f" eval loss {r['eval_loss']:.4f}" if "eval_loss" in r else ""
        label = "base model" if r["step"] == 0 else f"step {r['step']}"
        self.say(f"{label}:{loss}{extra}{verdict}" + (f"  (stop: {r['early_stop']})" if "early_stop" in r else ""))

    def finish(self, result: Any) -> None:
        if self.quiet:
            return
        best = f", best eval loss {result.state.best_eval_loss:.4f}" if result.state.best_eval_loss else ""
        console.print(f"[green]done[/]: {result.state.step} steps{best}; exported step {result.exported_step} "
                      f"to {result.output} ({result.output_bytes / 1e6:.1f} MB)", highlight=False)
        for line in result_lines(result):
            console.print(line, highlight=False, soft_wrap=True)


def result_lines(result: Any) -> list[str]:
    """The guard's verdict on the exported step, in words, and the commands to run next."""
    from tunesmith.api import guard_summary
    from tunesmith.track import view_commands

    run = result.run_dir
    lines = [escape(guard_summary(result))]
    warning = ((result.manifest or {}).get("result") or {}).get("export_warning")
    if warning:
        lines.append(f"[yellow]warning:[/] {escape(warning)}")
    if (result.guard.get("exported") or {}).get("guard_verdict") in ("warn", "fail"):
        lines += remedy_lines(run)
    lines.append(f"next: tunesmith eval {run}    [dim]# the full comparison with the base: verdict and "
                 "report.html[/]")
    lines.append(f"      tunesmith chat {run}    [dim]# talk to it[/]")
    for command in view_commands(run, (result.manifest or {}).get("tracking") or {}):
        lines.append(f"      {escape(command)}    [dim]# the tracked curves[/]")
    return lines


def remedy_lines(run: Any) -> list[str]:
    """The remedy to try, as a command line to copy (`tunesmith.api.remedy`)."""
    from tunesmith.api import remedy

    r = remedy(run)
    return [f"try:  {escape(r.command)}    [dim]# {escape(r.why)}[/]"]


class Eta:
    """Time left from training-step time (the logged `elapsed`, which excludes evaluation) plus the expected
    cost of the evaluations still to come: steady where rich's recent-speed estimate swings with each eval."""

    def __init__(self) -> None:
        self.total = 0
        self.evals, self.eval_seconds, self.last = 0, 0.0, 0.0
        self.step_seconds: float | None = None

    def start(self, total: int) -> None:
        self.total, self.last = total, time.perf_counter()

    def step(self, r: dict[str, Any]) -> str:
        per_step = r["elapsed"] / max(r["step"], 1)
        self.step_seconds = per_step if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * per_step
        self.last = time.perf_counter()
        left = (self.total - r["step"]) * self.step_seconds
        left += self.eval_seconds / max(r["step"], 1) * (self.total - r["step"])  # evaluations still to come
        return _clock(left)

    def evaluated(self) -> None:
        if self.step_seconds is not None:  # the base model's scoring (step 0) is a one-time cost
            self.evals += 1
            self.eval_seconds += time.perf_counter() - self.last
        self.last = time.perf_counter()


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _StageHandler(logging.Handler):
    def __init__(self, view: TrainView) -> None:
        super().__init__(logging.INFO)
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        warning = record.levelno >= logging.WARNING
        self.view.say(("warning: " if warning else "· ") + record.getMessage(), "yellow" if warning else "dim")


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
        console.print(f"the adapter trained on a {r.trained_on} base: the merged full-precision model picks the same "
                      f"next token as the adapter on that base at {r.quantized_agreement:.0%} of the probe positions "
                      f"(largest logit difference {r.quantized_diff:.2f})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train")(train_command)
    app.command("merge")(merge_command)
