"""Checkpoints that a kill cannot corrupt.

Layout: `RUN/checkpoints/step-000040/` holds `weights.safetensors` (trainable parameters only: the adapter
for LoRA, everything for full), `trainer.pt` (optimizer, scheduler, RNG; tensors and plain types only, read
with `weights_only=True`) and `state.json` (step, data position, best eval). Each is written into a
temporary folder that is renamed into place, then the one-line pointer files `latest`, `best` (lowest eval
loss) and `guarded` (lowest eval loss among the steps the forgetting guard did not fail) are replaced
atomically. A kill at any moment leaves the previous checkpoint and pointers intact.

Under FSDP (`distributed: fsdp`) the weights and optimizer state are DTensor shards, and each rank writes its
own through `torch.distributed.checkpoint` (DCP) into `shards/`, with its RNG state in `rng-RANK.pt`; rank 0
adds `trainer.pt` (scheduler) and `state.json`, then renames the folder and moves the pointers, as above.
DCP reshards on load: such a checkpoint also loads into the whole model in one process. `load` tells the
two formats apart by what the folder holds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.diskspace import free_bytes, out_of_space
from tunesmith.errors import DiskFullError, RunError
from tunesmith.train.distributed import Dist, barrier

WEIGHTS = "weights.safetensors"
TRAINER = "trainer.pt"
STATE = "state.json"
SHARDS = "shards"  # DCP folder of a sharded checkpoint
POINTERS = ("latest", "best", "guarded")


@dataclass
class TrainState:
    """Where training stands; enough to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    tokens: int = 0  # real tokens trained on so far
    elapsed: float = 0.0  # seconds of training so far (summed over resumes)
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    guarded_eval_loss: float | None = None  # the best eval loss among the steps the guard did not fail
    guarded_step: int | None = None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights appear once)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _point(folder: Path, name: str, target: str) -> None:
    tmp = folder / f".{name}.tmp"
    _fsync_write(tmp, target.encode())
    os.replace(tmp, folder / name)


def _rng_state() -> dict[str, Any]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _fsync(*files: Path) -> None:
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def save(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
    *, best: bool = False, guarded: bool = False, dist: Dist | None = None,
) -> Path:
    """Write checkpoint `step-NNNNNN` atomically and point `latest` (and `best`, `guarded`) at it.

    With `dist.mode == "fsdp"` every rank must call it (a sharded checkpoint); otherwise rank 0 alone."""
    pointers = ("latest", *(["best"] if best else []), *(["guarded"] if guarded else []))
    try:
        if dist is not None and dist.mode == "fsdp":
            return _save_sharded(folder, model, optimizer, scheduler, state, pointers, dist)
        return _save_whole(folder, model, optimizer, scheduler, state, pointers)
    except BaseException as e:
        if dist is None or dist.main:  # the partial folder goes, so the space it took comes back
            for partial in folder.glob(f".step-{state.step:06d}*"):
                shutil.rmtree(partial, ignore_errors=True)
        need = checkpoint_bytes(model)
        if out_of_space(e, folder, need):
            raise _disk_full(folder, state.step, need) from None
        raise


def _save_whole(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
                pointers: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / TRAINER)
    _fsync(tmp / WEIGHTS, tmp / TRAINER)
    return _publish(folder, tmp, state, pointers)


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of the weights that train (what an export holds: the adapter, or the whole model)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def checkpoint_bytes(model: nn.Module) -> int:
    """About what one checkpoint takes on disk: the weights that train and AdamW's two moments."""
    return 3 * trainable_bytes(model)


def _disk_full(folder: Path, step: int, need: int) -> DiskFullError:
    from tunesmith.plan.memory import gb

    run = folder.parent
    latest = pointed(folder, "latest")
    then = (f"the last complete checkpoint (step {read_state(latest).step}) is intact: free some space, then "
            f"continue with `tunesmith train --resume {run}`" if latest is not None else
            "no checkpoint was written yet: free some space, or give `--out` a folder on a larger disk, and start "
            "again")
    return DiskFullError(f"{run}: the disk is full: no space left to write the checkpoint of step {step} "
                         f"({gb(free_bytes(folder))} free, a checkpoint takes about {gb(need)}); {then}")


