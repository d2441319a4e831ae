"""Record shapes of other tools, and plain text: check one record and turn it into canonical form.

- `sharegpt`: `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}`, the shape of
  Axolotl, LLaMA-Factory and Unsloth. Roles: human/user -> user, gpt/assistant -> assistant, system -> system.
  The `{"role", "content"}` variant under `conversations` is read too, and an optional top-level `system`
  string (LLaMA-Factory's column) becomes the first message. Tool calling as LLaMA-Factory writes it: a
  `function_call` turn (the value a JSON `{"name", "arguments"}`, or a list of them for parallel calls) is an
  assistant message with `tool_calls`; an `observation` (or `tool`) turn answers the next unanswered call; the
  optional `tools` key (a JSON string or a list of function definitions) declares what may be called. These
  are then checked exactly as OpenAI's chat shape (`tools`).
- `chat_prompt_completion`: TRL's conversational prompt-completion, `{"prompt": [messages], "completion":
  [messages]}`; the conversation is prompt + completion, and the completion starts with the assistant.
- `text`: `{"text": ...}`, a document for language modelling (continued pre-training): no roles, every token
  is trained on.

Problems name the record's own fields (`conversations[2].from`, `completion[0].role`), so they point at what
the user wrote. The chat messages produced pass the same checks as the `chat` format (`validate`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunesmith.data import tools as tool_data
from tunesmith.data import validate
from tunesmith.data.validate import Messages, json_type

# format -> (required keys, optional keys), for the formats read here
KEYS: dict[str, tuple[list[str], list[str]]] = {
    "sharegpt": (["conversations"], ["system", "tools"]),
    "chat_prompt_completion": (["prompt", "completion"], []),
    "text": (["text"], []),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ShareGPT's tool turns (LLaMA-Factory's function_call/observation, Axolotl's tool) -> canonical roles
SHAREGPT_TOOL_ROLES = {"function_call": "function_call", "observation": "tool", "tool": "tool"}
TOOL_FORMATS = ("chat", "sharegpt")  # the formats whose records may declare and call tools
KEY_ORDER = ["messages", "conversations", "system", "prompt", "completion", "instruction", "input", "output", "text"]
COLUMN_KEYS = [*KEY_ORDER, "tools"]  # what --columns may map a column to


def detect(record: dict[str, Any]) -> str | None:
    """The format a record's keys (and, for prompt/completion, value types) point to; None when unknown."""
    keys = set(record)
    if "conversations" in keys and "messages" not in keys:
        return "sharegpt"
    if keys & {"prompt", "completion"} and any(isinstance(record.get(k), list) for k in ("prompt", "completion")):
        return "chat_prompt_completion"
    found = validate.detect_format(record)
    if found is None and "text" in keys:
        return "text"
    return found


def keys(fmt: str) -> tuple[list[str], list[str]]:
    """A format's required and optional keys."""
    return KEYS.get(fmt) or validate.FORMAT_KEYS[fmt]


def keys_of(fmt: str) -> str:
    """`prompt/completion`: a format's keys, for messages."""
    required, optional = keys(fmt)
    return "/".join(sorted((k for k in required + optional if k in KEY_ORDER), key=KEY_ORDER.index))


def record_tools(record: dict[str, Any], fmt: str) -> list[dict[str, Any]] | None:
    """The validated tools of a record that `convert` found no problem in (OpenAI's shape), or None."""
    if fmt == "chat":
        return tool_data.record_tools(record)
    if fmt == "sharegpt":
        return _sharegpt_tools(record)[0]
    return None


def convert(record: Any, fmt: str) -> tuple[Messages | str | None, list[str]]:
    """Chat messages (a document's text for `text`) of `record` read as `fmt`, and every problem found."""
    if fmt not in KEYS:
        return validate.to_messages(record, fmt)
    if not isinstance(record, dict):
        return None, [f"record: expected a JSON object, got {json_type(record)}"]
    problems = _check_keys(record, fmt)
    if fmt == "text":
        if "text" in record:
            problems += validate._check_text("text", record["text"])
        return (None if problems else record["text"]), problems
    content, more = _sharegpt(record) if fmt == "sharegpt" else _prompt_completion_messages(record)
    problems += more
    return (None if problems else content), problems


def _check_keys(record: dict[str, Any], fmt: str) -> list[str]:
    required, optional = KEYS[fmt]
    expected = ", ".join(required + optional)
    problems = [f"{k}: missing key (a {fmt} record has {expected})" for k in required if k not in record]
    problems += [f"{k}: unexpected key (a {fmt} record has only {expected})" for k in record
                 if k not in required and k not in optional]
    return problems


# --- ShareGPT -------------------------------------------------------------------------------------------------


