"""Tool-calling evaluation: each assistant turn graded from the reply read back; base vs tuned with intervals;
`tunesmith eval` end to end on a tiny model trained to follow scripted tool conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)
from tunesmith.data.formats import Example
from tunesmith.data.tool_template import FALLBACK, parse_reply
from tunesmith.evaluate.tools import ToolScores, compare, grade, task

TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "check_warranty", "parameters": {
        "type": "object", "properties": {"serial_number": {"type": "string"}}, "required": ["serial_number"]}}}]


def _call(cid: str, name: str, args: dict) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


ROWS = [
    Example([{"role": "user", "content": "Where is KB-1?"},
             {"role": "assistant", "content": "", "tool_calls": [_call("a", "lookup_order", {"order_id": "KB-1"})]},
             {"role": "tool", "tool_call_id": "a", "content": '{"status": "shipped"}'},
             {"role": "assistant", "content": "Order KB-1 has shipped."}], "t:1", tools=TOOLS),
    Example([{"role": "user", "content": "Where are KB-2 and KB-3?"},
             {"role": "assistant", "content": "", "tool_calls": [_call("a", "lookup_order", {"order_id": "KB-2"}),
                                                                 _call("b", "lookup_order", {"order_id": "KB-3"})]},
             {"role": "tool", "tool_call_id": "a", "content": "{}"},
             {"role": "tool", "tool_call_id": "b", "content": "{}"},
             {"role": "assistant", "content": "Both shipped.", "weight": 0}], "t:2", tools=TOOLS),
    Example([{"role": "user", "content": "Do you take PayPal?"}, {"role": "assistant", "content": "Yes, we do."}],
            "t:3", tools=TOOLS),
]
CALL = '<tool_call>{"name": "%s", "arguments": %s}</tool_call>'


def test_turns_are_every_trained_assistant_message():
    t = task(ROWS)
    assert t is not None and len(t) == 3
    assert [(x.row, x.after, bool(x.reference.get("tool_calls"))) for x in t.turns] == [
        (0, "user", True), (0, "tool", False), (1, "user", True), (2, "user", False)]  # weight 0 left out
    assert task([Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x:1")]) is None


def test_grade_call_turns():
    turn = task(ROWS).turns[2]  # two parallel calls
    both = CALL % ("lookup_order", '{"order_id": "KB-3"}') + CALL % ("lookup_order", '{"order_id": "KB-2"}')
    g = grade(turn, parse_reply(both, FALLBACK))
    assert g["function_name_accuracy"] == g["arguments_exact_match"] == (1.0, 1.0)  # order does not matter
    assert g["call_parse_rate"] == g["arguments_schema_valid"] == (1.0, 1.0)
    one = grade(turn, parse_reply(CALL % ("lookup_order", '{"order_id": "KB-3"}'), FALLBACK))
    assert one["function_name_accuracy"] == one["arguments_exact_match"] == (0.0, 1.0)
    wrong = grade(task(ROWS).turns[0], parse_reply(CALL % ("check_warranty", '{"order_id": "KB-1"}'), FALLBACK))
    assert wrong["function_name_accuracy"] == (0.0, 1.0) and wrong["arguments_schema_valid"] == (0.0, 1.0)
    spaced = grade(task(ROWS).turns[0], parse_reply(CALL % ("lookup_order", '{ "order_id" : "KB-1" }'), FALLBACK))
    assert spaced["arguments_exact_match"] == (1.0, 1.0)  # JSON-equal, not string-equal
    broken = grade(task(ROWS).turns[0], parse_reply('<tool_call>{"name": "lookup_order", "argu', FALLBACK))
    assert broken["call_parse_rate"] == (0.0, 1.0) and broken["arguments_exact_match"] == (0.0, 1.0)
    assert broken["false_call_rate"] == (0.0, 0.0)  # not a turn that needs no call


def test_grade_turns_that_need_no_call():
    ask, after = task(ROWS).turns[3], task(ROWS).turns[1]
    assert grade(ask, parse_reply("Yes.", FALLBACK))["false_call_rate"] == (0.0, 1.0)
    assert grade(ask, parse_reply(CALL % ("lookup_order", "{}"), FALLBACK))["false_call_rate"] == (1.0, 1.0)
    good = grade(after, parse_reply("Order KB-1 has shipped.", FALLBACK))
    assert good["answer_token_f1"] == good["answer_rouge_l"] == (1.0, 1.0) and good["false_call_rate"] == (0.0, 0.0)
    again = grade(after, parse_reply(CALL % ("lookup_order", '{"order_id": "KB-1"}'), FALLBACK))
    assert again["answer_token_f1"] == (0.0, 1.0)  # calling again instead of answering scores nothing


def _scores(replies: list[str]) -> ToolScores:
    return ToolScores([(2.0, 4), (3.0, 6), (1.0, 2)], replies, [parse_reply(r, FALLBACK) for r in replies])


def test_compare_base_and_tuned_with_intervals():
    t = task(ROWS)
    perfect = [CALL % ("lookup_order", '{"order_id": "KB-1"}'), "Order KB-1 has shipped.",
               CALL % ("lookup_order", '{"order_id": "KB-2"}') + CALL % ("lookup_order", '{"order_id": "KB-3"}'),
               "Yes, we do."]
    chatty = ["It is on its way.", "Shipped.", "Both are fine.", CALL % ("lookup_order", "{}")]
    out = compare(t, _scores(chatty), _scores(perfect))
    m = {row["name"]: row for row in out["metrics"]}
    assert out["kind"] == "tool_calls" and out["turn_counts"] == {"call": 2, "no_call_after_user": 1,
                                                                  "answer_after_result": 1}
    exact = m["arguments_exact_match"]
    assert (exact["base"], exact["tuned"], exact["n"]) == (0.0, 1.0, 2)
    assert m["arguments_exact_match"]["delta"] == 1.0 and m["arguments_exact_match"]["ci"] == (1.0, 1.0)
    assert (m["false_call_rate"]["base"], m["false_call_rate"]["tuned"]) == (1.0, 0.0)
    assert m["false_call_rate"]["higher_is_better"] is False
    assert m["arguments_schema_valid"]["base"] == 0.0  # its one call misses the required order_id
    assert m["eval_loss"]["tuned"] == pytest.approx(6 / 12)
    assert len(out["per_example"]) == 4 and out["per_example"][0]["reference"].startswith("lookup_order(")
    assert sorted(out["wins"]) == [0, 1, 2, 3] and out["wins"][-1] == 1 and out["regressions"] == []
    assert out["per_example"][1]["score_base"] == pytest.approx(0.4)  # "Shipped." still shares a word
    alone = compare(t, None, _scores(perfect))
    assert {r["name"]: r["base"] for r in alone["metrics"]}["arguments_exact_match"] is None


def test_eval_cli_reports_tool_metrics(monkeypatch, capsys, scripted_tool_model: Path, tmp_path):
    root = scripted_tool_model.parent.parent  # tool_helpers: ROOT/run/model, ROOT/base, ROOT/script.jsonl
    code, out, err = run(monkeypatch, capsys, "eval", str(scripted_tool_model), "--base", str(root / "base"),
                         "--data", str(root / "script.jsonl"), "--suite", "none", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert "arguments_exact_match" in out and "false_call_rate" in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    m = {row["name"]: row for row in report["target_task"]["metrics"]}
    assert m["arguments_exact_match"]["tuned"] == 1.0 and m["function_name_accuracy"]["tuned"] == 1.0
    assert m["false_call_rate"]["tuned"] == 0.0 and m["arguments_exact_match"]["base"] == 0.0
    assert m["arguments_exact_match"]["ci"] is not None
    assert "arguments_exact_match" in (tmp_path / "ev" / "report.md").read_text()
