"""Command-line options generated from the config's fields, so each default and help text is written once.

`tunesmith train` and `tunesmith plan` take the same settings (the planner costs the run `train` would do):
both build their signatures here from `TrainConfig` and `LoraSettings` (`setting(...)` metadata: help, flag,
panel), and hand the parsed values to `tunesmith.api.load_train_config`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tunesmith.config import LoraSettings, TrainConfig

RUN = "Run"
SAFETY = ("allow_pickle", "trust_remote_code")  # opt-in only: no --no- form


def config_option(f: dataclasses.Field, prefix: str = "") -> inspect.Parameter:
    """A typer option for one config field: flag, type and help (with the default) from the field itself."""
    hint = typing.get_type_hints(TrainConfig if not prefix else LoraSettings)[f.name]
    if typing.get_origin(hint) is typing.Literal:
        choices, kind = typing.get_args(hint), str
    else:
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        choices, kind = (), {bool: bool, int: int, float: float}.get(args[0], str)
    flag = f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}" if kind is bool and f.name not in SAFETY else flag]
    decls += {"model": ["-m"], "out": ["-o"]}.get(f.name, [])
    default = f.default if f.default is not dataclasses.MISSING else None
    text = f.metadata["help"]
    if choices:
        text += f": {' | '.join(choices)}"
    if default not in (None, "") and kind is not bool:
        text += f" \\[default: {default}]"  # escaped: rich would read [default: ...] as markup
    elif kind is bool and f.name not in SAFETY:
        text += f" \\[default: {'on' if default else 'off'}]"
    option = typer.Option(None, *decls, help=text, rich_help_panel=f.metadata["panel"], show_default=False)
    return inspect.Parameter(prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind | None)


def config_options(skip: tuple[str, ...] = ("data",)) -> list[inspect.Parameter]:
    """Every TrainConfig setting as an option (LoRA ones prefixed `lora_`), but the skipped ones."""
    fields = [config_option(f) for f in dataclasses.fields(TrainConfig) if f.name not in (*skip, "lora")]
    return fields + [config_option(f, "lora_") for f in dataclasses.fields(LoraSettings)]


def config_file_option() -> inspect.Parameter:
    return keyword("config_file", Path | None,
                   typer.Option(None, "--config", "-c", help="YAML settings; flags override it.", rich_help_panel=RUN))


def keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def with_signature(func: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """Give `func(**kwargs)` the signature typer should read (typer honours __signature__)."""
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def settings_from(values: dict[str, Any]) -> dict[str, Any]:
    """Parsed option values as load_train_config overrides (comma-separated LoRA targets become a list)."""
    targets = values.get("lora_target_modules")
    if targets and targets != "all-linear":
        values["lora_target_modules"] = [t.strip() for t in targets.split(",") if t.strip()]
    return values
