"""Serving speed of `tunesmith serve` against llama.cpp on the same model, prompts, threads and token budget.

What runs:
- tunesmith: the real server (`python -m tunesmith serve`, a separate process, --engine, --int8 and
  --compile as given), called over HTTP with the official `openai` client;
- llama.cpp: llama-cpp-python in this process on a GGUF file of the same model (skipped when `llama_cpp` is
  not installed), called directly: no HTTP, llama.cpp's best case.

How the comparison is kept fair (and where it is not, in llama.cpp's favour):
- the same prompt token ids on both sides (the model's chat template, rendered once by tunesmith), greedy,
  up to --max-tokens (128) new tokens, stopping at the model's end-of-turn token on both sides;
- the same thread count (--threads) for torch in the server and for llama.cpp;
- the GGUF file: for the built-in model the Q4_1 file its package ships (the issue's reference; its weights
  are exactly tunesmith's, which were converted from it), or --gguf-quant to export one with
  `tunesmith export` at a precision matching tunesmith's mode (f32 for float32, q8_0 for --int8);
- single stream: one request at a time, tokens / wall seconds of the request (prompt included), median of
  --repeats runs, the two engines alternating so both see the same background load;
- N clients (32): all released at once; tunesmith mixes the base model and --adapters random LoRA adapters
  in the batch (adapters only cost tunesmith time); llama-cpp-python answers one request at a time (as its
  own server does), so its latency grows with the queue. Throughput = completion tokens / wall seconds.

With --agreement, each engine's greedy replies to the 9 prompts are also compared with transformers' own
float32 `generate` (the plain path): identical replies, and where they part (characters in common).

Prints both sides' figures, the ratios tunesmith / llama.cpp, and one RESULT line.

    python bench/serve_load.py --threads 1 --repeats 3               # smoke run on a busy machine
    python bench/serve_load.py --threads 2 --int8 --gguf-quant q8_0
    python bench/serve_load.py --threads 2 --int8 --compile           # the fastest single stream
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SINGLE_PROMPT = "Write a story about the sea."
QUESTIONS = [
    "How do I reset my password?", "What is your return policy?", "Where is my order?",
    "Can I change my shipping address?", "Do you ship internationally?", "How do I cancel my subscription?",
    "What payment methods do you accept?", "How long does delivery take?",
]


@dataclass
class Result:
    seconds: float
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Load:
    """What N clients released together saw."""

    results: list[Result]
    wall: float

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.error is None]

    @property
    def throughput(self) -> float:
        return sum(r.completion_tokens for r in self.ok) / self.wall

    def latency(self, q: float) -> float:
        values = sorted(r.seconds for r in self.ok)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server = llama.cpp threads")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="single-stream runs per engine")
    p.add_argument("--engine", default="auto", help="tunesmith serve --engine")
    p.add_argument("--int8", action="store_true", help="tunesmith serve --int8")
    p.add_argument("--compile", action="store_true", help="tunesmith serve --compile")
    p.add_argument("--adapters", type=int, default=2, help="random LoRA adapters mixed into the client batch")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--gguf", type=Path, help="llama.cpp model file (default: the built-in's shipped Q4_1)")
    p.add_argument("--gguf-quant", help="export the model with `tunesmith export --quant Q` for llama.cpp instead")
    p.add_argument("--timeout", type=float, default=900.0, help="per request, seconds")
    p.add_argument("--agreement", action="store_true", help="compare greedy replies with transformers' float32")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from tunesmith.data.tokenize import encode_prompt
    from tunesmith.model.loading import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompt_ids = {q: encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in [SINGLE_PROMPT, *QUESTIONS]}
    eos = {tokenizer.eos_token_id}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        adapters = make_adapters(args.model, Path(tmp), args.adapters)
        llm = load_llama(args, Path(tmp))
        with tunesmith_server(args, adapters) as (url, client):
            models = [args.model, *adapters]
            ask(client, args.model, SINGLE_PROMPT, 8)  # warm-up
            if llm is not None:
                llama_generate(llm, prompt_ids[SINGLE_PROMPT], 8, eos)
            solo_t, solo_l = [], []
            for _ in range(args.repeats):  # alternate, so both see the same background load
                r = ask(client, args.model, SINGLE_PROMPT, args.max_tokens)
                solo_t.append(r.completion_tokens / r.seconds if r.error is None else float("nan"))
                if llm is not None:
                    n, seconds = llama_generate(llm, prompt_ids[SINGLE_PROMPT], args.max_tokens, eos)
                    solo_l.append(n / seconds)
            if args.agreement:
                agreement(args, tokenizer, prompt_ids, eos, llm, client)
            before = health(url)
            load_t = release(args.clients, args.timeout, lambda i: ask(
                client, models[i % len(models)], QUESTIONS[i % len(QUESTIONS)], args.max_tokens))
            after = health(url)
        load_l = None
        if llm is not None:
            lock = threading.Lock()

            def one_by_one(i: int) -> Result:
                start = time.perf_counter()
                with lock:
                    n, _ = llama_generate(llm, prompt_ids[QUESTIONS[i % len(QUESTIONS)]], args.max_tokens, eos)
                return Result(time.perf_counter() - start, n)

            load_l = release(args.clients, args.timeout, one_by_one)
    report(args, solo_t, solo_l, load_t, load_l, after | {"batches": after["batches"] - before.get("batches", 0)})


def agreement(args: argparse.Namespace, tokenizer: Any, prompt_ids: dict[str, list[int]], eos: set[int],
              llm: Any, client: Any) -> None:
    """Greedy replies of both engines against transformers' float32 generate, prompt by prompt."""
    import torch

    from tunesmith.model.loading import load_model

    model = load_model(args.model).eval()
    replies: dict[str, list[str]] = {"tunesmith": [], "llama.cpp": []}
    reference = []
    for question, ids in prompt_ids.items():
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_tokens, do_sample=False,
                                 eos_token_id=sorted(eos), pad_token_id=sorted(eos)[0])
        reference.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
        r = client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": question}],
                                           max_tokens=args.max_tokens, temperature=0)
        replies["tunesmith"].append(r.choices[0].message.content or "")
        if llm is not None:
            llm.reset()
            tokens = []
            for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                if token in eos or len(tokens) >= args.max_tokens:
                    break
                tokens.append(token)
            replies["llama.cpp"].append(tokenizer.decode(tokens, skip_special_tokens=True))
    for name, texts in replies.items():
        if not texts:
            continue
        common = [_common(a, b) for a, b in zip(reference, texts, strict=True)]
        same = sum(a == b for a, b in zip(reference, texts, strict=True))
        lengths = " ".join(str(len(r)) for r in reference)
        print(f"agreement with transformers float32, {name}: {same}/{len(texts)} replies identical; characters in "
              f"common before they part: {' '.join(str(c) for c in common)} (of {lengths})")


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def make_adapters(model: str, folder: Path, count: int) -> dict[str, Path]:
    """`count` LoRA adapters (r 8 on every projection) with small random B: distinct, still fluent replies."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.model.loading import load_model

    out = {}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i in range(count):
        torch.manual_seed(i)
        peft_model = get_peft_model(load_model(model), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.002)
        peft_model.save_pretrained(folder / f"adapter-{i}")
        out[f"adapter-{i}"] = folder / f"adapter-{i}"
    return out


def load_llama(args: argparse.Namespace, tmp: Path) -> Any:
    """llama-cpp-python's Llama on the chosen GGUF, or None (with a note) when it is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama_cpp not importable (pip install llama-cpp-python): tunesmith figures only, no ratios")
        return None
    path = args.gguf
    if args.gguf_quant:
        from tunesmith.export.gguf_export import export_gguf

        path = export_gguf(args.model, tmp / "gguf", quant=args.gguf_quant, check_tokens=1, prompts=["Hi"]).gguf
    elif path is None:
        from tunesmith.model.loading import gguf_file

        path = gguf_file(args.model)
    args.gguf_used = path
    return Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=args.threads,
                 n_threads_batch=args.threads, verbose=False)


