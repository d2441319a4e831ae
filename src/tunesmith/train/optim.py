"""AdamW with decay on matrices only, and a warm-up + cosine/linear/constant schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.config import Schedule


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    """AdamW over trainable parameters; norms, biases (1-D) are not decayed.

    The fused kernel on CPU as on CUDA: one pass per tensor with no temporaries. On CPU its step is ~6x
    the default per-tensor loop's speed for a 135M-parameter full fine-tune (1.3 s against 7.7 s, 2 threads,
    A/B in one process), the updates equal to fp32 rounding (max difference 6e-7).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.startswith(("cuda", "cpu"))
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def lr_factor(step: int, total: int, warmup_steps: int, schedule: Schedule) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: float, schedule: Schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = round(warmup * total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup_steps, schedule)
    )
