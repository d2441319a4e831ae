"""Continuous batching on the fast decoder: requests join and leave the running batch between steps.

Row b of the batch lives in KV-cache slot b. New requests are prefilled together (their prompts right-padded
into one forward pass) and appended; each step then decodes one token for every live row, whatever model
(base or adapter) each row asked for. A finished row's slot is refilled by moving the last row into it, so
the live rows always occupy slots 0..n-1 and a step touches only those.

With a compiled step (`serve --compile`), a lone row on the base model decodes through it instead: its cache
moves into the compiled step's own cache when it becomes the only row, and back into slot 0 when others join.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunesmith.serve.generate import Row, Step, sample
from tunesmith.serve.lora_rows import Adapter, RowAdapters

if TYPE_CHECKING:
    import torch

    from tunesmith.serve.compiled import CompiledStep
    from tunesmith.serve.fast import FastLlama


@dataclass
class Live:
    """A request being decoded: its row, where to send steps, its adapter (None = base), its cached length."""

    row: Row
    emit: Callable[[Step], None]
    adapter: Adapter | None
    length: int = 0


class LiveBatch:
    """The rows currently decoding. Only the engine's worker thread calls it."""

    def __init__(self, fast: FastLlama, eos_ids: set[int], pad_id: int, compiled: CompiledStep | None = None):
        self.fast, self.eos_ids, self.pad_id = fast, eos_ids, pad_id
        self.compiled = compiled
        self.live: list[Live] = []
        self._adapters: RowAdapters | None = None  # rebuilt when the set of rows changes
        self._solo: Live | None = None  # the row whose cache is in the compiled step's, not in slot 0

    def __len__(self) -> int:
        return len(self.live)

    def admit(self, new: Sequence[Live]) -> None:
        """Prefill the new rows in one pass (slots after the live ones), emit their first tokens."""
        import torch

        if not new:
            return
        with torch.inference_mode():  # also around cache moves: the cache is made of inference tensors
            self._prefill(new)

    def _prefill(self, new: Sequence[Live]) -> None:
        import torch

        first = len(self.live)
        self.live.extend(new)  # live before the pass: if it fails, `fail` tells these rows too
        self._adapters = None
        width = max(len(n.row.prompt_ids) for n in new)
        ids = torch.tensor([n.row.prompt_ids + [self.pad_id] * (width - len(n.row.prompt_ids)) for n in new])
        lengths = torch.tensor([len(n.row.prompt_ids) for n in new])
        logits = self._forward(ids, torch.zeros(len(new), dtype=torch.long), lengths, list(new), first)
        for n in new:
            n.length = len(n.row.prompt_ids)
        self._advance(logits, range(first, len(self.live)))

    def step(self) -> None:
        """Decode one token for every live row."""
        import torch

        if not self.live:
            return
        with torch.inference_mode():
            self._step()

    def _step(self) -> None:
        import torch

        if self._solo_step():
            return
        ids = torch.tensor([[n.row.text.tokens[-1] if n.row.text.tokens else self.pad_id] for n in self.live])
        start = torch.tensor([n.length for n in self.live])
        if self._adapters is None:
            self._adapters = RowAdapters([n.adapter for n in self.live])
        logits = self._forward(ids, start, torch.ones(len(self.live), dtype=torch.long), None, 0)
        for n in self.live:
            n.length += 1
        self._advance(logits, range(len(self.live)))

    def _solo_step(self) -> bool:
        """Decode the lone base-model row with the compiled step, if there is one; False when not taken."""
        row = self.live[0] if len(self.live) == 1 and self.live[0].adapter is None else None
        if self._solo is not None and self._solo is not row:  # others joined: its cache goes back to its slot
            if self._solo in self.live:
                self.compiled.store(self.live.index(self._solo), self._solo.length)  # type: ignore[union-attr]
            self._solo = None
        if row is None or self.compiled is None or not self.compiled.fits(row.length):
            return False
        if self._solo is None:
            self.compiled.load(row.length)
            self._solo = row
        logits = self.compiled.step(row.row.text.tokens[-1] if row.row.text.tokens else self.pad_id, row.length)
        row.length += 1
        self._advance(logits, range(1))
        return True

    def fail(self, error: object) -> None:
        """Send `error` to every live row and empty the batch (after an exception inside a forward pass)."""
        for n in self.live:
            if not n.row.done:
                n.emit(error)  # type: ignore[arg-type]
        self.live.clear()
        self._adapters = None
        self._solo = None

    def _forward(self, ids: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor,
                 rows: list[Live] | None, first_slot: int) -> torch.Tensor:
        """Logits (B, V) for the given rows; prefill writes slots first_slot.., a step writes 0..n-1."""

        adapters = RowAdapters([n.adapter for n in rows]) if rows is not None else self._adapters
        if adapters is not None and adapters.empty:
            adapters = None
        return self.fast.forward(ids, start, lengths, adapters, first_slot=first_slot)

    def _advance(self, logits: torch.Tensor, positions: range) -> None:
        """Sample each row's next token, emit its text, and retire the rows that finished."""
        rows = [self.live[p] for p in positions]
        tokens = sample(logits, [n.row for n in rows])
        for n, token in zip(rows, tokens, strict=True):
            if n.row.cancelled:
                continue
            text = n.row.push(token, self.eos_ids)
            if text or n.row.finish_reason:
                n.emit(Step(0, text, n.row.finish_reason, n.row.generated))
        self._retire()

    def _retire(self) -> None:
        """Drop finished or cancelled rows, moving the last live row into each freed slot."""
        slot = 0
        while slot < len(self.live):
            if not self.live[slot].row.done:
                slot += 1
                continue
            last = len(self.live) - 1
            if slot != last:
                self.fast.move(last, slot)
                self.live[slot] = self.live[last]
            self.live.pop()
            self._adapters = None
        if not self.live:
            self.fast.release()
            self._solo = None