def _publish(folder: Path, tmp: Path, state: TrainState, pointers: tuple[str, ...]) -> Path:
    """Last step of a save: state.json, rename into place, move the pointers."""
    name = f"step-{state.step:06d}"
    final = folder / name
    _fsync_write(tmp / STATE, json.dumps(asdict(state), indent=1).encode())
    if final.exists():  # a checkpoint of this step from a killed run: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for pointer in pointers:
        _point(folder, pointer, name)
    return final


def _sharded_options(model: nn.Module) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Trainable parameters only, as in the unsharded format: a LoRA checkpoint holds the adapter, the frozen
    # base is reloaded from its own files (so loading is not strict about the base's keys).
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def _save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  state: TrainState, pointers: tuple[str, ...], d: Dist) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = folder / f".step-{state.step:06d}.partial"  # one name every rank agrees on
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        tmp.mkdir(parents=True)
    barrier(d)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_sharded_options(model))
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / SHARDS)  # fsyncs its files
    torch.save(_rng_state(), tmp / f"rng-{d.rank}.pt")  # each rank's own generator (its dropout)
    _fsync(tmp / f"rng-{d.rank}.pt")
    barrier(d)  # every rank's files are on disk before rank 0 publishes the folder
    final = folder / tmp.name.removeprefix(".").removesuffix(".partial")
    if d.main:
        torch.save({"scheduler": scheduler.state_dict()}, tmp / TRAINER)
        _fsync(tmp / TRAINER)
        final = _publish(folder, tmp, state, pointers)
    barrier(d)  # no rank reads the pointers (e.g. to export the best checkpoint) before they moved
    return final


def pointed(folder: Path, pointer: str) -> Path | None:
    """The checkpoint a pointer file names, or None."""
    try:
        name = (folder / pointer).read_text().strip()
    except FileNotFoundError:
        return None
    path = folder / name
    return path if (path / STATE).is_file() else None


def read_state(path: Path) -> TrainState:
    """Where a checkpoint stands, without loading its weights."""
    return TrainState(**json.loads((path / STATE).read_text()))


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
         scheduler: Any = None) -> TrainState:
    """Restore weights (and, when given, optimizer, scheduler and RNG) from a checkpoint folder.

    A sharded checkpoint is loaded by every rank together (also into an unsharded model, in one process)."""
    if (path / SHARDS).is_dir():
        return _load_sharded(path, model, optimizer, scheduler)
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise RunError(f"{path}: checkpoint does not fit this model (e.g. {(missing + unknown)[0]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    if optimizer is not None:
        trainer = torch.load(path / TRAINER, weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        _set_rng_state(trainer["rng"])
    return read_state(path)


def _load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> TrainState:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dsd
    from torch.distributed.checkpoint.api import CheckpointException

    options = _sharded_options(model)
    if optimizer is None:
        wanted = {"model": dsd.get_model_state_dict(model, options=options)}
    else:
        model_sd, optim_sd = dsd.get_state_dict(model, optimizer, options=options)
        wanted = {"model": model_sd, "optimizer": optim_sd}
    try:
        dcp.load(wanted, checkpoint_id=path / SHARDS)  # fills `wanted` in place, each rank its own shards
    except CheckpointException as e:  # e.g. a key of this model the checkpoint lacks (another method or model)
        cause = next(iter(e.failures.values()))[0]
        raise RunError(f"{path}: checkpoint does not fit this model ({str(cause)[:200]})") from None
    if optimizer is None:
        dsd.set_model_state_dict(model, wanted["model"], options=options)
    else:
        dsd.set_state_dict(model, optimizer, model_state_dict=wanted["model"],
                           optim_state_dict=wanted["optimizer"], options=options)
        scheduler.load_state_dict(torch.load(path / TRAINER, weights_only=True)["scheduler"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        rng = path / f"rng-{rank}.pt"
        if rng.is_file():  # absent when resumed on more processes than the run had (dropout differs)
            _set_rng_state(torch.load(rng, weights_only=True))
    return read_state(path)


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, never one a pointer names, plus leftovers of kills."""
    protected = {p.name for p in (pointed(folder, name) for name in POINTERS) if p}
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
