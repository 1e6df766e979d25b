"""A state machine for end-to-end tests: an append-only list of strings.

Server processes load it with `--state-machine tests.e2e.appendlog:AppendLog` (the repository
root is on their PYTHONPATH); the tests import it as `tests.e2e.appendlog`, never under another
name, so its operations register with the codec exactly once per process.
"""

from __future__ import annotations

import attrs

from copycat_trio import Command, Commit, Query, StateMachine, register
from copycat_trio.state_machine import SnapshotSink, SnapshotSource, Snapshottable


@register(40200)
@attrs.frozen
class Append(Command):
    """Append `value`; returns its position (0-based) in the list."""

    value: str


@register(40201)
@attrs.frozen
class Items(Query):
    """The whole list, in the order the commands were applied."""


class AppendLog(StateMachine, Snapshottable):
    """Every server applies the same appends in the same order, so every list is the same."""

    def __init__(self) -> None:
        self._items: list[str] = []

    def snapshot(self, writer: SnapshotSink) -> None:
        writer.write_object(len(self._items))
        for start in range(0, len(self._items), 1000):
            writer.write_object(self._items[start : start + 1000])

    def install(self, reader: SnapshotSource) -> None:
        count = reader.read_object()
        items: list[str] = []
        while len(items) < count:
            items.extend(reader.read_object())
        self._items = items

    def append(self, commit: Commit[Append]) -> int:
        self._items.append(commit.operation.value)
        return len(self._items) - 1

    def items(self, commit: Commit[Items]) -> list[str]:
        return list(self._items)
