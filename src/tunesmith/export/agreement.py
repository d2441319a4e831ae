"""Does the exported file answer like the run? Greedy replies compared token for token on a few prompts.

Two readers of the file:
- always: its tensors decoded back (gguf-py's dequantizer, q/k rows un-permuted) into the torch model, so the
  check covers names, layout and the quantization loss without llama.cpp;
- when `llama_cpp` (llama-cpp-python) is importable: llama.cpp itself, which also covers the tokenizer
  metadata and llama.cpp's own arithmetic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.export.tensors import LAYER_NAMES, Shape, unpermute_qk

if TYPE_CHECKING:
    from transformers import PreTrainedModel


NEAR_TIE = 0.05  # logits: a top-2 gap this small flips under float16 rounding, in either engine


@dataclass(frozen=True)
class Greedy:
    """A greedy reply and, at each step, the gap between the best and second-best logit."""

    tokens: list[int]
    margins: list[float]


@dataclass(frozen=True)
class PromptAgreement:
    prompt: str
    reference: list[int]  # greedy tokens of the unquantized tunesmith model
    exported: list[int]  # greedy tokens of the exported file
    margins: list[float]  # the reference's top-1 minus top-2 logit at each step

    @property
    def same_prefix(self) -> int:
        """How many leading tokens agree."""
        n = 0
        for a, b in zip(self.reference, self.exported, strict=False):
            if a != b:
                break
            n += 1
        return n

    @property
    def identical(self) -> bool:
        return self.reference == self.exported

    @property
    def divergence_margin(self) -> float | None:
        """The reference's top-2 gap where the replies part (None when identical)."""
        n = self.same_prefix
        if self.identical or n >= len(self.margins):
            return None
        return self.margins[n]

    @property
    def agrees(self) -> bool:
        """Identical, or parting only where the reference itself was a near-tie (numerical noise decides)."""
        margin = self.divergence_margin
        return self.identical or (margin is not None and margin < NEAR_TIE)


@dataclass(frozen=True)
class Agreement:
    reader: str  # "gguf weights in torch" or "llama.cpp"
    prompts: list[PromptAgreement]

    @property
    def identical(self) -> int:
        return sum(p.identical for p in self.prompts)

    def summary(self) -> str:
        n, tokens = len(self.prompts), max((len(p.reference) for p in self.prompts), default=0)
        text = f"{self.reader}: greedy replies identical on {self.identical}/{n} prompts (up to {tokens} tokens)"
        diverged = [p for p in self.prompts if not p.identical]
        if diverged:
            text += "; the others part after " + ", ".join(
                f"{p.same_prefix}/{len(p.reference)} tokens (reference top-2 gap {p.divergence_margin:.3f})"
                if p.divergence_margin is not None else f"{p.same_prefix}/{len(p.reference)} tokens"
                for p in diverged)
        return text

    @property
    def agrees(self) -> bool:
        return all(p.agrees for p in self.prompts)


def greedy(model: PreTrainedModel, prompts: Sequence[list[int]], tokens: int, eos: set[int]) -> list[Greedy]:
    """Greedy continuation of each prompt, stopping after an end token, with transformers' own generate."""
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            mask = torch.ones(1, len(ids), dtype=torch.long)
            res = model.generate(input_ids=torch.tensor([ids]), attention_mask=mask, max_new_tokens=tokens,
                                 do_sample=False, eos_token_id=sorted(eos) or None,
                                 pad_token_id=next(iter(eos), 0), output_logits=True, return_dict_in_generate=True)
            reply = _cut(res.sequences[0, len(ids):].tolist(), eos)
            gaps = [float(top[0] - top[1]) for top in (lg[0].float().topk(2).values for lg in res.logits)]
            out.append(Greedy(reply, gaps[: len(reply)]))
    return out


def _cut(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def load_gguf_weights(path: Path, model: PreTrainedModel, shape: Shape) -> None:
    """Overwrite `model`'s weights with the file's tensors, decoded to float32 (the reverse of the export)."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    hf_names = {v: k for k, v in _gguf_to_hf(shape).items()}
    params = dict(model.named_parameters())
    seen = set()
    for t in GGUFReader(path).tensors:
        hf = hf_names.get(t.name)
        if hf is None or hf not in params:
            raise ModelError(f"{path}: tensor {t.name} has no place in the model")
        array = dequantize(t.data, t.tensor_type).reshape(params[hf].shape).astype(np.float32)
        heads = shape.heads if t.name.endswith("attn_q.weight") else shape.kv_heads \
            if t.name.endswith("attn_k.weight") else None
        if heads:
            array = unpermute_qk(array, heads)
        with torch.no_grad():
            params[hf].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        seen.add(hf)
    missing = [k for k in params if k not in seen and not (shape.tied and k == "lm_head.weight")]
    if missing:
        raise ModelError(f"{path}: no tensor for {', '.join(missing[:3])}")


def _gguf_to_hf(shape: Shape) -> dict[str, str]:
    """HF name -> GGUF name for every weight of a Llama model of this shape."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(shape.layers):
        for hf, gg in LAYER_NAMES.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def llama_cpp_greedy(path: Path, prompts: Sequence[list[int]], tokens: int, eos: set[int], *,
                     lora: Path | None = None, threads: int = 1) -> list[list[int]] | None:
    """Greedy tokens from llama.cpp (llama-cpp-python) on the file; None when it is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    longest = max(len(p) for p in prompts) + tokens + 8
    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=max(512, longest),
                n_threads=threads, n_batch=512, verbose=False, seed=0)
    out = []
    try:
        for ids in prompts:
            llm.reset()
            got: list[int] = []
            for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
                got.append(int(tok))
                if tok in eos or len(got) >= tokens:
                    break
            out.append(got)
    finally:
        llm.close()
    return out


def label_of(text: str) -> str:
    """A short printable form of a prompt."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= 40 else text[:37] + "..."


def compare(reader: str, prompts: Sequence[str], reference: Sequence[Greedy],
            exported: Sequence[list[int]]) -> Agreement:
    return Agreement(reader, [PromptAgreement(label_of(p), r.tokens, list(e), r.margins)
                              for p, r, e in zip(prompts, reference, exported, strict=True)])
