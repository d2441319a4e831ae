"""The fine-tune's output shape: learned from training replies, matched on general replies (format collapse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.evaluate.shape import Shape, learn_shape, shape_of_examples, signature

ROOT = Path(__file__).resolve().parent.parent
GENERAL = ["The capital of Canada is Ottawa.", "Ottawa", "Sure! Here is how: 1. Open the task manager.",
           "The Sun is a star.", "I'm sorry, I can't help with that.", "Paris is the capital of France."]


def _completions(path: Path) -> list[str]:
    return [json.loads(line)["completion"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(("task", "collapsed"), [
    ("dates", "1993-12-23"),
    ("tickets", "Shipping."),
    ("commits", "parfait(france): parfait"),
    ("teams", "Norway is on the Europe team."),
])
def test_each_benchmark_task_has_a_shape_that_general_replies_lack(task, collapsed):
    shape = learn_shape(_completions(ROOT / "bench" / "forgetting" / task / "train.jsonl"))
    assert shape is not None and shape.coverage >= 0.95
    assert shape.matches(collapsed)
    assert not any(shape.matches(reply) for reply in GENERAL)
    assert Shape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape


def test_label_sets_and_forms():
    labels = learn_shape(["billing", "Shipping", "returns"] * 5)
    assert labels.kind == "labels" and labels.values == ("billing", "returns", "shipping")
    assert labels.matches("  RETURNS.\n") and not labels.matches("returns are easy") and not labels.matches("")
    assert labels.describe() == "one of 3 labels: billing, returns, shipping"
    dates = learn_shape([f"20{n:02d}-01-31" for n in range(12)])
    assert dates.kind == "form" and dates.values == ("9-9-9",) and dates.describe() == "the form 9-9-9"
    assert dates.matches("1993-12-23\nmore text") and not dates.matches("It is 1993-12-23")


def test_signature_keeps_frequent_words_and_collapses_runs():
    assert signature("feat(search): add a retry limit") == "a(a):a"
    assert signature("Mira Strand is on the Quorra team.", frozenset({"is", "on", "the", "team"})) == \
        "A is on the A team."
    assert signature("Room 12, floor 3") == "A9,a9"


def test_replies_without_a_common_form_have_no_shape():
    assert learn_shape(_completions(ROOT / "examples" / "support.jsonl")) is None
    assert learn_shape(["billing"] * 9) is None  # too few replies to tell
    assert shape_of_examples(["a document, not a chat"] * 20) is None
    chats = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": f"19{n:02d}-01-01"}]
             for n in range(20)]
    assert shape_of_examples(chats).values == ("9-9-9",)
