"""What a fine-tune will cost before it runs: parameters, memory by part, output size, tokens and time.

Everything comes from the model's config, so a 7B hub model plans without its weights; the dataset adds
token counts, and when the weights are here a few measured training steps give the speed.

Memory, in bytes (B micro-batch, T padded length, L layers, h hidden, i MLP width, q = heads x head_dim,
kv = kv_heads x head_dim, V vocabulary, N supervised targets in the batch, r LoRA rank, P parameters):
- weights P x bytes(dtype). `tunesmith train` loads fp32 weights and computes in fp32 on CPU, in bf16
  autocast on CUDA ("mixed"); bf16/fp16 weights ("half") are a what-if.
- gradients: one per trainable parameter, in the weight dtype; AdamW: two fp32 moments (8 bytes) each.
  LoRA trains r x (in + out) per adapted linear layer; PEFT keeps adapters in fp32.
- activations: exactly what autograd saves for backward, per token and decoder layer (`layer_terms`,
  checked against autograd's saved tensors in tests). Full fp32, for instance: 2 RMSNorms x 3 tensors of h
  (input, normalised, scaled), rotated q and attention output (2q), rotated k and v (2kv), gate, up (the
  trainer's fused SwiGLU recomputes SiLU) and down_proj's input (3i), all fp32: (6h + 2q + 2kv + 3i) x 4.
  A frozen base saves less (no weight gradients: the norms keep their input, the MLP gate and up) but each
  adapter saves its input: with dropout, the mask and the dropped-out copy.
  With gradient checkpointing only each layer's input (h) stays, plus one layer recomputed at a time.
- LM head: the trainer projects only the N supervised positions, 256 rows at a time, and keeps only the
  gradient for the hidden states (N x h); a chunk's fp32 logits and softmax gradient are 8 x 256 x V bytes.
- autocast copies: under bf16 autocast each matmul keeps a bf16 copy of its weight for backward: 2P
  (LoRA adapters included).
- CPU allocator: `tunesmith train` runs under mimalloc when installed; its pages and segments cost 1.2x the
  activations in peak RSS. glibc serves requests under 32 MiB from heaps that fragment: 1.85x. Both
  measured with the trainer on the built-in model (batch 2-8, length 64-256).
- framework: the Python process with torch and transformers (CPU RSS); on CUDA the context, which
  `max_memory_allocated` does not see but which must fit.

Time: training FLOPs per token are 6 per weight for full fine-tuning (forward 2, input and weight gradients
2 + 2), 4 per frozen weight (no weight gradient) plus 6 per adapter weight for LoRA, the LM head only on the
supervised share, and 6 x L x T x q for causal attention (half of the T x T scores, forward + 2x backward).
Divided by this device's measured matmul rate times `EFFICIENCY`, or, better, by the rate of a few real
training steps (`calibrate`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.config import LoraSettings
from tunesmith.errors import ConfigError
from tunesmith.model.arch import ATTN_INPUT, MLP_INPUT, Arch, load_arch, lora_params, lora_targets

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.tokenize import Encoded

Method = Literal["lora", "full"]
Precision = Literal["fp32", "mixed", "half"]
Allocator = Literal["mimalloc", "system"]

GIB = 1024**3
CPU_PROCESS_BYTES = 480 * 1024**2  # RSS of python + torch + transformers + peft + tokenizer, measured
CUDA_CONTEXT_BYTES = 600 * 1024**2  # CUDA context and kernels: outside max_memory_allocated
HEAP_LIMIT = 32 * 1024**2  # glibc's largest mmap threshold: smaller tensors live in fragmenting heaps
HEAP_FACTOR = 1.85  # glibc: peak RSS per byte of activations in heap-sized tensors (measured)
MIMALLOC_FACTOR = 1.2  # mimalloc (what `tunesmith train` runs under): peak RSS per byte of activations
HEAD_CHUNK = 256  # rows of logits the trainer's loss materialises at once (tunesmith.train.loss)
HEADROOM = 0.9  # plan to use at most this share of the memory available
EFFICIENCY = {"cpu": 0.3, "cuda": 0.4}  # share of the matmul rate a training step reaches (CPU: measured)
ASSUMED_CUDA_FLOPS = 150e12  # bf16 matmul rate assumed for a GPU that is not in this machine

# --- memory ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A tensor autograd saves for backward, per token of one decoder layer: `width` values of `size` bytes."""

    width: int
    size: int
    part: Literal["activations", "lora_activations"] = "activations"

    @property
    def bytes(self) -> int:
        return self.width * self.size


