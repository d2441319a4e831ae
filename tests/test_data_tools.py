"""Tool-calling data: every file OpenAI's chat fine-tuning accepts loads with the same meaning; every mistake
is reported at file:line with its field; the quality report counts calls; prepared files keep the tools."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.formats import load_dataset
from tunesmith.data.prepare import PrepareConfig, prepare
from tunesmith.data.quality import build_report
from tunesmith.errors import DataError

LOOKUP = {"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
RETURN = {"type": "function", "function": {
    "name": "start_return", "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string"}, "reason": {"type": "string", "enum": ["faulty", "changed_mind"]}},
        "required": ["order_id", "reason"]}}}
TOOLS = [LOOKUP, RETURN]


def call(cid: str, name: str = "lookup_order", args: Any = None) -> dict[str, Any]:
    arguments = args if isinstance(args, str) else json.dumps(args if args is not None else {"order_id": "KB-1"})
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def calling(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def result(cid: str, text: str = '{"status": "shipped"}') -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": cid, "content": text}


USER = {"role": "user", "content": "Where is KB-1?"}
DONE = {"role": "assistant", "content": "It shipped."}
LOOP = [USER, calling(call("c1")), result("c1"), DONE]


def write(tmp_path: Path, rows: list[Any], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def problems(tmp_path: Path, rows: list[Any]) -> list[str]:
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path, rows))
    return [p.split(": ", 1)[1] for p in e.value.problems]


def test_openai_tool_row_loads_as_canonical_messages(tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief.", "name": "desk"}, *LOOP], "tools": TOOLS,
           "parallel_tool_calls": False}
    ex = load_dataset(write(tmp_path, [row])).examples[0]
    assert ex.tools == TOOLS and ex.parallel_tool_calls is False
    assert ex.messages[0] == {"role": "system", "content": "Be brief.", "name": "desk"}
    assert ex.messages[2] == {"role": "assistant", "content": "", "tool_calls": [call("c1")]}  # null -> ""
    assert ex.messages[3] == {"role": "tool", "content": '{"status": "shipped"}', "tool_call_id": "c1"}
    assert ex.record() == {"messages": ex.messages, "tools": TOOLS, "parallel_tool_calls": False}


def test_weight_and_name_are_accepted_where_openai_accepts_them(tmp_path):
    """The issue's first symptom: OpenAI files with `weight` or `name` were refused."""
    rows = [{"messages": [{"role": "user", "content": "hi", "name": "ann"},
                          {"role": "assistant", "content": "draft", "weight": 0},
                          {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "Hello!", "weight": 1}]}]
    ex = load_dataset(write(tmp_path, rows)).examples[0]
    assert [m.get("weight") for m in ex.messages] == [None, 0, None, 1] and ex.tools is None


def test_file_level_tools_apply_to_rows_without_their_own(tmp_path):
    own = {"messages": [USER, calling(call("c1", "start_return", {"order_id": "KB-1", "reason": "faulty"}))],
           "tools": [RETURN]}
    rows = [{"tools": TOOLS}, {"messages": LOOP}, {"messages": [USER, DONE]}, own]
    data = load_dataset(write(tmp_path, rows))
    assert [e.tools for e in data.examples] == [TOOLS, TOOLS, [RETURN]]
    assert [e.source.rsplit(":", 1)[1] for e in data.examples] == ["2", "3", "4"]  # the header is line 1


def test_legacy_functions_become_tools(tmp_path):
    fn = LOOKUP["function"]
    row = {"functions": [fn], "messages": [
        USER, {"role": "assistant", "content": None,
               "function_call": {"name": "lookup_order", "arguments": '{"order_id": "KB-1"}'}},
        {"role": "function", "name": "lookup_order", "content": "{}"}, DONE]}
    ex = load_dataset(write(tmp_path, [row])).examples[0]
    assert ex.tools == [LOOKUP]
    cid = ex.messages[1]["tool_calls"][0]["id"]
    assert ex.messages[2] == {"role": "tool", "content": "{}", "name": "lookup_order", "tool_call_id": cid}


def test_csv_tools_column(tmp_path):
    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["messages", "tools"])
        w.writerow([json.dumps(LOOP), json.dumps(TOOLS)])
        w.writerow([json.dumps([USER, DONE]), ""])
    data = load_dataset(path)
    assert [e.tools for e in data.examples] == [TOOLS, None]


