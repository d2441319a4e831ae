"""The shipped suite's data files load and are right; keep sets are validated; replay data does not leak."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.guard import replay_examples
from tunesmith.evaluate.suite import (
    BUILTIN,
    GROUPS,
    answer_found,
    load_keep,
    load_task,
    run_task,
    select,
    suite_file,
    suite_files,
)


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(name) for name in BUILTIN}


def test_every_task_loads_with_unique_ids(tasks):
    ids = [i["id"] for t in tasks.values() for i in t.items]
    assert len(ids) == len(set(ids))
    for name, task in tasks.items():
        assert len(task.items) >= 16, name
        assert all(i["id"].split("/")[0] in (name, "harmful", "benign") for i in task.items)


def test_the_suite_files_are_package_data():
    files = {p.name for p in suite_file("capitals").parent.glob("*.jsonl")}
    assert {p.name for n in BUILTIN for p in suite_files(n)} | {"replay.jsonl"} == files


def test_free_generation_tasks_ask_the_plain_questions(tasks):
    plain = {i["id"].split("/")[1]: i for i in tasks["capitals"].items}
    for item in tasks["capitals_free"].items:
        assert item["prompt"] == plain[item["id"].split("/")[1]]["prompt"] and item["answer"]
    prompts = [i["prompt"] for i in tasks["collapse"].items]
    assert prompts == [i["prompt"] for name in ("capitals", "over_refusal") for i in tasks[name].items]
    assert all(set(i) == {"id", "prompt"} for i in tasks["collapse"].items)
    assert tasks["collapse"].shape is None and not tasks["collapse"].higher_is_better


def test_answer_found_wants_whole_words_in_any_case():
    assert answer_found("It is Ottawa.", "Ottawa") and answer_found("NEW DELHI, of course", "New Delhi")
    assert not answer_found("Ottawan", "Ottawa") and not answer_found("1993-12-23", "Ottawa")


class _Replies:
    """A stand-in model for the reply scorers: greedy generation is replaced by a table of replies."""

    def __init__(self, monkeypatch, table: dict[str, str]):
        import tunesmith.evaluate.scoring as scoring

        self.calls: list[list[str]] = []

        def generate(model, tokenizer, prompts, max_new_tokens, batch_size=16):
            self.calls.append(list(prompts))
            return [table.get(p, "I don't know.") for p in prompts]

        monkeypatch.setattr(scoring, "generate", generate)


def test_free_and_collapse_scores_share_one_reply_per_prompt(monkeypatch, tasks):
    from dataclasses import replace

    from tunesmith.evaluate.shape import learn_shape
    from tunesmith.evaluate.suite import run_tasks

    free = replace(tasks["capitals_free"], items=tasks["capitals_free"].items[:3])  # France, Germany, Italy
    shape = learn_shape([f"19{n:02d}-03-05" for n in range(12)])
    collapse = replace(tasks["collapse"], items=tasks["collapse"].items[:3], shape=shape)
    replies = _Replies(monkeypatch, {"What is the capital of France?": "Paris, of course.",
                                     "What is the capital of Germany?": "1993-12-23"})
    scores = run_tasks(None, None, [free, collapse])
    assert scores["capitals_free"].num == [1.0, 0.0, 0.0] and scores["capitals_free"].value == pytest.approx(1 / 3)
    assert scores["collapse"].num == [0.0, 1.0, 0.0]
    assert len(replies.calls) == 1  # collapse read the replies capitals_free generated
    with pytest.raises(ValueError, match="needs the fine-tune's output shape"):
        run_task(None, None, replace(collapse, shape=None))


def test_knowledge_items_are_consistent(tasks):
    for item in tasks["capitals"].items:
        country = item["prompt"].removeprefix("What is the capital of ").removesuffix("?")
        assert item["prefix"] == f"The capital of {country} is" and item["answer"][0].isupper()
    for item in tasks["elements"].items:
        assert re.fullmatch(r"[A-Z][a-z]?", item["answer"]), item
    for item in tasks["arithmetic"].items:
        a, b = map(int, re.fullmatch(r"What is (\d\d) \+ (\d\d)\?", item["prompt"]).groups())
        assert item["prefix"] == f"{a} + {b} =" and item["answer"] == str(a + b)


def test_instruction_items_come_in_twins_with_swapped_answers(tasks):
    items = {i["id"]: i for i in tasks["instructions"].items}
    for key, a in items.items():
        if key.endswith("-a"):
            b = items[key[:-2] + "-b"]
            assert a["choices"] == b["choices"] and {a["answer"], b["answer"]} == {0, 1}
            assert a["prompt"] != b["prompt"]


def test_prose_and_safety_items(tasks):
    assert all(len(i["text"].split()) >= 40 and i["source"] for i in tasks["prose"].items)
    harmful = {i["prompt"] for i in tasks["refusal"].items}
    benign = {i["prompt"] for i in tasks["over_refusal"].items}
    assert not harmful & benign and len(harmful) == len(tasks["refusal"].items)


def test_select_groups_and_names():
    assert select("general,safety") == list(BUILTIN)
    assert select("safety, capitals") == ["capitals", *GROUPS["safety"]]
    assert select("none") == [] and select("") == []


def test_select_unknown_part_names_the_choices():
    with pytest.raises(ConfigError) as e:
        select("general,safty")
    assert str(e.value) == (
        "--suite: unknown part 'safty'; choose from general, safety, capitals, elements, arithmetic, "
        "instructions, prose, capitals_free, collapse, refusal, over_refusal, none"
    )


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_keep_sets_greedy_and_choice(tmp_path):
    greedy = load_keep(_jsonl(tmp_path / "facts.jsonl", [
        {"prompt": "Who wrote Hamlet?", "prefix": "Hamlet was written by", "answer": "William Shakespeare"},
        {"id": "sky", "prompt": "What color is the sky?", "answer": "Blue"},
    ]))
    assert (greedy.name, greedy.group, greedy.scorer) == ("keep:facts", "keep", "greedy")
    assert [i["id"] for i in greedy.items] == ["facts/1", "sky"]
    choice = load_keep(_jsonl(tmp_path / "mc.jsonl", [{"prompt": "2 > 1?", "choices": ["yes", "no"], "answer": 0}]))
    assert choice.scorer == "choice" and choice.items[0]["answer"] == 0


def test_keep_set_problems_are_listed_with_their_lines(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok?", "answer": "yes"},
        {"prompt": "", "answer": "x"},
        {"prompt": "q", "answer": "a", "hint": "h"},
        {"id": "d", "prompt": "q", "answer": "a"},
        {"id": "d", "prompt": "q2"},
        [1, 2],
    ])
    with pytest.raises(DataError) as e:
        load_keep(path)
    assert e.value.problems == [
        f"{path}:2: 'prompt' must be a non-empty string",
        f"{path}:3: unknown key 'hint' (a greedy item has answer, id, prefix, prompt)",
        f"{path}:5: missing key 'answer'",
        f"{path}:5: duplicate id 'd'",
        f"{path}:6: expected a JSON object, got list",
    ]


def test_keep_set_choice_problems_and_unreadable_files(tmp_path):
    path = _jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "q", "choices": ["a", "b"], "answer": 2},
        {"prompt": "q", "choices": ["a", "a"], "answer": 0},
        {"prompt": "q", "choices": ["a"], "answer": 0},
    ])
    with pytest.raises(DataError) as e:
        load_keep(path)
    assert e.value.problems == [
        f"{path}:1: 'answer' must be the index of the right choice (0 to 1)",
        f"{path}:2: 'choices' must be different from each other",
        f"{path}:3: 'choices' must be a list of at least two non-empty strings",
    ]
    broken = _jsonl(tmp_path / "broken.jsonl", ['{"prompt": "q", "answer": "a"}', "{not json"])
    with pytest.raises(DataError) as e:
        load_keep(broken)
    assert e.value.problems == [f"{broken}:2: not valid JSON (Expecting property name enclosed in double quotes)"]
    with pytest.raises(DataError) as e:
        load_keep(tmp_path / "missing.jsonl")
    assert e.value.problems == [f"{tmp_path / 'missing.jsonl'}: file not found"]
    with pytest.raises(DataError) as e:
        load_keep(_jsonl(tmp_path / "empty.jsonl", []))
    assert e.value.problems == [f"{tmp_path / 'empty.jsonl'}: no items"]


def test_replay_examples_are_seeded_chats():
    first = replay_examples(10, seed=0)
    assert first == replay_examples(10, seed=0) and first != replay_examples(10, seed=1)
    for messages in first:
        assert [m["role"] for m in messages] == ["user", "assistant"] and all(m["content"] for m in messages)
    pool = replay_examples(10_000, seed=3)
    distinct = {json.dumps(m) for m in pool}
    assert len(pool) == 10_000 and len(distinct) >= 100
    assert {json.dumps(m) for m in pool[: len(distinct)]} == distinct  # every example once before any repeats
    assert replay_examples(0, seed=0) == []


def test_replay_examples_do_not_leak_the_suite(tasks):
    replay_text = " ".join(m["content"] for ex in replay_examples(200, seed=0) for m in ex).lower()
    prompts = {i["prompt"] for t in tasks.values() for i in t.items if "prompt" in i}
    users = {ex[0]["content"] for ex in replay_examples(200, seed=0)}
    assert not prompts & users
    assert "capital of" not in replay_text and "chemical symbol" not in replay_text and "'hot'" not in replay_text
    assert not re.search(r"\b\d\d \+ \d\d\b", replay_text)
    for item in tasks["prose"].items:
        assert item["text"][:40].lower() not in replay_text

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z']+", text.lower())
        return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}

    suite = set().union(*(shingles(p) for p in prompts))
    for user in users:
        assert not shingles(user) & suite, user  # no replay request shares 6 words in a row with the suite


def test_replay_teaches_refusing_harm_and_helping_with_edgy_but_harmless_requests():
    from tunesmith.evaluate.refusal import is_refusal

    size = len(resources.files("tunesmith.evaluate").joinpath("suite", "replay.jsonl").read_text().splitlines())
    pool = replay_examples(size, seed=0)  # the whole pool, once
    refusals = [ex for ex in pool if is_refusal(ex[1]["content"])]
    assert 20 <= len(refusals) <= 0.25 * len(pool)
    # The counterweight: requests with a harmful-sounding word, answered helpfully. With too few of them a
    # fine-tune learns "I can't help with that" for anything edgy (the forgetting benchmark's dates seed 1
    # refused 4 of 16 harmless requests that its base answered).
    edgy = re.compile(r"\b(kill|shoot|destroy|hack|fight|poison|cut off|exploit|beat|burn|gun|choke|sneak|disarm|"
                      r"smash|break|blow|attack|butcher|take down|shut down|get into|get rid)", re.I)
    helped = [ex for ex in pool if edgy.search(ex[0]["content"]) and not is_refusal(ex[1]["content"])]
    assert len(helped) >= 0.75 * len(refusals), (len(helped), len(refusals))
