"""Which GGML type each tensor gets for a `--quant` choice, and the encoding itself.

The rules follow llama.cpp's quantizer so a file exported here is what `llama-quantize` would make:
- 1-D tensors (norms) stay F32; 2-D weights get the chosen type;
- below 8 bits, the tied embedding / output head gets Q6_K (it is read for every token and errors in it hit
  every logit), and q4_k_m gives Q6_K to attn_v and ffn_down in the layers `use_more_bits` picks;
- a tensor whose rows do not split into whole blocks falls back: Q4_K -> Q5_0, Q6_K -> Q8_0, then F16.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import numpy as np

from tunesmith.errors import ConfigError
from tunesmith.export import kquants

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

Quant = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_m"]
QUANTS: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_m")

# --quant -> (llama.cpp file type, default tensor type name)
_FILE_TYPE = {"f32": (0, "F32"), "f16": (1, "F16"), "bf16": (32, "BF16"), "q8_0": (7, "Q8_0"),
              "q5_1": (9, "Q5_1"), "q5_0": (8, "Q5_0"), "q4_1": (3, "Q4_1"), "q4_0": (2, "Q4_0"),
              "q4_k_m": (15, "Q4_K")}
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def check_quant(quant: str) -> str:
    if quant not in _FILE_TYPE:
        raise ConfigError(f"--quant '{quant}': choose one of {', '.join(QUANTS)}")
    return quant


def file_type(quant: str) -> int:
    """`general.file_type`: llama.cpp's LLAMA_FTYPE number for the choice."""
    return _FILE_TYPE[check_quant(quant)][0]


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's pick of layers whose attn_v / ffn_down get more bits in the _M mixes."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], quant: str, layers: int, tied: bool) -> str:
    """The GGML type name for tensor `name` of numpy shape (out, in) under `quant`."""
    default = _FILE_TYPE[check_quant(quant)][1]
    if len(shape) < 2 or default == "F32":
        return "F32"
    wanted = default
    is_head = name == "output.weight" or (tied and name == "token_embd.weight")
    low_bit = default not in ("F16", "BF16", "Q8_0")
    if is_head and low_bit:
        wanted = "Q8_0" if shape[-1] % _block(default) else "Q6_K"
    elif quant == "q4_k_m" and (m := _LAYER.match(name)) and name.endswith(("attn_v.weight", "ffn_down.weight")):
        wanted = "Q6_K" if use_more_bits(int(m.group(1)), layers) else default
    return _fit(wanted, shape[-1])


def _block(type_name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


def _fit(type_name: str, cols: int) -> str:
    """The type itself when rows split into whole blocks, else llama.cpp's fallback chain ending at F16."""
    while cols % _block(type_name):
        type_name = _FALLBACK.get(type_name, "F16")
    return type_name


def encode(array: np.ndarray, type_name: str) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """(data, raw_dtype) for GGUFWriter.add_tensor: float arrays as they are, quantized types as bytes."""
    from gguf import GGMLQuantizationType, quants

    if type_name == "F32":
        return array.astype(np.float32, copy=False), None
    if type_name == "F16":
        return array.astype(np.float16), None
    qtype = GGMLQuantizationType[type_name]
    rows = array.reshape(-1, array.shape[-1])
    if type_name == "Q4_K":
        data = kquants.quantize_q4_k(rows)
    elif type_name == "Q6_K":
        data = kquants.quantize_q6_k(rows)
    else:
        data = quants.quantize(rows, qtype)
    return data.reshape(*array.shape[:-1], data.shape[-1]), qtype
