"""LoRA projections that share an input, computed as one group, give PEFT's outputs and gradients."""

from __future__ import annotations

import torch

from tunesmith.config import LoraSettings
from tunesmith.data.tokenize import encode
from tunesmith.model.loading import load_model
from tunesmith.model.lora import add_lora
from tunesmith.train import fused_lora
from tunesmith.train.batching import collate
from tunesmith.train.fastpath import check_fast_paths
from tunesmith.train.loss import CompletionLoss


def _peft(tiny_model_dir, dropout: float = 0.0):
    model = add_lora(load_model(str(tiny_model_dir)), LoraSettings(r=4, alpha=8, dropout=dropout))
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B = 0 at init would make every A gradient zero: nothing to compare
            p.data = 0.1 * torch.randn(p.shape, generator=gen)
    return model


def _examples(tokenizer, n: int = 3):
    return [encode(tokenizer, [{"role": "user", "content": f"What is {i * 37} + 1?"},
                               {"role": "assistant", "content": f"It is {i + 1}."}]) for i in range(n)]


def _loss_and_grads(model, batch, seed: int = 0):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b, atol: float = 1e-6):
    assert torch.allclose(a[0], b[0], atol=atol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.allclose(a[1][name], b[1][name], atol=atol), name


def test_groups_give_pefts_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    model = _peft(tiny_model_dir).eval()
    batch = collate(_examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    plain = _loss_and_grads(model, batch)
    groups = fused_lora.fuse_lora_groups(model)
    assert len(groups) == 2 * model.config.num_hidden_layers  # q/k/v and gate/up in every layer
    fused = _loss_and_grads(model, batch)
    _assert_same(plain, fused)
    # the group ran once per layer and handed the other members their outputs
    assert all(g.computed == 1 and g.handed == len(g.members) - 1 for g in groups)


def test_groups_keep_pefts_dropout_masks(tiny_model_dir, tiny_tokenizer):
    model = _peft(tiny_model_dir, dropout=0.3).train()
    batch = collate(_examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    plain = _loss_and_grads(model, batch, seed=7)
    fused_lora.fuse_lora_groups(model)
    _assert_same(plain, _loss_and_grads(model, batch, seed=7))


def test_a_member_called_on_its_own_computes_its_own_output(tiny_model_dir):
    model = _peft(tiny_model_dir).eval()
    attn = model.get_decoder().layers[0].self_attn
    x, y = torch.randn(2, 5, model.config.hidden_size), torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        plain = [attn.q_proj(x), attn.k_proj(y), attn.v_proj(x)]
        fused_lora.fuse_lora_groups(model)
        fused = [attn.q_proj(x), attn.k_proj(y), attn.v_proj(x)]  # k on another input: no handing over
    for a, b in zip(plain, fused, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_release_gives_each_layer_its_own_weight_back(tiny_model_dir, tiny_tokenizer):
    model = _peft(tiny_model_dir).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = fused_lora.fuse_lora_groups(model)
    q, k = groups[0].members[:2]
    assert q.base_layer.weight.untyped_storage().data_ptr() == k.base_layer.weight.untyped_storage().data_ptr()
    fused_lora.release(groups)
    assert q.base_layer.weight.untyped_storage().data_ptr() != k.base_layer.weight.untyped_storage().data_ptr()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any("forward" in vars(m) or "_tunesmith_group" in vars(m) for m in model.modules())


def test_start_up_check_turns_groups_on_for_peft_and_off_when_they_differ(tiny_model_dir, tiny_tokenizer,
                                                                          monkeypatch, caplog):
    model = _peft(tiny_model_dir)
    paths = check_fast_paths(CompletionLoss(model), _examples(tiny_tokenizer), tiny_tokenizer.pad_token_id, "cpu")
    assert paths["fused_lora"] and paths["fused_mlp"] and paths["fused_rms_norm"]

    original = fused_lora.Group.outputs
    monkeypatch.setattr(fused_lora.Group, "outputs", lambda self, x: [o * 1.01 for o in original(self, x)])
    model = _peft(tiny_model_dir)
    paths = check_fast_paths(CompletionLoss(model), _examples(tiny_tokenizer), tiny_tokenizer.pad_token_id, "cpu")
    assert paths == {"mask_free": True, "fused_mlp": True, "fused_rms_norm": True, "fused_lora": False,
                     "head_on_targets": True}
    assert not any("_tunesmith_group" in vars(m) for m in model.modules())
    assert "fast path fused_lora: differs from the model's own forward" in caplog.text


def test_fuse_lora_false_leaves_the_layers_apart(tiny_model_dir, tiny_tokenizer):
    model = _peft(tiny_model_dir)
    paths = check_fast_paths(CompletionLoss(model), _examples(tiny_tokenizer), tiny_tokenizer.pad_token_id, "cpu",
                             fuse_lora=False)
    assert not paths["fused_lora"] and paths["fused_mlp"]
    assert not any("_tunesmith_group" in vars(m) for m in model.modules())
