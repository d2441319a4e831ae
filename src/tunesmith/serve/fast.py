"""A lean Llama decoder for serving: fused projections, a preallocated KV cache, per-row LoRA, optional int8.

Why not transformers' forward: single-stream decode on a CPU is bound by the bytes of weights read per token
and by Python overhead per op. This decoder reads each layer's weights in four matrix products
(q|k|v fused, o, gate|up fused, down), keeps one KV cache slot per batch row (rows of different lengths and
different adapters decode together; a finished row's slot is refilled by the next request), and selects each
row's LoRA adapter inside the batch (see `lora_rows`). With `int8=True`, decode steps read the frozen
base weights as int8 per output channel through fbgemm's dynamic-quantization kernels (activations quantized
per call): 4x fewer bytes than float32, at a measured cost in agreement. Prompts still run in float32, and
LoRA weights stay float32. The fused float32 weights are shared with the transformers model (its modules
view into them), so the fast path adds no copy of the base weights (int8 adds a quarter).

The arithmetic is transformers' Llama (RMSNorm in float32, rotate-half RoPE from the model's own rotary
embedding, SDPA attention with grouped KV heads), so in float32 the logits equal the plain path's up to
rounding; `Engine` checks that once at start-up.

Shapes: B rows, T new tokens per row, S cached positions, C hidden, H / KV heads, D head dim, V vocab.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tunesmith.serve.lora_rows import RowAdapters

FAST_TYPES = ("llama", "mistral")
EXACT_TOLERANCE = 1e-3  # largest |logit difference| from transformers accepted for float32 (rounding only)


def supports(model: PreTrainedModel) -> str | None:
    """None when `model` can run on this decoder, else why not (the engine then uses transformers)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", "?")
    if kind not in FAST_TYPES:
        return f"model type '{kind}' (fast path: {', '.join(FAST_TYPES)})"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "bias terms in attention or MLP"
    if getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    if (getattr(cfg, "hidden_act", "silu") or "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    import torch

    block = model.model.layers[0]
    if any(type(m) is not torch.nn.Linear for m in (block.self_attn.q_proj, block.mlp.down_proj)):
        return "quantized or wrapped projection layers"
    return None


class Linear:
    """y = x @ W.T. With int8, decode steps use W in int8 per output channel (fbgemm's dynamic quantization:
    activations quantized per call); prompts still run in float32 (`exact`), because a whole prompt shares
    one activation scale in fbgemm, and the first token's huge activations would flatten every other row's.
    """

    def __init__(self, weight: torch.Tensor, int8: bool):
        import torch

        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.packed: Any = None
        if int8:
            with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; the kernels remain
                warnings.simplefilter("ignore")
                w = weight.detach().float()
                scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
                zeros = torch.zeros(w.shape[0], dtype=torch.int64)
                q = torch.quantize_per_channel(w, scales, zeros, axis=0, dtype=torch.qint8)
                self.packed = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        import torch

        if self.packed is not None and not exact:
            return torch.ops.quantized.linear_dynamic(x, self.packed, _REDUCE_RANGE)
        return torch.nn.functional.linear(x, self.weight)


def _cpu_has_vnni() -> bool:
    """fbgemm needs 7-bit activations (reduce_range) only without VNNI, where its int16 sums can saturate."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


_REDUCE_RANGE = not _cpu_has_vnni()


@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv: Linear
    o: Linear
    mlp_norm: torch.Tensor
    gate_up: Linear
    down: Linear


class FastLlama:
    """The decoder plus its KV cache (`rows` slots). Not thread-safe: the engine's worker owns it."""

    def __init__(self, model: PreTrainedModel, *, int8: bool = False, rows: int = 32):
        import torch

        why = supports(model)
        if why is not None:
            raise ConfigError(f"the fast decoder does not support this model: {why}")
        if int8 and not _has_fbgemm():
            raise ConfigError("int8 serving needs torch's fbgemm quantized kernels (x86 CPU builds of torch)")
        cfg, net = model.config, model.model
        self.int8 = int8
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.context = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.eps = float(cfg.rms_norm_eps)
        self.embed = net.embed_tokens.weight.detach()
        self.norm = net.norm.weight.detach()
        self.head = Linear(model.lm_head.weight.detach(), int8)
        self.layers = [self._layer(block, int8) for block in net.layers]
        with torch.no_grad():  # the model's own rotary embedding: identical cos / sin, any RoPE variant
            dummy = torch.zeros(1, dtype=torch.float32, device=self.embed.device)
            cos, sin = net.rotary_emb(dummy, torch.arange(self.context, device=self.embed.device)[None])
        self.cos, self.sin = cos[0].float(), sin[0].float()  # (context, D)
        self.rows = rows
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    @staticmethod
    def _layer(block: Any, int8: bool) -> Layer:
        a, m = block.self_attn, block.mlp
        qkv = _fuse(a.q_proj, a.k_proj, a.v_proj)
        gate_up = _fuse(m.gate_proj, m.up_proj)
        return Layer(block.input_layernorm.weight.detach(), Linear(qkv, int8), Linear(a.o_proj.weight.detach(), int8),
                     block.post_attention_layernorm.weight.detach(), Linear(gate_up, int8),
                     Linear(m.down_proj.weight.detach(), int8))

    # -- cache ----------------------------------------------------------------------------------------

    def reserve(self, rows: int, length: int) -> None:
        """Make slots 0..rows-1 hold `length` positions each; keeps what is cached. The cache grows with
        the batch (rows x positions, by half again each time), so a long prompt alone does not cost
        `self.rows` long slots; the engine's admission bounds rows x positions (Limits.max_batch_tokens)."""
        import torch

        have_rows = self.k[0].shape[0] if self.k else 0
        if rows <= have_rows and length <= self.capacity:
            return
        if length > self.context or rows > self.rows:
            raise ValueError(f"{rows} rows x {length} positions exceed {self.rows} rows or the context window "
                             f"of {self.context}")
        new_len = min(self.context, max(length, self.capacity + self.capacity // 2, 64))
        new_rows = min(self.rows, max(rows, have_rows + have_rows // 2))
        shape = (new_rows, self.kv_heads, new_len, self.head_dim)
        for store in (self.k, self.v):
            old = list(store)
            store.clear()
            for i in range(len(self.layers)):
                grown = torch.zeros(shape, dtype=self.embed.dtype, device=self.embed.device)
                if old:
                    grown[:have_rows, :, : self.capacity] = old[i]
                store.append(grown)
        self.capacity = new_len

    def release(self) -> None:
        """Free the KV cache (when no row is live): a burst of long requests does not hold memory forever."""
        self.k.clear()
        self.v.clear()
        self.capacity = 0

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s cache into slot `dst` (keeps the live rows in slots 0..n-1)."""
        for store in (self.k, self.v):
            for layer_cache in store:
                layer_cache[dst] = layer_cache[src]

    # -- forward --------------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor,
                adapters: RowAdapters | None = None, *, first_slot: int = 0) -> torch.Tensor:
        """Logits (B, V) after each row's last real token.

        ids (B, T): row b's new tokens, right-padded after lengths[b]; they go to cache slot first_slot + b at
        positions start[b] .. start[b] + T - 1 (padding writes positions no query ever attends to).
        """
        import torch

        B, T = ids.shape
        exact = T > 1  # prompts in float32 even with int8 weights (see Linear)
        pos = start[:, None] + torch.arange(T, device=ids.device)  # (B, T)
        span = int(pos.max()) + 1
        self.reserve(first_slot + B, span)
        visible = torch.arange(span, device=ids.device)[None, None, :] <= pos[:, :, None]  # (B, T, S)
        mask = torch.zeros(visible.shape, dtype=self.embed.dtype, device=ids.device).masked_fill_(
            ~visible, float("-inf"))[:, None]  # (B, 1, T, S), additive: SDPA would convert a bool mask per layer
        cos, sin = self.cos[pos][:, :, None, :], self.sin[pos][:, :, None, :]  # (B, T, 1, D)
        rows = first_slot + torch.arange(B, device=ids.device)[:, None]
        qk_width = (self.heads + self.kv_heads) * self.head_dim
        slots = slice(first_slot, first_slot + B)
        x = torch.nn.functional.embedding(ids, self.embed)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.attn_norm)
            qkv = _project(layer.qkv, h, adapters, i, "qkv", exact)
            qk = _rope(qkv[..., : qk_width].view(B, T, self.heads + self.kv_heads, self.head_dim), cos, sin)
            q, k = qk[:, :, : self.heads], qk[:, :, self.heads :]  # one RoPE call for both
            v = qkv[..., qk_width:]
            self.k[i][rows, :, pos] = k  # (B, T, KV, D) into this batch's slots
            self.v[i][rows, :, pos] = v.reshape(B, T, self.kv_heads, self.head_dim)
            att = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), self.k[i][slots, :, :span], self.v[i][slots, :, :span], attn_mask=mask,
                enable_gqa=self.kv_heads != self.heads)  # (B, H, T, D)
            x = x + _project(layer.o, att.transpose(1, 2).reshape(B, T, -1), adapters, i, "o", exact)
            h = self._rms(x, layer.mlp_norm)
            gate, up = _project(layer.gate_up, h, adapters, i, "gate_up", exact).chunk(2, dim=-1)
            x = x + _project(layer.down, torch.nn.functional.silu(gate) * up, adapters, i, "down", exact)
        last = x[torch.arange(B, device=ids.device), lengths - 1]  # (B, C)
        return self.head(self._rms(last, self.norm), exact).float()

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        import torch

        xf = x.float()  # transformers' LlamaRMSNorm, op for op
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)


def _fuse(*linears: Any) -> torch.Tensor:
    """The weights of `linears` stacked by rows; the modules then view into it, so memory is not doubled."""
    import torch

    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start : start + rows]
        start += rows
    return fused


def check_against(fast: FastLlama, model: PreTrainedModel, prompt: list[int]) -> dict[str, float]:
    """Prefill `prompt` on both paths, then one decode step: largest |logit difference|, top-1 agreement."""
    import torch

    ids = torch.tensor([prompt], device=fast.embed.device)
    with torch.inference_mode():
        reference = model(input_ids=ids).logits[0, -2:].float()  # (2, V): after the prompt less one, and after it
        first = fast.forward(ids[:, :-1], torch.tensor([0]), torch.tensor([len(prompt) - 1]))
        second = fast.forward(ids[:, -1:], torch.tensor([len(prompt) - 1]), torch.tensor([1]))
    got = torch.cat([first, second])
    return {"max_abs_diff": float((got - reference).abs().max()),
            "top1_agree": float((got.argmax(-1) == reference.argmax(-1)).float().mean())}


def _project(linear: Linear, x: torch.Tensor, adapters: RowAdapters | None, layer: int, group: str,
             exact: bool) -> torch.Tensor:
    y = linear(x, exact)
    if adapters is not None:
        delta = adapters.delta(x, layer, group)
        if delta is not None:
            y = y + delta
    return y


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate-half RoPE: x * cos + rotate_half(x) * sin. (B, T, heads, D)"""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _has_fbgemm() -> bool:
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines
