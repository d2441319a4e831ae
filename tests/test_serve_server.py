"""The real server on a loopback port, driven by the official `openai` client (and raw httpx for bad input)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from test_serve_support import make_adapter, make_run, reference_reply
from tunesmith.data.tokenize import encode_prompt
from tunesmith.model.loading import load_tokenizer, resolve
from tunesmith.serve.app import ServeConfig, background_server, create_app
from tunesmith.serve.engine import Engine, Limits

KEY = "test-key"
ADMIN = "admin-key"
HELLO = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-adapters")
    return {
        "support": make_adapter(tiny_model_dir, root / "support", seed=1),
        "pirate": make_run(tiny_model_dir, root / "pirate-run", seed=2),  # a run folder, served as RUN/adapter
        "late": make_adapter(tiny_model_dir, root / "late", seed=3),
    }


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, adapters: dict[str, Path]) -> Iterator[SimpleNamespace]:
    limits = Limits(max_tokens=64, max_prompt_tokens=100, max_batch=8, max_queue=64)
    engine = Engine(resolve(str(tiny_model_dir)), base_id="tiny", device="cpu", limits=limits)
    engine.add_adapter("support", adapters["support"])
    engine.add_adapter("pirate", adapters["pirate"])
    config = ServeConfig(api_key=KEY, admin_key=ADMIN, adapter_root=adapters["late"].parent, max_body_bytes=20_000)
    app = create_app(engine, config)
    with background_server(app) as url:
        yield SimpleNamespace(url=url, engine=engine)


@pytest.fixture
def client(server: SimpleNamespace) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def expected(tiny_model_dir: Path, adapters: dict[str, Path], model: str, prompt_ids: list[int], n: int) -> str:
    adapter = {"support": adapters["support"], "pirate": adapters["pirate"] / "adapter",
               "late": adapters["late"]}.get(model)
    return reference_reply(tiny_model_dir, adapter, prompt_ids, n)


def raw(server: SimpleNamespace, method: str, path: str, key: str = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)


# -- the happy path ------------------------------------------------------------------------------------


def test_models_lists_the_base_and_every_adapter(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny", "support", "pirate"]
    assert [m.model_extra.get("parent") for m in models] == [None, "tiny", "tiny"]


def test_each_adapter_answers_with_its_own_weights(client, tok, tiny_model_dir, adapters) -> None:
    replies = {}
    for model in ("tiny", "support", "pirate"):
        r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, temperature=0)
        assert (r.model, r.choices[0].finish_reason) == (model, "length")
        replies[model] = r.choices[0].message.content
        # the multi-adapter server gives exactly what the model loaded alone gives
        assert replies[model] == expected(tiny_model_dir, adapters, model, encode_prompt(tok, HELLO), 8)
    assert len(set(replies.values())) == 3


def test_completions_use_the_raw_prompt(client, tok, tiny_model_dir, adapters) -> None:
    r = client.completions.create(model="support", prompt="the quick brown fox", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    ids = tok("the quick brown fox")["input_ids"]
    assert r.choices[0].text == expected(tiny_model_dir, adapters, "support", ids, 6)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 6, len(ids) + 6)


def test_usage_counts_the_chat_template_prompt(client, tok) -> None:
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5, temperature=0)
    n = len(encode_prompt(tok, HELLO))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n, 5, n + 5)


def test_streamed_chat_adds_up_to_the_plain_reply(client) -> None:
    plain = client.chat.completions.create(model="pirate", messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="pirate", messages=HELLO, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1


def test_streamed_completion_adds_up_to_the_plain_one(client) -> None:
    kwargs = {"model": "support", "prompt": "Where is my order?", "max_tokens": 7, "temperature": 0}
    plain = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_seed_makes_sampling_reproducible(client) -> None:
    def sample(seed: int) -> str:
        r = client.chat.completions.create(model="support", messages=HELLO, max_tokens=12, temperature=1.0,
                                           top_p=0.95, seed=seed)
        return r.choices[0].message.content

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_stop_strings_cut_the_reply(client) -> None:
    kwargs = {"model": "support", "messages": HELLO, "max_tokens": 16, "temperature": 1.0, "seed": 3}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = next(full[i : i + 2] for i in range(3, len(full) - 1) if full.find(full[i : i + 2]) == i)
    r = client.chat.completions.create(**kwargs, stop=[stop, "never-there"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (full[: full.find(stop)], "stop")


def test_an_omitted_max_tokens_means_the_server_limit(client) -> None:
    r = client.chat.completions.create(model="support", messages=HELLO, temperature=0)
    assert r.usage.completion_tokens <= 64
    assert r.choices[0].finish_reason == "stop" or r.usage.completion_tokens == 64


def test_a_client_that_leaves_mid_stream_frees_its_place(server, client) -> None:
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 64, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        first = next(r.iter_lines())
    assert first.startswith("data: ")
    deadline = time.monotonic() + 10
    while server.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.engine.stats()["running"] == 0
    assert client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices[0].finish_reason


def test_health_needs_no_key_and_tells_nothing_else(server) -> None:
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert httpx.get(server.url + "/v1/stats").status_code == 401
    stats = raw(server, "GET", "/v1/stats").json()
    assert stats["adapters"] == ["support", "pirate"] and stats["model"] == "tiny"


# -- refusals: OpenAI error shape, never a 5xx ---------------------------------------------------------


def test_a_missing_or_wrong_key_is_401(server) -> None:
    for key in ("wrong", ""):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
            c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_an_unknown_model_is_404_naming_the_served_ones(client) -> None:
    with pytest.raises(openai.NotFoundError, match=r"model 'gpt-4' does not exist; served: tiny, support, pirate"):
        client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=2)


def test_limits_are_400(client) -> None:
    with pytest.raises(openai.BadRequestError, match=r"max_tokens 65 is over this server's limit of 64"):
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=65)
    long = [{"role": "user", "content": "the quick brown fox " * 30}]
    with pytest.raises(openai.BadRequestError, match=r"prompt has \d+ tokens; this server accepts at most 100"):
        client.chat.completions.create(model="tiny", messages=long, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=r"n: this server returns one choice per request"):
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2, n=2)


def test_an_oversized_body_is_413_with_or_without_content_length(client, server) -> None:
    big = [{"role": "user", "content": "x" * 25_000}]
    with pytest.raises(openai.APIStatusError, match="over this server's limit of 20000 bytes") as e:
        client.chat.completions.create(model="tiny", messages=big, max_tokens=2)
    assert e.value.status_code == 413
    chunked = raw(server, "POST", "/v1/chat/completions", content=iter([b'{"model": "tiny", "x": "', b"y" * 30_000]),
                  headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "tiny", "messages": [', "request body is not valid JSON"),
        (b'{"model": "tiny", "messages": "hi"}', "messages: Input should be a valid array"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}',
         "max_tokens: Input should be a valid integer"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
         "temperature: Input should be less than or equal to 2"),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role: Input should be"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model: Field required"),
        (b'[1, 2]', "request body: Input should be an object"),
    ],
)
def test_malformed_requests_are_400_in_openai_shape_not_422(server, body: bytes, message: str) -> None:
    r = raw(server, "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"].startswith(message)
    assert error["type"] == "invalid_request_error"


def test_other_refusals_keep_the_openai_shape(server) -> None:
    cases = [
        (raw(server, "POST", "/v1/chat/completions", content=b"model=tiny",
             headers={"content-type": "application/x-www-form-urlencoded"}), 415,
         "Content-Type 'application/x-www-form-urlencoded': send the body as application/json"),
        (raw(server, "GET", "/health", headers={"host": "evil.example:80"}), 400, "Host 'evil.example:80' refused"),
        (raw(server, "GET", "/v1/nothing"), 404, "GET /v1/nothing: Not Found"),
        (raw(server, "GET", "/v1/chat/completions"), 405, "GET /v1/chat/completions: Method Not Allowed"),
    ]
    for response, status, message in cases:
        assert response.status_code == status
        assert response.json()["error"]["message"].startswith(message)


# -- adapters at run time ------------------------------------------------------------------------------


def test_adapters_are_added_and_removed_at_run_time(client, server, tok, tiny_model_dir, adapters) -> None:
    r = raw(server, "POST", "/v1/adapters", ADMIN, json={"name": "late", "path": "late"})  # relative to the root
    assert r.status_code == 201 and r.json()["id"] == "late"
    try:
        assert "late" in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(model="late", messages=HELLO, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content == expected(tiny_model_dir, adapters, "late",
                                                            encode_prompt(tok, HELLO), 8)
        again = raw(server, "POST", "/v1/adapters", ADMIN, json={"name": "late", "path": str(adapters["late"])})
        assert again.status_code == 409
    finally:
        gone = raw(server, "DELETE", "/v1/adapters/late", ADMIN)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="late", messages=HELLO, max_tokens=2)


def test_adapter_management_needs_the_admin_key_not_the_api_key(server) -> None:
    for key in (KEY, "nope", "-"):  # the inference key is not enough
        r = raw(server, "POST", "/v1/adapters", key, json={"name": "x", "path": "late"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
        assert raw(server, "DELETE", "/v1/adapters/support", key).status_code == 401
    assert "support" in server.engine.adapters


def test_adapters_load_only_from_inside_the_root_and_refusals_reveal_no_paths(server, adapters, tmp_path,
                                                                            tiny_model_dir) -> None:
    outside = make_adapter(tiny_model_dir, tmp_path / "outside", seed=4)  # a real adapter, outside the root
    root = adapters["late"].parent
    (root / "escape").symlink_to(tmp_path)  # a symlink inside the root pointing outside it
    (tmp_path / "inner").symlink_to(outside)
    attempts = ["../" + root.name + "/late/../../etc", "/etc", "../../../../etc/passwd", str(tmp_path),
                "escape/inner", "escape/outside", str(outside), "late/../../" + root.name + "-nope", "missing-folder",
                "support\x00"]
    for path in attempts:
        r = raw(server, "POST", "/v1/adapters", ADMIN, json={"name": "x", "path": path})
        assert r.status_code == 400, path
        message = r.json()["error"]["message"]
        assert message == f"adapter 'x': no loadable adapter for this base model at path {path!r} under the " \
                          "adapter root", path
        assert str(root) not in message  # only the client's own words come back, never the server's layout
    assert "x" not in server.engine.adapters
    bad_name = raw(server, "POST", "/v1/adapters", ADMIN, json={"name": "../x", "path": "late"})
    assert bad_name.status_code == 400 and bad_name.json()["error"]["param"] == "name"


def test_without_an_admin_key_adapter_management_is_off(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    engine = Engine(resolve(str(tiny_model_dir)), device="cpu")
    with background_server(create_app(engine, ServeConfig(api_key="k"))) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert c.chat.completions.create(model=engine.base_id, messages=HELLO, max_tokens=2).choices
        r = httpx.post(url + "/v1/adapters", json={"name": "x", "path": str(adapters["late"])},
                       headers={"Authorization": "Bearer k"})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == ("adapter management is off: start the server with --admin-key and "
                                            "--adapter-root to enable it")


def test_serve_config_refuses_unsafe_key_setups(tmp_path: Path) -> None:
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="--admin-key needs --adapter-root"):
        ServeConfig(admin_key="a")
    with pytest.raises(TunesmithError, match="--admin-key must differ from --api-key"):
        ServeConfig(api_key="a", admin_key="a", adapter_root=tmp_path)


# -- under load ----------------------------------------------------------------------------------------


def test_32_parallel_clients_are_all_answered_correctly_and_batched(client, server) -> None:
    models = ["tiny", "support", "pirate"]
    requests = [(models[i % 3], [{"role": "user", "content": f"question {i}: where is my order?"}])
                for i in range(32)]

    def ask(model: str, messages: list) -> str:
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        return r.choices[0].message.content

    alone = [ask(m, msgs) for m, msgs in requests]  # one at a time: the reference answers
    batches_before = server.engine.stats()["batches"]
    results: list[str | BaseException | None] = [None] * 32
    barrier = threading.Barrier(32)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = ask(*requests[i])
        except BaseException as e:  # recorded, then reported by the asserts below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - start
    assert elapsed < 60
    assert results == alone  # every client answered, each with exactly its own reply
    assert server.engine.stats()["batches"] - batches_before < 32  # some requests shared a forward pass
    assert server.engine.stats()["queued"] == 0


def test_requests_without_a_temperature_are_greedy_like_chat_and_generate(client) -> None:
    from tunesmith.serve.generate import DEFAULT_TEMPERATURE, SamplingParams

    assert DEFAULT_TEMPERATURE == SamplingParams().temperature == 0.0
    replies = {client.chat.completions.create(model="support", messages=HELLO, max_tokens=8).choices[0].message.content
               for _ in range(3)}
    greedy = client.chat.completions.create(model="support", messages=HELLO, max_tokens=8, temperature=0)
    assert replies == {greedy.choices[0].message.content}
