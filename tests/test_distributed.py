"""Scale-out: FSDP2 under torchrun (2 gloo processes on CPU) against one process, sharded checkpoints, and
the uneven epoch tail. The multi-process tests are slow; the in-process ones cover the sharded checkpoint
format (`distributed: fsdp` in one process trains whole but writes and resumes DCP checkpoints)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.errors import RunError
from tunesmith.model.loading import load_model
from tunesmith.train import checkpoint
from tunesmith.train.distributed import Dist, rank_share
from tunesmith.train.loop import Hooks
from tunesmith.train.run import train


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 40 rows: 36 train after the eval split, so 9 micro-batches of 4 per epoch (odd: an uneven tail on 2 ranks)
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(data: Path, model: Path, out: Path, **kw):
    base = dict(data=str(data), model=str(model), out=str(out), max_steps=6, batch_size=4, lr=5e-3,
                guard=False, threads=1, eval_every=3, distributed="fsdp")
    base.update(kw)
    return load_config(None, **base)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _metrics(run: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.parametrize("n, world", [(45, 2), (9, 2), (1, 2), (7, 3), (8, 4), (5, 1)])
def test_rank_share_gives_every_rank_the_same_count_and_each_item_once(n, world):
    shares = [rank_share(list(range(n)), Dist(rank=r, world=world)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of passes on every rank: collectives pair up
    real = sorted(i for s in shares for i in s if i is not None)
    assert real == list(range(n))
    assert sum(i is None for s in shares for i in s) == len(shares[0]) * world - n  # stand-ins only for the tail


def test_fsdp_setting_in_one_process_writes_sharded_checkpoints_and_resumes_exactly(tiny_model_dir, qa_file,
                                                                                     tmp_path):
    """A kill after step 4 (latest checkpoint: step 2), then --resume, equals the uninterrupted run bit for bit,
    and equals the same run with unsharded checkpoints: the format changes nothing in the arithmetic. Dropout is
    on, so the RNG state must round-trip too."""
    kw = dict(lora_dropout=0.1, save_every=2, eval_every=2)
    plain = train(_config(qa_file, tiny_model_dir, tmp_path / "plain", **kw, distributed="ddp"))
    whole = train(_config(qa_file, tiny_model_dir, tmp_path / "whole", **kw))

    def die_at_4(record: dict) -> None:
        if record["step"] == 4:
            raise KeyboardInterrupt  # before step 4's checkpoint is written, as a kill would

    cfg = _config(qa_file, tiny_model_dir, tmp_path / "killed", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=Hooks(on_step=die_at_4))
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-000002"
    step2 = ckpts / "step-000002"
    assert (step2 / "shards" / ".metadata").is_file() and (step2 / "rng-0.pt").is_file()
    assert not (step2 / "weights.safetensors").exists()
    resumed = train(cfg, resume=True)
    assert resumed.state.step == 6
    a, b, c = _adapter(plain.run_dir), _adapter(whole.run_dir), _adapter(resumed.run_dir)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(b[k], c[k]) for k in a)
    assert _metrics(whole.run_dir, "loss") == _metrics(resumed.run_dir, "loss") == _metrics(plain.run_dir, "loss")


def test_sharded_checkpoint_that_does_not_fit_the_model_is_one_clear_error(tiny_model_dir, qa_file, tmp_path):
    run = train(_config(qa_file, tiny_model_dir, tmp_path / "lora", max_steps=2, eval_every=2))
    full = load_model(str(tiny_model_dir))  # every weight trainable: the adapter checkpoint lacks them all
    with pytest.raises(RunError, match=r"step-000002: checkpoint does not fit this model \(.*embed_tokens"):
        checkpoint.load(run.run_dir / "checkpoints" / "step-000002", full)
