"""What a server needs from storage: the log and the hard state, made durable per Ready."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

from ..core.raft import HardState
from ..protocol.messages import ENTRY_TYPES, Entry
from .fs import FileSystem
from .snapshots import SnapshotStore


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


# --- Optional abilities (hashicorp/raft's style: small interfaces a storage may also have) ---
# A server asks `isinstance(storage, Ability)` and uses what is there; a storage without one
# works all the same (MemoryStorage is only an IndexedLog).


@runtime_checkable
class IndexedLog(Protocol):
    """Says which entries it holds on disk: a snapshot can then drop the ones it replaces."""

    @property
    def first_index(self) -> int:
        """Index of the first stored entry (0 if none)."""
        ...

    @property
    def last_index(self) -> int:
        """Index of the last stored entry (0 if none)."""
        ...


@runtime_checkable
class CompactableLog(Protocol):
    """Can delete the stored entries a snapshot covers."""

    async def compact_before(self, index: int) -> int:
        """Delete what precedes `index` (whole files at least); returns how many were deleted."""
        ...


@runtime_checkable
class FsyncObservable(Protocol):
    """Reports each fsync's duration (for metrics)."""

    def observe_fsyncs(self, observer: Callable[[float], None] | None) -> None: ...


@runtime_checkable
class FailureReporting(Protocol):
    """Remembers the error that made it refuse all further work (for health checks)."""

    @property
    def failure(self) -> BaseException | None: ...


@runtime_checkable
class InDirectory(Protocol):
    """Keeps its files in a directory (health checks see whether it is writable)."""

    directory: Path


@runtime_checkable
class OnFileSystem(Protocol):
    """Reaches its files through a `FileSystem` (the simulation's is a fake one), which
    whatever else the server writes beside them must use too."""

    fs: FileSystem


@runtime_checkable
class WithSnapshots(Protocol):
    """Keeps the member's snapshots too (DiskStorage, the simulation's disk; None: turned off)."""

    snapshots: SnapshotStore | None


def check_save(
    *,
    first_index: int,
    last_index: int,
    term_at: Callable[[int], int | None],
    truncate_from: int | None,
    entries: Sequence[Entry],
) -> None:
    """Refuse (ValueError, TypeError) a save that would not leave a contiguous log.

    The rules every storage enforces, so that a simulation on SimDisk fails where DiskStorage
    would: `truncate_from` is an index >= 1; entries follow the log as truncated (an empty log
    takes any first index), one index apart, terms never decreasing, within 64 bits.
    """
    if truncate_from is not None and (type(truncate_from) is not int or truncate_from < 1):
        raise ValueError(f"truncate_from must be an index >= 1, not {truncate_from!r}")
    last = last_index
    if truncate_from is not None and truncate_from <= last:
        last = truncate_from - 1
    last_term = term_at(last) if first_index and last >= first_index else None
    if last_term is None:  # the log is empty (after the truncation): any first index will do
        last, last_term = 0, 0
    for entry in entries:
        if not isinstance(entry, ENTRY_TYPES):
            raise TypeError(f"{entry!r} is not a log entry")
        if last and entry.index != last + 1:
            raise ValueError(f"entry index {entry.index} does not follow the log's last, {last}")
        if entry.index < 1 or entry.term < last_term:
            raise ValueError(f"entry {entry.index} has term {entry.term}, after {last_term}")
        if entry.index >= 2**64 or entry.term >= 2**64:
            raise ValueError(f"entry {entry.index} has an index or term beyond 64 bits")
        last, last_term = entry.index, entry.term
