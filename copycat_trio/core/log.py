"""The Raft log as the core sees it: entries in memory after an optional compacted prefix.

Index 0 is the empty prefix with term 0. Entries before `first_index` have been compacted into a
snapshot whose last index and term are kept, so log matching still works at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..protocol.messages import Entry


class LogError(Exception):
    """A caller broke the log's rules (a gap, or truncating committed entries)."""


def default_entry_size(entry: Entry) -> int:
    """A rough size for batching when no exact encoder is injected."""
    return 64


class RaftLog:
    """Entries indexed from `first_index`, contiguous, with terms never decreasing."""

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        entry_size: Callable[[Entry], int] = default_entry_size,
    ) -> None:
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term
        self._entries: list[Entry] = []
        self._sizes: dict[int, int] = {}
        self._entry_size = entry_size
        self.append(list(entries))

    @property
    def first_index(self) -> int:
        return self._snapshot_index + 1

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        return self._snapshot_term

    @property
    def last_index(self) -> int:
        return self._snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at index, or None if it is beyond the log or compacted away."""
        if index == self._snapshot_index:
            return self._snapshot_term
        if index < self._snapshot_index or index > self.last_index:
            return None
        return self._entries[index - self._snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        if index < self.first_index or index > self.last_index:
            raise LogError(
                f"no entry at index {index} (log holds {self.first_index}..{self.last_index})"
            )
        return self._entries[index - self._snapshot_index - 1]

    def slice(self, start: int, stop: int) -> list[Entry]:
        """Entries with start <= index < stop."""
        lo = max(start, self.first_index) - self._snapshot_index - 1
        hi = min(stop, self.last_index + 1) - self._snapshot_index - 1
        return self._entries[lo:hi] if hi > lo else []

    def batch(self, start: int, *, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from start for one append: at least one, at most max_entries or max_bytes."""
        out: list[Entry] = []
        total = 0
        index = start
        while index <= self.last_index and len(out) < max_entries:
            size = self.size_at(index)
            if out and total + size > max_bytes:
                break
            out.append(self.entry(index))
            total += size
            index += 1
        return out

    def size_at(self, index: int) -> int:
        size = self._sizes.get(index)
        if size is None:
            size = self._sizes[index] = self._entry_size(self.entry(index))
        return size

    def append(self, entries: Sequence[Entry]) -> None:
        """Add entries that directly follow the last one."""
        for entry in entries:
            if entry.index != self.last_index + 1:
                raise LogError(f"entry index {entry.index} does not follow {self.last_index}")
            if entry.term < self.last_term:
                raise LogError(f"entry term {entry.term} is below the last term {self.last_term}")
            self._entries.append(entry)

    def truncate_from(self, index: int) -> None:
        """Remove entries at index and after (a conflicting suffix)."""
        if index <= self._snapshot_index:
            raise LogError(f"cannot truncate at {index}: compacted up to {self._snapshot_index}")
        if index > self.last_index:
            return
        for i in range(index, self.last_index + 1):
            self._sizes.pop(i, None)
        del self._entries[index - self._snapshot_index - 1 :]

    def compact(self, index: int) -> None:
        """Forget entries up to index (they are in a snapshot); their last term is kept."""
        if index <= self._snapshot_index:
            return
        if index > self.last_index:
            raise LogError(f"cannot compact to {index}: the log ends at {self.last_index}")
        term = self.term_at(index)
        assert term is not None
        for i in range(self._snapshot_index + 1, index + 1):
            self._sizes.pop(i, None)
        del self._entries[: index - self._snapshot_index]
        self._snapshot_index, self._snapshot_term = index, term

    def reset(self, index: int, term: int) -> None:
        """Drop everything: the log now starts after a snapshot at (index, term)."""
        self._entries.clear()
        self._sizes.clear()
        self._snapshot_index, self._snapshot_term = index, term

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """Whether a log ending at (last_term, last_index) is at least as up to date as this one
        (Raft 5.4.1): a later last term wins, and with equal terms the longer log."""
        return candidate_log_ok(last_term, last_index, self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """The first index in the run of entries with the same term as the entry at index."""
        term = self.term_at(index)
        while index > self.first_index and self.term_at(index - 1) == term:
            index -= 1
        return index


def candidate_log_ok(cand_term: int, cand_index: int, my_term: int, my_index: int) -> bool:
    """Raft 5.4.1: a voter grants only to a candidate whose log is at least as up to date."""
    return cand_term > my_term or (cand_term == my_term and cand_index >= my_index)
