"""Experiment tracking: TensorBoard and MLflow as extra sinks beside RUN/metrics.jsonl.

`metrics.jsonl` stays the record of a run; a tracker receives the same records as they are written (every
step, every evaluation with the guard's scores), the resolved settings once, and files at the end (the
manifest and config; for `tunesmith eval`, the report and its figures). Trackers are optional extras,
imported only when asked for, and only rank 0 reports under torchrun.

Resume: a resumed run continues the same TensorBoard folder and MLflow run without duplicate steps. The
JSONL sink drops the lines a killed run logged after its last checkpoint; a tracker cannot drop points, so
on resume each is brought level with the truncated log instead. TensorBoard writes a purge marker at step 0
(its reader hides every earlier event of the folder) and the log is replayed; MLflow keeps the points it
has (resume is exact, so steps repeated after the checkpoint are the same, but for their timings) and takes
only the later ones.
Either way a tracker added at resume gets the run's history as well.

Where (RUN is the run folder; `tunesmith eval` on a plain model uses its report folder instead):
  RUN/tensorboard/train, RUN/tensorboard/eval   event files: `tensorboard --logdir RUN/tensorboard`
  RUN/mlflow/mlflow.db, RUN/mlflow/artifacts     MLflow's local store, unless MLFLOW_TRACKING_URI is set
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunesmith.errors import ConfigError
from tunesmith.runfolder import CONFIG, MANIFEST, MetricsSink

if TYPE_CHECKING:
    from tunesmith.runfolder import RunFolder

log = logging.getLogger(__name__)

TRAIN, EVAL = "train", "eval"  # a TensorBoard run folder each; MLflow keeps both in one run
TB_METRICS = ("loss", "eval_loss")  # the metrics TensorBoard's HParams tab shows beside the settings


class Tracker(Protocol):
    """One experiment tracker. Records are metrics.jsonl lines: {"step": N, name: number or text, ...}."""

    name: str

    def log(self, record: dict[str, Any]) -> None: ...

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_artifacts(self, paths: Sequence[Path], *, folder: str, step: int) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...

    def record(self) -> dict[str, Any]:
        """What the run folder's manifest keeps to find this tracker's run again."""
        ...

    def where(self) -> str:
        """One line: where the records went and how to look at them."""
        ...


def require(names: Sequence[str]) -> None:
    """Fail before any work when a tracker's library is not installed (a find, not an import: instant)."""
    for name in names:
        if name == "tensorboard" and not (_installed("tensorboardX") or _installed("tensorboard")):
            raise ConfigError("--report-to tensorboard needs a TensorBoard writer (tensorboardX or tensorboard): "
                              "pip install 'tunesmith[tensorboard]'")
        sql = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:").startswith(("sqlite:", "postgresql", "mysql", "mssql"))
        if name == "mlflow" and not (_installed("mlflow") and (not sql or _installed("sqlalchemy"))):
            raise ConfigError("--report-to mlflow needs mlflow (and SQLAlchemy for its local store): "
                              "pip install 'tunesmith[mlflow]'")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Trackers:
    """The open trackers of one process (none without --report-to, or off rank 0). A tracker that fails
    mid-run is dropped with a warning: training goes on, metrics.jsonl keeps everything, and a resume
    brings the tracker level again."""

    def __init__(self, items: Sequence[Tracker] = ()):
        self.items = list(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def log(self, record: dict[str, Any]) -> None:
        self._each("log", record)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_artifacts(self, paths: Sequence[Path], *, folder: str, step: int) -> None:
        self._each("log_artifacts", [p for p in paths if p.is_file()], folder=folder, step=step)

    def tee(self, sink: MetricsSink) -> MetricsSink:
        """`sink` that also hands every record it writes to the trackers."""
        return _Tee(sink, self) if self.items else sink

    def close(self, status: str = "FINISHED") -> None:
        for t in self.items:
            try:
                t.close(status)
            except Exception as e:  # closing must not hide the error that ended the run
                log.warning("%s: could not close (%s)", t.name, _first_line(e))
        self.items = []

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for t in list(self.items):
            try:
                getattr(t, method)(*args, **kwargs)
            except Exception as e:
                log.warning("%s stopped working (%s); tracking to it stops, metrics.jsonl keeps every record and "
                            "--resume brings it up to date", t.name, _first_line(e))
                self.items.remove(t)
                with suppress(Exception):  # marks the MLflow run failed, if its store still answers
                    t.close("FAILED")


class _Tee(MetricsSink):
    def __init__(self, sink: MetricsSink, trackers: Trackers):
        super().__init__(sink.path, enabled=sink.enabled)
        self.trackers = trackers

    def write(self, record: dict[str, Any]) -> None:
        super().write(record)
        self.trackers.log(record)


def open_trackers(names: Sequence[str], root: Path, recorded: dict[str, Any], *, section: str,
                  resume: bool = False, purge_step: int | None = None) -> Trackers:
    """Open each named tracker under `root` (a run folder or a report folder); `recorded` is what an earlier
    session of the same run kept (`Tracker.record`), so MLflow continues its run."""
    from tunesmith.track.mlflow import open_mlflow
    from tunesmith.track.tensorboard import TensorBoardTracker

    require(names)
    with ExitStack() as opened:  # a tracker that fails to open closes the ones opened before it
        items: list[Tracker] = []
        for name in names:
            if name == "tensorboard":
                tracker: Tracker = TensorBoardTracker(root / "tensorboard" / section, purge_step=purge_step)
            else:
                tracker = open_mlflow(root, recorded.get(name) or {}, run_name=root.resolve().name, resume=resume)
            opened.callback(tracker.close, "FAILED")
            items.append(tracker)
        opened.pop_all()
    return Trackers(items)


@contextmanager
def training(names: Sequence[str], run: RunFolder, config: dict[str, Any], *, resume: bool,
             enabled: bool = True) -> Iterator[Trackers]:
    """The trackers of a training run, open while it trains; closed as FINISHED, FAILED or KILLED.

    On resume they are brought level with the (already truncated) metrics.jsonl before training goes on."""
    if not (enabled and names):
        yield Trackers()
        return
    trackers = open_trackers(names, run.path, run.manifest().get("tracking") or {}, section=TRAIN,
                             resume=resume, purge_step=0 if resume else None)
    status = "FAILED"
    try:
        run.update_manifest(tracking={t.name: t.record() for t in trackers.items})
        for t in trackers.items:
            log.info("tracking to %s", t.where())
        trackers.log_config(config)
        for record in run.metrics() if resume else []:
            trackers.log(record)
        yield trackers
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        trackers.close(status)


def log_result(trackers: Trackers, run: RunFolder, manifest: dict[str, Any]) -> None:
    """The end of training: the result's figures (as `result/...` at the last step) and the run's manifest,
    config and metrics log as files."""
    if not trackers:
        return
    result = manifest.get("result") or {}
    step = int(result.get("steps") or 0)
    trackers.log({"step": step, **{f"result/{k}": v for k, v in result.items() if k != "steps"}})
    trackers.log_artifacts([run.path / MANIFEST, run.path / CONFIG, run.metrics_path], folder="run", step=step)


def view_commands(run_dir: Path, tracking: dict[str, Any]) -> list[str]:
    """The commands that show a run's tracked records (from its manifest's `tracking` section)."""
    from tunesmith.track.mlflow import view_command

    commands = []
    if "tensorboard" in tracking:
        commands.append(f"tensorboard --logdir {run_dir / 'tensorboard'}")
    if "mlflow" in tracking:
        m = tracking["mlflow"]
        uri = m.get("tracking_uri") or f"sqlite:///{(run_dir / 'mlflow' / 'mlflow.db').resolve()}"
        commands.append(view_command(uri, str(m.get("experiment_id")), str(m.get("run_id"))))
    return commands


def log_evaluation(names: Sequence[str], report: dict[str, Any], files: Sequence[Path], *,
                   run: RunFolder | None, out: Path) -> list[str]:
    """`tunesmith eval`'s headline figures (verdict, suite deltas, target metrics) and report files, into the
    run's own trackers at its exported step when the target is a run folder, else beside the report.
    Returns where they went, one line per tracker."""
    recorded: dict[str, Any] = {}
    step = 0
    if run is not None:
        manifest = run.manifest()
        recorded = manifest.get("tracking") or {}
        step = int((manifest.get("result") or {}).get("exported_step") or 0)
    # The eval folder gets a purge marker at this step: evaluating again replaces the figures, never doubles them.
    trackers = open_trackers(names, run.path if run is not None else out, recorded, section=EVAL, purge_step=step)
    status = "FAILED"
    try:
        if run is not None:
            run.update_manifest(tracking={**recorded, **{t.name: t.record() for t in trackers.items}})
        trackers.log(eval_record(report, step))
        trackers.log_artifacts(files, folder="eval", step=step)
        status = "FINISHED"
        return [t.where() for t in trackers.items]
    finally:
        trackers.close(status)


def eval_record(report: dict[str, Any], step: int) -> dict[str, Any]:
    """The report's headline figures as one record: `eval/verdict`, `eval/suite/TASK` (tuned value, with
    `/base` and `/delta`), `eval/target/METRIC` likewise."""
    record: dict[str, Any] = {"step": step}
    if report.get("verdict"):
        record["eval/verdict"] = report["verdict"]
    rows = [("suite", r.get("task"), r) for r in report.get("suite") or []]
    rows += [("target", m.get("name"), m) for m in (report.get("target_task") or {}).get("metrics", [])]
    for part, name, row in rows:
        for key, suffix in (("tuned", ""), ("base", "/base"), ("delta", "/delta")):
            if _number(row.get(key)):
                record[f"eval/{part}/{name}{suffix}"] = row[key]
        if part == "suite" and row.get("verdict"):
            record[f"eval/suite/{name}/verdict"] = row["verdict"]
    return record


def split(record: dict[str, Any]) -> tuple[int, dict[str, float], dict[str, str]]:
    """(step, numbers, texts) of a record; other values (lists, nulls) are not tracked."""
    numbers = {k: float(v) for k, v in record.items() if k != "step" and _number(v)}
    texts = {k: v for k, v in record.items() if isinstance(v, str)}
    return int(record["step"]), numbers, texts


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as flat `lora.r`-style keys; lists become comma-separated text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
