"""LoRA layers that share an input, computed together: one base matmul and one A matmul per group.

PEFT runs each adapted projection on its own: W x + s B (A x), three times for q, k, v and twice for gate,
up, each with its own casts. The projections of a group read the same x, so with their frozen base weights
stacked into one (out_q + out_k + out_v, in) matrix and their A matrices into one (3r, in), the group needs
one large and one thin matmul instead of six, then each member's B on its slice:

    y = x [W_q; W_k; W_v]^T,   a = s x [A_q; A_k; A_v]^T,   q = y[:, :out_q] + a[:, :r] B_q^T, ...

The stacked base is one buffer and each member's weight becomes a view of it (no extra memory; nothing
updates a frozen base). The group's first member computes every output and hands the others theirs when they
are called with the very same input tensor (Llama-style attention and MLPs do); any other call computes
alone. With dropout each member drops out its own copy of x, in PEFT's order, so the A matmuls stay apart.
The result equals PEFT's up to float rounding: `tunesmith.train.fastpath` checks it at start-up.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections that read the same input


class Group:
    """Adapted projections of one module that read the same input; computes all their outputs at once."""

    def __init__(self, members: Sequence[nn.Module]):
        self.members = list(members)
        self.name = members[0].active_adapters[0]
        weights = [m.base_layer.weight for m in members]
        self.stacked = torch.cat([w.detach() for w in weights])  # (sum of outs, in)
        self.splits = [w.shape[0] for w in weights]
        start = 0
        for w, n in zip(weights, self.splits, strict=True):
            w.data = self.stacked[start : start + n]  # the member's weight now lives in the stacked buffer
            start += n
        self.bias = None
        if any(m.base_layer.bias is not None for m in members):
            self.bias = [m.base_layer.bias if m.base_layer.bias is not None else torch.zeros(n, dtype=w.dtype)
                         for m, n, w in zip(members, self.splits, weights, strict=True)]
        self.pending: tuple[torch.Tensor, list[torch.Tensor | None]] | None = None
        self.computed = self.handed = 0  # for the start-up check: every member but the first is handed its output

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every member's output for input x: (..., in) -> [(..., out_i)]."""
        bias = torch.cat(self.bias) if self.bias is not None else None
        y = F.linear(x, self.stacked, bias)  # (..., sum of outs)
        a = self._a(x)  # per member (..., r)
        outs, start = [], 0
        for m, n, ai in zip(self.members, self.splits, a, strict=True):
            b = m.lora_B[self.name]
            outs.append(y[..., start : start + n] + F.linear(ai, b.weight, b.bias))
            start += n
        return outs

    def _a(self, x: torch.Tensor) -> list[torch.Tensor]:
        name = self.name
        drops = [m.lora_dropout[name] for m in self.members]
        scales = [m.scaling[name] for m in self.members]
        x = _to(x, self.members[0].lora_A[name].weight.dtype)
        if all(isinstance(d, nn.Identity) for d in drops):  # one input for all: one thin matmul
            stacked = torch.cat([m.lora_A[name].weight for m in self.members])  # (k r, in)
            a = F.linear(x, stacked).split([m.lora_A[name].weight.shape[0] for m in self.members], dim=-1)
        else:  # each member drops out its own copy of x, in PEFT's order
            a = [F.linear(d(x), m.lora_A[name].weight) for d, m in zip(drops, self.members, strict=True)]
        return [ai * s for ai, s in zip(a, scales, strict=True)]

    def forward(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor:
        i = self.members.index(member)
        if self.pending is not None and self.pending[0] is x and self.pending[1][i] is not None:
            out = self.pending[1][i]
            self.pending[1][i] = None
            if all(o is None for o in self.pending[1]):
                self.pending = None
            self.handed += 1
            return out  # type: ignore[return-value]
        outs = self.outputs(x)
        self.computed += 1
        self.pending = (x, [None if j == i else o for j, o in enumerate(outs)])
        return outs[i]

    def release(self) -> None:
        """Give each member its own weight tensor back and its own forward."""
        self.pending = None
        for m in self.members:
            m.base_layer.weight.data = m.base_layer.weight.data.clone()
            vars(m).pop("forward", None)
            vars(m).pop("_tunesmith_group", None)


def _to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PEFT casts the adapter's input to the adapter's dtype; autocast casts it back for the matmul."""
    return x if torch.is_autocast_enabled(x.device.type) or x.dtype == dtype else x.to(dtype)


def _member_forward(self: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    if self.disable_adapters or self.merged or args or kwargs:  # PEFT's own path for anything unusual
        return type(self).forward(self, x, *args, **kwargs)
    return self._tunesmith_group.forward(self, x)


def _plain_lora(m: nn.Module) -> bool:
    """A PEFT LoRA Linear with one active adapter, no variant (DoRA), on a plain nn.Linear."""
    from peft.tuners.lora.layer import Linear

    if not isinstance(m, Linear) or type(m.base_layer) is not nn.Linear or len(m.active_adapters) != 1:
        return False
    name = m.active_adapters[0]
    return (name in m.lora_A and name not in getattr(m, "lora_variant", {}) and not m.merged
            and not m.base_layer.weight.requires_grad)


def fuse_lora_groups(model: nn.Module) -> list[Group]:
    """Group the adapted projections that share an input (see GROUPS) in every module; return the groups."""
    groups = []
    for module in model.modules():
        for names in GROUPS:
            members = [getattr(module, n, None) for n in names]
            if not all(m is not None and _plain_lora(m) for m in members):
                continue
            if len({(m.base_layer.weight.dtype, m.lora_A[m.active_adapters[0]].weight.dtype) for m in members}) > 1:
                continue
            group = Group(members)
            for m in members:
                m._tunesmith_group = group
                m.forward = types.MethodType(_member_forward, m)
            groups.append(group)
    return groups


def release(groups: Sequence[Group]) -> None:
    for g in groups:
        g.release()
