"""What a server needs from storage: the log and the hard state, made durable per Ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from ..core.raft import HardState
from ..protocol.messages import Entry


@attrs.frozen
class StoredState:
    """Everything a restarting server reloads."""

    hard_state: HardState = attrs.field(factory=HardState)
    entries: tuple[Entry, ...] = ()


class LogStorage(Protocol):
    """Durable term, vote and log. `save` returns only once the change is durable."""

    async def load(self) -> StoredState: ...

    async def save(
        self,
        *,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        """Apply a truncation, then append entries, then record the hard state, durably."""
        ...

    async def aclose(self) -> None: ...
