"""A fine-tuning run from config to output folder: the run folder describes itself and resumes exactly.

`train` opens the run folder (`tunesmith.runfolder` owns its layout), prepares the data, builds the model,
checks its fast paths, runs the one loop, and exports the best checkpoint. What the API layer adds (the
forgetting guard, replay examples) comes in through `Extras`, so training never imports evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tunesmith import __version__, track
from tunesmith.config import TrainConfig, resolve_defaults
from tunesmith.diskspace import folder_bytes, free_bytes
from tunesmith.errors import DiskFullError, RunError
from tunesmith.model.loading import ModelRef, fingerprint, load_model, load_tokenizer, pick_device, resolve
from tunesmith.runfolder import MetricsSink, RunFolder
from tunesmith.train import checkpoint, kernels, wise
from tunesmith.train.allocator import current_allocator, peak_rss_bytes
from tunesmith.train.batching import forward_budget
from tunesmith.train.choose import Choice, Scaling, choose_checkpoint, rescue_best, scale_toward_base
from tunesmith.train.distributed import (
    Dist,
    broadcast_flag,
    device_for,
    full_state_dict,
    gather,
    gathered,
    load_device,
    setup,
    teardown,
    wrap,
)
from tunesmith.train.fastpath import check_fast_paths
from tunesmith.train.loop import Guard, Hooks, LoopSpec, eval_loss, run_loop, steps_per_epoch
from tunesmith.train.loss import CompletionLoss
from tunesmith.train.optim import make_optimizer, make_scheduler
from tunesmith.train.precision import base_dtype, bound_kernel_cache
from tunesmith.train.precision import resolve as resolve_precision
from tunesmith.train.prepare import Messages, RunData, prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extras:
    """What the layer above adds to a run: a forgetting guard (built once the tokenizer is known), general
    replay examples mixed into the training split, and sections it records in the manifest."""

    guard_factory: Callable[[Any], Guard] | None = None
    replay: Sequence[Messages] = ()
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Any  # pathlib.Path of the run folder
    output: Any  # RUN/adapter or RUN/model
    output_bytes: int
    state: checkpoint.TrainState
    config: TrainConfig
    exported_step: int
    manifest: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)  # the guard's record at step 0 ("base") and the exported step


@dataclass(frozen=True)
class _Session:
    """One process's view of the run: settings, folder, device and rank."""

    config: TrainConfig
    run: RunFolder
    device: str
    dist: Dist
    resume: bool
    closing: contextlib.ExitStack  # what must close with the run, however it ends (the trackers)

    @property
    def precision(self) -> str:
        """fp32 or bf16: `config.precision` resolved for this device."""
        return resolve_precision(self.config.precision, self.device)


def train(config: TrainConfig, *, resume: bool = False, force: bool = False, hooks: Hooks | None = None,
          extras: Extras | None = None) -> RunResult:
    """Fine-tune as `config` says (or continue the run `config.out` with `resume`); returns the output."""
    track.require(config.report_to)  # a missing extra fails before anything starts
    device = pick_device(config.device)
    d = setup(device, config.distributed)
    device = device_for(d, device)
    if config.threads:  # else PyTorch's default (physical cores, or OMP_NUM_THREADS)
        torch.set_num_threads(config.threads)
    run = RunFolder(config.out)
    created = False
    try:
        if resume:
            run = RunFolder.open(config.out)
            _refuse_finished(run, config)
        elif d.main:
            run, created = RunFolder.create(config.out, force=force), True
        with contextlib.ExitStack() as closing:
            # CPU ops treat subnormal floats (below 1.2e-38 in fp32) as zero: 1.4 % faster LoRA steps on the
            # built-in model (A/B in one process, 3 of 3 rounds). x86 CPUs only; elsewhere a no-op.
            torch.set_flush_denormal(True)
            closing.callback(torch.set_flush_denormal, False)
            result = _train(_Session(config, run, device, d, resume, closing), hooks or Hooks(), extras or Extras())
        teardown(d, finished=True)
        return result
    except BaseException:
        if created and run.checkpoint("latest") is None:
            run.discard()  # nothing to resume from: a failed start leaves no folder behind
        teardown(d)
        raise


def _refuse_finished(run: RunFolder, config: TrainConfig) -> None:
    """Resuming a run that already reached its last step (and exported) only makes sense with more steps."""
    latest, manifest = run.checkpoint("latest"), run.manifest()
    spe = (manifest.get("schedule") or {}).get("steps_per_epoch")
    if latest is None or not manifest.get("result") or not spe:
        return
    step = checkpoint.read_state(latest).step
    total = config.max_steps or max(1, round((config.epochs or 0) * spe))
    if step >= total:
        raise RunError(f"{run.path}: finished at step {step} of {total}; its output is {run.output()}. To train "
                       f"further: tunesmith train --resume {run.path} --max-steps N (N > {step})")


