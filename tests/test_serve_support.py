"""Helpers shared by the serve tests (no tests here): LoRA adapters and run folders made on the tiny model.

Adapters get random lora_B weights (PEFT initializes B to zero, which would make every adapter a no-op), so
each adapter changes the model's output in its own way.
"""

from __future__ import annotations

import json
from pathlib import Path


def make_adapter(base_dir: Path, out_dir: Path, *, seed: int, scale: float = 0.5) -> Path:
    """Save a PEFT LoRA adapter for the tiny model whose lora_B weights are random (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.model.loading import load_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(seed)  # lora_A's random init too: the same seed gives the same adapter in any test order
    model = get_peft_model(load_model(str(base_dir)), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(out_dir)
    return out_dir


def make_run(base_dir: Path, out_dir: Path, *, seed: int, fingerprint: str | None = None) -> Path:
    """A LoRA run folder as `tunesmith train` writes it: manifest.json + adapter/."""
    from tunesmith.model.loading import fingerprint as weights_fingerprint
    from tunesmith.model.loading import resolve

    out_dir.mkdir(parents=True, exist_ok=True)
    make_adapter(base_dir, out_dir / "adapter", seed=seed)
    ref = resolve(str(base_dir))
    manifest = {
        "tunesmith_version": "0.1.0",
        "method": "lora",
        "base_model": {"name": str(base_dir), "kind": ref.kind, "path": ref.path,
                       "fingerprint": fingerprint or weights_fingerprint(ref)},
        "data": {},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    return out_dir


def reference_reply(base_dir: Path, adapter: Path | None, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Greedy text from transformers' own `generate` on a model loaded alone (the server is checked against it)."""
    import torch

    from tunesmith.model.adapters import load_for_inference, resolve_target

    model, tokenizer = load_for_inference(resolve_target(str(base_dir), adapter))
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                             dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(prompt_ids):].tolist(), skip_special_tokens=True)
