"""Every training setting, typed and strict. YAML file < CLI overrides; unknown keys are errors.

`TrainConfig` is the one source of truth for a run: it is resolved (defaults filled from the data size and
method), printed before training starts, and written to `RUN/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import ConfigError

Method = Literal["lora", "full"]
Schedule = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA settings, with PEFT's names."""

    r: int = 16  # rank of the update B @ A
    alpha: int = 32  # scale is alpha / r (alpha / sqrt(r) with rsLoRA)
    dropout: float = 0.0  # dropout on the adapter's input (each adapted layer keeps its own dropped copy)
    target_modules: str | list[str] = "all-linear"  # module names, or every linear layer but the LM head
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r)
    use_dora: bool = False  # weight-decomposed LoRA (magnitude + direction)


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. `None` means "chosen from the data and method" (see `resolve_defaults`)."""

    data: str = ""  # training file (JSON, JSONL or CSV)
    eval_data: str | None = None  # evaluation file; None -> hold out `eval_fraction` of the data
    format: str = "auto"  # prompt_completion | chat | alpaca | auto
    model: str = "smollm2-135m"  # built-in name, local folder or hub id
    method: Method = "lora"
    out: str = "runs/latest"  # run folder
    lr: float | None = None  # peak learning rate (LoRA 2e-4, full 2e-5 by default)
    epochs: float | None = None  # passes over the data (3 below 1000 examples, else 2)
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 1024  # tokens per example; longer ones are truncated on the right
    warmup: float = 0.05  # share of steps with a linear warm-up
    schedule: Schedule = "cosine"
    weight_decay: float = 0.0  # AdamW decay on matrices (not on norms/biases)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    seed: int = 0
    eval_fraction: float = 0.1  # share held out for eval when no eval file is given (0 disables)
    eval_every: int | None = None  # steps between evaluations (about 10 per run by default)
    save_every: int | None = None  # steps between checkpoints (same as eval_every by default)
    keep_checkpoints: int = 2  # newest checkpoints kept (the best one is kept as well)
    patience: int | None = None  # stop after this many evaluations without a better eval loss
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads (default: the cores this process may use)
    guard: bool = True  # score a small general-knowledge slice at each evaluation (forgetting guard)
    guard_stop: bool = False  # stop (keeping the best checkpoint) when the guard says "fail"
    replay: float = 0.0  # share of general "replay" examples mixed into training against forgetting
    allow_pickle: bool = False  # allow non-safetensors weights (pickle can run code)
    trust_remote_code: bool = False  # run model code shipped with a hub model
    lora: LoraSettings = field(default_factory=LoraSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Names users bring from other tools, mapped to ours for the "did you mean" hint.
ALIASES = {
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum", "per_device_train_batch_size": "batch_size",
    "max_seq_length": "max_length", "max_seq_len": "max_length", "warmup_ratio": "warmup",
    "lr_scheduler_type": "schedule", "max_grad_norm": "grad_clip", "rank": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "lora_r": "r", "eval_steps": "eval_every", "save_steps": "save_every",
    "output_dir": "out", "model_name_or_path": "model",
}


def _check_keys(given: dict[str, Any], cls: type, where: str) -> None:
    known = [f.name for f in fields(cls)]
    for key in given:
        if key not in known:
            close = [ALIASES[key]] if ALIASES.get(key) in known else difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown setting '{key}'{hint}")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check one value against its annotation (ints for floats are fine); raise a one-line error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of names, got {value!r}")
        return list(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    _check_keys(values, cls, where)
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        if key == "lora":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: 'lora' must be a mapping of LoRA settings")
            clean[key] = _build(LoraSettings, value, f"{where}: lora")
        else:
            clean[key] = _coerce(value, hints[key], f"{where}: {key}")
    return cls(**clean)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """YAML file (optional) with CLI overrides on top. `None` overrides are ignored; `lora_r=8` sets lora.r."""
    import yaml

    values: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        values = loaded
    lora = dict(values.get("lora") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("lora_"):
            lora[key.removeprefix("lora_")] = value
        else:
            values[key] = value
    if lora:
        values["lora"] = lora
    config = _build(TrainConfig, values, where)
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    """Range checks a type cannot express."""
    checks = [
        (c.lr is None or c.lr > 0, "lr must be > 0"),
        (c.epochs is None or c.epochs > 0, "epochs must be > 0"),
        (c.max_steps is None or c.max_steps > 0, "max_steps must be > 0"),
        (c.batch_size >= 1, "batch_size must be >= 1"),
        (c.grad_accum >= 1, "grad_accum must be >= 1"),
        (c.max_length >= 8, "max_length must be >= 8"),
        (0 <= c.warmup < 1, "warmup is a share of the steps, in [0, 1)"),
        (0 <= c.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
        (0 <= c.replay < 1, "replay must be in [0, 1)"),
        (c.grad_clip >= 0, "grad_clip must be >= 0 (0 disables it)"),
        (c.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (c.lora.r >= 1, "lora.r must be >= 1"),
        (0 <= c.lora.dropout < 1, "lora.dropout must be in [0, 1)"),
        (c.eval_every is None or c.eval_every >= 1, "eval_every must be >= 1"),
        (c.save_every is None or c.save_every >= 1, "save_every must be >= 1"),
        (c.patience is None or c.patience >= 1, "patience must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"config: {message}")
    if not c.data:
        raise ConfigError("config: no training data given (DATA argument or 'data:' in the config file)")


def resolve_defaults(c: TrainConfig, n_examples: int, steps_per_epoch: int) -> TrainConfig:
    """Fill the `None` settings from the method and the data size."""
    lr = c.lr if c.lr is not None else (2e-4 if c.method == "lora" else 2e-5)
    epochs = c.epochs if c.epochs is not None else (3.0 if n_examples < 1000 else 2.0)
    total = c.max_steps or max(1, round(epochs * steps_per_epoch))
    eval_every = c.eval_every or max(1, total // 10)
    save_every = c.save_every or eval_every
    return replace(c, lr=lr, epochs=epochs, eval_every=eval_every, save_every=save_every)


def dump_yaml(c: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(c.to_dict(), sort_keys=False))
