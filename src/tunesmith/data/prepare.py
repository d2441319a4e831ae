"""Clean, deduplicate and split a dataset into `train.jsonl` / `eval.jsonl` plus `report.json`.

Output is chat `messages` JSONL whatever the input format, so every later step reads one shape; documents
(the `text` format) stay `{"text": ...}` JSONL. The split
is by prompt: examples that share a prompt (or nearly duplicate each other) land on the same side, so the
eval split never asks what training already answered. Same input, settings and seed -> byte-identical files.
The input file is only read.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import __version__
from tunesmith.data import similarity
from tunesmith.data.formats import Dataset, Example, file_sha256
from tunesmith.data.quality import build_report
from tunesmith.errors import ConfigError, TunesmithError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OUTPUTS = ("train.jsonl", "eval.jsonl", "report.json")


@dataclass(frozen=True)
class PrepareConfig:
    eval_fraction: float = 0.1  # share of examples held out for evaluation (0 = no eval split)
    seed: int = 0  # decides which prompts go to eval
    dedup: bool = True  # drop exact and near duplicates, keeping the first occurrence
    max_length: int = 1024  # for the token figures of the report
    force: bool = False  # overwrite the outputs in a non-empty folder


@dataclass(frozen=True)
class Removed:
    source: str
    reason: str  # "exact duplicate" or "near duplicate"
    of: str  # the source of the kept example


@dataclass(frozen=True)
class Prepared:
    train: list[Example]
    eval: list[Example]
    removed: list[Removed]
    report: dict[str, Any]  # what report.json holds
    files: list[Path]


def deduplicate(examples: Sequence[Example]) -> tuple[list[Example], list[Removed]]:
    """Drop exact copies, then near duplicates; the first occurrence of each group is kept."""
    dropped: dict[int, Removed] = {}
    for reason, groups in (("exact duplicate", similarity.exact_duplicates(examples)),
                           ("near duplicate", similarity.near_duplicates(examples))):
        for group in groups:
            for i in group[1:]:
                dropped[i] = Removed(examples[i].source, reason, examples[group[0]].source)
    kept = [ex for i, ex in enumerate(examples) if i not in dropped]
    return kept, [dropped[i] for i in sorted(dropped)]


def split(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded split by groups of shared or near-duplicate prompts; file order is kept inside each side."""
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"--eval-fraction {eval_fraction}: must be at least 0 and below 1")
    target = round(eval_fraction * len(examples))
    if eval_fraction > 0:
        if len(examples) < 2:
            raise ConfigError(f"cannot hold out an eval split from {len(examples)} example; use --eval-fraction 0")
        target = min(max(target, 1), len(examples) - 1)
    groups = _prompt_groups(examples)
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for g in order:
        if len(held) >= target:
            break
        if len(held) + len(groups[g]) < len(examples):  # training keeps at least one example
            held.update(groups[g])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evals = [ex for i, ex in enumerate(examples) if i in held]
    return train, evals


def _prompt_groups(examples: Sequence[Example]) -> list[list[int]]:
    """Indices joined when they share a normalised prompt or are near duplicates (union-find)."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        j = first.setdefault(similarity.prompt_key(ex), i)
        parent[root(i)] = root(j)
    for group in similarity.near_duplicates(examples):
        for i in group[1:]:
            parent[root(i)] = root(group[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(examples)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def prepare(
    data: Dataset, out: str | Path, config: PrepareConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> Prepared:
    """Deduplicate (optionally), split and write `out/train.jsonl`, `out/eval.jsonl`, `out/report.json`."""
    folder = Path(out)
    _check_out(folder, Path(data.path), config.force)
    kept, removed = deduplicate(data.examples) if config.dedup else (list(data.examples), [])
    train, evals = split(kept, config.eval_fraction, config.seed)
    quality = build_report(data, tokenizer, config.max_length)
    folder.mkdir(parents=True, exist_ok=True)
    files = [_write_jsonl(folder / "train.jsonl", train)]
    if evals:
        files.append(_write_jsonl(folder / "eval.jsonl", evals))
    elif (folder / "eval.jsonl").exists():
        (folder / "eval.jsonl").unlink()  # a stale split from an earlier --force run would mislead
    report = {
        "tunesmith_version": __version__,
        "input": {"path": data.path, "format": data.format, "count": len(data.examples),
                  "sha256": data.sha256 or file_sha256(data.path)},
        "settings": {"eval_fraction": config.eval_fraction, "seed": config.seed, "dedup": config.dedup},
        "output": {"format": "text" if data.format == "text" else "chat",
                   "train": _file_entry(folder / "train.jsonl", train),
                   "eval": _file_entry(folder / "eval.jsonl", evals) if evals else None},
        "removed": [asdict(r) for r in removed],
        "split": {"train": [e.source for e in train], "eval": [e.source for e in evals]},
        "quality": quality.to_dict(),
    }
    files.append(_write_text(folder / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"))
    return Prepared(train, evals, removed, report, files)


def _check_out(folder: Path, source: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise TunesmithError(f"--out {folder}: is a file; give a folder for train.jsonl, eval.jsonl, report.json")
    targets = {(folder / name).resolve() for name in OUTPUTS}
    if source.resolve() in targets:
        raise TunesmithError(f"--out {folder}: would overwrite the input {source}; choose another folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise TunesmithError(f"--out {folder}: folder is not empty; pass --force to overwrite {', '.join(OUTPUTS)}")


def _write_jsonl(path: Path, examples: Sequence[Example]) -> Path:
    return _write_text(path, "".join(json.dumps(e.record(), ensure_ascii=False) + "\n" for e in examples))


def _write_text(path: Path, text: str) -> Path:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def _file_entry(path: Path, examples: Sequence[Example]) -> dict[str, Any]:
    return {"path": path.name, "count": len(examples), "sha256": file_sha256(path)}
