"""Training engine: properties of LoRA, the loss, checkpoints and resume, on a tiny local model."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import LoraSettings, load_config
from tunesmith.data.tokenize import encode
from tunesmith.errors import RunError, TrainingError
from tunesmith.model.loading import load_model
from tunesmith.model.lora import add_lora
from tunesmith.runfolder import RunFolder
from tunesmith.train.allocator import allocator_env
from tunesmith.train.batching import collate, epoch_order, forward_budget, pieces
from tunesmith.train.fastpath import check_fast_paths
from tunesmith.train.loss import CompletionLoss
from tunesmith.train.optim import lr_factor
from tunesmith.train.run import train


def _config(data: Path, model: Path, out: Path, **kw):
    base = dict(data=str(data), model=str(model), out=str(out), max_steps=6, batch_size=4, lr=5e-3,
                guard=False, threads=1, eval_every=3)
    base.update(kw)
    return load_config(None, **base)


def _encoded(tokenizer, n: int = 3):
    msgs = [[{"role": "user", "content": f"What is {i * 37} + 1?"}, {"role": "assistant", "content": f"It is {i + 1}."}]
            for i in range(n)]
    return [encode(tokenizer, m) for m in msgs]


def _batch(tokenizer, n: int = 3):
    return collate(_encoded(tokenizer, n), tokenizer.pad_token_id)


def test_lora_at_init_changes_no_logits(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir)).eval()
    b = _batch(tiny_tokenizer)
    before = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0)).eval()
    after = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.equal(before, after)


def test_completion_loss_matches_transformers_loss(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir)).eval()
    b = _batch(tiny_tokenizer)
    loss_fn = CompletionLoss(model)
    paths = check_fast_paths(loss_fn, _encoded(tiny_tokenizer), tiny_tokenizer.pad_token_id, "cpu")
    assert paths == {"mask_free": True, "fused_mlp": True, "fused_rms_norm": True,
                     "head_on_targets": True}  # all exact on Llama
    with torch.no_grad():
        loss_sum, n = loss_fn(b.input_ids, b.labels, b.attention_mask)
        reference = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    assert int(n) == b.targets
    assert float(loss_sum / n) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("trainable_head", [False, True])
def test_head_cross_entropy_matches_autograd(trainable_head, monkeypatch):
    from tunesmith.train import loss as loss_mod

    monkeypatch.setattr(loss_mod, "HEAD_CHUNK", 7)  # several chunks, the last one partial
    torch.manual_seed(0)
    h = torch.randn(20, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 12, dtype=torch.float64, requires_grad=trainable_head)
    y = torch.randint(0, 50, (20,))
    ours = loss_mod.head_cross_entropy(h, w, y)
    (gh,) = torch.autograd.grad(ours * 3.0, [h], retain_graph=trainable_head)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="sum")
    (rh,) = torch.autograd.grad(ref * 3.0, [h], retain_graph=trainable_head)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    assert torch.allclose(gh, rh, atol=1e-9)
    if trainable_head:
        assert torch.allclose(torch.autograd.grad(ours, [w])[0], torch.autograd.grad(ref, [w])[0], atol=1e-9)


def test_epoch_order_is_a_deterministic_permutation():
    lengths = [5, 50, 7, 9, 31, 2, 8, 40, 11, 3]
    a = epoch_order(lengths, 3, seed=1, epoch=0)
    assert a == epoch_order(lengths, 3, seed=1, epoch=0)
    assert a != epoch_order(lengths, 3, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(10))


def test_pieces_keep_every_row_and_fit_the_budget_as_evenly_as_they_can():
    lengths = [10, 30, 12, 29, 31, 11, 80, 9]
    assert pieces([0, 1, 2], lengths, 90) == [[0, 1, 2]]  # 3 x 30 fits: the same batch, unsorted
    assert pieces([0, 1, 2], lengths, None) == [[0, 1, 2]]
    assert pieces([0, 2, 5, 7, 1, 3], lengths, 48) == [[7, 0, 5, 2], [3], [1]]  # 4 x 12 fits, 2 x 30 does not
    assert pieces([0, 2, 5, 7, 1, 3], lengths, 60) == [[7, 0, 5, 2], [3, 1]]  # 3 + 3 rows would not fit
    assert pieces(list(range(8)), [10] * 8, 70) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # evened out, not 7 + 1
    assert pieces([0, 6, 4], lengths, 40) == [[0], [4], [6]]  # the 80-token row runs alone
    for budget in (1, 20, 33, 64, 100, 1000):
        runs = pieces(list(range(8)), lengths, budget)
        assert sorted(i for r in runs for i in r) == list(range(8))
        assert all(len(r) == 1 or len(r) * max(lengths[i] for i in r) <= budget for r in runs)
    assert forward_budget("auto", "cpu") == 768 and forward_budget("auto", "cuda:0") is None
    assert forward_budget(0, "cpu") is None and forward_budget(100, "cuda") == 100


def test_forward_passes_split_to_a_token_budget_train_the_same(tiny_model_dir, qa_file, tmp_path):
    """Every row in a forward pass of its own (forward_tokens 1) against whole micro-batches of 4. In fp32: bf16
    products of other shapes round differently, by far more than the 1e-6 this holds the sum order to."""
    whole = train(_config(qa_file, tiny_model_dir, tmp_path / "whole", forward_tokens=0, max_steps=4, precision="fp32"))
    split = train(_config(qa_file, tiny_model_dir, tmp_path / "split", forward_tokens=1, max_steps=4, precision="fp32"))
    a = load_file(str(whole.output / "adapter_model.safetensors"))
    b = load_file(str(split.output / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # summed in another order: not the same code path
    losses = [[r["loss"] for r in RunFolder(x.run_dir).metrics() if "loss" in r] for x in (whole, split)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == 4
    assert [RunFolder(x.run_dir).manifest()["forward_tokens"] for x in (whole, split)] == [None, 1]


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, qa_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    return train(_config(qa_file, tiny_model_dir, out))


def test_lora_run_folder_describes_itself(lora_run, tiny_model_dir):
    run = lora_run.run_dir
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "data/train.jsonl", "data/eval.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "checkpoints/latest"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"].startswith("sha256:")
    assert manifest["data"]["train"]["sha256"].startswith("sha256:")
    assert manifest["result"]["steps"] == 6
    assert manifest["plan"]["peak_memory_bytes"] > 0  # the planner's estimate, next to the measurement
    assert manifest["estimate_vs_measured"]["peak_memory_ratio"] > 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in lines if "eval_loss" in r] == [0, 3, 6]  # step 0: the base model
    # The adapter is small next to the model.
    model_bytes = (Path(tiny_model_dir) / "model.safetensors").stat().st_size
    assert lora_run.output_bytes < model_bytes


def test_lora_trains_only_adapter_weights(lora_run, tiny_model_dir):
    ckpts = lora_run.run_dir / "checkpoints"
    ckpt = load_file(str(ckpts / (ckpts / "latest").read_text() / "weights.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)
    from peft import PeftModel

    base = load_model(str(tiny_model_dir))
    original = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(lora_run.output))
    for name, tensor in tuned.get_base_model().state_dict().items():
        if "lora_" not in name and ".base_layer." not in name and name in original:
            assert torch.equal(tensor, original[name]), name
    assert any(float(v.abs().max()) > 0 for k, v in ckpt.items() if "lora_B" in k)  # B moved off zero


def test_adapter_loads_in_vanilla_peft_with_equal_logits(lora_run, tiny_model_dir, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.model.adapters import load_for_inference, resolve_target

    b = _batch(tiny_tokenizer)
    vanilla = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                        str(lora_run.output)).eval()
    ours, _ = load_for_inference(resolve_target(str(lora_run.run_dir)))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        a = vanilla(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        c = ours(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        z = base(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.allclose(a, c, atol=1e-6)
    assert not torch.allclose(a, z, atol=1e-4)  # training changed the model


def test_merged_equals_unmerged(lora_run, tmp_path, tiny_tokenizer):
    from tunesmith.model.adapters import load_for_inference, resolve_target
    from tunesmith.model.merge import merge

    result = merge(lora_run.run_dir, tmp_path / "merged")
    assert result.max_abs_diff < 1e-4
    assert not list((tmp_path / "merged").glob("adapter_*"))
    b = _batch(tiny_tokenizer)
    merged = load_model(str(tmp_path / "merged")).eval()
    peft_model, _ = load_for_inference(resolve_target(str(lora_run.run_dir)))
    with torch.no_grad():
        a = merged(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        c = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.allclose(a, c, atol=1e-4)


def test_eval_loss_goes_down(lora_run):
    evals = [json.loads(x)["eval_loss"] for x in (lora_run.run_dir / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in x]
    assert evals[-1] < evals[0]


def test_full_fine_tune_writes_a_complete_model(tiny_model_dir, qa_file, tmp_path):
    r = train(_config(qa_file, tiny_model_dir, tmp_path / "full", method="full", lr=1e-3, max_steps=3))
    assert (r.output / "config.json").is_file() and (r.output / "model.safetensors").is_file()
    assert (r.output / "tokenizer_config.json").is_file()
    tuned, base = load_model(str(r.output)), load_model(str(tiny_model_dir))
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed


def test_non_finite_loss_stops_naming_the_step(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    real = CompletionLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args):  # the third training micro-batch overflows
        calls["n"] += self.model.training
        loss, n = real(self, *args)
        return (loss * float("nan") if calls["n"] == 3 and self.model.training else loss), n

    monkeypatch.setattr(CompletionLoss, "forward", poisoned)
    cfg = _config(qa_file, tiny_model_dir, tmp_path / "nan", max_steps=5, eval_every=50, save_every=1)
    with pytest.raises(TrainingError, match=r"^step 3: loss is nan; training stopped"):
        train(cfg)
    assert (tmp_path / "nan" / "checkpoints" / "latest").read_text() == "step-000002"


def test_resume_refuses_foreign_or_empty_folders(tiny_model_dir, qa_file, tmp_path, lora_run):
    with pytest.raises(RunError, match="not a tunesmith run folder"):
        train(_config(qa_file, tiny_model_dir, tmp_path), resume=True)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(RunError, match="finished at step 6 of 6"):
        train(_config(qa_file, tiny_model_dir, lora_run.run_dir), resume=True)
    with pytest.raises(RunError, match="training data differs"):  # more steps, but on other data
        train(_config(other, tiny_model_dir, lora_run.run_dir, max_steps=12), resume=True)
    with pytest.raises(RunError, match="folder exists and is not empty"):
        train(_config(qa_file, tiny_model_dir, lora_run.run_dir))


def test_crash_during_save_keeps_previous_checkpoint(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from tunesmith.train import checkpoint

    cfg = _config(qa_file, tiny_model_dir, tmp_path / "crash", max_steps=4, eval_every=2, save_every=2)
    real = checkpoint.save_file
    calls = {"n": 0}

    def flaky(tensors, filename):  # the second save dies half-way, as a kill would
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"partial")
            raise KeyboardInterrupt
        real(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(checkpoint, "save_file", real)
    ckpts = tmp_path / "crash" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-000002"
    r = train(cfg, resume=True)
    assert r.state.step == 4
    assert not list(ckpts.glob(".step-*"))  # the half-written folder was cleaned up


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tunesmith", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tiny_model_dir, qa_file, tmp_path):
    common = ["--model", str(tiny_model_dir), "--max-steps", "300", "--batch-size", "4", "--lr", "1e-3",
              "--save-every", "5", "--eval-every", "100", "--threads", "1", "--no-guard", "--lora-dropout", "0.1"]
    ref = _cli("train", str(qa_file), "--out", str(tmp_path / "ref"), *common)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    victim = _cli("train", str(qa_file), "--out", str(tmp_path / "killed"), *common)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline:
        if latest.is_file() and latest.read_text() >= "step-000020":
            break
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = latest.read_text()
    assert killed_at < "step-000300", "the run finished before it could be killed"
    resumed = _cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == list(range(1, 301))  # no step logged twice after the resume


def test_cli_end_to_end_ten_steps(tiny_model_dir, qa_file, tmp_path):
    out = tmp_path / "run"
    p = _cli("train", str(qa_file), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "10",
             "--batch-size", "4", "--no-guard", "--threads", "1")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert "Training settings" in stdout and "done" in stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    result = json.loads((out / "manifest.json").read_text())["result"]
    assert result["steps"] == 10
    assert result["allocator"] == ("mimalloc" if allocator_env() is not None or "mimalloc" in
                                   os.environ.get("LD_PRELOAD", "") else "system")
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]).get("eval_loss", 0))


def test_cli_config_errors_are_one_line(tmp_path, qa_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    p = _cli("train", str(qa_file), "--config", str(bad))
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2
    assert stderr.strip().splitlines() == [f"error: {bad}: unknown setting 'learning_rate'; did you mean 'lr'?"]
    p = _cli("train", "--resume", str(tmp_path))
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 2 and "nothing to resume" in stderr and "Traceback" not in stderr


def test_fused_gated_mlp_matches_the_original(tiny_model_dir, tiny_tokenizer):
    from tunesmith.train.kernels import fuse_gated_mlps

    b = _batch(tiny_tokenizer)
    outs = []
    for fuse in (False, True):
        model = load_model(str(tiny_model_dir))
        if fuse:
            assert len(fuse_gated_mlps(model)) == model.config.num_hidden_layers
        loss = model(input_ids=b.input_ids, labels=b.labels).loss
        loss.backward()
        outs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(outs[0][1], outs[1][1], strict=True))


def test_allocator_env_respects_opt_out_and_existing_preload():
    assert allocator_env({"TUNESMITH_MALLOC": "system"}) is None
    env = allocator_env({"LD_PRELOAD": "/opt/other.so"})
    if env is None:
        pytest.skip("cmeel-mimalloc is not installed here")
    assert env["LD_PRELOAD"].endswith(":/opt/other.so") and "libmimalloc" in env["LD_PRELOAD"]
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"
    assert allocator_env(env) is None  # already on: no second re-exec


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_accumulation(tiny_model_dir, qa_file, tmp_path):
    """torchrun with 2 CPU processes (gloo) x 1 micro-batch == 1 process x 2 accumulated micro-batches.

    An epoch has 9 micro-batches, so step 5 holds one: rank 1 runs a zero-weight stand-in (no hang) and the
    gradient stays the mean over the real targets."""
    common = ["train", str(qa_file), "--model", str(tiny_model_dir), "--max-steps", "6", "--batch-size", "4",
              "--lr", "1e-3", "--no-guard", "--threads", "1", "--lora-dropout", "0", "--eval-every", "2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29611", "-m", "tunesmith", *common, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "tunesmith", *common, "--grad-accum", "2",
                             "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert la == pytest.approx(lb, rel=1e-5) and len(la) == 6
    tokens = [[json.loads(x)["tokens"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in x] for r in ("ddp", "one")]
    assert tokens[0] == tokens[1]  # the stand-in's tokens are not counted


@pytest.mark.parametrize("fused", [True, False])
def test_clipping_in_the_step_updates_like_clipping_first(fused):
    """The loop's clip (inside a fused AdamW's pass, else in place) against clip_grad_norm_ then the step."""
    from tunesmith.train.loop import _clip

    torch.manual_seed(0)
    start = [torch.randn(30, 20), torch.randn(20)]
    grads = [[10 * torch.randn_like(w) for w in start], [1e-3 * torch.randn_like(w) for w in start]]  # clip, not
    results = []
    for ours in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = torch.optim.AdamW(params, lr=0.1, fused=fused)
        norms = []
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            norms.append(_clip(params, 1.0, opt) if ours else float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
            opt.step()
        results.append(([p.detach().clone() for p in params], norms))
    (ref, ref_norms), (got, got_norms) = results
    assert got_norms == pytest.approx(ref_norms, rel=1e-6) and got_norms[0] > 1 > got_norms[1]
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ref, got, strict=True))


def test_the_fused_adamw_on_cpu_updates_like_the_reference_loop() -> None:
    from tunesmith.train.optim import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin = copy.deepcopy(model)
    fused = make_optimizer(model, 1e-2, 0.1, "cpu")
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW([{"params": [p for p in twin.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                              {"params": [p for p in twin.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                             lr=1e-2, foreach=False)
    x = torch.randn(8, 16)
    for _ in range(3):
        for net, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fp32 rounding of a different op order
