"""The example datasets: valid, clean, consistent, and exactly what the generator writes."""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest

from tunesmith.data.formats import load_dataset
from tunesmith.data.quality import build_report

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = {"support.jsonl": "prompt_completion", "persona.jsonl": "chat", "sql.jsonl": "chat",
         "glossary.csv": "prompt_completion", "plain_english.json": "alpaca"}


@pytest.mark.parametrize(("name", "fmt"), sorted(FILES.items()))
def test_every_example_is_valid_and_clean(name, fmt, tiny_tokenizer):
    data = load_dataset(EXAMPLES / name)
    assert data.format == fmt
    # The tiny test tokenizer needs ~3x the real one's tokens (sql.jsonl peaks at 399 with smollm2-135m).
    r = build_report(data, tiny_tokenizer, max_length=4096)
    assert (r.exact_duplicates, r.near_duplicates, r.conflicts, r.secrets, r.personal_data) == ([], [], [], [], [])
    assert r.tokens is not None and r.tokens.roundtrip_failures == []
    if r.count >= r.advised_min:
        assert r.verdict.level == "ok", r.verdict


def test_sizes_and_shapes():
    support = load_dataset(EXAMPLES / "support.jsonl").examples
    persona = load_dataset(EXAMPLES / "persona.jsonl").examples
    sql = load_dataset(EXAMPLES / "sql.jsonl").examples
    assert 300 <= len(support) <= 500 and len(persona) >= 150 and len(sql) >= 150
    assert sum(len(e.messages) > 3 for e in persona) >= 30  # multi-turn
    schema = (EXAMPLES / "sql_schema.sql").read_text()
    assert all(e.messages[0]["role"] == "system" and "CREATE TABLE order_items" in e.messages[0]["content"]
               for e in sql)
    assert "CREATE TABLE order_items" in schema


def test_support_answers_are_consistent():
    """The policies a fine-tune should pick up are stated with the same numbers everywhere."""
    replies = [e.messages[-1]["content"] for e in load_dataset(EXAMPLES / "support.jsonl").examples]
    assert all(r.endswith("— Kettlebird Care") for r in replies)
    text = " ".join(replies)
    assert set(re.findall(r"(\d+) days of delivery", text)) <= {"45", "7"}  # returns 45, damage reports 7
    assert set(re.findall(r"over \$(\d+)", text)) == {"39"}
    assert set(re.findall(r"express (?:is|for) \$([\d.]+)", text)) == {"9.50"}
    assert "@" not in text.replace("@kettlebird.example", "")  # only the fictional reserved domain


def test_support_questions_are_reworded_and_answered_by_the_training_data():
    """The held-out questions (docs/rag.md): each asks for facts that several training replies state, and none
    is a copy or a near copy of a training prompt."""
    from tunesmith.data.similarity import jaccard, leakage, normalise, shingles
    from tunesmith.evaluate.metrics import fact_found

    data = load_dataset(EXAMPLES / "support_questions.jsonl")
    questions, train = data.examples, load_dataset(EXAMPLES / "support.jsonl").examples
    assert data.format == "prompt_completion" and len(questions) >= 20 and all(q.facts for q in questions)
    assert leakage(train, questions) == []  # tunesmith's own check: no exact or near-duplicate example
    prompts = [shingles(normalise(e.messages[0]["content"])) for e in train]
    replies = [e.messages[-1]["content"] for e in train]
    for q in questions:
        asked = shingles(normalise(q.messages[0]["content"]))
        assert max(jaccard(asked, p) for p in prompts) < 0.5, q.messages[0]["content"]  # far below 0.85
        for alternatives in q.facts:
            assert fact_found(q.messages[-1]["content"], alternatives), q.messages[-1]["content"]
            assert sum(fact_found(r, alternatives) for r in replies) >= 5, alternatives  # taught, several times


def test_sql_answers_run_against_the_schema():
    db = sqlite3.connect(":memory:")
    db.executescript((EXAMPLES / "sql_schema.sql").read_text())
    for e in load_dataset(EXAMPLES / "sql.jsonl").examples:
        query = e.messages[-1]["content"]
        assert query.startswith("SELECT") and query.endswith(";")
        db.execute(query).fetchall()  # raises on an unknown table or column, or bad syntax


def test_generator_reproduces_the_committed_files(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_examples
    finally:
        sys.path.remove(str(EXAMPLES))
    make_examples.main(tmp_path)
    for name in [*FILES, "support_questions.jsonl"]:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


def test_handbook_documents_hold_every_held_out_fact_and_the_qa_set_none():
    """The documents recipe (docs/documents.md): held-out questions are answerable from the handbook only."""
    from tunesmith.data.similarity import leakage, normalise

    docs = load_dataset(EXAMPLES / "docs" / "handbook")
    qa = load_dataset(EXAMPLES / "docs" / "qa.jsonl")
    held = load_dataset(EXAMPLES / "docs" / "questions.jsonl")
    assert (docs.format, len(docs.examples), qa.format, held.format) == ("text", 12, "sharegpt", "prompt_completion")
    handbook = " ".join(normalise(e.text or "") for e in docs.examples)
    instructions = " ".join(normalise(m["content"]) for e in qa.examples for m in e.messages)
    for e in held.examples:
        fact = normalise(e.messages[-1]["content"])
        assert f" {fact} " in f" {handbook} ", fact
        assert f" {fact} " not in f" {instructions} ", fact
    assert leakage(qa.examples, held.examples) == []
