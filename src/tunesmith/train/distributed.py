"""Scale-out with PyTorch's own engine: launch with `torchrun --nproc_per_node N -m tunesmith train ...`.

Each process takes its share of every optimizer step's micro-batches; DDP averages gradients. Only rank 0
writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return Dist(rank=rank, world=world, local_rank=local)


def device_for(d: Dist, device: str) -> str:
    """Each rank's own GPU under torchrun; CPU stays CPU."""
    return f"cuda:{d.local_rank}" if device.startswith("cuda") and d.enabled else device


def broadcast_flag(d: Dist, flag: bool) -> bool:
    """Rank 0's decision, for everyone (e.g. stop early)."""
    if not d.enabled:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
