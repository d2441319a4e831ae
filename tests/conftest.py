from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# Never reach the network from tests, and keep the built-in model cache where CI can reuse it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 reports usage to its makers unless told not to

# The examples (agent.py and the tools it runs) are imported by the tests that run them.
sys.path.append(str(Path(__file__).resolve().parent.parent / "examples"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny local Llama-shaped model folder with a trained BPE tokenizer and a ChatML template."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from tunesmith.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def scripted_tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model (2048 positions: tool schemas make long prompts) trained to follow the scripted tool
    conversations of tests/tool_helpers.py."""
    from tool_helpers import train_scripted_model

    return train_scripted_model(tmp_path_factory.mktemp("scripted-tools"))


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 arithmetic prompt/completion rows: 36 train after the eval split, so 9 micro-batches of 4 per epoch
    (odd: an uneven tail on 2 ranks)."""
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