def _sharegpt(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    turns = record.get("conversations")
    system = record.get("system")
    problems = []
    if "system" in record and not isinstance(system, str):
        problems.append(f"system: expected a string, got {json_type(system)}")
    if "conversations" not in record:
        return None, problems
    if not isinstance(turns, list):
        return None, [*problems, f"conversations: expected a list of messages, got {json_type(turns)}"]
    if not turns:
        return None, [*problems, "conversations: empty list; a conversation needs a human turn and a gpt reply"]
    messages: Messages = []
    names: list[str] = []  # the record's own role names, for messages about order
    for i, turn in enumerate(turns):
        message, name, errs = _sharegpt_turn(f"conversations[{i}]", turn)
        problems += errs
        if message is not None:
            messages.append(message)
            names.append(name)
    if problems:
        return None, problems
    if _declares_tools(record) or any(m["role"] in ("function_call", "tool") for m in messages):
        messages, problems = _sharegpt_with_tools(record, messages, names, _role_key(turns[0]))
        if problems:
            return None, problems
        return _with_system(messages, system)
    order = validate._check_order([m["role"] for m in messages])
    if order:
        return None, [_in_record_terms(p, "conversations", names, _role_key(turns[0])) for p in order]
    return _with_system(messages, system)


def _with_system(messages: Messages, system: Any) -> tuple[Messages | None, list[str]]:
    if isinstance(system, str) and system.strip():  # LLaMA-Factory writes "" for "no system prompt"
        if messages[0]["role"] == "system":
            return None, ["system: given twice, as the system key and as conversations[0]; keep one"]
        messages.insert(0, {"role": "system", "content": system})
    return messages, []


def _sharegpt_turn(field: str, turn: Any) -> tuple[dict[str, str] | None, str, list[str]]:
    """One turn as a chat message, the role name it used, and its problems."""
    if not isinstance(turn, dict):
        return None, "", [f"{field}: expected an object with from and value, got {json_type(turn)}"]
    role_key = _role_key(turn)
    text_key = "value" if role_key == "from" else "content"
    problems = [f"{field}.{k}: missing key" for k in (role_key, text_key) if k not in turn]
    problems += [f"{field}.{k}: unexpected key (a turn has {role_key}, {text_key})" for k in turn
                 if k not in (role_key, text_key)]
    name = turn.get(role_key)
    if role_key in turn and not isinstance(name, str):
        problems.append(f"{field}.{role_key}: expected a string, got {json_type(name)}")
    elif role_key in turn and name not in SHAREGPT_ROLES and name not in SHAREGPT_TOOL_ROLES:
        problems.append(f"{field}.{role_key}: unknown role '{name}' (expected human, gpt, system, function_call "
                        "or observation)")
    if text_key in turn:
        problems += validate._check_text(f"{field}.{text_key}", turn[text_key])
    if problems:
        return None, "", problems
    role = SHAREGPT_ROLES.get(name) or SHAREGPT_TOOL_ROLES[name]
    return {"role": role, "content": turn[text_key]}, name, []


def _role_key(turn: Any) -> str:
    """`from` (ShareGPT proper), or `role` for the role/content variant."""
    return "role" if isinstance(turn, dict) and ("role" in turn or "content" in turn) and "from" not in turn else "from"


_MESSAGE_FIELD = re.compile(r"^messages\[(\d+)\]\.role: ")
_SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


def _in_record_terms(problem: str, key: str, names: list[str], role_key: str) -> str:
    """`messages[2].role: 'user' where 'assistant' ...` -> `conversations[2].from: 'human' where 'gpt' ...`."""
    match = _MESSAGE_FIELD.match(problem)
    assert match, problem  # validate._check_order only reports roles
    i = int(match.group(1))
    rest = problem[match.end():]
    if any(n in ("human", "gpt") for n in names):  # speak the file's vocabulary
        rest = re.sub(r"'(user|assistant|system)'", lambda m: f"'{_SHAREGPT_NAMES[m.group(1)]}'", rest)
    first = re.search(r"'\w+'", rest)  # the role found at i: name it exactly as the file does
    if first:
        rest = rest[: first.start()] + f"'{names[i]}'" + rest[first.end():]
    return f"{key}[{i}].{role_key}: {rest}"


# --- TRL's conversational prompt/completion -----------------------------------------------------------------


def _prompt_completion_messages(record: dict[str, Any]) -> tuple[Messages | None, list[str]]:
    problems: list[str] = []
    for key in ("prompt", "completion"):
        value = record.get(key)
        if key not in record:
            continue
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list of messages (the conversational shape), got {json_type(value)}")
        elif not value:
            problems.append(f"{key}: empty list of messages")
        else:
            for i, m in enumerate(value):
                problems += validate._check_message(f"{key}[{i}]", m)
    if problems or not ("prompt" in record and "completion" in record):
        return None, problems
    prompt, completion = record["prompt"], record["completion"]
    if completion[0]["role"] != "assistant":
        return None, [f"completion[0].role: '{completion[0]['role']}'; the completion is the assistant's reply"]
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt + completion]
    order = validate._check_order([m["role"] for m in messages])
    return (None, [_split_field(p, len(prompt)) for p in order]) if order else (messages, [])


