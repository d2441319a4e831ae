"""The engine: one base model plus adapters, a FIFO queue batched per model, limits, adapter loading errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_serve_support import make_adapter, make_run, reference_reply
from tiny import build_tiny_model
from tunesmith.errors import ModelError
from tunesmith.model.loading import resolve
from tunesmith.serve.engine import Engine, Limits
from tunesmith.serve.generate import SamplingParams, Step
from tunesmith.serve.protocol import ApiError


class Collector:
    """Gathers what the worker emits for one request; `wait()` returns (text, final step or error)."""

    def __init__(self, log: list[str] | None = None, label: str = ""):
        self.text, self.end = "", None
        self.done = threading.Event()
        self.log, self.label = log, label

    def __call__(self, event: Step | ApiError) -> None:
        if isinstance(event, Step):
            self.text += event.text
            if event.finish_reason is None:
                return
        self.end = event
        if self.log is not None:
            self.log.append(self.label)
        self.done.set()

    def wait(self) -> tuple[str, Step | ApiError | None]:
        assert self.done.wait(30), "request never finished"
        return self.text, self.end


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-adapters")
    return {name: make_adapter(tiny_model_dir, root / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}


def make_engine(tiny_model_dir: Path, kind: str, adapter_dirs: dict[str, Path]) -> Engine:
    eng = Engine(resolve(str(tiny_model_dir)), base_id="tiny", device="cpu", engine=kind,  # type: ignore[arg-type]
                 limits=Limits(max_tokens=32, max_prompt_tokens=64, max_batch=8, max_queue=6))
    eng.add_adapter("a", adapter_dirs["a"])
    return eng


@pytest.fixture(params=["fast", "transformers"])
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path, adapter_dirs: dict[str, Path]) -> Iterator[Engine]:
    eng = make_engine(tiny_model_dir, request.param, adapter_dirs)
    assert eng.engine_name == request.param
    yield eng
    eng.close()


def ids(engine: Engine, text: str) -> list[int]:
    return engine.chat_prompt([{"role": "user", "content": text}])


def test_transformers_engine_batches_requests_for_the_same_model_oldest_model_first(
        tiny_model_dir: Path, adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model_dir, "transformers", adapter_dirs)
    try:
        _check_same_model_batches(engine, tiny_model_dir, adapter_dirs)
    finally:
        engine.close()


def _check_same_model_batches(engine: Engine, tiny_model_dir: Path, adapter_dirs: dict[str, Path]) -> None:
    order: list[str] = []
    plan = [("a", "hi"), ("tiny", "hello"), ("a", "fox"), ("a", "where is my order?")]
    jobs = []
    with engine._cond:  # hold the queue so the worker sees all four at once (test-only peek at internals)
        for model_id, text in plan:
            c = Collector(order, model_id)
            engine.submit(model_id, ids(engine, text), SamplingParams(max_tokens=5), c)
            jobs.append(c)
    results = [c.wait() for c in jobs]
    assert order == ["a", "a", "a", "tiny"]  # the three 'a' requests ran as one batch before the base one
    assert engine.stats()["batches"] == 2 and engine.stats()["largest_batch"] == 3
    for (model_id, text), (out, end) in zip(plan, results, strict=True):
        adapter = adapter_dirs["a"] if model_id == "a" else None
        assert isinstance(end, Step) and end.finish_reason == "length"
        assert out == reference_reply(tiny_model_dir, adapter, ids(engine, text), 5)


def test_fast_engine_decodes_requests_for_different_models_in_one_batch(tiny_model_dir: Path,
                                                                        adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model_dir, "fast", adapter_dirs)
    engine.add_adapter("b", adapter_dirs["b"])
    plan = [("a", "hi"), ("tiny", "hello"), ("b", "fox"), ("a", "where is my order?"), ("b", "hi")]
    try:
        with engine._cond:  # hold the queue so the worker sees all five at once
            jobs = [Collector() for _ in plan]
            for (model_id, text), c in zip(plan, jobs, strict=True):
                engine.submit(model_id, ids(engine, text), SamplingParams(max_tokens=6), c)
        results = [c.wait() for c in jobs]
        assert engine.stats()["batches"] == 1 and engine.stats()["largest_batch"] == 5
        for (model_id, text), (out, end) in zip(plan, results, strict=True):
            adapter = adapter_dirs.get(model_id)
            assert isinstance(end, Step) and end.finish_reason == "length"
            assert out == reference_reply(tiny_model_dir, adapter, ids(engine, text), 6), (model_id, text)
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["fast", "transformers"])
def test_a_batch_stays_within_the_padded_token_budget(tiny_model_dir: Path, kind: str) -> None:
    eng = Engine(resolve(str(tiny_model_dir)), device="cpu", limits=Limits(max_batch_tokens=45),
                 engine=kind)  # type: ignore[arg-type]
    order: list[str] = []
    try:
        with eng._cond:
            for label, n in (("short-1", 10), ("long", 30), ("short-2", 10)):
                eng.submit(eng.base_id, [5] * n, SamplingParams(max_tokens=2), Collector(order, label))
        while len(order) < 3:
            time.sleep(0.01)
    finally:
        eng.close()
    assert order[2] == "long"  # 2 x 30 padded tokens would pass 45: the long prompt waited for the next batch
    assert eng.stats()["batches"] == 2


def test_limits_are_checked_before_queueing_with_messages_that_say_what_to_change(engine: Engine) -> None:
    emit = Collector()
    with pytest.raises(ApiError, match=r"model 'nope' does not exist; served: tiny, a") as e:
        engine.submit("nope", [1, 2], SamplingParams(max_tokens=4), emit)
    assert (e.value.status, e.value.code) == (404, "model_not_found")
    with pytest.raises(ApiError, match=r"prompt has 65 tokens; this server accepts at most 64") as e:
        engine.submit("tiny", [5] * 65, SamplingParams(max_tokens=4), emit)
    assert (e.value.status, e.value.code) == (400, "context_length_exceeded")
    with pytest.raises(ApiError, match=r"max_tokens 33 is over this server's limit of 32") as e:
        engine.submit("tiny", [5], SamplingParams(max_tokens=33), emit)
    assert (e.value.status, e.value.param) == (400, "max_tokens")


def test_prompt_plus_max_tokens_must_fit_the_context_window(tiny_model_dir: Path) -> None:
    eng = Engine(resolve(str(tiny_model_dir)), device="cpu", limits=Limits(max_tokens=100, max_prompt_tokens=1000))
    try:
        with pytest.raises(ApiError, match=r"prompt \(500 tokens\) \+ max_tokens \(20\) exceeds the model's "
                                           r"context window of 512 tokens"):
            eng.submit(eng.base_id, [5] * 500, SamplingParams(max_tokens=20), Collector())
        assert eng.default_max_tokens(500) == 12  # an omitted max_tokens shrinks to what fits
    finally:
        eng.close()


def test_a_full_queue_answers_503_instead_of_growing(engine: Engine) -> None:
    with engine._cond:  # nothing leaves the queue while we fill it
        for _ in range(6):
            engine.submit("tiny", [5, 6], SamplingParams(max_tokens=1), Collector())
        with pytest.raises(ApiError, match=r"server busy: 6 requests in flight") as e:
            engine.submit("tiny", [5, 6], SamplingParams(max_tokens=1), Collector())
    assert e.value.status == 503


def test_adapter_loading_refuses_bad_names_duplicates_and_foreign_folders(engine: Engine, tiny_model_dir: Path,
                                                                        adapter_dirs: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    with pytest.raises(ApiError, match=r"adapter name 'bad name': use letters, digits"):
        engine.add_adapter("bad name", tmp_path)
    with pytest.raises(ApiError, match=r"model 'tiny' is already served") as e:
        engine.add_adapter("tiny", adapter_dirs["b"])
    assert e.value.status == 409
    with pytest.raises(ModelError, match=r"not an adapter folder or a LoRA run folder"):
        engine.add_adapter("x", tmp_path)
    full = tmp_path / "full-run"
    full.mkdir()
    (full / "manifest.json").write_text(json.dumps({"method": "full", "base_model": {}}))
    with pytest.raises(ModelError, match=r"a full fine-tune is a whole model, not an adapter; serve it with --model"):
        engine.add_adapter("x", full)
    pickled = make_adapter(tiny_model_dir, tmp_path / "pickled", seed=1)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ModelError, match=r"adapter has no adapter_model.safetensors"):
        engine.add_adapter("x", pickled)
    assert engine.model_ids() == ["tiny", "a"]


def test_an_adapter_for_other_weights_is_refused(engine: Engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = make_run(tiny_model_dir, tmp_path / "run", seed=3, fingerprint="sha256:" + "0" * 64)
    with pytest.raises(ModelError, match=r"run/adapter: trained on a different base model than '.*tiny-model.*' "
                                         r"\(fingerprint 000000000000… recorded"):
        engine.add_adapter("x", run)
    other = build_tiny_model(tmp_path / "wider", hidden=32)
    with pytest.raises(ModelError, match=r"cannot load adapter on 'tiny'"):
        engine.add_adapter("x", make_adapter(other, tmp_path / "wide-adapter", seed=1))
    assert engine.model_ids() == ["tiny", "a"]
    _, end = _generate(engine, "a", "hi")  # a failed load leaves the served adapters working
    assert isinstance(end, Step)


def test_removing_adapters_keeps_the_base_and_fails_queued_requests_with_404(engine: Engine, tiny_model_dir: Path,
                                                                             adapter_dirs: dict[str, Path]) -> None:
    before, _ = _generate(engine, "tiny", "hello")
    engine.add_adapter("b", adapter_dirs["b"])
    queued = Collector()
    with engine._cond:  # the worker cannot take the job before the adapter is gone
        engine.submit("b", ids(engine, "hi"), SamplingParams(max_tokens=3), queued)
        engine.remove_adapter("b")
    _, end = queued.wait()
    assert isinstance(end, ApiError) and end.status == 404
    engine.remove_adapter("a")  # the last one
    assert engine.model_ids() == ["tiny"]
    after, _ = _generate(engine, "tiny", "hello")
    assert after == before == reference_reply(tiny_model_dir, None, ids(engine, "hello"), 6)
    with pytest.raises(ApiError, match=r"adapter 'a' is not loaded"):
        engine.remove_adapter("a")
    engine.add_adapter("b", adapter_dirs["b"])  # the bare base takes adapters again
    out, _ = _generate(engine, "b", "hello")
    assert out == reference_reply(tiny_model_dir, adapter_dirs["b"], ids(engine, "hello"), 6)


def test_a_crash_inside_generation_fails_that_batch_with_500_and_the_worker_carries_on(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine.fast or engine.model, "forward", boom)
    _, end = _generate(engine, "tiny", "hello")
    assert isinstance(end, ApiError) and end.status == 500
    assert end.message == "generation failed inside the server; see its log"
    monkeypatch.undo()
    _, end = _generate(engine, "tiny", "hello")
    assert isinstance(end, Step) and end.finish_reason == "length"


def test_a_cancelled_queued_request_is_never_run(engine: Engine) -> None:
    with engine._cond:
        job = engine.submit("tiny", [5, 6], SamplingParams(max_tokens=2), Collector())
        job.cancel()
    _generate(engine, "tiny", "hello")  # runs after the worker has looked at the queue
    assert engine.stats()["batches"] == 1


@pytest.mark.parametrize("kind", ["fast", "transformers"])
def test_close_tells_queued_requests_the_server_is_stopping(tiny_model_dir: Path, kind: str) -> None:
    eng = Engine(resolve(str(tiny_model_dir)), device="cpu", engine=kind)  # type: ignore[arg-type]
    waiting = Collector()
    with eng._model_lock:  # the worker takes the first request, then blocks: the second stays queued
        eng.submit(eng.base_id, [5, 6], SamplingParams(max_tokens=2), Collector())
        while eng.stats()["running"] != 1:
            time.sleep(0.01)
        eng.submit(eng.base_id, [5, 6], SamplingParams(max_tokens=2), waiting)
        threading.Timer(0.2, eng.close).start()
        assert waiting.done.wait(5)
    assert isinstance(waiting.end, ApiError) and waiting.end.code == "shutting_down"


def _generate(engine: Engine, model_id: str, text: str) -> tuple[str, Step | ApiError | None]:
    c = Collector()
    engine.submit(model_id, ids(engine, text), SamplingParams(max_tokens=6), c)
    return c.wait()


def test_set_up_work_runs_in_a_thread_of_its_own_and_its_errors_reach_the_caller() -> None:
    """The model loads off the caller's thread (so the worker keeps the only OpenMP pool: see in_own_thread)."""
    from tunesmith.serve.engine import in_own_thread

    assert in_own_thread(threading.get_ident) != threading.get_ident()

    def fail() -> None:
        raise ModelError("no such model")

    with pytest.raises(ModelError, match="no such model"):
        in_own_thread(fail)