def _train(s: _Session, hooks: Hooks, extras: Extras) -> RunResult:
    config = s.config
    bound_kernel_cache(s.device, s.precision)  # before the first bf16 product (the planner's matmul rate)
    ref = s.run.base() if s.resume else resolve(config.model)  # a resumed run finds its base by identity
    tokenizer = load_tokenizer(ref, trust_remote_code=config.trust_remote_code)
    data = prepare(config, tokenizer, extras.replay)
    spe = steps_per_epoch(len(data.train), config.batch_size, config.grad_accum, s.dist.world)
    config = resolve_defaults(config, len(data.train), spe)
    total = config.max_steps or max(1, round(config.epochs * spe))
    manifest = {**_manifest(config, ref, data, tokenizer), **extras.record}
    manifest["schedule"] = {"steps_per_epoch": spe, "total_steps": total}
    manifest["plan"] = _plan(config, data, s.device, s.dist.world)
    _check_disk(s, manifest["plan"])
    if s.dist.main:
        if s.resume:
            _check_same_run(s.run, manifest)
            s.run.update_manifest(schedule=manifest["schedule"])
        else:
            s.run.write_start(config, manifest, data.train_messages, data.eval_messages)
    if hooks.on_start:
        hooks.on_start(config, manifest)

    model = build_model(config, ref, s.device, load_device(s.dist, s.device))
    loss_fn = CompletionLoss(model)
    fast_paths = check_fast_paths(loss_fn, data.train, tokenizer.pad_token_id, load_device(s.dist, s.device))
    if s.precision == "bf16" and s.device == "cpu" and kernels.fp32_attention(model):
        fast_paths["fp32_attention"] = True  # SDPA's bf16 backward is slow on a CPU
    loss_fn.check_packing(data.train)  # packed examples must not see each other
    budget = forward_budget(config.forward_tokens, s.device)
    if s.dist.main:
        s.run.update_manifest(fast_paths=fast_paths, forward_tokens=budget, precision=s.precision)
    wrapped = wrap(loss_fn, s.dist, s.device)  # before the optimizer: FSDP replaces the parameters by shards
    guard = extras.guard_factory(tokenizer) if extras.guard_factory and (s.dist.main or s.dist.sharded) else None
    if s.dist.main and (guard is not None or (data.eval and not s.resume)):
        what = ", ".join(w for w in ("" if s.resume else f"{len(data.eval)} eval examples",
                                      "the forgetting-guard slice" if guard is not None else "") if w)
        log.info("scoring the base model (%s): the reference every evaluation is compared with", what)
    with gathered(loss_fn, s.dist):  # under FSDP every rank scores the guard's items together
        baseline = guard.baseline(model) if guard is not None else {}  # LoRA at init equals the base model
    optimizer = make_optimizer(model, config.lr, config.weight_decay, s.device)
    scheduler = make_scheduler(optimizer, total, config.warmup, config.schedule)
    sink = s.run.metrics_sink(enabled=s.dist.main)
    state = checkpoint.TrainState()
    if s.resume:
        state = checkpoint.load(s.run.checkpoint("latest"), model, optimizer, scheduler)
        sink.truncate_after(state.step)  # drop lines a killed run logged past its last checkpoint
    trackers = s.closing.enter_context(track.training(config.report_to, s.run, config.to_dict(), resume=s.resume,
                                                      enabled=s.dist.main))
    sink = trackers.tee(sink)  # TensorBoard / MLflow get each record metrics.jsonl gets
    if not s.resume and (data.eval or baseline):  # every rank: the eval batches are shared out
        _log_start(loss_fn, data, baseline, sink, hooks, config, s, tokenizer.pad_token_id)
    spec = LoopSpec(
        train=data.train, eval=data.eval, pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
        grad_accum=config.grad_accum, total_steps=total, eval_every=config.eval_every,
        save_every=config.save_every, keep_checkpoints=config.keep_checkpoints, grad_clip=config.grad_clip,
        patience=config.patience, seed=config.seed, device=s.device, checkpoints=s.run.checkpoints,
        log_metrics=sink.write, guard=guard, guard_stop=config.guard_stop, dist=s.dist, forward_tokens=budget,
        precision=s.precision,
    )
    state = run_loop(wrapped, optimizer, scheduler, spec, state, hooks)
    optimizer.state.clear()  # AdamW's moments (8 bytes a trainable weight) are not exported: room for the export
    model.zero_grad(set_to_none=True)
    score = _scorer(loss_fn, data, guard, config, s, tokenizer.pad_token_id) if guard and data.eval else None
    result = _finish(s, config, model, tokenizer, state, Ending(score, ref))
    track.log_result(trackers, s.run, result.manifest)
    return result


