"""Peak memory of one training configuration, by part, from the model's shapes alone.

Memory, in bytes (B micro-batch, T padded length, L layers, h hidden, i MLP width, q = heads x head_dim,
kv = kv_heads x head_dim, V vocabulary, N supervised targets in the batch, r LoRA rank, P parameters):
- weights: P x bytes of the base's storage. `tunesmith train` keeps fp32 weights in fp32 training and for
  full fine-tuning in bf16 (autocast: "mixed"); a frozen LoRA base in bf16 training is bf16 ("bf16"). A quantized
  base (bitsandbytes) stores each decoder linear layer as NF4 with double quantization (4 bits, plus an
  8-bit absmax per 64 weights and an fp32 one per 256 blocks: 0.516 bytes a weight) or LLM.int8 (1 byte,
  plus an fp32 scale per output row); embeddings, norms and an untied head keep the base dtype.
- gradients: one per trainable parameter, in fp32 (LoRA adapters and full-fine-tuning weights are fp32);
  AdamW: two fp32 moments (8 bytes) each. LoRA trains r x (in + out) per adapted linear layer.
- activations: exactly what autograd saves for backward, per token and decoder layer (`layer_terms`,
  checked against autograd's saved tensors in tests). Full fp32, for instance: 2 RMSNorms x 2 tensors of h
  (input, scaled: the trainer's fused RMSNorm recomputes the normalised one), rotated q and attention output
  (2q), rotated k and v (2kv), gate, up (the trainer's fused SwiGLU recomputes SiLU) and down_proj's input
  (3i), all fp32: (4h + 2q + 2kv + 3i) x 4.
  A frozen base saves less (no weight gradients: the norms keep their input, the MLP gate and up) but each
  adapter saves its input: with dropout, the mask and the dropped-out copy. With gradient checkpointing
  only each layer's input (h) stays, plus one layer's activations while it is recomputed and as much
  again in the gradients flowing through it (measured: 350 MiB at 4 x 512 tokens, planned 337 MiB).
- LM head: the trainer projects only the N supervised positions, 256 rows at a time, and keeps only the
  gradient for the hidden states (N x h); a chunk's fp32 logits and softmax gradient are 8 x 256 x V bytes.
- autocast copies: under bf16 autocast each matmul keeps a bf16 copy of its fp32 weight for backward (the
  whole model for "mixed", only the fp32 adapters on a bf16 or quantized base).
- loading (CPU): a base converted while it loads (another dtype than the checkpoint's, or quantized) holds
  the whole memory-mapped checkpoint and the converted weights at once, before training starts.
- dequantization: a quantized layer is dequantized into a temporary for each matmul; the largest one.
- sharding (FSDP over W ranks): every rank keeps 1/W of the weights, gradients and AdamW state, plus the
  layers being gathered (two: the current one and the prefetched next) and the root's own parameters
  (embeddings, head, final norm), which stay gathered through the step (and, for full fine-tuning, their
  unsharded gradient until backward ends).
- CPU allocator: `tunesmith train` runs under mimalloc when installed; its pages and segments cost 1.2x the
  activations in peak RSS. glibc serves requests under 32 MiB from heaps that fragment: 1.85x. Both
  measured with the trainer on the built-in model (batch 2-8, length 64-256).
- framework: the Python process with torch and transformers (CPU RSS); on CUDA the context, which
  `max_memory_allocated` does not see but which must fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tunesmith.config import LoraSettings, Method
from tunesmith.model.arch import ATTN_INPUT, MLP_INPUT, Arch, lora_params
from tunesmith.train.loss import HEAD_CHUNK

Precision = Literal["fp32", "mixed", "half", "bf16"]
Quant = Literal["none", "nf4", "int8"]
Allocator = Literal["mimalloc", "system"]

GIB = 1024**3
CPU_PROCESS_BYTES = 480 * 1024**2  # RSS of python + torch + transformers + peft + tokenizer, measured (glibc)
MIMALLOC_PROCESS_BYTES = 540 * 1024**2  # the same under mimalloc (its arenas), measured
# Each FSDP rank on CPU also holds the gloo process group and what remains of the host copy it loaded before
# sharding: 130-280 MiB above the itemised parts in runs of 2 ranks (LoRA and full), measured
FSDP_CPU_RANK_BYTES = 170 * 1024**2
BNB_PROCESS_BYTES = 60 * 1024**2  # bitsandbytes' CPU library and its imports, measured
CUDA_CONTEXT_BYTES = 600 * 1024**2  # CUDA context and kernels: outside max_memory_allocated
HEAP_LIMIT = 32 * 1024**2  # glibc's largest mmap threshold: smaller tensors live in fragmenting heaps
HEAP_FACTOR = 1.85  # glibc: peak RSS per byte of activations in heap-sized tensors (measured)
MIMALLOC_FACTOR = 1.2  # mimalloc (what `tunesmith train` runs under): peak RSS per byte of activations
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weight + 8-bit absmax per 64 + fp32 absmax per 256 blocks
PARTS = ("framework", "weights", "lora_weights", "gradients", "optimizer", "activations", "lora_activations",
         "lm_head", "autocast_copies", "dequant", "fsdp_gathered", "allocator")


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
        if arch.fused_norm:  # input (its own dtype) and the scaled output the next matmul keeps
            norm = {"fp32": [4, 4], "half": [2, 2], "bf16": [2, 2], "mixed": [4]}[precision]
        else:  # plus an fp32 upcast of a half input and the normalised tensor
            norm = {"fp32": [4, 4, 4], "half": [4, 2, 2], "bf16": [4, 2, 2], "mixed": [4, 4]}[precision]
        terms += [Term(h, s) for s in norm * 2] + [Term(i, a)] * (3 if arch.fused_mlp else 4)  # + down's input
        if precision == "mixed":
            terms += [Term(h, 2)] * 5  # q, k, v, gate, up each cast their fp32 input to bf16
        return terms
    norm_in = 2 if arch.fused_norm and precision in ("half", "bf16") else 4  # the fused norm keeps no fp32 copy
    terms += [Term(h, norm_in), Term(h, norm_in)] + [Term(i, a)] * (2 if arch.fused_mlp else 3)  # gate, up
    return terms + _lora_terms(arch, precision, targets, r, dropout, mask_size)


def _lora_terms(
    arch: Arch, precision: Precision, targets: Sequence[str], r: int, dropout: float, mask_size: int
) -> list[Term]:
    """What each adapter saves: its input (dropped out, or an fp32/bf16 cast) and A's output (r)."""
    shapes = arch.linears()
    cast = 2 if precision in ("mixed", "bf16") else 4  # PEFT casts to the fp32 adapter; autocast back to bf16
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
    """One training configuration to cost (`tunesmith.plan.setup_for` derives it from a TrainConfig)."""

    method: Method
    batch_size: int  # rows per forward pass (a micro-batch above the forward_tokens budget runs in several)
    seq_len: int  # padded tokens per row
    targets_per_row: float  # supervised targets per row (LM head positions)
    precision: Precision
    device: str  # "cpu" or "cuda"
    r: int = 16
    targets: tuple[str, ...] = ()
    dropout: float = LoraSettings.dropout
    allocator: Allocator = "system"  # CPU malloc of the training process
    grad_accum: int = 1  # forward passes per step: above 1, gradients live through the next one
    quant: Quant = "none"  # storage of the frozen base's linear layers
    checkpointing: bool = False
    world: int = 1  # ranks (each runs its own micro-batch)
    sharded: bool = False  # FSDP: weights, gradients and optimizer state split over the ranks
    process_bytes: int | None = None  # CPU: what the training process already holds, when it is measured


