"""Find what a name points at (base model, run folder, adapter folder) and load it for inference.

Layouts understood:
- a run folder written by `tunesmith train` (read through `tunesmith.runfolder`): a LoRA run is its base
  plus `RUN/adapter/` (PEFT layout), a full run the complete model in `RUN/model/`;
- an adapter folder in the PEFT layout (`adapter_config.json` + `adapter_model.safetensors`);
- anything `loading.resolve` accepts (built-in name, local model folder, hub id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import ModelError
from tunesmith.model.loading import ModelRef, load_model, load_tokenizer, resolve

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# How adapters are named wherever a name is chosen (serving names, run labels): safe in URLs and file names.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][\w.:\-]{0,63}$")


@dataclass(frozen=True)
class Target:
    """A model to run: the weights to load and, optionally, a LoRA adapter on top."""

    model: ModelRef  # full weights (base model, or a full fine-tune's output)
    adapter: Path | None  # PEFT adapter folder, or None
    label: str  # how to call it in reports and the server
    run: Path | None = None  # the run folder it came from, if any
    quantize: str = "none"  # how to load the base: as the run trained it (4bit/8bit), unless told otherwise


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter folder was trained on (`base_model_name_or_path`)."""
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{adapter_dir}: adapter_config.json names no base model; pass --model")
    return str(base)


def resolve_target(name: str | Path | None, adapter: str | Path | None = None, *, quantize: str = "auto") -> Target:
    """Resolve `MODEL|RUN_DIR|ADAPTER_DIR [--adapter A]` to weights plus an optional adapter.

    A run folder's base comes from its manifest (recorded identity, fingerprint checked); with `--adapter`
    a plain model is the base, so a base that moved can be named by hand. `quantize` "auto" loads a run's
    base the way it trained (e.g. 4-bit for a QLoRA run); none, 4bit or 8bit say otherwise.
    """
    import contextlib
    import dataclasses

    target = _resolve(name, adapter)
    if quantize == "auto":
        trained = "none"
        if target.run is not None and target.adapter is not None:
            from tunesmith.errors import RunError
            from tunesmith.runfolder import RunFolder

            with contextlib.suppress(RunError):  # a hand-made run folder without config.yaml: full precision
                trained = RunFolder.open(target.run).config().quantize
        return dataclasses.replace(target, quantize=trained)
    if quantize != "none" and target.adapter is None and target.run is not None:
        raise ModelError(f"{name}: a full fine-tune is loaded as it was saved; drop --quantize")
    return dataclasses.replace(target, quantize=quantize)


def _resolve(name: str | Path | None, adapter: str | Path | None) -> Target:
    from tunesmith.runfolder import RunFolder, is_run

    path = Path(str(name)) if name is not None else None
    if path is not None and is_run(path):
        run = RunFolder.open(path)
        if run.method == "full":
            if adapter is not None:
                raise ModelError(f"{path}: a full fine-tune has no adapter slot; drop --adapter")
            out = run.output()
            return Target(resolve(str(out)), None, label=path.name, run=path)
        adapter_dir = Path(adapter) if adapter is not None else run.output()
        _check_adapter(adapter_dir)
        return Target(run.base(), adapter_dir, label=path.name, run=path)
    if path is not None and is_adapter_dir(path):
        if is_run(path.parent) and path.resolve() == RunFolder(path.parent).output().resolve():
            return Target(RunFolder.open(path.parent).base(), path, label=path.parent.name, run=path.parent)
        return Target(resolve(adapter_base(path)), path, label=path.name)
    ref = resolve(None if name is None else str(name))
    if adapter is not None:
        adapter_path = Path(adapter)
        if is_run(adapter_path):  # --adapter RUN_DIR: the run's adapter, on the model given
            adapter_path = RunFolder.open(adapter_path).output()
        _check_adapter(adapter_path)
        return Target(ref, adapter_path, label=Path(adapter).name)
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
    model = load_model(target.model, device=device, dtype=dtype, quantize=target.quantize)
    tokenizer = load_tokenizer(target.model)
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter), adapter_name="default")
    model.eval()
    return model, tokenizer
