"""The training loop: one function, both methods (LoRA and full), read top to bottom.

Vocabulary: a *step* is one optimizer update; a *micro-batch* one forward/backward; *tokens* are real
(non-pad) tokens; *targets* are supervised next-token predictions. The loss of a step is the mean over all
its targets, however they are spread over micro-batches (and ranks).

Under torchrun every rank runs the same number of forward/backward passes in a step, so their collectives
(DDP's all-reduce, FSDP's all-gathers and reduce-scatters) always pair up: where an epoch's micro-batches do
not divide by the ranks, a rank short of one runs a one-row stand-in with weight 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from tunesmith.data.tokenize import Encoded
from tunesmith.errors import TrainingError
from tunesmith.train import checkpoint
from tunesmith.train.batching import collate, epoch_order, pieces
from tunesmith.train.distributed import Dist, broadcast_flag, gathered, rank_share, sum_over_ranks
from tunesmith.train.loss import CompletionLoss
from tunesmith.train.precision import autocast

log = logging.getLogger(__name__)


class Guard(Protocol):
    """Scores general skills during training (see tunesmith.evaluate.guard.TrainingGuard): metrics, the overall
    verdict, and the verdict of each task that does not pass."""

    def check(self, model: nn.Module) -> tuple[dict[str, float], str, dict[str, str]]: ...


@dataclass
class Hooks:
    """What a caller may watch: the start (resolved config and manifest), every step, every evaluation.

    `on_step` and `on_eval` receive the logged record."""

    on_start: Callable[[Any, dict[str, Any]], None] | None = None
    on_step: Callable[[dict[str, Any]], None] | None = None
    on_eval: Callable[[dict[str, Any]], None] | None = None


@dataclass
class LoopSpec:
    """Everything the loop needs besides the model: data, schedule, where to write."""

    train: Sequence[Encoded]
    eval: Sequence[Encoded]
    pad_id: int
    batch_size: int
    grad_accum: int
    total_steps: int
    eval_every: int
    save_every: int
    keep_checkpoints: int
    grad_clip: float
    patience: int | None
    seed: int
    device: str
    checkpoints: Any  # pathlib.Path of RUN/checkpoints
    log_metrics: Callable[[dict[str, Any]], None]
    guard: Guard | None = None
    guard_stop: bool = False
    dist: Dist = field(default_factory=Dist)
    forward_tokens: int | None = None  # most padded tokens per forward pass (tunesmith.train.batching.pieces)
    precision: str = "fp32"  # resolved: fp32 or bf16 (tunesmith.train.precision)

    @property
    def micro_per_step(self) -> int:
        return self.grad_accum * self.dist.world


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    micro = math.ceil(n_examples / batch_size)
    return max(1, math.ceil(micro / (grad_accum * world)))


@torch.no_grad()
def eval_loss(loss_fn: CompletionLoss, data: Sequence[Encoded], *, pad_id: int, batch_size: int, device: str,
              precision: str = "fp32", dist: Dist | None = None) -> float:
    """Mean cross-entropy per supervised target over `data` (dropout off). Every rank must call it: the ranks
    split the batches, each running the same number (a discarded one-row stand-in evens them out)."""
    dist = dist or Dist()
    model = loss_fn.model
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    for start in rank_share(range(0, len(order), batch_size), dist):
        rows = order[start : start + batch_size] if start is not None else order[:1]  # None: a stand-in
        batch = collate([data[i] for i in rows], pad_id).to(device)
        with autocast(device, precision):
            loss_sum, count = loss_fn(batch.input_ids, batch.labels, batch.attention_mask, batch.position_ids)
        if start is not None:
            total += float(loss_sum)
            n += int(count)
    if dist.sharded:
        loss_fn.reshard()  # type: ignore[operator]  # FSDP keeps the root gathered after a forward for its backward
    model.train(was_training)
    total, n = sum_over_ranks(dist, device, total, n)
    return total / max(n, 1)


def run_loop(
    loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, spec: LoopSpec,
    state: checkpoint.TrainState, hooks: Hooks | None = None,
) -> checkpoint.TrainState:
    """Train from `state` until `spec.total_steps` (or early stop). `loss_fn` may be wrapped by DDP or sharded."""
    hooks = hooks or Hooks()
    inner: CompletionLoss = getattr(loss_fn, "module", loss_fn)
    model, d = inner.model, spec.dist
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = [len(e.input_ids) for e in spec.train]
    model.train()
    stop = False
    while state.step < spec.total_steps and not stop:
        order = epoch_order(lengths, spec.batch_size, spec.seed, state.epoch)
        while state.batch_in_epoch < len(order) and state.step < spec.total_steps and not stop:
            t0 = time.perf_counter()
            micro = order[state.batch_in_epoch : state.batch_in_epoch + spec.micro_per_step]
            # Forward passes of the step, split to the token budget before they are shared out, so that every
            # rank still runs as many; None where an uneven tail leaves this rank short.
            mine = rank_share([p for b in micro for p in pieces(b, lengths, spec.forward_tokens)], d)
            # Targets of the whole step, all ranks: every rank knows the order, so no communication needed.
            step_targets = sum(spec.train[i].targets for b in micro for i in b)
            optimizer.zero_grad(set_to_none=True)
            loss_total, tokens = torch.zeros((), device=spec.device), 0
            for k, indices in enumerate(mine):
                batch = collate([spec.train[i] for i in indices or micro[0][:1]], spec.pad_id).to(spec.device)
                keep = 1.0 if indices else 0.0  # a stand-in's gradient is zero; its collectives still run
                sync = contextlib.nullcontext()
                if d.enabled and not d.sharded and k < len(mine) - 1:
                    # DDP all-reduces once, on the last micro-batch; FSDP reduce-scatters each one, so that
                    # only this rank's shard of the gradients is ever kept.
                    sync = loss_fn.no_sync()
                with sync, autocast(spec.device, spec.precision):
                    loss_sum, _ = loss_fn(batch.input_ids, batch.labels, batch.attention_mask, batch.position_ids)
                    # DDP and FSDP average gradients over ranks; scale so the result is the mean over all targets.
                    (loss_sum * d.world / max(step_targets, 1) * keep).backward()
                if indices:
                    loss_total += loss_sum.detach()
                    tokens += batch.tokens
            loss, tokens = sum_over_ranks(d, spec.device, float(loss_total), tokens)  # waits on the device
            loss, tokens = loss / max(step_targets, 1), int(tokens)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"step {state.step + 1}: loss is {loss}; training stopped. Lower the learning rate "
                    f"(--lr) or check the data; resume from the last checkpoint with --resume"
                )
            grad_norm = _clip(params, spec.grad_clip, optimizer)
            if not math.isfinite(grad_norm):  # an inf/nan gradient would poison the weights at this step
                raise TrainingError(
                    f"step {state.step + 1}: gradient norm is {grad_norm} (loss {loss:.4f}); training stopped "
                    "before the update. Lower the learning rate (--lr) or check the data; resume from the last "
                    "checkpoint with --resume"
                )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            dt = time.perf_counter() - t0
            state.step += 1
            state.batch_in_epoch += len(micro)
            state.tokens += tokens
            state.elapsed += dt
            record = {"step": state.step, "epoch": round(state.epoch + state.batch_in_epoch / len(order), 4),
                      "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                      "tokens_per_s": round(tokens / dt, 1), "tokens": state.tokens,
                      "elapsed": round(state.elapsed, 3)}
            spec.log_metrics(record)
            if hooks.on_step:
                hooks.on_step(record)
            stop = _evaluate_and_save(inner, optimizer, scheduler, spec, state, hooks)
        if state.batch_in_epoch >= len(order):
            state.epoch += 1
            state.batch_in_epoch = 0
    return state


def _evaluate_and_save(
    inner: CompletionLoss, optimizer: torch.optim.Optimizer, scheduler: Any, spec: LoopSpec,
    state: checkpoint.TrainState, hooks: Hooks,
) -> bool:
    """Evaluate and checkpoint when due; return True to stop early (patience or guard)."""
    last = state.step >= spec.total_steps
    improved, guarded, stop = False, False, False
    d = spec.dist
    if spec.eval and (state.step % spec.eval_every == 0 or last):
        loss = eval_loss(inner, spec.eval, pad_id=spec.pad_id, batch_size=spec.batch_size, device=spec.device,
                         precision=spec.precision, dist=d)
        improved = state.best_eval_loss is None or loss < state.best_eval_loss
        if improved:
            state.best_eval_loss, state.best_step, state.evals_since_best = loss, state.step, 0
        else:
            state.evals_since_best += 1
        record: dict[str, Any] = {"step": state.step, "eval_loss": round(loss, 6),
                                  "eval_ppl": round(math.exp(min(loss, 50.0)), 4)}
        if spec.guard is not None and (d.main or d.sharded):  # under FSDP every rank takes part in its forwards
            with gathered(inner, d):
                metrics, verdict, flags = spec.guard.check(inner.model)
            record.update(metrics)
            record.update(guard_verdict=verdict, guard_flags=flags)
            stop = spec.guard_stop and verdict == "fail"
            # The export candidate: the best eval loss among the steps the guard does not fail.
            guarded = verdict != "fail" and (state.guarded_eval_loss is None or loss < state.guarded_eval_loss)
            if guarded:
                state.guarded_eval_loss, state.guarded_step = loss, state.step
        if spec.patience is not None and state.evals_since_best >= spec.patience:
            record["early_stop"] = f"no better eval loss in {spec.patience} evaluations"
            stop = True
        spec.log_metrics(record)
        if hooks.on_eval:
            hooks.on_eval(record)
        stop = broadcast_flag(d, stop)
    if (d.main or d.sharded) and (state.step % spec.save_every == 0 or last or improved or guarded or stop):
        checkpoint.save(spec.checkpoints, inner.model, optimizer, scheduler, state, best=improved, guarded=guarded,
                        dist=d)
        if d.main:
            checkpoint.prune(spec.checkpoints, spec.keep_checkpoints)
    return stop


def _clip(params: list[nn.Parameter], max_norm: float, optimizer: torch.optim.Optimizer) -> float:
    """The global gradient norm; when it exceeds `max_norm` (> 0) the step uses the gradients scaled down to it.

    Scaling is one more pass over every gradient, so it runs only when needed, and a fused AdamW does it inside
    its own pass (its `grad_scale` divides each gradient as it is read; GradScaler uses the same hook). Under
    FSDP the gradients are DTensor shards: their norm is a partial one on each rank until `full_tensor`
    reduces it, and they are scaled in place."""
    optimizer.grad_scale = None  # type: ignore[attr-defined]  # this step's, set below when it clips
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads)
    sharded = hasattr(norm, "full_tensor")
    if sharded:
        norm = norm.full_tensor()
    value = float(norm)
    if 0 < max_norm < value and math.isfinite(value):
        scale = (norm + 1e-6) / max_norm  # clip_grads_with_norm_'s coefficient, inverted
        if optimizer.defaults.get("fused") and not sharded:
            optimizer.grad_scale = scale.to(torch.float32).reshape(())  # type: ignore[attr-defined]
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value
