"""`tunesmith generate`, `tunesmith chat` (stdin piped) and `tunesmith serve` (a real subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from test_serve_support import make_adapter, make_run, reference_reply
from tunesmith.cli import app
from tunesmith.data.tokenize import encode_prompt
from tunesmith.errors import ConfigError, ModelError
from tunesmith.model.loading import load_tokenizer

runner = CliRunner()
QUESTION = "How do I reset my password?"


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("cli") / "support-run", seed=4)


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def test_generate_streams_the_reply_to_stdout_and_stats_to_stderr(tiny_model_dir: Path, tok) -> None:
    result = runner.invoke(app, ["generate", str(tiny_model_dir), QUESTION, "--max-tokens", "6"])
    assert result.exit_code == 0, result.output
    ids = encode_prompt(tok, [{"role": "user", "content": QUESTION}])
    assert result.stdout == reference_reply(tiny_model_dir, None, ids, 6) + "\n"
    assert "6 tokens in" in result.stderr and "finish: length" in result.stderr


def test_generate_on_a_run_folder_uses_its_adapter(tiny_model_dir: Path, run_dir: Path, tok) -> None:
    result = runner.invoke(app, ["generate", str(run_dir), QUESTION, "--max-tokens", "6"])
    assert result.exit_code == 0, result.output
    ids = encode_prompt(tok, [{"role": "user", "content": QUESTION}])
    assert result.stdout == reference_reply(tiny_model_dir, run_dir / "adapter", ids, 6) + "\n"
    assert result.stdout != reference_reply(tiny_model_dir, None, ids, 6) + "\n"


def test_generate_raw_skips_the_chat_template_and_seed_makes_sampling_repeatable(tiny_model_dir: Path, tok) -> None:
    result = runner.invoke(app, ["generate", str(tiny_model_dir), "the quick brown fox", "--raw", "--max-tokens", "5"])
    assert result.stdout == reference_reply(tiny_model_dir, None, tok("the quick brown fox")["input_ids"], 5) + "\n"
    sampled = ["generate", str(tiny_model_dir), QUESTION, "--temperature", "1", "--seed", "4", "--max-tokens", "8"]
    assert runner.invoke(app, sampled).stdout == runner.invoke(app, sampled).stdout


def test_generate_reports_a_wrong_adapter_or_window_as_a_user_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", str(tiny_model_dir), "hi", "--adapter", str(tmp_path)])
    assert isinstance(result.exception, ModelError)
    assert str(result.exception) == f"{tmp_path}: not an adapter folder (no adapter_config.json)"
    result = runner.invoke(app, ["generate", str(tiny_model_dir), "hi", "--max-tokens", "600"])
    assert isinstance(result.exception, ConfigError)
    assert "+ --max-tokens 600 exceeds the model's 512-token window" in str(result.exception)


def test_chat_keeps_history_until_reset_and_stops_at_exit(tiny_model_dir: Path, run_dir: Path, tok) -> None:
    lines = [QUESTION, "thanks", "/reset", "thanks", "/exit", "never answered"]
    result = runner.invoke(app, ["chat", str(run_dir), "--max-tokens", "5"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output

    def reply(messages: list[dict[str, str]]) -> str:
        return reference_reply(tiny_model_dir, run_dir / "adapter", encode_prompt(tok, messages), 5)

    first = reply([{"role": "user", "content": QUESTION}])
    second = reply([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "thanks"}])
    after_reset = reply([{"role": "user", "content": "thanks"}])
    assert second != after_reset  # the history changes the answer, so the check below can tell
    assert result.stdout == f"{first}\n{second}\n{after_reset}\n"
    assert "(conversation reset)" in result.stderr


def test_serve_rejects_a_malformed_adapter_option_before_loading_anything() -> None:
    result = runner.invoke(app, ["serve", "--adapter", "no-equals-sign"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == ("--adapter 'no-equals-sign': expected NAME=PATH, "
                                     "e.g. --adapter support=runs/support")


@pytest.mark.slow
def test_serve_command_answers_openai_clients_and_stops_on_ctrl_c(tiny_model_dir: Path, run_dir: Path,
                                                                  tmp_path: Path) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "other", seed=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tunesmith", "serve", "--model", str(run_dir), "--adapter", f"other={adapter}",
           "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "TUNESMITH_API_KEY": "k"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
        # --model RUN_DIR serves the run's base model under its name and the run's adapter under the run's name
        assert [m.id for m in client.models.list().data] == [str(tiny_model_dir), "support-run", "other"]
        r = client.chat.completions.create(model="support-run", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3)
        assert r.choices[0].finish_reason == "length"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"serving {tiny_model_dir}, support-run, other on http://127.0.0.1:{port}/v1" in output


def test_serve_without_a_model_takes_the_base_its_first_adapter_was_trained_on(tiny_model_dir: Path,
                                                                             run_dir: Path) -> None:
    from tunesmith.api import build_engine

    engine = build_engine(None, [("support", str(run_dir))], device="cpu")
    assert engine.model_ids()[0] == str(tiny_model_dir)  # the tiny base, not the built-in model
    assert "support" in engine.model_ids()
    with pytest.raises(ModelError, match="trained on a different base model"):  # a base named explicitly is kept
        build_engine("smollm2-135m", [("support", str(run_dir))], device="cpu")
