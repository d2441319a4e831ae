"""Scoring on the tiny model, checked against direct computations: no padding effects, no off-by-one."""

from __future__ import annotations

import copy

import pytest
import torch

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tunesmith.data.tokenize import IGNORE, encode
from tunesmith.evaluate import scoring
from tunesmith.evaluate.metrics import completion_nll

PROMPTS = ["How do I reset my password?", "Where is my order?", "What is the capital of France?",
           "the quick brown fox", "SELECT name FROM customers;"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model with its layer matrices scaled up: at init its tied embeddings make it repeat the last
    token whatever the prompt, which would let padding or position bugs go unseen."""
    from tunesmith.model.loading import load_model

    model = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.mul_(6)
    return model


def _direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(x_t | x_<t) for t >= 1, from one unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)


def test_tail_tokens_cover_exactly_the_tail(tiny_tokenizer):
    head = scoring.chat_prefix(tiny_tokenizer, "Where is my order?") + "You can track"
    ids, n = scoring.tail_tokens(tiny_tokenizer, head, " your order")
    assert tiny_tokenizer.decode(ids[-n:]) == " your order"
    assert tiny_tokenizer.decode(ids[:-n]) == head


def test_text_nll_equals_unpadded_computation_in_any_batch(model, tiny_tokenizer):
    texts = ["the quick brown fox jumps over the lazy dog", "Paris", "Returns are accepted within 30 days."]
    batched = scoring.text_nll(model, tiny_tokenizer, texts)
    for text, (nll, n) in zip(texts, batched, strict=True):
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        direct = _direct_logprobs(model, ids)
        assert n == len(ids) - 1
        assert nll == pytest.approx(-direct.sum().item(), rel=1e-4, abs=1e-4)
        assert scoring.text_nll(model, tiny_tokenizer, [text])[0][0] == pytest.approx(nll, rel=1e-4, abs=1e-4)


def _greedy_text(model, tokenizer, head: str, steps: int) -> tuple[str, list[int]]:
    ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
    return tokenizer.decode(new), ids + new


def test_greedy_match_agrees_with_step_by_step_greedy_decoding(model, tiny_tokenizer):
    checked = 0
    for prompt in PROMPTS:
        head = scoring.chat_prefix(tiny_tokenizer, prompt)
        answer, full = _greedy_text(model, tiny_tokenizer, head, steps=2)
        if tiny_tokenizer(head + answer, add_special_tokens=False)["input_ids"] != full:
            continue  # the decoded text tokenizes differently: not the same sequence any more
        checked += 1
        (ok, logp), = scoring.greedy_match(model, tiny_tokenizer, [(prompt, "", answer)])
        assert ok is True and logp == pytest.approx(_direct_logprobs(model, full)[-2:].sum().item(), abs=1e-4)
        wrong = "zq" if not answer.startswith("zq") else "qz"  # differs at its first token from greedy's choice
        (bad, _), = scoring.greedy_match(model, tiny_tokenizer, [(prompt, "", wrong)])
        assert bad is False
    assert checked >= 2


def test_greedy_match_batch_equals_alone(model, tiny_tokenizer):
    items = [(p, "Sure", a) for p, a in zip(PROMPTS, ["Paris", "Go to the page", "30", "dog", "name"], strict=True)]
    together = scoring.greedy_match(model, tiny_tokenizer, items)
    alone = [scoring.greedy_match(model, tiny_tokenizer, [i])[0] for i in items]
    for (ok1, lp1), (ok2, lp2) in zip(together, alone, strict=True):
        assert ok1 == ok2 and lp1 == pytest.approx(lp2, rel=1e-4, abs=1e-4)


def test_choose_picks_the_highest_log_likelihood_per_character(model, tiny_tokenizer):
    choices = ["Paris", "the lazy dog", "30 days of purchase"]
    (pick,) = scoring.choose(model, tiny_tokenizer, [("Pick one.", choices)])
    head = scoring.chat_prefix(tiny_tokenizer, "Pick one.")
    per_char = []
    for c in choices:
        ids, n = scoring.tail_tokens(tiny_tokenizer, head, c)
        per_char.append(_direct_logprobs(model, ids)[-n:].sum().item() / len(c))
    assert pick == max(range(len(choices)), key=per_char.__getitem__)


def test_completion_nll_is_the_training_loss(model, tiny_tokenizer):
    chats = [
        [{"role": "user", "content": "Where is my order?"},
         {"role": "assistant", "content": "You can track your order from the Orders page."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Return policy?"},
         {"role": "assistant", "content": "30 days."}],
    ]
    for chat, (nll, n) in zip(chats, completion_nll(model, tiny_tokenizer, chats), strict=True):
        enc = encode(tiny_tokenizer, chat)
        assert n == sum(1 for x in enc.labels if x != IGNORE)
        with torch.no_grad():
            loss = model(torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels])).loss.item()
        assert nll / n == pytest.approx(loss, rel=1e-4)


def test_generate_batched_equals_alone(model, tiny_tokenizer):
    together = scoring.generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=6)
    alone = [scoring.generate(model, tiny_tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert together == alone and len(set(together)) == len(PROMPTS)


def test_cached_shared_prefix_changes_nothing(model, tiny_tokenizer, monkeypatch):
    system = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    items = [([*system, {"role": "user", "content": p}], "Sure", a)
             for p, a in zip(PROMPTS, ["Paris", "Go to the page", "30", "dog", "name FROM"], strict=True)]
    seqs = [scoring.tail_tokens(tiny_tokenizer, scoring.chat_prefix(tiny_tokenizer, m) + f"{pre} ", a)
            for m, pre, a in items]
    assert scoring._shared_length(seqs) >= 10 and scoring._cache_arg(model) is not None
    shared = scoring.score_tails(model, seqs, tiny_tokenizer.pad_token_id)
    monkeypatch.setattr(scoring, "MIN_SHARED", 10_000)  # no prefix cache: every batch runs the whole sequence
    plain = scoring.score_tails(model, seqs, tiny_tokenizer.pad_token_id)
    for a, b in zip(shared, plain, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4) and a.top1 == b.top1


def test_prefix_cache_works_through_a_peft_wrapper(model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert scoring._cache_arg(wrapped) is not None
    items = [(p, "Sure", "Paris") for p in PROMPTS]
    cached, plain = (scoring.greedy_match(m, tiny_tokenizer, items) for m in (wrapped.eval(), model))
    assert [ok for ok, _ in cached] == [ok for ok, _ in plain]
    assert [lp for _, lp in cached] == pytest.approx([lp for _, lp in plain], abs=1e-4)
