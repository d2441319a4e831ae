"""The fast decoder's one-row decode step under `torch.compile` (`tunesmith serve --compile`).

Why: one row's decode step on a CPU runs about 900 small ops (RMSNorm, RoPE, cache writes, attention,
residual adds, SiLU around four matrix products per layer). In eager mode each op pays Python and dispatch
overhead, and for a 135M model that is about half of the step. Inductor fuses the elementwise work into a few
C++ loops and calls the matrix products directly.

What is compiled: only a single row decoding on the base model, the single-stream case. A batch of two or
more rows, or a row with an adapter, takes the eager path (`FastLlama.forward`): batching already spreads the
per-op cost over the rows, and compiling every batch shape would stop the server for a compile each time.

int8: fbgemm's dynamic-quantized linear takes its packed weights as a TorchScript object, which dynamo cannot
trace, so it enters the graph as an opaque custom op, `tunesmith::int8_linear`, that looks the packed weights
up by number. float32 matrix products stay in the graph as `linear`.

The compile happens once, at start-up (`warm_up`, tens of seconds on a small CPU; inductor caches it on disk
for the next start). The one shape that changes from step to step, the cached length, is symbolic (marked
dynamic), and the step keeps a KV cache of fixed capacity, so a longer reply never recompiles (tested).
Lengths under `MIN_SPAN` decode eagerly, as dynamo specializes sizes 0 and 1.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tunesmith.serve.fast import FastLlama, Linear

_PACKED: list[Any] = []  # fbgemm packed weights, numbered for `tunesmith::int8_linear`
_OP: Any = None


def _int8_op() -> Any:
    """Register `tunesmith::int8_linear` (once per process)."""
    global _OP
    if _OP is not None:
        return _OP
    import torch

    from tunesmith.serve.fast import _REDUCE_RANGE

    @torch.library.custom_op("tunesmith::int8_linear", mutates_args=(),
                             schema="(Tensor x, int index, int out_features) -> Tensor")
    def int8_linear(x: torch.Tensor, index: int, out_features: int) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, _PACKED[index], _REDUCE_RANGE)

    @int8_linear.register_fake
    def _(x: torch.Tensor, index: int, out_features: int) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))

    _OP = int8_linear
    return _OP


class CompiledStep:
    """One row's decode step on the base model, compiled, with its own KV cache of fixed capacity.

    The cache is the step's own (one slot of `capacity` positions, allocated once), so that its strides never
    change: a cache that grows (as `FastLlama`'s does) would recompile. A row moves in with `load` (its prefill
    ran in `FastLlama`'s slot 0) and back with `store` when the batch grows. Not thread-safe.
    """

    MIN_SPAN = 16  # shorter cached lengths decode eagerly: sizes 0 and 1 (and tiny ones) would specialize

    def __init__(self, fast: FastLlama, capacity: int):
        import torch

        self.fast = fast
        self.capacity = min(capacity, fast.context)
        self._op = _int8_op() if fast.int8 else None
        linears = [fast.head, *[lin for layer in fast.layers for lin in (layer.qkv, layer.o, layer.gate_up,
                                                                          layer.down)]]
        self._index = {id(lin): self._number(lin) for lin in linears}
        self._gqa = fast.kv_heads != fast.heads
        shape = (fast.kv_heads, self.capacity, fast.head_dim)
        self.k = [torch.zeros(shape, dtype=fast.embed.dtype, device=fast.embed.device) for _ in fast.layers]
        self.v = [torch.zeros(shape, dtype=fast.embed.dtype, device=fast.embed.device) for _ in fast.layers]
        self._fn = torch.compile(self._step, fullgraph=True)
        self.compile_seconds = 0.0

    def _number(self, lin: Linear) -> int:
        if lin.packed is None:
            return -1
        _PACKED.append(lin.packed)
        return len(_PACKED) - 1

    def _linear(self, lin: Linear, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self._op is not None and lin.packed is not None:
            return self._op(x, self._index[id(lin)], lin.out_features)
        return torch.nn.functional.linear(x, lin.weight)

    def _step(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ks: list[torch.Tensor],
              vs: list[torch.Tensor]) -> torch.Tensor:
        """ids (1, 1); cos, sin (D,) at the new position; ks / vs (KV, span, D): each layer's cache up to and
        including the new position, which this step writes."""
        import torch

        from tunesmith.serve.fast import _rope

        f = self.fast
        heads, kv, d = f.heads, f.kv_heads, f.head_dim
        qk_width = (heads + kv) * d
        x = torch.nn.functional.embedding(ids, f.embed)  # (1, 1, C)
        width = (x.shape[-1],)
        for i, layer in enumerate(f.layers):
            h = torch.nn.functional.rms_norm(x, width, layer.attn_norm, f.eps)
            qkv = self._linear(layer.qkv, h)[0, 0]  # (QKV,)
            qk = _rope(qkv[:qk_width].view(heads + kv, d), cos, sin)
            ks[i][:, -1] = qk[heads:]
            vs[i][:, -1] = qkv[qk_width:].view(kv, d)
            att = torch.nn.functional.scaled_dot_product_attention(
                qk[None, :heads, None], ks[i][None], vs[i][None], enable_gqa=self._gqa)  # (1, H, 1, D)
            x = x + self._linear(layer.o, att.reshape(1, 1, -1))
            h = torch.nn.functional.rms_norm(x, width, layer.mlp_norm, f.eps)
            gate, up = self._linear(layer.gate_up, h).chunk(2, dim=-1)
            x = x + self._linear(layer.down, torch.nn.functional.silu(gate) * up)
        last = torch.nn.functional.rms_norm(x[:, 0], width, f.norm, f.eps)
        return self._linear(f.head, last).float()

    def fits(self, position: int) -> bool:
        """Whether a step at `position` can run here (else the eager path decodes it)."""
        return self.MIN_SPAN <= position + 1 <= self.capacity

    def load(self, length: int) -> None:
        """Take the first `length` cached positions of `FastLlama`'s slot 0."""
        for mine, theirs in zip(self.k + self.v, self.fast.k + self.fast.v, strict=True):
            mine[:, :length] = theirs[0, :, :length]

    def store(self, slot: int, length: int) -> None:
        """Give the first `length` cached positions back to `FastLlama`'s `slot`."""
        self.fast.reserve(slot + 1, length)
        for mine, theirs in zip(self.k + self.v, self.fast.k + self.fast.v, strict=True):
            theirs[slot, :, :length] = mine[:, :length]

    def step(self, token: int, position: int) -> torch.Tensor:
        """Logits (1, V) after `token` at `position`; this cache must hold positions 0..position-1."""
        import torch

        f, span = self.fast, position + 1
        ks = [k[:, :span] for k in self.k]
        vs = [v[:, :span] for v in self.v]
        for t in (*ks, *vs):
            torch._dynamo.maybe_mark_dynamic(t, 1)
        with warnings.catch_warnings():  # torch's quantized kernels are marked deprecated; they remain
            warnings.simplefilter("ignore")
            return self._fn(torch.tensor([[token]], device=f.embed.device), f.cos[position], f.sin[position],
                            ks, vs)

    def check(self, prompt: list[int]) -> dict[str, float]:
        """Prefill `prompt` eagerly, then decode 4 tokens both ways: largest |logit difference|, top-1 agreement."""
        import torch

        while len(prompt) < self.MIN_SPAN:  # a short prompt, repeated: the step needs MIN_SPAN cached positions
            prompt = prompt + prompt
        f, n = self.fast, len(prompt) - 4
        diffs, agree = [], []
        with torch.inference_mode():
            f.release()
            f.forward(torch.tensor([prompt[:n]], device=f.embed.device), torch.tensor([0]), torch.tensor([n]))
            self.load(n)
            for position in range(n, len(prompt)):
                token = prompt[position]
                eager = f.forward(torch.tensor([[token]], device=f.embed.device), torch.tensor([position]),
                                  torch.tensor([1]))
                mine = self.step(token, position)
                diffs.append(float((eager - mine).abs().max()))
                agree.append(float(eager.argmax() == mine.argmax()))
            f.release()
        return {"max_abs_diff": max(diffs), "top1_agree": sum(agree) / len(agree)}

    def warm_up(self) -> float:
        """Compile now (seconds taken), on throwaway cache contents (the next `load` overwrites them)."""
        import torch

        start = time.perf_counter()
        with torch.inference_mode():
            for position in (self.MIN_SPAN + 5, self.MIN_SPAN + 18):  # the second shows no recompile
                self.step(0, position)
        self.compile_seconds = time.perf_counter() - start
        return self.compile_seconds
