"""Render examples with the tokenizer's chat template and build completion-only labels; encode documents.

A chat example is a list of chat messages (and, for tool calling, its tools). The text trained on is exactly
the chat template's rendering, so what the model learns matches what inference feeds it
(`add_generation_prompt=True`). Labels are set only on assistant turns (their tool calls included, never tool
results; not on turns with `weight` 0), and each turn's end-of-turn token (EOS) is supervised so the model
learns to stop. Tool conversations are rendered as `tool_template.template_view` says. Masks come from
character spans mapped through the fast tokenizer's offsets: no guessing of token boundaries.

A document (the `text` format) is plain text for language modelling: every token is a label, EOS ends it,
and one longer than max_length is split into consecutive pieces, so nothing is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.tool_template import template_view
from tunesmith.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label of a position that is not trained on (PyTorch's cross-entropy ignore_index)

Message = dict[str, Any]  # {"role", "content"} (+ "name", "weight", "tool_calls", "tool_call_id")
Tools = list[dict[str, Any]] | None  # OpenAI tool definitions


@dataclass(frozen=True)
class Encoded:
    """One tokenized example. `labels[i]` is the target for predicting token i (unshifted)."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation
    supervised_lost: int  # supervised tokens cut off by max_length
    roundtrip_ok: bool  # each assistant turn's prompt tokens equal what inference would feed
    position_ids: list[int] | None = None  # packed rows: restart at 0 for each example (see train/batching.py)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def targets(self) -> int:
        """Supervised next-token targets: labels after the shift (a label at position 0 is never predicted)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


def render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, generation_prompt: bool, tools: Tools = None
) -> str:
    """The chat template's text for `messages` (no tokenization)."""
    view, extra = template_view(tokenizer, list(messages), tools)
    return _apply(tokenizer, view, generation_prompt, extra)


def _apply(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool,
           extra: dict[str, Any]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **extra)


def supervised_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], tools: Tools = None
) -> tuple[str, list[tuple[int, int]], list[str]]:
    """Full text, the character span of each trained assistant reply (content + EOS), and each reply's prompt."""
    eos = tokenizer.eos_token or ""
    view, extra = template_view(tokenizer, list(messages), tools)
    full = _apply(tokenizer, view, False, extra)
    spans: list[tuple[int, int]] = []
    prompts: list[str] = []
    for i, m in enumerate(view):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        prompt = _apply(tokenizer, view[:i], True, extra)
        upto = _apply(tokenizer, view[: i + 1], False, extra)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise DataError(
                ["chat template: rendering is not incremental (a turn changes earlier text); "
                 "completion-only labels cannot be placed. Use a model whose template keeps history."]
            )
        turn = upto[len(prompt):]
        cut = turn.rfind(eos) if eos else -1
        if cut >= 0:
            end = len(prompt) + cut + len(eos)
        elif i == len(view) - 1:
            full += eos  # template emits no EOS: append it so the model learns to stop
            end = len(full)
        else:
            end = len(upto)
        spans.append((len(prompt), end))
        prompts.append(prompt)
    return full, spans, prompts


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], max_length: int | None = None,
    tools: Tools = None,
) -> Encoded:
    """Tokenize one example; labels on assistant replies only; truncate on the right to `max_length`."""
    full, spans, prompts = supervised_spans(tokenizer, messages, tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        for t, (a, b) in enumerate(offsets):
            if b > a and a >= start and a < end:
                labels[t] = ids[t]
    roundtrip = all(_is_prefix(tokenizer, p, ids) for p in prompts)
    n = len(ids)
    lost = 0
    if max_length is not None and n > max_length:
        lost = sum(1 for x in labels[max_length:] if x != IGNORE)
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels, full_length=n, supervised_lost=lost, roundtrip_ok=roundtrip)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int | None = None) -> list[Encoded]:
    """A document as pieces of at most `max_length` tokens, every token a label, EOS at the end.

    The tokenizer adds its own special tokens (a BOS for models that start text with one), as in
    pre-training. A last piece of one token is left out: nothing in its piece comes before it to predict it.
    """
    ids: list[int] = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    step = max_length or len(ids)
    pieces = [ids[i : i + step] for i in range(0, len(ids), step)]
    return [Encoded(p, list(p), full_length=len(p), supervised_lost=0, roundtrip_ok=True)
            for p in pieces if len(p) > 1]


def encode_row(
    tokenizer: PreTrainedTokenizerBase, content: Sequence[Message] | str, max_length: int | None = None,
    tools: Tools = None,
) -> list[Encoded]:
    """What training sees of one example: a chat example (with its tools) encoded, or a document's pieces."""
    if isinstance(content, str):
        return encode_text(tokenizer, content, max_length)
    return [encode(tokenizer, content, max_length, tools=tools)]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], tools: Tools = None) -> list[int]:
    """Token ids inference feeds the model for a reply to `messages` (generation prompt added)."""
    text = render(tokenizer, messages, generation_prompt=True, tools=tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _is_prefix(tokenizer: PreTrainedTokenizerBase, prompt: str, ids: list[int]) -> bool:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return list(ids[: len(p)]) == list(p)
