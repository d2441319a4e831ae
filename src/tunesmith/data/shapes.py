"""Record shapes of other tools, and plain text: check one record and turn it into canonical form.

- `sharegpt`: `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}`, the shape of
  Axolotl, LLaMA-Factory and Unsloth. Roles: human/user -> user, gpt/assistant -> assistant, system -> system.
  The `{"role", "content"}` variant under `conversations` is read too, and an optional top-level `system`
  string (LLaMA-Factory's column) becomes the first message.
- `chat_prompt_completion`: TRL's conversational prompt-completion, `{"prompt": [messages], "completion":
  [messages]}`; the conversation is prompt + completion, and the completion starts with the assistant.
- `text`: `{"text": ...}`, a document for language modelling (continued pre-training): no roles, every token
  is trained on.

Problems name the record's own fields (`conversations[2].from`, `completion[0].role`), so they point at what
the user wrote. The chat messages produced pass the same checks as the `chat` format (`validate`).
"""

from __future__ import annotations

import re
from typing import Any

from tunesmith.data import validate
from tunesmith.data.validate import Messages, json_type

# format -> (required keys, optional keys), for the formats read here
KEYS: dict[str, tuple[list[str], list[str]]] = {
    "sharegpt": (["conversations"], ["system"]),
    "chat_prompt_completion": (["prompt", "completion"], []),
    "text": (["text"], []),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ShareGPT's tool turns (LLaMA-Factory's function_call/observation, Axolotl's tool): no chat role for them yet.
TOOL_ROLES = ("tool", "function_call", "observation")
KEY_ORDER = ["messages", "conversations", "system", "prompt", "completion", "instruction", "input", "output", "text"]


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
    return "/".join(sorted(required + optional, key=KEY_ORDER.index))


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
    order = validate._check_order([m["role"] for m in messages])
    if order:
        return None, [_in_record_terms(p, "conversations", names, _role_key(turns[0])) for p in order]
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
    elif name in TOOL_ROLES:
        problems.append(f"{field}.{role_key}: '{name}' is a tool turn; tunesmith's chat format has no tool "
                        "messages yet: remove tool turns (or the examples that use tools)")
    elif role_key in turn and name not in SHAREGPT_ROLES:
        problems.append(f"{field}.{role_key}: unknown role '{name}' (expected human, gpt or system)")
    if text_key in turn:
        problems += validate._check_text(f"{field}.{text_key}", turn[text_key])
    if problems:
        return None, "", problems
    return {"role": SHAREGPT_ROLES[name], "content": turn[text_key]}, name, []


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
