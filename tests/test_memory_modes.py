"""Big models on small devices: gradient checkpointing and a quantized (QLoRA) base, on a tiny Llama.

Checkpointing recomputes each layer's forward in the backward pass with the same inputs and the same CPU
kernels, so gradients agree to float rounding (1e-6 relative covers a different reduction order; in
practice they are bit-identical here). A 4-bit base is a different function from the fp32 one (NF4 keeps
16 levels per 64-weight block), so there the property is that training works and the adapter stays a plain
PEFT adapter that loads on the full-precision base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.config import LoraSettings, TrainConfig, load_config
from tunesmith.data.tokenize import encode
from tunesmith.model.loading import load_model
from tunesmith.model.lora import add_lora
from tunesmith.runfolder import RunFolder
from tunesmith.train.batching import collate
from tunesmith.train.kernels import fuse_gated_mlps
from tunesmith.train.loss import CompletionLoss
from tunesmith.train.run import build_model, train

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA tests need bitsandbytes (in the dev extra)")


def _batch(tokenizer):
    rows = [("What is 2 + 2?", "It is 4."), ("Where is my order? It left on Monday.", "It arrives on Friday.")]
    return collate([encode(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                    for q, a in rows], tokenizer.pad_token_id)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tiny_tokenizer, method):
    from tunesmith.model.loading import resolve

    b = _batch(tiny_tokenizer)
    grads = []
    for ckpt in (False, True):
        config = TrainConfig(model=str(tiny_model_dir), method=method, gradient_checkpointing=ckpt,
                             lora=LoraSettings(r=4, alpha=8))
        model = build_model(config, resolve(str(tiny_model_dir)), "cpu")
        fuse_gated_mlps(model)  # as the trainer does: the fused MLP and the fused head loss under checkpointing
        model.train()
        loss, n = CompletionLoss(model)(b.input_ids, b.labels, b.attention_mask)
        (loss / n).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and plain
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], rtol=1e-6, atol=1e-9), k


def test_checkpointing_keeps_one_hidden_state_per_layer_as_planned(tiny_tokenizer):
    """Saved for backward by a 4-layer minus a 3-layer model, under checkpointing: each layer's input only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved(layers: int) -> int:
        config = LlamaConfig(vocab_size=400, hidden_size=96, intermediate_size=160, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if (key := t.untyped_storage().data_ptr()) not in params:
                seen[key] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.get_decoder()(input_ids=torch.randint(0, 400, (2, 7)))
        return sum(seen.values())

    assert saved(4) - saved(3) == 2 * 7 * 96 * 4  # B x T x h fp32: what plan.memory counts per layer


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> Path:
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(40)]
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, qa_file, tmp_path_factory) -> RunFolder:
    out = tmp_path_factory.mktemp("runs") / "qlora"
    train(load_config(None, data=str(qa_file), model=str(tiny_model_dir), out=str(out), max_steps=12, batch_size=4,
                      lr=5e-3, guard=False, threads=1, eval_every=4, quantize="4bit"))
    return RunFolder.open(out)


def test_qlora_trains_on_a_4bit_base(qlora_run):
    losses = [r["eval_loss"] for r in qlora_run.metrics() if "eval_loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses
    assert qlora_run.config().quantize == "4bit"
    assert qlora_run.manifest()["fast_paths"]["head_on_targets"]


def test_qlora_adapter_loads_in_vanilla_peft_on_the_full_precision_base(qlora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.model.adapters import load_for_inference, resolve_target

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    vanilla = PeftModel.from_pretrained(base, str(qlora_run.path / "adapter")).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    ours, _ = load_for_inference(resolve_target(str(qlora_run.path), quantize="none"))
    as_trained, _ = load_for_inference(resolve_target(str(qlora_run.path)))  # auto: the 4-bit base again
    assert type(as_trained.get_base_model().model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    with torch.no_grad():
        full = vanilla(input_ids=ids).logits
        assert torch.allclose(full, ours(input_ids=ids).logits, atol=1e-5)
        quantization_gap = float((full - as_trained(input_ids=ids).logits).abs().max())
    assert 0 < quantization_gap < 1.0  # same adapter, 4-bit vs fp32 base: close but not equal


def test_merge_of_a_qlora_run_reports_the_gap_to_its_training_base(qlora_run, tmp_path):
    from tunesmith.model.merge import merge

    r = merge(qlora_run.path, tmp_path / "merged")
    assert r.trained_on == "4bit" and r.max_abs_diff < 1e-4
    assert r.quantized_diff is not None and 0 < r.quantized_diff < 1.0
    merged = load_model(str(r.out))
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # merged into full precision


def test_quantize_needs_lora_and_a_known_mode():
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="quantize 4bit needs method lora"):
        TrainConfig(method="full", quantize="4bit")
    with pytest.raises(ConfigError, match="quantize: '2bit' is not one of none, 4bit, 8bit"):
        TrainConfig(quantize="2bit")  # type: ignore[arg-type]


def test_a_lora_adapter_on_a_4bit_base_starts_as_a_no_op(tiny_model_dir):
    base = load_model(str(tiny_model_dir), quantize="4bit")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = add_lora(base, LoraSettings(r=4)).eval()(input_ids=ids).logits
    assert torch.equal(before, after)


def test_evaluation_does_not_break_the_gradient_through_a_4bit_base(tiny_model_dir, tiny_tokenizer):
    """An eval-mode forward must not switch the 4-bit layers to a kernel without a backward pass."""
    b = _batch(tiny_tokenizer)

    def lora_grads(evaluate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = add_lora(load_model(str(tiny_model_dir), quantize="4bit"), LoraSettings(r=4, alpha=8))
        with torch.no_grad():  # give B a value, so the gradient of A depends on the path through the base
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=b.input_ids)
        model.train()
        loss, n = CompletionLoss(model)(b.input_ids, b.labels, b.attention_mask)
        (loss / n).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    fresh, after_eval = lora_grads(False), lora_grads(True)
    for k in fresh:
        assert torch.allclose(fresh[k], after_eval[k], rtol=1e-5, atol=1e-8), k
