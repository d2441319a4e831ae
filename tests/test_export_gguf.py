"""GGUF export: what the files hold (read back with gguf's own reader), llama.cpp's layout rules, the Modelfile,
the refusals, and, when llama-cpp-python is installed, llama.cpp's logits on the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import one_thread, run  # noqa: F401  (one_thread is autouse)
from test_serve_support import make_run
from tiny import build_tiny_model
from tunesmith.errors import ModelError
from tunesmith.export import kquants, ollama
from tunesmith.export.gguf_export import ExportResult, export_gguf
from tunesmith.export.quant import tensor_type, use_more_bits
from tunesmith.export.tensors import Shape, permute_qk, unpermute_qk
from tunesmith.export.vocab import pre_tokenizer_name
from tunesmith.model.loading import load_tokenizer


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("export") / "support-run", seed=1)


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("gguf") / "out"
    return export_gguf(run_dir, out, quant="f32", lora_gguf=True, check_tokens=4)


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}, reader


def _merged_state(tiny_model_dir: Path, run_dir: Path) -> dict[str, np.ndarray]:
    from tunesmith.model.adapters import load_for_inference, resolve_target

    model, _ = load_for_inference(resolve_target(str(run_dir)))
    return {k: v.numpy() for k, v in model.merge_and_unload().state_dict().items()}


def test_the_merged_file_holds_llama_metadata_the_run_tokenizer_and_its_exact_weights(
        exported: ExportResult, run_dir: Path, tiny_model_dir: Path) -> None:
    fields, reader = _fields(exported.gguf)
    tok = load_tokenizer(str(tiny_model_dir))
    assert (fields["general.architecture"], fields["general.type"]) == ("llama", "model")
    assert fields["general.file_type"] == 0
    assert {k: fields[f"llama.{k}"] for k in ("block_count", "embedding_length", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "context_length", "rope.dimension_count",
            "vocab_size")} == {"block_count": 2, "embedding_length": 64, "feed_forward_length": 128,
                               "attention.head_count": 4, "attention.head_count_kv": 2, "context_length": 512,
                               "rope.dimension_count": 16, "vocab_size": len(tok)}
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert fields["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert [fields["tokenizer.ggml.token_type"][i] for i in tok.all_special_ids] == [3] * len(tok.all_special_ids)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.padding_token_id"]) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert fields["tokenizer.chat_template"] == tok.chat_template
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied head: llama.cpp reuses token_embd
    assert names == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert shapes["blk.0.attn_k.weight"] == (64, 32) and shapes["blk.1.ffn_down.weight"] == (128, 64)  # ggml ne
    merged = _merged_state(tiny_model_dir, run_dir)
    q = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    q_rows = unpermute_qk(np.array(q.data).reshape(64, 64), 4)
    assert np.array_equal(q_rows, merged["model.layers.1.self_attn.q_proj.weight"])
    up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert np.array_equal(np.array(up.data), merged["model.layers.0.mlp.up_proj.weight"])


def test_q_and_k_rows_are_reordered_so_llama_cpp_pairwise_rope_gives_the_same_attention_scores() -> None:
    """HF rotates (x_i, x_{i+d/2}); llama.cpp rotates (x_2i, x_2i+1). After `permute_qk`, q.k is unchanged."""
    d, heads, pos = 8, 2, 5
    gen = torch.Generator().manual_seed(0)
    wq, wk, x = (torch.randn(heads * d, 16, generator=gen) for _ in range(2)), None, torch.randn(16, generator=gen)
    wq, wk = list(wq)
    freqs = pos * 10000.0 ** (-torch.arange(0, d, 2).float() / d)  # (d/2,)

    def hf(v: torch.Tensor) -> torch.Tensor:  # rotate-half, per head
        v = v.view(heads, d)
        cos, sin = torch.cat([freqs, freqs]).cos(), torch.cat([freqs, freqs]).sin()
        return (v * cos + torch.cat([-v[:, d // 2:], v[:, : d // 2]], -1) * sin).flatten()

    def ggml(v: torch.Tensor) -> torch.Tensor:  # adjacent pairs, per head
        v = v.view(heads, d // 2, 2)
        a, b = v[..., 0], v[..., 1]
        return torch.stack([a * freqs.cos() - b * freqs.sin(), a * freqs.sin() + b * freqs.cos()], -1).flatten()

    per_head = lambda q, k: (q.view(heads, d) * k.view(heads, d)).sum(-1)  # noqa: E731
    want = per_head(hf(wq @ x), hf(wk @ x))
    pq, pk = (torch.from_numpy(permute_qk(w.numpy(), heads)) for w in (wq, wk))
    assert torch.allclose(per_head(ggml(pq @ x), ggml(pk @ x)), want, atol=1e-5)
    assert np.array_equal(unpermute_qk(permute_qk(wq.numpy(), heads), heads), wq.numpy())


def test_the_lora_file_plus_the_base_file_rebuild_the_merged_weights(exported: ExportResult, run_dir: Path,
                                                                   tiny_model_dir: Path) -> None:
    assert exported.adapter_gguf is not None and exported.base_gguf is not None
    fields, reader = _fields(exported.adapter_gguf)
    assert (fields["general.type"], fields["adapter.type"], fields["adapter.lora.alpha"]) == ("adapter", "lora", 8.0)
    pairs = {t.name: np.array(t.data) for t in reader.tensors}
    assert set(pairs) == {f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in range(2) for m in "qv" for ab in "ab"}
    _, base = _fields(exported.base_gguf)
    base_q = next(np.array(t.data) for t in base.tensors if t.name == "blk.0.attn_q.weight")
    a, b = pairs["blk.0.attn_q.weight.lora_a"], pairs["blk.0.attn_q.weight.lora_b"]
    assert a.shape == (4, 64) and b.shape == (64, 4)
    rebuilt = unpermute_qk(base_q + 8.0 / 4 * b @ a, 4)  # llama.cpp's scale: alpha / r
    merged = _merged_state(tiny_model_dir, run_dir)["model.layers.0.self_attn.q_proj.weight"]
    assert np.allclose(rebuilt, merged, atol=1e-6)
    assert (exported.out / "Modelfile.lora").read_text().splitlines()[1:3] == [
        f"FROM ./{exported.base_gguf.name}", f"ADAPTER ./{exported.adapter_gguf.name}"]


def test_every_export_is_checked_against_the_run(exported: ExportResult) -> None:
    torch_check = next(a for a in exported.agreements if a.reader == "gguf weights in torch")
    assert torch_check.identical == 3 and torch_check.agrees  # float32: the very same weights


def test_quantized_exports_follow_llama_cpp_type_rules(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "wide", hidden=256, layers=8)
    sizes = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        r = export_gguf(model, tmp_path / quant, quant=quant, check_tokens=2, prompts=["hi"])
        sizes[quant] = r.bytes
        _, reader = _fields(r.gguf)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["output_norm.weight"] == "F32"
        if quant == "q4_k_m":
            assert types["token_embd.weight"] == "Q6_K"  # tied head gets more bits
            assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.2.ffn_down.weight"] == "Q4_K"
            assert types["blk.2.attn_q.weight"] == "Q4_K"
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_tensor_types_match_llama_cpp_for_smollm2_shapes() -> None:
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    q4km = lambda name, shape: tensor_type(name, shape, "q4_k_m", 30, True)  # noqa: E731
    assert q4km("token_embd.weight", (49152, 576)) == "Q8_0"  # Q6_K wanted, 576 is not a multiple of 256
    assert q4km("blk.0.ffn_down.weight", (576, 1536)) == "Q6_K"
    assert q4km("blk.3.ffn_down.weight", (576, 1536)) == "Q4_K"
    assert q4km("blk.3.attn_q.weight", (576, 576)) == "Q5_0"  # Q4_K falls back
    assert q4km("blk.0.attn_v.weight", (192, 576)) == "Q8_0"  # Q6_K falls back
    assert tensor_type("blk.0.attn_norm.weight", (576,), "q8_0", 30, True) == "F32"
    assert tensor_type("token_embd.weight", (49152, 576), "q4_1", 30, True) == "Q8_0"  # as the shipped Q4_1 file
    assert tensor_type("blk.0.attn_q.weight", (10, 100), "q8_0", 30, True) == "F16"  # rows not in 32-blocks


@pytest.mark.parametrize("quantize, qtype", [(kquants.quantize_q4_k, "Q4_K"), (kquants.quantize_q6_k, "Q6_K")])
def test_k_quants_decode_with_gguf_own_dequantizer_and_beat_the_simpler_formats(quantize, qtype: str) -> None:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32) * 0.05
    x[1] = 0.0  # a silent row
    x[2, :256] = 0.03  # a constant block
    back = quants.dequantize(quantize(x), T[qtype])
    err = float(np.sqrt(((back - x) ** 2).mean()))
    simpler = T.Q4_1 if qtype == "Q4_K" else T.Q5_0
    assert err < float(np.sqrt(((quants.dequantize(quants.quantize(x, simpler), simpler) - x) ** 2).mean()))
    assert np.array_equal(back[1], x[1]) and np.allclose(back[2, :256], 0.03, atol=2e-4)


def test_the_modelfile_template_renders_chats_as_the_jinja_template_does(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}<s>SYS: be brief</s>{% endif %}"
                         "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    shape = ollama.measure(tok)
    assert shape is not None and shape.default_system == "<s>SYS: be brief</s>"
    template = ollama.go_template(shape)
    assert template.startswith('{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}<s>SYS: be brief')
    assert template.endswith('{{ end }}{{ end }}<s>assistant: ')
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper if loop.last else "
                         "m['content'] }}\n{% endfor %}")  # the last turn renders differently: no fixed shape
    assert ollama.measure(tok) is None
    text, has_template = ollama.modelfile("m.gguf", tok)
    assert not has_template and "Ollama uses the one in the GGUF" in text


def test_tokenizers_llama_cpp_cannot_reproduce_are_refused() -> None:
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel"}, "normalizer": None}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                    {"type": "ByteLevel", "use_regex": True}]}
    assert pre_tokenizer_name({"pre_tokenizer": digits}) == "smollm"
    with pytest.raises(ModelError, match=r"pre-tokenizer \['Metaspace'\] is not one GGUF export can name"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace"}})


def test_models_gguf_export_does_not_cover_are_refused(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.model_type = "qwen2"
    with pytest.raises(ModelError, match=r"model type 'qwen2': GGUF export supports Llama-shaped models"):
        Shape.from_config(config)


def test_export_command_writes_the_files_and_reports_agreement(monkeypatch, capsys, run_dir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "gguf"
    code, stdout, _ = run(monkeypatch, capsys, "export", str(run_dir), "--quant", "q8_0", "-o", str(out),
                          "--check-tokens", "3")
    assert code == 0, stdout
    assert f"wrote {out / 'support-run-q8_0.gguf'}" in stdout and "Q8_0" in stdout
    assert f"wrote {out / 'Modelfile'}: ollama create NAME -f" in stdout
    assert "agreement with the run, gguf weights in torch: greedy replies identical on" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "support-run-q8_0.gguf", "tunesmith.json"]
    assert json.loads((out / "tunesmith.json").read_text())["quant"] == "q8_0"
    code, _, err = run(monkeypatch, capsys, "export", str(run_dir), "-o", str(out))
    assert code == 2 and "folder exists and is not empty; choose another --out or pass --force" in err
    code, _, _ = run(monkeypatch, capsys, "export", str(run_dir), "-o", str(out), "--force", "--check-tokens", "1")
    assert code == 0  # an earlier export is replaced
    code, _, err = run(monkeypatch, capsys, "export", str(run_dir), "-o", str(run_dir), "--force")
    assert code == 2 and "not a folder tunesmith export wrote (no tunesmith.json); --force replaces only" in err
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # untouched
    code, _, err = run(monkeypatch, capsys, "export", str(run_dir), "--format", "onnx")
    assert code == 2 and "--format 'onnx': the only export format is gguf" in err
    code, _, err = run(monkeypatch, capsys, "export", str(run_dir), "--quant", "q3_k", "-o", str(tmp_path / "x"))
    assert code == 2 and "--quant 'q3_k': choose one of f32, f16, bf16, q8_0" in err


def test_lora_gguf_needs_an_adapter(monkeypatch, capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, _, err = run(monkeypatch, capsys, "export", str(tiny_model_dir), "--lora-gguf", "-o", str(tmp_path / "o"))
    assert code == 2 and "--lora-gguf needs a LoRA run or adapter" in err


def test_llama_cpp_reads_the_files_with_the_runs_logits_and_tokenization(exported: ExportResult, run_dir: Path,
                                                                         tiny_model_dir: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from tunesmith.model.adapters import load_for_inference, resolve_target

    model, tok = load_for_inference(resolve_target(str(run_dir)))
    text = "<|im_start|>user\nWhere is my order 12345? é!<|im_end|>\n"
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    for path, lora in ((exported.gguf, None), (exported.base_gguf, exported.adapter_gguf)):
        llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, logits_all=True,
                              n_ctx=128, n_threads=1, verbose=False)
        try:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
        finally:
            llm.close()
        assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())  # llama.cpp keeps K/V in f16


@pytest.mark.slow
def test_built_in_model_f16_export_answers_like_the_run_in_llama_cpp(tmp_path: Path) -> None:
    """A LoRA run on smollm2-135m (random adapter on every projection), exported f16 merged and as base + adapter:
    llama.cpp's greedy replies equal the run's, or part only at a near-tie of the run's own logits."""
    pytest.importorskip("llama_cpp")
    from peft import LoraConfig, get_peft_model

    from tunesmith.model.loading import fingerprint, load_model, resolve

    run_dir = tmp_path / "run"
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(load_model("smollm2-135m"), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.002)
    peft_model.save_pretrained(run_dir / "adapter")
    ref = resolve("smollm2-135m")
    (run_dir / "manifest.json").write_text(json.dumps({"method": "lora", "data": {}, "base_model": {
        "name": "smollm2-135m", "kind": ref.kind, "path": ref.path, "fingerprint": fingerprint(ref)}}))
    r = export_gguf(run_dir, tmp_path / "out", quant="f16", lora_gguf=True, check_tokens=32)
    readers = {a.reader: a for a in r.agreements}
    assert set(readers) == {"llama.cpp", "llama.cpp base + LoRA adapter", "gguf weights in torch"}
    for check in readers.values():
        assert check.agrees, check.summary()
        assert all(p.same_prefix >= 8 for p in check.prompts), check.summary()
    assert "TEMPLATE" in (r.out / "Modelfile").read_text()
