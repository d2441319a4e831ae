"""`tunesmith data check` and `tunesmith data prepare` end to end, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = Path(__file__).resolve().parent / "data" / "configs"  # a folder of config.json files only




def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_check_prints_a_report(monkeypatch, capsys, tiny_model_dir):
    code, out, err = run(monkeypatch, capsys, "data", "check", str(EXAMPLES / "support.jsonl"),
                         "--model", str(tiny_model_dir))
    assert code == 0, err
    assert "400 examples" in out and "template round-trip" in out and "verdict: ok" in out


def test_check_json(monkeypatch, capsys, tiny_model_dir):
    code, out, _ = run(monkeypatch, capsys, "data", "check", str(EXAMPLES / "glossary.csv"),
                       "--model", str(tiny_model_dir), "--max-length", "50", "--json")
    report = json.loads(out)
    assert code == 0 and report["valid"] is True and report["count"] == 24
    assert report["format"] == "prompt_completion" and report["tokens"]["max_length"] == 50
    assert report["tokens"]["truncated"] > 0 and report["verdict"]["level"] == "warnings"


def test_invalid_data_exits_2_listing_problems_without_traceback(monkeypatch, capsys, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "", "completion": "b"}, {"prompt": "a", "completion": 3}])
    before = path.read_bytes()
    code, out, err = run(monkeypatch, capsys, "data", "check", str(path))
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: 2 problems found", f"  {path}:1: prompt: empty text",
                                f"  {path}:2: completion: expected a string, got number"]
    assert path.read_bytes() == before
    code, out, err = run(monkeypatch, capsys, "data", "check", str(path), "--json")
    assert code == 2 and json.loads(out) == {"valid": False, "path": str(path), "problems": [
        f"{path}:1: prompt: empty text", f"{path}:2: completion: expected a string, got number"]}


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl"], "error: missing.jsonl: file not found"),
    ([str(CONFIGS)], f"error: {CONFIGS}: folder holds no .txt or .md documents and is no `datasets` save_to_disk "
                     "folder; give a data file, a folder of documents, or a hub id"),
    ([str(EXAMPLES / "support.jsonl"), "--format", "yaml"],
     "error: unknown dataset format 'yaml': expected one of auto, prompt_completion, chat, alpaca, sharegpt, "
     "chat_prompt_completion, text"),
    ([str(EXAMPLES / "support.jsonl"), "--columns", "prompt"],
     "error: --columns 'prompt': expected KEY=COLUMN pairs separated by commas, e.g. "
     "prompt=question,completion=answer"),
    ([str(EXAMPLES / "support.jsonl"), "--columns", "question=prompt"],
     "error: --columns: 'question' is not a key of any format; map columns to messages, conversations, system, "
     "prompt, completion, instruction, input, output, text, tools"),

    ([str(EXAMPLES / "support.jsonl"), "--model", "no-such-model"],
     "error: model 'no-such-model': not a local folder, a built-in model (smollm2-135m) or a hub id like 'org/name'"),
])
def test_user_mistakes_are_one_line(monkeypatch, capsys, args, message):
    code, _, err = run(monkeypatch, capsys, "data", "check", *args)
    assert code == 2 and err.strip() == message


def test_check_with_leaking_eval_exits_1(monkeypatch, capsys, tmp_path, tiny_model_dir):
    monkeypatch.chdir(tmp_path)  # short relative paths keep the table unwrapped
    rows = [{"prompt": f"Question {i} about kettles?", "completion": f"Answer {i}."} for i in range(5)]
    _jsonl(tmp_path / "train.jsonl", rows)
    _jsonl(tmp_path / "eval.jsonl", [rows[2], {"prompt": "Unrelated?", "completion": "Yes."}])
    code, out, _ = run(monkeypatch, capsys, "data", "check", "train.jsonl", "--eval", "eval.jsonl",
                       "--model", str(tiny_model_dir))
    assert code == 1
    assert "same prompt" in out and "! 1: eval.jsonl:1 = train.jsonl:3" in out
    assert "problem  1 of 2 eval examples ask a prompt the training set contains" in out


def test_prepare_is_deterministic_and_leaves_input_untouched(monkeypatch, capsys, tmp_path, tiny_model_dir):
    source = EXAMPLES / "persona.jsonl"
    before = source.read_bytes()
    outs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, out, err = run(monkeypatch, capsys, "data", "prepare", str(source), "--out", str(tmp_path / name),
                             "--seed", seed, "--model", str(tiny_model_dir))
        assert code == 0, err
        assert "180 examples" in out and "20 examples" in out
        outs.append({f: (tmp_path / name / f).read_bytes() for f in ("train.jsonl", "eval.jsonl", "report.json")})
    assert outs[0] == outs[1]
    assert outs[0]["eval.jsonl"] != outs[2]["eval.jsonl"]
    assert source.read_bytes() == before
    code, _, err = run(monkeypatch, capsys, "data", "prepare", str(source), "--out", str(tmp_path / "a"))
    assert code == 2 and "folder is not empty; pass --force" in err


def test_console_script_never_shows_a_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"prompt,completion\n\xff\xfe,x\n")
    proc = subprocess.run([sys.executable, "-m", "tunesmith", "data", "check", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{bad}:2: encoding: not valid UTF-8 (byte 0xff at column 1)" in proc.stderr
