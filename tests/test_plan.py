"""The planner's arithmetic on known configs, hand-computed, and its recommendation logic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tunesmith.config import LoraSettings, TrainConfig
from tunesmith.errors import ConfigError, ModelError
from tunesmith.plan import (
    CPU_PROCESS_BYTES,
    CUDA_CONTEXT_BYTES,
    GIB,
    MIMALLOC_PROCESS_BYTES,
    Arch,
    DataStats,
    Setup,
    data_stats,
    estimate,
    flops_per_token,
    load_arch,
    lora_params,
    lora_targets,
    memory,
    output_bytes,
    peak_bytes,
    required_bytes,
)

CONFIGS = Path(__file__).parent / "data" / "configs"
LLAMA_7B = str(CONFIGS / "llama-2-7b")
MISTRAL_7B = str(CONFIGS / "mistral-7b")
SMOLLM2 = str(CONFIGS / "smollm2-135m" / "config.json")

# hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads, vocabulary 400, tied: small enough to count by hand
TINY = Arch("llama", hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=400, tied=True)


def test_llama_2_7b_parameter_count() -> None:
    arch, ref = load_arch(LLAMA_7B)
    assert ref.kind == "local"
    # embeddings 32000 x 4096, untied LM head the same; per layer attention 4 x 4096^2, MLP 3 x 4096 x 11008,
    # two RMSNorms of 4096; a final norm of 4096.
    per_layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert arch.parameters == 2 * 32000 * 4096 + 32 * per_layer + 4096 == 6_738_415_616


def test_grouped_query_attention_mistral_7b() -> None:
    arch, _ = load_arch(MISTRAL_7B)
    # 8 KV heads of 128: k and v are 4096 x 1024 each
    per_layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert arch.parameters == 2 * 32000 * 4096 + 32 * per_layer + 4096 == 7_241_732_096


def test_builtin_model_parameter_count_tied_embeddings() -> None:
    arch, ref = load_arch(SMOLLM2)  # a bare config.json file
    assert ref is None and arch.tied
    # 9 heads of 64 (q, o: 576 x 576), 3 KV heads (k, v: 576 x 192), MLP 3 x 576 x 1536; the head is the embedding
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert arch.parameters == 49152 * 576 + 30 * per_layer + 576 == 134_515_008


def test_lora_trainable_count_by_hand() -> None:
    # r x (in + out): q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64 = 1024 per layer
    assert lora_params(TINY, 8, lora_targets(TINY, "all-linear")) == 8 * 1024 * 2 == 16_384
    assert lora_params(TINY, 8, lora_targets(TINY, "q_proj,v_proj")) == 8 * (128 + 96) * 2 == 3_584
    assert lora_params(TINY, 4, lora_targets(TINY, ["down_proj"])) == 4 * 192 * 2


def test_lora_counts_match_peft_figures() -> None:
    llama, _ = load_arch(LLAMA_7B)
    smol, _ = load_arch(SMOLLM2)
    # PEFT prints "trainable params: 4,194,304" for r=8 on q_proj, v_proj of Llama-2-7B
    assert lora_params(llama, 8, lora_targets(llama, "q_proj,v_proj")) == 4_194_304
    assert lora_params(smol, 16, lora_targets(smol, "all-linear")) == 4_884_480


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "gemma"])
def test_arithmetic_matches_the_instantiated_model(kind: str) -> None:
    """The formula against transformers' own modules for each supported family (biases, q/k norms)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(kind, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=100)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = Arch.from_config(config)
    assert arch.parameters == sum(p.numel() for p in model.parameters())
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(arch.linears()) == linear - {"lm_head"}


def test_unknown_model_type_and_target_names_are_explained(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "gpt2", "n_embd": 64}')
    with pytest.raises(ConfigError, match="model type 'gpt2': the planner knows Llama-shaped decoders"):
        load_arch(str(config))
    with pytest.raises(ConfigError, match="c_attn: not a linear layer of this model; choose from all-linear, "
                                          "q_proj, k_proj"):
        lora_targets(TINY, "c_attn")
    with pytest.raises(ModelError, match="model 'no/such-model-here': cannot read its config"):
        load_arch("no/such-model-here")  # offline in tests: the hub is not reachable


