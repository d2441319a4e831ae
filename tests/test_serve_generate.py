"""The decode loop: batching never changes a row's output, sampling settings, stop strings, EOS, chat history."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_serve_support import reference_reply
from tunesmith.data.tokenize import encode_prompt
from tunesmith.errors import TunesmithError
from tunesmith.model.loading import load_model, load_tokenizer
from tunesmith.serve.chat import Conversation
from tunesmith.serve.generate import (
    SamplingParams,
    StopText,
    decode,
    new_row,
    stop_token_ids,
    stream,
    top_p_filter,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    model = load_model(str(tiny_model_dir))
    model.eval()
    return model, load_tokenizer(str(tiny_model_dir))


def run(tiny, prompts: list[list[int]], params: list[SamplingParams], eos: set[int] | None = None):
    """Decode rows together; return each row's (text, finish_reason, completion_tokens)."""
    model, tok = tiny
    rows = [new_row(tok, p, sp) for p, sp in zip(prompts, params, strict=True)]
    texts = [""] * len(rows)
    ends: list[tuple[str | None, int]] = [(None, 0)] * len(rows)
    with torch.inference_mode():
        for step in decode(model, rows, stop_token_ids(model, tok) if eos is None else eos, tok.pad_token_id):
            assert ends[step.index][0] is None, "a row produced text after it finished"
            texts[step.index] += step.text
            if step.finish_reason:
                ends[step.index] = (step.finish_reason, step.completion_tokens)
    return [(t, *e) for t, e in zip(texts, ends, strict=True)]


def chat_ids(tok, text: str) -> list[int]:
    return encode_prompt(tok, [{"role": "user", "content": text}])


# -- stop strings and detokenization -------------------------------------------------------------------


