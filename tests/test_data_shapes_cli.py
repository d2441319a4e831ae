"""Every shape from JSONL and from Parquet passes `data check` and trains a few steps; documents train as packed
text; the quality report, prepare and the leakage check work for documents too (tiny model, in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_helpers import run

FACTS = [("the Lumen Guild", "1897"), ("Harrow Bay", "the lighthouse"), ("the Orders page", "tracking"),
         ("Account settings", "passwords"), ("the return desk", "30 days"), ("Paris", "France")]


DOCS = [
    "The Lumen Guild was founded in 1897 by lamp makers.", "Harrow Bay has one lighthouse, painted red.",
    "Orders ship within two days from the north depot.", "Passwords must be changed every ninety days.",
    "Returns are accepted within thirty days of purchase.", "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.", "Kettles carry a five year warranty.",
    "SELECT name FROM customers WHERE city = 'Paris';", "Arr, the sea be calm today and the rum be plenty.",
    "Seven swans swam silently south.", "0 1 2 3 4 5 6 7 8 9 10 equals nothing at all.",
]


def _question(i: int) -> tuple[str, str]:
    subject, fact = FACTS[i % len(FACTS)]
    return f"What do you know about {subject}, item {i}?", f"It is about {fact}, item {i}."


def _rows(shape: str, n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        q, a = _question(i)
        rows.append({
            "prompt_completion": {"prompt": q, "completion": a},
            "chat": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]},
            "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
            "chat_prompt_completion": {"prompt": [{"role": "user", "content": q}],
                                       "completion": [{"role": "assistant", "content": a}]},
            "text": {"text": " ".join([DOCS[i]] * (1 + i % 3))},
        }[shape])
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(monkeypatch, capsys, data: str, out: Path, model: Path, *extra: str) -> dict:
    monkeypatch.setenv("TUNESMITH_MALLOC", "system")  # in-process: no re-exec under mimalloc
    code, _, err = run(monkeypatch, capsys, "train", data, "--model", str(model), "--out", str(out),
                       "--max-steps", "2", "--batch-size", "4", "--max-length", "64", "--lr", "5e-3",
                       "--no-guard", "--threads", "1", *extra)
    assert code == 0, err
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("shape", ["prompt_completion", "chat", "sharegpt", "chat_prompt_completion", "text"])
def test_every_shape_checks_and_trains(monkeypatch, capsys, tmp_path, tiny_model_dir, shape, suffix):
    path = _write(tmp_path / f"data{suffix}", _rows(shape))
    code, out, err = run(monkeypatch, capsys, "data", "check", str(path), "--model", str(tiny_model_dir), "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["valid"] and report["format"] == shape and report["count"] == 12
    manifest = _train(monkeypatch, capsys, str(path), tmp_path / "run", tiny_model_dir)
    assert manifest["data"]["format"] == shape and manifest["result"]["steps"] == 2
    d = manifest["data"]  # train_examples counts the general replay examples mixed in (none for documents)
    assert d["train_examples"] - d["replay_examples"] + d["eval_examples"] == 12
    assert d["replay_examples"] == (0 if shape == "text" else round(0.3 / 0.7 * 12))  # replay: auto, 0.3
    saved = [json.loads(line) for line in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    assert all(set(r) == ({"text"} if shape == "text" else {"messages"}) for r in saved)
    if shape == "text":  # documents split at max_length and packed into (nearly) full rows of 64 tokens
        d = manifest["data"]
        assert -(-d["train_tokens"] // 64) <= d["train_rows"] <= -(-d["train_tokens"] // 64) + 1


def test_a_folder_of_documents_trains_as_text(monkeypatch, capsys, tmp_path, tiny_model_dir):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        q, a = _question(i)
        (docs / f"page{i}.{'md' if i % 2 else 'txt'}").write_text(f"# Page {i}\n\n{q}\n{a}\n" * 3, encoding="utf-8")
    code, out, _ = run(monkeypatch, capsys, "data", "check", str(docs), "--model", str(tiny_model_dir),
                       "--max-length", "64")
    assert code == 0
    assert "6 documents" in out and "longer than 64" in out and "conflicting" not in out
    manifest = _train(monkeypatch, capsys, str(docs), tmp_path / "run", tiny_model_dir, "--format", "text",
                      "--eval-fraction", "0")
    assert manifest["data"]["train_examples"] == 6 and manifest["data"]["eval_examples"] == 0
    assert manifest["data"]["train_tokens"] <= manifest["data"]["train_rows"] * 64


def test_columns_map_a_table_for_training(monkeypatch, capsys, tmp_path, tiny_model_dir):
    rows = [{"id": i, "question": _question(i)[0], "answer": _question(i)[1]} for i in range(12)]
    path = _write(tmp_path / "qa.parquet", rows)
    code, _, err = run(monkeypatch, capsys, "data", "check", str(path), "--model", str(tiny_model_dir))
    assert code == 2 and "cannot tell the format from ['answer', 'id', 'question']" in err
    code, out, err = run(monkeypatch, capsys, "data", "check", str(path), "--model", str(tiny_model_dir),
                         "--columns", "prompt=question,completion=answer")
    assert code == 0, err
    assert "ignored columns" in out and " id" in out
    manifest = _train(monkeypatch, capsys, str(path), tmp_path / "run", tiny_model_dir,
                      "--columns", "prompt=question,completion=answer")
    assert manifest["data"]["format"] == "prompt_completion"


def test_prepare_and_leakage_for_documents(monkeypatch, capsys, tmp_path, tiny_model_dir):
    rows = [*_rows("text"), _rows("text")[0]]  # an exact copy of the first document
    path = _write(tmp_path / "docs.jsonl", rows)
    out = tmp_path / "prepared"
    code, _, err = run(monkeypatch, capsys, "data", "prepare", str(path), "--out", str(out), "--model",
                       str(tiny_model_dir), "--eval-fraction", "0.25")
    assert code == 0, err
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["format"] == "text" and report["output"]["format"] == "text"
    assert [r["reason"] for r in report["removed"]] == ["exact duplicate"]
    assert len(train) + len(evals) == 12 and all(set(r) == {"text"} for r in train + evals)
    assert not {r["text"] for r in train} & {r["text"] for r in evals}
    code, out_text, _ = run(monkeypatch, capsys, "data", "check", str(path), "--eval", str(out / "eval.jsonl"),
                            "--model", str(tiny_model_dir), "--json")
    report = json.loads(out_text)
    assert code == 1 and report["leakage"]["exact"]  # eval documents are in the original file
    assert report["exact_duplicates"] == [[f"{path}:1", f"{path}:13"]] and report["conflicts"] == []
    assert report["tokens"]["supervised"] == report["tokens"]["total"]  # every token of a document is trained on


def test_plan_counts_packed_documents_and_advise_refuses_them(monkeypatch, capsys, tmp_path, tiny_model_dir):
    path = _write(tmp_path / "notes.jsonl", [{"body": " ".join([d] * 3)} for d in DOCS])
    code, out, err = run(monkeypatch, capsys, "plan", "--model", str(tiny_model_dir), "--data", str(path),
                         "--columns", "text=body", "--max-length", "64", "--no-calibrate", "--json")
    assert code == 0, err
    data = json.loads(out)["data"]
    assert data["truncated"] == 0 and data["longest"] <= 64
    assert -(-data["tokens"] // 64) <= data["examples"] <= -(-data["tokens"] // 64) + 1  # packed rows, nearly full
    code, _, err = run(monkeypatch, capsys, "advise", "--data", str(path), "--columns", "text=body")
    assert code == 2 and err.strip() == (
        f"error: --data {path}: documents (text) have no prompts and replies to weigh; advise reads chat or "
        "prompt/completion examples (for knowledge from documents see docs/documents.md)")


def test_the_documents_recipe_chains_cpt_into_sft(monkeypatch, capsys, tmp_path, tiny_model_dir):
    """docs/documents.md: stage 2 takes the stage-1 run folder as its base (LoRA merged in)."""
    docs = _write(tmp_path / "docs.jsonl", _rows("text"))
    _train(monkeypatch, capsys, str(docs), tmp_path / "cpt", tiny_model_dir, "--format", "text", "--eval-fraction", "0")
    qa = _write(tmp_path / "qa.jsonl", _rows("sharegpt"))
    manifest = _train(monkeypatch, capsys, str(qa), tmp_path / "sft", tmp_path / "cpt", "--eval-fraction", "0")
    assert manifest["data"]["format"] == "sharegpt" and manifest["result"]["steps"] == 2
    assert manifest["base_model"]["kind"] == "run"
