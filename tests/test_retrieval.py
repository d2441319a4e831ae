"""Retrieval for RAG baselines: BM25 finds the relevant note, notes fit their token budget, and a held-out
example's own row is never among the notes."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import Example
from tunesmith.errors import DataError
from tunesmith.retrieval import Retriever, augment, notes_of, passages, question_of, with_notes


def _row(q: str, a: str, source: str = "train.jsonl:1") -> Example:
    return Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], source=source)


ROWS = [
    _row("How long do I have to return a kettle?", "Returns are accepted for 45 days from delivery.", "t:1"),
    _row("How often should I descale?", "Descale every 4 weeks in hard water areas.", "t:2"),
    _row("What does shipping cost?", "Shipping is free on orders over $39.", "t:3"),
    _row("When is live chat open?", "Live chat is open Monday to Saturday, 8:00 to 20:00.", "t:4"),
]


class WordTokenizer:
    """One token per word: budgets in these tests count words."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_the_relevant_note_ranks_first_and_unrelated_queries_find_nothing() -> None:
    r = Retriever.from_examples(ROWS)
    assert r.search("limescale: how often do I need to descale the kettle?", 2)[0].note.source == "t:2"
    assert r.search("return window for my kettle", 1)[0].note.text.startswith("Q: How long do I have to return")
    assert r.search("the and of it") == []  # only stop words
    assert r.search("zebra quantum") == []  # no shared word: no note, rather than an arbitrary one
    assert len(r.search("kettle return descale shipping chat", 10)) <= len(ROWS)


def test_a_held_out_rows_copy_is_never_a_note() -> None:
    """The evaluation must not retrieve the answer it scores: exact and near copies are left out."""
    held = [_row("How often should I descale?", "Every 4 weeks.", "eval:1")]
    near = _row("How long do I have to return a kettle??", "Returns are accepted for 45 days from delivery!", "t:5")
    r = Retriever.from_examples([*ROWS, near], exclude=[held[0], ROWS[0]])
    sources = {n.source for n in r.notes}
    assert sources == {"t:3", "t:4"} and r.excluded == 3  # t:2 (same prompt), t:1 and its near copy t:5
    assert all(h.note.source != "t:2" for h in r.search("How often should I descale?", 4))


def test_documents_become_passages_of_whole_paragraphs() -> None:
    text = "\n\n".join(f"Paragraph {i} " + "word " * 50 for i in range(5)) + "\n\n" + "long " * 300
    parts = passages(text, words=120)
    assert "\n\n".join(parts).split() == text.split()  # nothing lost, order kept
    assert all(len(p.split()) <= 120 or "\n\n" not in p for p in parts)  # only a lone paragraph may be longer
    doc = Example(messages=[], source="docs/a.md", text=text)
    assert [n.source for n in notes_of(doc)] == [f"docs/a.md#{i}" for i in range(1, len(parts) + 1)]
    r = Retriever.from_examples([doc], exclude=[ROWS[0]])  # documents are never excluded
    assert r.excluded == 0 and len(r.notes) == len(parts)


def test_notes_go_into_a_system_message_within_the_budget() -> None:
    r = Retriever.from_examples(ROWS)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How often should I descale?"}]
    hits = r.search(question_of(chat), 4)
    out, used = augment(chat, hits, WordTokenizer(), budget=20)
    assert out[0]["role"] == "system" and out[1:] == chat[1:]
    assert out[0]["content"].endswith("Be brief.") and "[1] Q: How often should I descale?" in out[0]["content"]
    assert sum(len(n.text.split()) for n in used) <= 20 and used[0].source == "t:2"
    assert augment(chat, hits, WordTokenizer(), budget=3) == (chat, [])  # nothing fits: the prompt is unchanged


def test_a_note_too_long_for_the_budget_is_skipped_for_a_shorter_one() -> None:
    long_row = _row("How often should I descale? " * 3, "Descale often. " * 40, "t:long")
    r = Retriever.from_examples([long_row, ROWS[1]])
    hits = r.search("How often should I descale?", 2)
    assert [h.note.source for h in hits] == ["t:long", "t:2"]
    _, used = augment([{"role": "user", "content": "How often should I descale?"}], hits, WordTokenizer(), budget=30)
    assert [n.source for n in used] == ["t:2"]


def test_with_notes_keeps_the_reference_reply_and_names_the_sources() -> None:
    r = Retriever.from_examples(ROWS)
    chats = [[{"role": "user", "content": "Is shipping free?"}, {"role": "assistant", "content": "Over $39."}]]
    out, sources = with_notes(r, chats, WordTokenizer(), k=1, budget=100)
    assert out[0][-1] == chats[0][-1] and out[0][0]["role"] == "system" and sources == [["t:3"]]


def test_nothing_to_retrieve_from_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no notes to search"):
        Retriever([])


def _system(ex: Example) -> str:
    return ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else ""


def test_training_notes_keep_a_rows_own_note_in_most_rows_and_the_replies_unchanged() -> None:
    """RAFT: the own note (the answer the row teaches) is among a row's notes in about GOLDEN_SHARE of the rows,
    never in the rest; eval rows get the k best notes; the reply and the user turn are the row's own."""
    from tunesmith.retrieval import GOLDEN_SHARE, training_notes

    rows = [_row(f"How long is the warranty on kettle model {i}?", f"Model {i} has a {i + 1}-year warranty.",
                 f"t:{i}") for i in range(200)]
    held = [_row("What is the warranty on kettle model 7?", "Two years.", "eval:1")]
    train, evals, info = training_notes(rows, held, WordTokenizer(), seed=3, k=2, budget=1000)
    own = [f"A: {row.messages[1]['content']}" in _system(ex) for row, ex in zip(rows, train, strict=True)]
    assert abs(sum(own) / len(own) - GOLDEN_SHARE) < 0.08
    assert all(ex.messages[1:] == row.messages for row, ex in zip(rows, train, strict=True))
    assert all("[2] Q:" in _system(ex) and "[3]" not in _system(ex) for ex in train)  # k notes each
    assert "Model 7 has a 8-year warranty" in _system(evals[0]) and evals[0].messages[1:] == held[0].messages
    assert info["golden_share"] == GOLDEN_SHARE and info["source"] == "training split" and info["k"] == 2
    again, _, _ = training_notes(rows, held, WordTokenizer(), seed=3, k=2, budget=1000)
    assert [ex.messages for ex in again] == [ex.messages for ex in train]  # seeded
    other, _, _ = training_notes(rows, held, WordTokenizer(), seed=4, k=2, budget=1000)
    assert [ex.messages for ex in other] != [ex.messages for ex in train]


def test_training_notes_from_documents_have_no_own_note(tmp_path) -> None:
    from tunesmith.retrieval import training_notes

    (tmp_path / "policy.md").write_text("Returns are accepted for 45 days from delivery.\n\n"
                                        "Descale every 4 weeks in hard water areas.\n")
    train, _, info = training_notes(ROWS[:2], [], WordTokenizer(), docs=str(tmp_path), k=1)
    assert info["golden_share"] is None and info["source"] == str(tmp_path)
    assert "45 days" in _system(train[0]) and "Q:" not in _system(train[0])