def _dense_bytes(s: Setup) -> int:
    """Bytes of a stored (unquantized) weight and of the hidden stream: 2 for a bf16 base, else 4."""
    return 2 if s.precision in ("half", "bf16") else 4


def _weight_bytes(arch: Arch, s: Setup) -> tuple[float, float, float]:
    """(bytes of every weight, of one decoder layer's weights, of the root's own weights) in storage."""
    dense = _dense_bytes(s)
    linear = {"none": dense, "nf4": NF4_BYTES, "int8": 1.0}[s.quant]
    layer_linear = arch.layer_matmul_params * linear
    if s.quant == "int8":  # an fp32 scale per output row
        layer_linear += 4 * sum(out for _, out, _ in arch.linears().values())
    layer = layer_linear + (arch.layer_params - arch.layer_matmul_params) * dense
    root = (arch.parameters - arch.layers * arch.layer_params) * dense
    return arch.layers * layer + root, layer, root


def memory(arch: Arch, s: Setup) -> dict[str, int]:
    """Peak memory by part (bytes) of one rank, as the measure sees it: RSS on CPU, max_memory_allocated on CUDA."""
    trainable = lora_params(arch, s.r, s.targets) if s.method == "lora" else arch.parameters
    tokens = s.batch_size * s.seq_len
    terms = layer_terms(arch, s.method, s.precision, targets=s.targets, r=s.r, dropout=s.dropout,
                        mask_size=4 if s.device == "cpu" else 1)
    weights, layer_weights, root_weights = _weight_bytes(arch, s)
    share = 1 / s.world if s.sharded else 1.0
    framework = 0
    if s.device == "cpu":
        process = s.process_bytes or (MIMALLOC_PROCESS_BYTES if s.allocator == "mimalloc" else CPU_PROCESS_BYTES)
        framework = process + (BNB_PROCESS_BYTES if s.quant != "none" else 0)
        framework += FSDP_CPU_RANK_BYTES if s.sharded and s.world > 1 else 0
    parts = dict.fromkeys(PARTS, 0)
    parts.update(framework=framework, weights=round(weights * share),
                 lora_weights=round(trainable * 4 * share) if s.method == "lora" else 0,
                 gradients=round(trainable * 4 * share), optimizer=round(trainable * 8 * share))
    if s.sharded and s.world > 1:
        # Gathered next to the shards: two layers at a time (the current one and the prefetched next) and the
        # root's own parameters for the whole step; full fine-tuning also holds the root's unsharded fp32
        # gradient until backward ends, and a layer's unsharded gradient while it is reduce-scattered.
        grads = 0.0
        if s.method == "full":
            grads = 4 * ((arch.parameters - arch.layers * arch.layer_params) + 2 * arch.layer_params)
        parts["fsdp_gathered"] = round(2 * layer_weights + root_weights + grads)
    per_layer = sum(t.bytes for t in terms)
    if s.checkpointing:  # each layer keeps its input; one layer at a time is recomputed, and its gradients flow
        stream = _dense_bytes(s)
        saved = {"activations": tokens * (arch.layers * arch.hidden * stream + 2 * per_layer), "lora_activations": 0}
    else:
        saved = {part: tokens * arch.layers * sum(t.bytes for t in terms if t.part == part)
                 for part in ("activations", "lora_activations")}
    parts.update(saved)
    if s.device == "cpu":
        parts["allocator"] = _allocator_overhead(s, terms, tokens, sum(saved.values()))
    # The trainer's loss works through the N supervised rows HEAD_CHUNK at a time, keeping dL/dh (N, h):
    # at most a chunk of fp32 logits and their softmax gradient (+ bf16 logits under autocast) coexist.
    n = s.batch_size * s.targets_per_row
    chunk = min(n, HEAD_CHUNK) * arch.vocab * (8 if s.precision == "fp32" else 10)
    parts["lm_head"] = round(chunk + n * arch.hidden * (4 if s.precision == "fp32" else 2))
    if s.precision == "mixed":  # bf16 copies of every matmul weight (adapters too), kept for backward
        adapters = trainable if s.method == "lora" else 0
        parts["autocast_copies"] = 2 * (arch.layers * arch.layer_matmul_params + arch.embedding_params + adapters)
    elif s.method == "lora" and s.precision == "bf16":  # only the fp32 adapters are cast
        parts["autocast_copies"] = 2 * trainable
    if s.quant != "none":
        compute = 4 if s.precision == "fp32" else 2
        parts["dequant"] = max(a * b for a, b, _ in arch.linears().values()) * compute
    return parts


