"""Each row of a batch with its own LoRA adapter (or none), in one forward pass.

For a projection y = W x, an adapter adds s * B (A x). With the batch's distinct adapters 1..n, their A
matrices are stacked (R = r_1 + ... + r_n rows) and their B matrices placed side by side, so for all rows at
once:

    delta = ((x @ A_cat.T) * mask) @ B_cat.T      x (B, T, in), mask (B, 1, R), B_cat (out, R)

where row b's mask keeps only the columns of its own adapter (all zeros for the bare base model). That is
three matrix ops per projection whatever the number of adapters, and a row's result does not depend on its
neighbours (masked columns add exact zeros). The scale s (alpha / r, or alpha / sqrt(r) for rsLoRA) is
folded into B once, when the adapter is read.

Projections are grouped as the fast decoder fuses them (q|k|v, o, gate|up, down); an adapter's B for a group
is zero outside the rows of the modules it trains.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import ModelError
from tunesmith.model.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import torch

    from tunesmith.serve.fast import FastLlama

GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}
_MODULE_GROUP = {m: g for g, ms in GROUPS.items() for m in ms}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter, per layer and group: (A (R, in), B (out, R) with the scale folded in)."""

    name: str
    layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]


def read_adapter(name: str, folder: Path, fast: FastLlama) -> Adapter:
    """Read a PEFT LoRA folder into the fast decoder's groups; refuses what this path cannot apply exactly."""
    from safetensors.torch import load_file

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    _check_config(folder, config)
    weights = load_file(str(folder / ADAPTER_WEIGHTS), device=str(fast.embed.device))
    per_layer: list[dict[str, dict[str, dict[str, torch.Tensor]]]] = [{} for _ in fast.layers]
    for key, tensor in weights.items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in _MODULE_GROUP or int(m.group(1)) >= len(fast.layers):
            raise ModelError(f"{folder}: adapter weight '{key}' is not a LoRA factor of a decoder projection")
        module = per_layer[int(m.group(1))].setdefault(m.group(2), {})
        module[m.group(3)] = tensor.to(fast.embed.dtype)
    alpha, rslora = float(config.get("lora_alpha") or 8), bool(config.get("use_rslora"))
    layers = [{g: pair for g in GROUPS if (pair := _group(fast, g, modules, alpha, rslora, folder))}
              for modules in per_layer]
    return Adapter(name, layers)


def _check_config(folder: Path, config: dict) -> None:
    problem = None
    if config.get("peft_type", "LORA") != "LORA":
        problem = f"a {config.get('peft_type')} adapter"
    elif config.get("use_dora"):
        problem = "a DoRA adapter"
    elif config.get("rank_pattern") or config.get("alpha_pattern"):
        problem = "per-module ranks or alphas"
    elif config.get("modules_to_save"):
        problem = "modules_to_save (fully trained layers)"
    if problem:
        raise ModelError(f"{folder}: {problem}; the fast server applies plain LoRA only, serve it with "
                         "--engine transformers")


def _group(fast: FastLlama, group: str, modules: dict[str, dict[str, torch.Tensor]], alpha: float, rslora: bool,
           folder: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The group's stacked A and block-placed, scaled B, or None when the adapter trains none of its modules."""
    import torch

    sizes = _out_sizes(fast)[group]
    present = [(i, m) for i, m in enumerate(GROUPS[group]) if m in modules]
    if not present:
        return None
    a_parts, b_cols = [], []
    for i, m in present:
        if set(modules[m]) != {"A", "B"}:
            raise ModelError(f"{folder}: {m} has only lora_{''.join(modules[m])}")
        a, b = modules[m]["A"], modules[m]["B"]
        r = a.shape[0]
        fan_in = getattr(fast.layers[0], group).in_features
        if a.shape[1] != fan_in or b.shape != (sizes[i], r):
            raise ValueError(f"{m}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit this model's "
                             f"{fan_in} -> {sizes[i]} projection")
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        col = torch.zeros(sum(sizes), r, dtype=b.dtype, device=b.device)
        col[sum(sizes[:i]) : sum(sizes[: i + 1])] = b * scale
        a_parts.append(a)
        b_cols.append(col)
    return torch.cat(a_parts).contiguous(), torch.cat(b_cols, dim=1).contiguous()


def _out_sizes(fast: FastLlama) -> dict[str, list[int]]:
    q, kv = fast.heads * fast.head_dim, fast.kv_heads * fast.head_dim
    inter = fast.layers[0].gate_up.out_features // 2
    hidden = fast.embed.shape[1]
    return {"qkv": [q, kv, kv], "o": [hidden], "gate_up": [inter, inter], "down": [hidden]}


class RowAdapters:
    """The adapters of one batch, stacked per (layer, group), and each row's column mask."""

    def __init__(self, rows: Sequence[Adapter | None]):
        import torch

        distinct = list({id(a): a for a in rows if a is not None}.values())
        self.groups: list[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        n_layers = len(distinct[0].layers) if distinct else 0
        for layer in range(n_layers):
            entry = {}
            for group in GROUPS:
                parts = [(a, a.layers[layer][group]) for a in distinct if group in a.layers[layer]]
                if not parts:
                    continue
                a_cat = torch.cat([p[0] for _, p in parts])
                b_cat = torch.cat([p[1] for _, p in parts], dim=1)
                mask = torch.zeros(len(rows), 1, a_cat.shape[0], dtype=a_cat.dtype, device=a_cat.device)
                start = 0
                for adapter, (a, _) in parts:
                    for b, row_adapter in enumerate(rows):
                        if row_adapter is adapter:
                            mask[b, 0, start : start + a.shape[0]] = 1
                    start += a.shape[0]
                entry[group] = (a_cat, b_cat, mask)
            self.groups.append(entry)

    @property
    def empty(self) -> bool:
        return not any(self.groups)

    def delta(self, x: torch.Tensor, layer: int, group: str) -> torch.Tensor | None:
        """What the rows' adapters add to projection `group` of `layer`. x (B, T, in) -> (B, T, out) or None."""
        entry = self.groups[layer].get(group)
        if entry is None:
            return None
        a, b, mask = entry
        return ((x @ a.T) * mask) @ b.T
