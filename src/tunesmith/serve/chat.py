"""A conversation for `tunesmith chat`: history rendered with the chat template, oldest turns dropped to fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.data.tokenize import Message, encode_prompt
from tunesmith.errors import TunesmithError
from tunesmith.retrieval import answer_with_notes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunesmith.retrieval import Retriever


class Conversation:
    """Messages so far (an optional system message first) and the prompt for the next reply."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, system: str | None = None, max_prompt_tokens: int,
                 notes: Retriever | None = None):
        self.tokenizer = tokenizer
        self.notes = notes  # a run trained with notes (train --rag): each reply gets the best notes for its question
        self.system: list[Message] = [{"role": "system", "content": system}] if system else []
        self.turns: list[Message] = []
        self.max_prompt_tokens = max_prompt_tokens

    @property
    def messages(self) -> list[Message]:
        return self.system + self.turns

    def reset(self) -> None:
        """Forget every turn; keep the system message."""
        self.turns = []

    def prompt(self, user: str) -> tuple[list[int], int]:
        """Token ids for a reply to `user` after the history, and how many old exchanges were forgotten."""
        dropped = 0
        while True:
            messages = [*self.system, *self.turns, {"role": "user", "content": user}]
            if self.notes is not None:
                messages = answer_with_notes(self.notes, messages, self.tokenizer)
            ids = encode_prompt(self.tokenizer, messages)
            if len(ids) <= self.max_prompt_tokens:
                return ids, dropped
            if not self.turns:
                raise TunesmithError(
                    f"message too long: {len(ids)} prompt tokens, the model's window leaves "
                    f"{self.max_prompt_tokens}; shorten it or lower --max-tokens"
                )
            self.turns = self.turns[2:]  # drop the oldest user/assistant pair
            dropped += 1

    def add(self, user: str, reply: str) -> None:
        """Record a finished exchange."""
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
