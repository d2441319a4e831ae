"""Settings: typed, strict, every problem at once, YAML as people write it, and what --resume may change."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import LoraSettings, TrainConfig, load_config, resume_config
from tunesmith.errors import ConfigError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    c = load_config(_yaml(tmp_path, "data: d.jsonl\nlr: 2e-4\nwarmup: 1e-1\nlora:\n  dropout: 5e-2\n"))
    assert c.lr == 2e-4 and isinstance(c.lr, float) and c.warmup == 0.1 and c.lora.dropout == 0.05


def test_every_problem_is_reported_at_once(tmp_path):
    path = _yaml(tmp_path, "data: d.jsonl\nlearning_rate: 1e-3\nbatch_size: 0\nschedule: wavy\nwarmup: 2\n"
                           "guard: maybe\nlora:\n  rank: 8\n  dropout: 1.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    problems = e.value.problems
    assert f"{path}: unknown setting 'learning_rate'; did you mean 'lr'?" in problems
    assert f"{path}: schedule: 'wavy' is not one of cosine, linear, constant" in problems
    assert f"{path}: guard: expected true or false, got 'maybe'" in problems
    assert f"{path}: lora: unknown setting 'rank'; did you mean 'r'?" in problems
    assert f"{path}: lora: dropout must be in [0, 1)" in problems
    assert f"{path}: batch_size must be >= 1" in problems
    assert f"{path}: warmup is a share of the steps, in [0, 1)" in problems
    assert len(problems) == 7, problems


def test_python_callers_get_the_same_validation():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(data="d.jsonl", lr=-1.0)
    with pytest.raises(ConfigError, match=r"^method: 'qlora' is not one of lora, full$"):
        TrainConfig(method="qlora")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"lora: r must be >= 1"):
        LoraSettings(r=0)
    assert TrainConfig(lr="3e-4").lr == 3e-4  # type: ignore[arg-type]  # as YAML would hand it over


def test_device_names_are_checked():
    assert TrainConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device 'gpu' is not one of auto, cpu, cuda, cuda:N, mps"):
        TrainConfig(device="gpu")


def test_resume_applies_the_safe_overrides():
    saved = TrainConfig(data="d.jsonl", lr=2e-4, epochs=3.0, max_steps=100, eval_every=10, out="runs/a")
    c = resume_config(saved, max_steps=400, eval_every=50, save_every=25, threads=1, device="cpu", lr=None)
    assert (c.max_steps, c.eval_every, c.save_every, c.threads, c.device, c.lr) == (400, 50, 25, 1, "cpu", 2e-4)


def test_resume_refuses_the_others_naming_them():
    saved = TrainConfig(data="d.jsonl", lr=2e-4, batch_size=8, out="runs/a")
    with pytest.raises(ConfigError, match=r"cannot change mid-run: batch-size, lora-r, lr \(resumable: max-steps, "):
        resume_config(saved, lr=1e-3, batch_size=4, lora_r=8, max_steps=10)
    assert resume_config(saved, lr=2e-4, data="d.jsonl").lr == 2e-4  # restating a setting is not changing it


def test_replay_auto_is_chosen_from_the_data_size_and_interpolate_is_checked():
    from tunesmith.config import REPLAY_BY_SIZE, resolve_defaults, resolve_replay

    auto = load_config(None, data="d.jsonl", replay="auto")
    assert [resolve_replay(auto, n).replay for n in (200, 999, 1000, 4999, 5000)] == [0.3, 0.3, 0.15, 0.15, 0.05]
    assert REPLAY_BY_SIZE[-1][0] == float("inf")
    assert resolve_replay(TrainConfig(replay=0.1), 200).replay == 0.1  # a share given is kept
    assert resolve_replay(auto, 200, documents=True).replay == 0.0  # the chat pool stays out of pre-training
    assert resolve_replay(TrainConfig(replay=0.1), 200, documents=True).replay == 0.1
    assert TrainConfig().replay == "auto" and TrainConfig().interpolate == "auto"  # the defaults (issue 12)
    assert resolve_defaults(auto, 200, 10).replay == 0.0  # `train` without the API layer mixes nothing in
    assert load_config(None, replay="0.2", interpolate="0.6").interpolate == 0.6  # as the CLI hands them over
    with pytest.raises(ConfigError, match=r"replay must be auto or a share in \[0, 1\)"):
        TrainConfig(replay=1.0)
    with pytest.raises(ConfigError, match=r"interpolate must be auto, off or a scale in \(0, 1\]"):
        TrainConfig(interpolate=1.5)
    with pytest.raises(ConfigError, match="interpolate: 'half' is not one of auto, off"):
        TrainConfig(interpolate="half")  # type: ignore[arg-type]
