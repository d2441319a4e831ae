"""Memory-lean building blocks swapped into the model for training only; results are unchanged.

`silu(gate) * up` in a gated MLP normally keeps three (tokens x intermediate) tensors for the backward
pass: gate (for SiLU), silu(gate) and up (for the product). The fused version keeps gate and up and
recomputes the cheap elementwise SiLU in the backward pass: a third less MLP activation memory.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up. With s = sigmoid(gate): d/dgate = up * s * (1 + gate * (1 - s)), d/dup = gate * s."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        s = torch.sigmoid(gate)
        d_up = grad * gate * s
        d_gate = grad * up * s * (1 + gate * (1 - s))
        return d_gate, d_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SiluMul.apply(gate, up)


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _is_silu(act: nn.Module) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def fuse_gated_mlps(model: nn.Module) -> list[nn.Module]:
    """Use `silu_mul` in every Llama-style gated MLP (gate_proj, up_proj, down_proj, SiLU); return them."""
    fused = []
    for module in model.modules():
        parts = [getattr(module, a, None) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")]
        if all(p is not None for p in parts) and _is_silu(parts[3]):
            module.forward = types.MethodType(_gated_mlp_forward, module)
            fused.append(module)
    return fused


def unfuse(modules: list[nn.Module]) -> None:
    """Give the modules `fuse_gated_mlps` changed their own forward back."""
    for module in modules:
        vars(module).pop("forward", None)
