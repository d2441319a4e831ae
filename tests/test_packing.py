"""Packing: several examples in one row compute exactly what they compute alone (transformers' block-causal
mask from restarted position ids), targets never cross a boundary, and the packer loses nothing."""

from __future__ import annotations

import random

import pytest
import torch

from tunesmith.data.formats import Example
from tunesmith.data.tokenize import IGNORE, Encoded, encode, encode_text
from tunesmith.errors import ModelError
from tunesmith.model.loading import load_model
from tunesmith.train.batching import collate, join, pack, training_rows, unpack
from tunesmith.train.loss import CompletionLoss

DOCS = [
    "How do I reset my password? Go to the Account page and click Forgot Password.",
    "Where is my order? You can track your order from the Orders page.",
    "the quick brown fox jumps over the lazy dog",
    "What is your return policy? Returns are accepted within 30 days of purchase.",
]
CHAT = [{"role": "user", "content": "What is 2 + 1?"}, {"role": "assistant", "content": "It is 3."}]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(str(tiny_model_dir)).eval()


def _enc(n: int, first: int = 10) -> Encoded:
    ids = list(range(first, first + n))
    return Encoded(ids, list(ids), full_length=n, supervised_lost=0, roundtrip_ok=True)


def test_text_is_every_token_a_label_with_eos_and_split_not_cut(tiny_tokenizer):
    ids = tiny_tokenizer(DOCS[0])["input_ids"]
    (whole,) = encode_text(tiny_tokenizer, DOCS[0])
    assert whole.input_ids == [*ids, tiny_tokenizer.eos_token_id] and whole.labels == whole.input_ids
    pieces = encode_text(tiny_tokenizer, DOCS[0], max_length=8)
    assert all(len(p.input_ids) <= 8 for p in pieces)
    assert [t for p in pieces for t in p.input_ids] == whole.input_ids[: sum(len(p.input_ids) for p in pieces)]
    assert sum(len(p.input_ids) for p in pieces) >= len(whole.input_ids) - 1  # at most a lone last token left


