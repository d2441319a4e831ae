"""Acceptance: `plan` on the built-in model within 25 % of the peak RSS of a real short `tunesmith train`.

A LoRA run of 2 steps at batch 2 x 128 tokens: about 20 s on an idle 2-core machine. The larger figure
(batch 8 x 256: estimated 8.31 GiB) is in docs/plan.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.plan import data_stats, estimate


@pytest.mark.slow
def test_plan_is_within_25_percent_of_a_real_runs_peak_rss(tmp_path: Path) -> None:
    from tunesmith.model.loading import load_tokenizer

    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"Question {i}: " + "where is the parcel I ordered last week " * 8,
             "completion": f"Answer {i}: " + "it left the warehouse and arrives on Friday " * 8} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "tunesmith", "train", str(data), "--out", str(run), "--max-steps", "2",
            "--batch-size", "2", "--max-length", "128", "--no-guard", "--device", "cpu"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads((run / "manifest.json").read_text())["result"]["peak_rss_bytes"]

    stats = data_stats(data, load_tokenizer("smollm2-135m"), max_length=128)
    plan = estimate("smollm2-135m", "lora", batch_size=2, max_length=128, data=stats)
    assert stats.longest == 128  # every row is truncated to the planned length
    assert abs(plan.peak_memory_bytes / measured - 1) <= 0.25, (plan.peak_memory_bytes, measured)
