"""The configurations that fit a memory budget, cheapest first, each as a `tunesmith train` command to copy.

Candidates, from the requested method: as asked; with gradient checkpointing; (LoRA) on a 4-bit base
(QLoRA), with and without checkpointing; (full, on GPUs) sharded with FSDP over 2, 4 or 8 such GPUs; and,
when full fine-tuning cannot fit, the LoRA ones. Each keeps the requested examples per step: the largest
micro-batch that fits, with gradient accumulation making up the rest. As a last resort LoRA on a 4-bit
base with checkpointing at batch 1 tries shorter rows. "Cheapest" is the estimated time per token (FLOPs
over the device's rate, with checkpointing's recompute and quantization's dequantization).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.config import TrainConfig
from tunesmith.model.arch import Arch
from tunesmith.plan.memory import Setup, gb, required_bytes
from tunesmith.plan.speed import EFFICIENCY, QUANT_EFFICIENCY, flops_per_token

HEADROOM = 0.9  # plan to use at most this share of the memory available
SetupOf = Callable[[TrainConfig, int], Setup]  # a configuration on N ranks -> what it costs
FSDP_RANKS = (2, 4, 8)


@dataclass(frozen=True)
class Option:
    """One configuration that fits."""

    label: str
    config: TrainConfig
    gpus: int  # ranks under torchrun (1: a single process)
    required_bytes: int  # per device
    relative_time: float  # wall-clock time per token, relative to the requested configuration unchanged
    command: str


def _label(c: TrainConfig, gpus: int) -> str:
    parts = ["LoRA" if c.method == "lora" else "full fine-tuning"]
    if c.quantize != "none":
        parts.append(f"{c.quantize} base" + (" (QLoRA)" if c.quantize == "4bit" else ""))
    if c.gradient_checkpointing:
        parts.append("gradient checkpointing")
    if gpus > 1:
        parts.append(f"FSDP over {gpus} GPUs")
    return ", ".join(parts)


def command(c: TrainConfig, gpus: int = 1) -> str:
    """The `tunesmith train` command line for `c` (settings left at their defaults are not repeated)."""
    default = TrainConfig()
    args = [c.data or "DATA"]
    for name, flag in (("model", "--model"), ("method", "--method"), ("quantize", "--quantize"),
                       ("batch_size", "--batch-size"), ("grad_accum", "--grad-accum"),
                       ("max_length", "--max-length")):
        if getattr(c, name) != getattr(default, name):
            args += [flag, str(getattr(c, name))]
    if c.gradient_checkpointing:
        args.append("--gradient-checkpointing")
    if c.method == "lora" and c.lora != default.lora:
        args += ["--lora-r", str(c.lora.r)]
    if gpus > 1:
        return f"torchrun --nproc_per_node {gpus} -m tunesmith train {' '.join(args)} --distributed fsdp"
    return "tunesmith train " + " ".join(args)


def _candidates(config: TrainConfig, device: str) -> list[tuple[TrainConfig, int]]:
    ckpt = dict(gradient_checkpointing=True)
    if config.method == "full":
        out = [(config, 1), (dataclasses.replace(config, **ckpt), 1)]
        if device == "cuda":
            out += [(dataclasses.replace(config, distributed="fsdp", **c), n) for n in FSDP_RANKS for c in ({}, ckpt)]
        lora = dataclasses.replace(config, method="lora")
        return out + _candidates(lora, device)
    variants = [{}, ckpt, {"quantize": "4bit"}, {"quantize": "4bit", **ckpt}]
    if config.quantize != "none" or config.gradient_checkpointing:  # never less thrifty than asked
        variants = [v for v in variants if v.get("quantize", "none") != "none" or config.quantize == "none"]
        variants = [v for v in variants if v.get("gradient_checkpointing") or not config.gradient_checkpointing]
    return [(dataclasses.replace(config, **v), 1) for v in variants]


def options(arch: Arch, config: TrainConfig, setup_of: SetupOf, budget: int) -> list[Option]:
    """Every candidate that fits `budget` bytes per device, at its largest micro-batch, cheapest first."""
    usable = budget * HEADROOM
    reference = _time(arch, setup_of(config, 1))
    found: list[Option] = []
    for candidate, gpus in _candidates(config, setup_of(config, 1).device):
        for b in _halvings(config.batch_size):
            c = dataclasses.replace(candidate, batch_size=b, grad_accum=max(1, math.ceil(
                config.batch_size * config.grad_accum / (b * gpus))))
            s = setup_of(c, gpus)
            need = required_bytes(arch, s)
            if need <= usable:
                found.append(Option(_label(c, gpus), c, gpus, need, _time(arch, s) / reference, command(c, gpus)))
                break
    if not found:
        found += _shorter_rows(arch, config, setup_of, usable, reference)
    # The requested method first (it is a choice about quality), then by GPU time, fewer GPUs, less memory.
    return sorted(found, key=lambda o: (o.config.method != config.method, round(o.relative_time * o.gpus, 2),
                                        o.gpus, o.required_bytes))


def _shorter_rows(arch: Arch, config: TrainConfig, setup_of: SetupOf, usable: float, reference: float) -> list[Option]:
    c = dataclasses.replace(config, method="lora", quantize="4bit", gradient_checkpointing=True, batch_size=1,
                            grad_accum=config.batch_size * config.grad_accum)
    length = c.max_length
    while length > 64:
        length //= 2
        trial = dataclasses.replace(c, max_length=length)
        s = setup_of(trial, 1)
        if (need := required_bytes(arch, s)) <= usable:
            label = _label(trial, 1) + f", rows cut to {length} tokens"
            return [Option(label, trial, 1, need, _time(arch, s) / reference, command(trial))]
    return []


def _time(arch: Arch, s: Setup) -> float:
    """Seconds per token up to a constant: FLOPs over the share of the device's rate this setup reaches."""
    small_batch = min(1.0, 0.5 + 0.5 * s.batch_size * s.seq_len / 2048)  # tiny micro-batches use a device poorly
    return flops_per_token(arch, s) / (EFFICIENCY[s.device] * QUANT_EFFICIENCY[s.quant] * small_batch * s.world)


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def explain(best: Option | None, requested: TrainConfig, need: int, budget: int | None) -> list[str]:
    """Why the recommendation is what it is, in a sentence or two."""
    if budget is None:
        return [f"needs {gb(need)}; no memory budget known here: pass --gpu-memory GB"]
    if best is None:
        return [f"does not fit: even LoRA on a 4-bit base with gradient checkpointing at batch 1 and length 64 "
                f"needs more than the {gb(budget * HEADROOM)} usable; use a machine with more memory"]
    reasons = [f"needs {gb(best.required_bytes)} of {gb(budget)} available"]
    if best.config.method != requested.method:
        reasons.append("full fine-tuning does not fit even at batch 1 (weights, gradients and AdamW take 16 bytes "
                       "per parameter); LoRA does")
    if best.config.batch_size < requested.batch_size:
        reasons.append(f"micro-batch {best.config.batch_size} x {best.config.grad_accum} accumulation steps keeps "
                       f"{requested.batch_size * requested.grad_accum} examples per step")
    return reasons
