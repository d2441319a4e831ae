"""A full disk: one clear line, the partial files gone, the last checkpoint intact, and `--resume` finishing.

Most tests simulate the failure where the writer raises (the OS error, and the errno-less error torch.save
gives); the last one fills a real tmpfs when this machine lets the test mount one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.diskspace import folder_bytes, free_bytes, out_of_space
from tunesmith.errors import DiskFullError
from tunesmith.runfolder import RunFolder
from tunesmith.train import checkpoint
from tunesmith.train.run import train

QA = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(24)]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return path


def _config(data: Path, model: Path, out: Path, **kw):
    settings = dict(data=str(data), model=str(model), out=str(out), max_steps=4, batch_size=4, lr=5e-3,
                    guard=False, threads=1, eval_every=2, save_every=2)
    return load_config(None, **{**settings, **kw})


def test_out_of_space_knows_how_each_writer_reports_a_full_disk(tmp_path: Path, monkeypatch):
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException

    need = 10**6
    assert out_of_space(ENOSPC, tmp_path, need)
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path, need)
    # safetensors wraps the OS error in its own message
    assert out_of_space(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                        tmp_path, need)
    # DCP gathers every rank's failure into one exception
    assert out_of_space(CheckpointException("write", {1: (ENOSPC, None)}), tmp_path, need)
    # torch.save says only "unexpected pos": a full disk when less than a checkpoint is free after the cleanup
    opaque = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert not out_of_space(opaque, tmp_path, need)  # this disk has room: some other failure
    monkeypatch.setattr("tunesmith.diskspace.free_bytes", lambda path: need - 1)
    assert out_of_space(opaque, tmp_path, need)
    assert not out_of_space(KeyboardInterrupt(), tmp_path, need)  # a kill is a kill, whatever is free


def test_free_bytes_of_a_folder_not_made_yet_is_its_disks(tmp_path: Path):
    assert free_bytes(tmp_path / "a" / "b") == shutil.disk_usage(tmp_path).free
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_bytes(b"12345")
    assert folder_bytes(tmp_path) == 5 and folder_bytes(tmp_path / "none") == 0


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_resume_finishes(tiny_model_dir, qa_file, tmp_path,
                                                                              monkeypatch):
    from safetensors import SafetensorError

    cfg = _config(qa_file, tiny_model_dir, tmp_path / "run")
    real = checkpoint.save_file
    calls = {"n": 0}

    def filling(tensors, filename):  # the disk fills up half-way through the second checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", filling)
    with pytest.raises(DiskFullError) as e:
        train(cfg)
    run = tmp_path / "run"
    assert str(e.value) == (
        f"{run}: the disk is full: no space left to write the checkpoint of step 4 "
        f"({_gb(free_bytes(run))} free, a checkpoint takes about {_gb(_checkpoint_bytes(run))}); the last "
        f"complete checkpoint (step 2) is intact: free some space, then continue with "
        f"`tunesmith train --resume {run}`")
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-000002"
    assert not list(ckpts.glob(".step-*"))  # the partial checkpoint is gone, and the space it took
    monkeypatch.setattr(checkpoint, "save_file", real)
    r = train(cfg, resume=True)
    assert r.state.step == 4 and (r.output / "adapter_model.safetensors").is_file()


def _gb(n: float) -> str:
    from tunesmith.plan import gb

    return gb(n)


def _checkpoint_bytes(run: Path) -> int:
    """What the message quotes: the weights that train, three times over (weights and AdamW's moments)."""
    from safetensors.torch import load_file

    weights = load_file(str(run / "checkpoints" / "step-000002" / checkpoint.WEIGHTS))
    return 3 * sum(t.numel() * t.element_size() for t in weights.values())


def test_a_full_disk_at_the_export_keeps_the_checkpoints_and_resume_writes_it(tiny_model_dir, qa_file, tmp_path,
                                                                               monkeypatch):
    cfg = _config(qa_file, tiny_model_dir, tmp_path / "run")
    real = RunFolder.export

    def filling(self, method, save, need=None):
        def half(folder: Path) -> None:
            folder.mkdir()
            (folder / "adapter_model.safetensors").write_bytes(b"partial")
            raise ENOSPC
        return real(self, method, half, need)

    monkeypatch.setattr(RunFolder, "export", filling)
    with pytest.raises(DiskFullError, match=r"no space left to write adapter/ \(.* free, it takes about .*\); the "
                       r"checkpoints are intact: free some space, then `tunesmith train --resume .*` writes it"):
        train(cfg)
    run = RunFolder.open(tmp_path / "run")
    assert not (run.path / ".adapter.tmp").exists() and not (run.path / "adapter").exists()
    assert (run.checkpoints / "latest").read_text() == "step-000004"
    monkeypatch.setattr(RunFolder, "export", real)
    r = train(cfg, resume=True)  # at its last step: exports, trains nothing more
    assert r.state.step == 4 and (r.output / "adapter_model.safetensors").is_file()
    assert [m["step"] for m in run.metrics() if "loss" in m] == [1, 2, 3, 4]


def test_a_run_without_room_for_a_checkpoint_does_not_start(tiny_model_dir, qa_file, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("tunesmith.train.run.free_bytes", lambda path: 1000)
    with pytest.raises(DiskFullError, match=r": not enough disk space to train: 0\.0 MiB free, and the run needs at "
                       r"least .* \(a checkpoint, .*, and the export\); free some space, or give `--out` a folder"):
        train(_config(qa_file, tiny_model_dir, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder behind

    plan = _planned(qa_file, tiny_model_dir)
    room = plan["checkpoint_bytes"] + plan["output_bytes"]  # enough to start, not for the fullest folder
    monkeypatch.setattr("tunesmith.train.run.free_bytes", lambda path: room)
    with caplog.at_level(logging.WARNING, logger="tunesmith.train.run"):
        train(_config(qa_file, tiny_model_dir, tmp_path / "run2", max_steps=2))
    assert "the disk may fill up" in caplog.text and "4 checkpoints of" in caplog.text


def _planned(data: Path, model: Path) -> dict:
    from tunesmith.plan import estimate

    p = estimate(_config(data, model, Path("unused")))
    return {"checkpoint_bytes": p.checkpoint_bytes, "output_bytes": p.output_bytes}


def test_the_plan_sizes_a_checkpoint_as_training_writes_it(tiny_model_dir, qa_file, tmp_path):
    for method in ("lora", "full"):
        r = train(_config(qa_file, tiny_model_dir, tmp_path / method, method=method, max_steps=2, lr=1e-3))
        manifest = RunFolder.open(r.run_dir).manifest()
        planned, written = manifest["plan"]["checkpoint_bytes"], manifest["result"]["checkpoint_bytes"]
        assert written == folder_bytes(r.run_dir / "checkpoints" / "step-000002")
        # the writer's own overhead (file headers, the optimizer's pickled layout, RNG state) is the rest
        assert 0.9 <= planned / written <= 1.0, (method, planned, written)
        assert manifest["estimate_vs_measured"]["checkpoint_bytes_ratio"] == round(planned / written, 3)


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return ok.returncode == 0


@pytest.mark.slow
def test_a_really_full_disk_stops_the_cli_with_one_line_and_resume_finishes(tiny_model_dir, qa_file, tmp_path):
    """A tmpfs with room for the run's start and one full-model checkpoint, not two: the second save fails in
    torch.save with no errno ("unexpected pos"); the CLI prints one line and exits 2; after the disk grows,
    `--resume` finishes."""
    probe = train(_config(qa_file, tiny_model_dir, tmp_path / "probe", method="full", max_steps=2, save_every=2,
                          lr=1e-3))
    one = folder_bytes(probe.run_dir / "checkpoints" / "step-000002")
    start = folder_bytes(probe.run_dir) - one - folder_bytes(probe.output)  # manifest, data copies, metrics
    disk = tmp_path / "disk"
    size = start + one + probe.output_bytes + one // 2  # passes the start-up check, not a second checkpoint
    if not _mount_tmpfs(disk, size):
        pytest.skip("cannot mount a tmpfs here (needs root and the mount capability)")
    try:
        args = [sys.executable, "-m", "tunesmith", "train", str(qa_file), "--model", str(tiny_model_dir), "--out",
                str(disk / "run"), "--method", "full", "--max-steps", "4", "--save-every", "2", "--eval-every", "2",
                "--batch-size", "4", "--lr", "1e-3", "--no-guard", "--threads", "1", "--keep-checkpoints", "1"]
        env = {**os.environ, "COLUMNS": "200"}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "the disk is full: no space left to write the checkpoint of step 4" in error[0]
        assert "the last complete checkpoint (step 2) is intact" in error[0]
        ckpts = disk / "run" / "checkpoints"
        assert (ckpts / "latest").read_text() == "step-000002" and not list(ckpts.glob(".step-*"))
        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)
        proc = subprocess.run([*args[:4], "--resume", str(disk / "run")], capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tuned = RunFolder.open(disk / "run")
        assert tuned.manifest()["result"]["steps"] == 4 and (tuned.output() / "model.safetensors").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
