"""Read a dataset file into canonical chat examples, collecting every problem with its location.

Containers: a JSON array, JSONL (one object per line), or CSV with a header row.
Record formats, auto-detected by keys or named by the user:
- `prompt_completion`: {"prompt", "completion"} -> [user, assistant]
- `alpaca`: {"instruction", "input" (optional), "output"} -> user = instruction (+ blank line + input)
- `chat`: {"messages": [{"role", "content"}, ...]} in the OpenAI shape (optional system first, then
  user/assistant alternating, ending with assistant). In CSV the `messages` cell holds that JSON list.
  With tool calling (OpenAI's fine-tuning shape: `tools`, `tool_calls`, role `tool`, `weight`, `name`; a
  first record holding only `tools` declares them for the whole file) see `tunesmith.data.tools`.

Locations: `file.jsonl:12` is a JSONL line, `file.json:[3]` a JSON array index (0-based), `file.csv:5` a CSV
line (the header is line 1). The input file is only ever read.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tunesmith.data import tools as tool_data
from tunesmith.data.validate import FORMAT_KEYS, detect_format, json_type, to_messages
from tunesmith.errors import ConfigError, DataError

Format = Literal["auto", "prompt_completion", "chat", "alpaca"]
RecordFormat = Literal["prompt_completion", "chat", "alpaca"]
FORMATS: tuple[str, ...] = get_args(Format)


@dataclass(frozen=True)
class Example:
    """One training example in canonical chat form, and where it came from."""

    messages: list[dict[str, Any]]  # [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...]
    source: str  # "file.jsonl:12" (JSONL line / JSON array index / CSV line)
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions the conversation may call
    parallel_tool_calls: bool | None = None  # as the record said (False: one call per message at most)

    def record(self) -> dict[str, Any]:
        """The example as one chat record of a JSONL file (what `data prepare` and run folders write)."""
        row: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            row["tools"] = self.tools
        if self.parallel_tool_calls is not None:
            row["parallel_tool_calls"] = self.parallel_tool_calls
        return row


@dataclass(frozen=True)
class Dataset:
    """A loaded file: its examples and the record format they were read as."""

    path: str
    format: RecordFormat
    examples: list[Example]


@dataclass(frozen=True)
class _Record:
    where: str  # "file:line"
    value: Any  # parsed JSON value (a dict when well-formed)
    error: str | None = None  # "field: message" when the record could not be parsed


def file_sha256(path: str | Path) -> str:
    """'sha256:<hex>' of a file's bytes (run manifests and prepare reports record their inputs by it)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def load_examples(path: str | Path, fmt: Format = "auto") -> list[Example]:
    """Every example of a file; raises `DataError` listing every problem as `file:line: field: msg`."""
    return load_dataset(path, fmt).examples


