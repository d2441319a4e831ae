"""Training data for a run: load, split off eval, mix in replay examples, tokenize, drop empty rows.

The eval split is `tunesmith.data.prepare.split`, the same one `tunesmith data prepare` writes: examples that
share a prompt or nearly duplicate each other stay on one side, so the eval set never asks what training
answered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunesmith.config import TrainConfig
from tunesmith.data.formats import Example, file_sha256, load_examples
from tunesmith.data.prepare import split
from tunesmith.data.tokenize import Encoded, encode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
MIN_FOR_SPLIT = 10  # below this many examples, no eval split is held out


@dataclass
class RunData:
    train_messages: list[Example]  # the rows as loaded (messages, and tools when they call any)
    eval_messages: list[Example]
    train: list[Encoded]
    eval: list[Encoded]
    info: dict[str, Any] = field(default_factory=dict)  # goes into the manifest


def _encode_all(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Example], max_length: int):
    kept, dropped = [], 0
    for row in rows:
        enc = encode(tokenizer, row.messages, max_length, tools=row.tools)
        if enc.targets == 0:
            dropped += 1  # the reply lies beyond max_length: nothing to learn from
            continue
        kept.append(enc)
    return kept, dropped


def prepare(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, replay: Sequence[Messages] = ()
) -> RunData:
    examples = load_examples(config.data, config.format)
    info: dict[str, Any] = {"train": {"path": str(config.data), "sha256": file_sha256(config.data)}}
    if config.eval_data:
        eval_rows = load_examples(config.eval_data, config.format)
        info["eval"] = {"path": str(config.eval_data), "sha256": file_sha256(config.eval_data)}
        train_rows = examples
    else:
        held: list[Example] = []
        if config.eval_fraction > 0 and len(examples) >= MIN_FOR_SPLIT:
            examples, held = split(examples, config.eval_fraction, config.seed)
        train_rows, eval_rows = examples, held
        info["eval"] = {"held_out_from_train": len(eval_rows), "fraction": config.eval_fraction,
                        "split": "by prompt and near-duplicate group"}
    train_rows = train_rows + [Example(messages=list(m), source="replay") for m in replay]
    train, dropped_train = _encode_all(tokenizer, train_rows, config.max_length)
    evals, dropped_eval = _encode_all(tokenizer, eval_rows, config.max_length)
    if not train:
        from tunesmith.errors import DataError

        raise DataError([f"{config.data}: no example has a reply within max_length={config.max_length}"])
    info.update(
        train_examples=len(train), eval_examples=len(evals), replay_examples=len(replay),
        dropped_beyond_max_length=dropped_train + dropped_eval,
        train_tokens=sum(len(e.input_ids) for e in train), train_targets=sum(e.targets for e in train),
    )
    if dropped_train + dropped_eval:
        log.warning("%d examples dropped: their reply starts beyond max_length=%d",
                    dropped_train + dropped_eval, config.max_length)
    return RunData(train_rows, eval_rows, train, evals, info)