def test_packed_logits_and_loss_equal_each_example_alone(model, tiny_tokenizer):
    """The exactness property. fp32 on CPU: the packed row runs SDPA with a block mask, each example alone runs
    the fused causal kernel, so only the summation order differs: ~1e-6 relative; a leak would be O(1)."""
    parts = [encode_text(tiny_tokenizer, d)[0] for d in DOCS[:3]] + [encode(tiny_tokenizer, CHAT)]
    row = join(parts)
    assert row.position_ids is not None and len(row.input_ids) == sum(len(p.input_ids) for p in parts)
    with torch.no_grad():
        # No cache (as in training): transformers reads packing from position ids only without cache and mask.
        packed = model(input_ids=torch.tensor([row.input_ids]), position_ids=torch.tensor([row.position_ids]),
                       use_cache=False).logits[0]
        start = 0
        for p in parts:
            alone = model(input_ids=torch.tensor([p.input_ids]), use_cache=False).logits[0]
            n = len(p.input_ids)
            torch.testing.assert_close(packed[start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
        # Without restarted position ids the same row mixes examples: the test can fail.
        mixed = model(input_ids=torch.tensor([row.input_ids]), use_cache=False).logits[0]
        n0 = len(parts[0].input_ids)
        assert (mixed[n0 : n0 + 5] - packed[n0 : n0 + 5]).abs().max() > 1e-2

    loss_fn = CompletionLoss(model)
    with torch.no_grad():
        b = collate([row], tiny_tokenizer.pad_token_id)
        packed_sum, packed_n = loss_fn(b.input_ids, b.labels, b.attention_mask, b.position_ids)
        sums = [loss_fn(c.input_ids, c.labels) for c in (collate([p], tiny_tokenizer.pad_token_id) for p in parts)]
    assert int(packed_n) == sum(int(n) for _, n in sums) == b.targets == sum(p.targets for p in parts)
    assert float(packed_sum) == pytest.approx(sum(float(s) for s, _ in sums), rel=1e-5)


def test_padded_batch_of_packed_and_plain_rows_matches_alone(model, tiny_tokenizer):
    parts = [encode_text(tiny_tokenizer, d)[0] for d in DOCS]
    rows = [join(parts[:2]), parts[2], join(parts[3:])]  # packed, plain and a one-example packed row, padded
    loss_fn = CompletionLoss(model)
    with torch.no_grad():
        b = collate(rows, tiny_tokenizer.pad_token_id)
        total, n = loss_fn(b.input_ids, b.labels, b.attention_mask, b.position_ids)
        alone = [loss_fn(c.input_ids, c.labels) for c in (collate([p], tiny_tokenizer.pad_token_id) for p in parts)]
    assert int(n) == sum(int(k) for _, k in alone)
    assert float(total) == pytest.approx(sum(float(s) for s, _ in alone), rel=1e-5)


def test_no_target_predicts_the_first_token_of_the_next_example():
    row = join([_enc(4, 10), _enc(3, 20), _enc(5, 30)])
    assert row.position_ids == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    assert [row.labels[i] for i in (0, 4, 7)] == [IGNORE] * 3
    assert row.targets == 3 + 2 + 4
    assert [e.input_ids for e in unpack(row)] == [list(range(10, 14)), list(range(20, 23)), list(range(30, 35))]


def test_completion_only_labels_survive_packing(tiny_tokenizer):
    chat = encode(tiny_tokenizer, CHAT)
    row = join([chat, chat])
    n = len(chat.input_ids)
    assert row.labels[1:n] == chat.labels[1:n] and row.labels[n + 1 :] == chat.labels[1:]
    assert row.targets == 2 * chat.targets


def test_pack_keeps_every_example_once_within_max_length():
    rng = random.Random(0)
    examples = [_enc(rng.randint(2, 64), first=1000 * i) for i in range(300)]
    rows = pack(examples, 128)
    assert all(len(r.input_ids) <= 128 for r in rows)
    back = sorted(tuple(e.input_ids) for r in rows for e in unpack(r))
    assert back == sorted(tuple(e.input_ids) for e in examples)
    assert sum(r.targets for r in rows) == sum(e.targets for e in examples)
    lower = -(-sum(len(e.input_ids) for e in examples) // 128)  # no packing can use fewer rows
    assert len(rows) <= lower + 1
    assert pack(examples, 128) == rows  # deterministic


def test_training_rows_pack_documents_and_split_long_ones(tiny_tokenizer):
    docs = [Example(messages=[], source=f"doc{i}", text=d) for i, d in enumerate([DOCS[0] * 3, *DOCS[1:]])]
    rows, dropped = training_rows(tiny_tokenizer, docs, 32, packed=True)
    assert dropped == 0 and all(len(r.input_ids) <= 32 for r in rows)
    pieces = [p for d in [DOCS[0] * 3, *DOCS[1:]] for p in encode_text(tiny_tokenizer, d, 32)]
    assert sorted(tuple(e.input_ids) for r in rows for e in unpack(r)) == sorted(tuple(p.input_ids) for p in pieces)


def test_check_packing_passes_here_and_catches_a_model_that_mixes(model, tiny_tokenizer):
    parts = [encode_text(tiny_tokenizer, d)[0] for d in DOCS[:2]]
    loss_fn = CompletionLoss(model)
    loss_fn.check_packing([parts[0], join(parts)])  # a transformers Llama keeps them apart

    class IgnoresPositions(torch.nn.Module):  # a decoder that drops position ids: packed examples mix
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.decoder = IgnoresPositions(m.get_decoder())

        def get_decoder(self):
            return self.decoder

    with pytest.raises(ModelError, match="packed examples would attend to each other"):
        CompletionLoss(Wrapper(model)).check_packing([join(parts)])
