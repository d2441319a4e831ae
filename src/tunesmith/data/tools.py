"""Tool calling in chat data: OpenAI's chat fine-tuning shape, checked and turned into canonical messages.

A `chat` record may carry, as in OpenAI's fine-tuning files:
- `tools`: `[{"type": "function", "function": {"name", "description"?, "parameters"? (JSON Schema)}}]`;
  a file may instead declare one set for every row in a first record holding only `tools`;
- `parallel_tool_calls`: `false` allows at most one call per assistant message;
- messages with role system, user, assistant or tool, each with an optional `name`; assistant messages may
  carry `weight` (0: not trained on, 1: trained on) and `tool_calls`
  (`[{"id", "type": "function", "function": {"name", "arguments": "<JSON object>"}}]`); a tool message
  answers one call with `tool_call_id`;
- the legacy `functions` / `function_call` / role `function`, converted to the above.

Canonical messages always have a string `content` ("" for a call without text); `arguments` stays the JSON
string OpenAI uses. Each problem is `field: message` (the caller prefixes `file:line`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

Message = dict[str, Any]
Tool = dict[str, Any]

RECORD_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
TOOL_ROLES = ("system", "user", "assistant", "tool", "function")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYS = {  # role -> keys a message of that role may have
    "system": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    "assistant": ("role", "content", "name", "weight", "tool_calls", "function_call"),
    "tool": ("role", "content", "tool_call_id", "name"),
    "function": ("role", "content", "name"),
}


def is_tool_record(record: dict[str, Any]) -> bool:
    """A chat record that needs this module: tools declared, or a message beyond plain role/content."""
    if any(k in record for k in ("tools", "functions", "parallel_tool_calls")):
        return True
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (set(m) - {"role", "content"} or m.get("role") in ("tool", "function"))
        for m in messages
    )


def is_tools_header(record: Any) -> bool:
    """A record that only declares the file's tools (the first record of a file)."""
    return isinstance(record, dict) and bool(record) and set(record) <= {"tools", "functions"}


def check_tools(value: Any, field: str = "tools", *, legacy: bool = False) -> tuple[list[Tool] | None, list[str]]:
    """Validated tool definitions in OpenAI's `tools` shape (legacy `functions` are wrapped)."""
    if not isinstance(value, list) or not value:
        return None, [f"{field}: expected a non-empty list of tool definitions, got {_type(value)}"]
    tools, problems, seen = [], [], set()
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if legacy:
            item = {"type": "function", "function": item}
        elif not isinstance(item, dict):
            problems.append(f"{where}: expected an object, got {_type(item)}")
            continue
        else:
            problems += _unexpected(where, item, ("type", "function"))
            if item.get("type") != "function":
                problems.append(f"{where}.type: expected 'function', got {json.dumps(item.get('type'))}")
            where += ".function"
        fn, more = _check_function(where, item.get("function"))
        problems += more
        if fn is not None:
            if fn["name"] in seen:
                problems.append(f"{where}.name: '{fn['name']}' is declared twice")
            seen.add(fn["name"])
            tools.append({"type": "function", "function": fn})
    return (tools if not problems else None), problems


def _check_function(where: str, fn: Any) -> tuple[dict[str, Any] | None, list[str]]:
    if not isinstance(fn, dict):
        return None, [f"{where}: expected an object with name, description, parameters, got {_type(fn)}"]
    problems = _unexpected(where, fn, ("name", "description", "parameters", "strict"))
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(f"{where}.name: expected 1-64 letters, digits, _ or -, got {json.dumps(name)}")
    if "description" in fn and not isinstance(fn["description"], str):
        problems.append(f"{where}.description: expected a string, got {_type(fn['description'])}")
    if "strict" in fn and not isinstance(fn["strict"], bool):
        problems.append(f"{where}.strict: expected true or false, got {_type(fn['strict'])}")
    params = fn.get("parameters")
    if "parameters" in fn:
        error = schema_error(params)
        if error:
            problems.append(f"{where}.parameters: not a valid JSON Schema: {error}")
    return ({k: fn[k] for k in ("name", "description", "parameters", "strict") if k in fn}
            if not problems else None), problems