def load_dataset(path: str | Path, fmt: Format = "auto") -> Dataset:
    """Like `load_examples`, also telling which record format was read (auto-detected unless named)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format '{fmt}': expected one of {', '.join(FORMATS)}")
    name = str(path)
    records = _read_records(Path(path), name)
    records, file_tools = _file_tools(records)
    chosen: RecordFormat = _choose_format(records, name) if fmt == "auto" else fmt
    problems: list[str] = []
    examples: list[Example] = []
    for rec in records:
        if rec.error is not None:
            problems.append(f"{rec.where}: {rec.error}")
            continue
        found = detect_format(rec.value) if isinstance(rec.value, dict) else None
        if fmt == "auto" and found is not None and found != chosen:
            problems.append(
                f"{rec.where}: format: looks like {found} ({_keys(found)}) but the file is {chosen} "
                f"({_keys(chosen)}); one file holds one format"
            )
            continue
        value = rec.value
        if file_tools is not None and isinstance(value, dict) and "tools" not in value and "functions" not in value:
            value = {**value, "tools": file_tools}  # the file-level set, for rows that declare none
        messages, errs = to_messages(value, chosen)
        problems += [f"{rec.where}: {e}" for e in errs]
        if messages is not None and not errs:
            extra = {"tools": tool_data.record_tools(value), "parallel_tool_calls": value.get("parallel_tool_calls")}
            examples.append(Example(messages=messages, source=rec.where, **extra))
    if problems:
        raise DataError(problems)
    return Dataset(path=name, format=chosen, examples=examples)


def _keys(fmt: str) -> str:
    required, optional = FORMAT_KEYS[fmt]
    order = ["messages", "prompt", "completion", "instruction", "input", "output"]
    return "/".join(sorted((k for k in required + optional if k in order), key=order.index))


def _file_tools(records: list[_Record]) -> tuple[list[_Record], list[dict[str, Any]] | None]:
    """A first record holding only `tools` declares them for every row; the rest are the examples."""
    if not records or records[0].error is not None or not tool_data.is_tools_header(records[0].value):
        return records, None
    head = records[0].value
    key = "tools" if "tools" in head else "functions"
    tools, problems = tool_data.check_tools(head[key], key, legacy=key == "functions")
    if len(head) > 1:
        problems.append("tools: the file-level record declares either tools or functions, not both")
    if problems:
        raise DataError([f"{records[0].where}: {p}" for p in problems])
    if len(records) == 1:
        raise DataError([f"{records[0].where}: file: only the tools are declared; no examples follow"])
    return records[1:], tools


def _choose_format(records: list[_Record], name: str) -> RecordFormat:
    """The most common detected format (ties: the first seen); an error when no record is recognisable."""
    parsed = [r for r in records if r.error is None]
    seen = [f for r in parsed if isinstance(r.value, dict) and (f := detect_format(r.value))]
    if not seen:
        if not parsed:
            raise DataError([f"{r.where}: {r.error}" for r in records])
        first = parsed[0]
        shown = sorted(first.value) if isinstance(first.value, dict) else json_type(first.value)
        raise DataError(
            [f"{first.where}: format: cannot tell the format from {shown}; expected keys "
             "prompt/completion, messages, or instruction/input/output (or pass --format)"]
        )
    counts = Counter(seen)
    best = max(counts.values())
    return next(f for f in seen if counts[f] == best)


def _read_records(path: Path, name: str) -> list[_Record]:
    if not path.exists():
        raise DataError([f"{name}: file not found"])
    if path.is_dir():
        raise DataError([f"{name}: is a directory; expected a .jsonl, .json or .csv file"])
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
    if not raw.strip():
        raise DataError([f"{name}: file: the file is empty; it needs at least one example"])
    text = _decode(raw, name)
    if path.suffix.lower() == ".csv":
        records = _read_csv(text, name)
    elif text.lstrip().startswith("[") or _one_json_object(text):
        records = _read_json_array(text, name)
    else:
        records = _read_jsonl(text, name)
    if not records:
        raise DataError([f"{name}: file: no examples found (only a header or blank lines)"])
    return records


def _decode(raw: bytes, name: str) -> str:
    """UTF-8 text; every line with invalid bytes is reported (not just the first)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    problems = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(
                f"{name}:{n}: encoding: not valid UTF-8 (byte 0x{line[e.start]:02x} at column "
                f"{e.start + 1}); save the file as UTF-8"
            )
    raise DataError(problems)


def _read_jsonl(text: str, name: str) -> list[_Record]:
    records: list[_Record] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(_Record(f"{name}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            records.append(_Record(f"{name}:{n}", None, f"json: {e.msg} (column {e.colno})"))
    return records


def _one_json_object(text: str) -> bool:
    """A whole file that is one (pretty-printed) JSON object, rather than JSONL."""
    if "\n" not in text.strip():
        return False  # a single line is a one-record JSONL file
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _read_json_array(text: str, name: str) -> list[_Record]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError([f"{name}:{e.lineno}: json: {e.msg} (column {e.colno})"]) from None
    if not isinstance(items, list):
        raise DataError([f"{name}: json: expected a JSON array of examples (or JSONL, one object per line), "
                         f"got one {json_type(items)}"])
    return [_Record(f"{name}:[{i}]", item) for i, item in enumerate(items)]


def _read_csv(text: str, name: str) -> list[_Record]:
    """Rows as dicts of strings; the `messages` column (chat) holds a JSON list and is parsed here."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as e:
        raise DataError([f"{name}:1: csv: cannot read the header row ({e})"]) from None
    if "" in header or len(set(header)) != len(header):
        raise DataError([f"{name}:1: csv: header needs distinct, non-empty column names, got {header}"])
    records: list[_Record] = []
    start = reader.line_num + 1
    try:
        for row in reader:
            where, start = f"{name}:{start}", reader.line_num + 1
            if any(cell.strip() for cell in row):
                records.append(_csv_record(where, header, row))
    except csv.Error as e:
        records.append(_Record(f"{name}:{reader.line_num}", None, f"csv: {e}"))
    return records


def _csv_record(where: str, header: list[str], row: list[str]) -> _Record:
    if len(row) != len(header):
        cells = f"{len(row)} cell{'s' if len(row) != 1 else ''}"
        return _Record(where, None, f"csv: row has {cells}, the header has {len(header)}")
    value: dict[str, Any] = dict(zip(header, row, strict=True))
    for key in ("messages", "tools"):
        if key == "tools" and not value.get(key, "").strip():
            value.pop(key, None)  # an empty tools cell: the row declares none
        elif key in value:
            try:
                value[key] = json.loads(value[key])
            except json.JSONDecodeError as e:
                return _Record(where, None, f"{key}: not a JSON list of {key}: {e.msg}")
    return _Record(where, value)

