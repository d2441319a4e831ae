"""Token generation with a KV cache: sampling, stop strings, streaming deltas, several rows in one batch.

One decode loop serves the CLI (one row) and the server (a batch of requests for the same model). Each row
has its own sampling settings and random generator, so a row's output does not depend on what it was
batched with. Rows are left-padded; the attention mask hides the padding and `position_ids` count real
tokens only, so a padded row computes what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


# One default for every way of using a model: `generate`, `chat` and requests to `serve` that give none
# (OpenAI's API samples at 1 by default; a fine-tuned model is judged by what it answers, so greedy here).
DEFAULT_TEMPERATURE = 0.0


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy; `seed` makes sampling reproducible."""

    max_tokens: int = 256
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """What one decode step produced for row `index`: new text, and why it finished (None while running)."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0


class StopText:
    """Incremental detokenization that never emits text a stop string might still claim.

    The whole completion is decoded each step (byte-level tokens can split a character), and text is held
    back while it ends with a partial character or with the beginning of a stop string.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.text = ""  # the completion so far, cut at a stop string once one is found
        self.emitted = 0  # characters of `text` already handed out

    def add(self, token: int) -> tuple[str, bool]:
        """Append a token; return (text safe to emit now, whether a stop string was reached)."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hit = self._find_stop()
        if hit is not None:
            self.text = self.text[:hit]
            return self.flush(), True
        safe = len(self.text.rstrip("\ufffd"))
        safe -= _partial_stop(self.text[:safe], self.stop)
        return self._emit_upto(safe), False

    def flush(self) -> str:
        """Everything not yet emitted (at the end, held-back text is real text)."""
        return self._emit_upto(len(self.text))

    def _find_stop(self) -> int | None:
        if not self.stop:
            return None
        start = max(0, self.emitted - max(len(s) for s in self.stop))
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _emit_upto(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        out = self.text[self.emitted : end]
        self.emitted = end
        return out


def _partial_stop(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


@dataclass
class Row:
    """One sequence being generated. `cancelled` may be set from another thread (client went away)."""

    prompt_ids: list[int]
    params: SamplingParams
    text: StopText
    generator: torch.Generator | None = None
    generated: int = 0
    finish_reason: FinishReason | None = None
    cancelled: bool = field(default=False, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    def push(self, token: int, eos_ids: set[int]) -> str:
        """Record a sampled token; return the text it releases and set `finish_reason` when finished."""
        self.generated += 1
        if token in eos_ids:
            self.finish_reason = "stop"
            return self.text.flush()
        delta, stopped = self.text.add(token)
        if stopped:
            self.finish_reason = "stop"
        elif self.generated >= self.params.max_tokens:
            self.finish_reason = "length"
            delta += self.text.flush()
        return delta


def new_row(tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], params: SamplingParams) -> Row:
    """A row ready to decode; sampling rows get their own generator (seeded, or from the global RNG)."""
    import torch

    generator = None
    if params.temperature > 0:
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
    return Row(list(prompt_ids), params, StopText(tokenizer, params.stop), generator)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Tokens that end a reply: the tokenizer's EOS plus whatever the model's generation config lists."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def sample(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """One token per row from (B, V) float logits on the CPU: argmax, or temperature + top-p sampling."""
    import torch

    out: list[int] = []
    for b, row in enumerate(rows):
        p = row.params
        if p.temperature <= 0:
            out.append(int(logits[b].argmax()))
            continue
        probs = torch.softmax(logits[b] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            probs = top_p_filter(probs, p.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return out


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`; renormalize. (V,) -> (V,)"""
    import torch

    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above
    sorted_probs[before >= top_p] = 0.0  # the top token always survives (before == 0)
    kept = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return kept / kept.sum()


def decode(model: PreTrainedModel, rows: Sequence[Row], eos_ids: set[int], pad_id: int) -> Iterator[Step]:
    """Generate all rows together with one KV cache; yield each row's new text as it appears.

    Finished rows leave the batch (their cache rows are dropped), so a long reply does not make short
    ones pay. Caller holds `torch.inference_mode()` and owns the model for the duration.
    """
    import torch
    from transformers import DynamicCache

    device = model.device
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 in every row
    cache = DynamicCache(config=model.config)
    active = list(range(len(rows)))  # batch position -> row index
    logits = _forward(model, ids, mask, positions, cache)  # (B, V), waits on the device
    while True:
        tokens = sample(logits, [rows[i] for i in active])
        keep: list[int] = []
        for b, i in enumerate(active):
            row = rows[i]
            if row.cancelled:
                continue
            text = row.push(tokens[b], eos_ids)
            if text or row.finish_reason:
                yield Step(i, text, row.finish_reason, row.generated)
            if not row.done:
                keep.append(b)
        if not keep:
            return
        if len(keep) < len(active):
            select = torch.tensor(keep, device=device)
            cache.batch_select_indices(select)
            mask, positions = mask[select], positions[select]
            active = [active[b] for b in keep]
        step_ids = torch.tensor([[tokens[b]] for b in keep], device=device)  # (B, 1)
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = _forward(model, step_ids, mask, positions, cache)


def _forward(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object
) -> torch.Tensor:
    """Last-position logits as float32 on the CPU, where sampling happens (seeds stay device-independent)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1, :].float().cpu()


def stream(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], params: SamplingParams
) -> Iterator[Step]:
    """Generate one reply, yielding text deltas; the last step carries `finish_reason`."""
    import torch

    row = new_row(tokenizer, prompt_ids, params)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        yield from decode(model, [row], stop_token_ids(model, tokenizer), pad)


def inference_dtype(device: str) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there); bfloat16 on an accelerator."""
    import torch

    return torch.float32 if device == "cpu" else torch.bfloat16
