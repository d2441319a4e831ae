"""Add LoRA adapters with PEFT, so the output is the ecosystem's standard adapter folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.config import LoraSettings
from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (B = 0, so the model's outputs are unchanged at first).

    Each adapted linear layer computes W x + (alpha / r) * B A x, with A (r x in) random and B (out x r)
    zero at start; only A and B train. rsLoRA scales by alpha / sqrt(r); DoRA also learns a magnitude.
    """
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"lora.target_modules {targets!r}: {str(e).splitlines()[0]} (linear layers here: {', '.join(names)})"
        ) from None
