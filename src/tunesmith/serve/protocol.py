"""The OpenAI wire format: request schemas, response bodies, and errors in OpenAI's error shape.

Requests are validated strictly (a string where a number belongs is an error, not coerced); fields this
server does not implement are ignored, except those that would silently change the answer (`n` > 1).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from tunesmith.errors import TunesmithError
from tunesmith.model.adapters import ADAPTER_NAME
from tunesmith.serve.generate import DEFAULT_TEMPERATURE


class ApiError(TunesmithError):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


def _one_or_many(value: Any) -> Any:
    """OpenAI accepts a string where a list of strings is expected; validate both as a list."""
    return [value] if isinstance(value, str) else value


def _text_parts(value: Any) -> Any:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if value is not None and not isinstance(value, list):
        raise ValueError("content must be a string or a list of text parts")
    return value


class FunctionCall(_Request):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[list[TextPart] | None, BeforeValidator(_text_parts)] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant message's calls
    tool_call_id: str | None = None  # the call a tool message answers

    def as_message(self) -> dict[str, Any]:
        """The message the chat template takes: {role, content} ('developer' is OpenAI's new 'system'),
        with the assistant's calls and the id a tool result answers."""
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": "\n".join(p.text for p in self.content or [])}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDef(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema (checked by tunesmith.data.tools)
    strict: bool | None = None


class ToolDef(_Request):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Request):
    include_usage: bool = False


Stop = Annotated[Annotated[list[str], Field(max_length=4)] | None, BeforeValidator(_one_or_many)]


class _Generation(_Request):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = DEFAULT_TEMPERATURE  # greedy, like chat and generate
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: Stop = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1)] = 1  # only 1 is served; checked with a clear message
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class ChatRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # the newer name of max_tokens
    tools: list[ToolDef] | None = None  # functions the model may call (see tunesmith.serve.tools)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt[0]

    def requested_max_tokens(self) -> int:
        return self.max_tokens or 16  # OpenAI's default for completions


class AdapterRequest(_Request):
    name: Annotated[str, Field(pattern=ADAPTER_NAME.pattern)]
    path: Annotated[str, Field(min_length=1, max_length=4096)]  # relative to the server's adapter root


def parse(schema: type[_Request], body: bytes) -> Any:
    """Validate a JSON body; every failure becomes a 400 naming the field."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            raise ApiError(400, f"request body is not valid JSON: {err['msg']}", code="invalid_json") from None
        where = ".".join(str(p) for p in err["loc"]) or "request body"
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise ApiError(400, f"{where}: {err['msg']}{more}", param=where if err["loc"] else None) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, model: str, text: str | None, finish: str, use: dict[str, int],
                  tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": use,
    }


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion_response(rid: str, model: str, text: str, finish: str | None, use: dict[str, int] | None = None
                        ) -> dict[str, Any]:
    """A completion body; without `use` it is one streamed chunk (same object type, as OpenAI sends)."""
    body: dict[str, Any] = {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None:
        body["usage"] = use
    return body


def usage_chunk(rid: str, model: str, obj: str, use: dict[str, int]) -> dict[str, Any]:
    """The last streamed chunk when `stream_options.include_usage` is set: usage, no choices."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [], "usage": use}


def model_card(model_id: str, parent: str | None) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tunesmith", "parent": parent}
