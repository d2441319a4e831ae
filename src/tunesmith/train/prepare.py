"""Training data for a run: load, split off eval, mix in replay examples, tokenize, drop empty rows.

The eval split is `tunesmith.data.prepare.split`, the same one `tunesmith data prepare` writes: examples that
share a prompt or nearly duplicate each other stay on one side, so the eval set never asks what training
answered. Documents (the `text` format) are packed into rows of max_length tokens (`train.batching.pack`).
With `rag`, the chat rows (train and eval, not the replay) get retrieved notes in their prompts; the run
folder's data/*.jsonl keep the rows as given, so `eval --rag` retrieves from the same notes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunesmith.config import TrainConfig
from tunesmith.data.formats import Example, load_dataset
from tunesmith.data.prepare import split
from tunesmith.data.tokenize import Encoded
from tunesmith.train.batching import training_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]] | str  # a chat example, or a document (the `text` format)
MIN_FOR_SPLIT = 10  # below this many examples, no eval split is held out


@dataclass
class RunData:
    train_messages: list[Example]  # the rows as loaded (messages and their tools, or a document)
    eval_messages: list[Example]
    train: list[Encoded]
    eval: list[Encoded]
    info: dict[str, Any] = field(default_factory=dict)  # goes into the manifest


def prepare(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, replay: Sequence[Messages] = ()
) -> RunData:
    data = load_dataset(config.data, config.format, config.columns)
    examples = data.examples
    info: dict[str, Any] = {"train": {"path": str(config.data), "sha256": data.sha256}, "format": data.format}
    if config.eval_data:
        evals = load_dataset(config.eval_data, config.format, config.columns)
        eval_rows = evals.examples
        info["eval"] = {"path": str(config.eval_data), "sha256": evals.sha256}
        train_rows = examples
    else:
        held: list[Example] = []
        if config.eval_fraction > 0 and len(examples) >= MIN_FOR_SPLIT:
            examples, held = split(examples, config.eval_fraction, config.seed)
        train_rows, eval_rows = examples, held
        info["eval"] = {"held_out_from_train": len(eval_rows), "fraction": config.eval_fraction,
                        "split": "by prompt and near-duplicate group"}
    packed = data.format == "text"
    replayed = [_replay_example(m) for m in replay]  # general chat, answered without notes
    as_given = (train_rows + replayed, eval_rows)  # what the run folder's data/*.jsonl keep
    if config.rag or config.rag_docs:
        train_rows, eval_rows, info["rag"] = _with_notes(config, tokenizer, train_rows, eval_rows, packed)
    train_rows = train_rows + replayed
    train, dropped_train = training_rows(tokenizer, train_rows, config.max_length, packed=packed)
    evals, dropped_eval = training_rows(tokenizer, eval_rows, config.max_length, packed=packed)
    if not train:
        from tunesmith.errors import DataError

        raise DataError([f"{config.data}: no example has a reply within max_length={config.max_length}"])
    info.update(
        train_examples=len(train_rows) - dropped_train, eval_examples=len(eval_rows) - dropped_eval,
        replay_examples=len(replay), dropped_beyond_max_length=dropped_train + dropped_eval,
        train_tokens=sum(len(e.input_ids) for e in train), train_targets=sum(e.targets for e in train),
    )
    if packed:
        info.update(train_rows=len(train), eval_rows=len(evals))
    if dropped_train + dropped_eval:
        log.warning("%d examples dropped: their reply starts beyond max_length=%d",
                    dropped_train + dropped_eval, config.max_length)
    return RunData(*as_given, train, evals, info)


def _with_notes(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, train: list[Example], evals: list[Example], packed: bool
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """`--rag`: the rows with retrieved notes in their prompts (`retrieval.training_notes`)."""
    from tunesmith.errors import ConfigError
    from tunesmith.retrieval import BUDGET, PREAMBLE, training_notes

    if packed:
        raise ConfigError(f"rag: {config.data} holds documents (the text format); retrieval-augmented fine-tuning "
                          "trains chat or prompt/completion rows, with the documents as --rag-docs")
    # Notes and their preamble take at most half of max_length (the notes at most eval --rag's 384 tokens), so
    # the question and the reply still fit.
    preamble = len(tokenizer(PREAMBLE, add_special_tokens=False)["input_ids"])
    budget = max(0, min(BUDGET, config.max_length // 2 - preamble))
    return training_notes(train, evals, tokenizer, docs=config.rag_docs, seed=config.seed, budget=budget)


def _replay_example(row: Messages) -> Example:
    return Example(messages=[], source="replay", text=row) if isinstance(row, str) else \
        Example(messages=list(row), source="replay")
