"""`tunesmith train` and `tunesmith merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunesmith.cli.common import console, quiet_libraries

HP = "Hyperparameters"
LORA = "LoRA"
RUN = "Run"


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


def train_command(
    data: str = typer.Argument(None, help="Training data (JSON, JSONL or CSV). Omit with --resume RUN."),
    eval_data: str = typer.Option(None, "--eval", help="Eval data; default: hold out --eval-fraction.", rich_help_panel=RUN),
    model: str = typer.Option(None, "--model", "-m", help="Built-in name, local folder or hub id [default: smollm2-135m].", rich_help_panel=RUN),
    method: str = typer.Option(None, help="lora | full [default: lora].", rich_help_panel=RUN),
    out: str = typer.Option(None, "--out", "-o", help="Run folder [default: runs/latest].", rich_help_panel=RUN),
    config_file: Path = typer.Option(None, "--config", "-c", help="YAML settings; flags override it.", rich_help_panel=RUN),
    resume: str = typer.Option(None, "--resume", help="Continue a run folder from its last checkpoint.", rich_help_panel=RUN),
    force: bool = typer.Option(False, "--force", help="Replace an existing run folder.", rich_help_panel=RUN),
    fmt: str = typer.Option(None, "--format", help="auto | prompt_completion | chat | alpaca.", rich_help_panel=RUN),
    lr: float = typer.Option(None, help="Peak learning rate [default: 2e-4 LoRA, 2e-5 full].", rich_help_panel=HP),
    epochs: float = typer.Option(None, help="Passes over the data [default: 3 under 1000 examples, else 2].", rich_help_panel=HP),
    max_steps: int = typer.Option(None, help="Stop after N optimizer steps.", rich_help_panel=HP),
    batch_size: int = typer.Option(None, help="Examples per micro-batch [default: 8].", rich_help_panel=HP),
    grad_accum: int = typer.Option(None, help="Micro-batches per optimizer step [default: 1].", rich_help_panel=HP),
    max_length: int = typer.Option(None, help="Max tokens per example [default: 1024].", rich_help_panel=HP),
    warmup: float = typer.Option(None, help="Share of steps warming up [default: 0.05].", rich_help_panel=HP),
    schedule: str = typer.Option(None, help="cosine | linear | constant.", rich_help_panel=HP),
    weight_decay: float = typer.Option(None, help="AdamW weight decay [default: 0].", rich_help_panel=HP),
    grad_clip: float = typer.Option(None, help="Max gradient norm, 0 = off [default: 1.0].", rich_help_panel=HP),
    seed: int = typer.Option(None, help="Random seed [default: 0].", rich_help_panel=HP),
    eval_every: int = typer.Option(None, help="Steps between evals [default: ~10 per run].", rich_help_panel=HP),
    save_every: int = typer.Option(None, help="Steps between checkpoints [default: eval_every].", rich_help_panel=HP),
    patience: int = typer.Option(None, help="Early stop after N evals without improvement.", rich_help_panel=HP),
    lora_r: int = typer.Option(None, "--lora-r", help="LoRA rank [default: 16].", rich_help_panel=LORA),
    lora_alpha: int = typer.Option(None, "--lora-alpha", help="LoRA alpha [default: 32].", rich_help_panel=LORA),
    lora_dropout: float = typer.Option(None, "--lora-dropout", help="LoRA dropout [default: 0].", rich_help_panel=LORA),
    lora_targets: str = typer.Option(None, "--lora-targets", help="all-linear, or names: q_proj,v_proj.", rich_help_panel=LORA),
    rslora: bool = typer.Option(None, "--rslora/--no-rslora", help="Rank-stabilised LoRA scaling.", rich_help_panel=LORA),
    dora: bool = typer.Option(None, "--dora/--no-dora", help="Weight-decomposed LoRA (DoRA).", rich_help_panel=LORA),
    guard: bool = typer.Option(None, "--guard/--no-guard", help="Score a general-skills slice at each eval [default: on].", rich_help_panel=RUN),
    guard_stop: bool = typer.Option(None, "--guard-stop/--no-guard-stop", help="Stop when the guard says fail.", rich_help_panel=RUN),
    replay: float = typer.Option(None, help="Share of general replay examples mixed in [default: 0].", rich_help_panel=RUN),
    device: str = typer.Option(None, help="auto | cpu | cuda [default: auto].", rich_help_panel=RUN),
    threads: int = typer.Option(None, help="CPU threads [default: PyTorch's, or OMP_NUM_THREADS].", rich_help_panel=RUN),
    allow_pickle: bool = typer.Option(None, "--allow-pickle", help="Allow non-safetensors weights (can run code).", rich_help_panel=RUN),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code", help="Run code shipped with a hub model.", rich_help_panel=RUN),
) -> None:
    """Fine-tune a model (LoRA or full) on a dataset; writes a self-describing run folder."""
    from tunesmith.config import load_config
    from tunesmith.train.run import resume_config

    targets = lora_targets.split(",") if lora_targets and lora_targets != "all-linear" else lora_targets
    overrides = dict(
        data=data, eval_data=eval_data, model=model, method=method, out=out, format=fmt, lr=lr,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, warmup=warmup, schedule=schedule, weight_decay=weight_decay,
        grad_clip=grad_clip, seed=seed, eval_every=eval_every, save_every=save_every, patience=patience,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_target_modules=targets,
        lora_use_rslora=rslora, lora_use_dora=dora, guard=guard, guard_stop=guard_stop, replay=replay,
        device=device, threads=threads, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )
    if resume:
        config = resume_config(resume, **{k: v for k, v in overrides.items() if k in ("device", "threads")})
    else:
        config = load_config(config_file, **overrides)
    _run_training(config, resume=bool(resume), force=force)


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
        result = fine_tune(config, resume=resume, force=force, hooks=Hooks(on_step, on_eval), on_start=on_start)
    finally:
        progress.stop()
    size = result.output_bytes / 1e6
    best = f", best eval loss {result.state.best_eval_loss:.4f}" if result.state.best_eval_loss else ""
    console.print(f"[green]done[/]: {result.state.step} steps{best}; exported step {result.exported_step} "
                  f"to {result.output} ({size:.1f} MB)")


def merge_command(
    target: str = typer.Argument(..., help="Run folder or adapter folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged model."),
    adapter: str = typer.Option(None, help="Adapter folder (when TARGET is a base model)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
) -> None:
    """Merge a LoRA adapter into its base model and save a full model folder."""
    from tunesmith.api import merge_adapter

    quiet_libraries()
    r = merge_adapter(target, out, adapter=adapter, force=force)
    console.print(f"merged into {r.out} ({r.bytes / 1e6:.1f} MB); max |logit difference| adapter vs merged "
                  f"on probes: {r.max_abs_diff:.2e}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train")(train_command)
    app.command("merge")(merge_command)
