"""One base model in memory, LoRA adapters on top of it, and one worker thread that owns them.

Requests wait in a bounded FIFO queue. Only the worker runs forward passes (torch already spreads one over
the cores), and adapter loads take the same lock, so nothing changes the model under a running step.

Two ways to decode, chosen at start-up (`engine`):
- "fast" (Llama-shaped models on a CPU, the default there): the lean decoder of `serve.fast` with continuous
  batching (`serve.batcher`): queued requests join the running batch between steps, up to `max_batch` rows,
  whatever model each asks for; every row applies its own adapter (`serve.lora_rows`). Its logits are checked
  against transformers' once at start-up. With `compile=True`, a lone row on the base model decodes through
  `serve.compiled` (torch.compile of the decode step), checked against the eager step at start-up too.
- "transformers": the model's own forward. The worker takes the oldest request plus the queued ones for the
  same model (within a padded-token budget) and decodes them together; adapters are PEFT adapters in one
  `PeftModel`, and the base model is served with them switched off.
Either way there is one copy of the base weights whatever the adapter count.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tunesmith.data.tokenize import Message, encode_prompt
from tunesmith.errors import ConfigError, ModelError
from tunesmith.model.adapters import ADAPTER_NAME, ADAPTER_WEIGHTS, is_adapter_dir
from tunesmith.model.loading import ModelRef, check_fingerprint, load_model, load_tokenizer, pick_device
from tunesmith.serve.generate import Row, SamplingParams, Step, decode, inference_dtype, new_row, stop_token_ids
from tunesmith.serve.protocol import ApiError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tunesmith.retrieval import Retriever
    from tunesmith.serve.batcher import LiveBatch
    from tunesmith.serve.compiled import CompiledStep
    from tunesmith.serve.fast import FastLlama
    from tunesmith.serve.lora_rows import Adapter

EngineKind = Literal["auto", "fast", "transformers"]

log = logging.getLogger(__name__)


T = TypeVar("T")


def in_own_thread(fn: Callable[[], T]) -> T:
    """`fn()`, run in a short-lived thread of its own (its exception re-raised here).

    Why: torch's CPU threads come from OpenMP, which keeps a pool of threads for every thread that ever ran
    parallel work, and libgomp stops spin-waiting between parallel regions when its pools together hold more
    threads than there are cores. Loading the model in the caller's thread left that thread's pool beside the
    worker's, and an int8 decode step then ran about 1.8x slower (41 against 73 tokens/s for the built-in
    model on 2 cores). A pool ends with its thread, so the engine's worker keeps the only one.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="tunesmith-setup", daemon=True)  # Ctrl-C need not wait
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond these the server answers 400, or 503 when the queue is full."""

    max_tokens: int = 512  # largest max_tokens a request may ask for; chat's default when omitted
    max_prompt_tokens: int = 4096  # also capped by the model's context window
    max_batch: int = 32  # requests for one model decoded together
    max_batch_tokens: int = 16384  # rows x longest prompt in one batch (transformers engine), or rows x longest
    # prompt + max_tokens in the running batch (fast engine): bounds the prefill's and the KV cache's memory
    batch_window_s: float = 0.02  # how long an idle worker waits for simultaneous requests to batch them
    max_queue: int = 256  # requests waiting or running; more get 503


@dataclass
class Job:
    """A request in the queue. `emit` receives each Step, or an ApiError if the request fails."""

    model_id: str
    row: Row
    emit: Callable[[Step | ApiError], None]

    def cancel(self) -> None:
        self.row.cancelled = True


def adapter_folder(path: str | Path) -> tuple[Path, str | None]:
    """The PEFT folder behind `path` (an adapter folder or a LoRA run folder) and, for a run, the
    fingerprint of the base model it was trained on."""
    from tunesmith.runfolder import RunFolder, is_run

    path = Path(path).expanduser()
    expected = None
    if is_run(path):
        run = RunFolder.open(path)
        if run.method == "full":
            raise ModelError(f"{path}: a full fine-tune is a whole model, not an adapter; serve it with --model")
        expected = run.manifest()["base_model"].get("fingerprint")
        path = run.output()
    if not is_adapter_dir(path):
        raise ModelError(f"{path}: not an adapter folder or a LoRA run folder (no adapter_config.json)")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{path}: adapter has no {ADAPTER_WEIGHTS} (only safetensors weights are loaded)")
    return path, expected


class Engine:
    """The served models and the queue in front of them. Thread-safe; `close()` stops the worker."""

    def __init__(self, base: ModelRef, *, base_id: str | None = None, device: str = "auto",
                 limits: Limits | None = None, engine: EngineKind = "auto", int8: bool = False,
                 compile: bool = False):
        self.base = base
        self.base_id = base_id or base.name
        self.limits = limits or Limits()
        self.device = pick_device(device)
        self.adapters: dict[str, Path] = {}  # serving name -> PEFT folder
        self._notes: dict[str, Retriever] = {}  # adapters trained with notes (train --rag) -> their notes
        self.fast: FastLlama | None = None
        self.fast_check: dict[str, float] = {}  # the start-up comparison with transformers' logits
        self.compiled: CompiledStep | None = None
        self._fast_adapters: dict[str, Adapter] = {}
        in_own_thread(lambda: self._set_up(engine, int8, compile))
        self._queue: list[Job] = []
        self._running = 0
        self._batches = 0  # batches run so far, and the largest: shows whether requests get batched
        self._largest_batch = 0
        self._cond = threading.Condition()
        self._model_lock = threading.Lock()  # held by the worker during a batch and by adapter loads
        self._closing = False
        loop = self._loop_fast if self.fast is not None else self._loop
        self._worker = threading.Thread(target=loop, name="tunesmith-engine", daemon=True)
        self._worker.start()

    def _set_up(self, engine: EngineKind, int8: bool, compile: bool) -> None:
        """Load the model and pick (and check) the decoder. Runs in a thread of its own: see `in_own_thread`."""
        self.model: PreTrainedModel = load_model(self.base, device=self.device, dtype=inference_dtype(self.device))
        self.model.eval()
        self.tokenizer = load_tokenizer(self.base)
        self.eos_ids = stop_token_ids(self.model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self._pick_engine(engine, int8)
        if compile:
            self._compile()

    @property
    def engine_name(self) -> str:
        if self.fast is None:
            return "transformers"
        return ("fast-int8" if self.fast.int8 else "fast") + ("+compile" if self.compiled is not None else "")

    def _pick_engine(self, engine: EngineKind, int8: bool) -> None:
        """The fast decoder when asked or when it fits (Llama-shaped, CPU), checked against transformers."""
        from tunesmith.serve import fast as fast_mod

        why = fast_mod.supports(self.model)
        if engine == "transformers" or (engine == "auto" and (why or self.device != "cpu")):
            if int8:
                raise ConfigError("--int8 needs the fast engine" + (f", which does not support this model: {why}"
                                                                     if why else " (drop --engine transformers)"))
            return
        if why:
            raise ConfigError(f"--engine fast does not support this model: {why}")
        self.fast = fast_mod.FastLlama(self.model, int8=int8, rows=self.limits.max_batch)
        self.fast_check = fast_mod.check_against(self.fast, self.model, self.chat_prompt(
            [{"role": "user", "content": "Say hello."}]))
        log.info("%s engine vs transformers at start-up: %s", self.engine_name, self.fast_check)
        if not int8 and self.fast_check["max_abs_diff"] > fast_mod.EXACT_TOLERANCE:
            log.warning("fast engine disagrees with transformers (%s); serving with transformers", self.fast_check)
            self.fast = None

    def _compile(self) -> None:
        """Compile the single-row decode step (serve --compile) and check it against the eager step."""
        from tunesmith.serve import fast as fast_mod
        from tunesmith.serve.compiled import CompiledStep

        if self.fast is None:
            raise ConfigError("--compile needs the fast engine (a Llama-shaped model on a CPU)")
        capacity = min(self.context, self.limits.max_prompt_tokens + self.limits.max_tokens)
        compiled = CompiledStep(self.fast, capacity)
        try:
            seconds = compiled.warm_up()
        except Exception as e:  # inductor needs a working C++ compiler; say so instead of a traceback
            raise ConfigError(f"--compile: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); serve "
                              "without --compile") from e
        check = compiled.check(self.chat_prompt([{"role": "user", "content": "Say hello."}]))
        log.info("compiled decode step: %.1f s to compile; against the eager step: %s", seconds, check)
        if not self.fast.int8 and check["max_abs_diff"] > fast_mod.EXACT_TOLERANCE:
            log.warning("compiled decode step disagrees with the eager one (%s); serving without it", check)
            return
        self.compiled = compiled

    # -- models ---------------------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return [self.base_id, *self.adapters]

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load an adapter under `name`; waits for the running batch to finish."""
        if not ADAPTER_NAME.match(name):
            raise ApiError(400, f"adapter name '{name}': use letters, digits and . _ : - (at most 64)",
                           param="name")
        folder, expected = adapter_folder(path)
        self._check_base(folder, expected)
        from tunesmith.retrieval import for_run

        found = for_run(path)  # a run trained with notes (--rag) answers with notes
        with self._model_lock:
            if name == self.base_id or name in self.adapters:
                raise ApiError(409, f"model '{name}' is already served; pick another name or delete it first",
                               param="name", code="model_exists")
            if self.fast is not None:
                self._fast_adapters[name] = in_own_thread(lambda: self._read_fast_adapter(name, folder))
            else:
                in_own_thread(lambda: self._load(name, folder))
            self.adapters[name] = folder
            self._notes.pop(name, None)
            if found:
                self._notes[name] = found[0]
        log.info("adapter %s loaded from %s%s", name, folder,
                 f"; it answers with notes retrieved from {found[1]}" if found else "")

    def with_notes(self, model_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with retrieved notes in the system message when `model_id` is an adapter trained with them
        (`train --rag`): it answers as it was trained (`retrieval.training_notes`)."""
        from tunesmith.retrieval import answer_with_notes

        retriever = self._notes.get(model_id)
        return messages if retriever is None else answer_with_notes(retriever, messages, self.tokenizer)

    def remove_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise ApiError(404, f"adapter '{name}' is not loaded", param="name", code="model_not_found")
        with self._model_lock:
            del self.adapters[name]
            self._notes.pop(name, None)
            if self.fast is not None:  # rows already decoding keep their copy of the weights until they finish
                del self._fast_adapters[name]
            elif self.adapters:
                self.model.delete_adapter(name)
            else:  # PEFT keeps a dangling active adapter when the last one goes: unwrap the base instead
                self.model = self.model.unload()

    def _check_base(self, folder: Path, expected: str | None) -> None:
        """A run folder records its base model's hash: refuse an adapter trained on other weights."""
        check_fingerprint(self.base, expected, where=str(folder))

    def _load(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            with warnings.catch_warnings():
                # PEFT calls an API transformers 5 deprecates; nothing for the user to act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(folder), adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{folder}: cannot load adapter on '{self.base_id}': {first[:300]}") from None
        self.model.eval()

    def _read_fast_adapter(self, name: str, folder: Path) -> Adapter:
        from tunesmith.serve.lora_rows import read_adapter

        assert self.fast is not None
        try:
            return read_adapter(name, folder, self.fast)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{folder}: cannot load adapter on '{self.base_id}': {first[:300]}") from None

    @contextmanager
    def _use(self, model_id: str) -> Iterator[None]:
        """Route forward passes to one adapter, or to the bare base model."""
        if model_id != self.base_id:
            self.model.set_adapter(model_id, inference_mode=True)
            yield
        elif self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            yield

    # -- requests -------------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message]) -> list[int]:
        try:
            return encode_prompt(self.tokenizer, messages)
        except Exception as e:  # a template may raise on roles or orders it does not support
            raise ApiError(400, f"messages: the chat template rejected them: {e}", param="messages") from None

    def text_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def submit(self, model_id: str, prompt_ids: list[int], params: SamplingParams,
               emit: Callable[[Step | ApiError], None]) -> Job:
        """Check a request against the limits and queue it. Raises ApiError (404/400/503)."""
        if model_id not in self.model_ids():
            raise ApiError(404, f"model '{model_id}' does not exist; served: {', '.join(self.model_ids())}",
                           param="model", code="model_not_found")
        self._check_lengths(len(prompt_ids), params.max_tokens)
        job = Job(model_id, new_row(self.tokenizer, prompt_ids, params), emit)
        with self._cond:
            if len(self._queue) + self._running >= self.limits.max_queue:
                raise ApiError(503, f"server busy: {self.limits.max_queue} requests in flight; retry shortly",
                               type="server_error", code="server_busy")
            self._queue.append(job)
            self._cond.notify()
        return job

    def default_max_tokens(self, prompt_tokens: int) -> int:
        """max_tokens when a chat request gives none: the server limit, within the context window."""
        return max(1, min(self.limits.max_tokens, self.context - prompt_tokens))

    def _check_lengths(self, prompt: int, max_tokens: int) -> None:
        limit = min(self.limits.max_prompt_tokens, self.context - 1)
        if prompt > limit:
            raise ApiError(400, f"prompt has {prompt} tokens; this server accepts at most {limit}",
                           param="messages", code="context_length_exceeded")
        if max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {self.limits.max_tokens}",
                           param="max_tokens", code="max_tokens_exceeded")
        if prompt + max_tokens > self.context:
            raise ApiError(400, f"prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                           f"context window of {self.context} tokens", param="max_tokens",
                           code="context_length_exceeded")

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._queue), "running": self._running, "batches": self._batches,
                    "largest_batch": self._largest_batch, "engine": self.engine_name}

    # -- the worker -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = 0

    def _next_batch(self) -> list[Job] | None:
        """The oldest live request and the queued ones for the same model (FIFO across models).

        While fewer than `max_batch` wait and more keep arriving, hold on `batch_window_s` after the latest
        arrival (at most 5 windows in all): requests sent together then share one batch instead of
        queueing behind the first one's whole reply.
        """
        started, seen, deadline = 0.0, 0, 0.0
        with self._cond:
            while not self._closing:
                self._queue = [j for j in self._queue if not j.row.cancelled]
                if not self._queue:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if len(self._queue) < self.limits.max_batch:
                    started = started or now
                    if len(self._queue) > seen:
                        seen = len(self._queue)
                        window = self.limits.batch_window_s
                        deadline = min(now + window, started + 5 * window)
                    if deadline > now:
                        self._cond.wait(deadline - now)
                        continue
                return self._take(self._pick(self._queue))
            return None

    def _take(self, batch: list[Job]) -> list[Job]:
        self._queue = [j for j in self._queue if j not in batch]
        self._running = len(batch)
        self._batches += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        return batch

    def _pick(self, queue: list[Job]) -> list[Job]:
        """The head request plus same-model ones, while rows x longest prompt stays within the token budget."""
        head, batch, width = queue[0], [], 0
        for job in queue:
            if job.model_id != head.model_id or len(batch) == self.limits.max_batch:
                continue
            wider = max(width, len(job.row.prompt_ids))
            if batch and (len(batch) + 1) * wider > self.limits.max_batch_tokens:
                continue
            batch.append(job)
            width = wider
        return batch

    def _run(self, batch: list[Job]) -> None:
        import torch

        with self._model_lock:
            model_id = batch[0].model_id
            if model_id not in self.model_ids():  # deleted while queued
                error = ApiError(404, f"model '{model_id}' was removed", param="model", code="model_not_found")
                for job in batch:
                    job.emit(error)
                return
            try:
                with torch.inference_mode(), self._use(model_id):
                    for step in decode(self.model, [j.row for j in batch], self.eos_ids, self.pad_id):
                        batch[step.index].emit(step)
            except Exception:
                log.exception("generation failed for %d request(s) on %s", len(batch), model_id)
                error = ApiError(500, "generation failed inside the server; see its log", type="server_error")
                for job in batch:
                    if not job.row.done:
                        job.emit(error)

    # -- the fast worker: continuous batching ---------------------------------------------------------

    def _loop_fast(self) -> None:
        from tunesmith.serve.batcher import LiveBatch

        assert self.fast is not None
        batch = LiveBatch(self.fast, self.eos_ids, self.pad_id, self.compiled)
        while (jobs := self._admissions(batch)) is not None:
            with self._model_lock:
                try:
                    batch.admit(self._live(jobs))
                    batch.step()
                except Exception:
                    log.exception("generation failed for %d request(s)", len(batch))
                    batch.fail(ApiError(500, "generation failed inside the server; see its log", type="server_error"))
            with self._cond:
                self._running = len(batch)

    def _admissions(self, batch: LiveBatch) -> list[Job] | None:
        """Queued requests that join the batch now ([] while it is full); None once closing and drained.

        An idle worker holds on the batch window, as `_next_batch` does, so that requests sent together are
        prefilled together; a busy one takes whatever is queued at each step.
        """
        started, seen, deadline = 0.0, 0, 0.0
        with self._cond:
            while True:
                self._queue = [j for j in self._queue if not j.row.cancelled]
                if self._closing:
                    return [] if len(batch) else None
                if not self._queue and not len(batch):
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if not len(batch) and len(self._queue) < self.limits.max_batch:
                    started = started or now
                    if len(self._queue) > seen:
                        seen, window = len(self._queue), self.limits.batch_window_s
                        deadline = min(now + window, started + 5 * window)
                    if deadline > now:
                        self._cond.wait(deadline - now)
                        continue
                take = self._fill(self.limits.max_batch - len(batch), [n.row for n in batch.live])
                self._queue = [j for j in self._queue if j not in take]
                self._running = len(batch) + len(take)
                if take:
                    self._batches += 1
                self._largest_batch = max(self._largest_batch, self._running)
                return take

    def _fill(self, free: int, live: list[Row]) -> list[Job]:
        """Oldest first, any model, while rows x (longest prompt + max_tokens) of the whole running batch stays
        within the token budget (the KV cache holds that much); a request alone always fits."""
        take: list[Job] = []
        span = max((len(r.prompt_ids) + r.params.max_tokens for r in live), default=0)
        for job in self._queue:
            if len(take) == free:
                break
            wider = max(span, len(job.row.prompt_ids) + job.row.params.max_tokens)
            if (live or take) and (len(live) + len(take) + 1) * wider > self.limits.max_batch_tokens:
                continue  # waits for rows to finish, as a longer prompt waits in `_pick`
            take.append(job)
            span = wider
        return take

    def _live(self, jobs: list[Job]) -> list[Any]:
        """Jobs as batch rows with their adapter weights; a job whose model was removed meanwhile gets 404."""
        from tunesmith.serve.batcher import Live

        rows = []
        for job in jobs:
            if job.model_id != self.base_id and job.model_id not in self._fast_adapters:
                job.emit(ApiError(404, f"model '{job.model_id}' was removed", param="model", code="model_not_found"))
                continue
            rows.append(Live(job.row, job.emit, self._fast_adapters.get(job.model_id)))
        return rows

    def close(self) -> None:
        """Stop the worker after the running batch; queued requests are told the server is stopping."""
        with self._cond:
            self._closing = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for job in pending:
            job.emit(ApiError(503, "server is shutting down", type="server_error", code="shutting_down"))
        self._worker.join(timeout=30)
