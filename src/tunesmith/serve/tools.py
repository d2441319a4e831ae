"""Tool calling on `/v1/chat/completions`: `tools` and `tool_choice` in, `message.tool_calls` out.

The prompt renders the request's tools exactly as training did (`tunesmith.data.tool_template`). What the
model writes is read back with the same call syntax:
- `tool_choice` "auto" (the default with tools): calls when the model writes them, text otherwise;
- "none": the tools are left out of the prompt and the reply is text;
- "required", or `{"type": "function", "function": {"name": ...}}`: the reply is started for the model with
  the opening of a call (of that function), so it can only complete one;
- `parallel_tool_calls: false` stops generation after the first call.
A call that does not parse (bad JSON, no name, cut by max_tokens) is returned as plain text with the
model's own finish reason, never as an error. Streams send text until a call may begin, then hold the rest
back and send each call as OpenAI's tool-call deltas once the reply is complete and has parsed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data import tools as tool_data
from tunesmith.data.tokenize import render
from tunesmith.data.tool_template import CallSyntax, parse_reply, syntax
from tunesmith.serve.protocol import ApiError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunesmith.serve.protocol import ChatRequest


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools."""

    tools: list[dict[str, Any]] | None  # rendered into the prompt
    parse: bool  # read calls back from the reply
    prefix: str  # the start of the reply written for the model ("" unless a call is forced)
    stop: tuple[str, ...]  # extra stop strings (after the first call when parallel calls are off)
    syntax: CallSyntax


def plan(req: ChatRequest, tokenizer: PreTrainedTokenizerBase) -> ToolPlan | None:
    """The request's tool plan, or None when it declares no tools. Bad tools or choices are 400s."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise ApiError(400, "tool_choice: only allowed when tools are given", param="tool_choice")
        return None
    tools, problems = tool_data.check_tools([t.model_dump(exclude_none=True) for t in req.tools])
    if problems:
        raise ApiError(400, problems[0], param="tools")
    assert tools is not None
    syn = syntax(tokenizer)
    if choice == "none":
        return ToolPlan(None, False, "", (), syn)
    prefix = ""
    if choice == "required":
        prefix = syn.forced_prefix()
    elif choice not in (None, "auto"):
        name = choice.function.name  # type: ignore[union-attr]
        if name not in {t["function"]["name"] for t in tools}:
            raise ApiError(400, f"tool_choice: function '{name}' is not among the tools", param="tool_choice")
        prefix = syn.forced_prefix(name)
    stop = (syn.close.strip(),) if req.parallel_tool_calls is False and syn.close.strip() else ()
    return ToolPlan(tools, True, prefix, stop, syn)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], p: ToolPlan) -> list[int]:
    """Token ids of the prompt: the conversation with its tools, then the forced start of the reply."""
    try:
        text = render(tokenizer, list(messages), generation_prompt=True, tools=p.tools) + p.prefix
    except Exception as e:  # a template may raise on roles or orders it does not support
        raise ApiError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parsed calls as OpenAI `tool_calls`, each with a fresh id and its arguments as a JSON string."""
    import json

    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]


def finish(text: str, p: ToolPlan, finish_reason: str) -> tuple[str | None, list[dict[str, Any]] | None, str]:
    """(content, tool_calls, finish_reason) of a whole reply; text with the model's reason when no call parses."""
    full = p.prefix + text
    if not p.parse:
        return full, None, finish_reason
    reply = parse_reply(full, p.syntax)  # a call cut at its closing tag (parallel calls off) still parses
    if not reply.calls:
        return full, None, finish_reason
    return reply.content or None, tool_calls(reply.calls), "tool_calls"


class CallStream:
    """Streams a reply's text until a call may begin; holds the rest back until `end()` decides."""

    def __init__(self, p: ToolPlan):
        self.plan = p
        self.text = ""
        self.sent = 0  # characters of text already streamed as content
        self.holding = bool(p.prefix)  # a forced call: nothing is content until it fails to parse

    def add(self, delta: str) -> str:
        """Content that is safe to stream now."""
        self.text += delta
        if not self.plan.parse:
            return self._send(len(self.text))
        if self.holding:
            return ""
        opener = self.plan.syntax.open.strip()
        if not opener:  # bare JSON calls: a reply that starts with "{" may be one
            if self.text.lstrip().startswith("{"):
                self.holding = True
                return ""
            return self._send(len(self.text)) if self.text.strip() else ""
        at = self.text.find(opener)
        if at >= 0:
            self.holding = True
            return self._send(at)
        return self._send(len(self.text) - _partial(self.text, opener))

    def end(self, finish_reason: str) -> tuple[str, list[dict[str, Any]] | None, str]:
        """(content not yet streamed, tool_calls, finish_reason) once the reply is complete."""
        content, calls, reason = finish(self.text, self.plan, finish_reason)
        if calls is None:  # text after all: send what was held back (with a forced prefix, all of it)
            return (content or "")[self.sent:], None, reason
        return "", calls, reason

    def _send(self, upto: int) -> str:
        out, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return out


def _partial(text: str, opener: str) -> int:
    """Length of the longest end of `text` that begins `opener` (held back: it may become a call)."""
    for n in range(min(len(opener) - 1, len(text)), 0, -1):
        if text.endswith(opener[:n]):
            return n
    return 0


def delta_chunks(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's streamed tool-call deltas: per call, one with id and name, then one with the arguments."""
    out: list[dict[str, Any]] = []
    for k, c in enumerate(calls):
        out.append({"tool_calls": [{"index": k, "id": c["id"], "type": "function",
                                    "function": {"name": c["function"]["name"], "arguments": ""}}]})
        out.append({"tool_calls": [{"index": k, "function": {"arguments": c["function"]["arguments"]}}]})
    return out