def llama_generate(llm: Any, ids: list[int], max_tokens: int, eos: set[int]) -> tuple[int, float]:
    """(tokens generated, seconds) for one greedy reply, prompt evaluation included."""
    start = time.perf_counter()
    llm.reset()
    n = 0
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        n += 1
        if token in eos or n >= max_tokens:
            break
    return n, time.perf_counter() - start


@contextmanager
def tunesmith_server(args: argparse.Namespace, adapters: dict[str, Path]) -> Iterator[tuple[str, Any]]:
    """`python -m tunesmith serve` on a free loopback port; yields (base URL, openai client)."""
    import socket

    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tunesmith", "serve", "--model", args.model, "--port", str(port),
           "--threads", str(args.threads), "--engine", args.engine, *(["--int8"] if args.int8 else []),
           *(["--compile"] if args.compile else []),
           "--max-batch", str(args.max_batch), "--max-tokens-limit", str(max(args.max_tokens, 64)),
           "--max-queue", str(max(256, args.clients))]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                health(url, "/health")
                args.engine_used = health(url).get("engine", "?")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError("server did not start:\n" + log.read().decode()[-3000:]) from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.timeout)
        yield url, client
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def health(url: str, path: str = "/v1/stats") -> dict[str, Any]:
    """The server's counters (batches, largest batch, engine); /health only says it is up."""
    with urllib.request.urlopen(url + path, timeout=5) as r:
        return json.loads(r.read())


