"""`tunesmith advise` end to end: flags for scripts, questions for people, evidence and baseline from data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run
from tunesmith.advise import QUESTIONS


def _persona(tmp_path: Path) -> Path:
    rows = [{"prompt": f"What is {i} plus {i + 2}?", "completion": f"Arr matey, ye ask: it be {2 * i + 2}, savvy?"}
            for i in range(30)]
    path = tmp_path / "persona.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("flags", "headline"),
    [
        (["--knowledge-changes"], "Recommendation: RAG"),
        (["--style"], "Recommendation: FINE-TUNE with LoRA"),
        (["--new-skill", "--no-style"], "Recommendation: FINE-TUNE with LoRA"),
        (["--in-input", "--no-style", "--no-new-skill", "--no-knowledge-changes"], "Recommendation: PROMPTING"),
        (["--knowledge-changes", "--style"], "Recommendation: RAG + FINE-TUNE with LoRA"),
    ],
)
def test_flags_decide_without_questions(monkeypatch, capsys, flags: list[str], headline: str) -> None:
    code, out, err = run(monkeypatch, capsys, "advise", *flags)
    assert code == 0, err
    assert out.splitlines()[0] == headline and err == ""  # a pipe is no person: nothing is asked


def test_json_with_data_evidence(monkeypatch, capsys, tmp_path) -> None:
    code, out, _ = run(monkeypatch, capsys, "advise", "--data", str(_persona(tmp_path)), "--json")
    advice = json.loads(out)
    assert code == 0 and advice["choice"] == "fine-tune" and advice["method"] == "lora"
    assert advice["answers"]["style"] is True and advice["evidence"]["styled_share"] == 1.0
    assert "(from the data: 100% of completions use markers their prompts lack" in advice["reasons"][0]


def test_a_person_is_asked_the_open_questions(monkeypatch, capsys, tmp_path) -> None:
    asked: list[tuple[str, bool]] = []

    def confirm(question: str, default: bool, err: bool) -> bool:
        asked.append((question, default))
        return question == QUESTIONS["new_skill"]

    monkeypatch.setattr("tunesmith.cli.plan.interactive", lambda: True)
    monkeypatch.setattr("typer.confirm", confirm)
    code, out, _ = run(monkeypatch, capsys, "advise", "--data", str(_persona(tmp_path)), "--no-in-input")
    assert code == 0
    # in_input was given as a flag; the data's suggestion (style) is offered as the default answer
    assert asked == [(QUESTIONS["knowledge_changes"], False), (QUESTIONS["style"], True),
                     (QUESTIONS["new_skill"], False)]
    assert out.startswith("Recommendation: FINE-TUNE with LoRA")
    assert "a new, complex skill" in out and "teaching a style" not in out  # the person said no to style


def test_baseline_needs_data(monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "advise", "--baseline")
    assert code == 2
    assert err.strip() == ("error: --baseline needs --data FILE: the few-shot prompt and the eval examples come "
                           "from it")


def test_baseline_on_the_tiny_model(monkeypatch, capsys, tmp_path, tiny_model_dir) -> None:
    code, out, err = run(monkeypatch, capsys, "advise", "--data", str(_persona(tmp_path)), "--baseline", "--model",
                         str(tiny_model_dir), "--shots", "1", "--limit", "3")
    assert code == 0, err
    assert f"Prompt-only baseline ({tiny_model_dir}, 1-shot, 3 held-out examples): token F1" in out
    assert "fine-tuning has room to help" in out  # a random tiny model is no pirate


def test_rag_baseline_on_held_out_questions_with_facts(monkeypatch, capsys, tmp_path, tiny_model_dir) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"prompt": "What is 2 plus 2?", "completion": "Arr, 4.", "facts": ["4"]}) + "\n")
    code, out, err = run(monkeypatch, capsys, "advise", "--data", str(_persona(tmp_path)), "--rag", "--eval",
                         str(questions), "--model", str(tiny_model_dir), "--shots", "1", "--json")
    assert code == 0, err
    advice = json.loads(out)
    plain, rag = advice["baseline"], advice["rag_baseline"]
    assert (plain["examples"], rag["examples"]) == (1, 1) and rag["notes"] == "the training rows"
    assert plain["fact_recall"] in (0.0, 1.0) and rag["fact_recall"] in (0.0, 1.0)
    assert any(r.startswith(("retrieval helps", "retrieval adds little")) for r in advice["reasons"])
