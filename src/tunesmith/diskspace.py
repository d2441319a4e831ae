"""Disk space where a run writes: what is free, and telling a full disk from other write failures.

A fine-tuning run writes a checkpoint every `save_every` steps (the weights that train and AdamW's two
moments: 12 bytes a trainable weight, so ~170 GB for a full fine-tune of a 14 GB base) and its export at the
end. A disk that fills up mid-write must stop the run with one clear line, not a serializer's internals
("unexpected pos 704 vs 598"), and the partial files must go so the space comes back.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How the OS error reads once a library has wrapped it in a message of its own (safetensors: "No space left
# on device (os error 28)").
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def free_bytes(path: Path | str) -> int:
    """Free bytes, for this user, on the filesystem that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def folder_bytes(path: Path | str) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _errors(error: BaseException) -> list[BaseException]:
    """`error`, what caused it, and, for a DCP `CheckpointException`, what failed on each rank."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # {rank: (exception, traceback)}
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return seen


def out_of_space(error: BaseException, path: Path | str, need: int) -> bool:
    """Whether `error`, raised while writing about `need` bytes under `path`, is the disk filling up.

    When the OS error survives (an `OSError`, or its text in a library's message) it decides. `torch.save`
    (and so DCP) reports a failed write without it, so a write error that leaves less than `need` free on
    the filesystem counts too: call this after the partial files were removed.
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    for e in _errors(error):
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        if any(text in str(e) for text in NO_SPACE_TEXT):
            return True
    try:
        return free_bytes(path) < need
    except OSError:
        return False

