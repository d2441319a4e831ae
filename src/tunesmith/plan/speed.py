"""Time: training FLOPs per token, the device's matmul rate, and calibration on real training steps.

FLOPs per token are 6 per weight for full fine-tuning (forward 2, input and weight gradients 2 + 2), 4 per
frozen weight (no weight gradient) plus 6 per adapter weight for LoRA, the LM head only on the supervised
share, and 6 x L x T x q for causal attention (half of the T x T scores, forward + 2x backward). Gradient
checkpointing runs each layer's forward twice (+2 per weight, + the attention forward). Divided by this
device's measured matmul rate times `EFFICIENCY` (and `QUANT_EFFICIENCY` for a quantized base, whose
weights are dequantized for every matmul), or, better, by the rate of a few real training steps.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from tunesmith.model.arch import Arch, lora_params
from tunesmith.plan.memory import Setup

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig

# Share of the matmul rate in the run's number format a training step reaches (CPU: measured on the built-in
# model, fp32 0.3 and bf16 on AMX 0.31 of the 1024-square rate)
EFFICIENCY = {"cpu": 0.3, "cuda": 0.4}
QUANT_EFFICIENCY = {"none": 1.0, "nf4": 0.75, "int8": 0.6}  # dequantization per matmul (assumed)
ASSUMED_CUDA_FLOPS = 150e12  # bf16 matmul rate assumed for a GPU that is not in this machine


def flops_per_token(arch: Arch, s: Setup) -> float:
    """Training FLOPs per token (see the module doc): weights, LM head on targets only, causal attention."""
    body = arch.layers * arch.layer_matmul_params
    head = arch.embedding_params * s.targets_per_row / max(s.seq_len, 1)
    attention = 6 * arch.layers * s.seq_len * arch.q
    recompute = (2 * body + attention / 3) if s.checkpointing else 0.0
    if s.method == "full":
        return 6 * (body + head) + attention + recompute
    return 4 * (body + head) + 6 * lora_params(arch, s.r, s.targets) + attention + recompute


def matmul_flops(device: str, precision: str = "fp32", seconds: float = 0.2) -> float:
    """This device's measured matrix-multiply rate (FLOP/s) in `precision`'s number format."""
    import torch

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
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


def calibrate(config: TrainConfig, ref: Any, arch: Arch, s: Setup, *, warmup: int = 2, rounds: int = 2) -> float:
    """Tokens per second of real training, with the model built and sped up as `tunesmith train` does.

    Times forward + backward passes of the trainer's own size on CPU (`forward_tokens`, 768 by default, so it
    takes seconds; the whole micro-batch on a GPU) and, apart, the optimizer step, which a real step pays once
    for `batch_size` x `grad_accum` rows (for a full fine-tune it is a large share). The pass rate is scaled
    to the planned shape with the FLOPs model. The first `warmup` rounds are not timed: on a CPU the second
    pass is still 2-3x slower than the ones after it (AdamW's moments, autocast's copies, fresh pages).
    """
    import torch

    from tunesmith.train.batching import forward_budget
    from tunesmith.train.fastpath import switch_on_unchecked
    from tunesmith.train.loss import CompletionLoss
    from tunesmith.train.optim import make_optimizer
    from tunesmith.train.precision import autocast
    from tunesmith.train.run import build_model

    budget = forward_budget(config.forward_tokens, s.device)
    seq = min(s.seq_len, budget) if budget else s.seq_len
    batch = max(1, min(s.batch_size, budget // seq)) if budget else s.batch_size
    net = build_model(config, ref, s.device)
    loss_fn, optimizer = CompletionLoss(net), make_optimizer(net, 1e-5, 0.0, s.device)
    precision = "fp32" if s.precision == "fp32" else "bf16"  # the planner's "mixed" is full fine-tuning in bf16
    switch_on_unchecked(loss_fn, precision)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, net.config.vocab_size, (batch, seq), generator=gen).to(s.device)
    labels = ids.clone()
    labels[:, : seq - max(1, round(s.targets_per_row * seq / s.seq_len))] = -100  # supervise the tail
    net.train()

    def timed(work: Any) -> float:
        start = time.perf_counter()
        work()
        if s.device.startswith("cuda"):
            torch.cuda.synchronize()  # wait for the GPU before reading the clock
        return time.perf_counter() - start

    def forward_backward() -> None:
        with autocast(s.device, precision):
            loss, n = loss_fn(ids, labels)
        (loss / n).backward()

    pass_seconds = step_seconds = 0.0
    for k in range(warmup + rounds):  # as training does: passes, the optimizer step, gradients freed
        fb, step = timed(forward_backward), timed(optimizer.step)
        optimizer.zero_grad(set_to_none=True)
        if k >= warmup:
            pass_seconds, step_seconds = pass_seconds + fb / rounds, step_seconds + step / rounds
    short = dataclasses.replace(s, seq_len=seq, targets_per_row=s.targets_per_row * seq / s.seq_len)
    pass_rate = batch * seq / pass_seconds * flops_per_token(arch, short) / flops_per_token(arch, s)
    step_tokens = s.batch_size * config.grad_accum * s.seq_len
    return step_tokens / (step_tokens / pass_rate + step_seconds)


def flops_rate(s: Setup, here: bool) -> tuple[float, str]:
    """FLOP/s a training step of `s` reaches: measured matmul rate (or an assumed GPU) x efficiency."""
    peak, source = (matmul_flops(s.device, s.precision), "matmul") if here else (ASSUMED_CUDA_FLOPS, "assumed")
    return peak * EFFICIENCY[s.device] * QUANT_EFFICIENCY[s.quant], source
