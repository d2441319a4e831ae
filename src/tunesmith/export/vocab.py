"""The tokenizer as GGUF metadata: llama.cpp's `gpt2` (byte-level BPE) vocabulary, read from tokenizer.json.

llama.cpp re-implements tokenization, so the file must say how text is split before BPE (`tokenizer.ggml.pre`).
llama.cpp knows a fixed list of splitting rules by name; the Hugging Face pre-tokenizer is matched against
the ones a Llama-shaped model uses, and anything else is refused rather than exported to tokenize
differently from the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values

# Llama 3's split rule (a Split pre-tokenizer followed by ByteLevel without its own regex).
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@dataclass(frozen=True)
class Vocab:
    """Everything the `tokenizer.*` keys of a GGUF file hold."""

    pre: str  # llama.cpp's name for the pre-tokenizer
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos / eos / unk / pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str


def read_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Vocab:
    """The GGUF vocabulary of a fast byte-level BPE tokenizer, padded to the model's `vocab_size` rows."""
    spec = _tokenizer_json(tokenizer)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ModelError("tokenizer: GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3 style); "
                         "this one is sentencepiece-style or not BPE")
    pre = pre_tokenizer_name(spec)
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    by_id = {i: tok for tok, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= vocab_size:
        raise ModelError(f"tokenizer has token id {max(by_id)} but the model has only {vocab_size} embedding rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL if i not in added else CONTROL if added[i].get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    add_bos, add_eos = _adds_specials(tokenizer)
    return Vocab(pre=pre, tokens=tokens, types=types, merges=merges, special_ids=_special_ids(tokenizer),
                 add_bos=add_bos, add_eos=add_eos, chat_template=str(tokenizer.chat_template or ""))


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("tokenizer: GGUF export needs a fast tokenizer (tokenizer.json)")
    return json.loads(backend.to_str())


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json, matched on structure."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if spec.get("normalizer") is None and kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
    raise ModelError(f"tokenizer: pre-tokenizer {kinds} is not one GGUF export can name for llama.cpp "
                     "(supported: GPT-2 byte-level, SmolLM digits + byte-level, Llama 3 split)")


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    return {k: int(v) for k, v in ids.items() if v is not None}


def _adds_specials(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether plain tokenization adds BOS / EOS (llama.cpp must do the same on raw prompts)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = len(full) > len(plain) and bos is not None and full[0] == bos
    add_eos = len(full) > len(plain) and eos is not None and full[-1] == eos
    return add_bos, add_eos
