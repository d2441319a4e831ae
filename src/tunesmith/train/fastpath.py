"""Every fast path is checked once, at start-up, against the model's own forward; a mismatch falls back.

The trainer takes shortcuts that are exact for Llama-shaped models but could be wrong for another
architecture (a bias on the LM head, logit soft-capping, a non-causal or sliding-window mask, an MLP that
is not plain SwiGLU, a norm that is not RMSNorm):
- `mask_free`: right-padded rows without an attention mask, so SDPA takes its fused causal kernel;
- `fused_mlp`: silu(gate) * up with SiLU recomputed in backward (tunesmith.train.kernels);
- `fused_rms_norm`: RMSNorm keeping only its input and one rsqrt per token (tunesmith.train.kernels);
- `fused_lora`: a LoRA layer's W x + s B A x as one addmm, one input gradient (tunesmith.train.kernels);
- `head_on_targets`: the LM head only on supervised rows, fused with the cross-entropy.
Each is compared with the plain path on a small probe batch (two rows of different lengths): logits on
real tokens, and for the swapped-in layers also the gradients of the first decoder layer's trainable
weights. The swaps are checked together; if they disagree, one at a time, and only those that agree stay.
The result goes to the log and the run manifest (a swap with nothing to swap, such as `fused_lora` in a full
fine-tune, is not listed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from tunesmith.data.tokenize import Encoded
from tunesmith.train import kernels
from tunesmith.train.batching import collate
from tunesmith.train.loss import CompletionLoss

log = logging.getLogger(__name__)

PROBE_TOKENS = 32  # per probe row: enough to exercise padding and attention, cheap on a 7B model
Undo = Callable[[], None]


def _fuse_mlp(model: torch.nn.Module) -> Undo | None:
    modules = kernels.fuse_gated_mlps(model)
    return (lambda: kernels.unfuse(modules)) if modules else None


def _fuse_norms(model: torch.nn.Module) -> Undo | None:
    modules = kernels.fuse_rms_norms(model)
    return (lambda: kernels.unfuse(modules)) if modules else None


def _fuse_lora(model: torch.nn.Module) -> Undo | None:
    modules = kernels.fuse_lora_linears(model)
    return (lambda: kernels.unfuse(modules)) if modules else None


SWAPS: dict[str, Callable[[torch.nn.Module], Undo | None]] = {"fused_mlp": _fuse_mlp, "fused_rms_norm": _fuse_norms,
                                                              "fused_lora": _fuse_lora}


def _probe(examples: Sequence[Encoded], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of different lengths, right-padded: (input_ids, attention_mask)."""
    rows = sorted(examples[:8], key=lambda e: len(e.input_ids))
    picked = [rows[0], rows[-1]] if len(rows) > 1 else rows[:1]
    short = [Encoded(e.input_ids[:PROBE_TOKENS], e.labels[:PROBE_TOKENS], 0, 0, True) for e in picked]
    if len(short) > 1 and len(short[0].input_ids) == len(short[1].input_ids) > 2:  # force some padding
        e = short[0]
        short[0] = Encoded(e.input_ids[:-2], e.labels[:-2], 0, 0, True)
    batch = collate(short, pad_id).to(device)
    return batch.input_ids, batch.attention_mask


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits.float()


def _tolerance(model: torch.nn.Module) -> float:
    """fp32 paths agree to ~1e-5 relative; bf16 weights round at ~1e-2."""
    dtype = next(model.parameters()).dtype
    return 1e-3 if dtype == torch.float32 else 5e-2


def _same(a: torch.Tensor, b: torch.Tensor, tol: float) -> tuple[bool, float]:
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
    return diff <= tol * scale, diff