def layer_terms(
    arch: Arch, method: Method, precision: Precision, *, targets: Sequence[str] = (), r: int = 0,
    dropout: float = 0.0, mask_size: int = 4,
) -> list[Term]:
    """Saved tensors per token of one decoder layer (`mask_size`: dropout mask bytes, 4 on CPU, 1 on CUDA)."""
    h, q, kv, i = arch.hidden, arch.q, arch.kv, arch.intermediate
    a = 4 if precision == "fp32" else 2  # bytes of a matmul output
    # Attention (rotated q, output; rotated k, v), fused attention's log-sum-exp per head, the norms' rsqrt.
    terms = [Term(q, a), Term(q, a), Term(kv, a), Term(kv, a), Term(arch.heads, 4), Term(2, 4)]
    if method == "full":
        norm = {"fp32": [4, 4, 4], "half": [4, 2, 2], "mixed": [4, 4]}[precision]
        terms += [Term(h, s) for s in norm * 2] + [Term(i, a)] * (3 if arch.fused_mlp else 4)  # + down's input
        if precision == "mixed":
            terms += [Term(h, 2)] * 5  # q, k, v, gate, up each cast their fp32 input to bf16
        return terms
    terms += [Term(h, 4), Term(h, 4)] + [Term(i, a)] * (2 if arch.fused_mlp else 3)  # norm inputs; gate, up
    return terms + _lora_terms(arch, precision, targets, r, dropout, mask_size)


def _lora_terms(
    arch: Arch, precision: Precision, targets: Sequence[str], r: int, dropout: float, mask_size: int
) -> list[Term]:
    """What each adapter saves: its input (dropped out, or an fp32/bf16 cast) and A's output (r)."""
    shapes = arch.linears()
    cast = 2 if precision == "mixed" else 4  # PEFT casts to the fp32 adapter; autocast back to bf16
    out = [Term(r, cast, "lora_activations") for _ in targets]
    if dropout > 0:  # the dropout mask and the dropped-out input
        return out + [Term(shapes[t][0], s, "lora_activations") for t in targets for s in (mask_size, cast)]
    if precision != "fp32":
        return out + [Term(shapes[t][0], cast, "lora_activations") for t in targets]
    # fp32 without dropout: adapters share the base's input tensors; o_proj's is the saved attention output.
    shared = [arch.hidden] * (any(t in targets for t in ATTN_INPUT) + any(t in targets for t in MLP_INPUT))
    if "down_proj" in targets:
        shared.append(arch.intermediate)
    return out + [Term(w, 4, "lora_activations") for w in shared]


@dataclass(frozen=True)
class Setup:
    """One training configuration to cost."""

    method: Method
    batch_size: int
    seq_len: int  # padded tokens per row
    targets_per_row: float  # supervised targets per row (LM head positions)
    precision: Precision
    device: str  # "cpu" or "cuda"
    r: int = 16
    targets: tuple[str, ...] = ()
    dropout: float = LoraSettings.dropout
    allocator: Allocator = "system"  # CPU malloc of the training process
    grad_accum: int = 1  # micro-batches per step: above 1, gradients live through the next forward pass


