"""examples/agent.py against a real `tunesmith serve` app: a multi-step conversation, tools run on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import agent  # examples/agent.py: conftest puts examples/ on the path
import openai
import pytest

from cli_helpers import one_thread  # noqa: F401  (autouse: tiny-model tests on one thread)
from tool_helpers import FAQ, SYSTEM, TOOLS, agent_desk, script, script_orders
from tunesmith.model.loading import resolve
from tunesmith.serve.app import ServeConfig, background_server, create_app
from tunesmith.serve.engine import Engine, Limits


@pytest.fixture(scope="module")
def client(scripted_tool_model: Path) -> Iterator[openai.OpenAI]:
    engine = Engine(resolve(str(scripted_tool_model)), base_id="desk", device="cpu",
                    limits=Limits(max_tokens=200, max_prompt_tokens=1500))
    with background_server(create_app(engine, ServeConfig())) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_agent_completes_a_multi_step_conversation(client: openai.OpenAI, monkeypatch) -> None:
    db = agent_desk.open_desk(seed=0)
    o1, o2, *_ = script_orders(db)
    monkeypatch.setattr(agent, "TOOLS", TOOLS)
    monkeypatch.setattr(agent, "SYSTEM", SYSTEM)
    said: list[str] = []
    questions = [f"Is the kettle from order {o1} still under warranty?", f"Where is my order {o2}?", FAQ[0]]
    messages = agent.converse(client, "desk", questions, db, say=said.append)
    expected = script(agent_desk.open_desk(seed=0))[0]["messages"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
             for m in messages for c in m.get("tool_calls") or []]
    assert calls == [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                     for m in expected for c in m.get("tool_calls") or []]
    assert [m["content"] for m in messages if m["role"] == "tool"] == [
        m["content"] for m in expected if m["role"] == "tool"]  # the tools really ran, on the same shop
    answers = [m["content"] for m in messages if m["role"] == "assistant" and not m.get("tool_calls")]
    assert answers == [m["content"] for m in expected if m["role"] == "assistant" and not m.get("tool_calls")]
    assert said[1].startswith("  -> lookup_order(") and said[3].startswith("  -> check_warranty(")
