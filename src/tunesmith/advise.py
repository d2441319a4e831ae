"""Whether to fine-tune at all: the walkthrough's decision table as rules, evidence from the data, a baseline.

| Scenario                                            | Choice             | Why                                    |
| :-------------------------------------------------- | :----------------- | :------------------------------------- |
| Answering questions about today's company documents | RAG                | the knowledge is external and changes  |
| A chatbot with a persona (a sarcastic pirate)       | fine-tune          | a style is part of core behaviour      |
| SQL queries for your company's database schema      | fine-tune          | a new, complex skill                   |
| Summarising a provided legal document               | prompting (or RAG) | everything needed is in the input      |

The user's answers win; a question left open is answered from the dataset when it shows clear evidence
(`evidence_from`), else taken as "no". Fine-tuning means LoRA unless said otherwise: a small adapter, modest
hardware, usually as good as full fine-tuning. Two baselines show what the base model does without any
training (`baselines`): prompt-only (a few training examples in its prompt) and RAG (the same prompt with
notes retrieved from the training rows or documents, `tunesmith.retrieval`), on the same held-out questions.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunesmith.data.formats import Example

Choice = Literal["rag", "fine-tune", "rag+fine-tune", "prompting"]

QUESTIONS = {
    "knowledge_changes": "Does the model need external, proprietary or frequently changing knowledge "
                         "(today's documents, prices, policies)?",
    "style": "Is the goal a style, tone or persona the model should always have (e.g. a sarcastic pirate)?",
    "new_skill": "Is it a new, complex skill that is hard to describe in a prompt (e.g. SQL for your schema)?",
    "in_input": "Is everything the model needs already in its input (e.g. summarise the document given)?",
}

# Evidence thresholds, set on the example datasets (support, persona, text-to-SQL, plain English, glossary).
FACTS_PER_COMPLETION = 2.0  # facts (numbers, names, links) absent from the prompt, per completion
MARKER_SHARE = 0.2  # a style marker appears in this share of completions...
MARKER_PROMPT_SHARE = 0.02  # ...and in at most this share of prompts
STYLED_SHARE = 0.5  # style: this share of completions carries a marker
STRUCTURED_SHARE = 0.5  # new skill: this share of completions is SQL, JSON or code
COVERAGE = 0.5  # in the input: this share of completion words comes from the prompt...
PROMPT_RATIO = 2.0  # ...and prompts are this many times longer than completions
GOOD_BASELINE = 0.8  # token F1 at which a few-shot prompt is deemed to do the job
RAG_HELPS = 0.05  # token F1 or fact recall gained with retrieved notes that counts as retrieval helping

_STOPWORDS = """
a an the and or but if then else of to in on at by for with from as is are was were be been being it its
this that these those there here i you he she we they me my your our their his her them us do does did
done have has had not no yes so than too very can could will would should may might must just also only
into out up down over under about after before again more most some any all each other such own same what
which who whom whose when where why how am don't doesn't isn't aren't i'm you're it's that's let's
"""
STOPWORDS = frozenset(_STOPWORDS.split())
_WORD = re.compile(r"[a-z0-9][a-z0-9'_.-]*[a-z0-9]|[a-z0-9]")
_FACT = re.compile(
    r"\$?\d[\d,.:/%-]*\w*"  # numbers, prices, dates, times
    r"|[\w.+-]+@[\w-]+\.[\w.]+"  # e-mail addresses
    r"|\b[\w-]+\.[a-z]{2,}(?:/\S*)?"  # domains and links
    r"|(?<=[a-z,;] )[A-Z][\w-]+"  # capitalised names inside a sentence
)
_STRUCTURED = {
    "SQL": re.compile(r"^\s*(select|with|insert|update|delete)\b.*\b(from|into|set)\b", re.I | re.S),
    "code": re.compile(r"```|^\s*(def|class|function|import|#include)\b", re.M),
}


@dataclass(frozen=True)
class Answers:
    """The decision table's questions; None = not answered."""

    knowledge_changes: bool | None = None
    style: bool | None = None
    new_skill: bool | None = None
    in_input: bool | None = None


