"""MEMORY storage: nothing survives the process. A server restarted on it is a new member and
must not reuse its id (it would forget its votes); durable storage is the DISK level."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..core.raft import HardState
from ..protocol.messages import Entry
from .base import StoredState, check_save


class MemoryStorage:
    """Keeps the log and hard state in lists; `save` only yields."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []

    @property
    def first_index(self) -> int:
        return self.entries[0].index if self.entries else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else 0

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, if the log holds it."""
        if not self.entries or not self.first_index <= index <= self.last_index:
            return None
        return self.entries[index - self.first_index].term

    def check_save(self, truncate_from: int | None, entries: Sequence[Entry]) -> None:
        """Refuse a save that DiskStorage would refuse (see base.check_save)."""
        check_save(
            first_index=self.first_index,
            last_index=self.last_index,
            term_at=self.term_at,
            truncate_from=truncate_from,
            entries=entries,
        )

    async def load(self) -> StoredState:
        await trio.lowlevel.checkpoint()
        return StoredState(self.hard_state, tuple(self.entries))

    async def save(
        self,
        *,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        self.check_save(truncate_from, entries)
        if truncate_from is not None:
            self.truncate(truncate_from)
        self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        await trio.lowlevel.checkpoint()

    def truncate(self, from_index: int) -> None:
        """Drop the entries from `from_index` on."""
        first = self.entries[0].index if self.entries else 1
        del self.entries[max(0, from_index - first) :]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