def memory(arch: Arch, s: Setup) -> dict[str, int]:
    """Peak memory by part (bytes), as the measure sees it: RSS on CPU, max_memory_allocated on CUDA."""
    w = 4 if s.precision in ("fp32", "mixed") else 2  # weight bytes
    trainable = lora_params(arch, s.r, s.targets) if s.method == "lora" else arch.parameters
    tokens = s.batch_size * s.seq_len
    terms = layer_terms(arch, s.method, s.precision, targets=s.targets, r=s.r, dropout=s.dropout,
                        mask_size=4 if s.device == "cpu" else 1)
    parts = {"framework": CPU_PROCESS_BYTES if s.device == "cpu" else 0, "weights": arch.parameters * w,
             "lora_weights": trainable * 4 if s.method == "lora" else 0,
             "gradients": trainable * (4 if s.method == "lora" else w), "optimizer": trainable * 8,
             "activations": 0, "lora_activations": 0, "allocator": 0}
    for t in terms:
        size = tokens * arch.layers * t.bytes
        parts[t.part] += size
        if s.device == "cpu" and s.allocator == "mimalloc":
            parts["allocator"] += round(size * (MIMALLOC_FACTOR - 1))
        elif s.device == "cpu" and tokens * t.bytes < HEAP_LIMIT:
            parts["allocator"] += round(size * (HEAP_FACTOR - 1))
    # The trainer's loss works through the N supervised rows HEAD_CHUNK at a time, keeping dL/dh (N, h):
    # at most a chunk of fp32 logits and their softmax gradient (+ bf16 logits under autocast) coexist.
    n = s.batch_size * s.targets_per_row
    chunk = min(n, HEAD_CHUNK) * arch.vocab * (8 if s.precision == "fp32" else 10)
    parts["lm_head"] = round(chunk + n * arch.hidden * (4 if s.precision == "fp32" else 2))
    if s.precision == "mixed":  # bf16 copies of every matmul weight (adapters too), kept for backward
        adapters = trainable if s.method == "lora" else 0
        parts["autocast_copies"] = 2 * (arch.layers * arch.layer_matmul_params + arch.embedding_params + adapters)
    return parts


def checkpointed_activations(arch: Arch, s: Setup) -> int:
    """Activations with gradient checkpointing: each layer's input, plus one layer recomputed in backward."""
    per_layer = sum(t.bytes for t in layer_terms(arch, s.method, s.precision, targets=s.targets, r=s.r,
                                                 dropout=s.dropout))
    return s.batch_size * s.seq_len * (arch.layers * arch.hidden * (2 if s.precision == "half" else 4) + per_layer)


def peak_bytes(arch: Arch, s: Setup, parts: dict[str, int]) -> int:
    """The highest of two moments (full fine-tuning's gradients replace activations as backward frees them):
    the start of backward, with every activation, the LM head's logits and the first gradients; and the
    optimizer step, with every gradient (plus foreach AdamW's temporaries on CPU)."""
    static = sum(parts[k] for k in ("framework", "weights", "lora_weights", "optimizer"))
    saved = sum(parts.get(k, 0) for k in ("activations", "lora_activations", "allocator", "lm_head",
                                           "autocast_copies"))
    early_grads = parts["gradients"]  # LoRA's are tiny; with accumulation all of them stay between passes
    if s.method == "full" and s.grad_accum == 1:
        early_grads = parts["gradients"] * arch.embedding_params // arch.parameters  # the LM head's first
    step = parts["gradients"] + (parts["gradients"] if s.device == "cpu" else 0)
    return static + max(saved + early_grads, step)


def output_bytes(arch: Arch, method: Method, trainable: int, weight_bytes: int = 4) -> int:
    """Size of what training writes: the fp32 adapter, or the whole model (a tied head once)."""
    return trainable * 4 if method == "lora" else arch.parameters * weight_bytes


# --- data and time ---------------------------------------------------------------------------------------


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
        from tunesmith.data.tokenize import IGNORE

        targets = [sum(1 for x in e.labels[1:] if x != IGNORE) for e in encoded]
        lengths = [len(e.input_ids) for e in encoded]
        return cls(examples=len(encoded), tokens=sum(lengths), targets=sum(targets),
                   longest=max(lengths, default=0), most_targets=max(targets, default=0),
                   truncated=sum(1 for e in encoded if e.truncated))


def data_stats(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int, fmt: str = "auto") -> DataStats:
    """Load and tokenize a dataset file exactly as training will."""
    from tunesmith.data.formats import load_examples
    from tunesmith.data.tokenize import encode

    examples = load_examples(path, fmt)  # type: ignore[arg-type]
    return DataStats.from_encoded([encode(tokenizer, ex.messages, max_length) for ex in examples])


