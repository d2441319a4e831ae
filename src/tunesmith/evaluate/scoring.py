"""Score a model on text without sampling: log-likelihoods of given continuations, and greedy replies.

Three cheap, deterministic measurements cover the whole suite:
- `greedy_match`: teacher-forced greedy decoding. The reply `prefix + answer` is fed in one forward pass; the
  item is right when every answer token is the model's top-1 choice, i.e. exactly when greedy decoding,
  having written the prefix, would write the answer. One pass per item, no generation loop.
- `choose`: multiple choice by log-likelihood, normalised per character so long and short choices compete
  fairly (lm-evaluation-harness calls this `acc_norm`).
- `text_nll`: negative log-likelihood of a plain text (perplexity).
`generate` (short greedy replies) is kept for what needs the model's own words (refusals, task outputs).

Sequences are left-padded so that their ends line up: only the last positions' logits are computed
(`logits_to_keep`), which skips most of the LM head on chat prompts. Position ids follow the attention
mask, so padding changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.tokenize import Message, render
from tunesmith.model.loading import pad_token_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKENS_PER_BATCH = 1024  # padded tokens per forward pass: bounds the (B, T, vocab) logits in memory


@dataclass(frozen=True)
class Scored:
    """Log-probabilities of the scored tail of one sequence, and whether each token was the top choice."""

    logprobs: list[float]
    top1: list[bool]

    @property
    def total(self) -> float:
        return sum(self.logprobs)


def chat_prefix(tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[Message]) -> str:
    """The text inference feeds the model before its reply (chat template + generation prompt)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return render(tokenizer, messages, generation_prompt=True)


