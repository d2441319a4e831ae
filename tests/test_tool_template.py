"""Rendering tool conversations: the fallback for templates without tools, a template's own tool syntax when it
has one, labels on calls (never on results or weight-0 turns), the round trip, and reading replies back."""

from __future__ import annotations

import copy
import json

import pytest

from tunesmith.data.tokenize import IGNORE, encode, encode_prompt, render
from tunesmith.data.tool_template import (
    FALLBACK,
    CallSyntax,
    format_call,
    native_syntax,
    parse_reply,
    syntax,
    tools_block,
)

TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


def _call(cid: str, order: str) -> dict:
    return {"id": cid, "type": "function",
            "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": order})}}


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where are KB-1 and KB-2?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [_call("c1", "KB-1"), _call("c2", "KB-2")]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
    {"role": "tool", "tool_call_id": "c2", "content": '{"status": "lost"}'},
    {"role": "assistant", "content": "One shipped, one is lost."},
]

# A Hermes / Qwen2.5-style template that renders tools itself (calls in <tool_call> tags, results as user turns).
HERMES = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}\n{% endif %}"
    "{% for tc in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STRICT = ("{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('unknown role') }}{% endif %}{{ m.role + ': ' + m.content + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture
def hermes(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = HERMES
    return tok


def supervised_text(tok, enc) -> str:
    return tok.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE])


def test_fallback_renders_tools_calls_and_results(tiny_tokenizer):
    assert native_syntax(tiny_tokenizer) is None and syntax(tiny_tokenizer) == FALLBACK
    text = render(tiny_tokenizer, CHAT, generation_prompt=False, tools=TOOLS)
    calls = "\n".join(format_call("lookup_order", {"order_id": o}) for o in ("KB-1", "KB-2"))
    assert text == (
        f"<|im_start|>system\nBe brief.\n\n{tools_block(TOOLS)}<|im_end|>\n"
        "<|im_start|>user\nWhere are KB-1 and KB-2?<|im_end|>\n"
        f"<|im_start|>assistant\nChecking.\n{calls}<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"status": "shipped"}\n</tool_response>\n'
        '<tool_response>\n{"status": "lost"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\nOne shipped, one is lost.<|im_end|>\n"
    )
    assert '{"name":"lookup_order","description":"Find an order"' in tools_block(TOOLS)


def test_fallback_adds_a_system_turn_when_there_is_none(tiny_tokenizer):
    text = render(tiny_tokenizer, CHAT[1:2], generation_prompt=True, tools=TOOLS)
    assert text.startswith(f"<|im_start|>system\n{tools_block(TOOLS)}<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("template", ["fallback", "hermes"])
def test_labels_cover_calls_and_answers_never_results(tiny_tokenizer, hermes, template):
    tok = tiny_tokenizer if template == "fallback" else hermes
    enc = encode(tok, CHAT, tools=TOOLS)
    text = supervised_text(tok, enc)
    assert enc.roundtrip_ok and not enc.truncated
    assert "Checking." in text and text.count("lookup_order") == 2 and "One shipped, one is lost." in text
    assert "shipped\"}" not in text and "tool_response" not in text and "Be brief" not in text
    assert text.count(tok.eos_token) == 2  # each assistant turn learns to stop


def test_weight_zero_turns_are_not_trained_on(tiny_tokenizer):
    chat = copy.deepcopy(CHAT)
    chat[2]["weight"] = 0
    text = supervised_text(tiny_tokenizer, encode(tiny_tokenizer, chat, tools=TOOLS))
    assert "Checking." not in text and "lookup_order" not in text and text.startswith("One shipped")


@pytest.mark.parametrize("template", ["fallback", "hermes"])
def test_prompt_at_each_turn_is_a_prefix_of_training_tokens(tiny_tokenizer, hermes, template):
    """Serving and evaluation feed exactly the tokens training saw before each assistant turn."""
    tok = tiny_tokenizer if template == "fallback" else hermes
    full = encode(tok, CHAT, tools=TOOLS).input_ids
    for i in (2, 5):
        prompt = encode_prompt(tok, CHAT[:i], tools=TOOLS)
        assert full[: len(prompt)] == prompt
        assert full[len(prompt)] == encode(tok, CHAT, tools=TOOLS).labels[len(prompt)]  # the reply starts trained


def test_own_template_is_probed_for_its_call_syntax(hermes):
    syn = native_syntax(hermes)
    assert syn == CallSyntax("<tool_call>\n", "\n</tool_call>", "arguments", native=True)
    text = render(hermes, CHAT, generation_prompt=False, tools=TOOLS)
    assert "# Tools\n<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) in text  # the template's own layout
    assert '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "KB-1"}}\n</tool_call>' in text
    reply = parse_reply('<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "KB-7"}}\n</tool_call>', syn)
    assert reply.calls == [{"name": "lookup_order", "arguments": {"order_id": "KB-7"}}]


def test_a_template_that_rejects_the_tool_role_gets_the_fallback(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = STRICT
    assert native_syntax(tok) is None
    text = render(tok, CHAT, generation_prompt=False, tools=TOOLS)
    assert "user: <tool_response>" in text and "assistant: Checking.\n<tool_call>" in text


@pytest.mark.parametrize(("text", "content", "calls", "malformed"), [
    ("It shipped.", "It shipped.", [], False),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', "", [{"name": "f", "arguments": {"a": 1}}], False),
    ('Let me look.\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "g", "arguments": '
     '{"b": [1]}}</tool_call>', "Let me look.",
     [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"b": [1]}}], False),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}}', "", [{"name": "f", "arguments": {"a": 1}}], False),  # no tag
    ('<tool_call>{"name": "f", "arguments": {"a": 1</tool_call>', None, [], True),  # cut JSON
    ('<tool_call>{"name": "f", "arguments": "a=1"}</tool_call>', None, [], True),  # arguments not an object
    ('<tool_call>{"arguments": {}}</tool_call>', None, [], True),  # no name
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call> and then chatter', None, [], True),
])
def test_parse_reply(text, content, calls, malformed):
    reply = parse_reply(text, FALLBACK)
    assert (reply.calls, reply.malformed, reply.attempted) == (calls, malformed, bool(calls) or malformed)
    assert reply.content == (text if content is None else content)


def test_bare_json_syntax_reads_parameters():
    syn = CallSyntax("", "", "parameters", native=True)
    assert parse_reply('{"name": "f", "parameters": {"x": 2}}', syn).calls == [{"name": "f", "arguments": {"x": 2}}]
    assert parse_reply("plain words", syn).calls == []


def test_forced_prefix_tokenizes_as_the_trained_call_does(tiny_tokenizer):
    """A prefix ending inside a pre-token would feed the model a token sequence training never showed it."""
    call = format_call("lookup_order", {"order_id": "KB-1"})
    for prefix in (FALLBACK.forced_prefix(), FALLBACK.forced_prefix("lookup_order")):
        assert call.startswith(prefix)
        ids = tiny_tokenizer(call, add_special_tokens=False)["input_ids"]
        head = tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"]
        assert ids[: len(head)] == head


def test_forced_prefix_starts_a_call_the_parser_reads():
    assert FALLBACK.forced_prefix() == '<tool_call>{"name": "'
    named = FALLBACK.forced_prefix("lookup_order")
    assert named == '<tool_call>{"name": "lookup_order", "arguments":'
    assert parse_reply(named + ' {"order_id": "KB-1"}}</tool_call>', FALLBACK).calls == [
        {"name": "lookup_order", "arguments": {"order_id": "KB-1"}}]