def test_memory_parts_for_full_fine_tuning_of_7b_in_fp32() -> None:
    arch, _ = load_arch(LLAMA_7B)
    s = Setup("full", batch_size=1, seq_len=512, targets_per_row=511, precision="fp32", device="cpu")
    parts = memory(arch, s)
    p = 6_738_415_616
    assert (parts["weights"], parts["gradients"], parts["optimizer"]) == (4 * p, 4 * p, 8 * p)
    assert parts["lora_weights"] == parts["lora_activations"] == 0
    # per token and layer: (4h + 2q + 2kv + 3i) x 4 bytes + log-sum-exp of 32 heads + two rsqrt; the fused
    # RMSNorm keeps its input (the next matmul the scaled output), the fused SwiGLU gate and up, down_proj its input
    per_token_layer = (4 * 4096 + 4 * 4096 + 3 * 11008) * 4 + 32 * 4 + 8
    assert parts["activations"] == 512 * 32 * per_token_layer
    assert parts["framework"] == CPU_PROCESS_BYTES


def test_lora_on_cuda_has_a_bf16_base_and_casts_only_the_adapters() -> None:
    arch, _ = load_arch(LLAMA_7B)
    s = Setup("lora", 4, 1024, 512, "bf16", "cuda", r=16, targets=tuple(arch.linears()))
    parts = memory(arch, s)
    trainable = lora_params(arch, 16, s.targets)
    assert parts["weights"] == 2 * arch.parameters  # the trainer loads a frozen LoRA base in bf16 on CUDA
    assert parts["lora_weights"] == parts["gradients"] == 4 * trainable and parts["optimizer"] == 8 * trainable
    assert parts["autocast_copies"] == 2 * trainable  # bf16 copies of the fp32 adapters only
    assert parts["framework"] == parts["allocator"] == 0
    assert required_bytes(arch, s) == peak_bytes(arch, s, parts) + CUDA_CONTEXT_BYTES


def test_full_fine_tuning_on_cuda_keeps_autocast_copies_of_every_weight() -> None:
    arch, _ = load_arch(LLAMA_7B)
    parts = memory(arch, Setup("full", 1, 512, 511, "mixed", "cuda"))
    assert parts["weights"] == 4 * arch.parameters
    assert parts["autocast_copies"] == 2 * (32 * arch.layer_matmul_params + 32000 * 4096)


def test_a_4bit_base_stores_linear_layers_in_about_half_a_byte_a_weight() -> None:
    arch, _ = load_arch(LLAMA_7B)
    s = Setup("lora", 1, 512, 511, "bf16", "cuda", targets=tuple(arch.linears()), quant="nf4")
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 + 8-bit absmax per 64 weights + fp32 per 256 blocks
    others = arch.parameters - 32 * arch.layer_matmul_params  # embeddings, head, norms in bf16
    assert memory(arch, s)["weights"] == round(32 * arch.layer_matmul_params * nf4 + 2 * others)
    assert memory(arch, s)["dequant"] == 4096 * 11008 * 2  # the largest layer, dequantized for its matmul


def test_gradient_checkpointing_keeps_one_hidden_state_per_layer_and_one_layer_recomputed() -> None:
    arch, _ = load_arch(LLAMA_7B)
    s = Setup("full", 1, 512, 511, "fp32", "cpu")
    plain, ckpt = memory(arch, s), memory(arch, dataclasses.replace(s, checkpointing=True))
    per_layer = plain["activations"] // 32
    assert ckpt["activations"] == 512 * 32 * 4096 * 4 + 2 * per_layer  # the recomputed layer and its gradients
    assert ckpt["activations"] < plain["activations"] / 5


def test_fsdp_shards_weights_gradients_and_optimizer_over_the_ranks() -> None:
    arch, _ = load_arch(LLAMA_7B)
    one = memory(arch, Setup("full", 1, 512, 511, "mixed", "cuda"))
    four = memory(arch, Setup("full", 1, 512, 511, "mixed", "cuda", world=4, sharded=True))
    for part in ("weights", "gradients", "optimizer"):
        assert four[part] == pytest.approx(one[part] / 4, rel=1e-6)
    layer = arch.layer_params * 4
    root = (arch.parameters - 32 * arch.layer_params) * 4
    assert four["fsdp_gathered"] == 2 * (2 * layer + root)  # two layers and the root gathered, with gradients
    assert four["activations"] == one["activations"]  # each rank runs its own micro-batch