def ask(client: Any, model: str, question: str, max_tokens: int) -> Result:
    start = time.perf_counter()
    try:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=max_tokens, temperature=0)
        return Result(time.perf_counter() - start, r.usage.completion_tokens)
    except Exception as e:  # a failure is a result to count, not a crash
        return Result(time.perf_counter() - start, error=f"{type(e).__name__}: {e}")


def release(n: int, timeout: float, call: Callable[[int], Result]) -> Load:
    """Start n client threads at once; latency is counted from the common start."""
    results: list[Result | None] = [None] * n
    barrier = threading.Barrier(n + 1)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(timeout=timeout + 30)
    wall = time.perf_counter() - start
    return Load([r if r is not None else Result(timeout, error="no answer (client thread hung)") for r in results],
                wall)


def report(args: argparse.Namespace, solo_t: list[float], solo_l: list[float], load_t: Load, load_l: Load | None,
           stats: dict[str, Any]) -> None:
    gguf = getattr(args, "gguf_used", None)
    print(f"model {args.model}, {args.threads} thread(s) each, greedy, up to {args.max_tokens} new tokens; "
          f"tunesmith engine {getattr(args, 'engine_used', '?')}; llama.cpp file "
          f"{Path(gguf).name if gguf else '-'}")
    t1 = statistics.median(solo_t)
    l1 = statistics.median(solo_l) if solo_l else None
    print(f"single stream tok/s: tunesmith {' '.join(f'{x:.1f}' for x in solo_t)} (median {t1:.1f}); "
          f"llama.cpp {' '.join(f'{x:.1f}' for x in solo_l) or '-'}" + (f" (median {l1:.1f})" if l1 else ""))
    for name, load in (("tunesmith", load_t), ("llama.cpp", load_l)):
        if load is None:
            continue
        print(f"{args.clients} clients, {name}: failures {len(load.results) - len(load.ok)}, wall {load.wall:.1f}s, "
              f"throughput {load.throughput:.1f} tok/s, latency p50 {load.latency(0.5):.2f}s "
              f"p95 {load.latency(0.95):.2f}s")
        for r in load.results:
            if r.error:
                print("  failure:", r.error)
    print(f"tunesmith batches {stats.get('batches')} (largest {stats.get('largest_batch')} rows, "
          f"{1 + args.adapters} models mixed)")
    if load_l is not None and l1:
        single = t1 / l1
        through = load_t.throughput / load_l.throughput
        p95 = load_t.latency(0.95) / load_l.latency(0.95)
        print(f"RESULT single_stream_ratio={single:.2f} throughput_ratio={through:.2f} p95_latency_ratio={p95:.2f} "
              f"(tunesmith / llama.cpp; bar: single >= 0.5, throughput >= 1.0; latency lower is better)")
    else:
        print(f"RESULT single_stream_tok_s={t1:.1f} throughput_tok_s={load_t.throughput:.1f} "
              f"p95_latency_s={load_t.latency(0.95):.2f} (no llama.cpp: ratios n/a)")


if __name__ == "__main__":
    main()
