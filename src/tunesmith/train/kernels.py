"""Memory-lean building blocks swapped into the model for training only; results are unchanged.

`silu(gate) * up` in a gated MLP normally keeps three (tokens x intermediate) tensors for the backward
pass: gate (for SiLU), silu(gate) and up (for the product). The fused version keeps gate and up and
recomputes the cheap elementwise SiLU in the backward pass: a third less MLP activation memory.

RMSNorm as transformers writes it (upcast, square, mean, rsqrt, scale, downcast, weight) keeps an fp32
copy of its input and the normalised tensor for backward, and runs some ten elementwise passes forward and
back. The fused version computes the same forward, op for op, and keeps only its input and one rsqrt per
token; the backward pass is the closed form below.

A LoRA linear layer as PEFT runs it computes W x, then A x, B (A x), a scaled copy and a sum: three
(tokens x out) temporaries forward, and in backward a multiply by the scale plus a second input gradient
(B A's) that autograd adds to W's. The fused version adds s B (A x) into W x in place (one addmm), keeps
only A x (tokens x r) besides the input, and accumulates both input gradients into one tensor.

On a CPU, SDPA's backward pass is about 4x slower in bf16 than in fp32 (6.5 against 1.8 ms a layer on the
built-in model at batch 8), so under bf16 on a CPU attention runs in fp32: q, k and v are cast up and the
output back down, an exact fp32 attention of the bf16 inputs (transformers' own SDPA function, registered as
its own attention implementation, `FP32_SDPA`).
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


class _LoraLinear(torch.autograd.Function):
    """y = x W^T (+ bias) + s (xd A^T) B^T for a frozen W, where xd is x after LoRA's dropout (x itself at 0).

    With g = dL/dy and gh = s g B (tokens x r): dL/dx = g W (+ gh A when xd is x), dL/dxd = gh A,
    dL/dA = gh^T xd, dL/dB = s g^T (xd A^T). W's gradient is never formed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, xd: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
        xa = xd @ a.t()  # (..., r)
        out = F.linear(x, weight, bias)
        out.view(-1, out.shape[-1]).addmm_(xa.reshape(-1, a.shape[0]), b.t(), alpha=scaling)
        ctx.same, ctx.scaling = xd is x, scaling
        ctx.save_for_backward(xd, xa, weight, a, b)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xd, xa, weight, a, b = ctx.saved_tensors
        need_x, need_xd, need_a, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 4, 5))
        g = grad.reshape(-1, grad.shape[-1])  # (N, out)
        gh = (g @ b).mul_(ctx.scaling)  # (N, r)
        d_x = d_xd = d_a = d_b = None
        if need_x:
            d_x = g @ weight  # (N, in)
            if ctx.same:
                d_x.addmm_(gh, a)
            d_x = d_x.view(*grad.shape[:-1], -1)
        if need_xd and not ctx.same:
            d_xd = (gh @ a).view(*grad.shape[:-1], -1)
        if need_a:
            d_a = gh.t() @ xd.reshape(-1, xd.shape[-1])
        if need_b:
            d_b = (g.t() @ xa.reshape(-1, xa.shape[-1])).mul_(ctx.scaling)
        return d_x, d_xd, None, None, d_a, d_b, None


def _lora_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's `lora.Linear.forward` for one plain adapter on a frozen fp32/bf16 base, through `_LoraLinear`;
    anything else (several or disabled adapters, merged weights, mixed dtypes) takes PEFT's own.

    Under autocast the base and the input must be in autocast's dtype (a bf16 base under bf16 autocast); the
    fp32 adapters are cast to it, as autocast would cast them for PEFT's products, and their gradients come
    back in fp32."""
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (args or kwargs or name is None or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant):
        return type(self).forward(self, x, *args, **kwargs)
    base, a, b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else a.dtype
    if not (x.dtype == base.weight.dtype == dtype and (base.bias is None or base.bias.dtype == dtype)
            and a.dtype == b.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    a, b = a.to(dtype), b.to(dtype)
    return _LoraLinear.apply(x, self.lora_dropout[name](x), base.weight, base.bias, a, b, self.scaling[name])


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


def fuse_lora_linears(model: nn.Module) -> list[nn.Module]:
    """Use `_LoraLinear` in every PEFT LoRA linear layer over a frozen `nn.Linear`; return them."""
    def plain(m: nn.Module) -> bool:
        base = getattr(m, "base_layer", None)
        return (type(m).__name__ == "Linear" and hasattr(m, "lora_A") and type(base) is nn.Linear
                and not any(p.requires_grad for p in base.parameters()))

    return _patch(model, plain, _lora_forward)


FP32_SDPA = "tunesmith_sdpa_fp32"


def _sdpa_fp32(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):  # autocast would cast q, k and v back to bf16
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


def fp32_attention(model: nn.Module) -> bool:
    """Run a CPU model's SDPA attention in fp32 (for bf16 training); False where it does not apply (another
    attention implementation, a GPU)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    weight = next(model.parameters(), None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or weight is None or weight.device.type != "cpu":
        return False
    AttentionInterface.register(FP32_SDPA, _sdpa_fp32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_SDPA, sdpa_mask)  # the masks SDPA takes
    config._attn_implementation = FP32_SDPA
    return True


def unfuse(modules: list[nn.Module]) -> None:
    """Give the modules a `fuse_*` function changed their own forward back."""
    for module in modules:
        vars(module).pop("forward", None)
