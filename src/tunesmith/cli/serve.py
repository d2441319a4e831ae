"""`tunesmith generate`, `tunesmith chat` and `tunesmith serve`: use a base model, a run or an adapter."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from tunesmith.cli.common import console_err, quiet_libraries
from tunesmith.errors import ConfigError, TunesmithError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunesmith.serve.engine import Engine
    from tunesmith.serve.generate import SamplingParams

TARGET_HELP = "A model (built-in name, folder, hub id), a run folder, or an adapter folder."
ADAPTER_HELP = "A LoRA adapter folder to put on top of the model."
QUANTIZE_HELP = "Base weights: auto (as the run trained: 4-bit for a QLoRA run), none, 4bit or 8bit."


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(generate)
    app.command()(chat)
    app.command()(serve)


def generate(
    target: str = typer.Argument(..., metavar="MODEL|RUN_DIR", help=TARGET_HELP),
    prompt: str = typer.Argument(..., help="The user message ('-' reads it from stdin)."),
    adapter: Path | None = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic), the default everywhere, "
                                     "server requests included."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int | None = typer.Option(None, "--seed", help="Makes sampling reproducible."),
    stop: list[str] = typer.Option([], "--stop", help="Stop before this text (repeatable)."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    raw: bool = typer.Option(False, "--raw", help="Feed the prompt as plain text, without the chat template."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    quantize: str = typer.Option("auto", "--quantize", help=QUANTIZE_HELP),
) -> None:
    """Generate one reply and stream it to stdout (stats go to stderr)."""
    from tunesmith.api import notes_for, prompt_ids

    text = sys.stdin.read() if prompt == "-" else prompt
    model, tokenizer = _load(target, adapter, device, quantize)
    ids = prompt_ids(tokenizer, text, system=system, raw=raw, notes=None if adapter else notes_for(target))
    _check_window(model, len(ids), max_tokens)
    _stream_reply(model, tokenizer, ids, _params(max_tokens, temperature, top_p, seed, stop))


def chat(
    target: str = typer.Argument(..., metavar="MODEL|RUN_DIR", help=TARGET_HELP),
    adapter: Path | None = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Most tokens per reply."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic), the default everywhere, "
                                     "server requests included."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int | None = typer.Option(None, "--seed", help="Makes sampling reproducible."),
    system: str | None = typer.Option(None, "--system", help="A system message kept for the whole chat."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    quantize: str = typer.Option("auto", "--quantize", help=QUANTIZE_HELP),
) -> None:
    """Chat in the terminal: history is kept; /reset forgets it, /exit (or Ctrl-D) quits.

    Reads stdin line by line, so a conversation can be piped in.
    """
    from tunesmith.api import Conversation, notes_for

    model, tokenizer = _load(target, adapter, device, quantize)
    window = _context(model) - max_tokens
    if window < 1:
        raise ConfigError(f"--max-tokens {max_tokens} leaves no room for a prompt in a {_context(model)}-token window")
    conversation = Conversation(tokenizer, system=system, max_prompt_tokens=window,
                                notes=None if adapter else notes_for(target))
    params = _params(max_tokens, temperature, top_p, seed, [])
    interactive = sys.stdin.isatty()
    if interactive:
        console_err.print("[dim]/reset forgets the conversation, /exit quits[/]")
    while (line := _read_line(">>> " if interactive else "")) is not None:
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            conversation.reset()
            console_err.print("[dim](conversation reset)[/]")
            continue
        if not line:
            continue
        try:
            ids, dropped = conversation.prompt(line)
        except TunesmithError as e:
            console_err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            continue
        if dropped:
            console_err.print(f"[dim](forgot the {dropped} oldest exchange(s) to fit the context window)[/]")
        reply = _stream_reply(model, tokenizer, ids, params, stats=False)
        conversation.add(line, reply)


def serve(
    model: str | None = typer.Option(None, "--model", help="Base model to serve, or a run folder (default: the base the "
                              "first --adapter was trained on, else smollm2-135m)", show_default=False),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH: serve an adapter or LoRA run folder "
                                      "under NAME (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback by default."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TUNESMITH_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' for inference."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="TUNESMITH_ADMIN_KEY",
                                         help="Enable adapter management (POST/DELETE /v1/adapters) for clients "
                                         "that send this key; off without it."),
    adapter_root: Path | None = typer.Option(None, "--adapter-root", help="The only folder adapters may be "
                                             "loaded from at run time (needed with --admin-key)."),
    max_tokens_limit: int = typer.Option(512, "--max-tokens-limit", min=1, help="Largest max_tokens a request "
                                         "may ask for (and chat's default)."),
    max_prompt_tokens: int = typer.Option(4096, "--max-prompt-tokens", min=1, help="Longest prompt accepted."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", min=1, help="Largest request body."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Requests for one model decoded together."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Requests in flight before 503."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0 = torch's default). "
                                "On a busy machine 1 can be much faster than more."),
    engine: str = typer.Option("auto", "--engine", help="auto (fast on a CPU when the model allows), fast, or "
                               "transformers."),
    int8: bool = typer.Option(False, "--int8", help="Decode with int8 base weights: about 3x faster on a CPU; "
                              "greedy replies part from float32's after some tokens (fast engine only; "
                              "docs/serve.md)."),
    compile_step: bool = typer.Option(False, "--compile", help="Compile the decode step of a lone request on "
                                      "the base model with torch.compile (fast engine; needs a C++ compiler; "
                                      "tens of seconds at start-up, then faster single-stream replies)."),
) -> None:
    """Serve the model and its adapters over an OpenAI-compatible HTTP API."""
    import torch

    from tunesmith.api import ServeConfig
    from tunesmith.api import serve as run_server

    if threads:
        torch.set_num_threads(threads)
    config = ServeConfig(host=host, port=port, api_key=api_key or None, admin_key=admin_key or None,
                         adapter_root=adapter_root, max_body_bytes=max_body_bytes)
    if engine not in ("auto", "fast", "transformers"):
        raise ConfigError(f"--engine '{engine}': choose auto, fast or transformers")
    limits_args = {"max_tokens": max_tokens_limit, "max_prompt_tokens": max_prompt_tokens,
                   "max_batch": max_batch, "max_queue": max_queue}
    served_engine = _engine(model, [_adapter_arg(a) for a in adapter], device, limits_args, engine=engine,
                            int8=int8, compile=compile_step)
    if not config.loopback and not config.api_key:
        console_err.print(f"[bold yellow]warning:[/] listening on {escape(host)} without --api-key: anyone who "
                          "can reach this port can use the model", soft_wrap=True)
    served = ", ".join(served_engine.model_ids())
    console_err.print(f"serving {served} on http://{host}:{port}/v1 (engine: {served_engine.engine_name})",
                      highlight=False, markup=False, soft_wrap=True)
    run_server(served_engine, config)


def _engine(model: str | None, adapters: list[tuple[str, str]], device: str, limits_args: dict[str, int],
            *, engine: str = "auto", int8: bool = False, compile: bool = False) -> Engine:
    from tunesmith.api import Limits, build_engine

    quiet_libraries()
    return build_engine(model, adapters, device=device, limits=Limits(**limits_args), engine=engine, int8=int8,
                        compile=compile)


def _adapter_arg(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--adapter '{value}': expected NAME=PATH, e.g. --adapter support=runs/support")
    return name, path


def _load(target: str, adapter: Path | None, device: str, quantize: str) -> tuple[PreTrainedModel,
                                                                                 PreTrainedTokenizerBase]:
    from tunesmith.api import load_for_chat

    quiet_libraries()
    return load_for_chat(target, adapter, device=device, quantize=quantize)


def _params(max_tokens: int, temperature: float, top_p: float, seed: int | None, stop: list[str]) -> SamplingParams:
    from tunesmith.api import SamplingParams

    if top_p <= 0:
        raise ConfigError("--top-p must be above 0 (1 keeps every token)")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop))


def _context(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


def _check_window(model: PreTrainedModel, prompt_tokens: int, max_tokens: int) -> None:
    if prompt_tokens + max_tokens > _context(model):
        raise ConfigError(f"prompt ({prompt_tokens} tokens) + --max-tokens {max_tokens} exceeds the model's "
                          f"{_context(model)}-token window; shorten the prompt or lower --max-tokens")


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def _stream_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int],
                  params: SamplingParams, *, stats: bool = True) -> str:
    """Print the reply as it is generated; return its text."""
    from tunesmith.api import stream_reply

    start, parts, last = time.perf_counter(), [], None
    for step in stream_reply(model, tokenizer, ids, params):
        sys.stdout.write(step.text)
        sys.stdout.flush()
        parts.append(step.text)
        last = step
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats and last is not None:
        seconds = time.perf_counter() - start
        console_err.print(f"[dim]{last.completion_tokens} tokens in {seconds:.2f}s "
                          f"({last.completion_tokens / max(seconds, 1e-9):.1f} tok/s), "
                          f"finish: {last.finish_reason}[/]", highlight=False)
    return "".join(parts)