@dataclass(frozen=True)
class Evidence:
    """What a dataset shows about the questions (heuristic: the user's answers win)."""

    examples: int
    facts_per_completion: float  # numbers, names, links in a completion that its prompt lacks
    fact_samples: list[str]
    style_markers: list[str]  # words common in completions and (almost) absent from prompts
    styled_share: float  # completions carrying a style marker
    structured: str | None  # "SQL", "JSON" or "code" when most completions are
    structured_share: float
    coverage: float  # mean share of a completion's content words found in its prompt
    prompt_words: float  # median content words per prompt
    completion_words: float  # median content words per completion

    def suggests(self) -> Answers:
        structured = self.structured is not None
        return Answers(
            knowledge_changes=not structured and self.facts_per_completion >= FACTS_PER_COMPLETION,
            style=not structured and self.styled_share >= STYLED_SHARE,
            new_skill=structured,
            in_input=(not structured and self.coverage >= COVERAGE
                      and self.prompt_words >= PROMPT_RATIO * self.completion_words),
        )


@dataclass(frozen=True)
class Baseline:
    """The base model answering the eval split with a few training examples in its prompt."""

    model: str
    shots: int
    examples: int
    exact_match: float
    token_f1: float
    rouge_l: float
    samples: list[dict[str, str]]  # a few prompts, replies and references to look at
    shot_prompts: list[str]  # the training examples shown in the prompt (never from the eval split)
    fact_recall: float | None = None  # share of held-out questions with `facts` whose reply states them all
    notes: str | None = None  # RAG: where the retrieved notes came from (None: prompt-only)


@dataclass(frozen=True)
class Advice:
    choice: Choice
    method: Literal["lora", "full"] | None
    reasons: list[str]
    answers: Answers  # as decided on: the user's, else the data's
    evidence: Evidence | None = None
    baseline: Baseline | None = None
    rag_baseline: Baseline | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(answers: Answers, evidence: Evidence | None = None, baseline: Baseline | None = None,
           rag_baseline: Baseline | None = None) -> Advice:
    """Apply the decision table: knowledge -> RAG; style or skill -> fine-tune (LoRA); else prompting.

    The baselines weigh in: a prompt that already does the job drops fine-tuning, and so does a RAG prompt
    that does; what retrieval adds over the plain prompt is stated either way."""
    a, why = _merge(answers, evidence)
    reasons: list[str] = []
    if a.knowledge_changes:
        reasons.append("RAG: the knowledge is external" + (why["knowledge_changes"] or " and changes")
                       + "; retrieve it into the prompt at question time rather than train it into weights "
                       "that must be retrained at every change")
    if a.style:
        reasons.append("fine-tune: you are teaching a style, which is part of the model's core behaviour"
                       + why["style"])
    if a.new_skill:
        reasons.append("fine-tune: a new, complex skill the model must learn from examples" + why["new_skill"])
    tune = bool(a.style or a.new_skill)
    if a.in_input and not tune:
        reasons.append("prompting: the knowledge is contained in the input; the model just has to act on it"
                       + why["in_input"])
    choice: Choice = ("rag+fine-tune" if a.knowledge_changes and tune else "rag" if a.knowledge_changes
                      else "fine-tune" if tune else "prompting")
    if choice == "prompting" and not a.in_input:
        reasons.append("prompting: nothing calls for changing the weights; start with instructions and a few "
                       "examples in the prompt")
    if baseline is not None and tune:
        choice = _weigh_baseline(choice, baseline, reasons)
    if rag_baseline is not None:
        choice = _weigh_rag(choice, baseline, rag_baseline, reasons)
    method: Literal["lora"] | None = None
    if "fine-tune" in choice:
        method = "lora"
        reasons.append("LoRA: a small adapter (megabytes, not a full model copy) trained on modest hardware, "
                       "usually as good as full fine-tuning; `tunesmith plan` costs both")
    return Advice(choice, method, reasons, a, evidence, baseline, rag_baseline)


def _merge(answers: Answers, evidence: Evidence | None) -> tuple[Answers, dict[str, str]]:
    """The user's answer, else the data's suggestion, else False; and where each came from."""
    suggested = evidence.suggests() if evidence else Answers()
    merged, why = {}, {}
    for name in QUESTIONS:
        given, data = getattr(answers, name), getattr(suggested, name)
        merged[name] = bool(given if given is not None else data)
        why[name] = "" if given is not None or not data or evidence is None else _because(name, evidence)
    return Answers(**merged), why


def _because(name: str, e: Evidence) -> str:
    if name == "knowledge_changes":
        return (f" (from the data: each completion states {e.facts_per_completion:.1f} facts its prompt "
                f"lacks, e.g. {', '.join(repr(f) for f in e.fact_samples[:3])})")
    if name == "style":
        return (f" (from the data: {e.styled_share:.0%} of completions use markers their prompts lack: "
                f"{', '.join(e.style_markers[:5])})")
    if name == "new_skill":
        return f" (from the data: {e.structured_share:.0%} of completions are {e.structured})"
    return (f" (from the data: {e.coverage:.0%} of completion words come from prompts "
            f"{e.prompt_words / max(e.completion_words, 1):.0f}x their length)")


