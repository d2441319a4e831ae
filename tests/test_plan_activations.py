"""The activation formula against what autograd really saves for backward, on a tiny Llama.

Per decoder layer and token: the saved tensors of a 4-layer model minus those of a 3-layer one (so the
embedding, final norm and head cancel), divided by the tokens. Distinct widths (h 96, q 128, kv 64, i 160,
r 8) make a wrong term show. Parameters are not activations; under autocast the bf16 weight copies are
(`autocast_copies`). The model is prepared as the trainer prepares it (fused SiLU-gated MLP and RMSNorm).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from tunesmith.plan import Arch, Precision, layer_terms, lora_params

H, MLP, HEADS, KV_HEADS, HEAD_DIM, R = 96, 160, 4, 2, 32, 8
ARCH = Arch("llama", hidden=H, intermediate=MLP, layers=4, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
            vocab=1000, tied=True)
B, T = 2, 7


def _saved_bytes(layers: int, method: str, precision: Precision, targets: list[str], dropout: float,
                 fused: bool = True) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.train.kernels import fuse_gated_mlps, fuse_rms_norms

    config = LlamaConfig(vocab_size=1000, hidden_size=H, intermediate_size=MLP, num_hidden_layers=layers,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16 if precision == "half" else torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=R, lora_dropout=dropout, target_modules=targets))
    if fused:
        fuse_gated_mlps(model)  # as the trainer does
        fuse_rms_norms(model)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1000, (B, T), generator=torch.Generator().manual_seed(0))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "mixed" else contextlib.nullcontext()
    decoder = model.get_base_model().get_decoder() if method == "lora" else model.get_decoder()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        decoder(input_ids=ids)  # as the trainer calls it: right-padded rows need no attention mask
    return sum(seen.values())


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(
    ("method", "precision", "targets", "dropout"),
    [
        ("full", "fp32", [], 0.0),
        ("full", "half", [], 0.0),
        ("full", "mixed", [], 0.0),
        ("lora", "fp32", ALL, 0.0),
        ("lora", "fp32", ALL, 0.05),
        ("lora", "fp32", ["q_proj", "v_proj"], 0.0),
        ("lora", "fp32", ["o_proj", "down_proj"], 0.1),
        ("lora", "half", ALL, 0.0),
        ("lora", "half", ALL, 0.05),
        ("lora", "mixed", ALL, 0.0),
        ("lora", "mixed", ALL, 0.05),
    ],
)
def test_layer_terms_equal_autograd_saved_tensors(method: str, precision: Precision, targets: list[str],
                                                  dropout: float) -> None:
    measured = _saved_bytes(4, method, precision, targets, dropout) - _saved_bytes(3, method, precision, targets,
                                                                                  dropout)
    terms = layer_terms(ARCH, method, precision, targets=targets, r=R, dropout=dropout, mask_size=4)  # type: ignore[arg-type]
    expected = B * T * sum(t.bytes for t in terms)
    if precision == "mixed":  # the layer's bf16 weight copies, adapters included
        expected += 2 * (ARCH.layer_matmul_params + lora_params(ARCH, R, targets) // ARCH.layers)
    assert measured == expected


@pytest.mark.parametrize("method", ["full", "lora"])
def test_unfused_mlp_keeps_silu_output_too(method: str) -> None:
    """Families whose MLP the trainer does not fuse (e.g. GELU in Gemma) save SiLU(gate) as well (Gemma's norm is
    not fused either: the normalised tensor too)."""
    targets = ALL if method == "lora" else []
    measured = (_saved_bytes(4, method, "fp32", targets, 0.0, fused=False)
                - _saved_bytes(3, method, "fp32", targets, 0.0, fused=False))
    unfused = dataclasses.replace(ARCH, fused_mlp=False, fused_norm=False)
    terms = layer_terms(unfused, method, "fp32", targets=targets, r=R)  # type: ignore[arg-type]
    assert measured == B * T * sum(t.bytes for t in terms)
    fused = layer_terms(dataclasses.replace(ARCH, fused_norm=False), method, "fp32", targets=targets, r=R)  # type: ignore[arg-type]
    assert sum(t.bytes for t in terms) - sum(t.bytes for t in fused) == 4 * MLP
