"""`tunesmith plan` (what a fine-tune will cost) and `tunesmith advise` (whether to fine-tune at all)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from tunesmith.cli.common import COLUMNS_HELP, DATA_HELP, FORMAT_HELP, console, quiet_libraries
from tunesmith.cli.options import RUN, config_file_option, config_options, keyword, settings_from, with_signature
from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    from tunesmith.advise import Advice, Answers, Evidence
    from tunesmith.plan import Plan

DEFAULT_MODEL = "smollm2-135m"
EXIT_DOES_NOT_FIT = 1  # `plan`: not even the smallest configuration fits the memory available
PARTS = {  # memory parts, in the order of the table, with what each holds
    "framework": "Python, torch, transformers",
    "weights": "base model",
    "lora_weights": "adapters (fp32)",
    "gradients": "one per trainable parameter",
    "optimizer": "AdamW: 2 x fp32 per trainable",
    "activations": "saved for backward",
    "lora_activations": "saved by the adapters",
    "lm_head": "logits, 256 rows at a time",
    "autocast_copies": "bf16 copies of fp32 weights",
    "dequant": "one layer dequantized",
    "fsdp_gathered": "layers gathered by FSDP",
    "allocator": "malloc overhead",
}


def register(app: typer.Typer) -> None:
    """Add `plan` and `advise` to the root app."""
    app.command("plan")(plan_command)
    app.command("advise")(advise_command)


def plan_command(*, config_file: Path | None = None, data: str | None = None, gpu_memory: float | None = None,
                 gpus: int = 1, calibrate: bool = True, as_json: bool = False, **settings: Any) -> None:
    """What a fine-tune will cost: memory by part, output size, tokens, time; and the configurations that fit."""
    from tunesmith.api import load_train_config, plan

    quiet_libraries()
    config = load_train_config(config_file, data=data, **settings_from(settings))
    result = plan(config, gpu_memory_gb=gpu_memory, world=gpus, calibrate=calibrate)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_plan(result)
    if result.recommendation.fits is False:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


with_signature(plan_command, [
    config_file_option(),
    keyword("data", str | None, typer.Option(None, "--data", help=f"Dataset whose tokens to count: {DATA_HELP}",
                                             rich_help_panel=RUN)),
    keyword("gpu_memory", float | None, typer.Option(None, "--gpu-memory", help="Memory of one GPU in GB (GiB) to "
                                                     "plan for, with --device cuda.", rich_help_panel=RUN)),
    keyword("gpus", int, typer.Option(1, "--gpus", min=1, help="Processes under torchrun the run will use.",
                                      rich_help_panel=RUN)),
    keyword("calibrate", bool, typer.Option(True, "--calibrate/--no-calibrate", help="Time a few real training "
                                            "steps when the weights are here.", rich_help_panel=RUN)),
    keyword("as_json", bool, typer.Option(False, "--json", help="Print the plan as JSON instead of tables.",
                                          rich_help_panel=RUN)),
    *config_options(skip=("data", "out", "eval_data", "keep_checkpoints", "patience", "eval_every", "save_every",
                          "guard", "guard_stop", "seed", "warmup", "schedule", "weight_decay", "grad_clip",
                          "eval_fraction")),
])


def _print_plan(p: Plan) -> None:
    from rich.table import Table

    from tunesmith.plan import gb

    what = f"LoRA r={p.lora_r} on {len(p.target_modules)} layer types" if p.method == "lora" else "full fine-tuning"
    mode = ", ".join(m for m in (f"{p.quantize} base" if p.quantize != "none" else "",
                                 "gradient checkpointing" if p.gradient_checkpointing else "",
                                 f"{p.world} ranks" if p.world > 1 else "") if m)
    t = Table(title=f"Plan: {p.model}, {what}{', ' + mode if mode else ''}, batch {p.batch_size} x {p.seq_len} "
              f"tokens, {p.device} ({p.precision})", show_header=False, box=None, padding=(0, 2), title_justify="left")
    share = p.trainable_parameters / p.parameters
    t.add_row("[bold]parameters[/]", f"{p.parameters:,}", f"trainable {p.trainable_parameters:,} ({share:.2%})")
    for part, about in PARTS.items():
        if p.memory.get(part):
            about += f" ({p.allocator})" if part == "allocator" else ""
            t.add_row(f"  {part.replace('_', ' ')}", gb(p.memory[part]), about)
    measure = "peak RSS" if p.device == "cpu" else "max_memory_allocated"
    t.add_row("[bold]peak memory[/]", f"[bold]{gb(p.peak_memory_bytes)}[/]", f"comparable to {measure}"
              + (" per rank" if p.world > 1 else ""))
    if p.required_memory_bytes != p.peak_memory_bytes:
        t.add_row("  with CUDA context", gb(p.required_memory_bytes), "what must fit")
    if p.available_memory_bytes is not None:
        t.add_row("  available", gb(p.available_memory_bytes), "free RAM" if p.device == "cpu" else "GPU memory")
    kind = "adapter" if p.method == "lora" else "model"
    t.add_row("[bold]output[/]", gb(p.output_bytes), f"{kind} on disk")
    t.add_row("[bold]run folder[/]", gb(p.disk_bytes), f"at most {p.disk_bytes // p.checkpoint_bytes} checkpoints "
              f"of {gb(p.checkpoint_bytes)} (trained weights + optimizer)")
    if p.data is not None:
        d = p.data
        t.add_row("[bold]data[/]", f"{d.tokens:,} tokens", f"{d.examples:,} examples, {d.targets:,} supervised, "
                  f"longest {d.longest}, {d.truncated} truncated")
    t.add_row("[bold]speed[/]", f"{p.tokens_per_second:,.0f} tokens/s" if p.tokens_per_second else "-",
              {"calibrated": "measured over real training steps", "matmul": "from FLOPs and this device's "
               "matmul rate", "assumed": "from FLOPs and an assumed GPU"}[p.speed_source])
    if p.seconds_per_epoch is not None:
        t.add_row("[bold]time per epoch[/]", _duration(p.seconds_per_epoch), f"{p.data_tokens:,} tokens")
    console.print(t)
    if p.options:
        _print_options(p)
    r = p.recommendation
    verdict = {True: "[green]fits[/]", False: "[red]does not fit[/]", None: "fit unknown"}[r.fits]
    console.print(f"\n[bold]Recommendation:[/] {r.method}, batch {r.batch_size} x accumulation {r.grad_accum}, "
                  f"max length {r.max_length}: {verdict}", highlight=False)
    for line in r.reasons + p.notes:
        console.print(f"  - {line}", highlight=False)
    if r.command:
        console.print(f"  [bold]{escape(r.command)}[/]", highlight=False, soft_wrap=True)


def _print_options(p: Plan) -> None:
    from tunesmith.plan import gb

    gpu = "" if p.device == "cpu" else " per GPU"
    console.print(f"\n[bold]Configurations that fit {gb(p.available_memory_bytes or 0)}{gpu}, cheapest first[/]",
                  highlight=False)
    for k, o in enumerate(p.options, start=1):
        gpus = f" on each of {o['gpus']} GPUs" if o["gpus"] > 1 else ""
        console.print(f"  {k}. {escape(o['label'])}: {gb(o['required_bytes'])}{gpus}, {o['relative_time']:.2f}x the "
                      "time per token", highlight=False)
        console.print(f"     {escape(o['command'])}", highlight=False, soft_wrap=True, style="dim")


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def advise_command(
    data: str = typer.Option(None, "--data", help=f"Dataset to inspect: {DATA_HELP}"),
    fmt: str = typer.Option("auto", "--format", "-f", help=FORMAT_HELP),
    columns: str = typer.Option(None, "--columns", help=COLUMNS_HELP),
    knowledge_changes: bool = typer.Option(None, "--knowledge-changes/--no-knowledge-changes",
                                           help="External, proprietary or changing knowledge?", show_default=False),
    style: bool = typer.Option(None, "--style/--no-style", help="A style, tone or persona?", show_default=False),
    new_skill: bool = typer.Option(None, "--new-skill/--no-new-skill",
                                   help="A new, complex skill (e.g. SQL for your schema)?", show_default=False),
    in_input: bool = typer.Option(None, "--in-input/--no-in-input",
                                  help="Is everything needed already in the input?", show_default=False),
    baseline: bool = typer.Option(False, "--baseline",
                                  help="Score the base model with a few-shot prompt on held-out examples."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Base model for --baseline."),
    shots: int = typer.Option(3, "--shots", min=0, help="Training examples shown in the baseline's prompt."),
    limit: int = typer.Option(20, "--limit", min=1, help="Held-out examples the baseline answers."),
    rag: bool = typer.Option(False, "--rag", help="Also score a RAG baseline: the same prompt with notes retrieved "
                             "(BM25) from the training rows. Implies --baseline."),
    docs: str = typer.Option(None, "--docs", help="Retrieve the RAG baseline's notes from this instead: .txt/.md "
                             "documents (a file or folder) or a data file's rows. Implies --rag."),
    eval_data: str = typer.Option(None, "--eval", help="Held-out questions for the baselines (default: 20 % of --data); "
                                  "`facts` in them add fact recall."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    """Fine-tune, RAG or prompting? Asks the walkthrough's questions (or takes flags) and inspects the data."""
    from tunesmith.advise import Answers, decide, evidence_from
    from tunesmith.data.formats import load_examples

    baseline = baseline or rag or docs is not None or eval_data is not None
    if baseline and data is None:
        raise ConfigError("--baseline needs --data FILE: the few-shot prompt and the eval examples come from it")
    examples = load_examples(data, fmt, columns) if data is not None else None  # type: ignore[arg-type]
    if examples and examples[0].text is not None:
        raise ConfigError(f"--data {data}: documents (text) have no prompts and replies to weigh; advise reads "
                          "chat or prompt/completion examples (for knowledge from documents see docs/documents.md)")
    evidence = evidence_from(examples) if examples else None
    answers = Answers(knowledge_changes, style, new_skill, in_input)
    if interactive():
        answers = _ask(answers, evidence)
    results = (None, None)
    if baseline and examples:
        results = _baselines(examples, model, shots, limit, eval_data, docs if docs is not None else rag)
    advice = decide(answers, evidence, *results)
    if as_json:
        typer.echo(json.dumps(advice.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_advice(advice)


def _baselines(examples: list[Any], model: str, shots: int, limit: int, eval_data: str | None,
               rag: str | bool) -> tuple[Any, Any]:
    """The prompt-only baseline and, when `rag` (True: the training rows; a path: --docs), the RAG one."""
    from tunesmith.advise import RagSettings, baselines
    from tunesmith.data.formats import load_examples

    held = load_examples(eval_data) if eval_data is not None else None
    if held is not None and any(not ex.messages for ex in held):
        raise ConfigError(f"--eval {eval_data}: documents have no questions to answer; give prompts with replies")
    settings = None
    if isinstance(rag, str):
        settings = RagSettings(source=rag, docs=load_examples(rag))
    elif rag:
        settings = RagSettings(source="the training rows")
    quiet_libraries()
    return baselines(model, examples, shots=shots, limit=limit, held_out=held, rag=settings)


def interactive() -> bool:
    """Ask the questions left open only when a person is typing (never in scripts or pipes)."""
    return sys.stdin.isatty()


def _ask(answers: Answers, evidence: Evidence | None) -> Answers:
    import dataclasses

    from tunesmith.advise import QUESTIONS

    hints = dataclasses.asdict(evidence.suggests()) if evidence else {}
    given: dict[str, Any] = dataclasses.asdict(answers)
    for name, question in QUESTIONS.items():
        if given[name] is None:
            given[name] = typer.confirm(question, default=bool(hints.get(name)), err=True)
    return type(answers)(**given)


def _print_advice(a: Advice) -> None:
    from rich.table import Table

    label = {"rag": "RAG", "fine-tune": "FINE-TUNE", "rag+fine-tune": "RAG + FINE-TUNE", "prompting": "PROMPTING"}
    method = {"lora": " with LoRA", "full": " (full fine-tuning)", None: ""}[a.method]
    console.print(f"[bold]Recommendation: {label[a.choice]}{method}[/]", highlight=False)
    for line in a.reasons:
        console.print(f"  - {line}", highlight=False, markup=False)
    if a.evidence is not None:
        e = a.evidence
        t = Table(title=f"\nEvidence from the data ({e.examples} examples)", show_header=False, box=None,
                  padding=(0, 2), title_justify="left")
        t.add_row("facts absent from the prompt", f"{e.facts_per_completion:.1f} per completion",
                  ", ".join(e.fact_samples[:3]))
        t.add_row("style markers", f"{e.styled_share:.0%} of completions", ", ".join(e.style_markers[:6]))
        t.add_row("structured output", f"{e.structured_share:.0%} of completions", e.structured or "-")
        t.add_row("completion words in the prompt", f"{e.coverage:.0%}",
                  f"median words: prompt {e.prompt_words:g}, completion {e.completion_words:g}")
        console.print(t)
    for b, name in ((a.baseline, "Prompt-only"), (a.rag_baseline, "RAG")):
        if b is not None:
            notes = f", notes from {b.notes}" if b.notes else ""
            facts = f", fact recall {b.fact_recall:.0%}" if b.fact_recall is not None else ""
            console.print(f"{'' if name == 'RAG' else chr(10)}{name} baseline ({b.model}, {b.shots}-shot{notes}, "
                          f"{b.examples} held-out examples): token F1 {b.token_f1:.2f}, ROUGE-L {b.rouge_l:.2f}, "
                          f"exact match {b.exact_match:.0%}{facts}", highlight=False, markup=False)
