"""Interpolation toward the base model (WiSE-FT, Wortsman et al. 2022): keep the task, give back the rest.

A fine-tune moves the weights from the base W0 to W1. The model at scale s in (0, 1] is W0 + s (W1 - W0):
s = 1 is the fine-tune, smaller s moves back toward the base. Along that line the target-task loss usually
rises slowly at first while general skills come back fast, so a scale a little below 1 often keeps the
task and undoes the forgetting.

- LoRA: the change is (alpha / r) B A, linear in B, so scaling B by s is exact and costs nothing; the
  exported adapter is a normal PEFT adapter with B scaled. (DoRA renormalises the direction, so it is not
  linear in B: not interpolated.)
- Full fine-tuning: every trained weight becomes lerp(W0, W1, s); W0 is read from the base model's files.

`choose_scale` picks s at the end of training, by how much the exported weights *concern* the forgetting
guard (`concern`), most first: it fails them; a free-generation check is flagged (`FREE_TASKS`: the plain
question's answer, format collapse: what a user sees); a teacher-forced task alone warns; or one only drops
past the fail threshold without the slice confirming it. The last two are as often noise as not (on the
guard's 16-item slices that is two flipped items; the forgetting benchmark measured such a flag driving the
scale to 0.4 and costing 22 points of the target), so they may move the weights one step only (`FLOOR`);
a scale where a warning gives way to an unconfirmed drop is less concerning, and preferred.

The choice: the largest scale down to the floor without concern that keeps at least `MIN_KEPT` of the
eval-loss gain the fine-tune made over the base; when none is without concern, the least concerning of
those that keep the gain (the largest scale first); the fine-tune itself when none keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SCALES = (1.0, 0.8, 0.6, 0.4)  # candidate scales, tried from the fine-tune toward the base
MIN_KEPT = 0.7  # share of the eval-loss gain over the base a scale must keep
FREE_TASKS = ("capitals_free", "collapse")  # the guard's free-generation checks: what a user sees

# What the guard says of the model as set: held-out eval loss, overall verdict, metrics, the verdict of each
# task that does not pass.
Scored = tuple[float, str, dict[str, float], dict[str, str]]


class Interpolation:
    """Set a model's trained weights to W0 + s (W1 - W0) for any s, and back; W1 is the model as given."""

    def __init__(self, model: nn.Module, base: dict[str, torch.Tensor] | None = None):
        """`base`: W0 of the trained weights by parameter name (full fine-tuning); None for LoRA, whose W0
        is B = 0."""
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad and (base is not None or
                                                                                            "lora_B" in n)}
        if not self.params:
            raise ValueError("no trained weights to interpolate (LoRA B matrices or full weights)")
        self.tuned = {n: p.detach().clone() for n, p in self.params.items()}
        self.base = base
        self.scale = 1.0

    @torch.no_grad()
    def set(self, s: float) -> None:
        assert 0 < s <= 1, "a scale is in (0, 1]"
        for n, p in self.params.items():
            if self.base is None:
                p.copy_(self.tuned[n] * s)
            else:
                p.copy_(torch.lerp(self.base[n].to(p.device, p.dtype), self.tuned[n], s))
        self.scale = s


@dataclass(frozen=True)
class Trial:
    """One candidate scale: held-out eval loss, the guard's verdict, metrics and flagged tasks."""

    scale: float
    eval_loss: float
    verdict: str
    metrics: dict[str, float]
    flags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eval_loss": round(self.eval_loss, 6)}

    @classmethod
    def of_step(cls, record: dict[str, Any]) -> Trial:
        """The trained weights' own trial (s = 1), from an evaluated step's metrics record."""
        return cls(1.0, record["eval_loss"], record["guard_verdict"],
                   {k: v for k, v in record.items() if k.startswith("guard/")}, record.get("guard_flags") or {})


def concern(verdict: str, flags: dict[str, str]) -> int:
    """How much the guard's say calls for moving toward the base: 4 it fails; 3 a free-generation check is
    flagged; 2 a teacher-forced task alone warns; 1 one only drops by a size the slice cannot confirm
    (flagged "unconfirmed"); 0 none of these."""
    if verdict == "fail":
        return 4
    if any(t in flags for t in FREE_TASKS):
        return 3
    if verdict != "pass":
        return 2
    return 1 if flags else 0


# The smallest scale each concern of the fine-tune itself may move to: a teacher-forced flag alone one step.
FLOOR = {1: 0.8, 2: 0.8, 3: min(SCALES), 4: min(SCALES)}


def _concern(t: Trial) -> int:
    return concern(t.verdict, t.flags)


def kept(trial: Trial, base_loss: float, tuned_loss: float) -> float:
    """Share of the fine-tune's eval-loss gain over the base that `trial` keeps (1 for the fine-tune)."""
    gain = base_loss - tuned_loss
    return 1.0 if gain <= 0 else (base_loss - trial.eval_loss) / gain


def choose_scale(
    interp: Interpolation, score: Callable[[], Scored], *, base_loss: float | None = None,
    first: Trial, scales: Sequence[float] = SCALES, keeps: Callable[[Trial], bool] | None = None,
) -> tuple[Trial, list[Trial]]:
    """The scale to export and every trial. `first` is the fine-tune's own (s = 1) trial; `score()` scores the
    model as currently set (`Scored`); `keeps(trial)` says whether a trial keeps enough of the task (by default
    `MIN_KEPT` of the eval-loss gain over `base_loss`). Leaves the model at the chosen scale."""
    if keeps is None:
        if base_loss is None:
            raise ValueError("choose_scale needs base_loss or keeps")
        gain_from = base_loss

        def keeps(t: Trial) -> bool:
            return kept(t, gain_from, first.eval_loss) >= MIN_KEPT
    trials = [first]
    floor = FLOOR.get(_concern(first), 1.0)
    for s in (x for x in scales if floor <= x < 1):
        if _concern(trials[-1]) == 0 or not keeps(trials[-1]):
            break  # no concern left, or the gain is going: smaller scales can only give more of it back
        interp.set(s)
        trials.append(Trial(s, *score()))
        log.info("scale %.2f toward the base: eval loss %.4f, guard %s", s, trials[-1].eval_loss,
                 trials[-1].verdict)
    keeping = [t for t in trials if keeps(t)]
    chosen = min(keeping, key=lambda t: (_concern(t), -t.scale)) if keeping else first
    interp.set(chosen.scale)
    return chosen, trials