@pytest.mark.parametrize(("messages", "expected"), [
    ([USER, calling(call("c1", "cancel_order"))],
     "messages[1].tool_calls[0].function.name: calls 'cancel_order', which is not declared "
     "(declared: lookup_order, start_return)"),
    ([USER, calling(call("c1", args={"order_id": 5}))],
     "messages[1].tool_calls[0].function.arguments: order_id: 5 is not of type 'string'"),
    ([USER, calling(call("c1", args={}))],
     "messages[1].tool_calls[0].function.arguments: 'order_id' is a required property"),
    ([USER, calling(call("c1", "start_return", {"order_id": "KB-1", "reason": "bored"}))],
     "messages[1].tool_calls[0].function.arguments: reason: 'bored' is not one of ['faulty', 'changed_mind']"),
    ([USER, calling(call("c1", args="[1, 2]"))],
     "messages[1].tool_calls[0].function.arguments: expected a JSON object, got array"),
    ([USER, calling(call("c1", args="{order_id"))],
     "messages[1].tool_calls[0].function.arguments: not valid JSON (Expecting property name enclosed in double "
     "quotes at column 2)"),
    ([USER, calling(call("c1")), result("c2"), DONE],
     "messages[2].tool_call_id: 'c2' answers no call of the assistant message before it"),
    ([USER, calling(call("c1")), result("c1"), result("c1"), DONE],
     "messages[3].tool_call_id: 'c1' answers a call already answered"),
    ([USER, calling(call("c1"), call("c1", args={"order_id": "KB-2"}))],
     "messages[1].tool_calls: duplicate tool_call_id 'c1'"),
    ([USER, calling(call("c1")), {"role": "user", "content": "well?"}, DONE],
     "messages[2]: call 'c1' (lookup_order) has no tool message answering it before this user message"),
    ([USER, result("c1"), DONE], "messages[1]: a tool message must follow an assistant message with tool_calls"),
    ([USER, calling(call("c1")), result("c1")],
     "messages[2].role: the last message is 'tool'; a chat example must end with an assistant message to train on"),
    ([USER, {"role": "assistant", "content": "x", "weight": 0}],
     "messages: every assistant message has weight 0; nothing would be trained on"),
    ([{**USER, "weight": 1}, DONE], "messages[0].weight: unexpected key (a user message has role, content, name)"),
    ([USER, {**DONE, "weight": 0.5}], "messages[1].weight: expected 0 (not trained on) or 1, got 0.5"),
    ([USER, {"role": "assistant", "tool_calls": []}], "messages[1].tool_calls: expected a non-empty list of calls, "
                                                      "got array"),
    ([{**USER, "name": "Ann Lee"}, DONE], 'messages[0].name: expected 1-64 letters, digits, _ or -, got "Ann Lee"'),
    ([USER, {"role": "tool", "content": "x"}, DONE],
     "messages[1].tool_call_id: missing key; a tool message names the call it answers"),
])
def test_each_mistake_is_named_with_its_field(tmp_path, messages, expected):
    found = problems(tmp_path, [{"messages": messages, "tools": TOOLS}])
    assert expected in found, found


def test_every_problem_of_a_file_is_listed_with_its_line(tmp_path):
    rows = [{"tools": TOOLS}, {"messages": LOOP}, {"messages": [USER, calling(call("c1", "nope"))]},
            {"messages": [USER, calling(call("c1", args={}))], "parallel_tool_calls": "yes"}]
    with pytest.raises(DataError) as e:
        load_dataset(write(tmp_path, rows))
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in e.value.problems] == ["3", "4", "4"]
    assert "parallel_tool_calls: expected true or false, got string" in str(e.value)


def test_parallel_calls_only_where_allowed(tmp_path):
    two = [USER, calling(call("c1"), call("c2", args={"order_id": "KB-2"})), result("c1"), result("c2"), DONE]
    assert load_dataset(write(tmp_path, [{"messages": two, "tools": TOOLS}])).examples[0].messages[2:4] == two[2:4]
    found = problems(tmp_path, [{"messages": two, "tools": TOOLS, "parallel_tool_calls": False}])
    assert found == ["messages[1].tool_calls: 2 calls in one message, but parallel_tool_calls is false"]


@pytest.mark.parametrize(("tools", "expected"), [
    ([{"type": "function", "function": {"name": "bad name"}}],
     'tools[0].function.name: expected 1-64 letters, digits, _ or -, got "bad name"'),
    ([{"type": "retrieval", "function": LOOKUP["function"]}], "tools[0].type: expected 'function', got \"retrieval\""),
    ([LOOKUP, LOOKUP], "tools[1].function.name: 'lookup_order' is declared twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}],
     "tools[0].function.parameters: not a valid JSON Schema: 3 is not of type 'object'"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
     "tools[0].function.parameters: not a valid JSON Schema: arguments are an object, so its type must be "
     "'object', not \"string\""),
    ([], "tools: expected a non-empty list of tool definitions, got array"),
])
def test_bad_tool_definitions(tmp_path, tools, expected):
    assert expected in problems(tmp_path, [{"messages": [USER, DONE], "tools": tools}])


