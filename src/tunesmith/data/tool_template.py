"""How tool conversations become template text, and how a model's reply is read back into calls.

A chat template that renders tools (Qwen2.5, Llama 3.1, Hermes, ...) is used as it is: tunesmith probes it
once with a made-up tool and call, and learns from what it renders where calls begin and end. A template
that does not (SmolLM2, the tiny test models, most older models) gets one fallback, applied identically in
training, evaluation and serving:

- the tool schemas go into the system turn (appended to the row's system message, or as the system
  message), one JSON object per line inside `<tools></tools>`, with one sentence on how to call;
- an assistant call is its text (if any), then one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  per call, on its own line;
- tool results become a user turn of `<tool_response>...</tool_response>` blocks, one per result (consecutive
  results share one turn), so templates that only know system/user/assistant still render them.

Training supervises assistant turns only, so calls are learned and tool results never are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
INSTRUCTIONS = (
    'To call one, reply <tool_call>{"name": ..., "arguments": {...}}</tool_call>; results come back in '
    "<tool_response>. Otherwise reply normally."
)


@dataclass(frozen=True)
class CallSyntax:
    """Where a call begins and ends in the model's reply, and how its JSON names the arguments."""

    open: str  # text before each call's JSON object ("" for a bare JSON reply)
    close: str  # text after it
    args_key: str = "arguments"  # "arguments" or "parameters"
    native: bool = False  # the tokenizer's own template (else the fallback)

    def forced_prefix(self, name: str | None = None) -> str:
        """The start of a reply that must be a call (`tool_choice` required, or one named function). It ends
        where byte-level BPE pre-tokens end (after ` "`, after `":`), so it tokenizes as in training."""
        if name is None:
            return self.open + '{"name": "'
        return self.open + json.dumps({"name": name})[:-1] + f', "{self.args_key}":'


