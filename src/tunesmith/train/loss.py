"""Completion-only loss that runs the LM head only where there is a target, a chunk at a time.

The LM head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49152, about a fifth of a
forward pass), and most positions of a prompt/completion example are prompt. So the loss takes the decoder's
hidden states, keeps the N supervised positions, and projects only those: (B, T, C) -> (N, C) -> (N, V).
The projection and cross-entropy are fused and chunked (`head_cross_entropy`), so the (N, V) logits never
exist at once. A probe at start-up checks the path equals the model's own logits; models that post-process
logits (e.g. soft-capping) fall back to the full forward pass.

Batches are right-padded and attention is causal, so no real token can see a pad token: the decoder runs
without an attention mask, which lets SDPA take its fused causal kernel (and native GQA). Both shortcuts are
checked against the model's own forward at start-up (`tunesmith.train.fastpath`) and switched off when
they differ. Packed rows (`tunesmith.train.batching.pack`) pass position ids that restart at 0 for each
example and no mask: transformers then builds a block-causal mask from the position ids, so examples in a
row never see each other; `check_packing` verifies that once at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.tokenize import IGNORE, Encoded
from tunesmith.errors import ModelError

log = logging.getLogger(__name__)

HEAD_CHUNK = 256  # rows of (N, V) logits alive at once (the planner costs the same number)


class _HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, y_i), with gradients computed chunk by chunk during the forward pass.

    For logits z = h W^T and p = softmax(z): dL/dz = p - onehot(y), dL/dh = (p - onehot) W and
    dL/dW = (p - onehot)^T h. Keeping dL/dh (N, C) instead of the logits (N, V) is the memory saving.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits are reduced in fp32
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        # fp32 outside autocast: dL/dW accumulates in place (addmm_), no (V, C) temporary per chunk. Under autocast
        # the product stays the bf16 one autocast picks.
        in_place = hidden.dtype == weight.dtype == acc and not torch.is_autocast_enabled(hidden.device.type)
        grad_w = (torch.empty_like if in_place else torch.zeros_like)(weight, dtype=acc) if need_w else None
        for s in range(0, hidden.shape[0], HEAD_CHUNK):
            h, y = hidden[s : s + HEAD_CHUNK], targets[s : s + HEAD_CHUNK]
            logits = (h @ weight.t()).to(acc)  # (n, V)
            rows = torch.arange(len(y), device=y.device)
            # In place, in four passes over the chunk: z - max, exp, sum, and (for the gradient) division.
            top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            target = logits[rows, y] - top[:, 0]  # (n,), a copy
            probs = logits.sub_(top).exp_()  # unnormalised softmax
            total = probs.sum(dim=-1)  # (n,)
            loss += (total.log() - target).sum()  # logsumexp(z) - z_y
            if need_h or need_w:
                grad = probs.div_(total[:, None])  # softmax: (n, V)
                grad[rows, y] -= 1.0
                grad = grad.to(weight.dtype)
                if need_h:
                    grad_h[s : s + HEAD_CHUNK] = grad @ weight
                if need_w and in_place:
                    grad_w.addmm_(grad.t(), h, beta=float(s > 0))  # beta 0: the empty buffer is only written
                elif need_w:
                    grad_w += (grad.t() @ h).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, without materialising all logits."""
    return _HeadCrossEntropy.apply(hidden, weight, targets)


class CompletionLoss(nn.Module):
    """forward(batch tensors) -> (summed cross-entropy over supervised targets, number of targets).

    Wrapping the model in a module makes the loss the unit that DDP wraps, so gradient sync follows it.
    Two shortcuts, on unless `check_fast_paths` found them wrong for this model: `head_on_targets_only`
    (LM head on supervised rows, fused with the loss) and `mask_free` (no attention mask on right-padded rows).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head_on_targets_only = True
        self.mask_free = True

    def _inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> dict[str, torch.Tensor | bool | None]:
        # Packed rows: transformers reads the block-causal mask from position ids only with neither a 2-D mask
        # nor a cache; their rows are right-padded, so no mask is needed either way.
        mask = None if self.mask_free or position_ids is not None else attention_mask
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "use_cache": False}

    def _hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.get_decoder()(**self._inputs(input_ids, attention_mask, position_ids)).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]  # position t predicts token t+1
        sel = targets != IGNORE  # (B, T-1)
        if self.head_on_targets_only:
            head = self.model.get_output_embeddings()
            h = self._hidden(input_ids, attention_mask, position_ids)[:, :-1][sel]  # (N, C)
            loss = head_cross_entropy(h, head.weight, targets[sel])
        else:
            logits = self.model(**self._inputs(input_ids, attention_mask, position_ids)).logits[:, :-1][sel]  # (N, V)
            loss = F.cross_entropy(logits.float(), targets[sel], reduction="sum")
        return loss, sel.sum()

    def head_matches(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, atol: float) -> bool:
        """Whether the LM head applied to the decoder's output reproduces the model's own logits."""
        head = self.model.get_output_embeddings()
        if getattr(head, "bias", None) is not None or not isinstance(head, nn.Linear):
            return False
        try:
            fast = head(self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
                        .last_hidden_state)
        except (AttributeError, NotImplementedError, TypeError) as e:
            log.debug("LM-head-on-targets path unavailable (%s)", e)
            return False
        full = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.allclose(fast.float(), full.float(), atol=atol, rtol=atol)

    @torch.no_grad()
    def check_packing(self, rows: Sequence[Encoded]) -> None:
        """Raise `ModelError` unless packed examples stay apart: the hidden states of a packed row must equal
        each example's computed alone. A model whose attention ignores position ids would let them mix.

        A leak changes hidden states by O(1); reduction order alone, by ~1e-6 relative in fp32 (~1e-2 in bf16).
        """
        from tunesmith.train.batching import unpack

        row = next((r for r in rows if len(unpack(r)) > 1), None)
        if row is None:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            packed = self._hidden(torch.tensor([row.input_ids], device=device), None,
                                  torch.tensor([row.position_ids], device=device))[0]  # (T, C)
            tol = 1e-3 if packed.dtype == torch.float32 else 3e-2
            start, worst = 0, 0.0
            for part in unpack(row):
                alone = self._hidden(torch.tensor([part.input_ids], device=device), None)[0]  # (n, C)
                n = len(part.input_ids)
                diff = (packed[start : start + n] - alone).abs().max() / alone.abs().max().clamp_min(1e-6)
                worst, start = max(worst, float(diff)), start + n
        finally:
            self.model.train(was_training)
        if worst > tol:
            raise ModelError(f"{type(self.model).__name__}: packed examples would attend to each other (relative "
                             f"difference {worst:.2g}); this model's attention ignores position ids, so it "
                             "cannot train on packed text: use a transformers built-in architecture")
