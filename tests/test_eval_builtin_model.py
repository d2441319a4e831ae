"""On the real built-in model: the teacher-forced scorer says exactly what greedy generation writes."""

from __future__ import annotations

import pytest

from tunesmith.evaluate import scoring
from tunesmith.evaluate.suite import load_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    from tunesmith.model.loading import load_model, load_tokenizer

    return load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")


@pytest.mark.parametrize("task", ["capitals", "arithmetic"])
def test_greedy_match_equals_greedy_generation_after_the_prefix(smollm, task):
    import torch

    model, tokenizer = smollm
    items = load_task(task).items[::3]  # spread over the file: easy and hard items
    scored = scoring.greedy_match(model, tokenizer, [(i["prompt"], i["prefix"], i["answer"]) for i in items])
    for item, (ok, _) in zip(items, scored, strict=True):
        head = scoring.chat_prefix(tokenizer, item["prompt"]) + item["prefix"]
        ids = torch.tensor([tokenizer(head, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        written = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert ok == written.startswith(" " + item["answer"]), (item["id"], written)
    assert 0 < sum(ok for ok, _ in scored) < len(items)  # the model gets some right and some wrong
