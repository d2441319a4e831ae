"""Where records come from, beyond one JSON, JSONL or CSV file (those are read in `formats`).

- Parquet (`.parquet`) and Arrow (`.arrow`, `.feather`: the IPC file or stream format) through pyarrow;
- a folder written by `datasets`' `save_to_disk` (`folder`, or `folder:split` for a DatasetDict);
- a hub id (`org/name`, or `org/name:split`) through `datasets.load_dataset`, when the hub can be reached
  or the dataset is in the local `datasets` cache;
- documents: a `.txt` or `.md` file, or a folder of them (searched recursively), one document each.

Locations: a table row is `file.parquet:row 12`, 0-based as in `dataset[12]`; a document is its path. Arrow
has null but no "absent": a struct field a row lacks is null, so nulls inside values are dropped (a null
cell stays null; `formats` drops it for optional columns). The files are only ever read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown")
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".ndjson")  # read by `formats`
DATASETS_MARKERS = ("dataset_dict.json", "state.json")  # what `save_to_disk` writes at a folder's top
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?$")


@dataclass(frozen=True)
class Record:
    where: str  # "file:line", "file:row N", "docs/a.md"
    value: Any  # parsed value (a dict when well-formed)
    error: str | None = None  # "field: message" when the record could not be parsed


@dataclass(frozen=True)
class Source:
    """Records read from a container other than a JSON/JSONL/CSV file."""

    records: list[Record]
    sha256: str  # content hash: the file, every file of a folder, or the hub dataset's fingerprint
    columns: list[str] | None = None  # a table's columns (columns the format does not use are ignored)
    documents: bool = False  # plain-text documents: always the `text` format


def read_source(name: str) -> Source | None:
    """Records of `name` when it is a table, a folder, a hub id or documents; None for a JSON/JSONL/CSV file."""
    path = Path(name)
    if path.is_dir():
        if any((path / m).is_file() for m in DATASETS_MARKERS):
            return _from_datasets_folder(path, name, split=None)
        return _documents(sorted(p for p in path.rglob("*") if _is_document(p, path)), name, folder=True)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return _table(path, name)
        if suffix in DOCUMENT_SUFFIXES:
            return _documents([path], name, folder=False)
        return None
    base, colon, split = name.rpartition(":")
    if colon and base and split and Path(base).is_dir():
        return _from_datasets_folder(Path(base), name, split=split)
    if _looks_like_hub_id(name):
        return _from_hub(name)
    raise DataError([f"{name}: file not found"])


def file_sha256(path: str | Path) -> str:
    """'sha256:<hex>' of a file's bytes (run manifests and prepare reports record their inputs by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` that is no local path: not an existing folder's child, no data file suffix."""
    first = name.split("/", 1)[0]
    suffix = Path(name.rpartition(":")[0] or name).suffix.lower()
    known = TABLE_SUFFIXES + DOCUMENT_SUFFIXES + TEXT_SUFFIXES
    return bool(_HUB_ID.match(name)) and not Path(first).exists() and suffix not in known


def _is_document(p: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
    return p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES and not hidden


def _documents(paths: list[Path], name: str, *, folder: bool) -> Source:
    if not paths:
        raise DataError([f"{name}: folder holds no .txt or .md documents and is no `datasets` save_to_disk "
                         "folder; give a data file, a folder of documents, or a hub id"])
    records, digest = [], hashlib.sha256()
    for p in paths:
        raw = p.read_bytes()
        digest.update(str(p.relative_to(name) if folder else p.name).encode() + b"\0" + raw + b"\0")
        where = str(p)
        try:
            text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            records.append(Record(f"{where}:{line}", None, f"encoding: not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                                                             "save the file as UTF-8"))
            continue
        records.append(Record(where, {"text": text}))
    return Source(records, "sha256:" + digest.hexdigest(), documents=True)


def _table(path: Path, name: str) -> Source:
    import pyarrow as pa

    try:
        table = _read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        kind = "parquet" if path.suffix.lower() == ".parquet" else "arrow"
        raise DataError([f"{name}: {kind}: cannot read the file ({_first_line(e)})"]) from None
    return _rows(table.to_pylist(), table.column_names, name, file_sha256(path))


def _read_table(path: Path):  # -> pyarrow.Table
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.read_table(path)
    with pa.memory_map(str(path)) as source:  # Arrow IPC: the file format (Feather v2), else the stream format
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()


def _rows(rows: list[dict[str, Any]], columns: list[str], name: str, sha256: str) -> Source:
    if not rows:
        raise DataError([f"{name}: table: no rows; it needs at least one example"])
    records = [Record(f"{name}:row {i}", {k: _drop_nulls(v) for k, v in row.items()}) for i, row in enumerate(rows)]
    return Source(records, sha256, columns=list(columns))


def _drop_nulls(value: Any) -> Any:
    """Arrow fills a struct field that a row lacks with null; read null as absent, at every depth."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _from_datasets_folder(path: Path, name: str, split: str | None) -> Source:
    datasets = _import_datasets(name)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError([f"{name}: cannot read the `datasets` folder ({_first_line(e)})"]) from None
    ds = _pick_split(loaded, name, split)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode())
    return _rows(ds.to_list(), ds.column_names, name, "sha256:" + digest.hexdigest())


def _from_hub(name: str) -> Source:
    datasets = _import_datasets(name)
    repo, _, split = name.partition(":")
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = datasets.load_dataset(repo, split=split or None)
    except DatasetNotFoundError:
        raise DataError([f"{name}: no such file here, and no such dataset on the Hugging Face Hub"]) from None
    except ConnectionError as e:
        raise DataError([f"{name}: no such file here, and the Hugging Face Hub cannot be reached "
                         f"({_first_line(e)}); download the dataset where there is network, or give a local "
                         "file"]) from None
    except ValueError as e:  # e.g. an unknown split
        raise DataError([f"{name}: {_first_line(e)}"]) from None
    ds = _pick_split(loaded, name, None)
    return _rows(ds.to_list(), ds.column_names, name, f"datasets:{ds._fingerprint}")


def _pick_split(loaded: Any, name: str, split: str | None):  # -> datasets.Dataset
    """A Dataset as is; from a DatasetDict the named split, else `train` (or its only split)."""
    if not hasattr(loaded, "keys"):
        if split:
            raise DataError([f"{name}: this `datasets` folder holds one split, not named ones; drop ':{split}'"])
        return loaded
    splits = list(loaded.keys())
    chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        wanted = f"no split '{split}'" if split else "several splits and none is 'train'"
        raise DataError([f"{name}: {wanted}; name one as {name.rpartition(':')[0] if split else name}:SPLIT, "
                         f"one of {', '.join(splits)}"])
    return loaded[chosen]


def _import_datasets(name: str):  # -> the datasets module
    try:
        import datasets
    except ImportError:
        raise DataError([f"{name}: reading `datasets` folders and hub ids needs the datasets package: "
                         "pip install 'tunesmith[datasets]'"]) from None
    datasets.disable_progress_bars()
    return datasets


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
