"""Exact and near duplicates, conflicting answers, and train/eval leakage.

Texts are normalised (Unicode NFKC, lower case, punctuation and runs of space collapsed) before comparing.
Near duplicates are found with MinHash LSH (datasketch) over character 5-grams, then confirmed with the
exact Jaccard similarity of the 5-gram sets, so a reported pair really is that similar. System messages
are left out of the compared text: a shared system prompt is by design, not duplication. A document (the
`text` format) is compared whole, and is its own "prompt": only copies of it group with it.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunesmith.data.formats import Example
from tunesmith.data.tools import message_text

NEAR_THRESHOLD = 0.85  # Jaccard similarity of 5-gram sets above which two examples are near duplicates
SHINGLE = 5
NUM_PERM = 128
LSH_MARGIN = 0.2
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, punctuation and whitespace collapsed: 'Hello,  World!' -> 'hello world'."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(ex: Example) -> str:
    """Identity of an example: every message (or the document), verbatim."""
    return json.dumps(ex.content, ensure_ascii=False, sort_keys=True)


def prompt_key(ex: Example) -> str:
    """What the model is asked: every message before the last reply (system included), normalised."""
    if ex.text is not None:
        return "text\x1f" + normalise(ex.text)
    return "\x1e".join(f"{m['role']}\x1f{normalise(message_text(m))}" for m in ex.messages[:-1])


def compared_text(ex: Example) -> str:
    """The normalised text near-duplicate detection compares (system messages left out)."""
    if ex.text is not None:
        return normalise(ex.text)
    return " ".join(normalise(message_text(m)) for m in ex.messages if m["role"] != "system")


def exact_duplicates(examples: Sequence[Example]) -> list[list[int]]:
    """Groups (indices, first occurrence first) of examples identical message for message."""
    return [g for g in _groups_by(exact_key, examples) if len(g) > 1]


def conflicts(examples: Sequence[Example]) -> list[list[int]]:
    """Groups of examples with the same prompt but different final replies (after normalising)."""
    replies: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for i, ex in enumerate(examples):
        if ex.messages:  # a document has no reply to conflict
            replies[prompt_key(ex)].setdefault(normalise(message_text(ex.messages[-1])), []).append(i)
    return [sorted(i for g in by_reply.values() for i in g) for by_reply in replies.values()
            if len(by_reply) > 1]


@dataclass
class _Index:
    """A MinHash LSH index over examples' shingle sets."""

    shingles: list[set[str]]
    lsh: object


def shingles(text: str) -> set[str]:
    if len(text) <= SHINGLE:
        return {text}
    return {text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@functools.cache
def _template():  # -> datasketch.MinHash
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=1)  # drawing the permutations is most of a MinHash's cost


def _minhash(sh: set[str]):  # -> datasketch.MinHash
    from datasketch import MinHash

    t = _template()
    m = MinHash(num_perm=NUM_PERM, seed=1, permutations=t.permutations, scheme=t.scheme)
    m.update_batch(s.encode("utf-8") for s in sorted(sh))
    return m


def _index(examples: Sequence[Example], threshold: float) -> tuple[_Index, list]:
    from datasketch import MinHashLSH

    sets = [shingles(compared_text(ex)) for ex in examples]
    hashes = [_minhash(s) for s in sets]
    # LSH only proposes candidates; a lower bar than `threshold` keeps it from missing pairs just above it
    # (its recall near the threshold is poor), and the exact Jaccard check then decides.
    lsh = MinHashLSH(threshold=max(0.3, threshold - LSH_MARGIN), num_perm=NUM_PERM)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
    return _Index(sets, lsh), hashes


def near_duplicates(examples: Sequence[Example], threshold: float = NEAR_THRESHOLD) -> list[list[int]]:
    """Groups of examples whose texts are near duplicates of one another (exact copies excluded).

    Only the first of each exact-duplicate group takes part, so a copy is counted once, as exact.
    """
    firsts = sorted({g[0] for g in _groups_by(exact_key, examples)})
    subset = [examples[i] for i in firsts]
    index, hashes = _index(subset, threshold)
    parent = list(range(len(subset)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, h in enumerate(hashes):
        for j in index.lsh.query(h):  # type: ignore[attr-defined]
            if j != i and jaccard(index.shingles[i], index.shingles[j]) >= threshold:
                parent[root(max(i, j))] = root(min(i, j))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(subset)):
        groups[root(i)].append(firsts[i])
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _groups_by(key: Callable[[Example], str], examples: Sequence[Example]) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[key(ex)].append(i)
    return list(groups.values())


@dataclass(frozen=True)
class Leak:
    """An eval example that the training set already contains (exactly or nearly)."""

    eval_index: int
    train_index: int
    kind: str  # "exact" (same prompt) or "near" (near-duplicate text)
    similarity: float


def leakage(
    train: Sequence[Example], evals: Sequence[Example], threshold: float = NEAR_THRESHOLD
) -> list[Leak]:
    """Eval examples whose prompt appears in train (exact), or whose text nearly duplicates a train one."""
    by_prompt: dict[str, int] = {}
    for i, ex in enumerate(train):
        by_prompt.setdefault(prompt_key(ex), i)
    leaks: list[Leak] = []
    index, _ = _index(train, threshold)
    for e, ex in enumerate(evals):
        if (t := by_prompt.get(prompt_key(ex))) is not None:
            leaks.append(Leak(e, t, "exact", 1.0))
            continue
        sh = shingles(compared_text(ex))
        candidates = index.lsh.query(_minhash(sh))  # type: ignore[attr-defined]
        scored = sorted((-jaccard(sh, index.shingles[j]), j) for j in candidates)
        if scored and -scored[0][0] >= threshold:
            leaks.append(Leak(e, scored[0][1], "near", round(-scored[0][0], 3)))
    return leaks