def _weigh_baseline(choice: Choice, b: Baseline, reasons: list[str]) -> Choice:
    score = f"token F1 {b.token_f1:.2f}, ROUGE-L {b.rouge_l:.2f}, exact match {b.exact_match:.0%}"
    if b.token_f1 >= GOOD_BASELINE:
        reasons.append(f"but the base model with {b.shots} examples in its prompt already scores {score} on "
                       f"{b.examples} eval examples: prompting may be enough")
        return "rag" if choice == "rag+fine-tune" else "prompting"
    reasons.append(f"a prompt-only baseline ({b.shots}-shot) scores {score} on {b.examples} eval examples: "
                   "fine-tuning has room to help")
    return choice


def _weigh_rag(choice: Choice, plain: Baseline | None, rag: Baseline, reasons: list[str]) -> Choice:
    """What notes in the prompt change; a RAG prompt that does the job makes fine-tuning unnecessary."""
    scores = f"token F1 {rag.token_f1:.2f}" + (f", fact recall {rag.fact_recall:.0%}" if rag.fact_recall is not None
                                               else "")
    gains = []
    if plain is not None:
        gains = [f"{name} {before:.2f} -> {after:.2f}" if name == "token F1" else f"{name} {before:.0%} -> {after:.0%}"
                 for name, before, after in (("token F1", plain.token_f1, rag.token_f1),
                                             ("fact recall", plain.fact_recall, rag.fact_recall))
                 if before is not None and after is not None]
        helped = rag.token_f1 - plain.token_f1 >= RAG_HELPS or (
            plain.fact_recall is not None and rag.fact_recall is not None
            and rag.fact_recall - plain.fact_recall >= RAG_HELPS)
        verdict = "retrieval helps" if helped else "retrieval adds little here"
        reasons.append(f"{verdict}: with notes retrieved from {rag.notes} the same prompt goes {', '.join(gains)} "
                       f"on {rag.examples} held-out examples")
    if rag.token_f1 >= GOOD_BASELINE and "fine-tune" in choice:
        reasons.append(f"and the base model with retrieved notes already scores {scores}: RAG without "
                       "fine-tuning may be enough")
        return "rag"
    return choice


# --- evidence from a dataset -----------------------------------------------------------------------------


def evidence_from(examples: Sequence[Example]) -> Evidence:
    """Measure what the data says about the decision table's questions."""
    pairs = [_prompt_and_reply(e.messages) for e in examples]
    n = max(len(pairs), 1)
    prompt_words = [_words(p) for p, _ in pairs]
    reply_words = [_words(c) for _, c in pairs]
    df, pdf = Counter(w for ws in reply_words for w in ws), Counter(w for ws in prompt_words for w in ws)
    markers = [w for w, k in df.most_common(100)
               if k >= MARKER_SHARE * n and pdf[w] <= MARKER_PROMPT_SHARE * n and not w[0].isdigit()]
    found = [{f.rstrip(".,;:-") for f in _FACT.findall(c)} for _, c in pairs]
    common = {f for f, k in Counter(f for fs in found for f in fs).items() if k >= MARKER_SHARE * n > 1}
    facts = [sorted((f for f in fs - common if f not in p), key=len, reverse=True)  # boilerplate is no fact
             for (p, _), fs in zip(pairs, found, strict=True)]
    kinds = [_structured(c) for _, c in pairs]
    top = Counter(k for k in kinds if k).most_common(1)
    coverage = [len(c & p) / len(c) for p, c in zip(prompt_words, reply_words, strict=True) if c]
    return Evidence(
        examples=len(pairs),
        facts_per_completion=sum(map(len, facts)) / n,
        fact_samples=[fs[0] for fs in facts if fs][:5],
        style_markers=markers[:10],
        styled_share=sum(1 for ws in reply_words if ws & set(markers)) / n,
        structured=top[0][0] if top and top[0][1] >= STRUCTURED_SHARE * n else None,
        structured_share=top[0][1] / n if top else 0.0,
        coverage=statistics.fmean(coverage) if coverage else 0.0,
        prompt_words=statistics.median(map(len, prompt_words)) if pairs else 0.0,
        completion_words=statistics.median(map(len, reply_words)) if pairs else 0.0,
    )


