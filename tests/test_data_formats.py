"""Loading datasets: every container and format, and every kind of validation problem (messages are UI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.formats import load_dataset, load_examples
from tunesmith.errors import ConfigError, DataError

DATA = Path(__file__).parent / "data"


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    return _write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in rows))


def _problems(path: Path, fmt: str = "auto") -> list[str]:
    with pytest.raises(DataError) as e:
        load_examples(path, fmt)  # type: ignore[arg-type]
    return e.value.problems


USER_ASSISTANT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


# --- formats and containers -------------------------------------------------------------------------------------


def test_prompt_completion_jsonl_becomes_user_assistant(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": " A2 "}])
    data = load_dataset(path)
    assert data.format == "prompt_completion"
    assert [e.messages for e in data.examples] == [
        [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
        [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": " A2 "}],  # text kept verbatim
    ]
    assert [e.source for e in data.examples] == [f"{path}:1", f"{path}:2"]


def test_alpaca_joins_instruction_and_input(tmp_path):
    path = _jsonl(tmp_path, [{"instruction": "Translate", "input": "chat", "output": "cat"},
                             {"instruction": "Say hi", "input": "", "output": "hi"},
                             {"instruction": "Say bye", "output": "bye"}])
    data = load_dataset(path)
    assert data.format == "alpaca"
    assert [e.messages[0]["content"] for e in data.examples] == ["Translate\n\nchat", "Say hi", "Say bye"]
    assert data.examples[0].messages[1] == {"role": "assistant", "content": "cat"}


def test_chat_multi_turn_with_system(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, *USER_ASSISTANT,
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    data = load_dataset(_jsonl(tmp_path, [{"messages": msgs}]))
    assert data.format == "chat" and data.examples[0].messages == msgs


def test_json_array_sources_are_indices(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    path = _write(tmp_path, "d.json", json.dumps(rows, indent=2))
    assert [e.source for e in load_examples(path)] == [f"{path}:[0]", f"{path}:[1]"]


def test_csv_rows_are_file_lines_even_with_multiline_cells(tmp_path):
    path = _write(tmp_path, "d.csv", 'prompt,completion\nhi,there\n"two\nlines",ok\n\nlast,one\n')
    examples = load_examples(path)
    assert [e.source for e in examples] == [f"{path}:2", f"{path}:3", f"{path}:6"]
    assert examples[1].messages[0]["content"] == "two\nlines"


def test_csv_chat_messages_cell_holds_json(tmp_path):
    path = _write(tmp_path, "d.csv", "messages\n" + '"' + json.dumps(USER_ASSISTANT).replace('"', '""') + '"\n')
    assert load_examples(path)[0].messages == USER_ASSISTANT


def test_byte_order_mark_and_blank_lines_are_accepted(tmp_path):
    path = _write(tmp_path, "d.jsonl", b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n\n  \n')
    assert len(load_examples(path)) == 1


def test_named_format_overrides_detection(tmp_path):
    path = _jsonl(tmp_path, [{"messages": USER_ASSISTANT}])
    assert _problems(path, "prompt_completion") == [
        f"{path}:1: prompt: missing key (a prompt_completion record has prompt, completion)",
        f"{path}:1: completion: missing key (a prompt_completion record has prompt, completion)",
        f"{path}:1: messages: unexpected key (a prompt_completion record has only prompt, completion)",
    ]


def test_small_examples_in_tests_data_load():
    assert load_dataset(DATA / "tiny.csv").format == "prompt_completion"
    assert load_dataset(DATA / "tiny_alpaca.json").format == "alpaca"


# --- validation problems -------------------------------------------------------------------------------------------


def test_bad_json_reports_line_and_column_and_keeps_checking(tmp_path):
    text = '{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n{"prompt": 1, "completion": "b"}\n'
    path = _write(tmp_path, "d.jsonl", text)
    assert _problems(path) == [
        f"{path}:2: json: Expecting property name enclosed in double quotes (column 16)",
        f"{path}:3: prompt: expected a string, got number",
    ]


def test_bad_json_array_reports_line(tmp_path):
    text = '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a" "completion": "b"}\n]'
    path = _write(tmp_path, "d.json", text)
    assert _problems(path) == [f"{path}:3: json: Expecting ',' delimiter (column 18)"]


def test_json_must_be_an_array_of_objects(tmp_path):
    path = _write(tmp_path, "d.json", '[{"prompt": "a", "completion": "b"}, "text", 3]')
    assert _problems(path) == [f"{path}:[1]: record: expected a JSON object, got string",
                               f"{path}:[2]: record: expected a JSON object, got number"]


def test_one_pretty_printed_object_is_not_jsonl(tmp_path):
    path = _write(tmp_path, "d.json", json.dumps({"prompt": "a", "completion": "b"}, indent=2))
    assert _problems(path) == [
        f"{path}: json: expected a JSON array of examples (or JSONL, one object per line), got one object"
    ]
    path = _write(tmp_path, "e.json", json.dumps({"prompt": "a", "completion": "b"}))
    assert len(load_examples(path)) == 1  # one line: a one-record JSONL file


def test_wrong_types(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": ["a"], "completion": None}, {"messages": {"role": "user"}},
                             {"messages": ["hi", {"role": 1, "content": True}]}], name="d.jsonl")
    assert _problems(path, "auto") == [
        f"{path}:1: format: looks like chat_prompt_completion (prompt/completion) but the file is chat "
        "(messages); one file holds one format",
        f"{path}:2: messages: expected a list of messages, got object",
        f"{path}:3: messages[0]: expected an object with role and content, got string",
        f"{path}:3: messages[1].role: expected a string, got number",
        f"{path}:3: messages[1].content: expected a string, got boolean",
    ]
    path = _jsonl(tmp_path, [{"prompt": 5, "completion": None}], name="e.jsonl")
    assert _problems(path) == [f"{path}:1: prompt: expected a string, got number",
                               f"{path}:1: completion: expected a string, got null"]
    path = _jsonl(tmp_path, [{"prompt": ["a"], "completion": None}], name="f.jsonl")  # a list: TRL's shape
    assert _problems(path) == [
        f"{path}:1: prompt[0]: expected an object with role and content, got string",
        f"{path}:1: completion: expected a list of messages (the conversational shape), got null",
    ]


def test_missing_and_extra_keys(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "a"}, {"prompt": "a", "completion": "b", "id": 7},
                             {"prompt": "a", "completion": "b"}])
    assert _problems(path) == [
        f"{path}:1: completion: missing key (a prompt_completion record has prompt, completion)",
        f"{path}:2: id: unexpected key (a prompt_completion record has only prompt, completion)",
    ]
    path = _jsonl(tmp_path, [{"messages": [{"role": "user", "content": "a", "mood": "x"}, {"role": "assistant"}]}],
                  name="c.jsonl")  # `name` is OpenAI's and accepted (tests/test_data_tools.py); `mood` is not
    assert _problems(path) == [f"{path}:1: messages[0].mood: unexpected key (a user message has role, content, name)",
                               f"{path}:1: messages[1].content: missing key"]


def test_empty_and_whitespace_text(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "", "completion": " \n\t"},
                             {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}])
    assert _problems(path, "auto")[:2] == [f"{path}:1: prompt: empty text", f"{path}:1: completion: only whitespace"]
    path = _jsonl(tmp_path, [{"instruction": " ", "input": "", "output": "x"}], name="a.jsonl")
    assert _problems(path) == [f"{path}:1: instruction: only whitespace"]  # an empty alpaca input is fine
    path = _jsonl(tmp_path, [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}],
                  name="c.jsonl")
    assert _problems(path) == [f"{path}:1: messages[1].content: empty text"]


def test_mixed_formats_point_at_the_odd_rows(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "a", "completion": "b"}, {"instruction": "i", "output": "o"},
                             {"prompt": "c", "completion": "d"}])
    assert _problems(path) == [
        f"{path}:2: format: looks like alpaca (instruction/input/output) but the file is prompt_completion "
        "(prompt/completion); one file holds one format"
    ]


def test_unrecognisable_records(tmp_path):
    path = _jsonl(tmp_path, [{"question": "a", "answer": "b"}])
    assert _problems(path) == [
        f"{path}:1: format: cannot tell the format from ['answer', 'question']; expected keys prompt/completion, "
        "messages, conversations, instruction/input/output or text (or pass --format; --columns maps other column "
        "names)"
    ]


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        (["user", "user"], "messages[1].role: 'user' where 'assistant' was expected (roles alternate)"),
        (["assistant", "user"], "messages[0].role: 'assistant' where 'user' was expected (roles alternate)"),
        (["user", "assistant", "system", "assistant"],
         "messages[2].role: 'system' where 'user' was expected (a system message may only come first)"),
        (["user"], "messages[0].role: the last message is 'user'; a chat example must end with an assistant reply "
                   "to train on"),
        (["system", "user", "assistant", "user"],
         "messages[3].role: the last message is 'user'; a chat example must end with an assistant reply to train on"),
        (["user", "bot"], "messages[1].role: unknown role 'bot' (expected system, user or assistant)"),
        ([], "messages: empty list; a chat example needs a user turn and an assistant reply"),
    ],
)
def test_roles_and_role_order(tmp_path, roles, problem):
    path = _jsonl(tmp_path, [{"messages": [{"role": r, "content": "x"} for r in roles]}])
    assert _problems(path) == [f"{path}:1: {problem}"]


def test_non_utf8_reports_every_line(tmp_path):
    raw = b'{"prompt": "caf\xe9", "completion": "b"}\n{"prompt": "ok", "completion": "b"}\n'
    raw += b'{"prompt": "\xff", "completion": "b"}\n'
    path = _write(tmp_path, "d.jsonl", raw)
    assert _problems(path) == [
        f"{path}:1: encoding: not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8",
        f"{path}:3: encoding: not valid UTF-8 (byte 0xff at column 13); save the file as UTF-8",
    ]


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("d.jsonl", "", "file: the file is empty; it needs at least one example"),
    ("d.jsonl", " \n\n ", "file: the file is empty; it needs at least one example"),
    ("d.csv", "prompt,completion\n", "file: no examples found (only a header or blank lines)"),
    ("d.json", "[]", "file: no examples found (only a header or blank lines)"),
])
def test_empty_files(tmp_path, name, text, problem):
    path = _write(tmp_path, name, text)
    assert _problems(path) == [f"{path}: {problem}"]


def test_csv_problems(tmp_path):
    path = _write(tmp_path, "d.csv", 'prompt,completion\nhi,there\nlonely\na,b,c\n')
    assert _problems(path) == [f"{path}:3: csv: row has 1 cell, the header has 2",
                               f"{path}:4: csv: row has 3 cells, the header has 2"]
    path = _write(tmp_path, "e.csv", "prompt,,prompt\na,b,c\n")
    assert _problems(path) == [
        f"{path}:1: csv: header needs distinct, non-empty column names, got ['prompt', '', 'prompt']"
    ]
    path = _write(tmp_path, "f.csv", "messages\nnot json\n")
    assert _problems(path) == [f"{path}:2: messages: not a JSON list of messages: Expecting value"]


def test_missing_file_directory_and_unknown_format(tmp_path):
    assert _problems(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}: file not found"]
    assert _problems(tmp_path) == [f"{tmp_path}: folder holds no .txt or .md documents and is no `datasets` "
                                   "save_to_disk folder; give a data file, a folder of documents, or a hub id"]
    with pytest.raises(ConfigError, match="unknown dataset format 'jsonl': expected one of auto, prompt_completion"):
        load_examples(_jsonl(tmp_path, [{"prompt": "a", "completion": "b"}]), "jsonl")  # type: ignore[arg-type]


def test_every_problem_is_collected_and_the_message_shows_twenty(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "", "completion": "b"}] * 25)
    with pytest.raises(DataError) as e:
        load_examples(path)
    assert len(e.value.problems) == 25
    lines = str(e.value).splitlines()
    assert len(lines) == 21 and lines[-1] == "... and 5 more problems"
    assert lines[0] == f"{path}:1: prompt: empty text" and lines[19] == f"{path}:20: prompt: empty text"


def test_loading_never_modifies_the_file(tmp_path):
    raw = b'{"prompt": "a", "completion": "b"}\r\n{"prompt": "", "completion": "b"}\n'
    path = _write(tmp_path, "d.jsonl", raw)
    _problems(path)
    assert path.read_bytes() == raw