def test_full_fine_tuning_peak_swaps_gradients_for_activations() -> None:
    """Backward frees activations as gradients arrive: the peak is not their sum, unless accumulating."""
    arch, _ = load_arch(SMOLLM2)
    s = Setup("full", 4, 128, 64, "fp32", "cpu")
    parts = memory(arch, s)
    total = sum(parts.values())
    assert peak_bytes(arch, s, parts) < total
    assert peak_bytes(arch, dataclasses.replace(s, grad_accum=2), parts) == total


def test_output_sizes_match_the_walkthrough() -> None:
    """'Base model 14GB -> new full model 14GB' vs 'LoRA adapter 20MB' (7B, fp16 weights, small r)."""
    arch, _ = load_arch(LLAMA_7B)
    assert output_bytes(arch, "full", arch.parameters, weight_bytes=2) / 1e9 == pytest.approx(13.48, abs=0.01)
    adapter = output_bytes(arch, "lora", lora_params(arch, 8, ("q_proj", "v_proj")))
    assert adapter == 4 * 4_194_304  # fp32: 16.8 MB


def test_flops_per_token_by_hand() -> None:
    s = Setup("full", 1, 10, 5, "fp32", "cpu")
    body = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)
    head = 400 * 64 * 5 / 10  # the LM head runs on the supervised half
    attention = 6 * 2 * 10 * 64
    assert flops_per_token(TINY, s) == 6 * (body + head) + attention
    lora = dataclasses.replace(s, method="lora", r=8, targets=tuple(TINY.linears()))
    assert flops_per_token(TINY, lora) == 4 * (body + head) + 6 * 16_384 + attention


def _config(**kw: object) -> TrainConfig:
    return TrainConfig(**{"model": LLAMA_7B, "batch_size": 8, "max_length": 1024, **kw})  # type: ignore[arg-type]


def test_a_run_that_fits_is_kept_as_it_is() -> None:
    plan = estimate(_config(model=SMOLLM2), device="cuda", gpu_memory_gb=80)
    r = plan.recommendation
    assert (r.method, r.batch_size, r.grad_accum, r.fits) == ("lora", 8, 1, True)
    assert r.reasons[0].startswith("needs ") and r.reasons[0].endswith("of 80.00 GiB available")
    assert plan.options[0]["label"] == "LoRA" and plan.options[0]["relative_time"] == 1.0


def test_the_7b_walkthrough_case_fits_a_24_gib_card_and_qlora_fits_12() -> None:
    """The issue's case: Llama-2-7B, LoRA, batch 1 x 512 tokens on a consumer GPU."""
    plan = estimate(_config(batch_size=1, max_length=512), device="cuda", gpu_memory_gb=24)
    assert plan.required_memory_bytes < 20 * GIB and plan.recommendation.fits
    labels = [o["label"] for o in plan.options]
    assert labels[0] == "LoRA" and "LoRA, 4bit base (QLoRA)" in labels and "LoRA, gradient checkpointing" in labels
    assert plan.recommendation.command.endswith("--batch-size 1 --max-length 512")
    small = estimate(_config(batch_size=1, max_length=512), device="cuda", gpu_memory_gb=12)
    assert small.options[0]["label"] == "LoRA, 4bit base (QLoRA)"
    assert "--quantize 4bit" in small.recommendation.command
    full = estimate(_config(batch_size=1, max_length=512, method="full"), device="cuda", gpu_memory_gb=24)
    assert full.required_memory_bytes > 4 * plan.required_memory_bytes


def test_full_7b_is_sharded_with_fsdp_over_80_gib_cards() -> None:
    plan = estimate(_config(batch_size=1, max_length=512, method="full"), device="cuda", gpu_memory_gb=80)
    first = plan.options[0]
    assert first["method"] == "full" and first["gpus"] == 2 and first["label"] == "full fine-tuning, FSDP over 2 GPUs"
    assert first["command"].startswith("torchrun --nproc_per_node 2 -m tunesmith train DATA")
    assert first["command"].endswith("--distributed fsdp")


