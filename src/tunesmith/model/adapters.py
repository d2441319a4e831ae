"""Find what a name points at (base model, run folder, adapter folder) and load it for inference.

Layouts understood:
- a run folder written by `tunesmith train`: `manifest.json` names the base model; LoRA runs keep the
  adapter in `RUN/adapter/` (PEFT layout), full runs keep a complete model in `RUN/model/`;
- an adapter folder in the PEFT layout (`adapter_config.json` + `adapter_model.safetensors`);
- anything `loading.resolve` accepts (built-in name, local model folder, hub id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError
from tunesmith.model.loading import ModelRef, load_model, load_tokenizer, resolve

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Target:
    """A model to run: the weights to load and, optionally, a LoRA adapter on top."""

    model: ModelRef  # full weights (base model, or a full fine-tune's output)
    adapter: Path | None  # PEFT adapter folder, or None
    label: str  # how to call it in reports and the server


def is_run_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{run_dir}: not a tunesmith run folder (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: unreadable manifest ({e})") from None


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter folder was trained on (`base_model_name_or_path`)."""
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter_dir}: adapter_config.json names no base model; pass --model")
    return str(base)


def resolve_target(name: str | Path | None, adapter: str | Path | None = None) -> Target:
    """Resolve `MODEL|RUN_DIR|ADAPTER_DIR [--adapter A]` to weights plus an optional adapter."""
    path = Path(str(name)) if name is not None else None
    if path is not None and is_run_dir(path):
        manifest = read_manifest(path)
        if manifest.get("method") == "full":
            if adapter is not None:
                raise ModelError(f"{path}: a full fine-tune has no adapter slot; drop --adapter")
            model_dir = path / "model"
            if not (model_dir / "config.json").is_file():
                raise ModelError(f"{path}: run has no final model yet (train it to the end, or merge)")
            return Target(resolve(str(model_dir)), None, label=path.name)
        base = resolve(manifest["base_model"]["name"])
        adapter_dir = Path(adapter) if adapter is not None else path / "adapter"
        _check_adapter(adapter_dir)
        return Target(base, adapter_dir, label=path.name)
    if path is not None and is_adapter_dir(path):
        return Target(resolve(adapter_base(path)), path, label=path.name)
    ref = resolve(None if name is None else str(name))
    if adapter is not None:
        _check_adapter(Path(adapter))
        return Target(ref, Path(adapter), label=Path(adapter).name)
    return Target(ref, None, label=ref.name)


def _check_adapter(path: Path) -> None:
    if not is_adapter_dir(path):
        raise ModelError(f"{path}: not an adapter folder (no {ADAPTER_CONFIG})")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{path}: adapter has no {ADAPTER_WEIGHTS}")


def load_for_inference(
    target: Target, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode (base + adapter when the target has one) and its tokenizer.

    LoRA training never changes the vocabulary, so the tokenizer is always the base model's.
    """
    model = load_model(target.model, device=device, dtype=dtype)
    tokenizer = load_tokenizer(target.model)
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter), adapter_name="default")
    model.eval()
    return model, tokenizer
