"""Merge a LoRA adapter into its base: W' = W + (alpha / r) * B @ A, saved as a plain model folder.

The base is the full-precision model the adapter's run recorded (also when it trained on a quantized base):
merging into 4-bit weights would round the update away. The folder gets a `tunesmith.json` saying where it
came from; `--force` replaces only a folder that has one (a merge tunesmith wrote), never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.model.adapters import resolve_target
from tunesmith.model.loading import load_model, load_tokenizer

MARKER = "tunesmith.json"  # provenance of a merged folder; also what lets --force replace it

PROBES = [
    [{"role": "user", "content": "How do I reset my password?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "What is 12 + 30?"}],
]


@dataclass(frozen=True)
class MergeResult:
    out: Path
    max_abs_diff: float  # largest |logit difference| between adapter-on-base and merged model on probes
    bytes: int
    base: str  # the full-precision base the adapter was merged into
    trained_on: str = "none"  # the base precision the adapter trained on (4bit / 8bit for QLoRA)
    quantized_diff: float | None = None  # |logit difference| merged vs adapter on the quantized base it trained on
    quantized_agreement: float | None = None  # share of probe positions where both pick the same next token


def merge(target: str | Path, out: str | Path, *, adapter: str | Path | None = None,
          force: bool = False) -> MergeResult:
    """Merge the adapter of a run folder (or an adapter folder) into its base and save to `out`."""
    import torch
    from peft import PeftModel

    from tunesmith.data.tokenize import encode_prompt

    t = resolve_target(target, adapter)  # quantize "auto": how the adapter's run trained
    if t.adapter is None:
        raise ModelError(f"{target}: no LoRA adapter to merge (a full fine-tune is already a whole model)")
    out = Path(out)
    _check_out(out, force)
    tokenizer = load_tokenizer(t.model)
    probes = [torch.tensor([encode_prompt(tokenizer, p)]) for p in PROBES]
    quantized = None
    if t.quantize != "none":  # what the adapter saw in training, to report how far the merge moves from it
        trained = PeftModel.from_pretrained(load_model(t.model, quantize=t.quantize), str(t.adapter)).eval()
        with torch.no_grad():
            quantized = [trained(input_ids=ids).logits for ids in probes]
        del trained
    model = PeftModel.from_pretrained(load_model(t.model), str(t.adapter)).eval()  # full precision
    with torch.no_grad():
        before = [model(input_ids=ids).logits for ids in probes]
        merged = model.merge_and_unload()
        after = [merged(input_ids=ids).logits for ids in probes]
    diff = _max_diff(before, after)
    quantized_diff = _max_diff(quantized, after) if quantized is not None else None
    agreement = _top1_agreement(quantized, after) if quantized is not None else None
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    provenance = {"kind": "merged", "from": str(target), "adapter": str(t.adapter), "base": t.model.name,
                  "base_path": t.model.path, "max_abs_logit_diff": diff, "trained_on": t.quantize,
                  "max_abs_logit_diff_vs_quantized_base": quantized_diff,
                  "top1_agreement_vs_quantized_base": agreement}
    (tmp / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return MergeResult(out=out, max_abs_diff=diff, bytes=size, base=t.model.name, trained_on=t.quantize,
                       quantized_diff=quantized_diff, quantized_agreement=agreement)


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _top1_agreement(a: list[Any], b: list[Any]) -> float:
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.shape[0] * x.shape[1] for x in a)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: is a file; --out needs a folder for the merged model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ModelError(f"{out}: folder exists and is not empty; choose another --out, or --force to replace "
                         "an earlier merge")
    if not (out / MARKER).is_file():
        raise ModelError(f"{out}: --force only replaces a folder tunesmith merge wrote (it has {MARKER}), and "
                         "this one was not; choose another --out")
