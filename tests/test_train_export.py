"""What a run exports: the guard-aware checkpoint choice, its retention, and interpolation toward the base."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tunesmith.config import LoraSettings, load_config
from tunesmith.model.loading import load_model
from tunesmith.model.lora import add_lora
from tunesmith.train import wise
from tunesmith.train.run import Extras, train


class ScriptedGuard:
    """A guard whose verdicts are given in advance (the real one's verdicts depend on what a model learns):
    "pass", "fail" (on capitals), "warn" (a teacher-forced task) or "warn-free" (the plain-question check)."""

    def __init__(self, verdicts: list[str]):
        self.verdicts = iter(verdicts)
        self.calls = 0

    def baseline(self, model) -> dict[str, float]:
        return {"guard/capitals": 0.75}

    def check(self, model) -> tuple[dict[str, float], str, dict[str, str]]:
        self.calls += 1
        verdict, _, on = next(self.verdicts).partition("-")
        task = {"": "capitals", "free": "capitals_free"}[on]
        return {"guard/capitals": 0.75 - 0.1 * self.calls}, verdict, {task: verdict} if verdict != "pass" else {}


def _run(qa_file, model_dir, out, verdicts, **kw):
    guard = ScriptedGuard(verdicts)
    config = load_config(None, data=str(qa_file), model=str(model_dir), out=str(out), max_steps=6, batch_size=4,
                         lr=5e-3, threads=1, eval_every=2, keep_checkpoints=1, **kw)
    return train(config, extras=Extras(guard_factory=lambda tokenizer: guard)), guard


def test_export_is_the_best_step_the_guard_does_not_fail_and_its_checkpoint_survives(tiny_model_dir, qa_file,
                                                                                     tmp_path):
    result, _ = _run(qa_file, tiny_model_dir, tmp_path / "run", ["pass", "fail", "fail"], interpolate="off")
    losses = _losses(result)
    assert losses[6] < losses[2]  # the loss kept falling: by eval loss alone step 6 would be exported
    assert result.exported_step == 2 and result.guard["exported"]["guard_verdict"] == "pass"
    assert "among the steps the guard does not fail" in result.manifest["result"]["export_reason"]
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").glob("step-*"))
    assert "step-000002" in kept and len(kept) <= 3  # keep_checkpoints=1, plus best and guarded
    exported = load_file(str(result.output / "adapter_model.safetensors"))
    saved = load_file(str(result.run_dir / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert all(torch.equal(t, saved[k]) for k, t in _by_suffix(exported, saved).items())


def _by_suffix(exported: dict, saved: dict) -> dict:
    """Exported adapter tensors by checkpoint name (PEFT drops the adapter name from its keys)."""
    out = {}
    for key in saved:
        short = key.replace(".default", "")
        out[key] = exported[short]
    return out


def test_when_the_guard_fails_everywhere_the_best_is_exported_with_a_warning_and_a_remedy(tiny_model_dir,
                                                                                         qa_file, tmp_path):
    from tunesmith.cli.train import result_lines

    result, _ = _run(qa_file, tiny_model_dir, tmp_path / "run", ["fail", "fail", "fail"], interpolate="off")
    assert result.exported_step == 6
    assert "the forgetting guard failed every evaluated step (3)" in result.manifest["result"]["export_warning"]
    lines = result_lines(result)
    warned = "[yellow]warning:[/] the forgetting guard failed every evaluated step"
    assert any(line.startswith(warned) for line in lines)
    tried = next(line for line in lines if line.startswith("try:"))
    assert f"tunesmith train {qa_file} --out {tmp_path / 'run-remedy'}" in tried and "--replay 0.5" in tried


def test_auto_interpolation_scales_b_and_records_its_trials(tiny_model_dir, qa_file, tmp_path):
    # steps 2, 4, 6 warn on plain answers (6 is exported), then the scales: 0.8 still warns, 0.6 passes
    result, _ = _run(qa_file, tiny_model_dir, tmp_path / "run", ["warn-free"] * 4 + ["pass"], interpolate="auto")
    record = result.manifest["result"]["interpolation"]
    scale = record["scale"]
    n = len(record["trials"])
    assert record["how"] == "auto" and [t["scale"] for t in record["trials"]] == [1.0, 0.8, 0.6][:n]
    assert [t["verdict"] for t in record["trials"]] == ["warn", "warn", "pass"][:n]
    assert [t["flags"] for t in record["trials"]] == [{"capitals_free": "warn"}] * 2 + [{}][:n]
    assert scale == (0.6 if n == 3 else 1.0)  # 0.8 (and 0.6) kept 70 % of the eval-loss gain, or the gain is gone
    assert result.guard.get("scale", 1.0) == scale and result.manifest["result"]["guard_verdict"] in ("pass", "warn")
    _exported_is(result, result.exported_step, scale)


@pytest.mark.parametrize(("at_08", "expected"), [("warn", 1.0), ("pass", 0.8)])
def test_a_teacher_forced_warn_alone_moves_one_step_at_most(tiny_model_dir, qa_file, tmp_path, at_08, expected):
    # steps 2, 4, 6 warn on a teacher-forced task (plain answers hold); then scale 0.8 warns too, or passes
    result, guard = _run(qa_file, tiny_model_dir, tmp_path / "run", ["warn"] * 3 + [at_08], interpolate="auto")
    record = result.manifest["result"]["interpolation"]
    assert [t["scale"] for t in record["trials"]] == [1.0, 0.8] and guard.calls == 4  # never 0.6
    kept = wise.kept(wise.Trial(**record["trials"][1]), _losses(result)[0], record["trials"][0]["eval_loss"])
    assert record["scale"] == (expected if kept >= wise.MIN_KEPT else 1.0)
    _exported_is(result, result.exported_step, record["scale"])


def test_scaling_b_is_exactly_the_interpolated_merged_model(tiny_model_dir, tiny_tokenizer):
    base = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    model = add_lora(copy.deepcopy(base), LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    interp = wise.Interpolation(model)
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    w1 = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    interp.set(0.4)
    expected = copy.deepcopy(base)
    with torch.no_grad():
        for n, p in expected.named_parameters():
            p.copy_(w0[n] + 0.4 * (w1[n] - w0[n]))
    ids = torch.tensor([tiny_tokenizer("the capital of France is Paris")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, expected(input_ids=ids).logits, atol=1e-5)
    interp.set(1.0)
    merged = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    assert all(torch.equal(merged[n], w1[n]) for n in w1)


def test_a_fine_tune_the_guard_only_warns_on_teacher_forced_goes_no_lower_than_the_floor():
    fake = _Fake()
    first = wise.Trial(1.0, 1.0, "warn", {}, {"elements": "warn"})
    table = {0.8: (1.1, "warn-tf"), 0.6: (1.2, "pass")}
    pick, trials = wise.choose_scale(fake, _trial_scores(table, fake), base_loss=3.0, first=first)
    assert [t.scale for t in trials] == [1.0, 0.8] and pick.scale == 1.0  # equal concern: the larger scale
    fake = _Fake()
    first = wise.Trial(1.0, 1.0, "warn", {}, {"capitals_free": "warn"})  # plain answers drift: down to 0.4
    pick, trials = wise.choose_scale(fake, _trial_scores(table, fake), base_loss=3.0, first=first)
    assert [t.scale for t in trials] == [1.0, 0.8, 0.6] and pick.scale == 0.6


def test_a_warning_that_gives_way_to_an_unconfirmed_drop_moves_one_step():
    """The forgetting benchmark's teams cell: prose warns on the fine-tune, at 0.8 only an unconfirmed
    2-item elements drop is left, which concerns less; a lone unconfirmed drop also goes no lower than 0.8."""
    assert wise.concern("warn", {"prose": "warn", "elements": "unconfirmed"}) > wise.concern(
        "pass", {"elements": "unconfirmed"}) > wise.concern("pass", {})
    first = wise.Trial(1.0, 1.0, "warn", {}, {"prose": "warn", "elements": "unconfirmed"})
    fake = _Fake()
    table = {0.8: (1.1, "pass", {"elements": "unconfirmed"}), 0.6: (1.2, "pass", {})}
    pick, trials = wise.choose_scale(fake, lambda: (*table[fake.scale][:2], {}, table[fake.scale][2]),
                                     base_loss=3.0, first=first)
    assert [t.scale for t in trials] == [1.0, 0.8] and pick.scale == 0.8 and fake.scale == 0.8
    fake = _Fake()
    first = wise.Trial(1.0, 1.0, "pass", {}, {"elements": "unconfirmed"})
    pick, trials = wise.choose_scale(fake, lambda: (*table[fake.scale][:2], {}, table[fake.scale][2]),
                                     base_loss=3.0, first=first)
    assert [t.scale for t in trials] == [1.0, 0.8] and pick.scale == 1.0  # equal concern: the larger scale


def test_full_fine_tune_interpolation_is_a_lerp_of_the_weights(tiny_model_dir):
    tuned, base = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    interp = wise.Interpolation(tuned, w0)
    interp.set(0.25)
    assert all(torch.allclose(p, w0[n] + 0.25) for n, p in tuned.named_parameters())


def _trial_scores(table: dict[float, tuple[float, str]], interp):
    """A trial's figures from the table; a "warn" is on the plain-question check, "warn-tf" on a teacher-forced
    task."""
    def score():
        loss, said = table[interp.scale]
        verdict, _, on = said.partition("-")
        task = "elements" if on == "tf" else "capitals_free"
        return loss, verdict, {}, ({} if verdict == "pass" else {task: verdict})
    return score


class _Fake:
    """Interpolation stand-in: remembers the scale."""

    def __init__(self):
        self.scale = 1.0

    def set(self, s: float) -> None:
        self.scale = s


@pytest.mark.parametrize(("table", "chosen", "tried"), [
    # base loss 3.0, fine-tune 1.0: a scale must keep loss <= 1.6 (70 % of the gain)
    ({0.8: (1.2, "warn"), 0.6: (1.5, "pass"), 0.4: (2.0, "pass")}, 0.6, [1.0, 0.8, 0.6]),
    ({0.8: (1.2, "pass")}, 0.8, [1.0, 0.8]),
    ({0.8: (1.3, "warn"), 0.6: (1.9, "pass")}, 0.8, [1.0, 0.8, 0.6]),  # 0.6 gives back too much: best kept is 0.8
    ({0.8: (2.5, "pass")}, 1.0, [1.0, 0.8]),  # no scale keeps the gain: the fine-tune
    ({0.8: (1.2, "warn-tf"), 0.6: (1.5, "pass")}, 0.6, [1.0, 0.8, 0.6]),  # a teacher-forced warn still concerns
    # ... but less than a free-generation one, and 0.4 keeps too little of the gain
    ({0.8: (1.2, "warn-tf"), 0.6: (1.5, "warn"), 0.4: (2.0, "pass")}, 0.8, [1.0, 0.8, 0.6, 0.4]),
    # 0.4 keeps too little of the gain: of the rest, the least concern
    ({0.8: (1.2, "fail"), 0.6: (1.4, "warn"), 0.4: (2.0, "pass")}, 0.6, [1.0, 0.8, 0.6, 0.4]),
])
def test_choose_scale_takes_the_largest_scale_without_concern_that_keeps_the_gain(table, chosen, tried):
    fake = _Fake()
    first = wise.Trial(1.0, 1.0, "fail", {})
    pick, trials = wise.choose_scale(fake, _trial_scores(table, fake), base_loss=3.0, first=first)
    assert pick.scale == chosen and [t.scale for t in trials] == tried and fake.scale == chosen


def _losses(result) -> dict[int, float]:
    rows = [json.loads(r) for r in result.run_dir.joinpath("metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}


def _exported_is(result, step: int, scale: float) -> None:
    saved = load_file(str(result.run_dir / "checkpoints" / f"step-{step:06d}" / "weights.safetensors"))
    exported = load_file(str(result.output / "adapter_model.safetensors"))
    for key, tensor in _by_suffix(exported, saved).items():
        assert torch.allclose(tensor, saved[key] * scale if "lora_B" in key else saved[key]), key


def test_the_failed_best_step_moved_toward_the_base_is_exported_when_it_beats_the_guarded_step(
        tiny_model_dir, qa_file, tmp_path):
    # steps 2, 4, 6: pass, fail, fail (step 2 is the guarded one); then step 6 at 0.8 fails, at 0.6 passes
    result, guard = _run(qa_file, tiny_model_dir, tmp_path / "run", ["pass", "fail", "fail", "fail", "pass"],
                         interpolate="auto")
    losses = _losses(result)
    record = result.manifest["result"]["interpolation"]
    assert record["how"] == "rescue" and [t["scale"] for t in record["trials"]] == [1.0, 0.8, 0.6]
    assert [t["verdict"] for t in record["trials"]] == ["fail", "fail", "pass"] and guard.calls == 5
    assert record["trials"][2]["eval_loss"] < losses[2]  # the tiny model at lr 5e-3 keeps most of its gain at 0.6
    assert result.exported_step == 6 and record["scale"] == 0.6 and result.guard["scale"] == 0.6
    assert result.manifest["result"]["guard_verdict"] == "pass"
    assert "moved toward the base to 0.6" in result.manifest["result"]["export_reason"]
    _exported_is(result, 6, 0.6)


def test_a_rescue_the_guard_still_flags_on_plain_answers_is_refused_and_the_guarded_step_exported(
        tiny_model_dir, qa_file, tmp_path):
    # step 6 fails as trained and at 0.8; at 0.6 and 0.4 plain answers still drift: step 2 it is, unscaled
    result, guard = _run(qa_file, tiny_model_dir, tmp_path / "run",
                         ["pass", "fail", "fail", "fail", "warn-free", "warn-free"], interpolate="auto")
    rescue = result.manifest["result"]["rescue"]
    assert rescue["how"] == "rescue" and rescue["scale"] == 1.0 and "exported step 2" in rescue["note"]
    assert [t["verdict"] for t in rescue["trials"]][:2] == ["fail", "fail"] and guard.calls <= 6
    assert result.exported_step == 2 and result.manifest["result"]["interpolation"]["scale"] == 1.0
    assert result.guard["exported"]["guard_verdict"] == "pass" and "scale" not in result.guard
    _exported_is(result, 2, 1.0)  # the guarded checkpoint, reloaded after the trials changed the weights


def test_no_rescue_without_automatic_interpolation(tiny_model_dir, qa_file, tmp_path):
    result, guard = _run(qa_file, tiny_model_dir, tmp_path / "run", ["pass", "fail", "fail"], interpolate="off")
    assert guard.calls == 3 and "rescue" not in result.manifest["result"] and result.exported_step == 2
