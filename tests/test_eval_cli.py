"""`tunesmith eval` end to end on tiny run folders: a no-op adapter passes (exit 0), a wrecked full fine-tune
fails (exit 1), a user mistake is one line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)

SUITE = "prose,capitals,instructions"  # a fast slice: one of each log-likelihood scorer
EVAL_ROWS = [
    ("How do I reset my password?", "Go to the Account page and click Forgot Password."),
    ("Where is my order?", "You can track your order from the Orders page."),
    ("What is your return policy?", "Returns are accepted within 30 days of purchase."),
]


def _write_eval_data(run: Path) -> None:
    (run / "data").mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in EVAL_ROWS]
    (run / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _manifest(run: Path, method: str, base: Path) -> None:
    (run / "manifest.json").write_text(json.dumps({"method": method, "base_model": {"name": str(base)}}))


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA run whose adapter is fresh (B = 0): tuned and base are the same function."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.model.loading import load_model

    run = tmp_path_factory.mktemp("lora-run")
    model = get_peft_model(load_model(str(tiny_model_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(run / "adapter")
    _manifest(run, "lora", tiny_model_dir)
    _write_eval_data(run)
    return run


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A full fine-tune that wrecked the model (embeddings blown up, as a far too high learning rate does)."""
    from tunesmith.model.loading import load_model

    run = tmp_path_factory.mktemp("full-run")
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8)
    model.save_pretrained(run / "model")
    for f in tiny_model_dir.glob("*token*"):
        shutil.copy(f, run / "model" / f.name)
    _manifest(run, "full", tiny_model_dir)
    _write_eval_data(run)
    return run


def test_fresh_adapter_passes_with_zero_deltas(monkeypatch, capsys, lora_run):
    code, out, err = run(monkeypatch, capsys, "eval", str(lora_run), "--suite", SUITE, "--threads", "1")
    assert code == 0, err
    assert "verdict: PASS" in out and "Target task: 3 examples" in out
    report = json.loads((lora_run / "eval" / "report.json").read_text())
    assert report["verdict"] == "pass" and report["base"]["source"] == report["tuned"]["source"].split(" + ")[0]
    assert [r["task"] for r in report["suite"]] == ["capitals", "instructions", "prose"]
    assert all(r["delta"] == 0 and r["ci"] == [0, 0] for r in report["suite"])
    chosen = report["suite"][1]["outputs"]  # instructions: the choice each model preferred, item by item
    assert len(chosen) == 24 and all(o["base"] == o["tuned"] and o["tuned"] for o in chosen)
    assert report["suite"][0]["outputs"] == []  # greedy items keep no text
    assert {m["name"]: m["delta"] for m in report["target_task"]["metrics"]}["eval_loss"] == 0
    assert (lora_run / "eval" / "report.html").is_file() and (lora_run / "eval" / "report.md").is_file()


def test_wrecked_full_run_fails_with_exit_1(monkeypatch, capsys, full_run, tmp_path):
    code, out, err = run(monkeypatch, capsys, "eval", str(full_run), "--suite", "prose", "--out", str(tmp_path))
    assert code == 1, err
    assert "verdict: FAIL" in out and "prose: fail (worse by" in out
    report = json.loads((tmp_path / "report.json").read_text())
    (prose,) = report["suite"]
    assert prose["verdict"] == "fail" and prose["tuned"] > 1.25 * prose["base"] and prose["ci"][0] > 0.25


def test_lenient_thresholds_turn_the_fail_into_a_pass(monkeypatch, capsys, full_run, tmp_path):
    code, out, _ = run(monkeypatch, capsys, "eval", str(full_run), "--suite", "prose", "--out", str(tmp_path),
                       "--thresholds", "ppl_warn=1000,ppl_fail=1000", "--limit", "0", "--json")
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "pass" and report["target_task"] is None


def test_plain_model_is_scored_alone_with_a_keep_set(monkeypatch, capsys, tiny_model_dir, tmp_path):
    keep = tmp_path / "facts.jsonl"
    keep.write_text(json.dumps({"prompt": "Capital of France?", "prefix": "It is", "answer": "Paris"}) + "\n")
    code, out, err = run(monkeypatch, capsys, "eval", str(tiny_model_dir), "--suite", "none", "--keep", str(keep),
                         "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "none: scored alone (pass --base to compare)" in out and "verdict" not in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] is None and [r["task"] for r in report["suite"]] == ["keep:facts"]


@pytest.mark.parametrize(("args", "message"), [
    (["no/such/model/here"], "error: model 'no/such/model/here': not a local folder, a built-in model"),
    (["{run}", "--suite", "generl"], "error: --suite: unknown part 'generl'; choose from general, safety,"),
    (["{run}", "--thresholds", "fail=0.01,warn=0.5"], "error: --thresholds: each warn threshold must be >= 0"),
    (["{run}", "--keep", "{missing}"], "error: {missing}: file not found"),
    (["{run}", "--adapter", "{run}"], "error: {run}: not an adapter folder (no adapter_config.json)"),
])
def test_user_mistakes_exit_2_with_one_line(monkeypatch, capsys, lora_run, tmp_path, args, message):
    missing = tmp_path / "missing.jsonl"
    fill = {"run": str(lora_run), "missing": str(missing)}
    code, out, err = run(monkeypatch, capsys, "eval", *[a.format(**fill) for a in args])
    assert code == 2 and out == ""
    assert err.startswith(message.format(**fill)) and len(err.strip().splitlines()) == 1


def test_target_loss_uses_the_runs_max_length(lora_run, tiny_model_dir, tmp_path):
    from tunesmith.evaluate.runner import EvalOptions, max_length

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    (run / "config.yaml").write_text("method: lora\nmax_length: 48\n")
    assert max_length(EvalOptions(target=str(run))) == 48
    assert max_length(EvalOptions(target=str(run), max_length=32)) == 32
    assert max_length(EvalOptions(target=str(tiny_model_dir))) == 1024


def test_base_option_compares_any_two_models(monkeypatch, capsys, tiny_model_dir, full_run, tmp_path):
    code, out, _ = run(monkeypatch, capsys, "eval", str(full_run / "model"), "--base", str(tiny_model_dir),
                       "--suite", "prose", "--out", str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 1 and report["base"]["source"] == str(tiny_model_dir) and report["verdict"] == "fail"
    code, out, _ = run(monkeypatch, capsys, "eval", str(tiny_model_dir), "--base", str(tiny_model_dir),
                       "--suite", "prose", "--out", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["suite"][0]["delta"] == 0
