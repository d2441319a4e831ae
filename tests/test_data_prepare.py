"""`data prepare` as a library: dedup, a seeded split that keeps prompts on one side, safe writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data import similarity
from tunesmith.data.formats import load_dataset, load_examples
from tunesmith.data.prepare import PrepareConfig, deduplicate, prepare, split
from tunesmith.errors import ConfigError, TunesmithError


def _rows(n: int) -> list[dict[str, str]]:
    """n distinct prompt/completion rows (distinct enough not to be near duplicates)."""
    words = ["kettle", "teapot", "harbour", "lantern", "orchard", "violin", "glacier", "copper", "meadow", "rocket"]
    return [{"prompt": f"Tell me about {words[i % 10]} number {i} and {words[(i * 7) % 10]}.",
             "completion": f"Item {i}: {words[(i * 3) % 10]} {i * 37 % 101} {words[(i + 4) % 10]} {i * i}."}
            for i in range(n)]


def _write(tmp_path: Path, rows: list[dict[str, str]], name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_dedup_keeps_first_occurrence_and_says_why(tmp_path):
    rows = _rows(6)
    near = {"prompt": rows[1]["prompt"] + "!", "completion": rows[1]["completion"].upper()}
    path = _write(tmp_path, [*rows, rows[0], near, rows[0]])
    kept, removed = deduplicate(load_examples(path))
    assert [e.source for e in kept] == [f"{path}:{i}" for i in range(1, 7)]
    assert [(r.source, r.reason, r.of) for r in removed] == [
        (f"{path}:7", "exact duplicate", f"{path}:1"),
        (f"{path}:8", "near duplicate", f"{path}:2"),
        (f"{path}:9", "exact duplicate", f"{path}:1"),
    ]


def test_split_is_seeded_sized_and_keeps_prompt_groups_together(tmp_path):
    rows = _rows(40)
    rows += [{"prompt": rows[i]["prompt"], "completion": f"Another answer {i}."} for i in range(0, 40, 4)]
    examples = load_examples(_write(tmp_path, rows))
    train, evals = split(examples, 0.2, seed=3)
    assert len(train) + len(evals) == 50 and 10 <= len(evals) <= 11
    assert {similarity.prompt_key(e) for e in train}.isdisjoint(similarity.prompt_key(e) for e in evals)
    assert split(examples, 0.2, seed=3) == (train, evals)
    assert split(examples, 0.2, seed=4) != (train, evals)
    order = [e.source for e in examples]
    assert [e.source for e in evals] == sorted((e.source for e in evals), key=order.index)  # file order kept


def test_split_edge_cases(tmp_path):
    examples = load_examples(_write(tmp_path, _rows(3)))
    assert split(examples, 0.0, seed=0) == (examples, [])
    train, evals = split(examples, 0.01, seed=0)
    assert (len(train), len(evals)) == (2, 1)  # a positive fraction holds out at least one example
    with pytest.raises(ConfigError, match=r"--eval-fraction 1.0: must be at least 0 and below 1"):
        split(examples, 1.0, seed=0)
    with pytest.raises(ConfigError, match="cannot hold out an eval split from 1 example; use --eval-fraction 0"):
        split(examples[:1], 0.1, seed=0)


def test_prepare_writes_chat_jsonl_and_report(tmp_path):
    rows = _rows(30)
    path = _write(tmp_path, [*rows, rows[5]])
    before = path.read_bytes()
    result = prepare(load_dataset(path), tmp_path / "out", PrepareConfig(eval_fraction=0.2, seed=1))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "report.json", "train.jsonl"]
    train, evals = load_dataset(out / "train.jsonl"), load_dataset(out / "eval.jsonl")
    assert train.format == evals.format == "chat"
    assert len(train.examples) + len(evals.examples) == 30 and len(evals.examples) == 6
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["count"] == 31 and report["input"]["format"] == "prompt_completion"
    assert report["removed"] == [{"source": f"{path}:31", "reason": "exact duplicate", "of": f"{path}:6"}]
    assert report["output"]["eval"]["count"] == 6 and report["split"]["eval"] == [e.source for e in result.eval]
    assert report["quality"]["exact_duplicates"] == [[f"{path}:6", f"{path}:31"]]
    assert path.read_bytes() == before


def test_prepare_refuses_to_overwrite_without_force(tmp_path):
    data = load_dataset(_write(tmp_path, _rows(10)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TunesmithError, match=r"folder is not empty; pass --force to overwrite train\.jsonl"):
        prepare(data, out, PrepareConfig())
    prepare(data, out, PrepareConfig(force=True))
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only our own outputs
    prepare(data, out, PrepareConfig(force=True, eval_fraction=0))
    assert not (out / "eval.jsonl").exists()  # no stale eval split left behind


def test_prepare_never_overwrites_its_input(tmp_path):
    path = _write(tmp_path, _rows(10), name="train.jsonl")
    before = path.read_bytes()
    with pytest.raises(TunesmithError, match="would overwrite the input"):
        prepare(load_dataset(path), tmp_path, PrepareConfig(force=True))
    assert path.read_bytes() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TunesmithError, match="is a file; give a folder"):
        prepare(load_dataset(path), tmp_path / "afile", PrepareConfig())


def test_no_dedup_keeps_copies_but_still_keeps_them_on_one_side(tmp_path):
    rows = _rows(20)
    path = _write(tmp_path, rows + rows[:5])
    result = prepare(load_dataset(path), tmp_path / "out", PrepareConfig(dedup=False, eval_fraction=0.3, seed=2))
    assert result.removed == [] and len(result.train) + len(result.eval) == 25
    assert {similarity.exact_key(e) for e in result.train}.isdisjoint(similarity.exact_key(e) for e in result.eval)
