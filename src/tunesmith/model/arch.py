"""Model shapes from a config alone: the linear layers, parameter counts, what LoRA adapts.

Enough for the planner to cost a model it has never downloaded (a 7B config is a few hundred bytes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Decoder families whose layers are: RMSNorm, attention (q/k/v/o, grouped KV heads), RMSNorm, gated MLP.
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma"}
ATTN_INPUT, MLP_INPUT = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


@dataclass(frozen=True)
class Arch:
    """The shapes that decide the cost of a Llama-shaped decoder."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # LM head shares the embedding matrix
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    fused_mlp: bool = True  # SiLU-gated MLP: the trainer's fused silu(gate) * up keeps gate and up only
    fused_norm: bool = True  # Llama-style RMSNorm: the trainer's fused one keeps its input and rsqrt only
    stored_bytes: int | None = None  # bytes a weight takes in the checkpoint (the config's dtype), when known

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> Arch:
        kind = getattr(config, "model_type", "?")
        if kind not in LLAMA_LIKE:
            raise ConfigError(
                f"model type '{kind}': the planner knows Llama-shaped decoders ({', '.join(sorted(LLAMA_LIKE))})"
            )
        heads = config.num_attention_heads
        bias = bool(getattr(config, "attention_bias", False))
        return cls(
            model_type=kind, hidden=config.hidden_size, intermediate=config.intermediate_size,
            layers=config.num_hidden_layers, heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=bias or kind == "qwen2", o_bias=bias, mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=kind == "qwen3",
            fused_mlp=(getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)) == "silu",
            fused_norm=not kind.startswith("gemma"),  # Gemma's RMSNorm scales by 1 + w: not the fused one
            stored_bytes=_dtype_bytes(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)),
        )

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int, bool]]:
        """Each decoder layer's linear layers: name -> (in_features, out_features, has bias)."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q, self.qkv_bias), "k_proj": (h, self.kv, self.qkv_bias),
            "v_proj": (h, self.kv, self.qkv_bias), "o_proj": (self.q, h, self.o_bias),
            "gate_proj": (h, i, self.mlp_bias), "up_proj": (h, i, self.mlp_bias), "down_proj": (i, h, self.mlp_bias),
        }

    @property
    def layer_matmul_params(self) -> int:
        return sum(a * b for a, b, _ in self.linears().values())

    @property
    def layer_params(self) -> int:
        biases = sum(b for _, b, has in self.linears().values() if has)
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return self.layer_matmul_params + biases + norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        """Every parameter once (a tied LM head is the embedding)."""
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden


def load_arch(model: str) -> tuple[Arch, Any]:
    """The shapes of `model` (a config.json file, a model folder, a built-in name or a hub id) and its ref."""
    from transformers import AutoConfig

    from tunesmith.model.loading import resolve

    path = Path(model).expanduser()
    try:
        if path.is_file():
            config_dict = json.loads(path.read_text())
            if "model_type" not in config_dict:
                raise ConfigError(f"{path}: not a model config (no 'model_type')")
            config: PretrainedConfig = AutoConfig.for_model(**config_dict)
            return Arch.from_config(config), None
        ref = resolve(model)
        config = AutoConfig.from_pretrained(ref.path)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{model}': cannot read its config: {str(e).strip().splitlines()[0]}") from None
    return Arch.from_config(config), ref


def lora_targets(arch: Arch, target_modules: str | Sequence[str]) -> list[str]:
    """Linear layers LoRA adapts: 'all-linear' is every one but the LM head (PEFT's rule)."""
    names = list(arch.linears())
    if target_modules == "all-linear":
        return names
    wanted = [t.strip() for t in target_modules.split(",")] if isinstance(target_modules, str) else list(target_modules)
    unknown = [t for t in wanted if t not in names]
    if unknown or not wanted:
        raise ConfigError(
            f"LoRA target_modules {', '.join(unknown) or '(none)'}: not a linear layer of this model; "
            f"choose from all-linear, {', '.join(names)}"
        )
    return [n for n in names if n in wanted]


def lora_params(arch: Arch, r: int, targets: Sequence[str]) -> int:
    """Trainable LoRA parameters: A (r x in) and B (out x r) for each adapted layer, in every decoder layer."""
    shapes = arch.linears()
    return arch.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def _dtype_bytes(dtype: object) -> int | None:
    """Bytes per value of a config's dtype ("float32", "bfloat16", torch.float16, ...); None if unknown."""
    name = str(dtype or "").removeprefix("torch.")
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(name)
