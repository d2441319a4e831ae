"""Experiment tracking: what `--report-to tensorboard,mlflow` logs is read back with TensorBoard's own reader
and `MlflowClient`, record by record against metrics.jsonl; resume logs no step twice; `tunesmith eval`
logs into the same MLflow run. MLflow writes to SQLite stores in tmp folders, never to a server."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient  # the `dev` extra installs both trackers (and TensorBoard's reader)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)
from tunesmith import track
from tunesmith.config import load_config, resume_config
from tunesmith.errors import ConfigError
from tunesmith.runfolder import RunFolder
from tunesmith.train.loop import Hooks
from tunesmith.train.run import train

ALL = {"scalars": 0, "tensors": 0, "images": 0}  # keep every event (the reader samples by default)


@pytest.fixture(autouse=True)
def no_user_mlflow(monkeypatch):
    """The developer's own MLflow settings must not leak into the tests (nor the tests into their server)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> Path:
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, qa_file, tmp_path_factory) -> Path:
    """`tunesmith train --report-to tensorboard,mlflow` with the guard on, MLflow in the run's own store."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code, stdout, err = run(mp, _Printed(printed), "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                                str(out), "--max-steps", "6", "--eval-every", "3", "--batch-size", "4", "--lr", "5e-3",
                                "--threads", "1", "--report-to", "tensorboard,mlflow")
    assert code == 0, err
    assert "tracking to TensorBoard: tensorboard --logdir" in stdout and "tracking to MLflow run" in stdout
    store = f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}"
    assert f"tensorboard --logdir {out / 'tensorboard'}    # the tracked curves" in stdout  # in the ending too
    assert f"mlflow ui --backend-store-uri {store}    # the tracked curves" in stdout
    return out


class _Printed:
    """capsys for a module-scoped fixture (capsys itself is per test): what the CLI printed to stdout."""

    def __init__(self, buffer: io.StringIO):
        self.buffer = buffer

    def readouterr(self) -> tuple[str, str]:
        return self.buffer.getvalue(), ""


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(log_dir), size_guidance=ALL)
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step logged twice"
        out[tag] = {e.step: e.value for e in events}
    return out


def _texts(log_dir: Path) -> dict[str, dict[int, str]]:
    acc = EventAccumulator(str(log_dir), size_guidance=ALL)
    acc.Reload()
    return {t.removesuffix("/text_summary"): {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)}
            for t in acc.Tags()["tensors"]}


def _numbers(records: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                assert r["step"] not in out.setdefault(k, {}), f"{k}: step {r['step']} twice in metrics.jsonl"
                out[k][r["step"]] = float(v)
    return out


def _mlflow(uri: str, run_id: str) -> tuple[MlflowClient, object, dict[str, dict[int, float]]]:
    client = MlflowClient(tracking_uri=uri)
    mlrun = client.get_run(run_id)
    history: dict[str, dict[int, float]] = {}
    for key in mlrun.data.metrics:
        points = client.get_metric_history(run_id, key)
        assert len({m.step for m in points}) == len(points), f"{key}: a step logged twice"
        history[key] = {m.step: m.value for m in points}
    return client, mlrun, history


def _own_store(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.resolve() / 'mlflow' / 'mlflow.db'}"


def _close(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]], rel: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        assert all(math.isclose(a[key][s], b[key][s], rel_tol=rel, abs_tol=1e-9) for s in a[key]), key


# -- training -----------------------------------------------------------------------------------------------


def test_tensorboard_holds_every_record_of_metrics_jsonl(tracked_run):
    records = RunFolder(tracked_run).metrics()
    logged = _scalars(tracked_run / "tensorboard" / "train")
    jsonl = _numbers(records)
    assert {"loss", "eval_loss", "guard/capitals", "guard/prose_ppl"} <= jsonl.keys()
    _close({k: logged[k] for k in jsonl}, jsonl, rel=1e-6)  # event files keep float32
    result = json.loads((tracked_run / "manifest.json").read_text())["result"]
    assert logged["result/exported_step"] == {6: result["exported_step"]}
    texts = _texts(tracked_run / "tensorboard" / "train")
    assert texts["guard_verdict"] == {r["step"]: r["guard_verdict"] for r in records if "guard_verdict" in r}
    assert "| lora.r | 16 |" in texts["config"][0] and "| report_to | tensorboard,mlflow |" in texts["config"][0]
    assert json.loads(texts["run/manifest.json"][6].strip("`\n")) == json.loads((tracked_run / "manifest.json")
                                                                                 .read_text())


def test_tensorboard_hparams_tab_has_the_resolved_settings(tracked_run):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(tracked_run / "tensorboard" / "train"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    config = RunFolder(tracked_run).config()
    assert hparams["lr"].number_value == pytest.approx(config.lr)
    assert hparams["lora.target_modules"].string_value == "all-linear" and hparams["guard"].bool_value is True


def test_mlflow_run_in_the_run_folder_holds_metrics_params_and_files(tracked_run):
    manifest = json.loads((tracked_run / "manifest.json").read_text())
    record = manifest["tracking"]["mlflow"]
    assert record["tracking_uri"] is None  # the run's own store: found beside the manifest, wherever it moves
    client, mlrun, history = _mlflow(_own_store(tracked_run), record["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    records = RunFolder(tracked_run).metrics()
    _close({k: v for k, v in history.items() if not k.startswith("result/")}, _numbers(records))
    assert history["result/exported_step"] == {6: manifest["result"]["exported_step"]}
    assert mlrun.data.tags["guard_verdict"] == [r for r in records if "guard_verdict" in r][-1]["guard_verdict"]
    config = RunFolder(tracked_run).config()
    assert mlrun.data.params["lr"] == str(config.lr) and mlrun.data.params["lora.r"] == "16"
    assert mlrun.data.params["report_to"] == "tensorboard,mlflow"
    settings = {f.name for f in dataclasses.fields(config) if f.name != "lora"} | {
        f"lora.{f.name}" for f in dataclasses.fields(config.lora)}
    assert set(mlrun.data.params) == settings  # every setting, no more
    files = {f.path for f in client.list_artifacts(record["run_id"], "run")}
    assert files == {"run/manifest.json", "run/config.yaml", "run/metrics.jsonl"}
    artifacts = Path(mlrun.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(tracked_run.resolve() / "mlflow")  # nothing lands in the working directory


def test_resume_continues_the_same_runs_without_duplicate_steps(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    """Interrupted after step 5 (checkpoint at 3): MLflow keeps steps 4-5 from the first session and gets 6;
    TensorBoard, added at resume, gets the whole history once. MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME
    are respected, and the store is kept for the resume."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    # The user's own store and experiment (artifacts where they say, not in the working directory).
    experiment = MlflowClient(uri).create_experiment("team", artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
    out = tmp_path / "run"
    config = load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(out), max_steps=6,
                         eval_every=3, batch_size=4, lr=5e-3, threads=1, guard=False, report_to="mlflow")

    def stop_at_5(record: dict) -> None:
        if record["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, hooks=Hooks(on_step=stop_at_5))
    run_id = json.loads((out / "manifest.json").read_text())["tracking"]["mlflow"]["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    assert not (out / "mlflow").exists()  # the user's store, not the run's
    train(resume_config(RunFolder(out).config(), report_to="mlflow,tensorboard"), resume=True)

    records = RunFolder(out).metrics()
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tracking"]["mlflow"] == {"run_id": run_id, "experiment_id": experiment, "tracking_uri": uri}
    _, mlrun, history = _mlflow(uri, run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["resumed.report_to"] == "mlflow,tensorboard"  # params cannot change in MLflow
    # Steps 4 and 5 were logged before the interruption and are not logged again; resume is exact, so they agree
    # (but for the wall-clock figures, which are the first session's).
    jsonl = _numbers(records)
    mlflow = {k: v for k, v in history.items() if not k.startswith("result/")}
    for clock in ("tokens_per_s", "elapsed"):
        assert mlflow[clock].keys() == jsonl[clock].keys()
        mlflow[clock] = jsonl[clock]
    _close(mlflow, jsonl, rel=1e-5)
    _close({k: v for k, v in _scalars(out / "tensorboard" / "train").items() if k in jsonl}, jsonl, rel=1e-5)


def test_tensorboard_purge_hides_what_a_restart_logs_again(tmp_path):
    from tunesmith.track.tensorboard import TensorBoardTracker

    first = TensorBoardTracker(tmp_path / "tb")
    for step in range(1, 6):
        first.log({"step": step, "loss": 10.0 + step})
    first.close()
    again = TensorBoardTracker(tmp_path / "tb", purge_step=0)
    for step in range(1, 4):
        again.log({"step": step, "loss": float(step), "guard_verdict": "pass"})
    again.close()
    assert _scalars(tmp_path / "tb") == {"loss": {1: 1.0, 2: 2.0, 3: 3.0}}
    assert _texts(tmp_path / "tb") == {"guard_verdict": {1: "pass", 2: "pass", 3: "pass"}}


@pytest.mark.parametrize("writer", ["tensorboardX", "torch"])
def test_both_tensorboard_writers_work(writer, tmp_path, monkeypatch):
    """tensorboardX when installed, else PyTorch's writer: the same events either way."""
    import sys

    if writer == "torch":
        monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if it were not installed
    from tunesmith.track.tensorboard import TensorBoardTracker, writer_classes

    assert writer_classes()[0].__module__.startswith(writer)
    png = tmp_path / "target.png"
    _tiny_png(png)
    (tmp_path / "report.md").write_text("# Evaluation\n\n**Verdict: PASS**\n")
    t = TensorBoardTracker(tmp_path / "tb")
    t.log_config({"lr": 2e-4, "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "patience": None})
    t.log({"step": 3, "eval_loss": 1.5, "guard/capitals": 0.75, "guard_verdict": "warn", "note": [1, 2]})
    t.log_artifacts([png, tmp_path / "report.md"], folder="eval", step=3)
    t.close()
    assert _scalars(tmp_path / "tb") == {"eval_loss": {3: 1.5}, "guard/capitals": {3: 0.75}}
    texts = _texts(tmp_path / "tb")
    assert texts["guard_verdict"] == {3: "warn"} and texts["eval/report.md"][3].startswith("# Evaluation")
    assert "| lora.target_modules | q_proj,v_proj |" in texts["config"][0]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance=ALL)
    acc.Reload()
    image = acc.Images("eval/target.png")[0]
    assert (image.step, image.width, image.height) == (3, 4, 2)


def _tiny_png(path: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((2, 4, 3), dtype=np.uint8)).save(path)


# -- evaluation ---------------------------------------------------------------------------------------------


def test_eval_logs_headline_figures_and_report_into_the_same_run(tracked_run, monkeypatch, capsys, tmp_path):
    keep = tmp_path / "must+keep.jsonl"  # a name MLflow refuses in a key: keep:must_keep there
    keep.write_text(json.dumps({"prompt": "Is it open on Sundays?", "choices": ["No.", "Yes."], "answer": 0}) + "\n")
    code, out, err = run(monkeypatch, capsys, "eval", str(tracked_run), "--suite", "prose,capitals", "--limit", "2",
                         "--keep", str(keep), "--threads", "1", "--report-to", "mlflow,tensorboard")
    assert code == 0, err
    assert "tracked: MLflow run" in out and "tracked: TensorBoard" in out
    report = json.loads((tracked_run / "eval" / "report.json").read_text())
    manifest = json.loads((tracked_run / "manifest.json").read_text())
    step = manifest["result"]["exported_step"]
    run_id = manifest["tracking"]["mlflow"]["run_id"]
    client, mlrun, history = _mlflow(_own_store(tracked_run), run_id)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["eval/verdict"] == report["verdict"]
    prose = next(r for r in report["suite"] if r["task"] == "prose")
    assert history["eval/suite/prose/delta"] == {step: pytest.approx(prose["delta"])}
    assert history["eval/suite/prose"] == {step: pytest.approx(prose["tuned"])}
    for m in report["target_task"]["metrics"]:
        assert history[f"eval/target/{m['name']}"] == {step: pytest.approx(m["tuned"])}
    assert "loss" in history  # the training curves are in the same run
    assert step in history["eval/suite/keep:must_keep"]
    files = {f.path for f in client.list_artifacts(run_id, "eval")}
    assert {"eval/report.json", "eval/report.html", "eval/report.md", "eval/suite.png"} <= files
    board = _scalars(tracked_run / "tensorboard" / "eval")
    assert board["eval/suite/capitals/delta"] == {step: pytest.approx(report["suite"][0]["delta"], abs=1e-6)}
    assert _texts(tracked_run / "tensorboard" / "eval")["eval/verdict"] == {step: report["verdict"]}


def test_eval_record_flattens_verdict_suite_and_target():
    report = {"verdict": "warn",
              "suite": [{"task": "capitals", "base": 0.5, "tuned": 0.25, "delta": -0.25, "verdict": "warn"}],
              "target_task": {"metrics": [{"name": "rouge_l", "base": 0.1, "tuned": 0.4, "delta": 0.3},
                                          {"name": "exact_match", "base": None, "tuned": 0.0, "delta": None}]}}
    assert track.eval_record(report, 7) == {
        "step": 7, "eval/verdict": "warn", "eval/suite/capitals": 0.25, "eval/suite/capitals/base": 0.5,
        "eval/suite/capitals/delta": -0.25, "eval/suite/capitals/verdict": "warn", "eval/target/rouge_l": 0.4,
        "eval/target/rouge_l/base": 0.1, "eval/target/rouge_l/delta": 0.3, "eval/target/exact_match": 0.0}
    assert track.eval_record({"verdict": None, "suite": [], "target_task": None}, 0) == {"step": 0}


# -- settings, errors, ranks --------------------------------------------------------------------------------


def test_report_to_setting_takes_a_list_a_comma_list_or_none(tmp_path):
    assert load_config(None, report_to="TensorBoard, mlflow").report_to == ["tensorboard", "mlflow"]
    assert load_config(None, report_to=["mlflow", "mlflow"]).report_to == ["mlflow"]
    assert load_config(None, report_to="none").report_to == [] == load_config(None).report_to
    yaml = tmp_path / "c.yaml"
    yaml.write_text("report_to: [tensorboard]\n")
    assert load_config(yaml).report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"^config: report_to: unknown tracker wandb; choose from tensorboard, "
                                          r"mlflow \(or none\)$"):
        load_config(None, report_to="wandb,mlflow")
    saved = load_config(None, data="d.jsonl")
    assert resume_config(saved, report_to="mlflow").report_to == ["mlflow"]  # --resume may add a tracker


def test_missing_extra_is_one_line_before_anything_starts(tiny_model_dir, qa_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(track, "_installed", lambda module: module not in ("tensorboardX", "tensorboard"))
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", str(qa_file), "--model", str(tiny_model_dir), "--out", str(out),
                       "--report-to", "tensorboard")
    assert code == 2 and not out.exists()
    assert "error: --report-to tensorboard needs a TensorBoard writer (tensorboardX or tensorboard): pip install " \
           "'tunesmith[tensorboard]'" in " ".join(err.split())
    monkeypatch.setattr(track, "_installed", lambda module: module != "sqlalchemy")
    with pytest.raises(ConfigError, match=r"pip install 'tunesmith\[mlflow\]'"):
        track.require(["mlflow"])  # the run's own store is SQLite
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    track.require(["mlflow"])  # a server needs no SQLAlchemy here


def test_view_commands_name_the_store_or_the_server_page(tmp_path):
    tracking = {"tensorboard": {"log_dir": "tensorboard"},
                "mlflow": {"run_id": "abc", "experiment_id": "3", "tracking_uri": None}}
    assert track.view_commands(tmp_path, tracking) == [
        f"tensorboard --logdir {tmp_path / 'tensorboard'}",
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"]
    tracking = {"mlflow": {"run_id": "abc", "experiment_id": "3", "tracking_uri": "http://127.0.0.1:5000/"}}
    assert track.view_commands(tmp_path, tracking) == ["http://127.0.0.1:5000/#/experiments/3/runs/abc"]


def test_a_store_mlflow_cannot_open_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(ConfigError, match=r"^MLflow tracking store foo://bar: \S") as e:
        track.open_trackers(["tensorboard", "mlflow"], tmp_path, {}, section="train")
    assert "\n" not in str(e.value)


def test_eval_refuses_an_unknown_tracker_before_loading_a_model(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "eval", str(tmp_path), "--report-to", "wandb")
    assert code == 2 and "--report-to: unknown tracker wandb; choose from tensorboard, mlflow" in err


def test_only_the_main_rank_reports(tmp_path):
    run_dir = RunFolder.create(tmp_path / "run")
    (run_dir.path / "manifest.json").write_text(json.dumps({"base_model": {"name": "x"}}))
    with track.training(["tensorboard", "mlflow"], run_dir, {"lr": 1.0}, resume=False, enabled=False) as trackers:
        assert not trackers
        trackers.tee(run_dir.metrics_sink()).write({"step": 1, "loss": 1.0})
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["manifest.json", "metrics.jsonl"]


def test_a_failing_tracker_is_dropped_and_training_goes_on(tmp_path, caplog):
    class Broken:
        name = "mlflow"
        closed = ""

        def log(self, record):
            raise ConnectionError("server went away\nmore detail")

        def close(self, status="FINISHED"):
            Broken.closed = status

    trackers = track.Trackers([Broken()])
    sink = trackers.tee(RunFolder(tmp_path).metrics_sink())
    sink.write({"step": 1, "loss": 2.0})
    sink.write({"step": 2, "loss": 1.0})
    assert [r["step"] for r in RunFolder(tmp_path).metrics()] == [1, 2] and not trackers
    assert Broken.closed == "FAILED"
    assert "mlflow stopped working (server went away); tracking to it stops, metrics.jsonl keeps every record" \
           in caplog.text


@pytest.mark.slow
def test_under_torchrun_one_rank_reports(tiny_model_dir, qa_file, tmp_path):
    """Two CPU processes (gloo): one TensorBoard event file, one MLflow run, each step once."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")} | {"PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29613", "-m", "tunesmith", "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                        str(out), "--max-steps", "4", "--batch-size", "4", "--no-guard", "--threads", "1",
                        "--eval-every", "2", "--report-to", "tensorboard,mlflow"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list((out / "tensorboard" / "train").iterdir())) == 1
    jsonl = _numbers(RunFolder(out).metrics())
    assert _scalars(out / "tensorboard" / "train")["loss"] == pytest.approx(jsonl["loss"], rel=1e-6)
    client = MlflowClient(_own_store(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    _, _, history = _mlflow(_own_store(out), runs[0].info.run_id)
    assert history["loss"] == pytest.approx(jsonl["loss"])
