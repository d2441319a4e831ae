"""Tool calling on the real server, through the official `openai` client, streamed and not: a tiny model
trained to follow scripted tool conversations (tests/tool_helpers.py) makes the calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tool_helpers import FAQ, SYSTEM, TOOLS, agent_desk, script, script_orders
from tunesmith.model.loading import resolve
from tunesmith.serve.app import ServeConfig, background_server, create_app
from tunesmith.serve.engine import Engine, Limits


@pytest.fixture(scope="module")
def server(scripted_tool_model: Path) -> Iterator[SimpleNamespace]:
    engine = Engine(resolve(str(scripted_tool_model)), base_id="desk", device="cpu",
                    limits=Limits(max_tokens=200, max_prompt_tokens=1500))
    db = agent_desk.open_desk(seed=0)
    with background_server(create_app(engine, ServeConfig())) as url:
        yield SimpleNamespace(url=url, orders=script_orders(db), rows=script(agent_desk.open_desk(seed=0)))


@pytest.fixture
def client(server: SimpleNamespace) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def create(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> Any:
    return client.chat.completions.create(model="desk", messages=messages, temperature=0, **kw)


def streamed(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> tuple[str, list[dict], str]:
    """(content, tool calls, finish reason) put together from the chunks, as a client does."""
    content, calls, finish = "", {}, None
    for chunk in create(client, messages, stream=True, **kw):
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = d.id or slot["id"]
            slot["name"] += (d.function.name or "") if d.function else ""
            slot["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = choice.finish_reason or finish
    return content, [calls[k] for k in sorted(calls)], finish


def test_a_call_comes_back_as_tool_calls(client, server) -> None:
    order = server.orders[1]
    r = create(client, ask(f"Where is my order {order}?"), tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "lookup_order", {"order_id": order})
    assert call.id.startswith("call_")


def test_streamed_call_arrives_as_tool_call_deltas(client, server) -> None:
    order = server.orders[1]
    content, calls, finish = streamed(client, ask(f"Where is my order {order}?"), tools=TOOLS)
    assert (content, finish) == ("", "tool_calls")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("lookup_order", {"order_id": order})]
    assert calls[0]["id"].startswith("call_")


def test_no_call_needed_is_plain_text_streamed_or_not(client) -> None:
    r = create(client, ask(FAQ[0]), tools=TOOLS)
    assert (r.choices[0].message.content, r.choices[0].finish_reason, r.choices[0].message.tool_calls) == (
        FAQ[1], "stop", None)
    assert streamed(client, ask(FAQ[0]), tools=TOOLS) == (FAQ[1], [], "stop")


def test_results_sent_back_get_the_answer(client, server) -> None:
    """The second round of an agent loop: the assistant's call and the tool result go back in."""
    row = server.rows[1]["messages"]  # system, user, call, result, answer
    call = row[2]["tool_calls"][0]
    history = [*row[:2], {"role": "assistant", "content": None, "tool_calls": [call]}, row[3]]
    r = create(client, history, tools=TOOLS)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (row[4]["content"], "stop")


def test_parallel_calls_and_turning_them_off(client, server) -> None:
    o3, o4 = server.orders[2:4]
    question = ask(f"Where are orders {o3} and {o4}?")
    both = create(client, question, tools=TOOLS).choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["order_id"] for c in both] == [o3, o4]
    assert len({c.id for c in both}) == 2
    one = create(client, question, tools=TOOLS, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["order_id"] for c in one.message.tool_calls] == [o3]
    _, calls, _ = streamed(client, question, tools=TOOLS, parallel_tool_calls=False)
    assert [json.loads(c["arguments"])["order_id"] for c in calls] == [o3]
    text = create(client, ask(FAQ[0]), tools=TOOLS, parallel_tool_calls=False).choices[0].message.content
    assert text == FAQ[1]  # a reply without calls is untouched


def test_tool_choice_required_and_named_force_a_call(client, server) -> None:
    order = server.orders[1]
    for choice in ("required", {"type": "function", "function": {"name": "lookup_order"}}):
        r = create(client, ask(f"Where is my order {order}?"), tools=TOOLS, tool_choice=choice)
        (call,) = r.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("lookup_order", {"order_id": order})
        _, calls, finish = streamed(client, ask(f"Where is my order {order}?"), tools=TOOLS, tool_choice=choice)
        assert finish == "tool_calls" and [c["name"] for c in calls] == ["lookup_order"]


def test_tool_choice_none_answers_in_text(client, server) -> None:
    r = create(client, ask(f"Where is my order {server.orders[1]}?"), tools=TOOLS, tool_choice="none", max_tokens=12)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_a_malformed_call_is_returned_as_text_never_an_error(client, server) -> None:
    question = ask(f"Where is my order {server.orders[1]}?")
    r = create(client, question, tools=TOOLS, max_tokens=6)  # the call is cut mid-JSON
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("<tool_call>")
    content, calls, finish = streamed(client, question, tools=TOOLS, max_tokens=6)
    assert (content, calls, finish) == (choice.message.content, [], "length")
    forced = create(client, question, tools=TOOLS, tool_choice="required", max_tokens=2).choices[0]
    assert forced.message.tool_calls is None and forced.message.content.startswith('<tool_call>{"name": "')


@pytest.mark.parametrize(("body", "message"), [
    ({"tool_choice": "required"}, "tool_choice: only allowed when tools are given"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "cancel_order"}}},
     "tool_choice: function 'cancel_order' is not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 3}}}]},
     "tools[0].function.parameters: not a valid JSON Schema: 3 is not of type 'array'"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools.0.function.name: Field required"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
])
def test_bad_tool_requests_are_400s(client, body, message) -> None:
    with pytest.raises(openai.BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        client.chat.completions.create(model="desk", messages=ask("hi"), **body)


def test_tool_message_history_is_validated_by_the_template_not_a_500(server) -> None:
    bad = {"model": "desk", "tools": TOOLS, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "lookup_order", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "{}"}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=bad, timeout=60)
    assert r.status_code == 200  # arguments are rendered as written; the reply is the model's business
