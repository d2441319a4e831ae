"""Hugging Face Llama weights -> GGUF tensors (names, layout), for the model and for a LoRA adapter.

GGUF names follow llama.cpp's `llama` architecture: `token_embd`, `blk.N.attn_q` ... `output_norm`, `output`
(absent when the head is tied to the embedding). numpy shapes are kept as torch writes them, (out, in); the
GGUF writer stores them reversed as ggml's `ne`.

One layout change: llama.cpp applies rotary embeddings to adjacent pairs (x0, x1), (x2, x3) ... while
Hugging Face rotates the two halves of each head (x_i, x_{i + d/2}). The rows of q_proj and k_proj are
reordered per head so that pair i of the GGUF head holds rows (i, i + d/2) of the HF head; the inverse
reorders them back (`unpermute_qk`, used to read a file back). A LoRA delta B @ A changes output rows
through B only, so only lora_B is reordered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GGUF_ARCH = "llama"
SUPPORTED_TYPES = ("llama", "mistral")  # both run as llama.cpp's `llama` architecture

LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")


@dataclass(frozen=True)
class Shape:
    """What the GGUF header says about a Llama-shaped decoder."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    rope_linear_factor: float | None  # linear RoPE scaling, the only kind exported
    tied: bool

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> Shape:
        kind = getattr(config, "model_type", "?")
        if kind not in SUPPORTED_TYPES:
            raise ModelError(f"model type '{kind}': GGUF export supports Llama-shaped models "
                             f"({', '.join(SUPPORTED_TYPES)}); merge the run and convert it with llama.cpp's tools")
        if kind == "mistral" and getattr(config, "sliding_window", None):
            raise ModelError("mistral model with a sliding attention window: GGUF export supports full attention only")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise ModelError("model has bias terms in attention or MLP: not a plain llama layout for GGUF export")
        heads = config.num_attention_heads
        theta, factor = _rope(config)
        return cls(
            layers=config.num_hidden_layers, hidden=config.hidden_size, intermediate=config.intermediate_size,
            heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads, vocab=config.vocab_size,
            context=int(getattr(config, "max_position_embeddings", 0) or 2048), rms_eps=float(config.rms_norm_eps),
            rope_theta=theta, rope_linear_factor=factor, tied=bool(getattr(config, "tie_word_embeddings", False)),
        )


def _rope(config: PretrainedConfig) -> tuple[float, float | None]:
    """(theta, linear factor or None). transformers 5 keeps both in `rope_parameters`; 4.x in two fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None) or {}
    theta = float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, float(params.get("factor") or legacy.get("factor"))
    raise ModelError(f"RoPE scaling '{kind}': GGUF export supports default and linear RoPE only")


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a Hugging Face Llama weight, or None for weights GGUF does not store."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    m = _LAYER_KEY.match(hf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.weight"
    return None


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """HF half-split RoPE rows -> llama.cpp interleaved pairs, per head. (heads * d, ...) -> same shape."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_qk`."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_of(name: str, shape: Shape) -> int | None:
    """How many RoPE heads the rows of this GGUF tensor hold (q and k only)."""
    if name.endswith(".attn_q.weight"):
        return shape.heads
    if name.endswith(".attn_k.weight"):
        return shape.kv_heads
    return None


def model_tensors(state: dict[str, np.ndarray], shape: Shape) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of a Llama state dict, in llama.cpp's layout."""
    unknown = [k for k in state if gguf_name(k) is None and not k.endswith("rotary_emb.inv_freq")]
    if unknown:
        raise ModelError(f"weights GGUF export does not know how to name: {', '.join(unknown[:3])}")
    for hf_name, array in state.items():
        name = gguf_name(hf_name)
        if name is None or (name == "output.weight" and shape.tied):
            continue  # a tied head is the embedding; llama.cpp reuses token_embd
        array = np.ascontiguousarray(array, dtype=np.float32)
        heads = _heads_of(name, shape)
        yield name, (permute_qk(array, heads) if heads else array)


def lora_tensors(adapter: dict[str, np.ndarray], shape: Shape,
                 scales: dict[str, float] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, array) pairs `X.weight.lora_a` (r, in) and `X.weight.lora_b` (out, r) of a PEFT adapter.

    `scales` (GGUF name -> factor) is folded into lora_b, for adapters whose scale is not alpha / r.
    """
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, array in adapter.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$", key)
        name = gguf_name(m.group(1) + ".weight") if m else None
        if name is None:
            raise ModelError(f"adapter weight '{key}': GGUF adapters hold LoRA A/B pairs of the attention and MLP "
                             "projections only (trained embeddings, heads or modules_to_save cannot be exported)")
        pairs.setdefault(name, {})[m.group(2)] = np.ascontiguousarray(array, dtype=np.float32)
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ModelError(f"adapter: {name} has lora_{''.join(set('AB') - set(ab))} missing")
        b = ab["B"] * np.float32((scales or {}).get(name, 1.0))
        heads = _heads_of(name, shape)
        yield name + ".lora_a", ab["A"]
        yield name + ".lora_b", permute_qk(b, heads) if heads else b
