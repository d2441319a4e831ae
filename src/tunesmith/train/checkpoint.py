"""Checkpoints that a kill cannot corrupt.

Layout: `RUN/checkpoints/step-000040/` holds `weights.safetensors` (trainable parameters only: the adapter
for LoRA, everything for full), `trainer.pt` (optimizer, scheduler, RNG; tensors and plain types only, read
with `weights_only=True`) and `state.json` (step, data position, best eval). Each is written into a
temporary folder that is renamed into place, then the one-line pointer files `latest` and `best` are
replaced atomically. A kill at any moment leaves the previous checkpoint and pointers intact.
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

from tunesmith.errors import RunError

WEIGHTS = "weights.safetensors"
TRAINER = "trainer.pt"
STATE = "state.json"


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


def save(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
    *, best: bool = False,
) -> Path:
    """Write checkpoint `step-NNNNNN` atomically and point `latest` (and `best`) at it."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    final = folder / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / TRAINER)
    _fsync_write(tmp / STATE, json.dumps(asdict(state), indent=1).encode())
    for f in (tmp / WEIGHTS, tmp / TRAINER):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # a checkpoint of this step from a killed run: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _point(folder, "latest", name)
    if best:
        _point(folder, "best", name)
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
    """Restore weights (and, when given, optimizer, scheduler and RNG) from a checkpoint folder."""
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
        torch.set_rng_state(trainer["rng"]["cpu"])
        if "cuda" in trainer["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
    return read_state(path)


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, never the best or latest, plus leftovers of kills."""
    protected = {p.name for p in (pointed(folder, "latest"), pointed(folder, "best")) if p}
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
