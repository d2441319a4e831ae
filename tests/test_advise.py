"""The walkthrough's decision table as rules, the dataset evidence behind open questions, the baseline."""

from __future__ import annotations

import dataclasses
import random

import pytest

from tunesmith.advise import (
    FACTS_PER_COMPLETION,
    Answers,
    Baseline,
    RagSettings,
    baselines,
    decide,
    evidence_from,
    few_shot,
    prompt_baseline,
)
from tunesmith.data.formats import Example


def _ex(prompt: str, reply: str, system: str | None = None) -> Example:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return Example(messages=messages, source="test")


# The four scenarios of the walkthrough's table ("When to Fine-Tune vs. When to Use RAG"), as answered.
@pytest.mark.parametrize(
    ("scenario", "answers", "choice", "why"),
    [
        ("questions about today's company documents", Answers(knowledge_changes=True), "rag",
         "RAG: the knowledge is external and changes"),
        ("a chatbot with a sarcastic pirate persona", Answers(style=True), "fine-tune",
         "fine-tune: you are teaching a style, which is part of the model's core behaviour"),
        ("SQL queries for the company's schema", Answers(new_skill=True), "fine-tune",
         "fine-tune: a new, complex skill the model must learn from examples"),
        ("summarising a provided legal document", Answers(in_input=True), "prompting",
         "prompting: the knowledge is contained in the input; the model just has to act on it"),
    ],
)
def test_walkthrough_scenarios(scenario: str, answers: Answers, choice: str, why: str) -> None:
    advice = decide(answers)
    assert advice.choice == choice, scenario
    assert advice.reasons[0] == why or advice.reasons[0].startswith(why + ";")
    assert advice.method == ("lora" if choice == "fine-tune" else None)


def test_knowledge_and_style_together_get_both() -> None:
    advice = decide(Answers(knowledge_changes=True, style=True))
    assert advice.choice == "rag+fine-tune" and advice.method == "lora"
    assert [r.split(":")[0] for r in advice.reasons] == ["RAG", "fine-tune", "LoRA"]


def test_style_beats_in_input_and_nothing_means_prompting() -> None:
    assert decide(Answers(style=True, in_input=True)).choice == "fine-tune"
    quiet = decide(Answers())
    assert quiet.choice == "prompting"
    assert quiet.reasons == ["prompting: nothing calls for changing the weights; start with instructions and a "
                             "few examples in the prompt"]


# Small datasets with the shape of each scenario, for the evidence the advisor reads from data.
def company_docs() -> list[Example]:
    templates = [
        "Plan {i} is ${price} a month and renews after {days} days.",
        "Since {month} the fee for plan {i} has been ${price}; see portal{i}.example/billing.",
        "Plan {i} belongs to the Oslo office, open until {hour}:00, contact desk{i}@corp.example.",
        "Renewal of plan {i} happens every {days} days via portal{i}.example/renew at ${price}.",
        "For plan {i}, Ingrid approves refunds above ${price} within {days} days.",
        "Plan {i} data is stored in Frankfurt for {days} months, then archived by Tomas.",
        "The {month} price list puts plan {i} at ${price}, with {days} seats included.",
    ]
    rng = random.Random(0)
    rows = []
    for i in range(42):
        reply = templates[i % len(templates)].format(
            i=i, price=rng.randint(5, 500), days=rng.randint(10, 90), hour=rng.randint(15, 19),
            month=rng.choice(["March", "June", "October"]))
        rows.append(_ex(f"What does plan {i} cost and include?", reply))
    return rows


def pirate_persona() -> list[Example]:
    openers = ["Arr, ye landlubber", "Ahoy matey, ye ask", "Arr, listen well matey", "Shiver me timbers, ye"]
    rows = []
    for i in range(40):
        a, b = i + 3, 2 * i + 1
        rows.append(_ex(f"What is {a} plus {b}?", f"{openers[i % 4]}: it be {a + b}, savvy? Now fetch the rum."))
    return rows


def sql_skill() -> list[Example]:
    tables = ["orders", "customers", "products", "invoices"]
    return [_ex(f"How many {t} were created in month {m}?",
                f"SELECT COUNT(*) FROM {t} WHERE strftime('%m', created_at) = '{m:02d}';")
            for t in tables for m in range(1, 11)]


def summaries() -> list[Example]:
    rng = random.Random(1)
    vocab = ["tenant", "landlord", "lease", "premises", "rent", "deposit", "termination", "notice", "repairs",
             "arbitration", "clause", "liability", "insurance", "obligations", "breach", "remedy", "consent"]
    rows = []
    for _ in range(30):
        doc = " ".join(rng.choice(vocab) for _ in range(120))
        summary = " ".join(doc.split()[:12])
        rows.append(_ex(f"Summarise this contract:\n{doc}", summary))
    return rows


@pytest.mark.parametrize(
    ("dataset", "question", "choice"),
    [
        (company_docs, "knowledge_changes", "rag"),
        (pirate_persona, "style", "fine-tune"),
        (sql_skill, "new_skill", "fine-tune"),
        (summaries, "in_input", "prompting"),
    ],
)
def test_evidence_answers_the_open_question(dataset, question: str, choice: str) -> None:
    evidence = evidence_from(dataset())
    suggested = evidence.suggests()
    assert [q for q, v in vars(suggested).items() if v] == [question]
    advice = decide(Answers(), evidence)
    assert advice.choice == choice
    assert "(from the data: " in advice.reasons[0]


