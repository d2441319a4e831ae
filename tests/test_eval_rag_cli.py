"""`tunesmith eval --rag` end to end on a tiny run: four forms on the same questions, fact recall, and never the
held-out answer among the notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)

TRAIN = [
    ("How long do I have to return a kettle?", "Returns are accepted for 45 days from delivery."),
    ("How often should I descale?", "Descale every 4 weeks in hard water areas."),
    ("What does shipping cost?", "Shipping is free on orders over $39."),
    ("When is live chat open?", "Live chat is open from 8:00 to 20:00."),
]
QUESTIONS = [
    {"prompt": "What's the deadline for returning a kettle?", "completion": "45 days.", "facts": ["45 days"]},
    {"prompt": "Limescale: how often do I remove it?", "completion": "Every 4 weeks.", "facts": ["4 weeks"]},
    {"prompt": "What does shipping cost?", "completion": "Free over $39.", "facts": ["$39"]},  # a training prompt
]


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture(scope="module")
def rag_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A LoRA run with a fresh adapter, its training split, and held-out questions with facts."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.model.loading import load_model

    folder = tmp_path_factory.mktemp("rag-run")
    model = get_peft_model(load_model(str(tiny_model_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(folder / "adapter")
    (folder / "manifest.json").write_text(json.dumps({"method": "lora", "base_model": {"name": str(tiny_model_dir)}}))
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(_chat(q, a)) + "\n" for q, a in TRAIN))
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return folder, questions


def test_four_forms_with_fact_recall_and_no_held_out_answer_retrieved(monkeypatch, capsys, rag_run):
    folder, questions = rag_run
    code, out, err = run(monkeypatch, capsys, "eval", str(folder), "--data", str(questions), "--suite", "none",
                         "--rag", "--rag-notes", "2", "--threads", "1")
    assert code == 0, err
    assert "With and without retrieval" in out and "fact_recall" in out
    report = json.loads((folder / "eval" / "report.json").read_text())
    forms = report["forms"]
    assert [f["form"] for f in forms] == ["prompt-only", "RAG", "fine-tuned", "fine-tuned + RAG"]
    assert all(0 <= f["fact_recall"] <= 1 for f in forms)
    assert forms[0]["eval_loss"] == forms[2]["eval_loss"]  # a fresh adapter changes nothing...
    assert forms[1]["eval_loss"] != forms[0]["eval_loss"]  # ...notes in the prompt do
    r = report["retrieval"]
    assert r["source"] == str(folder / "data" / "train.jsonl") and r["notes"] == 3 and r["excluded_rows"] == 1
    train_file = str(folder / "data" / "train.jsonl")
    assert f"{train_file}:3" not in {s for sources in r["retrieved"] for s in sources}  # the copied question's row
    assert all(len(sources) <= 2 for sources in r["retrieved"])
    rag_prompt = report["target_task_rag"]["per_example"][0]
    assert rag_prompt["prompt"] == QUESTIONS[0]["prompt"] and rag_prompt["facts"] == [["45 days"]]
    md = (folder / "eval" / "report.md").read_text()
    assert "Prompt-only, RAG, fine-tuned, fine-tuned + RAG" in md and "### Facts per question" in md


def test_docs_folder_on_a_model_scored_alone(monkeypatch, capsys, tiny_model_dir, rag_run, tmp_path):
    _, questions = rag_run
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "returns.md").write_text("# Returns\n\nReturns are accepted for 45 days from delivery.\n")
    (docs / "care.txt").write_text("Descale every 4 weeks in hard water areas.\n\nUse citric acid.\n")
    code, _, err = run(monkeypatch, capsys, "eval", str(tiny_model_dir), "--data", str(questions), "--suite",
                       "none", "--docs", str(docs), "--out", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [f["form"] for f in report["forms"]] == ["fine-tuned", "fine-tuned + RAG"]  # no base: its two forms
    assert report["retrieval"]["notes"] == 2 and report["retrieval"]["excluded_rows"] == 0
    assert any(s.endswith("returns.md#1") for s in report["retrieval"]["retrieved"][0])


def test_rag_needs_something_to_retrieve_from(monkeypatch, capsys, tiny_model_dir, rag_run):
    _, questions = rag_run
    code, out, err = run(monkeypatch, capsys, "eval", str(tiny_model_dir), "--data", str(questions), "--rag")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --rag: {tiny_model_dir} is not a run folder with its training split")
    assert "--docs PATH" in err
