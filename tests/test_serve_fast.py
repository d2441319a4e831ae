"""The fast decoder: same logits as transformers (float32), rows independent of their batch, per-row LoRA equal
to PEFT's, int8 close and only on decode steps, and clear refusals of what it cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from test_serve_support import make_adapter
from tiny import build_tiny_model
from tunesmith.errors import ConfigError, ModelError
from tunesmith.model.loading import load_model, resolve
from tunesmith.serve.engine import Engine
from tunesmith.serve.fast import FastLlama, check_against, supports
from tunesmith.serve.lora_rows import RowAdapters, read_adapter


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fast-adapters")
    return {name: make_adapter(tiny_model_dir, root / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}


def _reference_logits(model_dir: Path, adapter: Path | None, ids: list[int]) -> torch.Tensor:
    """transformers' (and PEFT's) logits at every position of `ids`: (T, V)."""
    from tunesmith.model.adapters import load_for_inference, resolve_target

    model, _ = load_for_inference(resolve_target(str(model_dir), adapter))
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _decode_all(fast: FastLlama, rows: list[list[int]], split: int, adapters: RowAdapters | None) -> torch.Tensor:
    """Prefill each row's first `split` tokens together (right-padded), then feed the rest one token per step;
    returns (B, steps + 1, V) logits: after the prompt, then after each fed token."""
    out = []
    with torch.inference_mode():
        prompts = [r[:split] for r in rows]
        ids = torch.tensor(prompts)
        out.append(fast.forward(ids, torch.zeros(len(rows), dtype=torch.long), torch.tensor([split] * len(rows)),
                                adapters))
        for t in range(split, len(rows[0])):
            step = torch.tensor([[r[t]] for r in rows])
            out.append(fast.forward(step, torch.tensor([t] * len(rows)), torch.ones(len(rows), dtype=torch.long),
                                    adapters))
    return torch.stack(out, dim=1)


def test_float32_logits_equal_transformers_for_the_prompt_and_every_decode_step(tiny_model_dir: Path) -> None:
    ids = [1, 50, 60, 70, 80, 90, 100, 110, 120, 130]
    fast = FastLlama(load_model(str(tiny_model_dir)).eval(), rows=2)
    got = _decode_all(fast, [ids], 4, None)[0]
    want = _reference_logits(tiny_model_dir, None, ids)[3:]
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())


def test_a_row_gets_the_same_logits_alone_or_padded_into_a_batch_of_other_lengths(tiny_model_dir: Path) -> None:
    fast = FastLlama(load_model(str(tiny_model_dir)).eval(), rows=4)
    prompts = [[1, 5, 9], [1, 7, 8, 9, 10, 11, 12], [1, 40]]
    with torch.inference_mode():
        width = max(map(len, prompts))
        padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        together = fast.forward(padded, torch.zeros(3, dtype=torch.long), torch.tensor([len(p) for p in prompts]))
        alone = [fast.forward(torch.tensor([p]), torch.tensor([0]), torch.tensor([len(p)]), first_slot=3)[0]
                 for p in prompts]
        step = fast.forward(torch.tensor([[3], [4], [5]]), torch.tensor([len(p) for p in prompts]),
                            torch.ones(3, dtype=torch.long))
    for b, p in enumerate(prompts):
        assert torch.allclose(together[b], alone[b], atol=1e-5, rtol=0)
        want = _reference_logits(tiny_model_dir, None, [*p, 3 + b])[-1]
        assert torch.allclose(step[b], want, atol=1e-5, rtol=0)


def test_each_row_gets_its_own_adapter_as_peft_computes_it(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    fast = FastLlama(load_model(str(tiny_model_dir)).eval(), rows=4)
    loaded = {name: read_adapter(name, path, fast) for name, path in adapters.items()}
    plan = [None, "a", "b", "a"]
    rows = RowAdapters([loaded[n] if n else None for n in plan])
    ids = [1, 50, 60, 70, 80, 90]
    got = _decode_all(fast, [ids] * 4, 3, rows)
    for b, name in enumerate(plan):
        want = _reference_logits(tiny_model_dir, adapters[name] if name else None, ids)[2:]
        assert torch.allclose(got[b], want, atol=1e-5, rtol=0), (name, float((got[b] - want).abs().max()))
    assert not torch.allclose(got[1], got[2], atol=1e-3)  # the adapters do differ


def test_transformers_model_still_computes_the_same_after_its_weights_are_fused(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    fast = FastLlama(model, rows=1)
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() == fast.layers[0].qkv.weight.data_ptr()


def test_int8_runs_prompts_exactly_and_decode_steps_close(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).eval()
    exact, int8 = FastLlama(model, rows=1), FastLlama(model, int8=True, rows=1)
    prompt = torch.tensor([[1, 50, 60, 70]])
    with torch.inference_mode():
        a = exact.forward(prompt, torch.tensor([0]), torch.tensor([4]))
        b = int8.forward(prompt, torch.tensor([0]), torch.tensor([4]))
        assert torch.equal(a, b)  # prompts never touch the int8 weights
        check = check_against(int8, model, [1, 50, 60, 70, 80])
    assert 0 < check["max_abs_diff"] < 0.05 * float(a.abs().max())


def test_the_engine_picks_fast_on_cpu_and_checks_it_against_transformers(tiny_model_dir: Path) -> None:
    engine = Engine(resolve(str(tiny_model_dir)), device="cpu")
    try:
        assert engine.engine_name == "fast"
        assert engine.fast_check["max_abs_diff"] < 1e-4 and engine.fast_check["top1_agree"] == 1.0
        assert engine.stats()["engine"] == "fast"
    finally:
        engine.close()


def test_models_and_adapters_the_fast_path_cannot_serve_are_refused_clearly(tiny_model_dir: Path, tmp_path: Path,
                                                                           adapters: dict[str, Path]) -> None:
    model = load_model(str(tiny_model_dir)).eval()
    model.config.model_type = "qwen2"
    assert supports(model) == "model type 'qwen2' (fast path: llama, mistral)"
    with pytest.raises(ConfigError, match=r"--int8 needs the fast engine \(drop --engine transformers\)"):
        Engine(resolve(str(tiny_model_dir)), device="cpu", engine="transformers", int8=True)
    fast = FastLlama(load_model(str(tiny_model_dir)).eval(), rows=1)
    dora = tmp_path / "dora"
    dora.mkdir()
    for f in adapters["a"].iterdir():
        (dora / f.name).write_bytes(f.read_bytes())
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ModelError, match=r"a DoRA adapter; the fast server applies plain LoRA only, serve it with "
                                         r"--engine transformers"):
        read_adapter("d", dora, fast)
    other = build_tiny_model(tmp_path / "wider", hidden=32)
    with pytest.raises(ValueError, match=r"q_proj: LoRA shapes A \(4, 32\), B \(32, 4\) do not fit this model's "
                                         r"64 -> 64 projection"):
        read_adapter("w", make_adapter(other, tmp_path / "wide", seed=1), fast)


@pytest.mark.slow
def test_on_the_built_in_model_the_float32_fast_engine_replies_as_transformers_does() -> None:
    """Greedy replies of the engine's fast path (continuous batch of 3) equal transformers' `generate` alone."""
    from test_serve_engine import Collector
    from tunesmith.serve.generate import SamplingParams

    engine = Engine(resolve("smollm2-135m"), device="cpu")
    prompts = ["How do I reset my password?", "Write one sentence about the sea.", "What is 12 + 30?"]
    try:
        assert engine.engine_name == "fast"
        ids = [engine.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
        jobs = [Collector() for _ in prompts]
        with engine._cond:
            for prompt_ids, job in zip(ids, jobs, strict=True):
                engine.submit(engine.base_id, prompt_ids, SamplingParams(max_tokens=24), job)
        replies = [job.wait()[0] for job in jobs]
        with torch.inference_mode():
            for prompt_ids, reply in zip(ids, replies, strict=True):
                out = engine.model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False)
                assert reply == engine.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)
    finally:
        engine.close()


def test_the_kv_cache_grows_with_the_batch_and_the_engine_bounds_rows_times_positions(tiny_model_dir: Path) -> None:
    from test_serve_engine import Collector
    from tunesmith.serve.engine import Limits
    from tunesmith.serve.generate import SamplingParams

    fast = FastLlama(load_model(str(tiny_model_dir)).eval(), rows=32)
    with torch.inference_mode():
        fast.forward(torch.tensor([[1] * 100]), torch.tensor([0]), torch.tensor([100]))
    assert fast.k[0].shape[0] == 1 and fast.capacity >= 100  # one long row costs one slot, not 32
    fast.release()
    assert fast.k == [] and fast.capacity == 0
    engine = Engine(resolve(str(tiny_model_dir)), device="cpu", limits=Limits(max_batch_tokens=100))
    try:
        with engine._cond:  # 2 x (40 + 20) positions would pass 100: the second request waits for the first
            jobs = [Collector(), Collector()]
            for job in jobs:
                engine.submit(engine.base_id, [5] * 40, SamplingParams(max_tokens=20), job)
        for job in jobs:
            job.wait()
        assert engine.stats()["batches"] == 2 and engine.stats()["largest_batch"] == 1
    finally:
        engine.close()


def test_serve_command_refuses_int8_without_the_fast_engine(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           tiny_model_dir: Path) -> None:
    from cli_helpers import run

    code, _, err = run(monkeypatch, capsys, "serve", "--model", str(tiny_model_dir), "--int8", "--engine",
                       "transformers")
    assert code == 2 and "--int8 needs the fast engine (drop --engine transformers)" in err
    code, _, err = run(monkeypatch, capsys, "serve", "--model", str(tiny_model_dir), "--engine", "turbo")
    assert code == 2 and "--engine 'turbo': choose auto, fast or transformers" in err
