"""A fine-tuning run from config to output folder: the run folder describes itself and resumes exactly.

RUN/
  config.yaml          resolved settings (written before training starts)
  manifest.json        base model + content hash, data hashes, template, versions, estimate vs measured
  metrics.jsonl        one line per step and per evaluation
  data/                the exact train/eval split used (chat messages JSONL)
  checkpoints/         step-NNNNNN/ folders, `latest` and `best` pointers
  adapter/             LoRA: PEFT layout (adapter_config.json + adapter_model.safetensors)
  model/               full: a complete HF model folder (safetensors, config, tokenizer)
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tunesmith import __version__
from tunesmith.config import TrainConfig, dump_yaml, load_config, resolve_defaults
from tunesmith.errors import RunError
from tunesmith.model.loading import fingerprint, load_model, load_tokenizer, pick_device, resolve
from tunesmith.train import checkpoint
from tunesmith.train.allocator import current_allocator
from tunesmith.train.distributed import Dist, device_for, setup, teardown
from tunesmith.train.kernels import fuse_gated_mlps
from tunesmith.train.loop import Guard, Hooks, LoopSpec, eval_loss, run_loop, steps_per_epoch
from tunesmith.train.loss import CompletionLoss
from tunesmith.train.metrics import MetricsSink
from tunesmith.train.optim import make_optimizer, make_scheduler
from tunesmith.train.prepare import RunData, prepare, write_jsonl

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    output: Path  # RUN/adapter or RUN/model
    output_bytes: int
    state: checkpoint.TrainState
    config: TrainConfig
    exported_step: int


def open_run(config: TrainConfig, *, resume: bool, force: bool) -> Path:
    """Check the run folder fits the request: new and empty, or an existing run to resume."""
    run = Path(config.out)
    if resume:
        if not (run / "manifest.json").is_file():
            raise RunError(f"{run}: not a tunesmith run folder (no manifest.json); nothing to resume")
        if checkpoint.pointed(run / "checkpoints", "latest") is None:
            raise RunError(f"{run}: has no checkpoint yet; start it again without --resume (add --force)")
        return run
    if run.exists() and any(run.iterdir()):
        if not force:
            raise RunError(f"{run}: folder exists and is not empty; --resume to continue it, "
                           "--force to start over, or choose another --out")
        if not (run / "manifest.json").is_file():
            raise RunError(f"{run}: --force only replaces a tunesmith run folder, and this is not one")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config a run was started with (RUN/config.yaml), with `out` pointing at it."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a tunesmith run folder (no config.yaml); nothing to resume")
    return load_config(path, **overrides, out=str(run_dir))


def _check_same_run(run: Path, manifest: dict[str, Any]) -> None:
    old = json.loads((run / "manifest.json").read_text())
    for key, label in (("method", "method"), ("base_model", "base model"), ("data", "training data")):
        a, b = old.get(key), manifest.get(key)
        if key == "data":
            a = {k: (old["data"].get(k) or {}).get("sha256") for k in ("train", "eval")}
            b = {k: (manifest["data"].get(k) or {}).get("sha256") for k in ("train", "eval")}
        if key == "base_model":
            a, b = a.get("fingerprint"), b.get("fingerprint")
        if a != b:
            raise RunError(f"{run}: cannot resume, the {label} differs from the run's ({a} vs {b}); "
                           "point --out at the right run or start a new one")


def _manifest(config: TrainConfig, ref: Any, data: RunData, tokenizer: Any) -> dict[str, Any]:
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


def _plan(config: TrainConfig, data: RunData, device: str) -> dict[str, Any]:
    """The planner's estimate for this very run, kept next to what is measured (see `_finish`)."""
    from tunesmith.plan import DataStats, estimate

    try:
        dtype = "bfloat16" if base_dtype(config, device) == torch.bfloat16 else None
        plan = estimate(config.model, config.method, batch_size=config.batch_size, max_length=config.max_length,
                        lora_r=config.lora.r, target_modules=config.lora.target_modules, device=device, dtype=dtype,
                        data=DataStats.from_encoded(data.train), epochs=config.epochs,
                        lora_dropout=config.lora.dropout, allocator=current_allocator())
    except Exception as e:  # an estimate must never stop a run (e.g. an architecture the planner can't read)
        log.warning("no resource estimate for this run: %s", e)
        return {"error": str(e)}
    return {"peak_memory_bytes": plan.peak_memory_bytes, "seconds_per_epoch": plan.seconds_per_epoch,
            "tokens_per_second": plan.tokens_per_second, "speed_source": plan.speed_source}