def _grads(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of the logits on real tokens, w.r.t. the first decoder layer's
    trainable weights: they depend on the backward pass through every layer above, and cost little memory
    (all of a full fine-tune's gradients would be another copy of the model)."""
    first = _first_layer(model)
    params = [p for p in (first or model).parameters() if p.requires_grad]
    out = (_logits(model, ids, mask) * weights)[mask.bool()].sum()
    return [g.float() for g in torch.autograd.grad(out, params, allow_unused=True) if g is not None]


def _first_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    layers = getattr(getattr(model, "get_decoder", lambda: None)(), "layers", None)
    return layers[0] if layers is not None and len(layers) else None


class _Probe:
    """The plain path's logits and gradients on the probe batch, and a test of the model against them."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
        self.model, self.ids, self.mask = model, ids, mask
        self.tol, self.real = _tolerance(model), mask.bool()
        with torch.no_grad():
            self.logits = _logits(model, ids, mask)
        self.weights = torch.randn(self.logits.shape, generator=torch.Generator().manual_seed(0)).to(ids.device)
        self.grads: list[torch.Tensor] = []

    def mask_free(self) -> tuple[bool, float]:
        with torch.no_grad():
            return _same(_logits(self.model, self.ids, None)[self.real], self.logits[self.real], self.tol)

    def plain_grads(self) -> None:
        self.grads = _grads(self.model, self.ids, self.mask, self.weights)

    def agrees(self) -> tuple[bool, float]:
        """Whether the model as it stands now gives the plain path's logits and first-layer gradients."""
        assert self.grads, "plain gradients are taken before any swap"
        with torch.no_grad():
            ok, diff = _same(_logits(self.model, self.ids, self.mask)[self.real], self.logits[self.real], self.tol)
        grads = _grads(self.model, self.ids, self.mask, self.weights)
        for g, p in zip(grads, self.grads, strict=True):
            same, d = _same(g, p, self.tol)
            ok, diff = ok and same, max(diff, d)
        return ok, diff


def check_fast_paths(loss_fn: CompletionLoss, examples: Sequence[Encoded], pad_id: int, device: str) -> dict[str, bool]:
    """Switch on each shortcut that reproduces the plain path on a probe batch; return what is on.

    The probe runs without autocast, also for a run in bf16: a wrong formula shows at fp32's tolerance, where
    under bf16 autocast two correct paths already differ by ~10 % in the first layer's gradients."""
    model = loss_fn.model
    was_training = model.training
    model.eval()  # dropout off: both paths must see the same function
    try:
        probe = _Probe(model, *_probe(examples, pad_id, device))
        ok, diff = probe.mask_free()
        loss_fn.mask_free = _report("mask_free", ok, diff)
        probe.plain_grads()
        swaps, tried = _swap_checked(model, probe)
        with torch.no_grad():
            loss_fn.head_on_targets_only = _report("head_on_targets",
                                                   loss_fn.head_matches(probe.ids, probe.mask, probe.tol), 0.0)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return {"mask_free": loss_fn.mask_free, **{n: n in swaps for n in tried},
            "head_on_targets": loss_fn.head_on_targets_only}


def switch_on_unchecked(loss_fn: CompletionLoss, precision: str) -> None:
    """Every shortcut `tunesmith train` switches on where its probe passes, without the probe, and fp32
    attention under bf16 on a CPU: a model that runs as fast as training's, for timing it (the planner's
    calibration), never to train."""
    for swap in SWAPS.values():
        swap(loss_fn.model)
    loss_fn.mask_free = loss_fn.head_on_targets_only = True
    if precision == "bf16":
        kernels.fp32_attention(loss_fn.model)  # a no-op on a GPU


def _swap_checked(model: torch.nn.Module, probe: _Probe) -> tuple[dict[str, Undo], list[str]]:
    """Apply the swaps that agree with the plain path; return them with their undo, and every swap that found
    something to swap in this model."""
    applied = {n: u for n in SWAPS if (u := SWAPS[n](model)) is not None}
    tried = list(applied)
    ok, diff = probe.agrees()
    if ok or not applied:
        for n in applied:
            _report(n, True, diff)
        return applied, tried
    for undo in applied.values():
        undo()
    kept: dict[str, Undo] = {}
    for name in applied:  # one at a time: which of them differs?
        undo = SWAPS[name](model)
        assert undo is not None
        ok, diff = probe.agrees()
        if _report(name, ok, diff):
            kept[name] = undo
        undo()
    swaps = {n: u for n in kept if (u := SWAPS[n](model)) is not None}
    if swaps and not probe.agrees()[0]:  # each agrees alone but not together: none at all
        for name, undo in swaps.items():
            undo()
            _report(name, False, diff)
        return {}, tried
    return swaps, tried


def _report(name: str, ok: bool, diff: float) -> bool:
    if ok:
        log.debug("fast path %s: on (max difference %.2e)", name, diff)
    else:
        log.warning("fast path %s: differs from the model's own forward (max difference %.2e); using the plain "
                    "path", name, diff)
    return ok
