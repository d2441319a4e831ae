"""Length-bucketed micro-batches: rows of similar length share a batch, so padding costs almost nothing.

The order is a pure function of (seed, epoch): a resumed run replays exactly the batches it missed.

Packing puts several encoded examples in one row of up to max_length tokens. Each example's position ids
restart at 0; given position ids and no attention mask, transformers' masking (`find_packed_sequence_indices`
in `masking_utils`) lets a token attend only to earlier tokens with the same run of positions, so examples in
a row never see each other, and each is computed exactly as alone. The first token of every example is no
target, so no prediction crosses a boundary. `tunesmith.train.loss.CompletionLoss.check_packing` verifies the
model honours this before training starts.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tunesmith.data.tokenize import IGNORE, Encoded, encode_row

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.formats import Example

BUCKET_BATCHES = 64  # sort within windows of this many batches: local length order, global randomness
# `forward_tokens: auto` on a CPU. There the matrix products run at their peak from a few hundred rows (a
# 736 x 576 @ 576 x 1536 product on 2 cores reaches 93 % of a 1024-square one), so larger forward passes add
# activation memory and no speed: on the built-in model, 768 cut peak RSS by a fifth at the same tokens/s.
CPU_FORWARD_TOKENS = 768


@dataclass
class Batch:
    """One micro-batch, right-padded."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE where not trained on
    tokens: int  # real (non-pad) tokens
    targets: int  # supervised next-token targets (labels after the shift)
    position_ids: torch.Tensor | None = None  # (B, T) when a row is packed; None: 0..T-1 in every row

    def to(self, device: str | torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.tokens,
            self.targets,
            None if self.position_ids is None else self.position_ids.to(device, non_blocking=True),
        )


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of each micro-batch of one epoch: shuffled, then sorted by length inside windows."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(idx), window):
        group = sorted(idx[start : start + window], key=lambda i: lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def forward_budget(setting: str | int, device: str) -> int | None:
    """Padded tokens per forward pass (None: no limit) for the `forward_tokens` setting on `device`."""
    if setting == "auto":
        return CPU_FORWARD_TOKENS if device == "cpu" else None
    return int(setting) or None


def pieces(batch: list[int], lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """A micro-batch as forward passes of at most `budget` padded tokens each.

    Unsplit (the same list) when it fits. Otherwise its rows, sorted by length, are cut into the fewest runs
    of consecutive rows that fit (shortest first, a run closes where the next row would overflow it; a row
    longer than the budget runs alone), then evened out to as many runs of equal count where those fit too.
    The gradient is the same either way: the loss is a sum over targets, divided by the step's target count.
    """
    if budget is None or len(batch) * max(lengths[i] for i in batch) <= budget:
        return [batch]

    def fits(run: list[int]) -> bool:
        return len(run) == 1 or len(run) * lengths[run[-1]] <= budget

    rows = sorted(batch, key=lambda i: lengths[i])
    runs: list[list[int]] = [[]]
    for i in rows:
        if runs[-1] and not fits([*runs[-1], i]):
            runs.append([])
        runs[-1].append(i)
    size = math.ceil(len(rows) / len(runs))
    even = [rows[j : j + size] for j in range(0, len(rows), size)]
    return even if len(even) == len(runs) and all(map(fits, even)) else runs


def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    packed = any(e.position_ids is not None for e in examples)
    # Pads get positions of their own (0, 1, ...): a run that starts after every real token of the row.
    positions = torch.arange(width).repeat(len(examples), 1) if packed else None
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
        if positions is not None:
            positions[row, :n] = torch.tensor(e.position_ids if e.position_ids is not None else range(n))
            positions[row, n:] = torch.arange(width - n)
    tokens = int(mask.sum())
    targets = sum(e.targets for e in examples)
    return Batch(ids, mask, labels, tokens, targets, positions)


def pack(examples: Sequence[Encoded], max_length: int) -> list[Encoded]:
    """Rows of whole examples, each row at most `max_length` tokens, in few rows (best-fit decreasing).

    Longest first, each example goes to the row with the least room that still fits it, else to a new row:
    deterministic, and never more than 11/9 of the fewest rows possible, plus one. The rows' targets are
    exactly the examples' targets (`Encoded.targets` adds up).
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row), sorted
    for i in order:
        n = len(examples[i].input_ids)
        assert n <= max_length, "examples are truncated or split to max_length before packing"
        k = bisect.bisect_left(room, (n, -1))
        left, r = room.pop(k) if k < len(room) else (max_length, len(rows))
        if r == len(rows):
            rows.append([])
        rows[r].append(i)
        if left > n:
            bisect.insort(room, (left - n, r))
    return [join([examples[i] for i in row]) for row in rows]


def join(parts: Sequence[Encoded]) -> Encoded:
    """One packed row: tokens side by side, position ids restarting for each part, no target across parts."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in parts:
        ids += e.input_ids
        labels += [IGNORE, *e.labels[1:]]  # the token before it belongs to another example
        positions += e.position_ids if e.position_ids is not None else range(len(e.input_ids))
    return Encoded(ids, labels, full_length=sum(e.full_length for e in parts),
                   supervised_lost=sum(e.supervised_lost for e in parts),
                   roundtrip_ok=all(e.roundtrip_ok for e in parts), position_ids=positions)


def unpack(row: Encoded) -> list[Encoded]:
    """The examples of a packed row, one per run of position ids from 0 (the inverse of `join`)."""
    if row.position_ids is None:
        return [row]
    starts = [t for t, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
    return [replace(row, input_ids=row.input_ids[a:b], labels=row.labels[a:b], full_length=b - a,
                    supervised_lost=0, position_ids=None) for a, b in itertools.pairwise(starts)]


def training_rows(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[Example], max_length: int, *, packed: bool
) -> tuple[list[Encoded], int]:
    """Rows as training sees them, and how many examples were dropped for having no target within max_length.

    Chat examples are truncated to max_length; documents are split into max_length pieces. With `packed`, the
    encoded examples are packed into rows of max_length tokens.
    """
    kept, dropped = [], 0
    for row in rows:
        for enc in encode_row(tokenizer, row.content, max_length, tools=row.tools):
            if enc.targets == 0:
                dropped += 1  # the reply lies beyond max_length: nothing to learn from
                continue
            kept.append(enc)
    return (pack(kept, max_length) if packed else kept), dropped
