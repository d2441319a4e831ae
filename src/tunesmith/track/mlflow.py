"""MLflow: numbers as metrics (by step), texts as tags (the latest verdict), settings as params, files as
artifacts. Through `MlflowClient` on an explicit run, never the global "active run".

The store is MLFLOW_TRACKING_URI when set (a server, a database, a folder); else the run's own SQLite store,
RUN/mlflow/mlflow.db with artifacts in RUN/mlflow/artifacts (MLflow 3 no longer writes its `file:` store
unless told to). The experiment is MLFLOW_EXPERIMENT_NAME, else "tunesmith"; the MLflow run is named after
the run folder, and its id is kept in the manifest so resume and `tunesmith eval` log into the same run.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.track import flatten, split

log = logging.getLogger(__name__)

EXPERIMENT = "tunesmith"
FLUSH_SECONDS = 5  # metrics go in batches: one write per few seconds, not one per step
BATCH = 900  # MLflow takes at most 1000 metrics per call
PARAMS_PER_CALL = 100
NOT_IN_KEYS = re.compile(r"[^\w\-. :/]")  # MLflow's key alphabet; a keep set's file name may hold more


def view_command(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at the run: its page on a server, else `mlflow ui` on the store."""
    if uri.startswith(("http:", "https:")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}"


def tracking_uri(root: Path, recorded: dict[str, Any]) -> tuple[str, bool]:
    """(URI, is it the run's own store): MLFLOW_TRACKING_URI, else the store an earlier session used, else
    RUN/mlflow/mlflow.db."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, False
    if recorded.get("tracking_uri"):
        return str(recorded["tracking_uri"]), False
    folder = (root / "mlflow").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", True


def open_mlflow(root: Path, recorded: dict[str, Any], *, run_name: str, resume: bool) -> MlflowTracker:
    """The MLflow run `recorded` names when it is in the current store, else a new one. With `resume`, the
    points it already has are not logged again."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # the store's one-time table creation logs at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    uri, own = tracking_uri(root, recorded)
    same_store = recorded.get("tracking_uri") == (None if own else uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        run = _existing(client, recorded.get("run_id") if same_store else None)
        if run is None:
            experiment = _experiment(client, root if own else None)
            run = client.create_run(experiment, run_name=run_name, tags={
                "mlflow.source.name": "tunesmith", "tunesmith.run_dir": str(root.resolve())})
        else:
            client.update_run(run.info.run_id, status="RUNNING")
    except (MlflowException, OSError, ImportError) as e:  # a store that is not there, or not of a known kind
        raise ConfigError(f"MLflow tracking store {uri}: {str(e).strip().splitlines()[0]}") from None
    return MlflowTracker(client, run, uri=uri, own_store=own, resume=resume)


def _existing(client: Any, run_id: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:  # deleted, or the store was replaced: start a new run
        return None


def _experiment(client: Any, own_root: Path | None) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment '{name}' is deleted; restore it, or set MLFLOW_EXPERIMENT_NAME")
        return str(found.experiment_id)
    # The run's own store keeps its artifacts beside it; another store decides for itself.
    artifacts = (own_root / "mlflow" / "artifacts").resolve().as_uri() if own_root is not None else None
    return str(client.create_experiment(name, artifact_location=artifacts))


class MlflowTracker:
    """One MLflow run. Metrics are buffered and sent every few seconds, at each evaluation and at the end."""

    name = "mlflow"

    def __init__(self, client: Any, run: Any, *, uri: str, own_store: bool, resume: bool):
        self.client, self.run_id, self.uri, self.own_store = client, run.info.run_id, uri, own_store
        self.experiment_id = run.info.experiment_id
        self.params = dict(run.data.params)
        # On resume: the last step each metric has, so a point is never logged twice.
        self.logged = self._last_steps(run) if resume else {}
        self.pending: list[Any] = []
        self.tags: dict[str, str] = {}
        self.flushed = time.monotonic()

    def _last_steps(self, run: Any) -> dict[str, int]:
        return {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
                for key in run.data.metrics}

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, numbers, texts = split(record)
        now = int(time.time() * 1000)
        numbers = {NOT_IN_KEYS.sub("_", k): v for k, v in numbers.items()}
        self.pending += [Metric(k, v, now, step) for k, v in numbers.items() if step > self.logged.get(k, -1)]
        self.tags.update({NOT_IN_KEYS.sub("_", k): v for k, v in texts.items()})
        # Anything but a training step (an evaluation, the result) is worth seeing at once.
        if len(self.pending) >= BATCH or "loss" not in record or time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in self.tags.items()]
        while self.pending or tags:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.run_id, metrics=batch, tags=tags)
            tags = []
        self.tags = {}
        self.flushed = time.monotonic()

    def log_config(self, config: dict[str, Any]) -> None:
        """Settings as params. Params cannot change in MLflow: one --resume changed (more steps) becomes a tag."""
        from mlflow.entities import Param, RunTag

        flat = {k: str(v) for k, v in flatten(config).items()}
        new = [Param(k, v) for k, v in flat.items() if k not in self.params]
        changed = [RunTag(f"resumed.{k}", v) for k, v in flat.items() if k in self.params and self.params[k] != v]
        for i in range(0, max(len(new), len(changed)), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_CALL],
                                  tags=changed[i : i + PARAMS_PER_CALL])
        self.params.update({p.key: p.value for p in new})

    def log_artifacts(self, paths: Sequence[Path], *, folder: str, step: int) -> None:
        self.flush()
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, status: str = "FINISHED") -> None:
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)

    def record(self) -> dict[str, Any]:
        # The run's own store is not recorded by path: the folder may move, and the store moves with it.
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": None if self.own_store else self.uri}

    def where(self) -> str:
        return f"MLflow run {self.run_id} in {self.uri}: {view_command(self.uri, self.experiment_id, self.run_id)}"
