"""The number format training computes in: fp32, or bf16 matrix products under autocast.

`precision: auto` picks bf16 where its matrix products are fast: on a GPU that has bf16 (Ampere and later),
and on a CPU with AMX tiles (Intel Xeon Sapphire Rapids and later), where a bf16 product of a training step's
shape ran 4-9x faster than fp32 on a 2-core slice of one (1300-2900 against 280-370 GFLOP/s). Elsewhere fp32:
a CPU without AMX converts bf16 to fp32 inside every product, which is slower than fp32 itself.

Under bf16 the weights that train and the optimizer's moments stay fp32 (autocast casts them for each
product); a frozen LoRA base is stored in bf16, which halves its memory. Reductions (norms, softmax, the
loss) run in fp32 either way.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Literal

import torch


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, which run bf16 matrix products natively."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # a private helper: absent, assume none
    try:
        return bool(probe()) if probe else False
    except RuntimeError:
        return False


def resolve(precision: str, device: str) -> Literal["fp32", "bf16"]:
    """The format `precision` means on `device` ("cpu", "cuda", "cuda:N", "mps")."""
    if precision in ("fp32", "bf16"):
        return precision  # type: ignore[return-value]
    if device.startswith("cuda"):
        return "bf16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and cpu_has_amx() else "fp32"


# oneDNN compiles a kernel for every matrix-product shape it meets and keeps the last 1024. Training rows vary
# in length, so under bf16 on a CPU a LoRA run of the built-in model grew 26 MiB a step, to 2.3 GiB after 30
# steps (fp32 products go through another library and leveled off at 2.2). With 32 kept it ended at 1.9 GiB at
# the same speed (693 against 689 tokens/s; 16 kept: as fast, 4: 3.5x slower, every kernel compiled again).
ONEDNN_CACHE_CAPACITY = "32"


def bound_kernel_cache(device: str, precision: str) -> None:
    """Keep oneDNN's cache of compiled kernels small for bf16 on a CPU (before its first bf16 product; a value
    the user set wins)."""
    if device == "cpu" and precision == "bf16":
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a resolved "bf16"; nothing for "fp32"."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def base_dtype(method: str, precision: str) -> torch.dtype:
    """Weights as loaded: fp32, except a frozen LoRA base under bf16 (nothing updates it, and it is half the size)."""
    return torch.bfloat16 if method == "lora" and precision == "bf16" else torch.float32
