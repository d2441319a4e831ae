"""Read a dataset into canonical examples, collecting every problem with its location.

Containers: a JSON array, JSONL (one object per line), or CSV with a header row, read here; Parquet, Arrow,
`datasets` folders, hub ids and plain-text documents, read in `readers`.
Record formats, auto-detected by keys or named by the user:
- `prompt_completion`: {"prompt", "completion"} -> [user, assistant]
- `alpaca`: {"instruction", "input" (optional), "output"} -> user = instruction (+ blank line + input)
- `chat`: {"messages": [{"role", "content"}, ...]} in the OpenAI shape (optional system first, then
  user/assistant alternating, ending with assistant). In CSV the `messages` cell holds that JSON list.
  With tool calling (OpenAI's fine-tuning shape: `tools`, `tool_calls`, role `tool`, `weight`, `name`; a
  first record holding only `tools` declares them for the whole file) see `tunesmith.data.tools`.
- `sharegpt`, `chat_prompt_completion` (TRL's conversational prompt/completion) and `text` (a document for
  language modelling): see `shapes`.
`columns` renames keys first: `prompt=question` reads each record's `question` as its `prompt`.
Any record with a reply may carry `facts`: what a right reply must state, for the fact-recall metric
(`tunesmith.evaluate.metrics.fact_recall`): a list whose items are a string or a list of alternative
strings, e.g. `"facts": ["45 days", ["citric acid", "ClearFlow"]]` (a single string is one fact). Training
ignores them.

Locations: `file.jsonl:12` is a JSONL line, `file.json:[3]` a JSON array index (0-based), `file.csv:5` a CSV
line (the header is line 1), `file.parquet:row 3` a table row (0-based). The input is only ever read.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from tunesmith.data import readers, shapes
from tunesmith.data import tools as tool_data
from tunesmith.data.readers import Record as _Record
from tunesmith.data.readers import file_sha256 as file_sha256  # the one content hash, for manifests and reports
from tunesmith.data.validate import json_type
from tunesmith.errors import ConfigError, DataError

Format = Literal["auto", "prompt_completion", "chat", "alpaca", "sharegpt", "chat_prompt_completion", "text"]
RecordFormat = Literal["prompt_completion", "chat", "alpaca", "sharegpt", "chat_prompt_completion", "text"]
FORMATS: tuple[str, ...] = get_args(Format)
Columns = str | Mapping[str, str] | None  # "prompt=question,completion=answer", or {"prompt": "question", ...}


@dataclass(frozen=True)
class Example:
    """One training example in canonical chat form (or a document, for `text`), and where it came from."""

    messages: list[dict[str, Any]]  # [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}]; [] for text
    source: str  # "file.jsonl:12" (JSONL line / JSON array index / CSV line / table row / document path)
    text: str | None = None  # a document for language modelling (the `text` format)
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions the conversation may call
    parallel_tool_calls: bool | None = None  # as the record said (False: one call per message at most)
    facts: tuple[tuple[str, ...], ...] = ()  # what a right reply states; each fact is a tuple of alternatives

    @property
    def content(self) -> list[dict[str, Any]] | str:
        """What training encodes: the document's text, or the chat messages (rendered with `tools`)."""
        return self.text if self.text is not None else self.messages

    def record(self) -> dict[str, Any]:
        """The example as one JSONL record (what `data prepare` and run folders write): text, or chat."""
        if self.text is not None:
            return {"text": self.text}
        row: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            row["tools"] = self.tools
        if self.parallel_tool_calls is not None:
            row["parallel_tool_calls"] = self.parallel_tool_calls
        if self.facts:  # so a run folder's eval split keeps them for fact recall
            row["facts"] = [list(alternatives) for alternatives in self.facts]
        return row


@dataclass(frozen=True)
class Dataset:
    """A loaded file: its examples and the record format they were read as."""

    path: str
    format: RecordFormat
    examples: list[Example]
    sha256: str = ""  # content hash of what was read (see `readers.Source.sha256`)
    ignored_columns: list[str] = field(default_factory=list)  # table columns the format does not use


