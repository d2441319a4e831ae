"""Target-task metrics: text overlap between a reply and its reference, and loss on the completions.

- `exact_match` and `token_f1` follow the SQuAD conventions: lower case, punctuation and the articles
  a/an/the removed, whitespace collapsed; F1 over the multiset of words.
- `rouge_l` is ROUGE-L F-measure from Google's `rouge-score` package (its tokenizer keeps only ASCII
  letters and digits, so replies in other scripts score 0: prefer token F1 for them).
- `completion_nll` is the summed negative log-likelihood of the supervised (assistant) tokens, exactly
  the tokens training computes its loss on (`tunesmith.data.tokenize.encode`).
"""

from __future__ import annotations

import re
import string
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