def tail_tokens(tokenizer: PreTrainedTokenizerBase, head: str, tail: str) -> tuple[list[int], int]:
    """Tokens of `head + tail` and how many of the last ones cover `tail` (a token that straddles counts)."""
    enc = tokenizer(head + tail, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    start = len(head)
    n = sum(1 for a, b in enc["offset_mapping"] if b > start and b > a)
    return ids, max(1, min(n, len(ids) - 1))


def score_tails(model: PreTrainedModel, seqs: Sequence[tuple[list[int], int]], pad_id: int) -> list[Scored]:
    """For each (token ids, n): log p(x_t | x_<t) and top-1 flags of its last n tokens.

    Tokens every sequence starts with (the chat template's system block) are run once and their KV cache
    reused by every batch; that halves the work on short chat items.
    """
    assert all(0 < n < len(ids) for ids, n in seqs), "score at least one token, never the first"
    shared = _shared_length(seqs) if _cache_arg(model) else 0
    prefix = _prefix_cache(model, seqs[0][0][:shared]) if shared >= MIN_SHARED else None
    cut = shared if prefix is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out: list[Scored | None] = [None] * len(seqs)
    for batch in _batches(order, [len(s[0]) - cut for s in seqs]):
        rows = [(seqs[i][0][cut:], seqs[i][1]) for i in batch]
        for i, scored in zip(batch, _score_batch(model, rows, pad_id, prefix, cut), strict=True):
            out[i] = scored
    return [s for s in out if s is not None]


MIN_SHARED = 4  # shortest common prefix worth caching


def _shared_length(seqs: Sequence[tuple[list[int], int]]) -> int:
    """Length of the common token prefix, short enough that each sequence's scored logits come after it."""
    limit = min(len(ids) - n - 1 for ids, n in seqs)
    first = seqs[0][0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids, _ in seqs):
        length += 1
    return length


def _cache_arg(model: PreTrainedModel) -> str | None:
    """The forward() keyword that takes a KV cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _prefix_cache(model: PreTrainedModel, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=_device(model)), use_cache=True)
    return out["cache"] if "cache" in out else out["past_key_values"]


def _batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Consecutive groups of `order` (sorted by length) whose padded size stays under TOKENS_PER_BATCH."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > TOKENS_PER_BATCH:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _left_pad(
    seqs: Sequence[list[int]], pad_id: int, device: torch.device, offset: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded ids, mask and positions (positions start at `offset`, after a cached prefix)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + offset
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def _score_batch(
    model: PreTrainedModel, seqs: Sequence[tuple[list[int], int]], pad_id: int, prefix: Any, offset: int
) -> list[Scored]:
    import copy

    import torch

    keep = max(n for _, n in seqs) + 1  # logits at position t predict token t + 1
    inputs = _left_pad([s for s, _ in seqs], pad_id, _device(model), offset)
    targets = inputs["input_ids"][:, -(keep - 1):]  # (B, keep - 1)
    if prefix is not None:  # [cached prefix][pads][suffix]: the mask spans both
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(seqs))
        ones = torch.ones((len(seqs), offset), dtype=torch.long, device=inputs["attention_mask"].device)
        inputs["attention_mask"] = torch.cat([ones, inputs["attention_mask"]], dim=1)
        inputs[str(_cache_arg(model))] = cache
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=keep, use_cache=prefix is not None).logits.float()  # (B, keep, V)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, keep - 1, V)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
    top1 = (logprobs.argmax(-1) == targets).cpu()
    return [
        Scored(picked[row, -n:].tolist(), top1[row, -n:].tolist()) for row, (_, n) in enumerate(seqs)
    ]


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def greedy_match(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, str, str]]
) -> list[tuple[bool, float]]:
    """For (prompt, prefix, answer) items: would greedy decoding write `answer` right after `prefix`?

    Returns (correct, log p(answer)) per item. The answer is joined to a non-empty prefix by one space.
    """
    seqs = []
    for prompt, prefix, answer in items:
        head = chat_prefix(tokenizer, prompt) + (prefix + " " if prefix else "")
        seqs.append(tail_tokens(tokenizer, head, answer))
    scored = score_tails(model, seqs, pad_token_id(tokenizer))
    return [(all(s.top1), s.total) for s in scored]


def choose(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, Sequence[str]]]
) -> list[int]:
    """For (prompt, choices) items: the index of the choice with the highest log-likelihood per character."""
    seqs, owners = [], []
    for k, (prompt, choices) in enumerate(items):
        head = chat_prefix(tokenizer, prompt)
        for choice in choices:
            seqs.append(tail_tokens(tokenizer, head, choice))
            owners.append((k, len(choice)))
    scored = score_tails(model, seqs, pad_token_id(tokenizer))
    best: dict[int, tuple[float, int]] = {}
    counter: dict[int, int] = {}
    for (k, chars), s in zip(owners, scored, strict=True):
        j = counter.get(k, 0)
        counter[k] = j + 1
        value = s.total / max(chars, 1)
        if k not in best or value > best[k][0]:
            best[k] = (value, j)
    return [best[k][1] for k in range(len(items))]


def text_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens scored) of each plain text; its first token is context only."""
    seqs = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        seqs.append((ids, len(ids) - 1))
    scored = score_tails(model, seqs, pad_token_id(tokenizer))
    return [(-s.total, len(s.logprobs)) for s in scored]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Sequence[Message]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies (special tokens removed, stripped), batched with left padding."""
    seqs = [list(tokenizer(chat_prefix(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    return generate_ids(model, tokenizer, seqs, [max_new_tokens] * len(seqs), batch_size)


def generate_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seqs: Sequence[list[int]], budgets: Sequence[int],
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies to prompts given as token ids, each with its own token budget (a batch generates up to
    its largest; shorter budgets are cut after decoding)."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: (budgets[i], len(seqs[i])))
    replies = [""] * len(seqs)
    pad = pad_token_id(tokenizer)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs = _left_pad([seqs[i] for i in batch], pad, _device(model))
        inputs.pop("position_ids")  # generate() derives them from the mask
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=max(budgets[i] for i in batch), do_sample=False, pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        width = inputs["input_ids"].shape[1]
        for i, row in zip(batch, out, strict=True):
            replies[i] = tokenizer.decode(row[width : width + budgets[i]], skip_special_tokens=True).strip()
    return replies