def schema_error(schema: Any) -> str | None:
    """Why `schema` is not a JSON Schema for an object of arguments (None when it is one)."""
    if not isinstance(schema, dict):
        return f"expected an object, got {_type(schema)}"
    if schema.get("type", "object") != "object":
        return f"arguments are an object, so its type must be 'object', not {json.dumps(schema.get('type'))}"
    from jsonschema.exceptions import SchemaError

    try:
        _validator(json.dumps(schema, sort_keys=True))
    except SchemaError as e:
        return e.message
    return None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator, validators

    schema = json.loads(schema_json)
    cls = validators.validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def argument_errors(tool: Tool, arguments: dict[str, Any]) -> list[str]:
    """Where `arguments` break the function's parameter schema: ['order_id: 5 is not of type 'string'', ...]."""
    params = tool["function"].get("parameters")
    if params is None:
        return []
    errors = sorted(_validator(json.dumps(params, sort_keys=True)).iter_errors(arguments),
                    key=lambda e: [str(p) for p in e.path])
    return [("".join(f".{p}" for p in e.path)[1:] + ": " if e.path else "") + e.message for e in errors]


def parse_arguments(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A call's arguments as a dict from OpenAI's JSON string (a dict is taken as is), or why not."""
    if isinstance(value, dict):
        return value, None
    if not isinstance(value, str):
        return None, f"expected a JSON object in a string, got {_type(value)}"
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(parsed, dict):
        return None, f"expected a JSON object, got {_type(parsed)}"
    return parsed, None


def chat_messages(record: dict[str, Any]) -> tuple[list[Message] | None, list[str]]:
    """Canonical messages of a chat record with tools (keys already checked), and every problem."""
    tools, problems = None, []
    if "tools" in record and "functions" in record:
        problems.append("functions: give either tools or the legacy functions, not both")
    elif "tools" in record or "functions" in record:
        key = "tools" if "tools" in record else "functions"
        tools, problems = check_tools(record[key], key, legacy=key == "functions")
    bad_tools = bool(problems)  # calls cannot be checked against broken definitions
    parallel = record.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        problems.append(f"parallel_tool_calls: expected true or false, got {_type(parallel)}")
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        return None, [*problems, f"messages: expected a non-empty list of messages, got {_type(raw)}"]
    messages: list[Message] = []
    for i, m in enumerate(raw):
        msg, more = _message(f"messages[{i}]", m)
        problems += more
        if msg is not None:
            messages.append(msg)
    if len(messages) < len(raw):
        return None, problems
    _legacy_ids(messages)
    problems += _check_order(messages, parallel is not False)
    if not bad_tools:
        problems += _check_calls(messages, {t["function"]["name"]: t for t in tools or []}, tools is not None)
    if not problems and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        problems.append("messages: every assistant message has weight 0; nothing would be trained on")
    return (messages if not problems else None), problems


def record_tools(record: dict[str, Any]) -> list[Tool] | None:
    """The validated tools of a record (legacy functions wrapped); call after `chat_messages` found no problem."""
    key = "tools" if "tools" in record else "functions" if "functions" in record else None
    return check_tools(record[key], key, legacy=key == "functions")[0] if key else None


def _message(where: str, m: Any) -> tuple[Message | None, list[str]]:
    if not isinstance(m, dict):
        return None, [f"{where}: expected an object with role and content, got {_type(m)}"]
    role = m.get("role")
    if role not in TOOL_ROLES:
        shown = "missing key" if "role" not in m else f"unknown role {json.dumps(role)}"
        return None, [f"{where}.role: {shown} (expected system, user, assistant or tool)"]
    problems = _unexpected(where, m, _KEYS[role], f"a {role} message has")
    calls = "tool_calls" in m or "function_call" in m
    content, error = _content(m.get("content"), optional=role in ("tool", "function") or calls)
    if "content" not in m and not (role == "assistant" and calls):
        problems.append(f"{where}.content: missing key")
    elif error:
        problems.append(f"{where}.content: {error}")
    if "name" in m and (not isinstance(m["name"], str) or not NAME.match(m["name"])):
        problems.append(f"{where}.name: expected 1-64 letters, digits, _ or -, got {json.dumps(m['name'])}")
    if "weight" in m and (type(m["weight"]) is not int or m["weight"] not in (0, 1)):
        problems.append(f"{where}.weight: expected 0 (not trained on) or 1, got {json.dumps(m['weight'])}")
    out: Message = {"role": "tool" if role == "function" else role, "content": content}
    out.update({k: m[k] for k in ("name", "tool_call_id", "weight") if k in m})
    if "tool_calls" in m and "function_call" in m:
        problems.append(f"{where}.function_call: give either tool_calls or the legacy function_call, not both")
    elif calls:
        out["tool_calls"], more = _calls(where, m)
        problems += more
    if role == "tool" and not (isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]):
        problems.append(f"{where}.tool_call_id: " + ("missing key; a tool message names the call it answers"
                                                      if "tool_call_id" not in m else "expected a non-empty string"))
    return (out if not problems else None), problems


def _content(value: Any, *, optional: bool) -> tuple[str, str | None]:
    """Text of a content value: a string or OpenAI's list of text parts."""
    if value is None:
        return "", None if optional else "expected a string, got null"
    if isinstance(value, list):
        kinds = {p.get("type") if isinstance(p, dict) else None for p in value}
        if kinds - {"text"} or not all(isinstance(p.get("text"), str) for p in value):
            return "", "expected a string or a list of {type: text, text} parts (images and audio are not supported)"
        value = "".join(p["text"] for p in value)
    if not isinstance(value, str):
        return "", f"expected a string, got {_type(value)}"
    if not optional and not value.strip():
        return "", "empty text" if not value else "only whitespace"
    return value, None


def _calls(where: str, m: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    if "function_call" in m:  # legacy: one call, its id is given once the conversation is read
        value, legacy = [{"id": "", "type": "function", "function": m["function_call"]}], True
        where = f"{where}.function_call"
    else:
        value, where, legacy = m["tool_calls"], f"{where}.tool_calls", False
    if not isinstance(value, list) or not value:
        return [], [f"{where}: expected a non-empty list of calls, got {_type(value)}"]
    calls, problems = [], []
    for j, c in enumerate(value):
        here = where if legacy else f"{where}[{j}]"
        if not isinstance(c, dict):
            problems.append(f"{here}: expected an object with id, type, function, got {_type(c)}")
            continue
        problems += _unexpected(here, c, ("id", "type", "function"))
        if not legacy and not (isinstance(c.get("id"), str) and c["id"]):
            problems.append(f"{here}.id: expected a non-empty string, got {json.dumps(c.get('id'))}")
        if c.get("type", "function") != "function":
            problems.append(f"{here}.type: expected 'function', got {json.dumps(c.get('type'))}")
        fn = c.get("function")
        fn_where = here if legacy else f"{here}.function"
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            problems.append(f"{fn_where}: expected an object with name and arguments, got {_type(fn)}")
            continue
        problems += _unexpected(fn_where, fn, ("name", "arguments"))
        args, error = parse_arguments(fn.get("arguments", "{}"))
        if error:
            problems.append(f"{fn_where}.arguments: {error}")
            continue
        text = fn["arguments"] if isinstance(fn.get("arguments"), str) else json.dumps(args, ensure_ascii=False)
        calls.append({"id": c.get("id", ""), "type": "function", "function": {"name": fn["name"], "arguments": text}})
    return calls, problems


def _legacy_ids(messages: list[Message]) -> None:
    """Legacy function calls get ids, and each function result the id of the call before it."""
    last = ""
    for k, m in enumerate(messages):
        for c in m.get("tool_calls", []):
            if not c["id"]:
                c["id"] = last = f"call_{k}"
        if m["role"] == "tool" and "tool_call_id" not in m:
            m["tool_call_id"] = last


def _check_order(messages: list[Message], parallel: bool) -> list[str]:
    """Optional system first; user, then assistant; calls answered by tool messages; ending with assistant."""
    pending: dict[str, str] = {}  # unanswered call id -> function name
    seen: set[str] = set()
    prev = None
    for i, m in enumerate(messages):
        role, where = m["role"], f"messages[{i}]"
        if role == "system" and i > 0:
            return [f"{where}.role: 'system' where another role was expected (a system message may only come first)"]
        if role == "tool":
            cid = m["tool_call_id"]
            if prev not in ("assistant_calls", "tool"):
                return [f"{where}: a tool message must follow an assistant message with tool_calls"]
            if cid not in pending:
                what = ("answers a call already answered" if cid in seen
                        else "answers no call of the assistant message before it")
                return [f"{where}.tool_call_id: '{cid}' {what}"]
            del pending[cid]
        elif pending:
            ids = ", ".join(f"'{c}' ({name})" for c, name in pending.items())
            return [f"{where}: call {ids} has no tool message answering it before this {role} message"]
        expected = {None: ("system", "user"), "system": ("user",), "user": ("assistant",),
                    "assistant": ("user",), "assistant_calls": ("tool",), "tool": ("tool", "assistant")}[prev]
        if role not in expected:
            return [f"{where}.role: '{role}' where {' or '.join(repr(e) for e in expected)} was expected"]
        calls = m.get("tool_calls", [])
        if calls and not parallel and len(calls) > 1:
            return [f"{where}.tool_calls: {len(calls)} calls in one message, but parallel_tool_calls is false"]
        for c in calls:
            if c["id"] in seen:
                return [f"{where}.tool_calls: duplicate tool_call_id '{c['id']}'"]
            seen.add(c["id"])
            pending[c["id"]] = c["function"]["name"]
        prev = "assistant_calls" if calls else role
    if messages[-1]["role"] != "assistant":
        last = messages[-1]["role"]
        return [f"messages[{len(messages) - 1}].role: the last message is '{last}'; "
                "a chat example must end with an assistant message to train on"]
    return []


def _check_calls(messages: list[Message], tools: dict[str, Tool], declared: bool) -> list[str]:
    """Every call names a declared function and passes its parameter schema."""
    problems = []
    for i, j, call in iter_calls(messages):
        where = f"messages[{i}].tool_calls[{j}].function"
        name = call["function"]["name"]
        if name not in tools:
            known = f"declared: {', '.join(tools)}" if declared else "the row declares no tools"
            problems.append(f"{where}.name: calls '{name}', which is not declared ({known})")
            continue
        args, _ = parse_arguments(call["function"]["arguments"])
        problems += [f"{where}.arguments: {e}" for e in argument_errors(tools[name], args or {})]
    return problems


def message_text(m: Message) -> str:
    """A message's text with its calls written out, for comparing messages (duplicates, conflicts)."""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or []]
    return " ".join([m["content"], *calls]) if calls else m["content"]


def iter_calls(messages: list[Message]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(message index, call index, call) of every tool call in a conversation."""
    for i, m in enumerate(messages):
        for j, call in enumerate(m.get("tool_calls") or []):
            yield i, j, call


def _unexpected(where: str, obj: dict[str, Any], allowed: tuple[str, ...], noun: str | None = None) -> list[str]:
    has = noun or "allowed:"
    return [f"{where}.{k}: unexpected key ({has} {', '.join(allowed)})" for k in obj if k not in allowed]


def _type(value: Any) -> str:
    from tunesmith.data.validate import json_type

    return json_type(value)
