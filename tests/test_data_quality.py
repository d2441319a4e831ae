"""The quality report's figures on small crafted datasets."""

from __future__ import annotations

import pytest

from tunesmith.data import pii, similarity
from tunesmith.data.formats import Dataset, Example
from tunesmith.data.quality import ADVISED_MIN, build_report, percentile
from tunesmith.data.tokenize import encode


def ex(prompt: str, reply: str, source: str = "d.jsonl:1", system: str | None = None) -> Example:
    msgs = [{"role": "system", "content": system}] if system else []
    return Example([*msgs, {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], source)


def dataset(*pairs: tuple[str, str], path: str = "d.jsonl") -> Dataset:
    return Dataset(path, "prompt_completion", [ex(p, c, f"{path}:{i + 1}") for i, (p, c) in enumerate(pairs)])


RESET = ("How do I reset my password?", "Go to the Account page and click Forgot Password.")
RETURNS = ("What is your return policy?", "Returns are accepted within 30 days of purchase.")
ORDER = ("Where is my order?", "You can track your order from the Orders page.")


def test_exact_duplicates_and_their_locations():
    data = dataset(RESET, RETURNS, RESET, ORDER, RETURNS, RESET)
    r = build_report(data)
    assert r.exact_duplicates == [["d.jsonl:1", "d.jsonl:3", "d.jsonl:6"], ["d.jsonl:2", "d.jsonl:5"]]
    assert r.near_duplicates == []  # copies count once, as exact
    assert r.conflicts == []  # the same answer repeated is not a conflict
    assert "2 groups of exact duplicates" in r.verdict.warnings


def test_near_duplicates_after_normalising_and_small_edits():
    long_a = ("Our return policy allows for returns within 30 days of purchase, provided the item is in its "
              "original condition and you still have the receipt.")
    long_b = long_a.replace("30 days", "31 days")
    data = dataset(RESET, ("how do i RESET my password", "Go to the account page, and click: forgot password!"),
                   ("Returns?", long_a), ORDER, ("Returns?", long_b))
    assert similarity.near_duplicates(data.examples) == [[0, 1], [2, 4]]
    # A different question about the same topic is not a near duplicate.
    assert similarity.near_duplicates(dataset(RESET, RETURNS, ORDER).examples) == []


def test_system_prompt_is_not_compared():
    system = "You are a helpful assistant for Kettlebird. " * 10
    a, b = ex("What is 2+2?", "4", system=system), ex("Name a colour.", "Blue", system=system)
    assert similarity.near_duplicates([a, b]) == []


def test_conflicting_completions_for_the_same_prompt():
    data = dataset(RESET, ("How do I reset my password?", "Email support and we reset it for you."),
                   ("how do I reset my password", "Go to the account page and click forgot password"), ORDER)
    r = build_report(data)
    assert r.conflicts == [{"prompt": "How do I reset my password?",
                            "sources": ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]}]
    assert "1 prompt with conflicting completions" in r.verdict.warnings


def test_leakage_exact_prompt_and_near_text():
    policy = ("Our return policy allows for returns within 30 days of purchase, provided the item is in its "
              "original condition.")
    train = dataset(RESET, RETURNS, ("Can I return it?", policy), path="train.jsonl")
    evals = dataset(("How do I reset my password?", "A different answer entirely."),  # same prompt
                    ("Can I return this?", policy),  # another prompt, nearly the same text
                    ("What is the capital of France?", "Paris."), path="eval.jsonl")
    r = build_report(train, eval_data=evals)
    assert r.leakage is not None and r.leakage.eval_count == 3
    assert r.leakage.exact == [{"eval": "eval.jsonl:1", "train": "train.jsonl:1"}]
    assert [(x["eval"], x["train"]) for x in r.leakage.near] == [("eval.jsonl:2", "train.jsonl:3")]
    assert r.leakage.near[0]["similarity"] >= similarity.NEAR_THRESHOLD
    assert r.verdict.level == "problems"
    assert r.verdict.problems == ["1 of 3 eval examples ask a prompt the training set contains: evaluation would "
                                  "overstate quality"]
    assert "1 of 3 eval examples nearly duplicate a training example" in r.verdict.warnings


@pytest.mark.parametrize(("text", "name"), [
    ("write to jane.doe@gmail.com", "email address"),
    ("call me on +1 555 123 4567", "phone number"),
    ("call +44 20 7946 0958.", "phone number"),
    ("or (555) 123-4567 after six", "phone number"),
    ("my key is sk-proj-abcdefghijklmnopqrstuvwx", "OpenAI-style API key"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "AWS access key id"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "bearer token"),
    ("token ghp_" + "a1B2" * 9, "GitHub token"),
    ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
])
def test_secret_and_personal_data_patterns(text, name):
    hits = pii.scan_text(text, "d.jsonl:4", "messages[1].content")
    assert [(h.name, h.source, h.field) for h in hits] == [(name, "d.jsonl:4", "messages[1].content")]


