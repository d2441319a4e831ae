"""Retrieval-augmented prompts: BM25 over the user's own rows or documents, the hits as notes in the prompt.

The walkthrough's rule is "knowledge in RAG, behaviour in fine-tuning"; this module lets `advise` and `eval`
measure it. Notes come from
- **rows** of a dataset (the training split): each becomes "Q: prompt / A: reply" (its last exchange), so the
  question that retrieves it is matched against both;
- **documents** (`.txt`/`.md`, a folder of them, or any `text`-format data): each is split into passages of
  whole paragraphs, up to `PASSAGE_WORDS` words (a longer paragraph is its own passage).

Search is BM25 (Lucene's variant, k1=1.5, b=0.75) from `bm25s`: small, maintained, numpy-only, fast enough
to index thousands of notes in a second. English stop words are dropped and words are stemmed with the
Snowball English stemmer (PyStemmer), so a reworded question still meets its note ("returning" finds
"returns"). The query is the conversation's last user message.

The prompt: the top `k` notes that fit a token `budget` (best first; a note that does not fit is skipped,
the next, shorter one may) go into one system message before the conversation, after `PREAMBLE`; a system
message the conversation already has follows the notes in the same message. The evaluation never
retrieves the answer it scores: `Retriever.from_rows(..., exclude=held_out)` leaves out every row whose
prompt is a held-out prompt or whose text nearly duplicates a held-out example (`data.similarity.leakage`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.data.formats import Example
from tunesmith.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PASSAGE_WORDS = 120  # a document passage: whole paragraphs up to this many words
K = 3  # notes retrieved per question
BUDGET = 384  # tokens of notes per prompt
GOLDEN_SHARE = 0.8  # RAFT: share of training rows whose own note is among their notes
PREAMBLE = "Answer the user's question using these notes from our knowledge base when they are relevant."

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Note:
    text: str
    source: str  # where it came from: "train.jsonl:12", "docs/returns.md#2"


@dataclass(frozen=True)
class Hit:
    note: Note
    score: float  # BM25 score; higher is more relevant


class Retriever:
    """A BM25 index over notes."""

    def __init__(self, notes: Sequence[Note], *, excluded: int = 0):
        import bm25s

        if not notes:
            raise DataError(["retrieval: no notes to search (the source holds no rows or documents)"])
        self.notes = list(notes)
        self.excluded = excluded  # rows left out because they would give a held-out answer away
        self._index = bm25s.BM25()
        self._index.index(_tokens([n.text for n in self.notes]), show_progress=False)

    @classmethod
    def from_examples(cls, examples: Sequence[Example], *, exclude: Sequence[Example] = ()) -> Retriever:
        """Notes from rows (Q/A) or documents (passages); rows that leak a held-out example are left out."""
        leaked: set[int] = set()
        if exclude and any(ex.messages for ex in examples):
            from tunesmith.data.similarity import leakage

            # leakage(train, evals) finds evals that copy a train example; here the rows play the evals.
            leaked = {leak.eval_index for leak in leakage(exclude, examples)}
        notes = [note for i, ex in enumerate(examples) if i not in leaked for note in notes_of(ex)]
        return cls(notes, excluded=len(leaked))

    def search(self, query: str, k: int = K) -> list[Hit]:
        """The `k` best notes for `query`, best first; notes sharing no word with it are not returned."""
        k = min(k, len(self.notes))
        words = _tokens([query])
        if k == 0 or not words[0]:
            return []
        ids, scores = self._index.retrieve(words, k=k, show_progress=False, n_threads=0)
        return [Hit(self.notes[int(i)], float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


def notes_of(example: Example) -> list[Note]:
    """One Q/A note for a row (its last exchange), or a document's passages."""
    if example.text is not None:
        return [Note(p, f"{example.source}#{i}") for i, p in enumerate(passages(example.text), start=1)]
    messages = example.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    question = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
    return [Note(f"Q: {question.strip()}\nA: {messages[last]['content'].strip()}", example.source)]