def flops_per_token(arch: Arch, s: Setup) -> float:
    """Training FLOPs per token (see the module doc): weights, LM head on targets only, causal attention."""
    body = arch.layers * arch.layer_matmul_params
    head = arch.embedding_params * s.targets_per_row / max(s.seq_len, 1)
    attention = 6 * arch.layers * s.seq_len * arch.q
    if s.method == "full":
        return 6 * (body + head) + attention
    return 4 * (body + head) + 6 * lora_params(arch, s.r, s.targets) + attention


def matmul_flops(device: str, seconds: float = 0.2) -> float:
    """This device's measured matrix-multiply rate (FLOP/s): fp32 on CPU, bf16 on CUDA."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done < 2:
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()  # wait for the GPU before reading the clock
        done += 1
    return 2 * n**3 * done / elapsed


def calibrate(model: Any, arch: Arch, s: Setup, *, steps: int = 2, max_tokens: int = 256) -> float:
    """Tokens per second of real training steps, as `tunesmith train` runs them, on a synthetic batch.

    On CPU the batch is capped at `max_tokens` so it takes seconds; the rate is scaled to the planned shape
    with the FLOPs model. One warm-up step is not timed.
    """
    import torch

    from tunesmith.config import LoraSettings
    from tunesmith.model.loading import load_model
    from tunesmith.model.lora import add_lora
    from tunesmith.train.kernels import fuse_gated_mlps
    from tunesmith.train.loop import autocast
    from tunesmith.train.loss import CompletionLoss
    from tunesmith.train.optim import make_optimizer

    seq = min(s.seq_len, max_tokens) if s.device == "cpu" else s.seq_len
    batch = max(1, min(s.batch_size, max_tokens // seq)) if s.device == "cpu" else s.batch_size
    net = load_model(model, device=s.device)
    net.config.use_cache = False
    if s.method == "lora":
        net = add_lora(net, LoraSettings(r=s.r, target_modules=list(s.targets), dropout=s.dropout))
    fuse_gated_mlps(net)
    loss_fn, optimizer = CompletionLoss(net), make_optimizer(net, 1e-5, 0.0, s.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, net.config.vocab_size, (batch, seq), generator=gen).to(s.device)
    labels = ids.clone()
    labels[:, : seq - max(1, round(s.targets_per_row * seq / s.seq_len))] = -100  # supervise the tail
    net.train()
    for k in range(steps + 1):
        if k == 1:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(s.device):
            loss, n = loss_fn(ids, labels)
        (loss / n).backward()
        optimizer.step()
    loss.item()  # waits for the device
    rate = batch * seq * steps / (time.perf_counter() - start)
    short = dataclasses.replace(s, seq_len=seq, targets_per_row=s.targets_per_row * seq / s.seq_len)
    return rate * flops_per_token(arch, short) / flops_per_token(arch, s)


# --- recommendation and the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    method: Method
    batch_size: int  # examples per micro-batch
    grad_accum: int  # micro-batches per optimizer step
    max_length: int
    fits: bool | None  # None when no memory budget is known
    reasons: list[str]


def required_bytes(arch: Arch, s: Setup) -> int:
    """What must fit: the measured peak, plus the CUDA context the measure does not see."""
    return peak_bytes(arch, s, memory(arch, s)) + (CUDA_CONTEXT_BYTES if s.device == "cuda" else 0)


def recommend(arch: Arch, s: Setup, budget: int | None, max_length: int) -> Recommendation:
    """The requested run if it fits; else a smaller micro-batch with accumulation, LoRA, or shorter rows."""
    need = required_bytes(arch, s)
    if budget is None:
        return Recommendation(s.method, s.batch_size, 1, max_length, None,
                              [f"needs {gb(need)}; no memory budget known here: pass --gpu-memory GB"])
    usable = budget * HEADROOM
    if need <= usable:
        return Recommendation(s.method, s.batch_size, 1, max_length, True,
                              [f"needs {gb(need)} of {gb(budget)} available"])
    reasons = [f"batch {s.batch_size} x length {s.seq_len} needs {gb(need)}, over the {gb(usable)} usable "
               f"({HEADROOM:.0%} of {gb(budget)})"]
    methods = [s.method] + (["lora"] if s.method == "full" else [])
    for method in methods:
        trial = dataclasses.replace(s, method=method, targets=s.targets or tuple(arch.linears()))
        for b in _halvings(s.batch_size):
            accum = math.ceil(s.batch_size / b)
            cost = required_bytes(arch, dataclasses.replace(trial, batch_size=b, grad_accum=accum))
            if cost <= usable:
                if method != s.method:
                    reasons.append(f"full fine-tuning does not fit even at batch 1 (weights, gradients and "
                                   f"AdamW take 16 bytes per parameter); LoRA at batch {b} needs {gb(cost)}")
                if b < s.batch_size:
                    reasons.append(f"micro-batch {b} x {accum} accumulation steps keeps {s.batch_size} "
                                   f"examples per step and needs {gb(cost)}")
                return Recommendation(method, b, accum, max_length, True, reasons)
    lora = dataclasses.replace(s, method="lora", batch_size=1, targets=s.targets or tuple(arch.linears()))
    return _shorter_rows(arch, lora, usable, reasons, s.method, max_length)


def _shorter_rows(
    arch: Arch, s: Setup, usable: float, reasons: list[str], method: Method, max_length: int
) -> Recommendation:
    length, cost = s.seq_len, required_bytes(arch, s)
    while length > 64:
        length //= 2
        trial = dataclasses.replace(s, seq_len=length, targets_per_row=min(s.targets_per_row, length - 1))
        cost = required_bytes(arch, trial)
        if cost <= usable:
            reasons.append(f"even LoRA at batch 1 does not fit; --max-length {length} needs {gb(cost)} "
                           "(longer examples are truncated)")
            return Recommendation("lora", 1, 1, length, True, reasons)
    reasons.append(f"does not fit: LoRA at batch 1 and length {length} still needs {gb(cost)}; "
                   "use a machine with more memory")
    return Recommendation(method, 1, 1, max_length, False, reasons)


def _halvings(n: int) -> list[int]:
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def gb(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class Plan:
    """The cost of one fine-tuning run, by part, and what to do about it."""

    model: str
    method: Method
    device: str
    precision: Precision
    allocator: Allocator
    batch_size: int
    max_length: int
    seq_len: int  # padded tokens per row used for activations: max_length, or the longest example
    lora_r: int
    target_modules: list[str]
    parameters: int
    trainable_parameters: int
    memory: dict[str, int]  # bytes by part
    peak_memory_bytes: int  # comparable to peak RSS (CPU) or max_memory_allocated (CUDA)
    required_memory_bytes: int  # peak + CUDA context: what must fit
    available_memory_bytes: int | None
    checkpointed_activations_bytes: int  # activations if gradient checkpointing were on
    output_bytes: int  # adapter or full model on disk
    flops_per_token: float
    tokens_per_second: float | None
    speed_source: str  # "calibrated" (real steps), "matmul" (measured rate x efficiency) or "assumed"
    data: DataStats | None
    data_tokens: int | None
    epochs: float
    seconds_per_epoch: float | None
    recommendation: Recommendation
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate(
    model: str, method: Method, *, batch_size: int, max_length: int, lora_r: int = 16,
    target_modules: str | Sequence[str] = "all-linear", device: str = "cpu", dtype: str | None = None,
    data_tokens: int | None = None, epochs: float = 1.0, gpu_memory_gb: float | None = None,
    data: DataStats | None = None, lora_dropout: float = LoraSettings.dropout, calibrate_speed: bool = False,
    allocator: Allocator | None = None,
) -> Plan:
    """Cost one run of `tunesmith train` from the model's config (and `data`'s token counts, if given).

    `allocator`: the CPU malloc of the training process; None means the one `tunesmith train` would use.
    """
    _check(method, batch_size, max_length, lora_r, device, gpu_memory_gb)
    arch, ref = load_arch(model)
    device = "cuda" if device.startswith("cuda") else device
    precision = _precision(dtype, device)
    targets = tuple(lora_targets(arch, target_modules)) if method == "lora" else ()
    seq = min(max_length, data.longest) if data and data.longest else max_length
    per_row = min(seq - 1, data.most_targets) if data else seq - 1
    s = Setup(method, batch_size, seq, per_row, precision, device, lora_r, targets, lora_dropout,
              allocator or training_allocator())
    trainable = lora_params(arch, lora_r, targets) if method == "lora" else arch.parameters
    parts = memory(arch, s)
    budget = _budget(device, gpu_memory_gb)
    tokens = data_tokens if data_tokens is not None else (data.tokens if data else None)
    timing = s
    if data and data.examples:  # time follows the mean row, memory the longest
        mean = max(2, round(data.tokens / data.examples))
        timing = dataclasses.replace(s, seq_len=mean, targets_per_row=mean * data.targets / max(data.tokens, 1))
    rate, source, notes = _speed(ref, arch, timing, calibrate_speed)
    return Plan(
        model=model, method=method, device=device, precision=precision, allocator=s.allocator,
        batch_size=batch_size,
        max_length=max_length, seq_len=seq, lora_r=lora_r, target_modules=list(targets),
        parameters=arch.parameters, trainable_parameters=trainable, memory=parts,
        peak_memory_bytes=peak_bytes(arch, s, parts), required_memory_bytes=required_bytes(arch, s),
        available_memory_bytes=budget, checkpointed_activations_bytes=checkpointed_activations(arch, s),
        output_bytes=output_bytes(arch, method, trainable, 2 if precision == "half" else 4),
        flops_per_token=flops_per_token(arch, timing), tokens_per_second=rate, speed_source=source,
        data=data, data_tokens=tokens, epochs=epochs,
        seconds_per_epoch=tokens / rate if tokens is not None and rate else None,
        recommendation=recommend(arch, s, budget, max_length), notes=notes,
    )


def training_allocator() -> Allocator:
    """The malloc `tunesmith train` runs under: mimalloc when installed (and not opted out), else glibc's."""
    from tunesmith.train.allocator import allocator_env, current_allocator

    return "mimalloc" if current_allocator() == "mimalloc" or allocator_env() is not None else "system"


