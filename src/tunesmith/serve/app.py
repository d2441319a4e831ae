"""The OpenAI-compatible HTTP server: routes, keys, request limits, SSE streaming.

Every refusal uses OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` so the official
clients raise their usual exceptions. Bad input is always a 4xx: FastAPI's own 422 is never produced
because bodies are read (with a size cap) and validated here.

Two keys, checked by FastAPI dependencies on the routes themselves (no route can forget them): the API key
for inference (`/v1/models`, completions), and a separate admin key for adapter management. Without an
admin key, management is off. Adapters are loaded only from inside `adapter_root` (symlinks resolved), and
a refused load says nothing about which paths exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tunesmith.errors import TunesmithError
from tunesmith.serve import tools
from tunesmith.serve.generate import SamplingParams, Step
from tunesmith.serve.protocol import (
    AdapterRequest,
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_response,
    model_card,
    new_id,
    parse,
    usage,
    usage_chunk,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from tunesmith.serve.engine import Engine, Job

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class ServeConfig:
    """Network and security settings (generation limits live in `engine.Limits`)."""

    host: str = "127.0.0.1"  # loopback only unless asked
    port: int = 8000
    api_key: str | None = None  # when set, every inference request needs `Authorization: Bearer <key>`
    admin_key: str | None = None  # adapter management (POST/DELETE /v1/adapters) needs it; off without it
    adapter_root: Path | None = None  # the only folder adapters may be loaded from at run time
    max_body_bytes: int = 1_000_000  # larger request bodies get 413

    @property
    def loopback(self) -> bool:
        """Only this machine can reach the server."""
        return is_loopback(self.host)

    def __post_init__(self) -> None:
        if self.admin_key and self.adapter_root is None:
            raise TunesmithError("--admin-key needs --adapter-root DIR: the only folder adapters may be loaded "
                                 "from at run time")
        if self.admin_key and self.admin_key == self.api_key:
            raise TunesmithError("--admin-key must differ from --api-key: every client holds the API key")
        if self.adapter_root is not None and not Path(self.adapter_root).is_dir():
            raise TunesmithError(f"--adapter-root {self.adapter_root}: no such folder")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class RequestFilter:
    """ASGI middleware that refuses before any body is read: foreign Host headers on a loopback server
    (DNS-rebinding from a web page) and bodies whose Content-Length is over the limit."""

    def __init__(self, app: ASGIApp, config: ServeConfig):
        self.app, self.config = app, config
        self.check_host = is_loopback(config.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            error = self._refusal(headers)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
        if self.check_host and name not in LOOPBACK_NAMES:
            return ApiError(400, f"Host '{host}' refused: this server only answers loopback names",
                            code="invalid_host")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return ApiError(400, "Content-Length is not a number", code="invalid_request")
        if int(length) > self.config.max_body_bytes:
            return _too_large(self.config.max_body_bytes)
        return None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is over this server's limit of {limit} bytes", code="body_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The JSON body, counted as it arrives (a chunked body has no Content-Length to check up front)."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"Content-Type '{kind}': send the body as application/json",
                       code="unsupported_media_type")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer_matches(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def api_key_dependency(config: ServeConfig) -> Any:
    """A FastAPI dependency: the inference key, when the server has one."""

    async def require_api_key(request: Request) -> None:
        if config.api_key is not None and not _bearer_matches(request, config.api_key):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    return Depends(require_api_key)


def admin_key_dependency(config: ServeConfig) -> Any:
    """A FastAPI dependency: the admin key; adapter management is off when the server has none."""

    async def require_admin_key(request: Request) -> None:
        if config.admin_key is None:
            raise ApiError(403, "adapter management is off: start the server with --admin-key and --adapter-root "
                           "to enable it", type="permission_error", code="admin_disabled")
        if not _bearer_matches(request, config.admin_key):
            raise ApiError(401, "missing or wrong admin key: send the header 'Authorization: Bearer <admin key>'",
                           type="authentication_error", code="invalid_admin_key")

    return Depends(require_admin_key)


def under_root(root: Path, requested: str) -> Path | None:
    """`requested` (relative to `root`, or absolute) resolved with symlinks, if it lies inside `root`."""
    base = root.resolve()
    candidate = Path(requested)
    if "\x00" in requested:
        return None
    full = (candidate if candidate.is_absolute() else base / candidate).resolve()
    return full if full == base or base in full.parents else None


def create_app(engine: Engine, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving `engine`. The engine is closed when the app shuts down."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestFilter, config=config)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(TunesmithError)
    async def _user_error(_: Request, e: TunesmithError) -> JSONResponse:
        return error_response(ApiError(400, str(e)))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        text = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(ApiError(e.status_code, text, code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, f"invalid request: {e.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal server error; see the server log", type="server_error"))

    _add_routes(app, engine, config)
    return app


def _add_routes(app: FastAPI, engine: Engine, config: ServeConfig) -> None:
    inference, admin = [api_key_dependency(config)], [admin_key_dependency(config)]

    @app.get("/health")
    async def health() -> dict[str, Any]:  # public: says only that the server is up
        return {"status": "ok"}

    @app.get("/v1/stats", dependencies=inference)
    async def stats() -> dict[str, Any]:
        return {"model": engine.base_id, "adapters": list(engine.adapters), **engine.stats()}

    @app.get("/v1/models", dependencies=inference)
    async def models() -> dict[str, Any]:
        cards = [model_card(engine.base_id, None)] + [model_card(a, engine.base_id) for a in engine.adapters]
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions", dependencies=inference)
    async def chat(request: Request) -> Any:
        req: ChatRequest = parse(ChatRequest, await read_body(request, config.max_body_bytes))
        messages = [m.as_message() for m in req.messages]
        messages = await asyncio.to_thread(engine.with_notes, req.model, messages)  # an adapter trained with notes
        plan = tools.plan(req, engine.tokenizer)  # None without tools
        if plan is None:
            prompt = await asyncio.to_thread(engine.chat_prompt, messages)
        else:
            prompt = await asyncio.to_thread(tools.prompt_ids, engine.tokenizer, messages, plan)
        max_tokens = req.requested_max_tokens() or engine.default_max_tokens(len(prompt))
        return await _respond(engine, req, prompt, max_tokens, chat=True, plan=plan)

    @app.post("/v1/completions", dependencies=inference)
    async def completions(request: Request) -> Any:
        req: CompletionRequest = parse(CompletionRequest, await read_body(request, config.max_body_bytes))
        prompt = await asyncio.to_thread(engine.text_prompt, req.prompt_text())
        return await _respond(engine, req, prompt, req.requested_max_tokens(), chat=False)

    @app.post("/v1/adapters", status_code=201, dependencies=admin)
    async def add_adapter(request: Request) -> dict[str, Any]:
        req: AdapterRequest = parse(AdapterRequest, await read_body(request, config.max_body_bytes))
        assert config.adapter_root is not None  # ServeConfig requires it with an admin key
        folder = under_root(Path(config.adapter_root), req.path)
        try:
            if folder is None:
                raise TunesmithError(f"{req.path!r} lies outside the adapter root")
            await asyncio.to_thread(engine.add_adapter, req.name, folder)
        except ApiError:
            raise
        except TunesmithError as e:  # the reason goes to the log; the client learns nothing about paths
            log.warning("adapter %s not loaded: %s", req.name, e)
            raise ApiError(400, f"adapter '{req.name}': no loadable adapter for this base model at path "
                           f"{req.path!r} under the adapter root", param="path", code="adapter_not_loaded") from None
        return model_card(req.name, engine.base_id)

    @app.delete("/v1/adapters/{name}", dependencies=admin)
    async def remove_adapter(name: str) -> dict[str, Any]:
        await asyncio.to_thread(engine.remove_adapter, name)
        return {"id": name, "object": "model", "deleted": True}


async def _respond(engine: Engine, req: ChatRequest | CompletionRequest, prompt: list[int], max_tokens: int,
                   *, chat: bool, plan: tools.ToolPlan | None = None) -> JSONResponse | StreamingResponse:
    if req.n != 1:
        raise ApiError(400, "n: this server returns one choice per request; omit n or send 1", param="n")
    params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed, stop=req.stop_strings() + (plan.stop if plan else ()))
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    job = engine.submit(req.model, prompt, params, _emitter(loop, queue))
    rid = new_id("chatcmpl" if chat else "cmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        sse = _sse(job, queue, rid, len(prompt), chat=chat, include_usage=include_usage,
                   calls=tools.CallStream(plan) if plan else None)
        return StreamingResponse(sse, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, last = [], None
    try:
        async for step in _steps(queue):
            text.append(step.text)
            last = step
    finally:
        job.cancel()  # no-op when finished; frees the row if this request was abandoned
    assert last is not None and last.finish_reason is not None
    use = usage(len(prompt), last.completion_tokens)
    if plan is not None:
        content, calls, reason = tools.finish("".join(text), plan, last.finish_reason)
        return JSONResponse(chat_response(rid, req.model, content, reason, use, calls))
    body = (chat_response(rid, req.model, "".join(text), last.finish_reason, use) if chat
            else completion_response(rid, req.model, "".join(text), last.finish_reason, use))
    return JSONResponse(body)


def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Step | ApiError]) -> Any:
    def emit(event: Step | ApiError) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server stopped)
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return emit


async def _steps(queue: asyncio.Queue[Step | ApiError]) -> AsyncIterator[Step]:
    """Steps of one request until it finishes; an ApiError from the worker is raised."""
    while True:
        event = await queue.get()
        if isinstance(event, ApiError):
            raise event
        yield event
        if event.finish_reason is not None:
            return


async def _sse(job: Job, queue: asyncio.Queue[Step | ApiError], rid: str, prompt_tokens: int, *, chat: bool,
               include_usage: bool, calls: tools.CallStream | None = None) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    model = job.model_id
    try:
        if chat:
            yield _event(chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
        async for step in _steps(queue):
            text, reason, found = step.text, step.finish_reason, None
            if calls is not None:  # tools: text until a call may begin, calls once the reply is complete
                text = calls.add(step.text)
                if reason is not None:
                    rest, found, reason = calls.end(reason)
                    text += rest
            if text:
                yield _event(chat_chunk(rid, model, {"content": text}, None) if chat
                             else completion_response(rid, model, text, None))
            for delta in tools.delta_chunks(found or []):
                yield _event(chat_chunk(rid, model, delta, None))
            if reason is not None:
                yield _event(chat_chunk(rid, model, {}, reason) if chat
                             else completion_response(rid, model, "", step.finish_reason))
                if include_usage:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    yield _event(usage_chunk(rid, model, obj, usage(prompt_tokens, step.completion_tokens)))
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield _event(e.body())
    finally:
        job.cancel()  # the client went away mid-stream, or we are done: either way free the row


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a thread (tests, benchmarks); yields its base URL. Port 0 = any free one."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server failed to start")
            threading.Event().wait(0.02)
        name = f"[{host}]" if ":" in host else host
        yield f"http://{name}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
