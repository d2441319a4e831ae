"""`train --rag` (retrieval-augmented fine-tuning): the rows train with retrieved notes in their prompts, the run
folder keeps the rows as given, and documents as training data get a clear error."""

from __future__ import annotations

import json

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)
from tunesmith.config import load_config
from tunesmith.retrieval import PREAMBLE
from tunesmith.train.prepare import prepare


def test_rows_train_with_notes_and_eval_rows_too(qa_file, tiny_model_dir, tiny_tokenizer, tmp_path):
    config = load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(tmp_path / "run"), rag=True)
    data = prepare(config, tiny_tokenizer)
    plain = prepare(load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(tmp_path / "p")),
                    tiny_tokenizer)
    assert data.info["rag"]["source"] == "training split" and data.info["rag"]["notes"] == len(data.train)
    texts = [tiny_tokenizer.decode(e.input_ids) for e in data.train]
    assert all(PREAMBLE in t for t in texts) and all(PREAMBLE in tiny_tokenizer.decode(e.input_ids) for e in data.eval)
    assert [e.targets for e in data.train] == [e.targets for e in plain.train]  # the loss is on the same replies
    assert [ex.messages for ex in data.train_messages] == [ex.messages for ex in plain.train_messages]  # as given


def test_train_rag_end_to_end_and_documents_refused(monkeypatch, capsys, qa_file, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, out_text, err = run(monkeypatch, capsys, "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                            str(out), "--rag", "--max-steps", "2", "--batch-size", "4", "--no-guard")
    assert code == 0, err
    assert "done" in out_text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["rag"]["k"] == 3 and manifest["data"]["rag"]["golden_share"] == 0.8
    first = json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "user"  # no notes written into the run's copy of the data

    docs = tmp_path / "handbook.md"
    docs.write_text("Returns are accepted for 45 days from delivery.\n")
    code, _, err = run(monkeypatch, capsys, "train", str(docs), "--model", str(tiny_model_dir), "--out",
                       str(tmp_path / "docs-run"), "--rag", "--max-steps", "1", "--no-guard")
    assert code == 2 and "--rag-docs" in err and "Traceback" not in err
