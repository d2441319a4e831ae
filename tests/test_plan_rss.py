"""Acceptance: the planner's estimate within 15 % of the measured peak RSS of real `tunesmith train` runs.

One short run per memory mode on the built-in model (2 steps at batch 2 x 128 tokens, one thread, CPU):
LoRA, LoRA + gradient checkpointing, QLoRA (4-bit base), full, full + checkpointing, and FSDP over two
processes (per rank) for LoRA and full. The trainer records
the planner's estimate for its own config next to the measured peak RSS (`estimate_vs_measured`), so the
test reads both from the run's manifest. About 3 minutes on an idle 2-core machine; the figures of one
run are in docs/train.md ("Big models on small GPUs").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.runfolder import RunFolder

MODES = {
    "lora": [],
    "lora+checkpointing": ["--gradient-checkpointing"],
    "qlora-4bit": ["--quantize", "4bit"],
    "full": ["--method", "full"],
    "full+checkpointing": ["--method", "full", "--gradient-checkpointing"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [{"prompt": f"Question {i}: " + "where is the parcel I ordered last week " * 8,
             "completion": f"Answer {i}: " + "it left the warehouse and arrives on Friday " * 8} for i in range(8)]
    path = tmp_path_factory.mktemp("rss") / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_plan_is_within_15_percent_of_a_real_runs_peak_rss(mode: str, data: Path, tmp_path: Path) -> None:
    if mode.startswith("qlora"):
        pytest.importorskip("bitsandbytes")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "tunesmith", "train", str(data), "--out", str(run), "--max-steps", "2",
            "--batch-size", "2", "--max-length", "128", "--no-guard", "--device", "cpu", "--threads", "1",
            "--eval-fraction", "0", *MODES[mode]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = RunFolder.open(run).manifest()
    planned, measured = manifest["plan"]["peak_memory_bytes"], manifest["result"]["peak_rss_bytes"]
    print(f"{mode}: planned {planned / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert abs(planned / measured - 1) <= 0.15, (mode, planned, measured)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_plan_is_within_15_percent_per_rank_under_fsdp(method: str, data: Path, tmp_path: Path) -> None:
    """2 gloo processes under torchrun, FSDP: the estimate for world 2 against each rank's own peak RSS."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29640 + (method == "full")), "-m", "tunesmith", "train", str(data), "--out", str(run), "--max-steps",
            "2", "--batch-size", "2", "--max-length", "128", "--no-guard", "--device", "cpu", "--threads", "1",
            "--eval-fraction", "0", "--distributed", "fsdp", "--method", method]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = RunFolder.open(run).manifest()
    planned, per_rank = manifest["plan"]["peak_memory_bytes"], manifest["result"]["peak_rss_bytes_per_rank"]
    print(f"fsdp {method}: planned {planned / 2**20:.0f} MiB per rank, measured {[m >> 20 for m in per_rank]} MiB")
    assert len(per_rank) == 2
    for measured in per_rank:
        assert abs(planned / measured - 1) <= 0.15, (method, planned, per_rank)