@dataclass(frozen=True)
class Ending:
    """What choosing the export needs beyond the model: a scorer of the model as it is set (held-out eval
    loss, guard verdict and metrics; None without guard or eval data) and the base model's identity."""

    score: Callable[[], wise.Scored] | None
    ref: ModelRef


def _scorer(loss_fn: CompletionLoss, data: RunData, guard: Guard, config: TrainConfig, s: _Session,
            pad_id: int) -> Callable[[], wise.Scored]:
    def score() -> wise.Scored:
        loss = eval_loss(loss_fn, data.eval, pad_id=pad_id, batch_size=config.batch_size, device=s.device,
                         precision=s.precision, dist=s.dist)
        metrics, verdict, flags = guard.check(loss_fn.model)
        return loss, verdict, metrics, flags

    return score


def _check_same_run(run: RunFolder, new: dict[str, Any]) -> None:
    """A resumed run must train the same method on the same base and the same data."""
    old = run.manifest()
    pairs = {
        "method": (old.get("method"), new.get("method")),
        "base model": (old["base_model"].get("fingerprint"), new["base_model"].get("fingerprint")),
        "training data": tuple({k: (m["data"].get(k) or {}).get("sha256") for k in ("train", "eval")}
                               for m in (old, new)),
    }
    for label, (a, b) in pairs.items():
        if a != b:
            raise RunError(f"{run.path}: cannot resume, the {label} differs from the run's ({a} vs {b}); "
                           "point --resume at the right run or start a new one")


def _manifest(config: TrainConfig, ref: ModelRef, data: RunData, tokenizer: Any) -> dict[str, Any]:
    import peft
    import transformers

    return {
        "tunesmith_version": __version__,
        "method": config.method,
        "output": "adapter" if config.method == "lora" else "model",
        "base_model": {"name": ref.name, "kind": ref.kind, "path": ref.path, "fingerprint": fingerprint(ref)},
        "data": data.info,
        "tokenizer": {"chat_template": tokenizer.chat_template, "eos_token": tokenizer.eos_token,
                      "pad_token": tokenizer.pad_token},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


def _plan(config: TrainConfig, data: RunData, device: str, world: int) -> dict[str, Any]:
    """The planner's estimate for this very run, kept next to what is measured (see `_finish`)."""
    import psutil

    from tunesmith.plan import DataStats, estimate

    try:
        plan = estimate(config, device=device, world=world, data=DataStats.from_encoded(data.train),
                        allocator=current_allocator(), process_bytes=psutil.Process().memory_info().rss)
    except Exception as e:  # an estimate must never stop a run (e.g. an architecture the planner can't read)
        log.warning("no resource estimate for this run: %s", e)
        return {"error": str(e)}
    return {"peak_memory_bytes": plan.peak_memory_bytes, "seconds_per_epoch": plan.seconds_per_epoch,
            "tokens_per_second": plan.tokens_per_second, "speed_source": plan.speed_source,
            "checkpoint_bytes": plan.checkpoint_bytes, "output_bytes": plan.output_bytes, "disk_bytes": plan.disk_bytes}


def _check_disk(s: _Session, plan: dict[str, Any]) -> None:
    """Refuse to start when the disk cannot hold one more checkpoint and the export; warn when it cannot hold
    the run folder at its fullest. Rank 0 decides for all (they share the folder)."""
    from tunesmith.plan import gb

    need, fullest = plan.get("checkpoint_bytes"), plan.get("disk_bytes")
    if not need or not fullest:  # no estimate for this model
        return
    need += plan.get("output_bytes") or 0
    free = free_bytes(s.run.path)
    if not broadcast_flag(s.dist, free >= need):
        raise DiskFullError(f"{s.run.path}: not enough disk space to train: {gb(free)} free, and the run needs at "
                            f"least {gb(need)} (a checkpoint, {gb(plan['checkpoint_bytes'])}, and the export); free "
                            "some space, or give `--out` a folder on a larger disk")
    fullest -= folder_bytes(s.run.checkpoints)  # a resumed run's checkpoints are on the disk already
    if s.dist.main and free < fullest:
        log.warning("the disk may fill up: %s free where the run writes, and its folder may take %s more at its "
                    "fullest (%d checkpoints of %s); a run that fills the disk stops with its last checkpoint intact "
                    "and resumes with --resume; --keep-checkpoints 1, or --out on a larger disk, needs less",
                    gb(free), gb(fullest), plan["disk_bytes"] // plan["checkpoint_bytes"],
                    gb(plan["checkpoint_bytes"]))


def build_model(config: TrainConfig, ref: ModelRef, device: str, load_on: str | None = None) -> torch.nn.Module:
    """The model as training uses it: base (dtype, quantization, checkpointing) plus fresh LoRA adapters, in
    `device`'s dtype; loaded onto `load_on` (FSDP: the host) when given."""
    dtype = base_dtype(config.method, resolve_precision(config.precision, device))
    model = load_model(ref, device=load_on or device, dtype=dtype,
                       allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                       quantize=config.quantize)
    model.config.use_cache = False  # no KV cache while training
    if config.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA), custom autograd functions (fused MLP) and FSDP hooks.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from tunesmith.model.lora import add_lora

        torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the seeded RNG
        model = add_lora(model, config.lora)
    return model