def test_options_trade_batch_for_accumulation() -> None:
    arch, _ = load_arch(LLAMA_7B)
    from tunesmith.plan import setup_for

    c = _config(gradient_checkpointing=True, quantize="4bit")
    one = required_bytes(arch, setup_for(dataclasses.replace(c, batch_size=1, grad_accum=8), arch, "cuda"))
    plan = estimate(c, device="cuda", gpu_memory_gb=(one / 0.9 + 1) / GIB)  # exactly room for batch 1
    r = plan.recommendation
    assert (r.method, r.batch_size, r.grad_accum, r.fits) == ("lora", 1, 8, True)
    assert "micro-batch 1 x 8 accumulation steps keeps 8 examples per step" in r.reasons[-1]


def test_nothing_fits_then_rows_are_shortened_then_it_gives_up() -> None:
    arch, _ = load_arch(LLAMA_7B)
    from tunesmith.plan import setup_for

    short = _config(batch_size=1, max_length=256, quantize="4bit", gradient_checkpointing=True)
    need = required_bytes(arch, setup_for(short, arch, "cuda"))
    plan = estimate(_config(batch_size=1), device="cuda", gpu_memory_gb=(need / 0.9 + 1) / GIB)
    assert plan.recommendation.max_length == 256 and plan.recommendation.fits
    assert plan.options[0]["label"].endswith("rows cut to 256 tokens")
    hopeless = estimate(_config(method="full"), device="cuda", gpu_memory_gb=4)
    assert (hopeless.recommendation.method, hopeless.recommendation.fits) == ("full", False)
    assert hopeless.recommendation.reasons[-1].endswith("; use a machine with more memory")


def test_unknown_budget_says_how_to_give_one(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = estimate(_config(model=SMOLLM2), device="cuda")
    assert plan.recommendation.fits is None and "pass --gpu-memory GB" in plan.recommendation.reasons[0]


def test_data_stats_count_what_training_sees(tmp_path: Path, tiny_tokenizer) -> None:
    from tunesmith.data.tokenize import encode

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "How do I reset my password?", "completion": "Go to the Account page."}\n'
                    '{"prompt": "Where is my order?", "completion": "' + "track it " * 40 + '"}\n')
    stats = data_stats(TrainConfig(data=str(data), max_length=48), tiny_tokenizer)
    enc = [encode(tiny_tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": c}], 48)
           for p, c in (("How do I reset my password?", "Go to the Account page."),
                        ("Where is my order?", "track it " * 40))]
    assert stats.examples == 2 and stats.truncated == 1 and stats.longest == 48
    assert stats.tokens == sum(len(e.input_ids) for e in enc)
    assert stats.targets == sum(e.supervised for e in enc) - sum(e.labels[0] != -100 for e in enc)


def test_estimate_of_a_7b_config_without_weights() -> None:
    c = _config(batch_size=4, max_length=2048, lora=LoraSettings(r=8, target_modules="q_proj,v_proj"))
    d = estimate(c, device="cuda", gpu_memory_gb=24).to_dict()
    assert d["parameters"] == 6_738_415_616 and d["trainable_parameters"] == 4_194_304
    assert d["precision"] == "bf16" and d["memory"]["weights"] == 2 * 6_738_415_616
    assert d["speed_source"] in ("assumed", "matmul") and d["flops_per_token"] > 0


def test_estimate_uses_the_data_for_row_length_and_targets() -> None:
    stats = DataStats(examples=100, tokens=20_000, targets=8_000, longest=300, most_targets=150, truncated=0)
    plan = estimate(_config(model=SMOLLM2), data=stats)
    assert plan.seq_len == 300 and plan.data_tokens == 20_000
    assert plan.seconds_per_epoch == pytest.approx(20_000 / plan.tokens_per_second)
    longer = estimate(_config(model=SMOLLM2))
    assert longer.peak_memory_bytes > plan.peak_memory_bytes and longer.seq_len == 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device 'tpu': expected cpu or cuda"),
        ({"gpu_memory_gb": 24}, "--gpu-memory 24: give a positive size in GB, with --device cuda"),
    ],
)
def test_estimate_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        estimate(_config(model=SMOLLM2), **kwargs)


