"""Completion-only loss that runs the LM head only where there is a target.

The LM head of a small model is a large share of its compute (SmolLM2-135M: 576 x 49152, about a fifth of a
forward pass), and most positions of a prompt/completion example are prompt. So the loss takes the decoder's
hidden states, keeps the N supervised positions, and projects only those: (B, T, C) -> (N, C) -> (N, V).
A probe at start-up checks this equals the model's own logits; models that post-process logits
(e.g. soft-capping) fall back to the full forward pass.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.tokenize import IGNORE

log = logging.getLogger(__name__)


class CompletionLoss(nn.Module):
    """forward(batch tensors) -> (summed cross-entropy over supervised targets, number of targets).

    Wrapping the model in a module makes the loss the unit that DDP wraps, so gradient sync follows it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head_on_targets_only = True

    def _selected_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sel: torch.Tensor):
        if self.head_on_targets_only:
            decoder = self.model.get_decoder()
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
            return self.model.get_output_embeddings()(hidden[:, :-1][sel])  # (N, V)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        return logits[:, :-1][sel]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]  # position t predicts token t+1
        sel = targets != IGNORE  # (B, T-1)
        logits = self._selected_logits(input_ids, attention_mask, sel)
        loss = F.cross_entropy(logits.float(), targets[sel], reduction="sum")
        return loss, sel.sum()

    @torch.no_grad()
    def check_fast_path(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """Use the head-on-targets path only if it reproduces the model's logits on a probe batch."""
        was_training = self.model.training
        self.model.eval()
        try:
            sel = attention_mask[:, 1:].bool()
            self.head_on_targets_only = True
            fast = self._selected_logits(input_ids, attention_mask, sel)
            self.head_on_targets_only = False
            full = self._selected_logits(input_ids, attention_mask, sel)
            ok = torch.allclose(fast.float(), full.float(), atol=1e-3, rtol=1e-3)
        except (AttributeError, NotImplementedError, TypeError) as e:
            log.info("LM-head-on-targets path unavailable (%s); using the full forward", e)
            ok = False
        finally:
            self.model.train(was_training)
        self.head_on_targets_only = ok
        return ok
