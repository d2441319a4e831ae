"""What to try when a fine-tune forgets: one `tunesmith train` command line to copy, and why.

The remedies, in the order they are suggested (the first one the run did not already use), follow the
forgetting benchmark (`bench/forgetting.py`, docs/evaluate.md): LoRA instead of full fine-tuning; more
general replay examples; interpolation toward the base; a lower learning rate; fewer epochs. The command
repeats the run's data and settings that differ from the defaults, so it is the same run but for the
remedy, written to a new folder.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig

MORE_REPLAY = 0.5  # the replay share suggested when a run used less
_SKIP = ("data", "out", "lora", "threads", "device", "report_to")  # not repeated (or handled apart)


@dataclass(frozen=True)
class Remedy:
    command: str  # a `tunesmith train ...` line
    why: str


def remedy_for(config: TrainConfig, defaults: TrainConfig) -> Remedy:
    """The next remedy `config` did not use, as a command line (see the module docstring). `defaults`: what
    a plain `tunesmith train` would have resolved for the same data (only differences are repeated)."""
    change: dict[str, Any]
    lr = config.lr or defaults.lr or 0.0
    if config.method == "full":
        change, why = {"method": "lora"}, "LoRA changes far fewer weights than full fine-tuning and forgets less"
    elif config.replay != "auto" and config.replay < MORE_REPLAY:  # a run folder's config holds the resolved share
        change = {"replay": MORE_REPLAY}
        why = "more general examples mixed into training remind the model how to answer other requests"
    elif config.interpolate == "off":
        change, why = {"interpolate": "auto"}, "moving the fine-tune toward the base gives back general skills"
    elif lr > (defaults.lr or lr) / 4:
        change, why = {"lr": f"{lr / 2:g}"}, "a smaller learning rate moves the weights less far"
    else:
        change = {"epochs": f"{max(1.0, (config.epochs or 2) - 1):g}"}
        why = "fewer passes over narrow data overwrite less"
    return Remedy(_command(config, defaults, change), why)


def _command(config: TrainConfig, defaults: TrainConfig, change: dict[str, Any]) -> str:
    """`tunesmith train DATA --out NEW [the run's settings that differ from the defaults] [the change]`."""
    args = ["tunesmith", "train", config.data, "--out", _next_out(config.out)]
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name not in (*_SKIP, *change) and value is not None and value != getattr(defaults, f.name):
            args += _flag(f, value)
    if change.get("method", config.method) == "lora":
        args += [a for f in fields(config.lora) if getattr(config.lora, f.name) != getattr(defaults.lora, f.name)
                 for a in _flag(f, getattr(config.lora, f.name), "lora-")]
    for name, value in change.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(args)


def _flag(f: Any, value: Any, prefix: str = "") -> list[str]:
    flag = f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(value, list):
        value = ",".join(value)
    return [flag, f"{value:g}" if isinstance(value, float) else str(value)]


def _next_out(out: str) -> str:
    """A new folder beside the run: runs/x -> runs/x-remedy (then -remedy2, ...), never the run itself."""
    base = Path(out)
    stem = base.name.split("-remedy")[0] + "-remedy"
    n = 1
    while True:
        candidate = base.with_name(stem + ("" if n == 1 else str(n)))
        if not candidate.exists():
            return str(candidate)
        n += 1