def _allocator_overhead(s: Setup, terms: list[Term], tokens: int, saved: int) -> int:
    if s.allocator == "mimalloc":
        return round(saved * (MIMALLOC_FACTOR - 1))
    small = sum(t.bytes for t in terms if tokens * t.bytes < HEAP_LIMIT)
    share = small / max(sum(t.bytes for t in terms), 1)
    return round(saved * share * (HEAP_FACTOR - 1))


def peak_bytes(arch: Arch, s: Setup, parts: dict[str, int]) -> int:
    """The highest of two moments (full fine-tuning's gradients replace activations as backward frees them):
    the start of backward, with every activation, the LM head's logits and the first gradients; and the
    optimizer step, with every gradient (plus, on CPU, a measured gradient-sized block)."""
    static = sum(parts[k] for k in ("framework", "weights", "lora_weights", "optimizer", "fsdp_gathered"))
    saved = sum(parts[k] for k in ("activations", "lora_activations", "allocator", "lm_head", "autocast_copies",
                                   "dequant"))
    early_grads = parts["gradients"]  # LoRA's are tiny; with accumulation all of them stay between passes
    if s.method == "full" and s.grad_accum == 1:
        early_grads = parts["gradients"] * arch.embedding_params // arch.parameters  # the LM head's first
    # On CPU the step's measured peak is about one more gradient-sized block above weights + moments +
    # gradients, with the fused AdamW too (full fine-tuning of the built-in model, 2-step run: 2938 MiB
    # measured against 2592 without it); the block is measured, not itemised, so it stays in the estimate.
    step = parts["gradients"] + (parts["gradients"] if s.device == "cpu" else 0)
    return max(static + max(saved + early_grads, step), _load_bytes(arch, s, parts))


