"""Run training under mimalloc when it is installed (Linux).

glibc's malloc hands large freed tensors back to the OS and faults them in again on the next step; on CPU
training that is 12-35 % of the time spent in the kernel, and its fragmentation inflates peak RSS. mimalloc
(the `cmeel-mimalloc` wheel) with purging off keeps and reuses that memory: faster steps and a peak RSS
close to the live peak. The allocator must be chosen before the process starts, so `tunesmith train`
re-executes itself once with LD_PRELOAD set. Opt out with TUNESMITH_MALLOC=system.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LIB = "cmeel.prefix/lib/libmimalloc.so"


def mimalloc_path() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution("cmeel-mimalloc").locate_file(LIB)))
    except PackageNotFoundError:
        return None
    return str(path) if path.is_file() else None


def allocator_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to run training under mimalloc, or None if not wanted, unavailable or already on."""
    env = dict(os.environ if env is None else env)
    preload = env.get("LD_PRELOAD", "")
    if env.get("TUNESMITH_MALLOC", "mimalloc") != "mimalloc" or "mimalloc" in preload:
        return None
    lib = mimalloc_path()
    if lib is None:
        return None
    env["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    env.setdefault("MIMALLOC_PURGE_DELAY", "-1")  # never hand memory back mid-run
    return env


def reexec_under_mimalloc(argv: list[str]) -> None:
    """Replace this process by `python -m tunesmith ARGV` under mimalloc (returns only if not applicable)."""
    env = allocator_env()
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "tunesmith", *argv], env)


def current_allocator() -> str:
    """'mimalloc' when this process runs under it, else 'system' (recorded in the run manifest)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (or last exec'd).

    Linux's VmHWM, not `ru_maxrss`: a child spawned with vfork (what `subprocess` uses) has the parent's high-
    water mark folded into its `ru_maxrss` at exec, so a run started from a large process (a test runner, a
    notebook) would report the parent's peak instead of its own.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
