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


def test_notes_and_their_preamble_take_at_most_half_of_max_length(qa_file, tiny_model_dir, tiny_tokenizer, tmp_path):
    config = load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(tmp_path / "run"), rag=True,
                         max_length=256)
    data = prepare(config, tiny_tokenizer)
    preamble = len(tiny_tokenizer(PREAMBLE, add_special_tokens=False)["input_ids"])
    assert data.info["rag"]["budget_tokens"] == 128 - preamble and len(data.train) == 36  # every row still trains
    assert all(PREAMBLE in tiny_tokenizer.decode(e.input_ids) for e in data.train)  # with its notes
    tight = prepare(load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(tmp_path / "t"),
                                rag=True, max_length=2 * preamble), tiny_tokenizer)
    assert tight.info["rag"]["budget_tokens"] == 0 and len(tight.train) == 36  # no room for notes: none


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


def test_serve_answers_with_notes_for_an_adapter_trained_with_them(tiny_model_dir, tmp_path):
    """`train --rag` taught the adapter to answer with notes, so the server retrieves them for it (from the run's
    training split) and for no other model."""
    import openai

    from test_serve_support import make_run
    from tunesmith.config import dump_yaml
    from tunesmith.model.loading import resolve
    from tunesmith.serve.app import ServeConfig, background_server, create_app
    from tunesmith.serve.engine import Engine, Limits

    runs = {}
    for name, rag in (("noted", True), ("plain", False)):
        folder = make_run(tiny_model_dir, tmp_path / name, seed=1)
        dump_yaml(load_config(None, data="qa.jsonl", model=str(tiny_model_dir), out=str(folder), rag=rag),
                  folder / "config.yaml")
        (folder / "data").mkdir()
        (folder / "data" / "train.jsonl").write_text(json.dumps({"messages": [
            {"role": "user", "content": "How long do I have to return a kettle?"},
            {"role": "assistant", "content": "Returns are accepted for 45 days from delivery."}]}) + "\n")
        runs[name] = folder
    engine = Engine(resolve(str(tiny_model_dir)), base_id="tiny", device="cpu", limits=Limits(max_tokens=4))
    for name, folder in runs.items():
        engine.add_adapter(name, folder)
    question = [{"role": "user", "content": "Can I still return my kettle?"}]
    noted = engine.with_notes("noted", question)
    assert PREAMBLE in noted[0]["content"] and "45 days" in noted[0]["content"] and noted[1:] == question
    assert engine.with_notes("plain", question) == question and engine.with_notes("tiny", question) == question

    with background_server(create_app(engine, ServeConfig())) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        usage = {m: client.chat.completions.create(model=m, messages=question, max_tokens=1).usage.prompt_tokens
                 for m in ("noted", "plain", "tiny")}
    assert usage["plain"] == usage["tiny"] < usage["noted"]
    engine.remove_adapter("noted")
    assert engine.with_notes("noted", question) == question
    engine.close()


def test_chat_and_generate_prompts_carry_the_notes(tiny_tokenizer):
    """`tunesmith chat` / `generate` on a run trained with notes put the best notes for each question in the
    prompt, the same way the server does."""
    from tunesmith.api import prompt_ids
    from tunesmith.data.formats import Example
    from tunesmith.retrieval import Retriever
    from tunesmith.serve.chat import Conversation

    notes = Retriever.from_examples([Example(messages=[
        {"role": "user", "content": "How long do I have to return a kettle?"},
        {"role": "assistant", "content": "Returns are accepted for 45 days from delivery."}], source="t:1")])
    chat = Conversation(tiny_tokenizer, max_prompt_tokens=1000, notes=notes)
    ids, _ = chat.prompt("Can I return my kettle?")
    assert "45 days" in tiny_tokenizer.decode(ids)
    assert "45 days" not in tiny_tokenizer.decode(Conversation(tiny_tokenizer, max_prompt_tokens=1000)
                                                  .prompt("Can I return my kettle?")[0])
    assert "45 days" in tiny_tokenizer.decode(prompt_ids(tiny_tokenizer, "Can I return my kettle?", notes=notes))