def _log_start(loss_fn: CompletionLoss, data: RunData, baseline: dict[str, float], sink: MetricsSink,
               hooks: Hooks, config: TrainConfig, s: _Session, pad_id: int) -> None:
    """Step 0: the base model's eval loss and guard scores, the reference every later line compares to."""
    record: dict[str, Any] = {"step": 0}
    if data.eval:
        loss = eval_loss(loss_fn, data.eval, pad_id=pad_id, batch_size=config.batch_size, device=s.device,
                         precision=s.precision, dist=s.dist)
        record.update(eval_loss=round(loss, 6), eval_ppl=round(math.exp(min(loss, 50.0)), 4))
    record.update(baseline)
    sink.write(record)
    if hooks.on_eval:
        hooks.on_eval(record)


def _finish(s: _Session, config: TrainConfig, model: torch.nn.Module, tokenizer: Any,
            state: checkpoint.TrainState, ending: Ending) -> RunResult:
    """Export the chosen checkpoint (`train.choose`: by eval loss among the steps the guard does not fail),
    interpolated toward the base when the guard asks for it (`train.wise`), and record figures."""
    choice = choose_checkpoint(s.run, state)
    if choice.path is not None:
        checkpoint.load(choice.path, model)  # a sharded checkpoint: every rank loads its shards
    rescued, rescue = _rescue(s, config, model, choice, ending)
    if choice.warning and s.dist.main:
        log.warning(choice.warning)
    if rescued is not None and rescue is not None:
        choice, scaling = rescued, rescue
    else:
        scaling = _scale(s, config, model, choice.step, ending)
    exported = choice.step
    # FSDP: the shards gathered onto rank 0's CPU, every rank taking part; else the model's own state dict.
    weights = full_state_dict(model, trainable_only=config.method == "lora") if s.dist.sharded else None
    peak_rss = gather(s.dist, peak_rss_bytes())
    if not s.dist.main:
        return RunResult(s.run.path, None, 0, state, replace(config), exported)

    def save(folder: Any) -> None:
        model.save_pretrained(folder, safe_serialization=True, state_dict=weights)
        if config.method == "full":
            tokenizer.save_pretrained(folder)

    out, size = s.run.export(config.method, save, need=checkpoint.trainable_bytes(model))
    result: dict[str, Any] = {
        "steps": state.step, "exported_step": exported, "best_eval_loss": state.best_eval_loss,
        "output_bytes": size, "train_seconds": round(state.elapsed, 2), "tokens": state.tokens,
        "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
        "peak_rss_bytes": peak_rss[0], "allocator": current_allocator(),
        "checkpoint_bytes": folder_bytes(latest) if (latest := s.run.checkpoint("latest")) else None,
    }
    if s.dist.enabled:
        result.update(processes=s.dist.world, distributed=s.dist.mode, peak_rss_bytes_per_rank=peak_rss)
    if s.device.startswith("cuda"):
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    plan = s.run.manifest().get("plan") or {}
    guard = _guard_records(s.run, exported, scaling)
    result.update(export_reason=choice.reason, export_warning=choice.warning, interpolation=scaling.record())
    if rescue is not None and rescued is None:
        result["rescue"] = rescue.record()
    if guard:
        result["guard_verdict"] = guard.get("exported", {}).get("guard_verdict")
    manifest = s.run.update_manifest(result=result, estimate_vs_measured=_compare(plan, result, state))
    return RunResult(s.run.path, out, size, state, replace(config), exported, manifest, guard)


