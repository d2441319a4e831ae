"""Containers beyond JSONL: Parquet, Arrow, `datasets` folders, hub ids (never the network) and documents."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data import readers
from tunesmith.data.formats import load_dataset
from tunesmith.errors import ConfigError, DataError

QA = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]
USER_ASSISTANT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def _parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _problems(path: str | Path, fmt: str = "auto", columns: str | None = None) -> list[str]:
    with pytest.raises(DataError) as e:
        load_dataset(path, fmt, columns)  # type: ignore[arg-type]
    return e.value.problems


# --- Parquet and Arrow ------------------------------------------------------------------------------------------


def test_parquet_rows_are_numbered_from_zero(tmp_path):
    path = _parquet(tmp_path / "qa.parquet", QA)
    data = load_dataset(path)
    assert data.format == "prompt_completion" and data.sha256 == readers.file_sha256(path)
    assert [e.source for e in data.examples] == [f"{path}:row 0", f"{path}:row 1"]
    assert data.examples[1].messages[1] == {"role": "assistant", "content": "A2"}


def test_parquet_nested_messages_and_struct_nulls(tmp_path):
    # Arrow unifies struct fields: the second row's turns get "weight": null, which must not read as a key.
    rows = [{"conversations": [{"from": "human", "value": "a", "weight": 0}, {"from": "gpt", "value": "b"}]},
            {"conversations": [{"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}]
    path = _parquet(tmp_path / "sg.parquet", rows)
    assert _problems(path) == [f"{path}:row 0: conversations[0].weight: unexpected key (a turn has from, value)"]
    rows[0]["conversations"][0].pop("weight")
    data = load_dataset(_parquet(tmp_path / "ok.parquet", [*rows, {"conversations": [
        {"from": "human", "value": "e"}, {"from": "gpt", "value": "f"}]}]))
    assert data.format == "sharegpt" and len(data.examples) == 3


def test_table_columns_are_a_schema(tmp_path):
    rows = [{"id": 1, "prompt": "Q", "completion": "A", "source": "faq"}]
    data = load_dataset(_parquet(tmp_path / "extra.parquet", rows))
    assert data.ignored_columns == ["id", "source"] and data.examples[0].messages[0]["content"] == "Q"
    path = _parquet(tmp_path / "typo.parquet", [{"prompt": "Q", "completon": "A"}])
    assert _problems(path, "prompt_completion") == [
        f"{path}: columns: no completion column for the prompt_completion format (columns: prompt, completon); "
        "name the right one with --columns completion=COLUMN"]
    mapped = load_dataset(path, columns="completion=completon")
    assert mapped.ignored_columns == [] and mapped.examples[0].messages[1]["content"] == "A"


def test_parquet_values_are_checked_per_row(tmp_path):
    path = _parquet(tmp_path / "bad.parquet", [{"prompt": "Q", "completion": "A"}, {"prompt": "", "completion": None}])
    assert _problems(path) == [f"{path}:row 1: prompt: empty text",
                               f"{path}:row 1: completion: expected a string, got null"]
    rows = [{"instruction": "Say hi", "input": None, "output": "hi"}]  # pandas writes None for "no input"
    assert load_dataset(_parquet(tmp_path / "alpaca.parquet", rows)).examples[0].messages[0]["content"] == "Say hi"


def test_arrow_file_and_stream_formats(tmp_path):
    table = pa.Table.from_pylist([{"messages": USER_ASSISTANT}])
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    for name in ("f.arrow", "s.arrow"):
        data = load_dataset(tmp_path / name)
        assert data.format == "chat" and data.examples[0].messages == USER_ASSISTANT


def test_unreadable_and_empty_tables(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    (problem,) = _problems(bad)
    assert problem.startswith(f"{bad}: parquet: cannot read the file (")
    empty = _parquet(tmp_path / "empty.parquet", [])
    assert _problems(empty) == [f"{empty}: table: no rows; it needs at least one example"]


# --- datasets folders and hub ids --------------------------------------------------------------------------------


def test_datasets_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")  # the `datasets` extra

    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "one"))
    data = load_dataset(tmp_path / "one")
    assert data.format == "prompt_completion" and data.examples[0].source == f"{tmp_path / 'one'}:row 0"
    assert data.sha256 == load_dataset(tmp_path / "one").sha256
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "test": datasets.Dataset.from_list(QA[:1])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert len(load_dataset(tmp_path / "dict").examples) == 2  # the train split by default
    assert len(load_dataset(f"{tmp_path / 'dict'}:test").examples) == 1
    assert _problems(f"{tmp_path / 'dict'}:dev") == [
        f"{tmp_path / 'dict'}:dev: no split 'dev'; name one as {tmp_path / 'dict'}:SPLIT, one of train, test"]


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # conftest sets HF_DATASETS_OFFLINE=1 as well
    (problem,) = _problems("tunesmith-test/no-such-dataset")
    assert problem.startswith("tunesmith-test/no-such-dataset: no such file here, and the Hugging Face Hub cannot "
                              "be reached (")
    assert problem.endswith("); download the dataset where there is network, or give a local file")


def test_hub_id_goes_through_datasets_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")

    calls = []

    def fake_load_dataset(repo, split=None):
        calls.append((repo, split))
        d = datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "test": datasets.Dataset.from_list(QA)})
        return d[split] if split else d

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_dataset("org/qa")
    assert calls == [("org/qa", None)] and data.examples[0].source == "org/qa:row 0"
    assert data.sha256.startswith("datasets:")
    load_dataset("org/qa:test")
    assert calls[-1] == ("org/qa", "test")


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path):
    assert _problems("data/train.jsonl") == ["data/train.jsonl: file not found"]
    assert _problems(str(tmp_path / "x" / "y")) == [f"{tmp_path / 'x' / 'y'}: file not found"]


# --- documents ---------------------------------------------------------------------------------------------------


def test_a_folder_of_documents(tmp_path):
    docs = tmp_path / "handbook"
    (docs / "policies").mkdir(parents=True)
    (docs / "intro.md").write_text("# Intro\nThe guild was founded in 1897.\n", encoding="utf-8")
    (docs / "policies" / "leave.txt").write_text("Leave is 30 days.", encoding="utf-8")
    (docs / "notes.pdf").write_bytes(b"%PDF")  # not a document kind we read
    (docs / ".drafts").mkdir()
    (docs / ".drafts" / "wip.md").write_text("unfinished", encoding="utf-8")
    data = load_dataset(docs)
    assert data.format == "text"
    assert [(e.source, e.text) for e in data.examples] == [
        (str(docs / "intro.md"), "# Intro\nThe guild was founded in 1897.\n"),
        (str(docs / "policies" / "leave.txt"), "Leave is 30 days."),
    ]
    assert load_dataset(docs / "intro.md").examples[0].text.startswith("# Intro")
    before = data.sha256
    (docs / "policies" / "leave.txt").write_text("Leave is 31 days.", encoding="utf-8")
    assert load_dataset(docs).sha256 != before


def test_document_problems(tmp_path):
    (tmp_path / "a.md").write_text("", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"fine line\nbad \xff byte\n")
    assert _problems(tmp_path) == [f"{tmp_path / 'a.md'}: text: empty text",
                                   f"{tmp_path / 'b.txt'}:2: encoding: not valid UTF-8 (byte 0xff); save the file "
                                   "as UTF-8"]
    with pytest.raises(ConfigError, match=r"documents \(.txt, .md\) are read as text; --format chat does not apply"):
        load_dataset(tmp_path, "chat")


def test_jsonl_of_text_records(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("one", "two")), encoding="utf-8")
    assert [e.text for e in load_dataset(path, "text").examples] == ["one", "two"]


def test_hub_and_folder_split_problems(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    from datasets.exceptions import DatasetNotFoundError

    def missing(repo, split=None):
        raise DatasetNotFoundError(f"Dataset '{repo}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    assert _problems("org/nothing") == ["org/nothing: no such file here, and no such dataset on the Hugging Face Hub"]
    datasets.DatasetDict({"a": datasets.Dataset.from_list(QA), "b": datasets.Dataset.from_list(QA)}).save_to_disk(
        str(tmp_path / "ab"))
    assert _problems(tmp_path / "ab") == [f"{tmp_path / 'ab'}: several splits and none is 'train'; name one as "
                                          f"{tmp_path / 'ab'}:SPLIT, one of a, b"]
    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "one"))
    assert _problems(f"{tmp_path / 'one'}:test") == [
        f"{tmp_path / 'one'}:test: this `datasets` folder holds one split, not named ones; drop ':test'"]