def feed(tok, text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    st = StopText(tok, stop)
    deltas, stopped = [], False
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        delta, stopped = st.add(t)
        deltas.append(delta)
        if stopped:
            break
    if not stopped:
        deltas.append(st.flush())
    return deltas, stopped


@pytest.mark.parametrize("stop", ["word", "lo w", "o", "d!", "xyz"])
def test_text_is_cut_at_the_first_stop_string_and_nothing_past_it_is_ever_emitted(tiny, stop: str) -> None:
    text = "hello world!"
    deltas, stopped = feed(tiny[1], text, (stop,))
    expected = text[: text.find(stop)] if stop in text else text
    assert "".join(deltas) == expected
    assert stopped == (stop in text)


def test_the_earliest_of_several_stop_strings_wins(tiny) -> None:
    deltas, stopped = feed(tiny[1], "the quick brown fox", ("fox", "quick", "zzz"))
    assert stopped and "".join(deltas) == "the "


def test_a_split_character_is_held_back_until_complete(tiny) -> None:
    tok = tiny[1]
    ids = tok("café ünïcode", add_special_tokens=False)["input_ids"]
    assert len(ids) > len("café ünïcode") - 4  # the tiny vocabulary splits non-ASCII into bytes
    deltas, _ = feed(tok, "café ünïcode", ())
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == "café ünïcode"


# -- sampling ------------------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_the_mass_and_renormalizes() -> None:
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    assert torch.allclose(top_p_filter(probs.clone(), 0.7), torch.tensor([0.0, 0.625, 0.0, 0.375]))
    assert torch.allclose(top_p_filter(probs.clone(), 0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(top_p_filter(probs.clone(), 0.81), torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95)


def test_same_seed_same_text_other_seed_other_text(tiny) -> None:
    ids = chat_ids(tiny[1], "hello")
    sample = SamplingParams(max_tokens=20, temperature=1.0, seed=7)
    a, b, c = run(tiny, [ids, ids, ids], [sample, sample, SamplingParams(max_tokens=20, temperature=1.0, seed=8)])
    assert a == b
    assert a[0] != c[0]


def test_tiny_top_p_is_greedy(tiny) -> None:
    ids = chat_ids(tiny[1], "where is my order?")
    greedy, nucleus = run(tiny, [ids, ids], [SamplingParams(max_tokens=12),
                                             SamplingParams(max_tokens=12, temperature=1.5, top_p=1e-6, seed=1)])
    assert greedy == nucleus


# -- the decode loop -----------------------------------------------------------------------------------


def test_greedy_matches_transformers_generate(tiny, tiny_model_dir: Path) -> None:
    ids = chat_ids(tiny[1], "What is your return policy?")
    [(text, finish, n)] = run(tiny, [ids], [SamplingParams(max_tokens=10)])
    assert (finish, n) == ("length", 10)
    assert text == reference_reply(tiny_model_dir, None, ids, 10)


def test_a_row_decodes_the_same_alone_or_padded_into_a_batch(tiny) -> None:
    tok = tiny[1]
    prompts = [chat_ids(tok, "hi"), chat_ids(tok, "What is the capital of France? Tell me."), chat_ids(tok, "fox")]
    params = [SamplingParams(max_tokens=6), SamplingParams(max_tokens=12, temperature=0.9, seed=3),
              SamplingParams(max_tokens=9, temperature=1.0, top_p=0.8, seed=4)]
    together = run(tiny, prompts, params)
    alone = [run(tiny, [p], [sp])[0] for p, sp in zip(prompts, params, strict=True)]
    assert together == alone
    assert [n for *_, n in together] == [6, 12, 9]  # finished rows left the batch; the others went on


def test_eos_stops_with_reason_stop_and_counts_the_eos_token(tiny) -> None:
    ids = chat_ids(tiny[1], "hello")
    [(first, _, _)] = run(tiny, [ids], [SamplingParams(max_tokens=1)])
    first_token = tiny[1](first, add_special_tokens=False)["input_ids"][0]
    [(text, finish, n)] = run(tiny, [ids], [SamplingParams(max_tokens=10)], eos={first_token})
    assert (text, finish, n) == ("", "stop", 1)


def test_stop_string_cuts_a_generated_reply(tiny) -> None:
    ids = chat_ids(tiny[1], "the quick brown fox")
    sample = SamplingParams(max_tokens=16, temperature=1.0, seed=5)  # varied text, same on both runs
    [(full, _, _)] = run(tiny, [ids], [sample])
    stop = next(full[i : i + 2] for i in range(3, len(full) - 1) if full.find(full[i : i + 2]) == i)
    [(text, finish, _)] = run(tiny, [ids], [SamplingParams(max_tokens=16, temperature=1.0, seed=5, stop=(stop,))])
    assert (text, finish) == (full[: full.find(stop)], "stop")
    assert len(text) >= 3


def test_a_cancelled_row_yields_nothing_and_does_not_disturb_the_others(tiny) -> None:
    model, tok = tiny
    ids = chat_ids(tok, "hello")
    rows = [new_row(tok, ids, SamplingParams(max_tokens=5)) for _ in range(2)]
    rows[0].cancelled = True
    with torch.inference_mode():
        steps = list(decode(model, rows, stop_token_ids(model, tok), tok.pad_token_id))
    assert {s.index for s in steps} == {1}
    assert "".join(s.text for s in steps) == run(tiny, [ids], [SamplingParams(max_tokens=5)])[0][0]


def test_stream_yields_deltas_ending_with_the_finish_reason(tiny) -> None:
    model, tok = tiny
    steps = list(stream(model, tok, chat_ids(tok, "hi"), SamplingParams(max_tokens=4)))
    assert [s.finish_reason for s in steps][-1] == "length"
    assert all(s.finish_reason is None for s in steps[:-1])


# -- chat history --------------------------------------------------------------------------------------


def test_conversation_keeps_history_and_forgets_oldest_exchanges_to_fit(tiny) -> None:
    tok = tiny[1]
    system = {"role": "system", "content": "You are a helpful assistant."}
    first = [{"role": "user", "content": "How do I reset my password?"},
             {"role": "assistant", "content": "Go to the Account page."}]
    ask = {"role": "user", "content": "thanks"}
    budget = len(encode_prompt(tok, [system, *first, ask]))
    conv = Conversation(tok, system=system["content"], max_prompt_tokens=budget)
    conv.add(first[0]["content"], first[1]["content"])
    ids, dropped = conv.prompt("thanks")
    assert (ids, dropped) == (encode_prompt(tok, [system, *first, ask]), 0)  # history kept, exactly at budget
    conv.add("thanks", "You are welcome.")
    ids, dropped = conv.prompt("thanks")
    assert dropped == 1  # the password exchange went; the newest one stays
    assert ids == encode_prompt(tok, [system, ask, {"role": "assistant", "content": "You are welcome."}, ask])
    conv.reset()
    assert conv.messages == [system]


def test_conversation_rejects_a_message_that_can_never_fit(tiny) -> None:
    conv = Conversation(tiny[1], max_prompt_tokens=10)
    with pytest.raises(TunesmithError, match=r"message too long: \d+ prompt tokens"):
        conv.prompt("the quick brown fox jumps over the lazy dog")
