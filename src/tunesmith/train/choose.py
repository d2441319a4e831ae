"""What a run exports: which checkpoint (guard-aware), and how far toward the base (`tunesmith.train.wise`).

The checkpoint: with the forgetting guard on, the lowest held-out eval loss among the evaluated steps the
guard did not fail (the `guarded` pointer); when it failed every one, the lowest eval loss overall, with a
warning. Without the guard, the lowest eval loss; without eval data, the last step. The choice reads the
pointers and the metrics log, so every rank of a distributed run makes the same one.

When the guard failed the lowest-eval-loss step and an earlier one is chosen, that earlier step may have
learned little of the task (the forgetting benchmark's `teams` seed 1 fell back from step 90 to step 20 and
scored 0 %). `rescue_best` then moves the failed step toward the base first: a scale the guard neither
fails nor flags on free generation, whose eval loss is still below the earlier step's, is exported instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.runfolder import RunFolder
from tunesmith.train import checkpoint, wise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """The step to export, the checkpoint to load for it (None: the model as training left it), and why."""

    step: int
    path: Path | None
    reason: str
    warning: str | None = None
    checkpoint: Path | None = None  # the step's checkpoint, also when `path` is None
    failed_best: tuple[int, Path] | None = None  # the lower-eval-loss step passed over: the guard failed it


def choose_checkpoint(run: RunFolder, state: checkpoint.TrainState) -> Choice:
    """The checkpoint to export (see the module docstring)."""
    folder = run.checkpoints
    best, guarded = checkpoint.pointed(folder, "best"), checkpoint.pointed(folder, "guarded")
    verdicts = {r["step"]: r["guard_verdict"] for r in run.metrics() if "guard_verdict" in r}
    if guarded is not None:
        step = checkpoint.read_state(guarded).step
        best_step = checkpoint.read_state(best).step if best is not None else step
        why = ("the lowest eval loss" if step == best_step else
               f"the lowest eval loss among the steps the guard does not fail (step {best_step}'s was lower, "
               f"guard {verdicts.get(best_step, '?')})")
        failed = (best_step, best) if best is not None and step != best_step else None
        return Choice(step, guarded if step != state.step else None, why, checkpoint=guarded, failed_best=failed)
    if best is not None:
        step = checkpoint.read_state(best).step
        path = best if step != state.step else None
        if verdicts:
            return Choice(step, path, "the lowest eval loss", warning=(
                f"the forgetting guard failed every evaluated step ({len(verdicts)}); exported step {step}, the "
                "lowest eval loss, which forgets general skills"))
        return Choice(step, path, "the lowest eval loss")
    return Choice(state.step, None, "the last step (no eval data)")


def rescue_best(
    model: nn.Module, choice: Choice, evals: dict[int, dict[str, Any]], score: Callable[[], wise.Scored],
    base_weights: Callable[[], dict[str, torch.Tensor]] | None,
) -> tuple[Choice | None, Scaling]:
    """Try the lowest-eval-loss step the guard failed (`choice.failed_best`), moved toward the base, instead of
    the earlier step chosen. `model` holds `choice`'s weights. Returns the new choice (None: keep `choice`) and
    the trials; leaves the model at the rescued weights, or at `choice`'s when the rescue is refused."""
    assert choice.failed_best is not None and choice.checkpoint is not None
    best_step, best_path = choice.failed_best
    at_best, at_chosen = evals.get(best_step, {}), evals.get(choice.step, {})
    if "eval_loss" not in at_best or "eval_loss" not in at_chosen:
        return None, Scaling(how="rescue", note="not tried: no eval loss for the steps")
    limit = at_chosen["eval_loss"]
    checkpoint.load(best_path, model)
    interp = wise.Interpolation(model, base_weights() if base_weights is not None else None)
    chosen, trials = wise.choose_scale(interp, score, first=wise.Trial.of_step(at_best),
                                       keeps=lambda t: t.eval_loss < limit)
    if chosen.scale < 1 and wise.concern(chosen.verdict, chosen.flags) <= 2:
        why = (f"the lowest eval loss (step {best_step}) moved toward the base to {chosen.scale:g}: the guard "
               f"failed it as trained, not at this scale, and its eval loss ({chosen.eval_loss:.4f}) is below that "
               f"of step {choice.step} ({limit:.4f}), the best step the guard passed")
        return Choice(best_step, best_path, why, checkpoint=best_path), Scaling(chosen, trials, "rescue")
    checkpoint.load(choice.checkpoint, model)
    return None, Scaling(trials=trials, how="rescue", note=(
        f"step {best_step} moved toward the base: no scale the guard passes (without a free-generation flag) keeps "
        f"its eval loss below step {choice.step}'s; exported step {choice.step}"))


@dataclass
class Scaling:
    """What `scale_toward_base` did: the chosen trial (None: not interpolated) and every trial."""

    chosen: wise.Trial | None = None
    trials: list[wise.Trial] = field(default_factory=list)
    how: str = "off"
    note: str | None = None

    def record(self) -> dict[str, Any]:
        return {"scale": self.chosen.scale if self.chosen else 1.0, "how": self.how, "note": self.note,
                "rule": f"largest of {', '.join(map(str, wise.SCALES))} with the least concern to the guard "
                        f"(fail, then free generation, then a teacher-forced warning, then an unconfirmed drop; "
                        f"the last two go no lower than {wise.FLOOR[1]:g}), "
                        f"keeping >= {wise.MIN_KEPT:.0%} of the eval-loss gain"
                        if self.how == "auto" else
                        f"the failed lowest-eval-loss step at the largest of {', '.join(map(str, wise.SCALES))} with "
                        "the least concern whose eval loss stays below the step chosen instead; taken when the "
                        "guard neither fails it nor flags free generation"
                        if self.how == "rescue" else None,
                "trials": [t.to_dict() for t in self.trials]}


def scale_toward_base(
    model: nn.Module, setting: str | float, at_step: dict[str, Any], base_loss: float | None,
    score: Callable[[], wise.Scored] | None,
    base_weights: Callable[[], dict[str, torch.Tensor]] | None,
) -> Scaling:
    """Interpolate the exported weights toward the base per `setting` ("auto", "off" or a scale).

    `at_step`: the metrics record of the exported step (its eval loss, guard verdict and flags); `score`
    scores the model as it is set (`wise.Scored`), None without guard or eval data;
    `base_weights` reads W0 for full fine-tuning (None for LoRA)."""
    if setting == "off" or setting == 1.0:
        return Scaling()
    if "lora_B" not in "".join(n for n, _ in model.named_parameters()) and base_weights is None:
        return Scaling(note="not interpolated: no LoRA B matrices and no base weights")
    flags = at_step.get("guard_flags") or {}
    if setting == "auto":
        if score is None or base_loss is None or "guard_verdict" not in at_step or "eval_loss" not in at_step:
            return Scaling(how="auto", note="not interpolated: needs the guard and eval data")
        if wise.concern(at_step["guard_verdict"], flags) == 0:
            return Scaling(how="auto", note="not needed: the guard passes the exported step")
    interp = wise.Interpolation(model, base_weights() if base_weights is not None else None)
    if setting != "auto":
        interp.set(float(setting))
        trials = [wise.Trial(float(setting), *score())] if score is not None else []
        return Scaling(trials[0] if trials else wise.Trial(float(setting), float("nan"), "-", {}), trials, "fixed")
    chosen, trials = wise.choose_scale(interp, score, base_loss=base_loss, first=wise.Trial.of_step(at_step))
    return Scaling(chosen, trials, "auto")
