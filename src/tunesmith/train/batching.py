"""Length-bucketed micro-batches: rows of similar length share a batch, so padding costs almost nothing.

The order is a pure function of (seed, epoch): a resumed run replays exactly the batches it missed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunesmith.data.tokenize import IGNORE, Encoded

if TYPE_CHECKING:
    import torch

BUCKET_BATCHES = 64  # sort within windows of this many batches: local length order, global randomness


@dataclass
class Batch:
    """One micro-batch, right-padded."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE where not trained on
    tokens: int  # real (non-pad) tokens
    targets: int  # supervised next-token targets (labels after the shift)

    def to(self, device: str | torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.tokens,
            self.targets,
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


def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    tokens = int(mask.sum())
    targets = sum(e.targets for e in examples)
    return Batch(ids, mask, labels, tokens, targets)
