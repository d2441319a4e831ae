"""Scale-out with PyTorch's own engine: launch with `torchrun --nproc_per_node N -m tunesmith train ...`.

Each process takes its share of every optimizer step's micro-batches. Two ways to share the model
(`distributed` in the config):
- `ddp`: every rank holds the whole model; DDP all-reduces (averages) the gradients.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) shards parameters, gradients and optimizer state
  over the ranks. Each decoder layer is one unit, all-gathered for its forward (and again for its backward)
  and freed after; its gradients are reduce-scattered (averaged). The loss module (`CompletionLoss`) is the
  root unit: it holds what is left (embeddings, final norm, LM head, tied or not), so its forward gathers
  them before the fused head loss reads the LM head weight outside the model's own forward.
Only rank 0 writes the run folder; sharded checkpoints are written by every rank (`train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from tunesmith.train.loss import CompletionLoss

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "ddp"  # the `distributed` setting: ddp | fsdp

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """The model is sharded over the ranks (FSDP with more than one process)."""
        return self.enabled and self.mode == "fsdp"


def setup(device: str, mode: str = "ddp") -> Dist:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if mode == "fsdp":
            log.info("distributed=fsdp in a single process: nothing to shard over, the model trains whole; "
                     "checkpoints keep the sharded format, so the run can be resumed under torchrun")
        return Dist(mode=mode)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return Dist(rank=rank, world=world, local_rank=local, mode=mode)


def device_for(d: Dist, device: str) -> str:
    """Each rank's own GPU under torchrun; CPU stays CPU."""
    return f"cuda:{d.local_rank}" if device.startswith("cuda") and d.enabled else device


def load_device(d: Dist, device: str) -> str:
    """Where the base model is loaded: under FSDP on the host, because the whole model may not fit one GPU;
    `fully_shard` then moves one layer at a time to the GPU and keeps only this rank's shard there."""
    return "cpu" if d.sharded else device


def wrap(loss_fn: CompletionLoss, d: Dist, device: str) -> nn.Module:
    """The module the loop calls: the loss itself (one process), DDP around it, or FSDP inside it (in place).

    Under FSDP the parameters become DTensor shards, so the optimizer must be built after this call."""
    if not d.enabled:
        return loss_fn
    if d.sharded:
        return shard(loss_fn, device)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(loss_fn, device_ids=[d.local_rank] if device.startswith("cuda") else None)


def shard(loss_fn: CompletionLoss, device: str) -> CompletionLoss:
    """FSDP2, bottom-up: each decoder layer, then the loss module as the root (see the module docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
    layers = decoder_layers(loss_fn.model)
    if not layers:  # still correct, but the whole model is gathered at once: no memory saved over DDP
        log.warning("FSDP: no decoder layers found (transformers' _no_split_modules); sharding the model as one "
                    "unit")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(loss_fn, mesh=mesh)
    return loss_fn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks transformers itself never splits across devices (e.g. LlamaDecoderLayer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


@contextlib.contextmanager
def gathered(loss_fn: nn.Module, d: Dist) -> Iterator[None]:
    """The root unit's parameters all-gathered, for forward passes that bypass the loss module (the forgetting
    guard calls the model directly). Every rank must enter, and run the same forward passes inside."""
    if not d.sharded:
        yield
        return
    # FSDP takes the first module to run forward as its root; make it the loss module even when the first
    # forward bypasses it (the guard's baseline runs before any training step).
    loss_fn._get_fsdp_state()._lazy_init()  # type: ignore[operator]
    loss_fn.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        loss_fn.reshard()  # type: ignore[operator]


def full_state_dict(model: nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The sharded weights gathered, one tensor at a time, onto rank 0's CPU (other ranks get {}), for export
    in the normal formats. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    # Gathered copies no longer share storage, so save_pretrained cannot see that the LM head is tied to the
    # embeddings: keep each parameter under its first name only, as the model's own state dict would.
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    return state


def rank_share(items: Sequence[T], d: Dist) -> list[T | None]:
    """This rank's items (every `world`-th from its rank), padded with None so that every rank gets as many:
    ranks must run the same number of forward passes, or one waits alone in a collective."""
    slots = range(d.rank, math.ceil(len(items) / d.world) * d.world, d.world)
    return [items[i] if i < len(items) else None for i in slots]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_flag(d: Dist, flag: bool) -> bool:
    """Rank 0's decision, for everyone (e.g. stop early)."""
    if not d.enabled:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def gather(d: Dist, value: Any) -> list[Any]:
    """`value` from every rank, in rank order (e.g. each rank's peak memory)."""
    if not d.enabled:
        return [value]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def sum_over_ranks(d: Dist, device: str, *values: float) -> list[float]:
    """Each value summed over the ranks, in float64 (losses and counts). NCCL reduces on the GPU only."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def teardown(d: Dist, *, finished: bool = False) -> None:
    """Leave the process group. After a finished run, first wait for every rank (rank 0 is still exporting
    when the others are done): a gloo group destroyed while a peer still uses it can abort the process
    ("terminate called without an active exception"). After a failure, no wait: the peers may be gone."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
