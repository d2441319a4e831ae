"""QLoRA on the built-in model (CPU): it trains, its adapter is a plain PEFT adapter, and the gap between the
4-bit base it trained on and the full-precision base is measured and reported (slow: about a minute)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")

ROWS = [(f"How many days do I have to return kettle model K{i}?", f"Model K{i} can be returned within 45 days.")
        for i in range(40)]


@pytest.mark.slow
def test_qlora_on_the_builtin_model(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_config
    from tunesmith.model.loading import resolve
    from tunesmith.model.merge import merge
    from tunesmith.runfolder import RunFolder
    from tunesmith.train.run import train

    data = tmp_path / "returns.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in ROWS))
    train(load_config(None, data=str(data), out=str(tmp_path / "run"), quantize="4bit", max_steps=8, batch_size=4,
                      lr=1e-3, eval_every=4, guard=False, threads=1, max_length=128))
    run = RunFolder.open(tmp_path / "run")
    losses = [r["eval_loss"] for r in run.metrics() if "eval_loss" in r]
    assert losses[-1] < losses[0] - 0.2, losses  # it learns on a 4-bit base

    base = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m").path)  # full precision, vanilla PEFT
    vanilla = PeftModel.from_pretrained(base, str(run.output())).eval()
    ids = torch.tensor([[1, 504, 1012, 2683, 314, 253, 1400, 30, 2]])
    with torch.no_grad():
        assert torch.isfinite(vanilla(input_ids=ids).logits).all()
    result = merge(run.path, tmp_path / "merged")
    print(f"QLoRA adapter on its 4-bit base vs merged into the full-precision base: same next token at "
          f"{result.quantized_agreement:.0%} of probe positions, largest logit difference {result.quantized_diff:.2f} "
          f"(adapter vs merged on the same full-precision base: {result.max_abs_diff:.1e})")
    assert result.trained_on == "4bit" and result.max_abs_diff < 1e-3
    assert result.quantized_diff > 0 and 0 < result.quantized_agreement <= 1