def _interpolable(s: _Session, config: TrainConfig) -> str | None:
    """Why the run's weights cannot be interpolated toward the base; None when they can."""
    if s.dist.enabled:
        return "distributed runs"
    return "DoRA is not linear in B" if config.method == "lora" and config.lora.use_dora else None


def _rescue(s: _Session, config: TrainConfig, model: torch.nn.Module, choice: Choice,
            ending: Ending) -> tuple[Choice | None, Scaling | None]:
    """`train.choose.rescue_best` where it applies: the guard failed the lowest-eval-loss step and an earlier
    one was chosen, interpolation is automatic and possible. (None, None) when not tried."""
    if (choice.failed_best is None or config.interpolate != "auto" or ending.score is None
            or _interpolable(s, config) is not None):
        return None, None
    evals, base_weights = _toward_base(s, config, model, ending)
    return rescue_best(model, choice, evals, ending.score, base_weights)


def _toward_base(s: _Session, config: TrainConfig, model: torch.nn.Module, ending: Ending,
                 ) -> tuple[dict[int, dict[str, Any]], Callable[[], dict[str, torch.Tensor]] | None]:
    """What interpolating needs: the evaluated steps' metrics records by step, and a reader of W0 for full
    fine-tuning (None for LoRA, whose W0 is B = 0)."""
    evals = {r["step"]: r for r in s.run.metrics() if "eval_loss" in r}
    base_weights = (lambda: _base_weights(config, ending.ref, model, s.device)) if config.method == "full" else None
    return evals, base_weights


def _scale(s: _Session, config: TrainConfig, model: torch.nn.Module, exported: int, ending: Ending) -> Scaling:
    """Interpolate the exported weights toward the base, as `config.interpolate` says (`train.choose`)."""
    if config.interpolate == "off":
        return Scaling()
    if (why := _interpolable(s, config)) is not None:
        return Scaling(note="not interpolated: " + why)
    evals, base_weights = _toward_base(s, config, model, ending)
    return scale_toward_base(model, config.interpolate, evals.get(exported, {}), evals.get(0, {}).get("eval_loss"),
                             ending.score, base_weights)


def _base_weights(config: TrainConfig, ref: ModelRef, model: torch.nn.Module, device: str) -> dict[str, torch.Tensor]:
    """W0 of every trained weight, read from the base model's files (full fine-tuning)."""
    base = load_model(ref, device="cpu", dtype=torch.float32, allow_pickle=config.allow_pickle,
                      trust_remote_code=config.trust_remote_code)
    weights = dict(base.named_parameters())
    return {n: weights[n].detach() for n, p in model.named_parameters() if p.requires_grad}


def _guard_records(run: RunFolder, exported: int, scaling: Scaling) -> dict[str, Any]:
    """The guard's scores of the base model (step 0) and of the exported weights: the exported step's, from
    the metrics log, or those of the scale it was interpolated to."""
    records = {r["step"]: r for r in run.metrics() if any(k.startswith("guard/") for k in r)}
    if not records:
        return {}
    out: dict[str, Any] = {"base": records.get(0, {})}
    if exported in records:
        out["exported"] = records[exported]
    chosen = scaling.chosen
    if chosen is not None and chosen.metrics:
        out["exported"] = {"step": exported, **chosen.metrics, "guard_verdict": chosen.verdict,
                           "guard_flags": chosen.flags}
        out["scale"] = chosen.scale
    return out


def _compare(plan: dict[str, Any], result: dict[str, Any], state: checkpoint.TrainState) -> dict[str, Any]:
    """Planner estimate / measured, for peak memory, training speed and the size of a checkpoint."""
    measured_mem = result.get("peak_cuda_bytes") or result["peak_rss_bytes"]
    out: dict[str, Any] = {}
    if plan.get("peak_memory_bytes"):
        out["peak_memory_ratio"] = round(plan["peak_memory_bytes"] / measured_mem, 3)
    if plan.get("tokens_per_second") and state.elapsed:
        out["tokens_per_second_ratio"] = round(plan["tokens_per_second"] / result["tokens_per_s"], 3)
    if plan.get("checkpoint_bytes") and result.get("checkpoint_bytes"):
        out["checkpoint_bytes_ratio"] = round(plan["checkpoint_bytes"] / result["checkpoint_bytes"], 3)
    return out
