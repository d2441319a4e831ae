"""Write GGUF files with the `gguf` package: a whole model, or a LoRA adapter for `llama-server --lora`.

Keys are llama.cpp's (`general.*`, `llama.*`, `tokenizer.ggml.*`, `adapter.*`). Files are written to a
temporary name beside the target and renamed, so a crash never leaves a half-written file under the real
name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunesmith.export.quant import encode, file_type, tensor_type
from tunesmith.export.tensors import GGUF_ARCH, Shape
from tunesmith.export.vocab import Vocab

if TYPE_CHECKING:
    from gguf import GGUFWriter

QUANTIZATION_VERSION = 2  # ggml's block formats revision, as llama.cpp writes it


def write_model(path: Path, tensors: Iterable[tuple[str, np.ndarray]], shape: Shape, vocab: Vocab, *,
                quant: str, name: str) -> dict[str, str]:
    """Write a complete model; returns GGUF name -> GGML type of every tensor written."""
    from gguf import GGUFWriter

    tmp = path.with_name(f".{path.name}.tmp")
    writer = GGUFWriter(tmp, GGUF_ARCH)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_type(quant))
    writer.add_quantization_version(QUANTIZATION_VERSION)
    _add_hparams(writer, shape)
    _add_vocab(writer, vocab)
    types: dict[str, str] = {}
    for tensor_name, array in tensors:
        types[tensor_name] = tensor_type(tensor_name, array.shape, quant, shape.layers, shape.tied)
        data, raw = encode(array, types[tensor_name])
        writer.add_tensor(tensor_name, data, raw_dtype=raw)
    _finish(writer, tmp, path)
    return types


def write_adapter(path: Path, tensors: Iterable[tuple[str, np.ndarray]], *, alpha: float, name: str) -> int:
    """Write a LoRA adapter (lora_a / lora_b pairs, float32); returns the number of tensors.

    llama.cpp scales each pair by alpha / r (r = lora_b's columns), or by 1 when alpha is 0.
    """
    from gguf import GGUFWriter

    tmp = path.with_name(f".{path.name}.tmp")
    writer = GGUFWriter(tmp, GGUF_ARCH)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    writer.add_name(name)
    count = 0
    for tensor_name, array in tensors:
        writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float32))
        count += 1
    _finish(writer, tmp, path)
    return count


def _add_hparams(w: GGUFWriter, s: Shape) -> None:
    w.add_context_length(s.context)
    w.add_embedding_length(s.hidden)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.intermediate)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_vocab_size(s.vocab)
    if s.head_dim * s.heads != s.hidden:  # llama.cpp assumes hidden / heads unless told
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if s.rope_linear_factor is not None:
        from gguf import RopeScalingType

        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.rope_linear_factor)


def _add_vocab(w: GGUFWriter, v: Vocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    setters = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
               "pad": w.add_pad_token_id}
    for key, token_id in v.special_ids.items():
        setters[key](token_id)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(v.add_eos)
    if v.chat_template:
        w.add_chat_template(v.chat_template)


def _finish(writer: GGUFWriter, tmp: Path, path: Path) -> None:
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
