"""A named counter: an integer starting at 0."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = ["CounterAdd", "CounterCompareAndSet", "CounterGet", "CounterResource"]


@attrs.frozen
class CounterAdd(ResourceCommand):
    """Add delta (may be negative); returns the new value."""

    kind: ClassVar[str] = "counter"
    delta: int = 1


@attrs.frozen
class CounterCompareAndSet(ResourceCommand):
    """Set the value to `new` only if it equals `expected`; returns whether it did."""

    kind: ClassVar[str] = "counter"
    expected: int = 0
    new: int = 0


@attrs.frozen
class CounterGet(ResourceQuery):
    """The current value."""

    kind: ClassVar[str] = "counter"


class CounterResource(Resource):
    kind: ClassVar[str] = "counter"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.value = 0

    def add(self, delta: int) -> int:
        self.value += delta
        return self.value

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, CounterAdd):
            return self.add(op.delta)
        if isinstance(op, CounterCompareAndSet):
            if self.value != op.expected:
                return False
            self.value = op.new
            return True
        raise TypeError(f"not a counter command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        return self.value

    def idle(self) -> bool:
        return self.value == 0

    def dump(self) -> list[Any]:
        return [self.value]

    def load(self, chunks: list[Any]) -> None:
        self.value = int(chunks[0])
