"""A simulation's trace: every event with its virtual time, and a digest two replays compare."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import trio


class Trace:
    """What happened, one line per event with its virtual time: faults, heals, leaders,
    operations. Two runs of a seed must give the same lines (and `digest`)."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self.events: list[tuple[float, str, str]] = []

    def record(self, kind: str, text: str) -> None:
        self.events.append((self._clock(), kind, text))

    def lines(self, kinds: Sequence[str] | None = None) -> list[str]:
        return [
            f"{at:10.4f} {kind:<9} {text}"
            for at, kind, text in self.events
            if kinds is None or kind in kinds
        ]

    def digest(self) -> str:
        """A hash of every event, times to the microsecond."""
        sha = hashlib.sha256()
        for at, kind, text in self.events:
            sha.update(f"{at:.6f}|{kind}|{text}\n".encode())
        return sha.hexdigest()[:16]

    def format(self, kinds: Sequence[str] | None = None, limit: int | None = None) -> str:
        lines = self.lines(kinds)
        if limit is not None and len(lines) > limit:
            lines = [f"... {len(lines) - limit} earlier lines", *lines[-limit:]]
        return "\n".join(lines)