def _split_field(problem: str, n_prompt: int) -> str:
    """`messages[3].role: ...` -> `completion[1].role: ...` for a prompt of two messages."""
    match = _MESSAGE_FIELD.match(problem)
    assert match, problem
    i = int(match.group(1))
    where = f"prompt[{i}]" if i < n_prompt else f"completion[{i - n_prompt}]"
    return f"{where}.role: {problem[match.end():]}"


# --- ShareGPT tool calling (LLaMA-Factory's function_call / observation turns) ------------------------------------


def _declares_tools(record: dict[str, Any]) -> bool:
    """A `tools` value that declares something ("" and [] are LLaMA-Factory's "no tools")."""
    value = record.get("tools")
    return value is not None and value != [] and not (isinstance(value, str) and value.strip() in ("", "[]"))


def _sharegpt_tools(record: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """The record's tools in OpenAI's shape: a JSON string or a list, of bare or `{"type": "function"}` items."""
    if not _declares_tools(record):
        return None, []
    value = record["tools"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return None, [f"tools: not a JSON list of tool definitions ({e.msg} at column {e.colno})"]
    if isinstance(value, dict):
        value = [value]  # one definition on its own
    wrapped = isinstance(value, list) and all(isinstance(t, dict) and "function" in t for t in value)
    return tool_data.check_tools(value, "tools", legacy=not wrapped)


def _sharegpt_with_tools(
    record: dict[str, Any], turns: Messages, names: list[str], role_key: str
) -> tuple[Messages, list[str]]:
    """The turns as OpenAI chat messages with tool calls and results, checked against the declared tools."""
    tools, problems = _sharegpt_tools(record)
    text_key = "value" if role_key == "from" else "content"
    messages: Messages = []
    pending: list[str] | None = []  # ids of the calls not answered yet, in order
    listed: set[int] = set()  # function_call turns whose value is a list of calls
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if turn["role"] == "function_call":
            calls, errs = _calls(f"{field}.{text_key}", turn["content"], i)
            problems += errs
            if turn["content"].lstrip().startswith("["):
                listed.add(i)
            pending = [c["id"] for c in calls] if not errs else None  # a broken call: its results go unchecked
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif turn["role"] == "tool":
            if pending is None:
                continue
            if not pending:
                problems.append(f"{field}.{role_key}: '{names[i]}' is a tool result, but no function_call turn "
                                "before it has a call left to answer (one result per call)")
                continue
            messages.append({"role": "tool", "content": turn["content"], "tool_call_id": pending.pop(0)})
        else:
            messages.append(dict(turn))
    if problems:
        return [], problems
    checked, errs = tool_data.chat_messages({"messages": messages, **({"tools": tools} if tools else {})})
    return checked or [], [_tool_problem(p, role_key, text_key, listed) for p in errs]


def _calls(field: str, value: str, turn: int) -> tuple[list[dict[str, Any]], list[str]]:
    """A function_call turn's value (`{"name", "arguments"}` or a list of them) as OpenAI tool calls."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        return [], [f"{field}: not JSON ({e.msg} at column {e.colno}); a function_call turn holds "
                    '{"name": ..., "arguments": {...}}']
    items = parsed if isinstance(parsed, list) else [parsed]
    calls, problems = [], []
    for j, item in enumerate(items):
        where = f"{field}[{j}]" if isinstance(parsed, list) else field
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            problems.append(f'{where}: expected {{"name": ..., "arguments": {{...}}}}, got {json_type(item)}')
            continue
        problems += [f"{where}.{k}: unexpected key (a call has name, arguments)" for k in item
                     if k not in ("name", "arguments")]
        args = item.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        fn = {"name": item["name"], "arguments": text}
        calls.append({"id": f"call_{turn}_{j}", "type": "function", "function": fn})
    if not items:
        problems.append(f"{field}: an empty list of calls")
    return calls, problems


_TOOL_FIELD = re.compile(r"^messages\[(\d+)\](\.tool_calls\[(\d+)\]\.function)?(\.\w+)?")


def _tool_problem(problem: str, role_key: str, text_key: str, listed: set[int]) -> str:
    """`messages[1].tool_calls[0].function.arguments: ...` -> `conversations[1].value.arguments: ...`."""
    match = _TOOL_FIELD.match(problem)
    if not match:
        return problem  # about the record as a whole (tools, messages)
    i, sub = int(match.group(1)), match.group(4) or ""
    if match.group(2):  # inside a call: the JSON of the function_call turn's value
        field = f".{text_key}" + (f"[{match.group(3)}]" if i in listed else "") + sub
    else:
        field = {".role": f".{role_key}", ".content": f".{text_key}"}.get(sub, sub)
    return f"conversations[{i}]{field}{problem[match.end():]}"
