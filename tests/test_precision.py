"""The number format training computes in: what `precision: auto` picks where, and what bf16 trains like."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import TrainConfig, load_config
from tunesmith.errors import ConfigError
from tunesmith.plan import load_arch, setup_for
from tunesmith.runfolder import RunFolder
from tunesmith.train import precision
from tunesmith.train.run import train


@pytest.mark.parametrize(("setting", "device", "amx", "expected"), [
    ("auto", "cpu", True, "bf16"),   # AMX tiles: bf16 products 4-9x faster than fp32
    ("auto", "cpu", False, "fp32"),  # no AMX: bf16 is converted to fp32 inside every product, slower
    ("auto", "mps", True, "fp32"),
    ("fp32", "cpu", True, "fp32"),
    ("bf16", "cpu", False, "bf16"),  # asked for: honoured
    ("fp32", "cuda", False, "fp32"),
])
def test_auto_is_bf16_where_its_products_are_fast(monkeypatch, setting, device, amx, expected):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    assert precision.resolve(setting, device) == expected


def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "fp32")):  # T4, V100: no bf16 units
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert precision.resolve("auto", "cuda:1") == expected


def test_only_a_frozen_lora_base_is_stored_in_bf16():
    assert precision.base_dtype("lora", "bf16") == torch.bfloat16
    assert precision.base_dtype("full", "bf16") == torch.float32  # weights that train stay fp32
    assert precision.base_dtype("lora", "fp32") == torch.float32


def test_bad_precision_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"precision: 'fp16' is not one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision bf16 needs a CPU or a CUDA GPU, not mps"):
        TrainConfig(precision="bf16", device="mps")


def test_the_planner_costs_the_format_the_run_will_use(monkeypatch):
    arch, _ = load_arch("smollm2-135m")
    assert arch.stored_bytes == 4  # the built-in checkpoint is fp32
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert setup_for(TrainConfig(), arch, "cpu").precision == "bf16"
    assert setup_for(TrainConfig(method="full"), arch, "cpu").precision == "mixed"
    assert setup_for(TrainConfig(precision="fp32"), arch, "cpu").precision == "fp32"
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert setup_for(TrainConfig(), arch, "cpu").precision == "fp32"


def _config(data, model, out, **kw):
    base = dict(data=str(data), model=str(model), out=str(out), max_steps=8, batch_size=4, lr=5e-3, guard=False,
                threads=1, eval_every=4, lora_dropout=0.0)
    return load_config(None, **{**base, **kw})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_bf16_run_trains_and_exports_fp32_weights(tiny_model_dir, qa_file, tmp_path, method):
    """bf16 on any CPU when asked (slow without AMX, but right): the loss falls as in fp32, attention runs in
    fp32, and what is exported is fp32 (adapters, or the full model)."""
    runs = {p: train(_config(qa_file, tiny_model_dir, tmp_path / p, method=method, precision=p))
            for p in ("fp32", "bf16")}
    manifests = {p: RunFolder(r.run_dir).manifest() for p, r in runs.items()}
    assert [manifests[p]["precision"] for p in runs] == ["fp32", "bf16"]
    assert manifests["bf16"]["fast_paths"].get("fp32_attention") is True
    assert "fp32_attention" not in manifests["fp32"]["fast_paths"]
    if method == "lora":
        assert manifests["bf16"]["fast_paths"]["fused_lora"] is True
    evals = {p: [r["eval_loss"] for r in RunFolder(run.run_dir).metrics() if "eval_loss" in r]
             for p, run in runs.items()}
    assert evals["bf16"][-1] < 0.9 * evals["bf16"][0]  # it learns (8 steps: LoRA -12 %, full -35 %)
    assert evals["bf16"][-1] == pytest.approx(evals["fp32"][-1], rel=0.02)  # as well as fp32 (measured: 0.2 %)
    weights = runs["bf16"].output / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")
    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float32}


def test_oneDNN_keeps_few_compiled_kernels_under_bf16_on_a_cpu(monkeypatch):
    from tunesmith.train.precision import ONEDNN_CACHE_CAPACITY, bound_kernel_cache

    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "")  # so that the test's own setting is undone after it
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    bound_kernel_cache("cpu", "fp32")
    bound_kernel_cache("cuda", "bf16")
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    bound_kernel_cache("cpu", "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE_CAPACITY
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")  # the user's own setting stays
    bound_kernel_cache("cpu", "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