def _prompt_and_reply(messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    """What the user gave (system and user turns) and the final assistant reply."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = "\n".join(m["content"] for m in messages[:last] if m["role"] != "assistant")
    return prompt, messages[last]["content"]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS}


def _structured(text: str) -> str | None:
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            json.loads(stripped)
            return "JSON"
        except ValueError:
            pass
    return next((kind for kind, pattern in _STRUCTURED.items() if pattern.search(stripped)), None)


# --- prompt-only baseline --------------------------------------------------------------------------------


def few_shot(shots: Sequence[Example], messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Chat messages that show `shots` as earlier turns, then ask `messages`' last question."""
    system = [m for m in messages if m["role"] == "system"][:1]
    turns = [m for ex in shots for m in ex.messages if m["role"] != "system"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return system + turns + [m for m in messages[:last] if m["role"] != "system"]


def prompt_baseline(
    model: str, examples: Sequence[Example], *, shots: int = 3, limit: int = 20, seed: int = 0,
    max_new_tokens: int = 128,
) -> Baseline:
    """Score the base model, prompted with `shots` training examples, on up to `limit` held-out examples."""
    return baselines(model, examples, shots=shots, limit=limit, seed=seed, max_new_tokens=max_new_tokens)[0]


def baselines(
    model: str, examples: Sequence[Example], *, shots: int = 3, limit: int = 20, seed: int = 0,
    max_new_tokens: int = 128, held_out: Sequence[Example] | None = None, rag: RagSettings | None = None,
) -> tuple[Baseline, Baseline | None]:
    """The prompt-only baseline and, with `rag`, the RAG one, on the same held-out examples.

    Held out: `held_out` when given (e.g. questions with `facts`), else 20 % of `examples` split by prompt,
    at most `limit` of them. Both prompts show `shots` training examples as earlier turns; the RAG prompt also
    has the notes retrieved for each question (`tunesmith.retrieval`) from `rag.docs`, else from the training
    examples, never from the held-out ones. Greedy replies get 1.5x the longest reference's tokens (at most
    `max_new_tokens`); scores are the eval engine's exact match, token F1, ROUGE-L and fact recall, averaged.
    """
    from tunesmith.data.prepare import split
    from tunesmith.model.loading import load_model, load_tokenizer

    train, held = (list(examples), list(held_out)) if held_out is not None else split(examples, 0.2, seed)
    held = held[:limit]  # grouped by prompt: no near-copy of an eval prompt in the shots
    demos = random.Random(seed).sample(train, min(shots, len(train)))
    tokenizer = load_tokenizer(model)
    lm = load_model(model)
    prompts = [few_shot(demos, ex.messages) for ex in held]
    plain = _score_baseline(lm, tokenizer, model, prompts, held, demos, max_new_tokens)
    if rag is None:
        return plain, None
    from tunesmith.retrieval import Retriever, with_notes

    retriever = Retriever.from_examples(rag.docs or train, exclude=held)
    with_rag, _ = with_notes(retriever, prompts, tokenizer, k=rag.k, budget=rag.budget)
    scored = _score_baseline(lm, tokenizer, model, with_rag, held, demos, max_new_tokens)
    return plain, dataclasses.replace(scored, notes=rag.source)


@dataclass(frozen=True)
class RagSettings:
    """Where the RAG baseline's notes come from, and how many."""

    source: str  # said in the advice: "the training rows", a --docs path
    docs: Sequence[Example] | None = None  # documents or rows to retrieve from (None: the training examples)
    k: int = 3
    budget: int = 384


def _score_baseline(
    lm: Any, tokenizer: Any, model: str, prompts: list[list[dict[str, str]]], held: Sequence[Example],
    demos: Sequence[Example], max_new_tokens: int,
) -> Baseline:
    from tunesmith.evaluate.metrics import fact_recall, text_scores
    from tunesmith.evaluate.scoring import generate

    refs = [_prompt_and_reply(ex.messages)[1] for ex in held]
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs), default=0)
    budget = min(max_new_tokens, longest + longest // 2 + 8)  # room to answer, not to ramble
    replies = generate(lm, tokenizer, prompts, budget)
    scores = [text_scores(r, ref) for r, ref in zip(replies, refs, strict=True)]
    mean = {k: statistics.fmean(s[k] for s in scores) for k in ("exact_match", "token_f1", "rouge_l")}
    recalled = [fact_recall(r, ex.facts) for r, ex in zip(replies, held, strict=True) if ex.facts]
    samples = [{"prompt": _prompt_and_reply(ex.messages)[0], "reply": r, "reference": ref}
               for ex, r, ref in zip(held[:3], replies, refs, strict=False)]
    shown = [_prompt_and_reply(ex.messages)[0] for ex in demos]
    return Baseline(model, len(demos), len(held), samples=samples, shot_prompts=shown,
                    fact_recall=statistics.fmean(recalled) if recalled else None, **mean)
