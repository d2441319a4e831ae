"""The record shapes of other tools (ShareGPT, TRL's conversational prompt/completion), plain text, and column
mapping: what each becomes, and every validation problem with its line and field (messages are UI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import load_dataset, parse_columns
from tunesmith.errors import ConfigError, DataError


def _jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _problems(path: Path, fmt: str = "auto", columns: str | None = None) -> list[str]:
    with pytest.raises(DataError) as e:
        load_dataset(path, fmt, columns)  # type: ignore[arg-type]
    return [p.removeprefix(f"{path}:") for p in e.value.problems]


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": who, "value": text} for who, text in pairs]


SYSTEM, USER, ASSISTANT = ({"role": r, "content": c} for r, c in
                           (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")))


# --- ShareGPT ---------------------------------------------------------------------------------------------------


def test_sharegpt_roles_map_to_chat(tmp_path):
    rows = [
        {"conversations": _turns(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello!"))},
        {"conversations": _turns(("user", "Hi"), ("assistant", "Hello!"))},  # the chat names work under `from` too
        {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!")), "system": "Be brief."},  # LLaMA-Factory
        {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!")), "system": ""},  # "": no system prompt
        {"conversations": [USER, ASSISTANT]},  # the role/content variant
    ]
    data = load_dataset(_jsonl(tmp_path, rows))
    assert data.format == "sharegpt"
    assert [e.messages for e in data.examples] == [[SYSTEM, USER, ASSISTANT], [USER, ASSISTANT],
                                                   [SYSTEM, USER, ASSISTANT], [USER, ASSISTANT], [USER, ASSISTANT]]


def test_sharegpt_turn_problems_name_the_record_fields(tmp_path):
    path = _jsonl(tmp_path, [
        {"conversations": [{"from": "gpt", "value": "hi"}, {"from": "bot", "value": ""}, "hello",
                           {"from": 3, "text": "a"}]},
        {"conversations": []},
        {"conversations": "human: hi"},
        {"conversations": _turns(("human", "a"), ("gpt", "b")), "id": 7, "system": 1},
    ])
    assert _problems(path) == [
        "1: conversations[1].from: unknown role 'bot' (expected human, gpt, system, function_call or observation)",
        "1: conversations[1].value: empty text",
        "1: conversations[2]: expected an object with from and value, got string",
        "1: conversations[3].value: missing key",
        "1: conversations[3].text: unexpected key (a turn has from, value)",
        "1: conversations[3].from: expected a string, got number",
        "2: conversations: empty list; a conversation needs a human turn and a gpt reply",
        "3: conversations: expected a list of messages, got string",
        "4: id: unexpected key (a sharegpt record has only conversations, system, tools)",
        "4: system: expected a string, got number",
    ]


@pytest.mark.parametrize(("turns", "problem"), [
    (_turns(("human", "a"), ("human", "b")),
     "conversations[1].from: 'human' where 'gpt' was expected (roles alternate)"),
    (_turns(("gpt", "a"), ("human", "b")), "conversations[0].from: 'gpt' where 'human' was expected (roles alternate)"),
    (_turns(("human", "a"), ("gpt", "b"), ("human", "c")),
     "conversations[2].from: the last message is 'human'; a chat example must end with an assistant reply to train on"),
    (_turns(("human", "a"), ("system", "s"), ("gpt", "b")),
     "conversations[1].from: 'system' where 'gpt' was expected (a system message may only come first)"),
    ([USER, {"role": "user", "content": "b"}],
     "conversations[1].role: 'user' where 'assistant' was expected (roles alternate)"),
])
def test_sharegpt_turn_order(tmp_path, turns, problem):
    assert _problems(_jsonl(tmp_path, [{"conversations": turns}])) == [f"1: {problem}"]


def test_sharegpt_system_given_twice(tmp_path):
    path = _jsonl(tmp_path, [{"conversations": _turns(("system", "s"), ("human", "a"), ("gpt", "b")), "system": "t"}])
    assert _problems(path) == ["1: system: given twice, as the system key and as conversations[0]; keep one"]


# --- ShareGPT tool calling (LLaMA-Factory's function_call / observation turns) -------------------------------------

LOOKUP = {"name": "lookup_order", "description": "Find an order",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}


def _call(*calls: tuple[str, dict]) -> str:
    items = [{"name": n, "arguments": a} for n, a in calls]
    return json.dumps(items if len(items) > 1 else items[0])


def test_sharegpt_tool_turns_become_tool_calls(tmp_path):
    rows = [
        {"conversations": _turns(("human", "Where is A1?"),
                                 ("function_call", _call(("lookup_order", {"order_id": "A1"}))),
                                 ("observation", '{"status": "shipped"}'), ("gpt", "It has shipped.")),
         "tools": json.dumps([LOOKUP]), "system": "Be brief."},  # LLaMA-Factory: tools as a JSON string
        {"conversations": _turns(("human", "A1 and B2?"),
                                 ("function_call", _call(("lookup_order", {"order_id": "A1"}),
                                                         ("lookup_order", {"order_id": "B2"}))),
                                 ("observation", "shipped"), ("observation", "packed"), ("gpt", "Shipped; packed.")),
         "tools": [{"type": "function", "function": LOOKUP}]},  # OpenAI's wrapped definitions, as a list
        {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!")), "tools": json.dumps([LOOKUP])},  # no call
        {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!")), "tools": ""},  # "": no tools
    ]
    data = load_dataset(_jsonl(tmp_path, rows))
    first, parallel, no_call, plain = data.examples
    assert first.messages == [
        SYSTEM, {"role": "user", "content": "Where is A1?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1_0", "type": "function",
             "function": {"name": "lookup_order", "arguments": '{"order_id": "A1"}'}}]},
        {"role": "tool", "content": '{"status": "shipped"}', "tool_call_id": "call_1_0"},
        {"role": "assistant", "content": "It has shipped."},
    ]
    assert first.tools == parallel.tools == no_call.tools == [{"type": "function", "function": LOOKUP}]
    assert [m.get("tool_call_id") for m in parallel.messages] == [None, None, "call_1_0", "call_1_1", None]
    assert no_call.messages == [USER | {"content": "Hi"}, ASSISTANT] and plain.tools is None


def test_sharegpt_tool_problems_name_the_turn(tmp_path):
    bad_args = _call(("lookup_order", {"order_id": 5}), ("lookup_order", {}))
    path = _jsonl(tmp_path, [
        {"conversations": _turns(("human", "a"), ("function_call", _call(("cancel", {}))), ("observation", "x"),
                                 ("gpt", "b")), "tools": [LOOKUP]},
        {"conversations": _turns(("human", "a"), ("function_call", "lookup_order(A1)"), ("observation", "x"),
                                 ("gpt", "b")), "tools": [LOOKUP]},
        {"conversations": _turns(("human", "a"), ("observation", "x"), ("gpt", "b"))},
        {"conversations": _turns(("human", "a"), ("function_call", bad_args), ("observation", "x"),
                                 ("observation", "y"), ("gpt", "b")), "tools": [LOOKUP]},
        {"conversations": _turns(("human", "a"), ("gpt", "b")), "tools": "[{"},
    ])
    assert _problems(path) == [
        "1: conversations[1].value.name: calls 'cancel', which is not declared (declared: lookup_order)",
        "2: conversations[1].value: not JSON (Expecting value at column 1); a function_call turn holds "
        '{"name": ..., "arguments": {...}}',
        "3: conversations[1].from: 'observation' is a tool result, but no function_call turn before it has a call "
        "left to answer (one result per call)",
        "4: conversations[1].value[0].arguments: order_id: 5 is not of type 'string'",
        "4: conversations[1].value[1].arguments: 'order_id' is a required property",
        "5: tools: not a JSON list of tool definitions (Expecting property name enclosed in double quotes at "
        "column 3)",
    ]


def test_sharegpt_tools_column_of_a_parquet_file_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    turns = _turns(("human", "Where is A1?"), ("function_call", _call(("lookup_order", {"order_id": "A1"}))),
                   ("observation", "shipped"), ("gpt", "It has shipped."))
    rows = [{"conversations": turns, "tools": json.dumps([LOOKUP]), "id": 1},
            {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!")), "tools": None, "id": 2}]  # null: no tools
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    data = load_dataset(tmp_path / "t.parquet")
    assert [e.tools for e in data.examples] == [[{"type": "function", "function": LOOKUP}], None]
    assert data.ignored_columns == ["id"]


def test_file_level_tools_only_for_formats_that_call_them(tmp_path):
    path = _jsonl(tmp_path, [{"tools": [{"type": "function", "function": LOOKUP}]}, {"prompt": "a", "completion": "b"}])
    assert _problems(path) == [" tools: the first record declares tools, but prompt_completion records cannot call "
                               "them; tools go with the chat or sharegpt format"]
    sharegpt = _jsonl(tmp_path, [{"tools": [{"type": "function", "function": LOOKUP}]},
                                 {"conversations": _turns(("human", "Hi"), ("gpt", "Hello!"))}], "s.jsonl")
    assert load_dataset(sharegpt).examples[0].tools == [{"type": "function", "function": LOOKUP}]


# --- TRL's conversational prompt/completion ---------------------------------------------------------------------


def test_chat_prompt_completion_is_prompt_then_completion(tmp_path):
    rows = [{"prompt": [SYSTEM, USER], "completion": [ASSISTANT]},
            {"prompt": [USER, ASSISTANT, USER], "completion": [ASSISTANT]}]
    data = load_dataset(_jsonl(tmp_path, rows))
    assert data.format == "chat_prompt_completion"
    assert [e.messages for e in data.examples] == [[SYSTEM, USER, ASSISTANT], [USER, ASSISTANT, USER, ASSISTANT]]


def test_chat_prompt_completion_problems(tmp_path):
    path = _jsonl(tmp_path, [
        {"prompt": [USER], "completion": "Hello!"},
        {"prompt": [], "completion": [{"role": "assistant", "content": "A", "score": 1}]},
        {"prompt": [USER, USER], "completion": [ASSISTANT]},
        {"prompt": [USER], "completion": [USER]},
        {"prompt": [{"role": "robot", "content": " "}], "completion": [ASSISTANT, USER]},
        {"prompt": [USER]},
    ])
    assert _problems(path) == [
        "1: completion: expected a list of messages (the conversational shape), got string",
        "2: prompt: empty list of messages",
        "2: completion[0].score: unexpected key (a message has role, content)",
        "3: prompt[1].role: 'user' where 'assistant' was expected (roles alternate)",
        "4: completion[0].role: 'user'; the completion is the assistant's reply",
        "5: prompt[0].role: unknown role 'robot' (expected system, user or assistant)",
        "5: prompt[0].content: only whitespace",
        "6: completion: missing key (a chat_prompt_completion record has prompt, completion)",
    ]


def test_prompt_completion_order_problem_lands_in_the_completion(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": [USER], "completion": [ASSISTANT, USER]}])
    assert _problems(path) == ["1: completion[1].role: the last message is 'user'; a chat example must end with an "
                               "assistant reply to train on"]


# --- text ---------------------------------------------------------------------------------------------------------


def test_text_records_are_documents(tmp_path):
    data = load_dataset(_jsonl(tmp_path, [{"text": "The Lumen Guild was founded in 1897."}, {"text": "  b\n"}]))
    assert data.format == "text"
    assert [(e.text, e.messages, e.content) for e in data.examples] == [
        ("The Lumen Guild was founded in 1897.", [], "The Lumen Guild was founded in 1897."), ("  b\n", [], "  b\n")]


def test_text_problems(tmp_path):
    path = _jsonl(tmp_path, [{"text": ""}, {"text": 3, "id": 1}, {"text": " \n"}, ["a"]])
    assert _problems(path) == [
        "1: text: empty text",
        "2: id: unexpected key (a text record has only text)",
        "2: text: expected a string, got number",
        "3: text: only whitespace",
        "4: record: expected a JSON object, got array",
    ]
    assert _problems(_jsonl(tmp_path, [{"body": "x"}], "e.jsonl"), "text") == [
        "1: text: missing key (a text record has text)", "1: body: unexpected key (a text record has only text)"]


def test_one_file_holds_one_shape(tmp_path):
    path = _jsonl(tmp_path, [{"conversations": _turns(("human", "a"), ("gpt", "b"))}] * 2
                  + [{"messages": [USER, ASSISTANT]}, {"text": "doc"}, {"prompt": [USER], "completion": [ASSISTANT]}])
    assert _problems(path) == [
        "3: format: looks like chat (messages) but the file is sharegpt (conversations/system); one file holds one "
        "format",
        "4: format: looks like text (text) but the file is sharegpt (conversations/system); one file holds one format",
        "5: format: looks like chat_prompt_completion (prompt/completion) but the file is sharegpt "
        "(conversations/system); one file holds one format",
    ]


# --- column mapping -----------------------------------------------------------------------------------------------


def test_columns_map_other_names(tmp_path):
    path = _jsonl(tmp_path, [{"question": "Q", "answer": "A"}])
    data = load_dataset(path, columns="prompt=question, completion=answer")
    assert data.format == "prompt_completion"
    assert data.examples[0].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    swapped = load_dataset(_jsonl(tmp_path, [{"prompt": "A", "completion": "Q"}], "s.jsonl"),
                           columns={"prompt": "completion", "completion": "prompt"})
    assert swapped.examples[0].messages[0]["content"] == "Q"
    docs = load_dataset(_jsonl(tmp_path, [{"body": "doc"}], "t.jsonl"), columns="text=body")
    assert docs.format == "text" and docs.examples[0].text == "doc"
    dialog = load_dataset(_jsonl(tmp_path, [{"dialog": _turns(("human", "a"), ("gpt", "b"))}], "c.jsonl"),
                          columns="conversations=dialog")
    assert dialog.format == "sharegpt"


def test_a_mapped_column_a_record_lacks_is_a_missing_key(tmp_path):
    path = _jsonl(tmp_path, [{"question": "Q", "answer": "A"}, {"question": "Q"}])
    assert _problems(path, columns="prompt=question,completion=answer") == [
        "2: completion: missing key (a prompt_completion record has prompt, completion)"]


@pytest.mark.parametrize(("spec", "message"), [
    ("prompt", "--columns 'prompt': expected KEY=COLUMN pairs separated by commas"),
    ("prompt=,completion=b", "--columns 'prompt=,completion=b': expected KEY=COLUMN pairs"),
    ("answer=completion", "--columns: 'answer' is not a key of any format; map columns to messages, conversations"),
    ("prompt=q,completion=q", "--columns: one column is mapped to two keys in prompt=q,completion=q"),
])
def test_bad_column_specs(spec, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_columns(spec)
