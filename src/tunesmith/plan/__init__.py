"""What a fine-tune will cost before it runs: parameters, memory by part, output size, tokens and time.

The planner costs a `TrainConfig`, the very object `tunesmith train` runs (the trainer records this estimate
next to what it measures), so the two agree on every mode: base dtype, autocast copies, gradient
checkpointing, a quantized base, FSDP sharding over N ranks. Everything comes from the model's config, so a
7B hub model plans without its weights; the dataset adds token counts, and when the weights are here a
few real training steps give the speed. `options` lists the configurations that fit a memory budget.

Modules: `memory` (bytes by part), `speed` (FLOPs, rates, calibration), `fit` (what fits, as commands).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config import Method, TrainConfig
from tunesmith.errors import ConfigError
from tunesmith.model.arch import Arch, load_arch, lora_params, lora_targets
from tunesmith.plan.fit import HEADROOM, Option, command, explain, options
from tunesmith.plan.memory import (
    CPU_PROCESS_BYTES,
    CUDA_CONTEXT_BYTES,
    GIB,
    HEAD_CHUNK,
    HEAP_FACTOR,
    MIMALLOC_FACTOR,
    MIMALLOC_PROCESS_BYTES,
    Allocator,
    Precision,
    Setup,
    checkpoint_bytes,
    disk_bytes,
    gb,
    layer_terms,
    memory,
    output_bytes,
    peak_bytes,
    required_bytes,
)
from tunesmith.plan.speed import calibrate, flops_per_token, flops_rate
from tunesmith.train.batching import forward_budget
from tunesmith.train.precision import resolve as resolve_precision

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.formats import Example
    from tunesmith.data.tokenize import Encoded

__all__ = [
    "CPU_PROCESS_BYTES",
    "CUDA_CONTEXT_BYTES",
    "GIB",
    "HEADROOM",
    "HEAD_CHUNK",
    "HEAP_FACTOR",
    "MIMALLOC_FACTOR",
    "MIMALLOC_PROCESS_BYTES",
    "Arch",
    "DataStats",
    "Option",
    "Plan",
    "Precision",
    "Recommendation",
    "Setup",
    "checkpoint_bytes",
    "command",
    "data_stats",
    "disk_bytes",
    "estimate",
    "flops_per_token",
    "gb",
    "layer_terms",
    "load_arch",
    "lora_params",
    "lora_targets",
    "memory",
    "output_bytes",
    "peak_bytes",
    "required_bytes",
    "setup_for",
    "training_allocator",
]


@dataclass(frozen=True)
class DataStats:
    """Token counts of a dataset as the trainer sees it (chat template applied, truncated to max_length)."""

    examples: int
    tokens: int
    targets: int  # supervised next-token targets
    longest: int  # tokens of the longest example
    most_targets: int  # most targets in one example
    truncated: int  # examples cut by max_length

    @classmethod
    def from_encoded(cls, encoded: Sequence[Encoded]) -> DataStats:
        targets = [e.targets for e in encoded]
        lengths = [len(e.input_ids) for e in encoded]
        return cls(examples=len(encoded), tokens=sum(lengths), targets=sum(targets),
                   longest=max(lengths, default=0), most_targets=max(targets, default=0),
                   truncated=sum(1 for e in encoded if e.truncated))


def data_stats(config: TrainConfig, tokenizer: PreTrainedTokenizerBase,
               extra: Callable[[Sequence[Example]], Sequence[Example]] | None = None) -> DataStats:
    """Load and tokenize `config.data` exactly as training will (format, columns, max_length; documents packed),
    with the rows `extra` adds to them (the replay examples training mixes in)."""
    from tunesmith.data.formats import load_dataset
    from tunesmith.train.batching import training_rows

    data = load_dataset(config.data, config.format, config.columns)
    examples = list(data.examples) + list(extra(data.examples) if extra else ())
    rows, _ = training_rows(tokenizer, examples, config.max_length, packed=data.format == "text")
    return DataStats.from_encoded(rows)


def setup_for(config: TrainConfig, arch: Arch, device: str, world: int = 1, data: DataStats | None = None,
              allocator: Allocator | None = None, process_bytes: int | None = None) -> Setup:
    """The costed shape of `config` as `tunesmith train` would run it on `device` with `world` ranks."""
    device = "cuda" if device.startswith("cuda") else "cpu"
    bf16 = resolve_precision(config.precision, device) == "bf16"
    precision: Precision = ("bf16" if config.method == "lora" else "mixed") if bf16 else "fp32"
    seq = min(config.max_length, data.longest) if data and data.longest else config.max_length
    per_row = min(seq - 1, data.most_targets) if data else seq - 1
    targets = tuple(lora_targets(arch, config.lora.target_modules)) if config.method == "lora" else ()
    quant = {"none": "none", "4bit": "nf4", "8bit": "int8"}[config.quantize]
    sharded = config.distributed == "fsdp" and world > 1
    # A micro-batch above the forward_tokens budget runs in passes of fewer rows, and (like accumulation) the
    # gradients of one pass live through the next.
    budget = forward_budget(config.forward_tokens, device)
    rows = min(config.batch_size, max(1, budget // seq)) if budget else config.batch_size
    passes = config.grad_accum * math.ceil(config.batch_size / rows)
    return Setup(config.method, rows, seq, per_row, precision, device, config.lora.r, targets,
                 config.lora.dropout, allocator or training_allocator(), passes, quant,  # type: ignore[arg-type]
                 config.gradient_checkpointing, world, sharded, process_bytes if device == "cpu" else None)


@dataclass(frozen=True)
class Recommendation:
    method: Method
    batch_size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    max_length: int
    fits: bool | None  # None when no memory budget is known
    reasons: list[str]
    command: str = ""  # the `tunesmith train` command line of the recommended configuration


@dataclass(frozen=True)
class Plan:
    """The cost of one fine-tuning run, by part, and what to do about it."""

    model: str
    method: Method
    device: str
    precision: Precision
    quantize: str
    gradient_checkpointing: bool
    world: int
    allocator: Allocator
    batch_size: int
    max_length: int
    seq_len: int  # padded tokens per row used for activations: max_length, or the longest example
    lora_r: int
    target_modules: list[str]
    parameters: int
    trainable_parameters: int
    memory: dict[str, int]  # bytes by part, per rank
    peak_memory_bytes: int  # comparable to peak RSS (CPU) or max_memory_allocated (CUDA)
    required_memory_bytes: int  # peak + CUDA context: what must fit
    available_memory_bytes: int | None
    output_bytes: int  # adapter or full model on disk
    checkpoint_bytes: int  # one checkpoint: the weights that train and the optimizer state
    disk_bytes: int  # the run folder at its fullest (`keep_checkpoints` + 2 checkpoints)
    flops_per_token: float
    tokens_per_second: float | None
    speed_source: str  # "calibrated" (real steps), "matmul" (measured rate x efficiency) or "assumed"
    data: DataStats | None
    data_tokens: int | None
    epochs: float
    seconds_per_epoch: float | None
    recommendation: Recommendation
    options: list[dict[str, Any]] = field(default_factory=list)  # configurations that fit, cheapest first
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate(config: TrainConfig, *, device: str = "cpu", world: int = 1, gpu_memory_gb: float | None = None,
             data: DataStats | None = None, calibrate_speed: bool = False, allocator: Allocator | None = None,
             process_bytes: int | None = None) -> Plan:
    """Cost `config` as `tunesmith train` runs it on `device` (`world` ranks under torchrun).

    `process_bytes`: the training process's own RSS before the model loads (the trainer passes it), instead of
    the measured constant for a fresh process.
    """
    _check(device, gpu_memory_gb)
    arch, ref = load_arch(config.model)
    s = setup_for(config, arch, device, world, data, allocator, process_bytes)
    trainable = lora_params(arch, config.lora.r, s.targets) if config.method == "lora" else arch.parameters
    parts = memory(arch, s)
    budget = _budget(s.device, gpu_memory_gb)
    timing = s
    if data and data.examples:  # time follows the mean row, memory the longest
        mean = max(2, round(data.tokens / data.examples))
        timing = dataclasses.replace(s, seq_len=mean, targets_per_row=mean * data.targets / max(data.tokens, 1))
    rate, source, notes = _speed(config, ref, arch, timing, calibrate_speed)
    found = options(arch, config, lambda c, n: setup_for(c, arch, device, n, data, allocator, process_bytes), budget) \
        if budget is not None else []
    tokens = data.tokens if data else None
    return Plan(
        model=config.model, method=config.method, device=s.device, precision=s.precision, quantize=config.quantize,
        gradient_checkpointing=config.gradient_checkpointing, world=world, allocator=s.allocator,
        batch_size=config.batch_size, max_length=config.max_length, seq_len=s.seq_len, lora_r=config.lora.r,
        target_modules=list(s.targets), parameters=arch.parameters, trainable_parameters=trainable, memory=parts,
        peak_memory_bytes=peak_bytes(arch, s, parts), required_memory_bytes=required_bytes(arch, s),
        available_memory_bytes=budget, output_bytes=output_bytes(arch, config.method, trainable),
        checkpoint_bytes=checkpoint_bytes(trainable),
        disk_bytes=disk_bytes(checkpoint_bytes(trainable), config.keep_checkpoints),
        flops_per_token=flops_per_token(arch, timing), tokens_per_second=rate, speed_source=source, data=data,
        data_tokens=tokens, epochs=config.epochs or 1.0,
        seconds_per_epoch=tokens / rate if tokens is not None and rate else None,
        recommendation=_recommend(config, found, required_bytes(arch, s), budget),
        options=[_option_dict(o) for o in found], notes=notes,
    )


def _recommend(config: TrainConfig, found: list[Option], need: int, budget: int | None) -> Recommendation:
    if budget is not None and not found:
        return Recommendation(config.method, config.batch_size, config.grad_accum, config.max_length, False,
                              explain(None, config, need, budget))
    if budget is None:
        return Recommendation(config.method, config.batch_size, config.grad_accum, config.max_length, None,
                              explain(None, config, need, None), command(config))
    best = found[0]
    c = best.config
    return Recommendation(c.method, c.batch_size, c.grad_accum, c.max_length, True,
                          explain(best, config, need, budget), best.command)


def _option_dict(o: Option) -> dict[str, Any]:
    c = o.config
    return {"label": o.label, "method": c.method, "quantize": c.quantize,
            "gradient_checkpointing": c.gradient_checkpointing, "batch_size": c.batch_size, "grad_accum": c.grad_accum,
            "max_length": c.max_length, "gpus": o.gpus, "required_bytes": o.required_bytes,
            "relative_time": round(o.relative_time, 3), "command": o.command}


def training_allocator() -> Allocator:
    """The malloc `tunesmith train` runs under: mimalloc when installed (and not opted out), else glibc's."""
    from tunesmith.train.allocator import allocator_env, current_allocator

    return "mimalloc" if current_allocator() == "mimalloc" or allocator_env() is not None else "system"


