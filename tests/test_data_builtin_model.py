"""The real built-in model loads offline and answers sensibly through the same chat template we train with."""

from __future__ import annotations

import pytest

from tunesmith.data.tokenize import encode, encode_prompt


@pytest.mark.slow
def test_builtin_model_answers_capital_of_france():
    import torch

    from tunesmith.model.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m").eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = encode_prompt(tokenizer, messages)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in reply
    # The real template round-trips: what training sees starts with exactly what inference feeds.
    enc = encode(tokenizer, [*messages, {"role": "assistant", "content": reply.strip()}])
    assert enc.roundtrip_ok and enc.input_ids[: len(ids)] == ids
