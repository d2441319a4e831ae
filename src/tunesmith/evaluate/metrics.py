"""Target-task metrics: text overlap between a reply and its reference, and loss on the completions.

- `exact_match` and `token_f1` follow the SQuAD conventions: lower case, punctuation and the articles
  a/an/the removed, whitespace collapsed; F1 over the multiset of words.
- `rouge_l` is ROUGE-L F-measure from Google's `rouge-score` package (its tokenizer keeps only ASCII
  letters and digits, so replies in other scripts score 0: prefer token F1 for them).
- `fact_recall` is 1 when a reply states every fact its question asks for (`Example.facts`), else 0. Reply
  and fact are compared as word sequences after `fact_words`: lower case, punctuation and currency signs
  dropped (numbers keep their inner `.`, `:` and `,`: "9.50", "8:00"), number words up to ninety-nine as
  digits ("forty-five" -> "45"), "%" and "per cent" as "percent", a plural "s" dropped ("45-day" states
  "45 days"); each fact may list alternatives, any one of which counts.
- `completion_nll` is the summed negative log-likelihood of the supervised (assistant) tokens, exactly
  the tokens training computes its loss on (`tunesmith.data.tokenize.encode`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tunesmith.data.tokenize import IGNORE, Message, Tools, encode
from tunesmith.model.loading import pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall after normalisation (1.0 when both are empty)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


_NUMBER_WORDS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"))}
_TENS = {w: 10 * i for i, w in enumerate(("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                                          "ninety"), start=2)}
_FACT_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*|[^\W\d_]+")


def fact_words(text: str) -> list[str]:
    """Words a fact is matched on: 'Forty-five Days, $9.50 (15 per cent)' -> ['45', 'day', '9.5', '15', 'percent']."""
    text = unicodedata.normalize("NFKC", text).lower().replace("%", " percent ").replace("per cent", "percent")
    words: list[str] = []
    tens = False  # the previous word was a tens word ("forty"), which a units word may complete
    for w in _FACT_TOKEN.findall(text):
        was_tens, tens = tens, w in _TENS
        if w[0].isdigit():
            w = w.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", w) else w
            w = w.rstrip("0").rstrip(".") if re.fullmatch(r"\d+\.\d+", w) else w  # 9.50 = 9.5, 2.0 = 2
        elif w in _NUMBER_WORDS or w in _TENS:
            value = _NUMBER_WORDS.get(w, _TENS.get(w, 0))
            if was_tens and 0 < value < 10:
                value += int(words.pop())  # forty five -> 45
            w = str(value)
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return words


def fact_found(reply: str, alternatives: Sequence[str]) -> bool:
    """Whether `reply` states the fact: one of its alternatives, as a run of whole words (see `fact_words`)."""
    said = f" {' '.join(fact_words(reply))} "
    return any(f" {' '.join(fact_words(a))} " in said for a in alternatives if fact_words(a))


def fact_recall(reply: str, facts: Sequence[Sequence[str]]) -> float:
    """1.0 when the reply states every fact (each a list of alternatives), else 0.0."""
    return float(bool(facts) and all(fact_found(reply, alternatives) for alternatives in facts))


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


def completion_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Sequence[Message]],
    max_length: int | None = None,
    tools: Sequence[Tools] | None = None,
) -> list[tuple[float, int]]:
    """(summed NLL, supervised tokens) per example, on the labels training uses (`tools`: each example's)."""
    from tunesmith.evaluate.scoring import score_tails

    seqs, masks = [], []
    for k, messages in enumerate(examples):
        enc = encode(tokenizer, messages, max_length, tools=tools[k] if tools else None)
        first = next((i for i, x in enumerate(enc.labels) if x != IGNORE), len(enc.labels))
        n = max(1, len(enc.input_ids) - max(first, 1))  # the first token has no prediction
        seqs.append((enc.input_ids, n))
        masks.append([x != IGNORE for x in enc.labels[len(enc.labels) - n :]])
    pad = pad_token_id(tokenizer)
    out = []
    for scored, mask in zip(score_tails(model, seqs, int(pad or 0)), masks, strict=True):
        picked = [lp for lp, keep in zip(scored.logprobs, mask, strict=True) if keep]
        out.append((-sum(picked), len(picked)))
    return out