def test_quantize_needs_lora() -> None:
    with pytest.raises(ConfigError, match="quantize 4bit needs method lora"):
        _config(method="full", quantize="4bit")


def test_head_chunk_matches_the_trainer() -> None:
    from tunesmith.plan import HEAD_CHUNK
    from tunesmith.train import loss

    assert loss.HEAD_CHUNK == HEAD_CHUNK


def test_allocator_overhead_on_cpu_only() -> None:
    """mimalloc costs a fifth more on every activation; glibc 85 % more, on tensors under 32 MiB only."""
    from tunesmith.plan import HEAP_FACTOR, MIMALLOC_FACTOR

    arch, _ = load_arch(SMOLLM2)
    small = Setup("lora", 2, 128, 64, "fp32", "cpu", targets=tuple(arch.linears()))
    for allocator, factor in (("mimalloc", MIMALLOC_FACTOR), ("system", HEAP_FACTOR)):
        parts = memory(arch, dataclasses.replace(small, allocator=allocator))
        act = parts["activations"] + parts["lora_activations"]
        assert parts["allocator"] == pytest.approx(act * (factor - 1), rel=1e-6)
    # 8 x 4096 tokens: a (tokens x 1536) fp32 tensor is 192 MiB, served by mmap and returned whole
    big = memory(arch, dataclasses.replace(small, batch_size=8, seq_len=4096))
    assert big["allocator"] < (big["activations"] + big["lora_activations"]) * (HEAP_FACTOR - 1) / 10
    assert memory(arch, dataclasses.replace(small, device="cuda", precision="bf16"))["allocator"] == 0


def test_training_allocator_follows_the_opt_out(monkeypatch) -> None:
    from tunesmith.plan import training_allocator

    monkeypatch.setenv("TUNESMITH_MALLOC", "system")
    assert training_allocator() == "system"  # pytest itself does not run under mimalloc


def test_framework_term_follows_the_allocator_and_a_measured_process_size() -> None:
    arch, _ = load_arch(LLAMA_7B)
    s = Setup("lora", batch_size=1, seq_len=128, targets_per_row=64, precision="fp32", device="cpu")
    assert memory(arch, s)["framework"] == CPU_PROCESS_BYTES
    mim = dataclasses.replace(s, allocator="mimalloc")
    assert memory(arch, mim)["framework"] == MIMALLOC_PROCESS_BYTES > CPU_PROCESS_BYTES
    measured = dataclasses.replace(s, process_bytes=700 * 2**20)
    assert memory(arch, measured)["framework"] == 700 * 2**20
    gap = peak_bytes(arch, measured, memory(arch, measured)) - peak_bytes(arch, s, memory(arch, s))
    assert gap == 700 * 2**20 - CPU_PROCESS_BYTES  # the measured size replaces the constant, nothing else moves
    assert memory(arch, dataclasses.replace(measured, device="cuda"))["framework"] == 0  # not in CUDA's measure


def test_a_base_converted_while_it_loads_peaks_then_on_a_cpu() -> None:
    """The built-in fp32 checkpoint loaded as a bf16 base: the mapped file and the bf16 copy coexist before
    training starts (measured: 1152 MiB at load, 641 after). Loaded as it is stored, the file's pages are the
    weights: no such moment."""
    arch, _ = load_arch(SMOLLM2)
    assert arch.stored_bytes == 4
    targets = tuple(arch.linears())
    bf16 = Setup("lora", 2, 128, 64, "bf16", "cpu", r=16, targets=targets, allocator="mimalloc")
    parts = memory(arch, bf16)
    assert parts["weights"] == 2 * arch.parameters
    assert peak_bytes(arch, bf16, parts) == MIMALLOC_PROCESS_BYTES + 4 * arch.parameters + 2 * arch.parameters
    unknown = dataclasses.replace(arch, stored_bytes=None)  # a checkpoint's dtype not in its config: no moment
    assert peak_bytes(unknown, bf16, parts) < peak_bytes(arch, bf16, parts)
    fp32 = dataclasses.replace(bf16, precision="fp32")
    gpu = dataclasses.replace(bf16, device="cuda")  # a GPU's memory never holds the file
    for s in (fp32, gpu):
        parts = memory(arch, s)
        assert peak_bytes(arch, s, parts) == peak_bytes(unknown, s, parts)
