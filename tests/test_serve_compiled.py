"""`serve --compile`: the compiled one-row decode step gives the eager step's logits (float32), compiles once
for every length, and hands a row's cache back and forth as other rows join and leave the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from test_serve_support import make_adapter
from tunesmith.model.loading import resolve
from tunesmith.serve.batcher import Live, LiveBatch
from tunesmith.serve.compiled import CompiledStep
from tunesmith.serve.engine import Engine
from tunesmith.serve.generate import SamplingParams, new_row
from tunesmith.serve.lora_rows import read_adapter

PROMPT = [1, *range(40, 60)]  # 21 tokens: the compiled step needs CompiledStep.MIN_SPAN cached positions


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    served = Engine(resolve(str(tiny_model_dir)), device="cpu", compile=True)  # compiles and checks at start-up
    yield served
    served.close()


def test_the_engine_compiles_at_start_up_and_checks_the_step_against_the_eager_one(engine: Engine) -> None:
    assert engine.engine_name == "fast+compile" and engine.stats()["engine"] == "fast+compile"
    assert engine.compiled is not None and engine.compiled.compile_seconds > 0


def test_every_step_equals_the_eager_step_and_no_length_recompiles(engine: Engine) -> None:
    from torch._dynamo.utils import counters

    fast, compiled = engine.fast, engine.compiled
    assert fast is not None and compiled is not None
    graphs = counters["stats"]["unique_graphs"]
    steps = list(range(60, 60 + 50))  # crosses the eager cache's growth from 64 to 96 positions
    with engine._model_lock, torch.inference_mode():
        fast.release()
        fast.forward(torch.tensor([PROMPT]), torch.tensor([0]), torch.tensor([len(PROMPT)]))
        compiled.load(len(PROMPT))
        for i, token in enumerate(steps):
            position = len(PROMPT) + i
            eager = fast.forward(torch.tensor([[token]]), torch.tensor([position]), torch.tensor([1]))
            mine = compiled.step(token, position)
            assert torch.allclose(mine, eager, atol=1e-5, rtol=0), (position, float((mine - eager).abs().max()))
        fast.release()
    assert counters["stats"]["unique_graphs"] == graphs  # 50 new lengths, no new graph


def _generate(batch: LiveBatch, tokenizer: object, plan: list[tuple[int, list[int], object, int]],
              steps: int) -> list:
    """Run `steps` decode steps; plan entries (step, prompt, adapter, max_tokens) join the batch at that step.
    Returns each request's generated token ids, and the logits of every step."""
    rows, seen = [], []
    advance = batch._advance

    def record(logits: torch.Tensor, positions: range) -> None:
        seen.append(logits.clone())
        advance(logits, positions)

    batch._advance = record  # type: ignore[method-assign]
    with torch.inference_mode():
        for step in range(steps):
            joining = [Live(new_row(tokenizer, prompt, SamplingParams(max_tokens=most)), lambda _: None, adapter)
                       for at, prompt, adapter, most in plan if at == step]
            rows += joining
            batch.admit(joining)
            batch.step()
    return [r.row.text.tokens for r in rows], seen


def test_a_lone_row_decodes_compiled_and_hands_its_cache_over_as_rows_join_and_leave(
        engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same requests, joining at the same steps, give the same tokens with and without the compiled step:
    the first decodes alone (compiled), then with an adapter row and a base row (eager: its cache went back to
    slot 0), then alone again once those finished (compiled: its cache came back)."""
    fast = engine.fast
    assert fast is not None
    adapter = read_adapter("a", make_adapter(tiny_model_dir, tmp_path / "a", seed=1), fast)
    # A alone for steps 0-4; B (adapter, 8 tokens: its prefill's and 7 steps) and C (6 tokens) join at steps 5
    # and 6 and both finish at step 11; A is alone again from step 12 to 29
    plan = [(0, PROMPT, None, 40), (5, [*PROMPT[:12], 70, 71], adapter, 8), (6, [1, 80, 81, 82], None, 6)]
    calls = []
    compiled = engine.compiled
    original = compiled.step

    def counted(token: int, position: int) -> torch.Tensor:
        calls.append(position)
        return original(token, position)

    with engine._model_lock:
        compiled.step = counted  # type: ignore[method-assign]
        try:
            for_real = _generate(LiveBatch(fast, set(), 0, compiled), engine.tokenizer, plan, 30)
        finally:
            del compiled.step
        eager = _generate(LiveBatch(fast, set(), 0, None), engine.tokenizer, plan, 30)
    assert for_real[0] == eager[0] and [len(t) for t in eager[0]] == [31, 8, 6]
    assert len(for_real[1]) == len(eager[1])
    for got, want in zip(for_real[1], eager[1], strict=True):  # the tiny model's tokens alone would hide a
        assert torch.allclose(got, want, atol=1e-5, rtol=0)      # cache handed over wrong
    start = len(PROMPT)
    assert calls == [*range(start, start + 5), *range(start + 12, start + 30)]


def test_a_lone_row_with_an_adapter_and_a_short_prompt_decode_eagerly(engine: Engine) -> None:
    compiled = engine.compiled
    assert compiled is not None
    assert not compiled.fits(CompiledStep.MIN_SPAN - 2) and compiled.fits(CompiledStep.MIN_SPAN)
    assert not compiled.fits(compiled.capacity)


def test_compile_without_the_fast_engine_is_refused_clearly(tiny_model_dir: Path) -> None:
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--compile needs the fast engine \(a Llama-shaped model on a CPU\)"):
        Engine(resolve(str(tiny_model_dir)), device="cpu", engine="transformers", compile=True)
