"""A replicated counter: `Increment(delta)` returns the new value, `Value()` reads it."""

from __future__ import annotations

import attrs

from ..protocol.codec import registry
from ..protocol.operations import Command, Query
from ..state_machine import Commit, SnapshotSink, SnapshotSource, Snapshottable, StateMachine

__all__ = ["Counter", "Increment", "Value"]


@attrs.frozen
class Increment(Command):
    """Add delta (may be negative); returns the new value."""

    delta: int = 1


@attrs.frozen
class Value(Query):
    """The current value."""


class Counter(StateMachine, Snapshottable):
    """One integer, starting at 0."""

    def __init__(self) -> None:
        self.value: int = 0

    def snapshot(self, writer: SnapshotSink) -> None:
        writer.write_object(self.value)

    def install(self, reader: SnapshotSource) -> None:
        self.value = int(reader.read_object())

    def increment(self, commit: Commit[Increment]) -> int:
        self.value += commit.operation.delta
        return self.value

    def read(self, commit: Commit[Value]) -> int:
        return self.value


registry.register(Increment, 33010, builtin=True)
registry.register(Value, 33011, builtin=True)
