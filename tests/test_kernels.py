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


def _lora_case(dropout: float, bias: bool):
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias), torch.nn.Linear(40, 24, bias=bias))
    peft = get_peft_model(net, LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout, target_modules=["0", "1"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # B starts at zero; a trained one exercises every gradient
            p.data = 0.3 * torch.randn(p.shape, generator=gen)
    return peft, torch.randn(3, 5, 24, generator=gen), torch.randn(3, 5, 24, generator=gen)


def _lora_run(peft, x, grad) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    peft.zero_grad()
    torch.manual_seed(3)  # the same dropout masks on both paths
    y = peft(x)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad.clone() for p in peft.parameters() if p.requires_grad]


@pytest.mark.parametrize(("dropout", "bias"), [(0.0, False), (0.0, True), (0.25, True)])
def test_fused_lora_matches_peft_forward_and_every_gradient(dropout, bias):
    peft, x, grad = _lora_case(dropout, bias)
    plain = _lora_run(peft, x, grad)
    assert len(kernels.fuse_lora_linears(peft)) == 2
    fused = _lora_run(peft, x, grad)
    assert len(plain) == len(fused) == 2 + 4  # output, input gradient, A and B of both layers
    for a, b in zip(plain, fused, strict=True):  # fp32, summed in another order: ~1e-7 of the largest entry
        assert a.abs().max() > 0 and _err(b, a.double()) <= 1e-5


def test_fused_lora_hands_other_cases_to_peft():
    """Disabled or merged adapters, two active adapters and autocast take PEFT's own forward."""
    from peft import LoraConfig

    peft, x, _ = _lora_case(0.0, True)
    layers = kernels.fuse_lora_linears(peft)
    with torch.no_grad():
        fused = peft(x)
        with peft.disable_adapter():
            assert torch.equal(peft(x), peft.base_model.model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert peft(x).dtype == torch.bfloat16  # PEFT's path, under autocast as the caller asked
        peft.merge_adapter()
        assert torch.allclose(peft(x), fused, atol=1e-5)
        peft.unmerge_adapter()
        peft.add_adapter("other", LoraConfig(r=2, lora_alpha=2, target_modules=["0", "1"], init_lora_weights=False))
        peft.base_model.set_adapter(["default", "other"])
        both = peft(x)
        kernels.unfuse(layers)
        assert torch.equal(both, peft(x)) and not torch.allclose(both, fused)


def test_fused_lora_under_autocast_matches_peft_on_a_bf16_base(monkeypatch):
    """A bf16 base with fp32 adapters under bf16 autocast, as a bf16 run trains LoRA: the fused layer runs (not
    PEFT's fallback) and agrees with PEFT to bf16's rounding; the adapters' gradients come back in fp32."""
    peft, x, grad = _lora_case(0.0, True)
    for name, p in peft.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(torch.bfloat16)
    x, grad = x.to(torch.bfloat16), grad.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _lora_run(peft, x, grad)
        kernels.fuse_lora_linears(peft)
        calls = []
        apply = kernels._LoraLinear.apply
        monkeypatch.setattr(kernels._LoraLinear, "apply", lambda *a: calls.append(1) or apply(*a))
        fused = _lora_run(peft, x, grad)
    assert len(calls) == 2
    assert [t.dtype for t in fused[2:]] == [torch.float32] * 4
    for a, b in zip(plain, fused, strict=True):  # two bf16 computations: ~2^-8 relative each
        assert a.abs().max() > 0 and _err(b, a.double()) <= 2e-2


def test_fp32_attention_is_sdpa_on_upcast_inputs(tiny_model_dir):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    module = model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=gen).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = kernels._sdpa_fp32(module, q, k, v, None, scaling=0.25)
    expected, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None, scaling=0.25)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.to(torch.bfloat16))
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=gen)
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
        assert kernels.fp32_attention(model) and model.config._attn_implementation == kernels.FP32_SDPA
        after = model(input_ids=ids).logits.float()
    assert _err(after, before.double()) <= 2e-2  # the same attention, without bf16's rounding inside it
