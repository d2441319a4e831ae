"""`tunesmith run`: data -> advice -> plan -> train -> evaluation, in one command, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import run


def _data(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QA = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(40)]


def test_run_quick_goes_through_every_stage_and_ends_with_a_card(monkeypatch, capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    code, stdout, err = run(monkeypatch, capsys, "run", str(_data(tmp_path, QA)), "--model", str(tiny_model_dir),
                            "--out", str(out), "--quick", "--threads", "1", "--batch-size", "4")
    assert code == 0, err
    stages = [line.split(" ")[0] for line in stdout.splitlines() if line[:2] in ("1/", "2/", "3/", "4/", "5/")]
    assert stages == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert "verdict warnings" in stdout and "only 40 examples" in stdout  # the data check's own warnings
    assert "learned  eval loss" in stdout and "kept     full evaluation verdict PASS" in stdout
    assert f"output   {out / 'adapter'}" in stdout and f"report {out / 'eval' / 'report.html'}" in stdout
    assert f"next     tunesmith chat {out}" in stdout
    assert (out / "eval" / "report.html").is_file()
    from tunesmith.runfolder import RunFolder

    assert RunFolder.open(out).config().max_steps == 24  # --quick


def test_run_with_notes_is_evaluated_and_summed_up_with_notes(monkeypatch, capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    code, stdout, err = run(monkeypatch, capsys, "run", str(_data(tmp_path, QA)), "--model", str(tiny_model_dir),
                            "--out", str(out), "--quick", "--rag", "--threads", "1", "--batch-size", "4",
                            "--max-length", "256")
    assert code == 0, err
    assert "learned  with notes: eval loss" in stdout
    report = json.loads((out / "eval" / "report.json").read_text())
    assert [f["form"] for f in report["forms"]] == ["prompt-only", "RAG", "fine-tuned", "fine-tuned + RAG"]


def test_run_stops_on_invalid_data_before_anything_trains(monkeypatch, capsys, tmp_path, tiny_model_dir):
    bad = _data(tmp_path, [{"prompt": "a"}])
    code, _, err = run(monkeypatch, capsys, "run", str(bad), "--model", str(tiny_model_dir), "--out",
                       str(tmp_path / "run"))
    assert code == 2 and "completion" in err
    assert not (tmp_path / "run").exists()


def test_run_stops_on_a_problems_verdict(monkeypatch, capsys, tmp_path, tiny_model_dir):
    rows = [*QA, {"prompt": "What is my key?", "completion": "It is AKIAIOSFODNN7EXAMPLE, keep it safe."}]
    code, stdout, err = run(monkeypatch, capsys, "run", str(_data(tmp_path, rows)), "--model", str(tiny_model_dir),
                            "--out", str(tmp_path / "run"))
    assert code == 1 and "problem" in stdout and "stopped: fix the problems above" in err
    assert not (tmp_path / "run").exists()
