"""Load test for `tunesmith serve`: N concurrent chat clients against a server on a loopback port.

Starts the real server in this process (127.0.0.1, a free port), sends one warm-up request, times a few
requests one at a time, then releases N client threads at once (official `openai` client, one request
each) and reports failures, latency percentiles and throughput, plus the speed-up over answering the same
requests one by one.

    python bench/serve_load.py                       # smollm2-135m, 32 clients, max_tokens 32
    python bench/serve_load.py --max-batch 1         # no batching, for comparison
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import openai

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


def main() -> None:
    args = parse_args()
    import openai

    from tunesmith.cli.common import quiet_libraries
    from tunesmith.model.loading import resolve
    from tunesmith.serve.app import ServeConfig, background_server, create_app
    from tunesmith.serve.engine import Engine, Limits

    quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = Limits(max_tokens=max(args.max_tokens, 64), max_batch=args.max_batch, max_queue=max(256, args.clients))
    engine = Engine(resolve(args.model), device=args.device, limits=limits)
    with background_server(create_app(engine, ServeConfig())) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.timeout)
        ask(client, engine.base_id, 0, args.max_tokens)  # warm-up
        solo = [ask(client, engine.base_id, i, args.max_tokens) for i in range(3)]
        before = engine.stats()["batches"]
        start = time.perf_counter()
        results = run_clients(client, engine.base_id, args)
        wall = time.perf_counter() - start
        stats = engine.stats()
        report(results, solo, wall, {**stats, "batches": stats["batches"] - before}, args)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    return p.parse_args()


def ask(client: openai.OpenAI, model: str, i: int, max_tokens: int) -> Result:
    start = time.perf_counter()
    try:
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=max_tokens, temperature=0,
        )
        return Result(time.perf_counter() - start, r.usage.completion_tokens)
    except Exception as e:  # a failure is a result to count, not a crash
        return Result(time.perf_counter() - start, error=f"{type(e).__name__}: {e}")


def run_clients(client: openai.OpenAI, model: str, args: argparse.Namespace) -> list[Result]:
    results: list[Result | None] = [None] * args.clients
    barrier = threading.Barrier(args.clients)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = ask(client, model, i, args.max_tokens)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.timeout + 30)
    return [r if r is not None else Result(args.timeout, error="no answer (client thread hung)") for r in results]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(results: list[Result], solo: list[Result], wall: float, stats: dict, args: argparse.Namespace) -> None:
    ok = [r for r in results if r.error is None]
    latencies = [r.seconds for r in ok]
    tokens = sum(r.completion_tokens for r in ok)
    solo_s = statistics.median(r.seconds for r in solo)
    import torch

    print(f"model {args.model}, {args.clients} concurrent chat requests, max_tokens {args.max_tokens}, "
          f"max_batch {args.max_batch}, {torch.get_num_threads()} torch thread(s)")
    print(f"requests {len(results)}  failures {len(results) - len(ok)}")
    if latencies:
        print(f"latency  p50 {percentile(latencies, 0.5):.2f}s  p95 {percentile(latencies, 0.95):.2f}s  "
              f"max {max(latencies):.2f}s")
    print(f"wall {wall:.2f}s  throughput {tokens / wall:.1f} completion tok/s, {len(ok) / wall:.2f} req/s")
    print(f"batches {stats['batches']} (largest {stats['largest_batch']} requests)")
    print(f"one request alone: {solo_s:.2f}s -> one by one would take {solo_s * args.clients:.1f}s; "
          f"speed-up x{solo_s * args.clients / wall:.1f}")
    for r in results:
        if r.error:
            print("  failure:", r.error)


if __name__ == "__main__":
    main()
