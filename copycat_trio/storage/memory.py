"""MEMORY storage: nothing survives the process. A server restarted on it is a new member and
must not reuse its id (it would forget its votes); durable storage is the DISK level."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..core.raft import HardState
from ..protocol.messages import Entry
from .base import StoredState


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
