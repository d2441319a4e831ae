"""The hand-written backward passes in tunesmith.train.kernels against autograd through the plain ops."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunesmith.model.loading import load_model
from tunesmith.train import kernels


def _err(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a.double() - truth).abs().max() / truth.abs().max())


def _rms_case(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-6)
    norm.weight.data = 1 + 0.1 * torch.randn(64, generator=gen)
    x = 3 * torch.randn(2, 7, 64, generator=gen)
    grad = torch.randn(2, 7, 64, generator=gen)
    return norm.to(dtype), x.to(dtype), grad.to(dtype)


def _run(norm: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    norm.zero_grad()
    y = norm(x)
    y.backward(grad)
    return y.detach(), x.grad, norm.weight.grad.clone()


def test_fused_rms_norm_matches_autograd_in_fp32():
    norm, x, grad = _rms_case(torch.float32)
    plain = _run(norm, x, grad)
    assert kernels.fuse_rms_norms(norm) == [norm]
    fused = _run(norm, x, grad)
    assert torch.equal(plain[0], fused[0])  # the same forward, op for op
    for a, b in zip(plain[1:], fused[1:], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_rms_norm_in_bf16_is_as_close_to_the_truth_as_autograd():
    """bf16 gradients round either way; the closed form (fp32 inside) must be no further from fp64 than autograd."""
    norm, x, grad = _rms_case(torch.bfloat16)
    ref = LlamaRMSNorm(64, eps=1e-6).double()
    ref.weight.data = norm.weight.data.double()
    truth = _run(ref, x.double(), grad.double())
    plain = _run(norm, x, grad)
    kernels.fuse_rms_norms(norm)
    fused = _run(norm, x, grad)
    assert torch.equal(plain[0], fused[0])
    for p, f, t in zip(plain[1:], fused[1:], truth[1:], strict=True):
        assert _err(f, t) <= max(1.5 * _err(p, t), 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_backward_matches_autograd(dtype):
    gen = torch.Generator().manual_seed(1)
    gate, up, grad = (4 * torch.randn(5, 32, generator=gen) for _ in range(3))
    results = []
    for fn in (lambda g, u: torch.nn.functional.silu(g) * u, kernels.silu_mul):
        g, u = gate.to(dtype).requires_grad_(), up.to(dtype).requires_grad_()
        y = fn(g, u)
        y.backward(grad.to(dtype))
        results.append((y.detach(), g.grad, u.grad))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    for a, b in zip(*results, strict=True):
        assert _err(b, a.double()) <= tol


def test_fusing_touches_only_rms_norms_and_unfuse_restores(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    norms = kernels.fuse_rms_norms(model)
    assert len(norms) == 2 * model.config.num_hidden_layers + 1  # two per layer and the final one
    assert all(type(m).__name__ == "LlamaRMSNorm" for m in norms)
    kernels.unfuse(norms)
    assert not any("forward" in vars(m) for m in model.modules())