def passages(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """Whole paragraphs (blank-line separated) gathered into passages of at most `words` words."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for para in (p.strip() for p in text.split("\n\n")):
        n = len(para.split())
        if not n:
            continue
        if current and size + n > words:
            out.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += n
    if current:
        out.append("\n\n".join(current))
    return out


def augment(messages: Messages, hits: Sequence[Hit], tokenizer: PreTrainedTokenizerBase,
            budget: int = BUDGET) -> tuple[Messages, list[Note]]:
    """`messages` with the hits that fit `budget` tokens as notes in the system message; and those notes."""
    used: list[Note] = []
    spent = 0
    for hit in hits:
        cost = len(tokenizer(hit.note.text, add_special_tokens=False)["input_ids"])
        if spent + cost <= budget:
            used.append(hit.note)
            spent += cost
    if not used:
        return list(messages), []
    notes = "\n\n".join(f"[{i}] {note.text}" for i, note in enumerate(used, start=1))
    system = f"{PREAMBLE}\n\n{notes}"
    rest = list(messages)
    if rest and rest[0]["role"] == "system":
        system = f"{system}\n\n{rest.pop(0)['content']}"
    return [{"role": "system", "content": system}, *rest], used


def question_of(messages: Messages) -> str:
    """The query: the last user message before the reply being scored (or the last one at all)."""
    end = len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else len(messages)
    return next((m["content"] for m in reversed(messages[:end]) if m["role"] == "user"), "")


def with_notes(
    retriever: Retriever, chats: Sequence[Messages], tokenizer: PreTrainedTokenizerBase, *, k: int = K,
    budget: int = BUDGET,
) -> tuple[list[Messages], list[list[str]]]:
    """Each chat with its retrieved notes in the prompt (the reply, if any, unchanged), and the notes' sources."""
    out, sources = [], []
    for chat in chats:
        augmented, used = augment(chat, retriever.search(question_of(chat), k), tokenizer, budget)
        out.append(augmented)
        sources.append([n.source for n in used])
    return out, sources


def answer_with_notes(retriever: Retriever, messages: Messages, tokenizer: PreTrainedTokenizerBase) -> Messages:
    """`messages` with the best notes for their last user message in the system message (a run trained with
    notes, answering: serve, chat, generate)."""
    return augment(messages, retriever.search(question_of(messages)), tokenizer)[0]


def training_notes(
    train: Sequence[Example], evals: Sequence[Example], tokenizer: PreTrainedTokenizerBase, *,
    docs: str | None = None, seed: int = 0, k: int = K, budget: int = BUDGET,
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Retrieval-augmented fine-tuning (RAFT): every chat row with notes in its prompt, as `with_notes` puts them.

    Notes come from `docs`, else from the training rows themselves. From the training split, a row's own note
    (the answer it teaches) is among its notes in GOLDEN_SHARE of the rows, first if the search missed it; in
    the rest only the other hits stay. So the model learns to answer from a note when one holds the answer,
    and from what it knows when none does. Eval rows get what a reworded question would: the k best notes.
    """
    import random

    from tunesmith.data.formats import load_examples

    source = docs or "training split"
    retriever = Retriever.from_examples(load_examples(docs) if docs else train)
    rng = random.Random(seed)
    out_train = []
    for ex in train:
        hits = retriever.search(question_of(ex.messages), k + 1)
        if docs is None:
            own = set(notes_of(ex))
            hits = [h for h in hits if h.note not in own]
            if rng.random() < GOLDEN_SHARE:
                hits = [Hit(note, float("inf")) for note in own] + hits
        out_train.append(_noted(ex, hits[:k], tokenizer, budget))
    out_evals = [_noted(ex, retriever.search(question_of(ex.messages), k), tokenizer, budget) for ex in evals]
    info = {**describe(retriever, source, k, budget), "golden_share": None if docs else GOLDEN_SHARE}
    return out_train, out_evals, info


def _noted(example: Example, hits: Sequence[Hit], tokenizer: PreTrainedTokenizerBase, budget: int) -> Example:
    import dataclasses

    messages, _ = augment(example.messages, hits, tokenizer, budget)
    return dataclasses.replace(example, messages=messages)


def for_run(path: str | Path) -> tuple[Retriever, str] | None:
    """The notes a run trained with `rag` answers with (its training split, or the documents it trained on)
    and where they come from; None for any other folder or run."""
    from tunesmith.data.formats import load_examples
    from tunesmith.errors import RunError
    from tunesmith.runfolder import RunFolder, is_run

    if not is_run(path):
        return None
    run = RunFolder.open(path)
    try:
        config = run.config()
    except RunError:  # a run without its config.yaml: nothing says it trained with notes
        return None
    if not (config.rag or config.rag_docs):
        return None
    source = config.rag_docs or run.data_file("train")
    if source is None:
        raise RunError(f"{path}: trained with notes (--rag) but its training split data/train.jsonl is missing")
    return Retriever.from_examples(load_examples(source)), str(source)


def describe(retriever: Retriever, source: str, k: int, budget: int) -> dict[str, Any]:
    """What a report says about the retrieval: where notes came from, how many, the settings."""
    return {"source": source, "notes": len(retriever.notes), "excluded_rows": retriever.excluded, "k": k,
            "budget_tokens": budget, "library": "bm25s"}


@functools.cache
def _stemmer() -> Any:
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer("english")


def _tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)
