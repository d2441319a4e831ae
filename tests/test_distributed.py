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

import psutil
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


# -- two processes (torchrun, gloo on CPU) -----------------------------------------------------------------
# Why the tolerances hold: with the same global batch, each rank computes exactly the gradient the single
# process computes for the same micro-batch (same kernels, one thread), and the reduce-scatter adds the two
# halves, as accumulation does (a + b either way; the *2 / 2 scaling is exact). What differs is the order in
# which the squared norms of the gradient shards are summed for clipping (and the float64 loss sum), a few
# ulps (~1e-7 relative) per step; Adam keeps every update near lr in size, so after 6-12 steps at lr 1e-3
# the weights agree to ~1e-7 (measured: max 1.5e-8 for LoRA after 12 steps, 1.2e-7 for full after 6), well
# inside atol 1e-5, which still catches a wrong gradient scale (a factor 2 moves weights by ~lr = 1e-3).

COMMON = ["--batch-size", "4", "--lr", "1e-3", "--threads", "1", "--lora-dropout", "0"]


def _tunesmith(args: list[str], *, ranks: int = 1, port: int = 0, **kw) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port)] \
        if ranks > 1 else []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *launcher, "-m", "tunesmith", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _finish(p: subprocess.Popen) -> None:
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def lora_runs(tiny_model_dir, qa_file, tmp_path_factory) -> tuple[Path, Path]:
    """The same 12 LoRA steps (over two epoch tails) with the forgetting guard on: FSDP on 2 ranks x 1
    micro-batch, and 1 process x 2 accumulated micro-batches. In fp32, as the full fine-tune below: the
    comparison checks the sharding arithmetic at 1e-5, and under bf16 autocast products of one rank's rows
    and of both ranks' rows round differently by more than that (the last eval loss by 2.4e-5 once the fused
    RMSNorm really ran). bf16 under FSDP is exercised by `test_plan_rss.py`."""
    tmp = tmp_path_factory.mktemp("lora")
    args = ["train", str(qa_file), "--model", str(tiny_model_dir), "--max-steps", "12", "--eval-every", "4",
            "--precision", "fp32", *COMMON]
    fsdp = _tunesmith([*args, "--distributed", "fsdp", "--out", str(tmp / "fsdp")], ranks=2, port=29621)
    _finish(fsdp)
    single = _tunesmith([*args, "--grad-accum", "2", "--out", str(tmp / "one")])
    _finish(single)
    return tmp / "fsdp", tmp / "one"


@pytest.mark.slow
def test_fsdp_lora_two_ranks_match_one_process(lora_runs):
    fsdp, one = lora_runs
    a, b = _adapter(fsdp), _adapter(one)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert _metrics(fsdp, "loss") == pytest.approx(_metrics(one, "loss"), rel=1e-5)
    assert _metrics(fsdp, "eval_loss") == pytest.approx(_metrics(one, "eval_loss"), rel=1e-5)
    assert _metrics(fsdp, "tokens") == _metrics(one, "tokens")  # every real token counted once
    assert _metrics(fsdp, "guard/prose_ppl") == pytest.approx(_metrics(one, "guard/prose_ppl"), rel=1e-5)
    ckpt = (fsdp / "checkpoints" / (fsdp / "checkpoints" / "latest").read_text())
    assert {p.name for p in ckpt.iterdir()} >= {"shards", "rng-0.pt", "rng-1.pt", "trainer.pt", "state.json"}
    result = json.loads((fsdp / "manifest.json").read_text())["result"]
    assert result["processes"] == 2 and len(result["peak_rss_bytes_per_rank"]) == 2


@pytest.mark.slow
def test_sharded_checkpoint_of_two_ranks_loads_whole_in_one_process(lora_runs, tiny_model_dir):
    """DCP reshards on load: the 2-rank checkpoint of the exported step fills an unsharded model in a plain
    process (no process group), and its adapter equals the exported one."""
    from tunesmith.config import LoraSettings
    from tunesmith.model.lora import add_lora

    fsdp = lora_runs[0]
    exported = json.loads((fsdp / "manifest.json").read_text())["result"]["exported_step"]
    torch.manual_seed(1)  # another LoRA init: every adapter weight must come from the checkpoint
    model = add_lora(load_model(str(tiny_model_dir)), LoraSettings())  # the run's r and alpha
    state = checkpoint.load(fsdp / "checkpoints" / f"step-{exported:06d}", model)
    assert state.step == exported
    loaded = {k.replace(".default", ""): v for k, v in checkpoint.trainable_state(model).items()}
    out = _adapter(fsdp)
    assert loaded.keys() == out.keys() and all(torch.equal(loaded[k], out[k]) for k in out)


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_equals_uninterrupted(lora_runs, tiny_model_dir, qa_file, tmp_path):
    """SIGKILL of both workers and the launcher mid-run, then --resume under torchrun: bit for bit the
    uninterrupted run (the shards, Adam's moments, the schedule and the data position round-trip exactly)."""
    out = tmp_path / "killed"
    victim = _tunesmith(["train", str(qa_file), "--model", str(tiny_model_dir), "--max-steps", "12", "--eval-every",
                         "4", "--save-every", "1", "--no-guard", "--precision", "fp32", *COMMON, "--distributed",
                         "fsdp", "--out", str(out)],
                        ranks=2, port=29622)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and latest.read_text() >= "step-000003"):
        time.sleep(0.01)
    for p in [*psutil.Process(victim.pid).children(recursive=True), victim]:  # workers run in their own sessions
        os.kill(p.pid, signal.SIGKILL)
    victim.wait()
    killed_at = latest.read_text()
    assert "step-000003" <= killed_at < "step-000012", "the run finished before it could be killed"
    _finish(_tunesmith(["train", "--resume", str(out)], ranks=2, port=29623))
    a, b = _adapter(lora_runs[0]), _adapter(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(out, "step")[-1] == 12 and _metrics(out, "loss") == _metrics(lora_runs[0], "loss")
    assert not list((out / "checkpoints").glob(".step-*"))  # a half-written checkpoint of the kill is gone


@pytest.mark.slow
def test_fsdp_full_fine_tune_with_checkpointing_two_ranks_match_one_process(tiny_model_dir, qa_file, tmp_path):
    """Full fine-tuning (tied embeddings: the LM head lives in the root unit with them), over an epoch tail,
    with gradient checkpointing on the FSDP side: the recomputed layer forward all-gathers its shards again
    and gives the same gradients. In fp32: under bf16 autocast the sharded reductions and the recomputed forward
    round differently from one process, by more than the 1e-5 that checks the sharding arithmetic."""
    args = ["train", str(qa_file), "--model", str(tiny_model_dir), "--method", "full", "--max-steps", "6",
            "--eval-every", "3", "--no-guard", "--precision", "fp32", *COMMON]
    _finish(_tunesmith([*args, "--distributed", "fsdp", "--gradient-checkpointing", "--out", str(tmp_path / "fsdp")],
                       ranks=2, port=29624))
    _finish(_tunesmith([*args, "--grad-accum", "2", "--out", str(tmp_path / "one")]))
    a = load_file(str(tmp_path / "fsdp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()  # the tied LM head is not written twice
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert (tmp_path / "fsdp" / "model" / "tokenizer_config.json").is_file()
    assert _metrics(tmp_path / "fsdp", "loss") == pytest.approx(_metrics(tmp_path / "one", "loss"), rel=1e-5)
