"""Check one parsed record against a format and turn it into chat messages.

Each problem is `field: message` (the caller prefixes `file:line`). Every problem of a record is reported,
not just the first, so one pass over a file lists everything to fix.
"""

from __future__ import annotations

from typing import Any

from tunesmith.data import tools

Messages = list[dict[str, Any]]

# format -> (required keys, optional keys)
FORMAT_KEYS: dict[str, tuple[list[str], list[str]]] = {
    "prompt_completion": (["prompt", "completion"], []),
    "chat": (["messages"], ["tools", "parallel_tool_calls", "functions"]),  # OpenAI's tool calling: data/tools.py
    "alpaca": (["instruction", "output"], ["input"]),
}
ROLES = ("system", "user", "assistant")


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a record's keys point to, or None when it has none of the known keys."""
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if keys & {"prompt", "completion"}:
        return "prompt_completion"
    if keys & {"instruction", "output"}:
        return "alpaca"
    return None


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages users read."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), "value")


def to_messages(record: Any, fmt: str) -> tuple[Messages | None, list[str]]:
    """Canonical chat messages for `record` read as `fmt`, and every problem found (empty when valid)."""
    if not isinstance(record, dict):
        return None, [f"record: expected a JSON object, got {json_type(record)}"]
    problems = _check_keys(record, fmt)
    if fmt == "chat":
        if tools.is_tool_record(record) and "messages" in record:
            messages, more = tools.chat_messages(record)
            return messages, problems + more
        messages, more = _chat(record.get("messages"))
        return messages, problems + more
    required, optional = FORMAT_KEYS[fmt]
    for key in required + optional:
        if key in record:
            problems += _check_text(key, record[key], allow_empty=key in optional)
    if problems:
        return None, problems
    if fmt == "prompt_completion":
        user, reply = record["prompt"], record["completion"]
    else:
        extra = record.get("input", "")
        user = record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
        reply = record["output"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], []


def _check_keys(record: dict[str, Any], fmt: str) -> list[str]:
    required, optional = FORMAT_KEYS[fmt]
    expected = ", ".join(required + optional)
    problems = [f"{k}: missing key (a {fmt} record has {expected})" for k in required if k not in record]
    problems += [
        f"{k}: unexpected key (a {fmt} record has only {expected})"
        for k in record
        if k not in required and k not in optional
    ]
    return problems


def _check_text(field: str, value: Any, *, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, str):
        return [f"{field}: expected a string, got {json_type(value)}"]
    if not allow_empty and not value.strip():
        return [f"{field}: empty text" if not value else f"{field}: only whitespace"]
    return []


def _chat(messages: Any) -> tuple[Messages | None, list[str]]:
    if messages is None:
        return None, []  # already reported as a missing key (or null, reported below)
    if not isinstance(messages, list):
        return None, [f"messages: expected a list of messages, got {json_type(messages)}"]
    if not messages:
        return None, ["messages: empty list; a chat example needs a user turn and an assistant reply"]
    problems: list[str] = []
    for i, m in enumerate(messages):
        problems += _check_message(f"messages[{i}]", m)
    if problems:
        return None, problems
    problems = _check_order([m["role"] for m in messages])
    if problems:
        return None, problems
    return [{"role": m["role"], "content": m["content"]} for m in messages], []


def _check_message(field: str, m: Any) -> list[str]:
    if not isinstance(m, dict):
        return [f"{field}: expected an object with role and content, got {json_type(m)}"]
    problems = [f"{field}.{k}: missing key" for k in ("role", "content") if k not in m]
    problems += [f"{field}.{k}: unexpected key (a message has role, content)" for k in m
                 if k not in ("role", "content")]
    role = m.get("role")
    if "role" in m and not isinstance(role, str):
        problems.append(f"{field}.role: expected a string, got {json_type(role)}")
    elif "role" in m and role not in ROLES:
        problems.append(f"{field}.role: unknown role '{role}' (expected system, user or assistant)")
    if "content" in m:
        problems += _check_text(f"{field}.content", m["content"])
    return problems


def _check_order(roles: list[str]) -> list[str]:
    """Optional system first, then user/assistant alternating from user, ending with assistant."""
    problems = []
    start = 1 if roles[0] == "system" else 0
    for i, role in enumerate(roles[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            where = "a system message may only come first" if role == "system" else "roles alternate"
            problems.append(f"messages[{i}].role: '{role}' where '{expected}' was expected ({where})")
            return problems
    if roles[-1] != "assistant":
        problems.append(
            f"messages[{len(roles) - 1}].role: the last message is '{roles[-1]}'; "
            "a chat example must end with an assistant reply to train on"
        )
    return problems
