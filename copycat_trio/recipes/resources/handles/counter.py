"""`Counter(client, name)`: a replicated integer."""

from __future__ import annotations

from ..kinds.counter import CounterAdd, CounterCompareAndSet, CounterGet
from .common import Handle

__all__ = ["Counter"]


class Counter(Handle):
    """A named counter, starting at 0."""

    kind = "counter"

    async def increment(self) -> int:
        """Add one; returns the new value."""
        return await self.add_and_get(1)

    async def add_and_get(self, delta: int) -> int:
        """Add delta (may be negative); returns the new value."""
        return int(await self._command(CounterAdd(self.name, delta)))

    async def compare_and_set(self, expected: int, new: int) -> bool:
        """Set the value to `new` only if it is `expected`; returns whether it did."""
        return bool(await self._command(CounterCompareAndSet(self.name, expected, new)))

    async def value(self) -> int:
        """The current value."""
        return int(await self._query(CounterGet(self.name)))
