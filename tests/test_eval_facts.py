"""Fact recall: questions carry the facts a right reply states, replies are matched after normalisation,
and base vs tuned get a paired interval like every other target metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import load_examples
from tunesmith.errors import DataError
from tunesmith.evaluate.metrics import fact_found, fact_recall, fact_words
from tunesmith.evaluate.target import TargetScores, compare_target, load_target_facts


def _jsonl(tmp_path: Path, rows: list, name: str = "q.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the file: a `facts` key next to the prompt and reply ------------------------------------------------------


def test_facts_are_read_as_metadata_in_every_chat_format(tmp_path) -> None:
    rows = [
        {"prompt": "Return window?", "completion": "45 days.", "facts": ["45 days"]},
        {"prompt": "Descaler?", "completion": "Citric acid.", "facts": [["citric acid", "ClearFlow"], "MAX"]},
        {"prompt": "Hours?", "completion": "8 to 8.", "facts": "8:00"},  # one fact as a plain string
        {"prompt": "Hello", "completion": "Hi!"},  # no facts: fine
    ]
    examples = load_examples(_jsonl(tmp_path, rows))
    assert [e.facts for e in examples] == [(("45 days",),), (("citric acid", "ClearFlow"), ("MAX",)), (("8:00",),), ()]
    assert examples[0].messages[-1] == {"role": "assistant", "content": "45 days."}  # facts stay out of the chat
    chat = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "facts": ["A"]}
    alpaca = {"instruction": "Q", "output": "A", "facts": ["A"]}
    assert load_examples(_jsonl(tmp_path, [chat], "c.jsonl"))[0].facts == (("A",),)
    assert load_examples(_jsonl(tmp_path, [alpaca], "a.jsonl"))[0].facts == (("A",),)
    assert load_target_facts(str(_jsonl(tmp_path, rows)), 2) == [
        (("45 days",),), (("citric acid", "ClearFlow"), ("MAX",))]
    assert load_target_facts(str(_jsonl(tmp_path, [rows[3]], "none.jsonl")), 10) is None


def test_facts_in_a_parquet_column_with_empty_cells(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["a?", "b?"], "completion": ["A", "B"], "facts": [["A"], None]})
    pq.write_table(table, tmp_path / "q.parquet")
    assert [e.facts for e in load_examples(tmp_path / "q.parquet")] == [(("A",),), ()]


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        (42, "q.jsonl:1: facts: expected a list of facts (strings, or lists of alternatives), got number"),
        ([], "q.jsonl:1: facts: expected a list of facts (strings, or lists of alternatives), got an empty list"),
        (["45 days", ""], 'q.jsonl:1: facts[1]: expected a non-empty string or a list of them (alternatives), got ""'),
        ([["a", 3]], 'q.jsonl:1: facts[0]: expected a non-empty string or a list of them (alternatives), got ["a", 3]'),
    ],
)
def test_bad_facts_name_the_line_and_field(tmp_path, facts, problem) -> None:
    path = _jsonl(tmp_path, [{"prompt": "Q?", "completion": "A", "facts": facts}])
    with pytest.raises(DataError) as e:
        load_examples(path)
    assert e.value.problems == [f"{tmp_path}/{problem}"]


def test_a_document_cannot_carry_facts(tmp_path) -> None:
    with pytest.raises(DataError) as e:
        load_examples(_jsonl(tmp_path, [{"text": "The return window is 45 days.", "facts": ["45 days"]}]))
    assert "facts: unexpected key" in e.value.problems[0]


# --- matching -------------------------------------------------------------------------------------------------


def test_fact_words_normalise_case_punctuation_numbers_and_plurals() -> None:
    assert fact_words("Forty-five Days, $9.50 (15 per cent)") == ["45", "day", "9.5", "15", "percent"]
    assert fact_words("Open 8:00–20:00; 1,000 kettles; 2.0 L; 15%") == [
        "open", "8:00", "20:00", "1000", "kettle", "2", "l", "15", "percent"]
    assert fact_words("twenty, thirty-one, NINETY nine, business") == ["20", "31", "99", "business"]


@pytest.mark.parametrize(
    ("reply", "fact", "found"),
    [
        ("You can return it within 45 days of delivery.", ["45 days"], True),
        ("We have a 45-day return window.", ["45 days"], True),  # hyphen and singular
        ("You have forty-five days.", ["45 days"], True),  # number words
        ("Returns within 2 weeks.", ["45 days"], False),
        ("Within 345 days.", ["45 days"], False),  # whole words only
        ("Within 45 business days.", ["45 days"], False),  # a run of words, not scattered ones
        ("Use citric acid.", ["ClearFlow", "citric acid"], True),  # any alternative
        ("Express is $9.50.", ["$9.5"], True),
        ("Students get 15 percent off.", ["15%"], True),
        ("", ["45 days"], False),
    ],
)
def test_fact_found(reply: str, fact: list[str], found: bool) -> None:
    assert fact_found(reply, fact) is found


def test_a_question_is_right_only_when_every_fact_is_stated() -> None:
    facts = (("8:00",), ("20:00",))
    assert fact_recall("Chat is open 8:00–20:00 CET.", facts) == 1.0
    assert fact_recall("Chat opens at 8:00.", facts) == 0.0
    assert fact_recall("anything", ()) == 0.0  # no facts: not counted as right (and weighted out, below)


# --- the metric in the target-task comparison --------------------------------------------------------------


def _scores(replies: list[str]) -> TargetScores:
    return TargetScores(nll=[(1.0, 1)] * len(replies), replies=replies)


def test_fact_recall_base_vs_tuned_with_a_paired_interval() -> None:
    examples = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "ref"}] for i in range(5)]
    facts = [(("45 days",),), (("2 years",),), (("$39",),), (("80",),), ()]  # the last one has no facts
    base = _scores(["within 2 weeks", "1 year", "over $39", "100 °C", "whatever"])
    tuned = _scores(["45 days", "2 years", "over $50", "80 °C", "45 days"])
    result = compare_target(examples, base, tuned, facts=facts)
    row = next(m for m in result["metrics"] if m["name"] == "fact_recall")
    assert (row["base"], row["tuned"]) == (0.25, 0.75)  # out of the 4 questions with facts
    assert row["delta"] == pytest.approx(0.5) and row["ci"][0] <= 0.5 <= row["ci"][1] and row["higher_is_better"]
    per = result["per_example"]
    assert [(r["fact_base"], r["fact_tuned"]) for r in per] == [(0, 1), (0, 1), (1, 0), (0, 1), (None, None)]
    assert per[0]["facts"] == [["45 days"]] and per[4]["facts"] == []


def test_without_facts_there_is_no_fact_recall_row() -> None:
    examples = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "ref"}]]
    result = compare_target(examples, None, _scores(["ref"]))
    assert "fact_recall" not in {m["name"] for m in result["metrics"]} and "facts" not in result["per_example"][0]


def test_facts_survive_the_record_a_run_folder_writes(tmp_path):
    """A run's eval split is written with `Example.record()`; `eval RUN` must still find the facts there."""
    rows = [{"prompt": "Return window?", "completion": "45 days.", "facts": ["45 days", ["citric acid", "ClearFlow"]]},
            {"prompt": "Hi", "completion": "Hello."}]
    examples = load_examples(_jsonl(tmp_path, rows))
    written = _jsonl(tmp_path, [e.record() for e in examples], "eval.jsonl")
    assert "facts" not in examples[1].record()
    assert [e.facts for e in load_examples(written)] == [(("45 days",), ("citric acid", "ClearFlow")), ()]