def test_evidence_figures() -> None:
    e = evidence_from(pirate_persona())
    assert e.examples == 40 and e.styled_share == 1.0
    assert {"arr", "ye", "matey", "rum"} <= set(e.style_markers)
    sql = evidence_from(sql_skill())
    assert (sql.structured, sql.structured_share) == ("SQL", 1.0)
    docs = evidence_from(company_docs())
    assert docs.facts_per_completion >= FACTS_PER_COMPLETION  # prices, periods, links, names, places
    assert "portal1.example/billing" in docs.fact_samples and any(f.startswith("$") for f in docs.fact_samples)
    assert not any(f in ("0", "1", "2") for f in docs.fact_samples)  # the plan number is in the prompt


def test_the_users_answers_win_over_the_data() -> None:
    evidence = evidence_from(pirate_persona())
    advice = decide(Answers(style=False), evidence)
    assert advice.choice == "prompting" and advice.answers.style is False
    advice = decide(Answers(knowledge_changes=True), evidence)
    assert advice.choice == "rag+fine-tune"
    assert advice.reasons[0].startswith("RAG: the knowledge is external and changes;")  # said, not inferred


def _baseline(f1: float) -> Baseline:
    return Baseline("m", shots=3, examples=20, exact_match=0.5, token_f1=f1, rouge_l=f1, samples=[], shot_prompts=[])


def test_a_strong_prompt_only_baseline_means_prompting() -> None:
    advice = decide(Answers(style=True), baseline=_baseline(0.85))
    assert advice.choice == "prompting" and advice.method is None
    assert "already scores token F1 0.85" in advice.reasons[-1]
    assert decide(Answers(style=True, knowledge_changes=True), baseline=_baseline(0.9)).choice == "rag"


def test_a_weak_baseline_leaves_room_for_fine_tuning() -> None:
    advice = decide(Answers(new_skill=True), baseline=_baseline(0.31))
    assert advice.choice == "fine-tune"
    assert any("scores token F1 0.31" in r and "fine-tuning has room to help" in r for r in advice.reasons)


def test_few_shot_prompt_shows_demonstrations_then_the_question() -> None:
    demos = [_ex("2 + 2?", "Arr, 4."), _ex("3 + 3?", "Arr, 6.")]
    target = _ex("5 + 5?", "Arr, 10.", system="You are a pirate.")
    messages = few_shot(demos, target.messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == "5 + 5?" and "Arr, 10." not in str(messages)


def test_prompt_baseline_on_the_tiny_model(tiny_model_dir) -> None:
    data = pirate_persona()
    result = prompt_baseline(str(tiny_model_dir), data, shots=2, limit=4, max_new_tokens=8)
    assert result.shots == 2 and result.examples == 4
    for score in (result.exact_match, result.token_f1, result.rouge_l):
        assert 0.0 <= score <= 1.0
    assert len(result.samples) == 3 and all(s["reference"] for s in result.samples)
    assert len(result.shot_prompts) == 2
    assert {s["prompt"] for s in result.samples}.isdisjoint(result.shot_prompts)  # no eval example as a shot


def _rag(f1: float, recall: float | None) -> Baseline:
    return Baseline("m", shots=3, examples=20, exact_match=0.0, token_f1=f1, rouge_l=f1, samples=[],
                    shot_prompts=[], fact_recall=recall, notes="the training rows")


def test_the_rag_baseline_says_what_retrieval_adds() -> None:
    plain = Baseline("m", 3, 20, 0.0, 0.2, 0.2, [], [], fact_recall=0.1)
    advice = decide(Answers(knowledge_changes=True, style=True), baseline=plain, rag_baseline=_rag(0.3, 0.6))
    assert advice.choice == "rag+fine-tune" and advice.rag_baseline is not None
    assert any(r.startswith("retrieval helps: with notes retrieved from the training rows the same prompt goes "
                            "token F1 0.20 -> 0.30, fact recall 10% -> 60%") for r in advice.reasons)
    same = decide(Answers(style=True), baseline=plain, rag_baseline=_rag(0.21, 0.12))
    assert any(r.startswith("retrieval adds little here") for r in same.reasons) and same.choice == "fine-tune"


def test_a_strong_rag_baseline_means_rag_without_fine_tuning() -> None:
    plain = Baseline("m", 3, 20, 0.0, 0.3, 0.3, [], [])
    advice = decide(Answers(knowledge_changes=True, style=True), baseline=plain, rag_baseline=_rag(0.85, None))
    assert advice.choice == "rag" and advice.method is None
    assert "RAG without fine-tuning may be enough" in advice.reasons[-1]


def test_baselines_share_their_held_out_questions_and_never_retrieve_them(tiny_model_dir, monkeypatch) -> None:
    import tunesmith.retrieval as retrieval

    data = [dataclasses.replace(e, source=f"persona:{i}") for i, e in enumerate(pirate_persona())]
    held = [Example(messages=[{"role": "user", "content": "Where be the rum?"}, {"role": "assistant",
                                                                                 "content": "Arr, gone."}],
                    source="q:1", facts=(("gone",),)), data[0]]  # the second is a training row itself
    searched: list[set[str]] = []
    search = retrieval.Retriever.search

    def spy(self, query: str, k: int = 3):  # every note the RAG prompts could draw on
        searched.append({n.source for n in self.notes})
        return search(self, query, k)

    monkeypatch.setattr(retrieval.Retriever, "search", spy)
    plain, rag = baselines(str(tiny_model_dir), data, shots=1, limit=5, held_out=held, max_new_tokens=8,
                           rag=RagSettings(source="the training rows"))
    assert rag is not None and (plain.examples, rag.examples) == (2, 2) and rag.notes == "the training rows"
    assert plain.fact_recall is not None and rag.fact_recall is not None  # one question carries facts
    assert plain.notes is None and plain.shot_prompts == rag.shot_prompts
    assert searched and all(data[0].source not in sources for sources in searched)