def _load_bytes(arch: Arch, s: Setup, parts: dict[str, int]) -> int:
    """CPU RSS while the base loads, where loading converts it (another dtype, or quantization): every page of
    the memory-mapped checkpoint is read and stays resident while the converted copy is built (the built-in
    model's fp32 file loaded as a bf16 base: 1152 MiB peak, 641 MiB after). Loading without conversion maps
    the file's pages as the weights themselves: nothing beyond them."""
    if s.device != "cpu" or not arch.stored_bytes or (s.quant == "none" and _dense_bytes(s) == arch.stored_bytes):
        return 0
    return parts["framework"] + arch.parameters * arch.stored_bytes + round(_weight_bytes(arch, s)[0])


def required_bytes(arch: Arch, s: Setup) -> int:
    """What must fit on one device: the measured peak, plus the CUDA context the measure does not see."""
    return peak_bytes(arch, s, memory(arch, s)) + (CUDA_CONTEXT_BYTES if s.device == "cuda" else 0)


def output_bytes(arch: Arch, method: Method, trainable: int, weight_bytes: int = 4) -> int:
    """Size of what training writes: the fp32 adapter, or the whole model (a tied head once)."""
    return trainable * 4 if method == "lora" else arch.parameters * weight_bytes


def checkpoint_bytes(trainable: int) -> int:
    """One checkpoint on disk: the weights that train and AdamW's two moments, all fp32 (12 bytes a weight)."""
    return trainable * 12


def disk_bytes(checkpoint: int, keep: int) -> int:
    """The run folder at its fullest: the `keep` newest checkpoints, the best one when it is older, and the one
    being written (the export comes after the last save and is smaller than a checkpoint)."""
    return (keep + 2) * checkpoint


def gb(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"