def base_dtype(config: TrainConfig, device: str) -> torch.dtype:
    """fp32 weights, except a frozen LoRA base on CUDA: bf16 halves its memory and nothing updates it."""
    return torch.bfloat16 if config.method == "lora" and device.startswith("cuda") else torch.float32


def _build_model(config: TrainConfig, ref: Any, device: str) -> torch.nn.Module:
    model = load_model(ref, device=device, dtype=base_dtype(config, device), allow_pickle=config.allow_pickle,
                       trust_remote_code=config.trust_remote_code)
    model.config.use_cache = False  # no KV cache while training
    if config.method == "lora":
        from tunesmith.model.lora import add_lora

        torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the seeded RNG
        model = add_lora(model, config.lora)
    return model


def train(
    config: TrainConfig, *, resume: bool = False, force: bool = False, hooks: Hooks | None = None,
    guard_factory: Callable[[Any], Guard] | None = None, replay: Sequence[list[dict[str, str]]] = (),
    on_start: Callable[[TrainConfig, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Fine-tune as `config` says; returns where the adapter or model was written."""
    device = pick_device(config.device)
    d = setup(device)
    device = device_for(d, device)
    if config.threads:  # else PyTorch's default (physical cores, or OMP_NUM_THREADS)
        torch.set_num_threads(config.threads)
    try:
        run = open_run(config, resume=resume, force=force) if d.main else Path(config.out)
        return _train(config, run, device, d, hooks, guard_factory, replay, on_start, resume)
    finally:
        teardown(d)


def _train(config, run, device, d: Dist, hooks, guard_factory, replay, on_start, resume) -> RunResult:
    ref = resolve(config.model)
    tokenizer = load_tokenizer(ref, trust_remote_code=config.trust_remote_code)
    data = prepare(config, tokenizer, replay)
    spe = steps_per_epoch(len(data.train), config.batch_size, config.grad_accum, d.world)
    config = resolve_defaults(config, len(data.train), spe)
    total = config.max_steps or max(1, round(config.epochs * spe))
    manifest = _manifest(config, ref, data, tokenizer)
    manifest["schedule"] = {"steps_per_epoch": spe, "total_steps": total}
    manifest["plan"] = _plan(config, data, device)
    if d.main:
        if resume:
            _check_same_run(run, manifest)
        else:
            dump_yaml(config, run / "config.yaml")
            write_jsonl(run / "data" / "train.jsonl", data.train_messages)
            write_jsonl(run / "data" / "eval.jsonl", data.eval_messages)
            _write_json(run / "manifest.json", manifest)
    if on_start:
        on_start(config, manifest)

    model = _build_model(config, ref, device)
    fuse_gated_mlps(model)
    loss_fn = CompletionLoss(model)
    from tunesmith.train.batching import collate

    probe = collate(data.train[: min(2, len(data.train))], tokenizer.pad_token_id).to(device)
    loss_fn.check_fast_path(probe.input_ids)
    guard = guard_factory(tokenizer) if guard_factory and d.main else None
    baseline = guard.baseline(model) if guard is not None else {}  # LoRA at init equals the base model
    optimizer = make_optimizer(model, config.lr, config.weight_decay, device)
    scheduler = make_scheduler(optimizer, total, config.warmup, config.schedule)
    sink = MetricsSink(run / "metrics.jsonl", enabled=d.main)
    state = checkpoint.TrainState()
    if resume:
        latest = checkpoint.pointed(run / "checkpoints", "latest")
        state = checkpoint.load(latest, model, optimizer, scheduler)
        sink.truncate_after(state.step)  # drop lines a killed run logged past its last checkpoint
    wrapped = loss_fn
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(loss_fn, device_ids=[d.local_rank] if device.startswith("cuda") else None)
    if not resume and d.main and (data.eval or baseline):
        _log_start(loss_fn, data, baseline, sink, hooks, pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
                   device=device)
    spec = LoopSpec(
        train=data.train, eval=data.eval, pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
        grad_accum=config.grad_accum, total_steps=total, eval_every=config.eval_every,
        save_every=config.save_every, keep_checkpoints=config.keep_checkpoints, grad_clip=config.grad_clip,
        patience=config.patience, seed=config.seed, device=device, checkpoints=run / "checkpoints",
        log_metrics=sink.write, guard=guard, guard_stop=config.guard_stop, dist=d,
    )
    state = run_loop(wrapped, optimizer, scheduler, spec, state, hooks)
    return _finish(run, config, model, tokenizer, state, device, d)


def _log_start(loss_fn: CompletionLoss, data: RunData, baseline: dict[str, float], sink: MetricsSink,
               hooks: Hooks | None, *, pad_id: int, batch_size: int, device: str) -> None:
    """Step 0: the base model's eval loss and guard scores, the reference every later line compares to."""
    record: dict[str, Any] = {"step": 0}
    if data.eval:
        loss = eval_loss(loss_fn, data.eval, pad_id=pad_id, batch_size=batch_size, device=device)
        record.update(eval_loss=round(loss, 6), eval_ppl=round(math.exp(min(loss, 50.0)), 4))
    record.update(baseline)
    sink.write(record)
    if hooks and hooks.on_eval:
        hooks.on_eval(record)


def _finish(run, config, model, tokenizer, state, device, d: Dist) -> RunResult:
    """Export the best checkpoint (by eval loss; the last one without eval data) and record figures."""
    best = checkpoint.pointed(run / "checkpoints", "best")
    exported = state.step
    if best is not None and state.best_step is not None and state.best_step != state.step:
        checkpoint.load(best, model)
        exported = state.best_step
    out = run / ("adapter" if config.method == "lora" else "model")
    if d.main:
        tmp = run / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        if config.method == "full":
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["result"] = {
            "steps": state.step, "exported_step": exported, "best_eval_loss": state.best_eval_loss,
            "output_bytes": size, "train_seconds": round(state.elapsed, 2), "tokens": state.tokens,
            "tokens_per_s": round(state.tokens / max(state.elapsed, 1e-9), 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "allocator": current_allocator(),
        }
        if device.startswith("cuda"):
            manifest["result"]["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        manifest["estimate_vs_measured"] = _compare(manifest, state)
        _write_json(run / "manifest.json", manifest)
    else:
        size = 0
    return RunResult(run, out, size, state, replace(config), exported)


def _compare(manifest: dict[str, Any], state: checkpoint.TrainState) -> dict[str, Any]:
    """Planner estimate / measured, for peak memory and training speed."""
    plan, result = manifest.get("plan") or {}, manifest["result"]
    measured_mem = result.get("peak_cuda_bytes") or result["peak_rss_bytes"]
    out: dict[str, Any] = {}
    if plan.get("peak_memory_bytes"):
        out["peak_memory_ratio"] = round(plan["peak_memory_bytes"] / measured_mem, 3)
    if plan.get("tokens_per_second") and state.elapsed:
        out["tokens_per_second_ratio"] = round(plan["tokens_per_second"] / result["tokens_per_s"], 3)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
