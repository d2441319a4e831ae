"""The real built-in model loads offline and answers sensibly through the same chat template we train with."""

from __future__ import annotations

import re

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


@pytest.mark.slow
def test_agent_example_renders_with_the_fallback_on_the_builtin_model():
    """SmolLM2's template has no tool syntax: the fallback renders every agent row, within the documented
    recipe's max_length, with the tools in the system turn instead of the template's default prompt."""
    from pathlib import Path

    from tunesmith.data.formats import load_dataset
    from tunesmith.data.tool_template import native_syntax
    from tunesmith.model.loading import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    assert native_syntax(tokenizer) is None
    root = Path(__file__).resolve().parent.parent
    examples = root / "examples"
    recipe = re.search(r"tunesmith train examples/agent_train\.jsonl .*--max-length (\d+)",
                       (root / "docs" / "agents.md").read_text())
    assert recipe, "docs/agents.md no longer shows the training recipe"
    max_length = int(recipe.group(1))
    for name in ("agent_train.jsonl", "agent_eval.jsonl"):
        for ex in load_dataset(examples / name).examples:
            enc = encode(tokenizer, ex.messages, max_length, tools=ex.tools)
            assert enc.roundtrip_ok and not enc.truncated, ex.source
            text = tokenizer.decode(enc.input_ids)
            assert "<tools>" in text and "SmolLM" not in text
