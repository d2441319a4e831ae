"""Every training setting, typed and strict. YAML file < CLI overrides; unknown keys are errors.

`TrainConfig` is the one source of truth for a run: it is resolved (defaults filled from the data size and
method), printed before training starts, and written to `RUN/config.yaml`. Each field's `help` is the
documentation: the `tunesmith train` options and their help text are generated from it, so a default is
written once. Validation lives in the dataclass itself (`__post_init__`), for Python callers as for the
CLI, and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tunesmith.data.formats import Format
from tunesmith.errors import ConfigError

Method = Literal["lora", "full"]
Schedule = Literal["cosine", "linear", "constant"]
Quantize = Literal["none", "4bit", "8bit"]
Distributed = Literal["ddp", "fsdp"]
TRACKERS = ("tensorboard", "mlflow")  # what `report_to` may name (tunesmith.track)
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def setting(default: Any, help: str, *, flag: str | None = None, panel: str = "Hyperparameters",
            factory: Any = None) -> Any:
    """A config field with its documentation (the CLI help) and, optionally, the CLI flag it goes by."""
    meta = {"help": help, "flag": flag, "panel": panel}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA settings, with PEFT's names."""

    r: int = setting(16, "Rank of the update B @ A", panel="LoRA")
    alpha: int = setting(32, "Scale is alpha / r (alpha / sqrt(r) with rsLoRA)", panel="LoRA")
    dropout: float = setting(0.0, "Dropout on the adapter's input", panel="LoRA")
    target_modules: str | list[str] = setting(
        "all-linear", "Layers to adapt: all-linear (every linear layer but the LM head) or names such as "
        "q_proj,v_proj", flag="--lora-targets", panel="LoRA")
    use_rslora: bool = setting(False, "Rank-stabilised scaling alpha / sqrt(r)", flag="--rslora", panel="LoRA")
    use_dora: bool = setting(False, "Weight-decomposed LoRA (magnitude + direction)", flag="--dora", panel="LoRA")

    def __post_init__(self) -> None:
        _validate(self, "lora: ")


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. `None` means "chosen from the data and method" (see `resolve_defaults`)."""

    data: str = setting("", "Training data: JSONL, JSON, CSV, Parquet, Arrow, a `datasets` folder, a hub id, or "
                        ".txt/.md documents", panel="Run")
    eval_data: str | None = setting(None, "Eval data; default: hold out eval_fraction of the data",
                                    flag="--eval", panel="Run")
    format: Format = setting("auto", "Dataset format (auto: detected from the keys)", panel="Run")
    columns: str | None = setting(None, "Other column names, KEY=COLUMN: prompt=question,completion=answer",
                                  panel="Run")
    model: str = setting("smollm2-135m", "Base model: built-in name, local folder, run folder or hub id",
                         panel="Run")
    method: Method = setting("lora", "What trains: lora (a small adapter) or full (every weight)", panel="Run")
    out: str = setting("runs/latest", "Run folder", panel="Run")
    lr: float | None = setting(None, "Peak learning rate (LoRA 2e-4, full 2e-5)")
    epochs: float | None = setting(None, "Passes over the data (3 under 1000 examples, else 2)")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides epochs)")
    batch_size: int = setting(8, "Examples per micro-batch")
    grad_accum: int = setting(1, "Micro-batches per optimizer step")
    max_length: int = setting(1024, "Tokens per example; longer ones are cut on the right")
    warmup: float = setting(0.05, "Share of steps with a linear warm-up")
    schedule: Schedule = setting("cosine", "Learning-rate schedule after the warm-up")
    weight_decay: float = setting(0.0, "AdamW decay on matrices (not on norms or biases)")
    grad_clip: float = setting(1.0, "Max global gradient norm; 0 disables clipping")
    seed: int = setting(0, "Random seed (data order, eval split, LoRA init)")
    eval_fraction: float = setting(0.1, "Share held out for eval when no eval file is given (0 disables)")
    eval_every: int | None = setting(None, "Steps between evaluations (about 10 per run)")
    save_every: int | None = setting(None, "Steps between checkpoints (eval_every)")
    keep_checkpoints: int = setting(2, "Newest checkpoints kept (the best one is kept as well)", panel="Run")
    patience: int | None = setting(None, "Stop after this many evaluations without a better eval loss")
    gradient_checkpointing: bool = setting(
        False, "Recompute each layer's activations in the backward pass: activations shrink to one hidden state "
        "per layer and token, steps take about a third longer", panel="Memory")
    forward_tokens: Literal["auto"] | int = setting(
        "auto", "Most padded tokens in one forward pass: a micro-batch above it runs in pieces, with the same "
        "gradient; auto: 768 on a CPU (where more rows add memory, not speed), no limit on a GPU; 0: no limit",
        panel="Memory")
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "Number format of the matrix products: bf16 (autocast; weights that train and the optimizer stay "
        "fp32, a frozen LoRA base is stored in bf16) or fp32; auto: bf16 on a GPU that has it and on a CPU with "
        "AMX (4-9x faster products there), else fp32", panel="Memory")
    quantize: Quantize = setting(
        "none", "Load the frozen base quantized (LoRA only, needs bitsandbytes): 4bit is NF4 with double "
        "quantization (QLoRA), 8bit is LLM.int8", panel="Memory")
    distributed: Distributed = setting(
        "ddp", "Under torchrun: ddp (a full copy per GPU) or fsdp (weights, gradients and optimizer state sharded "
        "over the GPUs)", panel="Memory")
    device: str = setting("auto", "Where to train: auto, cpu, cuda or cuda:N", panel="Run")
    threads: int | None = setting(None, "CPU threads (PyTorch's default, or OMP_NUM_THREADS)", panel="Run")
    guard: bool = setting(True, "Score a general-skills slice at each evaluation (forgetting guard)", panel="Run")
    guard_stop: bool = setting(False, "Stop, keeping the best checkpoint, when the guard says fail", panel="Run")
    replay: Literal["auto"] | float = setting(
        "auto", "Share of general replay examples (shipped chat examples) mixed into the training data against "
        "forgetting; auto chooses it from the data size (0.3 under 1000 examples, 0.15 under 5000, else 0.05; "
        "none for documents); 0 mixes none", panel="Run")
    interpolate: Literal["auto", "off"] | float = setting(
        "auto", "Scale the fine-tune's change toward the base (WiSE-FT) before exporting: auto acts when the guard "
        "flags the exported step, taking the largest of 0.8, 0.6, 0.4 it passes that keeps 70 % of the eval-loss "
        "gain (no lower than 0.8 for a teacher-forced warn alone, when plain answers hold); a number in (0, 1] "
        "fixes the scale; off exports the fine-tune as trained", panel="Run")
    rag: bool = setting(
        False, "Retrieval-augmented fine-tuning (RAFT): train each chat row with notes retrieved (BM25) from the "
        "training split in its prompt, as `eval --rag` and an app put them; the row's own note is kept in 80 % "
        "of rows, so the model learns to use a note and to answer without one", panel="Run")
    rag_docs: str | None = setting(
        None, "With rag: retrieve the notes from these documents (.txt/.md, a file or folder) or a data file's "
        "rows instead of the training split (implies rag)", panel="Run")
    allow_pickle: bool = setting(False, "Allow non-safetensors weights (pickle can run code)", panel="Run")
    trust_remote_code: bool = setting(False, "Run model code shipped with a hub model", panel="Run")
    report_to: str | list[str] = setting(
        None, "Also log metrics, settings and results to experiment trackers: tensorboard, mlflow or both "
        "(tensorboard,mlflow); none by default", panel="Run", factory=list)
    lora: LoraSettings = setting(None, "LoRA settings", factory=LoraSettings)

    def __post_init__(self) -> None:
        _validate(self, "")
        object.__setattr__(self, "report_to", tracker_names(self.report_to))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Settings `--resume` may change: how long to train, how often to look, where and in which number format.
# Anything else would make the resumed run a different run than the one its checkpoints and data split belong to.
RESUMABLE = ("max_steps", "epochs", "eval_every", "save_every", "keep_checkpoints", "patience", "device",
             "threads", "guard_stop", "gradient_checkpointing", "forward_tokens", "precision", "report_to",
             "interpolate")

# Names users bring from other tools, mapped to ours for the "did you mean" hint.
ALIASES = {
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum", "per_device_train_batch_size": "batch_size",
    "max_seq_length": "max_length", "max_seq_len": "max_length", "warmup_ratio": "warmup",
    "lr_scheduler_type": "schedule", "max_grad_norm": "grad_clip", "rank": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "lora_r": "r", "eval_steps": "eval_every", "save_steps": "save_every",
    "output_dir": "out", "model_name_or_path": "model",
}


def _range_problems(c: Any) -> list[str]:
    """Range checks a type cannot express (each a lambda, so one on a mistyped value can be skipped)."""
    if isinstance(c, LoraSettings):
        checks = [(lambda: c.r >= 1, "r must be >= 1"), (lambda: 0 <= c.dropout < 1, "dropout must be in [0, 1)"),
                  (lambda: c.alpha > 0, "alpha must be > 0")]
        return _failed(checks)
    checks = [
        (lambda: c.lr is None or c.lr > 0, "lr must be > 0"),
        (lambda: c.epochs is None or c.epochs > 0, "epochs must be > 0"),
        (lambda: c.max_steps is None or c.max_steps > 0, "max_steps must be > 0"),
        (lambda: c.batch_size >= 1, "batch_size must be >= 1"),
        (lambda: c.grad_accum >= 1, "grad_accum must be >= 1"),
        (lambda: c.max_length >= 8, "max_length must be >= 8"),
        (lambda: 0 <= c.warmup < 1, "warmup is a share of the steps, in [0, 1)"),
        (lambda: 0 <= c.eval_fraction < 1, "eval_fraction must be in [0, 1)"),
        (lambda: c.replay == "auto" or 0 <= c.replay < 1, "replay must be auto or a share in [0, 1)"),
        (lambda: c.forward_tokens == "auto" or c.forward_tokens >= 0, "forward_tokens must be auto or >= 0"),
        (lambda: not isinstance(c.interpolate, float) or 0 < c.interpolate <= 1,
         "interpolate must be auto, off or a scale in (0, 1]"),
        (lambda: c.grad_clip >= 0, "grad_clip must be >= 0 (0 disables it)"),
        (lambda: c.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (lambda: c.eval_every is None or c.eval_every >= 1, "eval_every must be >= 1"),
        (lambda: c.save_every is None or c.save_every >= 1, "save_every must be >= 1"),
        (lambda: c.patience is None or c.patience >= 1, "patience must be >= 1"),
        (lambda: c.threads is None or c.threads >= 1, "threads must be >= 1"),
        (lambda: bool(DEVICE.match(c.device)), f"device '{c.device}' is not one of auto, cpu, cuda, cuda:N, mps"),
        (lambda: c.precision != "bf16" or c.device != "mps", "precision bf16 needs a CPU or a CUDA GPU, not mps"),
        (lambda: not _unknown_trackers(c.report_to),
         f"report_to: unknown tracker {', '.join(_unknown_trackers(c.report_to))}; choose from "
         f"{', '.join(TRACKERS)} (or none)"),
        (lambda: c.quantize == "none" or c.method == "lora",
         f"quantize {c.quantize} needs method lora: a quantized base is frozen, and full fine-tuning trains it"),
    ]
    return _failed(checks)


def tracker_names(value: str | list[str]) -> list[str]:
    """`report_to` as a list of names: 'tensorboard,mlflow' or a YAML list; 'none' (or nothing) is none."""
    names = value.split(",") if isinstance(value, str) else value
    out: list[str] = []
    for name in (str(n).strip().lower() for n in names):
        if name and name != "none" and name not in out:
            out.append(name)
    return out


def _unknown_trackers(value: Any) -> list[str]:
    return [n for n in tracker_names(value) if n not in TRACKERS] if isinstance(value, (str, list)) else []


def _failed(checks: list[tuple[Any, str]]) -> list[str]:
    """Messages of the checks that fail; a check on a value of the wrong type (already reported) is skipped."""
    failed = []
    for check, message in checks:
        try:
            if not check():
                failed.append(message)
        except TypeError:
            continue
    return failed


def _validate(c: Any, prefix: str) -> None:
    """Coerce each field to its type (YAML's '2e-4' string is a float) and collect every problem."""
    hints = typing.get_type_hints(type(c))
    problems: list[str] = []
    for f in fields(c):
        value = getattr(c, f.name)
        try:
            if f.name == "lora" and isinstance(value, dict):
                value = build(LoraSettings, value, "lora")
            elif f.name != "lora":
                value = _coerce(value, hints[f.name], f"{prefix}{f.name}")
        except ConfigError as e:
            problems += e.problems
            continue
        object.__setattr__(c, f.name, value)
    problems += [f"{prefix}{m}" for m in _range_problems(c)]
    if problems:
        raise ConfigError(problems)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check one value against its annotation and return it converted; raise a one-line ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
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
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads 2e-4 (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is int and isinstance(value, str) and value.strip().isdigit():  # from the command line
        return int(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {'a number' if annotation is float else annotation.__name__}, "
                          f"got {value!r}")
    return value


def _unknown(given: dict[str, Any], cls: type, where: str) -> list[str]:
    known = [f.name for f in fields(cls)]
    problems = []
    for key in given:
        if key not in known:
            close = [ALIASES[key]] if ALIASES.get(key) in known else difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            problems.append(f"{where}: unknown setting '{key}'{hint}")
    return problems


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)`, with unknown keys and invalid values reported together."""
    problems = _unknown(values, cls, where)
    if "lora" in values and not isinstance(values["lora"], (dict, LoraSettings)):
        problems.append(f"{where}: 'lora' must be a mapping of LoRA settings")
    known = {k: v for k, v in values.items() if k in {f.name for f in fields(cls)}}
    try:
        built = cls(**known)
    except ConfigError as e:
        problems += [p if p.startswith(where) else f"{where}: {p}" for p in e.problems]
        built = None
    if problems:
        raise ConfigError(problems)
    return built


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """YAML file (optional) with CLI overrides on top. `None` overrides are ignored; `lora_r=8` sets lora.r."""
    values, where = _read_yaml(path) if path is not None else ({}, "config")
    lora = dict(values.get("lora") or {}) if isinstance(values.get("lora", {}), dict) else values["lora"]
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("lora_") and isinstance(lora, dict):
            lora[key.removeprefix("lora_")] = value
        else:
            values[key] = value
    if lora:
        values["lora"] = lora
    return build(TrainConfig, values, where)


def _read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return loaded, str(path)


def resume_config(saved: TrainConfig, **overrides: Any) -> TrainConfig:
    """The saved settings of a run with the overrides `--resume` allows; the others are refused, by name."""
    given = {k: v for k, v in overrides.items() if v is not None}
    refused = sorted(k for k, v in given.items()
                     if k not in RESUMABLE and _current(saved, k) != v and k != "out")
    if refused:
        names = ", ".join(k.replace("_", "-") for k in refused)
        raise ConfigError(f"--resume continues the run as it was set up; these settings cannot change mid-run: "
                          f"{names} (resumable: {', '.join(k.replace('_', '-') for k in RESUMABLE)}); start a "
                          "new run with --out to change them")
    return replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE})


def _current(c: TrainConfig, key: str) -> Any:
    if key.startswith("lora_"):
        return getattr(c.lora, key.removeprefix("lora_"), None)
    return getattr(c, key, None)


def resolve_defaults(c: TrainConfig, n_examples: int, steps_per_epoch: int) -> TrainConfig:
    """Fill the `None` settings from the method and the data size."""
    lr = c.lr if c.lr is not None else (2e-4 if c.method == "lora" else 2e-5)
    epochs = c.epochs if c.epochs is not None else (3.0 if n_examples < 1000 else 2.0)
    total = c.max_steps or max(1, round(epochs * steps_per_epoch))
    eval_every = c.eval_every or max(1, total // 10)
    save_every = c.save_every or eval_every
    # "auto" still here: `train` was called without the API layer (`resolve_replay`), which mixed nothing in.
    replay = c.replay if c.replay != "auto" else 0.0
    return replace(c, lr=lr, epochs=epochs, eval_every=eval_every, save_every=save_every, replay=replay)


def resolve_replay(c: TrainConfig, n_examples: int, documents: bool = False) -> TrainConfig:
    """Resolve `replay: auto` from the data size (`n_examples` of the user's own): see REPLAY_BY_SIZE. For
    `documents` (continued pre-training on text) auto mixes none: the shipped replay pool is chat, and
    chat rows would change what a pre-training stage learns (a share given is kept)."""
    if c.replay != "auto":
        return c
    share = 0.0 if documents else next(share for limit, share in REPLAY_BY_SIZE if n_examples < limit)
    return replace(c, replay=share)


# (examples below, replay share): a small narrow set is where a fine-tune forgets most (issue 12's benchmark);
# a large one carries its own variety, and the shipped pool would only repeat.
REPLAY_BY_SIZE = ((1000, 0.3), (5000, 0.15), (float("inf"), 0.05))


def dump_yaml(c: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(c.to_yaml())