def _check(method: str, batch: int, length: int, r: int, device: str, gpu_gb: float | None) -> None:
    if method not in ("lora", "full"):
        raise ConfigError(f"method '{method}': expected lora or full")
    for name, value in (("batch size", batch), ("max length", length), ("LoRA r", r)):
        if value < 1:
            raise ConfigError(f"{name} {value}: must be at least 1")
    if length < 2:
        raise ConfigError(f"max length {length}: must be at least 2 (one input and one target token)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device '{device}': expected cpu or cuda")
    if gpu_gb is not None and (device == "cpu" or gpu_gb <= 0):
        raise ConfigError(f"--gpu-memory {gpu_gb:g}: give a positive size in GB, with --device cuda")


def _precision(dtype: str | None, device: str) -> Precision:
    if dtype in (None, "float32", "fp32"):
        return "mixed" if device == "cuda" else "fp32"
    if dtype in ("bfloat16", "bf16", "float16", "fp16"):
        return "half"
    raise ConfigError(f"dtype '{dtype}': expected float32, bfloat16 or float16")


def _budget(device: str, gpu_memory_gb: float | None) -> int | None:
    """Memory this run may use: free RAM for CPU; --gpu-memory, or this machine's GPU, for CUDA."""
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if gpu_memory_gb is not None:
        return int(gpu_memory_gb * GIB)  # GPU makers' "80 GB" is 80 GiB
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


def _speed(ref: Any, arch: Arch, s: Setup, calibrate_speed: bool) -> tuple[float, str, list[str]]:
    """Tokens per second: from real steps when asked and possible, else FLOPs over a matmul rate."""
    import torch

    notes: list[str] = []
    here = s.device == "cpu" or torch.cuda.is_available()
    weights = ref is not None and ref.kind != "hub" and any(Path(ref.path).glob("*.safetensors"))
    if calibrate_speed and here and weights:
        return calibrate(ref, arch, s), "calibrated", notes
    if calibrate_speed:
        notes.append("speed from FLOPs: " + ("no GPU here" if not here else "no local weights to calibrate with"))
    if here:
        rate = matmul_flops(s.device) * EFFICIENCY[s.device]
        return rate / flops_per_token(arch, s), "matmul", notes
    notes.append(f"speed assumes a GPU doing {ASSUMED_CUDA_FLOPS / 1e12:.0f} TFLOP/s bf16 matmuls")
    return ASSUMED_CUDA_FLOPS * EFFICIENCY["cuda"] / flops_per_token(arch, s), "assumed", notes
