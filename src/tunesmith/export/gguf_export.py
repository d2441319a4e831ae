"""`tunesmith export RUN --format gguf`: the run as GGUF files for llama.cpp and Ollama, checked against the run.

What is written into OUT:
- `<name>-<quant>.gguf`: the whole model, adapter merged in (W + (alpha / r) B A), at the chosen precision;
- `Modelfile`: for `ollama create <name> -f OUT/Modelfile`, with the chat template and stop strings;
- with `lora_gguf`: `<base>-<quant>.gguf` (the base model alone), `<name>-lora.gguf` (the adapter, float32,
  for `llama-server -m BASE --lora ADAPTER`) and `Modelfile.lora` (Ollama's FROM + ADAPTER);
- `tunesmith.json`: where the files came from and how they agree with the run; `force` replaces only a
  folder that has one (an earlier export), never anything else.

The adapter is merged into the full-precision base the run recorded, also for a QLoRA run (as `tunesmith
merge` does): merging into 4-bit weights would round the update away.

Before anything is merged, the unquantized run (base + adapter, float32) answers a few prompts greedily; the
exported file must answer them the same way (see `agreement`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.errors import ModelError
from tunesmith.export import agreement as agree
from tunesmith.export.gguf_file import write_adapter, write_model
from tunesmith.export.quant import check_quant
from tunesmith.export.tensors import Shape, gguf_name, lora_tensors, model_tensors
from tunesmith.export.vocab import read_vocab
from tunesmith.model.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, resolve_target

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROBES = ("How do I reset my password?", "Write one sentence about the sea.", "What is 12 + 30?")
MARKER = "tunesmith.json"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    gguf: Path
    modelfile: Path
    quant: str
    bytes: int
    tensor_types: dict[str, int]  # GGML type -> tensor count
    template_in_modelfile: bool
    agreements: list[agree.Agreement] = field(default_factory=list)
    base_gguf: Path | None = None
    adapter_gguf: Path | None = None


def export_gguf(target: str | Path, out: str | Path | None = None, *, quant: str = "f16", lora_gguf: bool = False,
                adapter: str | Path | None = None, prompts: Sequence[str] = PROBES, check_tokens: int = 32,
                force: bool = False) -> ExportResult:
    """Write the GGUF file(s) and Modelfile for a run (or model/adapter folder) and check them."""
    from tunesmith.model.loading import load_model, load_tokenizer

    check_quant(quant)
    t = resolve_target(target, adapter)
    if lora_gguf and t.adapter is None:
        raise ModelError(f"{target}: --lora-gguf needs a LoRA run or adapter; a full fine-tune has no adapter")
    name = _safe(t.label)
    out = Path(out) if out is not None else Path(f"{name}-gguf")
    _check_out(out, force)
    tokenizer = load_tokenizer(t.model)
    model = load_model(t.model).eval()
    shape = Shape.from_config(model.config)
    vocab = read_vocab(tokenizer, shape.vocab)  # refuses an unsupported tokenizer before any work
    out.mkdir(parents=True, exist_ok=True)
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    eos = _eos_ids(model, tokenizer)
    base_gguf = adapter_gguf = None
    if lora_gguf:
        base_gguf = out / f"{_safe(t.model.name)}-{quant}.gguf"
        write_model(base_gguf, model_tensors(_numpy_state(model), shape), shape, vocab, quant=quant,
                    name=t.model.name)
    if t.adapter is not None:
        model = _with_adapter(model, t.adapter)
        if lora_gguf:
            adapter_gguf = out / f"{name}-lora.gguf"
            _write_lora(adapter_gguf, t.adapter, model, shape, name)
    reference = agree.greedy(model, ids, check_tokens, eos)
    if t.adapter is not None:
        model = model.merge_and_unload()
    gguf = out / f"{name}-{quant}.gguf"
    types = write_model(gguf, model_tensors(_numpy_state(model), shape), shape, vocab, quant=quant, name=name)
    modelfile, has_template = _modelfiles(out, gguf, tokenizer, base_gguf, adapter_gguf, quant)
    checks = _check(gguf, model, shape, prompts, ids, reference, eos, check_tokens, base_gguf, adapter_gguf)
    counts: dict[str, int] = {}
    for type_name in types.values():
        counts[type_name] = counts.get(type_name, 0) + 1
    _write_marker(out, target, t.adapter, quant, checks)
    return ExportResult(out=out, gguf=gguf, modelfile=modelfile, quant=quant, bytes=gguf.stat().st_size,
                        tensor_types=counts, template_in_modelfile=has_template, agreements=checks,
                        base_gguf=base_gguf, adapter_gguf=adapter_gguf)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(label).name).strip("-.") or "model"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ModelError(f"{out}: folder exists and is not empty; choose another --out or pass --force")
        if not _is_export(out):
            raise ModelError(f"{out}: not a folder tunesmith export wrote (no {MARKER}); --force replaces only "
                             "those, choose another --out")
        shutil.rmtree(out)


def _is_export(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("kind") == "gguf-export"
    except (OSError, ValueError, AttributeError):
        return False


def _write_marker(out: Path, target: str | Path, adapter: Path | None, quant: str,
                  checks: list[agree.Agreement]) -> None:
    provenance = {"kind": "gguf-export", "from": str(target), "adapter": str(adapter) if adapter else None,
                  "quant": quant, "files": sorted(p.name for p in out.iterdir()),
                  "agreement": [c.summary() for c in checks]}
    (out / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    from tunesmith.data.tokenize import encode_prompt

    return encode_prompt(tokenizer, [{"role": "user", "content": prompt}])


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update([extra] if isinstance(extra, int) else extra or [])
    return {int(i) for i in ids}


def _numpy_state(model: PreTrainedModel) -> dict:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def _with_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter)).eval()


def _write_lora(path: Path, adapter: Path, model: PreTrainedModel, shape: Shape, name: str) -> None:
    """The adapter as GGUF: alpha when every module scales by alpha / r, else each scale folded into lora_b."""
    from safetensors.numpy import load_file

    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    weights = load_file(str(adapter / ADAPTER_WEIGHTS))
    standard = not config.get("use_rslora") and not config.get("rank_pattern") and not config.get("alpha_pattern")
    if standard:
        write_adapter(path, lora_tensors(weights, shape), alpha=float(config["lora_alpha"]), name=name)
        return
    scales = {}  # GGUF name -> PEFT's own scaling of that module
    for module_name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            gg = gguf_name(module_name.removeprefix("base_model.model.") + ".weight")
            if gg:
                scales[gg] = float(scaling["default"])
    write_adapter(path, lora_tensors(weights, shape, scales), alpha=0.0, name=name)


def _modelfiles(out: Path, gguf: Path, tokenizer: PreTrainedTokenizerBase, base: Path | None,
                adapter: Path | None, quant: str) -> tuple[Path, bool]:
    from tunesmith.export.ollama import modelfile

    text, has_template = modelfile(gguf.name, tokenizer, note=f"tunesmith export ({quant}): ollama create NAME -f "
                                   "Modelfile")
    (out / "Modelfile").write_text(text)
    if base is not None and adapter is not None:
        lora_text, _ = modelfile(base.name, tokenizer, adapter_name=adapter.name,
                                 note="tunesmith export: base model + LoRA adapter")
        (out / "Modelfile.lora").write_text(lora_text)
    return out / "Modelfile", has_template


def _check(gguf: Path, model: PreTrainedModel, shape: Shape, prompts: Sequence[str], ids: list[list[int]],
           reference: list[agree.Greedy], eos: set[int], tokens: int, base: Path | None,
           adapter: Path | None) -> list[agree.Agreement]:
    """Agreement of every file written with the run's own greedy replies."""
    import torch

    threads = torch.get_num_threads()
    checks = []
    if (got := agree.llama_cpp_greedy(gguf, ids, tokens, eos, threads=threads)) is not None:
        checks.append(agree.compare("llama.cpp", prompts, reference, got))
    if base is not None and adapter is not None and \
            (got := agree.llama_cpp_greedy(base, ids, tokens, eos, lora=adapter, threads=threads)) is not None:
        checks.append(agree.compare("llama.cpp base + LoRA adapter", prompts, reference, got))
    agree.load_gguf_weights(gguf, model, shape)  # the merged weights are written: reuse their memory
    readback = [g.tokens for g in agree.greedy(model, ids, tokens, eos)]
    checks.append(agree.compare("gguf weights in torch", prompts, reference, readback))
    return checks
