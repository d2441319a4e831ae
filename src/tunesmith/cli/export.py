"""`tunesmith export`: a run as files other tools load (GGUF for llama.cpp and Ollama)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import console, console_err, quiet_libraries
from tunesmith.errors import ConfigError


def export_command(
    target: str = typer.Argument(..., metavar="RUN_DIR|MODEL", help="A run folder, an adapter folder or a model."),
    format: str = typer.Option("gguf", "--format", help="Output format (gguf)."),
    quant: str = typer.Option("f16", "--quant", help="f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 or q4_k_m."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: ./NAME-gguf)."),
    lora_gguf: bool = typer.Option(False, "--lora-gguf", help="Also write the base model and the LoRA adapter as "
                                   "separate GGUF files (for llama-server --lora, Ollama ADAPTER)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter folder (when TARGET is a model)."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt for the agreement check (repeatable; "
                                     "default: three built-in prompts)."),
    check_tokens: int = typer.Option(32, "--check-tokens", min=1, help="Greedy tokens compared per prompt."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = torch's default)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export in --out."),
) -> None:
    """Write the run as a merged GGUF file plus an Ollama Modelfile, and check it answers like the run."""
    from tunesmith.api import export_gguf

    if format != "gguf":
        raise ConfigError(f"--format '{format}': the only export format is gguf")
    quiet_libraries()
    if threads:
        import torch

        torch.set_num_threads(threads)
    kwargs = {"prompts": prompt} if prompt else {}
    r = export_gguf(target, out, quant=quant, lora_gguf=lora_gguf, adapter=adapter, check_tokens=check_tokens,
                    force=force, **kwargs)
    types = ", ".join(f"{n} {t}" for t, n in sorted(r.tensor_types.items(), key=lambda kv: -kv[1]))
    console.print(f"wrote {r.gguf} ({r.bytes / 1e6:.1f} MB; tensors: {types})", highlight=False)
    if r.adapter_gguf is not None and r.base_gguf is not None:
        console.print(f"wrote {r.base_gguf} + {r.adapter_gguf} (llama-server -m BASE --lora ADAPTER; "
                      f"Ollama: Modelfile.lora)", highlight=False)
    note = "" if r.template_in_modelfile else " (no TEMPLATE: Ollama uses the GGUF's chat template)"
    console.print(f"wrote {r.modelfile}{note}: ollama create NAME -f {r.modelfile}", highlight=False)
    for check in r.agreements:
        console.print(f"agreement with the run, {check.summary()}", highlight=False)
    if not any(c.reader.startswith("llama.cpp") for c in r.agreements):
        console_err.print("[dim]llama-cpp-python is not installed: checked the file's weights in torch only[/]")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("export")(export_command)
