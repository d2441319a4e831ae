"""Each fast path is checked against the model's own forward at start-up; a planted mismatch falls back."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.data.tokenize import encode
from tunesmith.errors import TrainingError
from tunesmith.model.loading import load_model
from tunesmith.train import kernels
from tunesmith.train.fastpath import check_fast_paths
from tunesmith.train.loss import CompletionLoss

ALL_ON = {"mask_free": True, "fused_mlp": True, "fused_rms_norm": True, "head_on_targets": True}


def _examples(tokenizer):
    rows = [("What is 2 + 2?", "It is 4."), ("Where is my order? I ordered it a week ago.", "Track it online.")]
    return [encode(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in rows]


def _check(model, tokenizer):
    loss_fn = CompletionLoss(model)
    return loss_fn, check_fast_paths(loss_fn, _examples(tokenizer), tokenizer.pad_token_id, "cpu")


def test_every_fast_path_is_exact_on_a_llama(tiny_model_dir, tiny_tokenizer):
    _, paths = _check(load_model(str(tiny_model_dir)), tiny_tokenizer)
    assert paths == ALL_ON


def test_planted_mlp_mismatch_falls_back_to_the_models_own_mlp(tiny_model_dir, tiny_tokenizer, monkeypatch, caplog):
    def wrong(self, x):  # right shape, slightly wrong values: what a non-SwiGLU MLP would give
        return self.down_proj(kernels.silu_mul(self.gate_proj(x), self.up_proj(x)) * 1.01)

    monkeypatch.setattr(kernels, "_gated_mlp_forward", wrong)
    model = load_model(str(tiny_model_dir))
    _, paths = _check(model, tiny_tokenizer)
    assert paths == {**ALL_ON, "fused_mlp": False}
    assert not any("forward" in vars(m) for m in model.modules() if hasattr(m, "gate_proj"))  # MLPs' own forward
    assert any("forward" in vars(m) for m in model.modules() if type(m).__name__ == "LlamaRMSNorm")  # still fused
    assert "fast path fused_mlp: differs from the model's own forward" in caplog.text


def test_planted_norm_mismatch_falls_back_to_the_models_own_norm(tiny_model_dir, tiny_tokenizer, monkeypatch):
    def wrong(self, x):  # a LayerNorm-like model: mean subtracted, which RMSNorm does not do
        return kernels._RMSNorm.apply(x - x.mean(-1, keepdim=True), self.weight, self.variance_epsilon)

    monkeypatch.setattr(kernels, "_rms_norm_forward", wrong)
    model = load_model(str(tiny_model_dir))
    _, paths = _check(model, tiny_tokenizer)
    assert paths == {**ALL_ON, "fused_rms_norm": False}
    assert not any("forward" in vars(m) for m in model.modules() if type(m).__name__ == "LlamaRMSNorm")


def test_planted_mask_dependence_turns_mask_free_attention_off(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir))

    def pads_leak(module, args, kwargs, output):  # as if pad tokens reached real ones without a mask
        if kwargs.get("attention_mask") is None:
            output.last_hidden_state.add_(0.5)
        return output

    model.get_decoder().register_forward_hook(pads_leak, with_kwargs=True)
    loss_fn, paths = _check(model, tiny_tokenizer)
    assert paths == {**ALL_ON, "mask_free": False}
    b = _examples(tiny_tokenizer)
    from tunesmith.train.batching import collate

    batch = collate(b, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        loss, n = loss_fn(batch.input_ids, batch.labels, batch.attention_mask)
        reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    assert float(loss / n) == pytest.approx(float(reference), rel=1e-5)  # the fallback computes the true loss


def test_planted_logit_postprocessing_turns_head_on_targets_off(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir))

    def soft_cap(module, args, output):  # like Gemma's final logit soft-capping
        output.logits = 30.0 * torch.tanh(output.logits / 30.0) + 1.0
        return output

    model.register_forward_hook(soft_cap)
    _, paths = _check(model, tiny_tokenizer)
    assert paths == {**ALL_ON, "head_on_targets": False}


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_non_finite_gradient_norm_stops_before_the_update(tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.config import load_config
    from tunesmith.train.run import train

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."}) + "\n"
                            for i in range(12)))
    original = CompletionLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args):
        loss, n = original(self, *args)
        if self.model.training:
            calls["n"] += 1
            if calls["n"] == 3:  # the loss stays finite, its gradient does not
                loss = _InfGrad.apply(loss)
        return loss, n

    monkeypatch.setattr(CompletionLoss, "forward", poisoned)
    cfg = load_config(None, data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), max_steps=5,
                      batch_size=4, eval_fraction=0, guard=False, threads=1, save_every=1)
    with pytest.raises(TrainingError, match=r"^step 3: gradient norm is (inf|nan) \(loss \d"):
        train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-000002"


def test_the_planners_timing_model_runs_the_same_paths_as_training(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """`tunesmith plan` calibrates speed on a model with every shortcut on (unprobed): the same forwards, in the
    same modules, as the model training checked, LoRA included, and fp32 attention under bf16."""
    from tunesmith.config import LoraSettings
    from tunesmith.model.lora import add_lora
    from tunesmith.train.fastpath import switch_on_unchecked

    def patched(model: torch.nn.Module) -> list[str]:  # modules whose forward a fast path replaced
        return [n for n, m in model.named_modules() if "forward" in vars(m)]

    trained, timed = (add_lora(load_model(str(tiny_model_dir)), LoraSettings()) for _ in range(2))
    _, paths = _check(trained, tiny_tokenizer)
    timing = CompletionLoss(timed)
    switch_on_unchecked(timing, "fp32")
    assert paths == {**ALL_ON, "fused_lora": True}
    assert patched(timed) == patched(trained) != []
    assert (timing.mask_free, timing.head_on_targets_only) == (True, True)
    assert timed.config._attn_implementation == "sdpa"
    switch_on_unchecked(CompletionLoss(timed), "bf16")
    assert timed.config._attn_implementation == kernels.FP32_SDPA


def test_fast_paths_survive_train_and_eval(tiny_model_dir, tiny_tokenizer):
    """Models load without transformers' hub kernels (on by default when the `kernels` package is installed):
    those would be fetched from the hub unasked, and each train()/eval() re-applied them over the fast paths."""
    model = load_model(str(tiny_model_dir))
    assert not model.use_kernels
    _check(model, tiny_tokenizer)
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    for mode in (True, False, True):
        model.train(mode)
        assert norms and all("forward" in vars(m) for m in norms)