FALLBACK = CallSyntax(CALL_OPEN, CALL_CLOSE)
_PROBE_NAME, _PROBE_ARG, _PROBE_RESULT = "tunesmith_probe_fn", "probe-value-9c1e", "probe-result-4d2b"
_PROBE_TOOL = {"type": "function", "function": {
    "name": _PROBE_NAME, "description": "probe-description-7f3a",
    "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]}}}
_native: dict[str, CallSyntax | None] = {}  # chat template text -> its syntax, None when it has no tools


def syntax(tokenizer: PreTrainedTokenizerBase) -> CallSyntax:
    """The call syntax this tokenizer's conversations use: its own template's, or the fallback."""
    return native_syntax(tokenizer) or FALLBACK


def native_syntax(tokenizer: PreTrainedTokenizerBase) -> CallSyntax | None:
    """The template's own call syntax, when it renders tools, calls and results and we can read calls back."""
    key = str(tokenizer.chat_template) + "\x00" + str(tokenizer.eos_token)
    if key not in _native:
        try:
            _native[key] = _probe(tokenizer)
        except Exception:  # a template that raises on tools or the tool role has no tool support
            _native[key] = None
    return _native[key]


def _probe(tokenizer: PreTrainedTokenizerBase) -> CallSyntax | None:
    call = {"id": "call_probe", "type": "function",
            "function": {"name": _PROBE_NAME, "arguments": {"probe_arg": _PROBE_ARG}}}
    chat = [{"role": "user", "content": "probe-user"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_probe", "name": _PROBE_NAME, "content": _PROBE_RESULT}]

    def text(n: int, gen: bool) -> str:
        return tokenizer.apply_chat_template(chat[:n], tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=gen)

    prompt, upto, full = text(1, True), text(2, False), text(3, False)
    if "probe-description-7f3a" not in prompt or not upto.startswith(prompt) or _PROBE_RESULT not in full:
        return None
    turn = upto[len(prompt):]
    eos = tokenizer.eos_token or ""
    if eos and eos in turn:
        turn = turn[: turn.rfind(eos)]
    return _syntax_of(turn)


def _syntax_of(turn: str) -> CallSyntax | None:
    """Find the JSON object of the probe call in its rendered turn; what surrounds it is the syntax."""
    decoder = json.JSONDecoder()
    start = turn.find("{")
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(turn, start)
        except json.JSONDecodeError:
            obj, end = None, start
        if isinstance(obj, dict) and obj.get("name") == _PROBE_NAME:
            key = "arguments" if "arguments" in obj else "parameters" if "parameters" in obj else None
            if key is None or obj[key] != {"probe_arg": _PROBE_ARG}:
                return None
            return CallSyntax(turn[:start].lstrip(), turn[end:].rstrip(), key, native=True)
        start = turn.find("{", start + 1)
    return None


def template_view(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict[str, Any]] | None
) -> tuple[list[Message], dict[str, Any]]:
    """(messages, extra apply_chat_template arguments) to render: native, fallback, or plain as they are."""
    tools = tools or None
    if tools is None and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return messages, {}
    if native_syntax(tokenizer) is not None:
        return [_native_message(m) for m in messages], ({"tools": tools} if tools else {})
    return fallback_messages(messages, tools), {}


def _native_message(m: Message) -> Message:
    """HF templates take arguments as a dict, not OpenAI's JSON string."""
    if not m.get("tool_calls"):
        return m
    calls = [{**c, "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
             for c in m["tool_calls"]]
    return {**m, "tool_calls": calls}


def fallback_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """The fallback: tools in the system turn, calls as tagged JSON, results as a user turn (see the top)."""
    out: list[Message] = []
    rest = messages
    if tools:
        block = tools_block(tools)
        if messages and messages[0]["role"] == "system":
            out.append({**messages[0], "content": messages[0]["content"] + "\n\n" + block})
            rest = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    previous = None
    for m in rest:
        if m["role"] == "tool":
            result = f"{RESULT_OPEN}\n{m['content']}\n{RESULT_CLOSE}"
            if previous == "tool":
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result})
        elif m.get("tool_calls"):
            parts = [m["content"]] if m["content"] else []
            parts += [format_call(c["function"]["name"], _arguments(c["function"]["arguments"]))
                      for c in m["tool_calls"]]
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": "\n".join(parts)})
        else:
            out.append(m)
        previous = m["role"]
    return out


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The system-turn text declaring the tools: one JSON object per function, then how to call."""
    lines = [json.dumps({k: t["function"][k] for k in ("name", "description", "parameters") if k in t["function"]},
                        ensure_ascii=False, separators=(",", ":")) for t in tools]  # compact: it is in every prompt
    return "You can call these functions:\n<tools>\n" + "\n".join(lines) + "\n</tools>\n" + INSTRUCTIONS


def format_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{CALL_CLOSE}"


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # rendered as written; validation reports it where it matters
    return value


@dataclass(frozen=True)
class Reply:
    """A model's reply read back: its text and calls. `malformed` when it began a call it did not finish."""

    content: str
    calls: list[dict[str, Any]]  # [{"name": str, "arguments": dict}]
    attempted: bool  # the reply began a call (well-formed or not)
    malformed: bool


def parse_reply(text: str, syn: CallSyntax) -> Reply:
    """Split a reply into text and calls. A call that does not parse makes the whole reply plain text."""
    if syn.open.strip():
        opener = syn.open.strip()
        first = text.find(opener)
        if first < 0:
            return Reply(text, [], False, False)
        calls = _read_calls(text[first:], opener, syn.close.strip(), syn.args_key)
        content = text[:first].strip()
    else:  # bare JSON: the whole reply is the call(s)
        stripped = text.strip()
        if not stripped.startswith("{"):
            return Reply(text, [], False, False)
        calls = _read_calls(stripped, "", syn.close.strip(), syn.args_key)
        content = ""
    if calls is None:
        return Reply(text, [], True, True)
    return Reply(content, calls, True, False)


def _read_calls(text: str, opener: str, closer: str, args_key: str) -> list[dict[str, Any]] | None:
    """Calls written back to back (opener JSON closer, ...); None when anything does not parse."""
    decoder, pos, calls = json.JSONDecoder(), 0, []
    while pos < len(text):
        if not text.startswith(opener, pos):
            return None
        pos = _skip_space(text, pos + len(opener))
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        args = obj.get(args_key, obj.get("arguments", obj.get("parameters"))) if isinstance(obj, dict) else None
        if not isinstance(obj.get("name") if isinstance(obj, dict) else None, str) or not isinstance(args, dict):
            return None
        calls.append({"name": obj["name"], "arguments": args})
        pos = _skip_space(text, pos)
        if closer and text.startswith(closer, pos):
            pos = _skip_space(text, pos + len(closer))
        elif closer and pos < len(text):
            return None
        if not opener and text.startswith(";", pos):
            pos = _skip_space(text, pos + 1)
    return calls or None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