@pytest.mark.parametrize("text", [
    "mail care@kettlebird.example or help@example.com",  # reserved example domains
    "on 2024-01-15 at 10:30, order KB-123456, 1,299.99 dollars, ip 192.168.100.200",
    "SELECT COUNT(*) FROM orders WHERE id > 1000000",
])
def test_no_false_alarms_on_ordinary_text(text):
    assert pii.scan_text(text, "d.jsonl:1", "x") == []


def test_report_masks_hits_and_secrets_are_problems():
    data = dataset(RESET, ("My email?", "It is jane.doe@gmail.com"), ("Key?", "Use sk-abcdefghijklmnopqrstuvwxyz123"))
    r = build_report(data)
    assert [(h.source, h.name, h.masked) for h in r.personal_data] == [("d.jsonl:2", "email address", "ja…om")]
    assert [(h.source, h.name, h.masked) for h in r.secrets] == [("d.jsonl:3", "OpenAI-style API key", "sk…23")]
    assert "jane.doe" not in str(r.to_dict())  # the report never repeats what it found
    assert r.verdict.level == "problems"
    assert r.verdict.problems[0].startswith("1 likely secret (API keys, tokens): remove them")


def test_token_figures_match_encode_and_count_truncation(tiny_tokenizer):
    data = dataset(RESET, RETURNS, ORDER, ("What is the capital of France?", "The capital of France is Paris."))
    full = [encode(tiny_tokenizer, e.messages) for e in data.examples]
    lengths = sorted(len(f.input_ids) for f in full)
    cut = lengths[1]  # two examples fit, two are truncated
    r = build_report(data, tiny_tokenizer, max_length=cut)
    t = r.tokens
    assert t is not None
    assert (t.min, t.max, t.total) == (lengths[0], lengths[-1], sum(lengths))
    assert t.p50 == lengths[1] and t.p95 == lengths[3]
    assert t.supervised == sum(f.supervised for f in full)
    assert t.truncated == sum(1 for n in lengths if n > cut)
    assert t.supervised_lost == sum(sum(1 for x in f.labels[cut:] if x != -100) for f in full)
    assert t.supervised_lost > 0 and t.roundtrip_failures == []
    assert any("longer than --max-length" in w for w in r.verdict.warnings)


def test_examples_that_lose_every_supervised_token_are_named(tiny_tokenizer):
    data = dataset(("word " * 60, "short"), RESET)
    prompt_only = len(encode(tiny_tokenizer, data.examples[1].messages).input_ids) + 2
    t = build_report(data, tiny_tokenizer, max_length=prompt_only).tokens
    assert t is not None and t.emptied == ["d.jsonl:1"]


def test_roundtrip_failure_is_a_problem(tiny_model_dir):
    from tunesmith.model.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    # A generation prompt ending in a space: training sees " the" as one token, inference feeds " " alone.
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' + '\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    data = dataset(("Where is my order?", "the sea be calm today"))
    r = build_report(data, tok)
    assert r.tokens is not None and r.tokens.roundtrip_failures == ["d.jsonl:1"]
    assert r.verdict.problems == ["1 example train on tokens inference never feeds (chat template round-trip fails)"]


def test_counts_and_verdict_levels():
    small = build_report(dataset(RESET, RETURNS, ORDER))
    assert small.count == 3 and small.advised_min == ADVISED_MIN
    assert small.verdict.level == "warnings"
    assert small.verdict.warnings == [f"only 3 examples; at least a few hundred ({ADVISED_MIN}+) high-quality "
                                      "examples are advised"]
    multi = Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "c.jsonl:1")
    r = build_report(Dataset("c.jsonl", "chat", [multi, ex("x", "y", system="Be brief.")]))
    assert (r.multi_turn, r.with_system) == (1, 1)


def test_to_dict_is_json_ready():
    import json

    d = build_report(dataset(RESET)).to_dict()
    assert json.loads(json.dumps(d))["verdict"]["level"] == "warnings"
    assert set(d) >= {"count", "exact_duplicates", "near_duplicates", "conflicts", "secrets", "personal_data",
                      "tokens", "leakage", "verdict"}


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50, 95, 100)
    assert percentile([7], 50) == 7 and percentile([1, 2], 50) == 1


def test_near_duplicates_agree_with_brute_force():
    """LSH only proposes candidates: every pair at or above the threshold must still be found."""
    import random

    rng = random.Random(0)
    words = ["kettle", "order", "refund", "boil", "water", "days", "warranty", "return", "policy", "steel", "lid",
             "base", "filter", "tea", "app"]
    base = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) for _ in range(40)]
    edited = [" ".join(w if rng.random() > 0.08 else rng.choice(words) for w in t.split()) for t in base]
    examples = [ex(f"Q{i % 7}", t, f"d.jsonl:{i}") for i, t in enumerate(base + edited)]
    sets = [similarity.shingles(similarity.compared_text(e)) for e in examples]
    pairs = {(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))
             if similarity.jaccard(sets[i], sets[j]) >= similarity.NEAR_THRESHOLD}
    found = {(g[a], g[b]) for g in similarity.near_duplicates(examples) for a in range(len(g))
             for b in range(a + 1, len(g))}
    assert pairs and pairs <= found  # groups are transitive, so they may hold a few more pairs
