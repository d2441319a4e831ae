"""Memory-lean building blocks swapped into the model for training only; results are unchanged.

`silu(gate) * up` in a gated MLP normally keeps three (tokens x intermediate) tensors for the backward
pass: gate (for SiLU), silu(gate) and up (for the product). The fused version keeps gate and up and
recomputes the cheap elementwise SiLU in the backward pass: a third less MLP activation memory.

RMSNorm as transformers writes it (upcast, square, mean, rsqrt, scale, downcast, weight) keeps an fp32
copy of its input and the normalised tensor for backward, and runs some ten elementwise passes forward and
back. The fused version computes the same forward, op for op, and keeps only its input and one rsqrt per
token; the backward pass is the closed form below.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up. With s = sigmoid(gate): d/dgate = up * s * (1 + gate * (1 - s)), d/dup = silu(gate)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        # aten's silu_backward is the d/dgate formula in one pass (fp32 inside, also for bf16 inputs).
        d_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return d_gate, grad * F.silu(gate)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SiluMul.apply(gate, up)


class _RMSNorm(torch.autograd.Function):
    """y = w * (x * rstd).to(dtype) with rstd = 1 / sqrt(mean(x^2) + eps), computed in fp32.

    With n = x * rstd and g = dL/dy * w (fp32): dL/dx = rstd * (g - n * mean(g * n)); dL/dw = sum(dL/dy * n).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        n = x.float() * rstd
        d_x = d_w = None
        if ctx.needs_input_grad[0]:
            g = grad.float() * weight.float()
            d_x = (rstd * (g - n * (g * n).mean(-1, keepdim=True))).to(x.dtype)
        if ctx.needs_input_grad[1]:
            d_w = (grad.float() * n.to(x.dtype)).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype)
        return d_x, d_w, None


def _rms_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon)


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _is_silu(act: nn.Module) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def _patch(model: nn.Module, matches: Callable[[nn.Module], bool], forward: Callable) -> list[nn.Module]:
    patched = []
    for module in model.modules():
        if matches(module):
            module.forward = types.MethodType(forward, module)
            patched.append(module)
    return patched


def fuse_gated_mlps(model: nn.Module) -> list[nn.Module]:
    """Use `silu_mul` in every Llama-style gated MLP (gate_proj, up_proj, down_proj, SiLU); return them."""
    def gated(m: nn.Module) -> bool:
        parts = [getattr(m, a, None) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")]
        return all(p is not None for p in parts) and _is_silu(parts[3])

    return _patch(model, gated, _gated_mlp_forward)


def fuse_rms_norms(model: nn.Module) -> list[nn.Module]:
    """Use `_RMSNorm` in every Llama-style RMSNorm (a 1-D `weight` and `variance_epsilon`); return them."""
    def rms(m: nn.Module) -> bool:
        w = getattr(m, "weight", None)
        return (type(m).__name__.endswith("RMSNorm") and isinstance(w, torch.Tensor) and w.ndim == 1
                and isinstance(getattr(m, "variance_epsilon", None), float))

    return _patch(model, rms, _rms_norm_forward)


def unfuse(modules: list[nn.Module]) -> None:
    """Give the modules a `fuse_*` function changed their own forward back."""
    for module in modules:
        vars(module).pop("forward", None)