def _check(device: str, gpu_gb: float | None) -> None:
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device '{device}': expected cpu or cuda")
    if gpu_gb is not None and (device == "cpu" or gpu_gb <= 0):
        raise ConfigError(f"--gpu-memory {gpu_gb:g}: give a positive size in GB, with --device cuda")


def _budget(device: str, gpu_memory_gb: float | None) -> int | None:
    """Memory this run may use: free RAM for CPU; --gpu-memory, or this machine's GPU, for CUDA."""
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if gpu_memory_gb is not None:
        return int(gpu_memory_gb * GIB)  # GPU makers' "80 GB" is 80 GiB
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


def _speed(config: TrainConfig, ref: Any, arch: Arch, s: Setup, calibrate_speed: bool) -> tuple[float, str, list[str]]:
    """Tokens per second: from real steps when asked and possible, else FLOPs over a matmul rate."""
    import torch

    notes: list[str] = []
    here = s.device == "cpu" or torch.cuda.is_available()
    weights = ref is not None and ref.kind != "hub" and (ref.kind == "run" or any(Path(ref.path).glob("*.safetensors")))
    if calibrate_speed and here and weights:
        return calibrate(config, ref, arch, s), "calibrated", notes
    if calibrate_speed:
        notes.append("speed from FLOPs: " + ("no GPU here" if not here else "no local weights to calibrate with"))
    rate, source = flops_rate(s, here)
    if source == "assumed":
        notes.append("speed assumes a GPU doing 150 TFLOP/s bf16 matmuls")
    return rate / flops_per_token(arch, s), source, notes
