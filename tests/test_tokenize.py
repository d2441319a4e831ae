from __future__ import annotations

from tunesmith.data.tokenize import IGNORE, encode, encode_prompt


def _supervised_text(tok, enc) -> str:
    return tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])


def test_labels_mask_prompt_and_supervise_eos(tiny_tokenizer):
    msgs = [{"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "Track it from the Orders page."}]
    enc = encode(tiny_tokenizer, msgs)
    assert _supervised_text(tiny_tokenizer, enc) == "Track it from the Orders page.<|im_end|>"
    assert enc.labels[-1] == IGNORE  # the newline after EOS is template filler, not a target
    assert enc.roundtrip_ok
    # The prompt part is exactly what inference feeds the model.
    prompt = encode_prompt(tiny_tokenizer, msgs[:1])
    assert enc.input_ids[: len(prompt)] == prompt
    assert all(lab == IGNORE for lab in enc.labels[: len(prompt)])


def test_multi_turn_supervises_every_assistant_turn(tiny_tokenizer):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    enc = encode(tiny_tokenizer, msgs)
    assert _supervised_text(tiny_tokenizer, enc) == "Hello.<|im_end|>Goodbye.<|im_end|>"


def test_truncation_counts_lost_supervised_tokens(tiny_tokenizer):
    msgs = [{"role": "user", "content": "What is your return policy?"},
            {"role": "assistant", "content": "Returns are accepted within 30 days of purchase."}]
    full = encode(tiny_tokenizer, msgs)
    cut = encode(tiny_tokenizer, msgs, max_length=len(full.input_ids) - 4)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 4
    # The last 4 tokens are "." "<|im_end|>" "\n"... count exactly what was supervised among them.
    assert cut.supervised_lost == sum(1 for x in full.labels[-4:] if x != IGNORE)
    assert cut.supervised == full.supervised - cut.supervised_lost