def test_bad_file_level_tools_name_the_header_line(tmp_path):
    with pytest.raises(DataError, match=r"data.jsonl:1: tools\[0\].type: expected 'function'"):
        load_dataset(write(tmp_path, [{"tools": [{"type": "x", "function": LOOKUP["function"]}]}, {"messages": LOOP}]))


def test_plain_chat_errors_are_unchanged(tmp_path):
    assert problems(tmp_path, [{"messages": [USER, {"role": "robot", "content": "x"}]}]) == [
        "messages[1].role: unknown role 'robot' (expected system, user or assistant)"]


def test_quality_report_counts_calls_and_coverage(tmp_path):
    ret = call("c2", "start_return", {"order_id": "KB-1", "reason": "faulty"})
    rows = [{"tools": TOOLS}, {"messages": LOOP}, {"messages": [USER, DONE]},
            {"messages": [USER, calling(call("c1"), call("c9", args={"order_id": "KB-2"})), result("c1"),
                          result("c9"), DONE]},
            {"messages": [USER, calling(ret), result("c2"), {**DONE, "weight": 0}, USER, DONE]}]
    report = build_report(load_dataset(write(tmp_path, rows)))
    s = report.tools
    assert s is not None
    assert (s.rows_with_tools, s.rows_with_calls, s.rows_without_call, s.calls) == (4, 3, 1, 4)
    assert s.calls_per_function == {"lookup_order": 3, "start_return": 1}
    assert (s.parallel_calls, s.untrained_turns) == (1, 1)
    assert s.coverage["start_return"] == {"declared": ["order_id", "reason"], "used": ["order_id", "reason"]}
    assert report.multi_turn == 1
    assert report.to_dict()["tools"]["calls"] == 4


def test_quality_warnings_for_tools(tmp_path):
    rows = [{"tools": TOOLS}, {"messages": LOOP}, {"messages": [{"role": "user", "content": "KB-2?"}, *LOOP[1:]]}]
    warnings = build_report(load_dataset(write(tmp_path, rows))).verdict.warnings
    assert "1 declared function never called (start_return): the model cannot learn when to call them" in warnings
    assert ("every example calls a tool: add examples that need no call, or the model learns to always call"
            in warnings)
    assert "2 declared arguments never set by any call: start_return.order_id, start_return.reason" in warnings


def test_prepared_split_keeps_tools(tmp_path):
    rows = [{"tools": TOOLS}] + [
        {"messages": [{"role": "user", "content": f"Where is order number {i} of {i * 7}?"},
                      calling(call("c1", args={"order_id": f"KB-{i}"})), result("c1"), DONE]} for i in range(20)]
    out = prepare(load_dataset(write(tmp_path, rows)), tmp_path / "out", PrepareConfig(eval_fraction=0.2, dedup=False))
    again = [e for name in ("train.jsonl", "eval.jsonl") for e in load_dataset(tmp_path / "out" / name).examples]
    assert len(again) == 20 and all(e.tools == TOOLS for e in again)
    assert sorted(json.dumps(e.messages) for e in again) == sorted(json.dumps(e.messages) for e in out.train + out.eval)


def test_data_check_cli_shows_tool_calls(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from cli_helpers import run

    rows = [{"tools": TOOLS}, {"messages": LOOP}, {"messages": [USER, DONE]}]
    path = write(tmp_path, rows)
    code, out, _ = run(monkeypatch, capsys, "data", "check", str(path), "--model", str(tiny_model_dir))
    assert code == 0
    assert "1 in 1 examples: lookup_order 1 · start_return 0" in out and "1 examples without a call" in out
    assert "template round-trip" in out and "2/2 ok" in out
    code, out, _ = run(monkeypatch, capsys, "data", "check", str(path), "--model", str(tiny_model_dir), "--json")
    assert json.loads(out)["tools"]["calls_per_function"] == {"lookup_order": 1, "start_return": 0}
    bad = write(tmp_path, [{"messages": [USER, result("c")]}])
    code, out, err = run(monkeypatch, capsys, "data", "check", str(bad))
    assert code == 2 and "data.jsonl:1: messages[1]: a tool message must follow" in err and "Traceback" not in err
