"""The run folder: one module owns its layout; every other module reads and writes a run through it.

RUN/
  config.yaml          resolved settings, written before training starts
  manifest.json        base model (name, kind, absolute path, content fingerprint), data hashes, chat
                       template, versions, schedule, the planner's estimate, and the result once exported
  metrics.jsonl        one JSON line per step and per evaluation (step 0: the base model's scores)
  data/train.jsonl     the exact split training used (chat messages; documents for the text format)
  data/eval.jsonl
  checkpoints/         step-NNNNNN/ folders and `latest` / `best` pointers (format: tunesmith.train.checkpoint)
  adapter/             LoRA output: a PEFT adapter (adapter_config.json + adapter_model.safetensors)
  model/               full fine-tune output: a complete model folder
  eval/                `tunesmith eval`'s report
  tensorboard/, mlflow/  experiment trackers' files, with --report-to (format: tunesmith.track)

A run knows its base model by identity, not by the name typed at training time: the manifest records the
absolute path (or the built-in / hub name) and a fingerprint of the weights, and every reader resolves the
base from there and checks the fingerprint, so an adapter is never silently put on other weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.diskspace import folder_bytes, free_bytes, out_of_space
from tunesmith.errors import DiskFullError, ModelError, RunError

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig
    from tunesmith.data.formats import Example
    from tunesmith.model.loading import ModelRef

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
DATA = "data"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
OUTPUTS = {"lora": "adapter", "full": "model"}  # method -> output folder

Messages = list[dict[str, Any]]


def is_run(path: str | Path) -> bool:
    """A folder `tunesmith train` wrote (it has a manifest)."""
    return (Path(path) / MANIFEST).is_file()


class RunFolder:
    """Read and write one run folder. `RunFolder.open` for an existing run, `RunFolder.create` for a new one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- opening --------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run; a clear error naming what the folder is instead."""
        p = Path(path)
        if not is_run(p):
            raise RunError(f"{p}: {describe_non_run(p)}")
        return cls(p)

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> RunFolder:
        """A new, empty run folder. `force` replaces an existing *run* folder, never any other folder."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise RunError(f"{p}: is a file; --out needs a folder")
        if p.is_dir() and any(p.iterdir()):
            if not force:
                raise RunError(f"{p}: folder exists and is not empty; --resume {p} to continue it, --force to "
                               "start over, or choose another --out")
            if not is_run(p):
                raise RunError(f"{p}: --force only replaces a tunesmith run folder, and this is not one "
                               f"({describe_non_run(p)})")
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    def discard(self) -> None:
        """Remove the folder (a run that failed before its first checkpoint: nothing to resume from)."""
        shutil.rmtree(self.path, ignore_errors=True)

    # -- paths ----------------------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    def data_file(self, split: str) -> Path | None:
        """RUN/data/train.jsonl or eval.jsonl, when the run wrote it."""
        f = self.path / DATA / f"{split}.jsonl"
        return f if f.is_file() else None

    # -- config, manifest, metrics ---------------------------------------------------------------------

    def config(self, **overrides: Any) -> TrainConfig:
        """The settings the run was started with, `out` pointing here (overrides are not checked here)."""
        from tunesmith.config import load_config

        path = self.path / CONFIG
        if not path.is_file():
            raise RunError(f"{self.path}: run has no {CONFIG}; it was not started by tunesmith train")
        return load_config(path, **{**overrides, "out": str(self.path)})

    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"{self.path}: {describe_non_run(self.path)}") from None
        except json.JSONDecodeError as e:
            raise RunError(f"{path}: unreadable manifest ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or "base_model" not in data:
            raise RunError(f"{path}: not a tunesmith manifest (no base_model)")
        return data

    @property
    def method(self) -> str:
        return str(self.manifest().get("method", "lora"))

    def write_start(self, config: TrainConfig, manifest: dict[str, Any], train: Sequence[Example],
                    eval_rows: Sequence[Example]) -> None:
        """What a run writes before its first step: settings, data split, manifest (last: it marks a run)."""
        from tunesmith.config import dump_yaml

        dump_yaml(config, self.path / CONFIG)
        for split, rows in (("train", train), ("eval", eval_rows)):
            _write_jsonl(self.path / DATA / f"{split}.jsonl", rows)
        _write_json(self.path / MANIFEST, manifest)

    def update_manifest(self, **sections: Any) -> dict[str, Any]:
        manifest = self.manifest()
        manifest.update(sections)
        _write_json(self.path / MANIFEST, manifest)
        return manifest

    def metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl that carries a step (a line cut by a kill is skipped)."""
        return read_metrics(self.metrics_path)

    def metrics_sink(self, *, enabled: bool = True) -> MetricsSink:
        return MetricsSink(self.metrics_path, enabled=enabled)

    # -- checkpoints and output -----------------------------------------------------------------------

    def checkpoint(self, pointer: str = "latest") -> Path | None:
        """The checkpoint folder `latest` or `best` points at, or None."""
        from tunesmith.train.checkpoint import pointed

        return pointed(self.checkpoints, pointer)

    def output(self) -> Path:
        """RUN/adapter or RUN/model, which must exist (the run was trained to the end, or exported)."""
        method = self.method
        out = self.path / OUTPUTS.get(method, "adapter")
        marker = "adapter_config.json" if method == "lora" else "config.json"
        if not (out / marker).is_file():
            raise RunError(f"{self.path}: run has no final {out.name}/ yet; finish it with "
                           f"`tunesmith train --resume {self.path}`")
        return out

    def export(self, method: str, save: Callable[[Path], None], need: int | None = None) -> tuple[Path, int]:
        """Write the output folder atomically: `save(tmp)` then rename over the old one. Returns (path, bytes).

        `need`: about how many bytes the output takes, to tell a full disk from other failures."""
        out = self.path / OUTPUTS[method]
        tmp = self.path / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if need is not None and out_of_space(e, self.path, need):
                raise self._disk_full(out, need) from None
            raise
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out, folder_bytes(out)

    def _disk_full(self, out: Path, need: int) -> DiskFullError:
        from tunesmith.plan.memory import gb

        free = gb(free_bytes(self.path))
        return DiskFullError(f"{self.path}: the disk is full: no space left to write {out.name}/ ({free} free, it "
                             f"takes about {gb(need)}); the checkpoints are intact: free some space, then "
                             f"`tunesmith train --resume {self.path}` writes it without training further")

    # -- the base model -------------------------------------------------------------------------------

    def base(self) -> ModelRef:
        """The base model the run trained on, found by its recorded identity and checked by fingerprint."""
        return base_from_record(self.manifest()["base_model"], where=str(self.path))


def base_from_record(record: dict[str, Any], *, where: str) -> ModelRef:
    """Resolve a manifest's `base_model` record: a built-in or hub name, else the recorded absolute path."""
    from tunesmith.model.loading import ModelRef, check_fingerprint, resolve

    kind, name, path = record.get("kind"), str(record.get("name")), record.get("path")
    if kind in ("builtin", "hub") or not path:  # no path recorded (hand-made manifests): go by the name
        ref = resolve(name)
    else:
        if not Path(path).is_dir():
            raise ModelError(f"{where}: its base model was at {path} ('{name}' when trained), which no longer "
                             "exists; if it moved, name it: `--model NEW_PATH --adapter "
                             f"{Path(where) / 'adapter'}` (its fingerprint is checked)")
        ref = ModelRef(name=name, path=path, kind=kind)  # type: ignore[arg-type]
    check_fingerprint(ref, record.get("fingerprint"), where=where)
    return ref


def describe_non_run(p: Path) -> str:
    """Why `p` is not a run folder, in words that say what it is instead."""
    if not p.exists():
        return "no such folder"
    if not p.is_dir():
        return "is a file, not a run folder"
    if (p / "adapter_config.json").is_file():
        return "an adapter folder, not a run folder (no manifest.json)"
    if (p / "config.json").is_file():
        return "a model folder, not a run folder (no manifest.json)"
    return "not a tunesmith run folder (no manifest.json); `tunesmith train DATA --out FOLDER` writes one"


class MetricsSink:
    """The one metrics sink: JSON lines, appended and flushed as they come, so a killed run keeps its log."""

    def __init__(self, path: Path, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Keep only records up to `step` (a resumed run logs the later steps again)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run may be cut short
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
    return records


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:  # a chat example (with its tools, if any) or a document (the `text` format)
            f.write(json.dumps(row.record(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