def load_examples(path: str | Path, fmt: Format = "auto", columns: Columns = None) -> list[Example]:
    """Every example of a file; raises `DataError` listing every problem as `file:line: field: msg`."""
    return load_dataset(path, fmt, columns).examples


def load_dataset(path: str | Path, fmt: Format = "auto", columns: Columns = None) -> Dataset:
    """Like `load_examples`, also telling which record format was read (auto-detected unless named)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format '{fmt}': expected one of {', '.join(FORMATS)}")
    mapping = parse_columns(columns)
    name = str(path)
    source = readers.read_source(name)
    if source is not None and source.documents and fmt not in ("auto", "text"):
        raise ConfigError(f"{name}: documents (.txt, .md) are read as text; --format {fmt} does not apply")
    records = _rename(source.records if source is not None else _read_records(Path(path), name), mapping)
    records, file_tools = _file_tools(records)
    chosen: RecordFormat = _choose_format(records, name) if fmt == "auto" else fmt
    ignored: list[str] = []
    if source is not None and source.columns is not None:
        records, ignored = _used_columns(records, source.columns, chosen, name, mapping)
    if file_tools is not None and chosen not in shapes.TOOL_FORMATS:
        raise DataError([f"{name}: tools: the first record declares tools, but {chosen} records cannot call "
                         f"them; tools go with the {' or '.join(shapes.TOOL_FORMATS)} format"])
    examples = _convert(records, chosen, detect=fmt == "auto", file_tools=file_tools)
    sha256 = source.sha256 if source is not None else readers.file_sha256(Path(path))
    return Dataset(path=name, format=chosen, examples=examples, sha256=sha256, ignored_columns=ignored)


def _convert(
    records: list[_Record], chosen: RecordFormat, *, detect: bool, file_tools: list[dict[str, Any]] | None
) -> list[Example]:
    problems: list[str] = []
    examples: list[Example] = []
    for rec in records:
        if rec.error is not None:
            problems.append(f"{rec.where}: {rec.error}")
            continue
        found = shapes.detect(rec.value) if isinstance(rec.value, dict) else None
        if detect and found is not None and found != chosen:
            problems.append(
                f"{rec.where}: format: looks like {found} ({_keys(found)}) but the file is {chosen} "
                f"({_keys(chosen)}); one file holds one format"
            )
            continue
        value, facts, errs = _split_facts(rec.value, chosen)
        if file_tools is not None and isinstance(value, dict) and "tools" not in value and "functions" not in value:
            value = {**value, "tools": file_tools}  # the file-level set, for rows that declare none
        content, more = shapes.convert(value, chosen)
        errs += more
        problems += [f"{rec.where}: {e}" for e in errs]
        if isinstance(content, str) and not errs:
            examples.append(Example(messages=[], source=rec.where, text=content))
        elif content is not None and not errs:
            parallel = value.get("parallel_tool_calls") if isinstance(value.get("parallel_tool_calls"), bool) else None
            examples.append(Example(messages=content, source=rec.where, tools=shapes.record_tools(value, chosen),
                                    parallel_tool_calls=parallel, facts=facts))
    if problems:
        raise DataError(problems)
    return examples


def _split_facts(value: Any, fmt: RecordFormat) -> tuple[Any, tuple[tuple[str, ...], ...], list[str]]:
    """The record without its `facts` key, the facts (each a tuple of alternatives), and their problems."""
    if not isinstance(value, dict) or "facts" not in value or fmt == "text":
        return value, (), []  # a document's `facts` stays in the record: an unexpected key for `text`
    rest = {k: v for k, v in value.items() if k != "facts"}
    raw = value["facts"]
    if raw is None:  # a table's empty cell
        return rest, (), []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        shown = "an empty list" if items == [] else json_type(raw)
        return rest, (), [f"facts: expected a list of facts (strings, or lists of alternatives), got {shown}"]
    facts, problems = [], []
    for i, item in enumerate(items):
        alternatives = [item] if isinstance(item, str) else item
        if not isinstance(alternatives, list) or not alternatives or not all(
                isinstance(a, str) and a.strip() for a in alternatives):
            problems.append(f"facts[{i}]: expected a non-empty string or a list of them (alternatives), "
                            f"got {json.dumps(item, ensure_ascii=False)[:60]}")
            continue
        facts.append(tuple(a.strip() for a in alternatives))
    return rest, tuple(facts), problems


def parse_columns(spec: Columns) -> dict[str, str]:
    """`"prompt=question,completion=answer"` -> {"prompt": "question", "completion": "answer"} (key: column)."""
    if not spec:
        return {}
    pairs: dict[str, str] = {}
    if isinstance(spec, Mapping):
        pairs = {str(k): str(v) for k, v in spec.items()}
    else:
        for item in spec.split(","):
            key, eq, column = (part.strip() for part in item.partition("="))
            if not eq or not key or not column:
                raise ConfigError(f"--columns '{spec}': expected KEY=COLUMN pairs separated by commas, "
                                  "e.g. prompt=question,completion=answer")
            pairs[key] = column
    for key in pairs:
        if key not in shapes.COLUMN_KEYS:
            raise ConfigError(f"--columns: '{key}' is not a key of any format; map columns to "
                              f"{', '.join(shapes.COLUMN_KEYS)}")
    if len(set(pairs.values())) != len(pairs):
        raise ConfigError(f"--columns: one column is mapped to two keys in {spec}")
    return pairs


def _rename(records: list[_Record], mapping: dict[str, str]) -> list[_Record]:
    """Each record with the mapped columns under their keys; a key the record has itself is replaced."""
    if not mapping:
        return records
    back = {column: key for key, column in mapping.items()}
    out = []
    for rec in records:
        if rec.error is None and isinstance(rec.value, dict):
            kept = {k: v for k, v in rec.value.items() if k not in mapping or k in back}
            rec = _Record(rec.where, {back.get(k, k): v for k, v in kept.items()})
        out.append(rec)
    return out


def _used_columns(
    records: list[_Record], columns: list[str], fmt: RecordFormat, name: str, mapping: dict[str, str]
) -> tuple[list[_Record], list[str]]:
    """A table's columns are its schema: a missing one is one problem, not one per row, and columns the
    format does not use (ids, sources, scores) are left out instead of failing every row."""
    back = {column: key for key, column in mapping.items()}
    keys = [back.get(c, c) for c in columns if c in back or c not in mapping]
    required, optional = shapes.keys(fmt)
    missing = [k for k in required if k not in keys]
    if missing:
        hint = ",".join(f"{k}=COLUMN" for k in missing)
        raise DataError([f"{name}: columns: no {' or '.join(missing)} column for the {fmt} format (columns: "
                         f"{', '.join(columns)}); name the right one with --columns {hint}"])
    keep = {*required, *optional, "facts"}  # facts: metadata any reply may carry
    unused = [c for c in columns if back.get(c, c) not in keep]

    def used(value: dict[str, Any]) -> dict[str, Any]:  # a null optional cell is an absent value
        return {k: v for k, v in value.items() if k in keep and not (v is None and k in optional)}

    return [_Record(r.where, used(r.value)) if isinstance(r.value, dict) else r for r in records], unused


def _keys(fmt: str) -> str:
    return shapes.keys_of(fmt)


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
    seen = [f for r in parsed if isinstance(r.value, dict) and (f := shapes.detect(r.value))]
    if not seen:
        if not parsed:
            raise DataError([f"{r.where}: {r.error}" for r in records])
        first = parsed[0]
        shown = sorted(first.value) if isinstance(first.value, dict) else json_type(first.value)
        raise DataError(
            [f"{first.where}: format: cannot tell the format from {shown}; expected keys "
             "prompt/completion, messages, conversations, instruction/input/output or text (or pass --format; "
             "--columns maps other column names)"]
        )
    counts = Counter(seen)
    best = max(counts.values())
    return next(f for f in seen if counts[f] == best)


def _read_records(path: Path, name: str) -> list[_Record]:
    if not path.exists():
        raise DataError([f"{name}: file not found"])
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

