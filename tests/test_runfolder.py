"""The run folder: one owner, base models found by identity and checked, runs as bases, safe --force."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import run as run_cli
from tunesmith.config import load_config
from tunesmith.errors import DataError, ModelError, RunError
from tunesmith.model.adapters import load_for_inference, resolve_target
from tunesmith.model.loading import fingerprint, load_model, resolve
from tunesmith.model.merge import merge
from tunesmith.runfolder import RunFolder
from tunesmith.train.precision import cpu_has_amx
from tunesmith.train.run import train

QA = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(24)]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return path


def _train(data: Path, model: Path | str, out: Path, **kw):
    settings = dict(data=str(data), model=str(model), out=str(out), max_steps=3, batch_size=4, lr=5e-3,
                    guard=False, threads=1, eval_every=3)
    return train(load_config(None, **{**settings, **kw}))


@pytest.fixture(scope="module")
def base_copy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model folder this module may move and change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("bases") / "tiny"))


@pytest.fixture(scope="module")
def run(qa_file: Path, base_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    return RunFolder.open(_train(qa_file, base_copy, tmp_path_factory.mktemp("runs") / "qa").run_dir)


def test_run_folder_reads_what_training_wrote(run: RunFolder, base_copy: Path):
    assert run.method == "lora" and run.config().max_steps == 3
    assert run.base().path == str(base_copy.resolve())
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1, 2, 3]
    assert run.data_file("train") is not None and run.output().name == "adapter"
    bf16 = cpu_has_amx()  # precision: auto is bf16 on a CPU with AMX, and there attention runs in fp32
    assert run.manifest()["fast_paths"] == {"mask_free": True, "fused_mlp": True, "head_on_targets": True,
                                          "fused_rms_norm": True, "fused_lora": True,
                                          **({"fp32_attention": True} if bf16 else {})}
    assert run.manifest()["forward_tokens"] == 768  # forward_tokens: auto, on a CPU
    assert run.manifest()["precision"] == ("bf16" if bf16 else "fp32")


def test_a_base_is_resolved_by_its_recorded_path_not_the_current_folder(run: RunFolder, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the name typed at training time no longer resolves from here
    target = resolve_target(str(run.path))
    assert target.model.path == run.base().path and target.adapter == run.path / "adapter"


def test_a_moved_or_changed_base_is_refused_by_every_reader(run: RunFolder, base_copy: Path, tmp_path):
    moved = base_copy.with_name("moved")
    base_copy.rename(moved)
    try:
        with pytest.raises(ModelError, match=r"its base model was at .*tiny.*, which no longer exists; if it moved"):
            resolve_target(str(run.path))
        target = resolve_target(str(moved), run.path)  # named by hand: accepted
        assert target.adapter == run.path / "adapter"
    finally:
        moved.rename(base_copy)
    weights = base_copy / "model.safetensors"
    original = weights.read_bytes()
    try:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 1.0
        save_file(tensors, str(weights))
        for use in (lambda: resolve_target(str(run.path)), lambda: merge(run.path, tmp_path / "m")):
            with pytest.raises(ModelError, match="trained on a different base model than"):
                use()
    finally:
        weights.write_bytes(original)


def test_merge_force_replaces_only_an_earlier_merge(run: RunFolder, tmp_path: Path):
    out = merge(run.path, tmp_path / "merged").out
    assert json.loads((out / "tunesmith.json").read_text())["kind"] == "merged"
    merge(run.path, out, force=True)  # an earlier merge: replaced
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(ModelError, match="--force only replaces a folder tunesmith merge wrote"):
        merge(run.path, foreign, force=True)
    assert (foreign / "todo.txt").read_text() == "keep me"


def test_a_lora_run_is_the_base_of_the_next_run(run: RunFolder, qa_file: Path, tmp_path: Path):
    second = RunFolder.open(_train(qa_file, run.path, tmp_path / "second", seed=1).run_dir)
    record = second.manifest()["base_model"]
    assert record["kind"] == "run" and record["fingerprint"] == fingerprint(resolve(str(run.path)))
    stage1, _ = load_for_inference(resolve_target(str(run.path)))
    merged = load_model(str(run.path))  # the run as a model: base with its adapter merged in
    stacked, _ = load_for_inference(resolve_target(str(second.path)))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(stage1(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
        with stacked.disable_adapter():  # the second run's base is the first run's result
            assert torch.allclose(stacked(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_a_failed_start_leaves_no_folder_behind(tiny_model_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError):
        _train(bad, tiny_model_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_eval_on_a_folder_that_is_no_run_says_what_it_is(monkeypatch, capsys, tmp_path: Path, run: RunFolder):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(empty))
    assert code == 2 and "not a model folder (no config.json), nor a run folder: not a tunesmith run folder" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "--resume", str(run.path / "adapter"))
    assert code == 2 and "an adapter folder, not a run folder (no manifest.json); nothing to resume" in err


def test_resume_with_a_setting_that_cannot_change_is_one_line(monkeypatch, capsys, run: RunFolder):
    code, _, err = run_cli(monkeypatch, capsys, "train", "--resume", str(run.path), "--lr", "0.1",
                           "--max-steps", "6")
    assert code == 2
    assert err.strip().splitlines() == ["error: --resume continues the run as it was set up; these settings cannot "
                                        "change mid-run: lr (resumable: max-steps, epochs, eval-every, save-every, "
                                        "keep-checkpoints, patience, device, threads, guard-stop, "
                                        "gradient-checkpointing, forward-tokens, precision, report-to, "
                                        "interpolate); start a new run with "
                                        "--out to change "
                                        "them"]


def test_run_folder_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(RunError, match=r"missing: no such folder"):
        RunFolder.open(tmp_path / "missing")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(RunError, match=r"model: a model folder, not a run folder"):
        RunFolder.open(tmp_path / "model")
    with pytest.raises(RunError, match="--force only replaces a tunesmith run folder"):
        RunFolder.create(tmp_path / "model", force=True)
    assert (tmp_path / "model" / "config.json").is_file()


def test_train_ends_with_the_guard_verdict_and_the_next_commands(monkeypatch, capsys, qa_file, tiny_model_dir,
                                                                  tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                             str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--threads", "1",
                             "--replay", "auto")
    assert code == 0, err
    folder = RunFolder.open(tmp_path / "run")
    assert folder.config().replay == 0.3  # auto, resolved from the data size (24 rows) and recorded as such
    assert folder.manifest()["data"]["replay_examples"] == round(0.3 / 0.7 * len(QA))
    assert folder.manifest()["shape"]["kind"] == "form"  # "It is 25." -> the fine-tune's shape, for `eval`
    assert re.search(r"· scoring the base model \(\d eval examples, the forgetting-guard slice\): the reference", out)
    assert "guard at step 2: PASS, general skills held (arithmetic" in out
    assert f"next: tunesmith eval {tmp_path / 'run'}" in out and f"tunesmith chat {tmp_path / 'run'}" in out


def test_only_rank_0_prints_under_torchrun(monkeypatch, capsys, qa_file, tiny_model_dir, tmp_path):
    monkeypatch.setenv("RANK", "1")  # what torchrun sets for the second process
    code, out, err = run_cli(monkeypatch, capsys, "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                             str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4", "--threads", "1",
                             "--no-guard")
    assert code == 0, err
    assert out == "" and err == ""


def test_the_eta_leaves_out_the_base_scoring_and_counts_evaluations_to_come():
    import time

    from tunesmith.cli.train import Eta

    eta = Eta()
    eta.start(10)
    eta.evaluated()  # step 0: the base model's scoring, a one-time cost
    assert eta.evals == 0
    assert eta.step({"step": 1, "elapsed": 2.0}) == "0:00:18"  # 9 steps x 2 s
    eta.last -= 4.0  # an evaluation that took 4 s
    eta.evaluated()
    assert eta.step({"step": 2, "elapsed": 4.0}) == "0:00:32"  # 8 x 2 s + 8 steps x 4 s of eval per 2 steps
    assert time.perf_counter() >= eta.last


def test_a_failed_train_prints_its_one_line_and_nothing_else(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, out, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "missing.jsonl"), "--model",
                             str(tiny_model_dir), "--out", str(tmp_path / "run"))
    assert code == 2 and out == ""
    assert err == f"error: {tmp_path / 'missing.jsonl'}: file not found\n"
    assert not (tmp_path / "run").exists()
