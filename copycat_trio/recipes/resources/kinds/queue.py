"""A named FIFO queue: each item is handed to exactly one poller.

A poll takes the first item at once, or, if asked to wait, queues the poller; an offer hands its
item to the first queued poller by an event. Every hand-out is remembered until the poller's
client acknowledges it (the `done` request ids its next poll carries): a poller that gave up
(timed out, cancelled) sends QueueCancel, which gives an item it was handed but never saw back
to the next poller or the front of the queue. So no item is lost to a gone waiter, and none is
handed out twice. A closed session's queued polls go; what it was handed counts as delivered.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import attrs

from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = ["QueueCancel", "QueueOffer", "QueuePeek", "QueuePoll", "QueueResource", "QueueSize"]


def _not_none(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        raise ValueError("a queue item cannot be None (None means 'no item')")


@attrs.frozen
class QueueOffer(ResourceCommand):
    """Append `item` (or hand it to the first waiting poller); returns None."""

    kind: ClassVar[str] = "queue"
    item: Any = attrs.field(default=None, validator=_not_none)


@attrs.frozen
class QueuePoll(ResourceCommand):
    """Take the first item: returns [item]. If the queue is empty, returns None and, if `wait`,
    queues the poll (a [queue, name, request, [item]] event follows). `done` acknowledges
    earlier polls of this session whose items its client received."""

    kind: ClassVar[str] = "queue"
    request: int = 0
    wait: bool = True
    done: tuple[int, ...] = ()


@attrs.frozen
class QueueCancel(ResourceCommand):
    """Give up poll `request`: returns True if it was still queued, False if it had been handed
    an item (now given back to the next poller or the front of the queue) or was unknown."""

    kind: ClassVar[str] = "queue"
    request: int = 0
    done: tuple[int, ...] = ()


@attrs.frozen
class QueuePeek(ResourceQuery):
    """[first item], or None if empty."""

    kind: ClassVar[str] = "queue"


@attrs.frozen
class QueueSize(ResourceQuery):
    """How many items wait in the queue."""

    kind: ClassVar[str] = "queue"


class QueueResource(Resource):
    kind: ClassVar[str] = "queue"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.items: deque[Any] = deque()
        self.pollers: deque[tuple[int, int]] = deque()
        self.handed: dict[tuple[int, int], Any] = {}
        """(session, request) -> the item handed to it, until acknowledged."""

    def offer(self, item: Any, host: Host) -> None:
        if not self._hand(item, host):
            self.items.append(item)

    def poll(self, session: int, op: QueuePoll, host: Host) -> list[Any] | None:
        self._ack(session, op.done)
        if self.items:
            item = self.items.popleft()
            self.handed[(session, op.request)] = item
            return [item]
        if op.wait and (session, op.request) not in self.pollers:
            self.pollers.append((session, op.request))
        return None

    def cancel(self, session: int, op: QueueCancel, host: Host) -> bool:
        self._ack(session, op.done)
        key = (session, op.request)
        if key in self.pollers:
            self.pollers.remove(key)
            return True
        if key in self.handed:
            item = self.handed.pop(key)
            if not self._hand(item, host):
                self.items.appendleft(item)
        return False

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, QueueOffer):
            return self.offer(op.item, host)
        if isinstance(op, QueuePoll):
            return self.poll(session, op, host)
        if isinstance(op, QueueCancel):
            return self.cancel(session, op, host)
        raise TypeError(f"not a queue command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        if isinstance(op, QueueSize):
            return len(self.items)
        return [self.items[0]] if self.items else None

    def on_close(self, session: int, host: Host) -> None:
        self.pollers = deque(p for p in self.pollers if p[0] != session)
        self.handed = {k: v for k, v in self.handed.items() if k[0] != session}

    def _hand(self, item: Any, host: Host) -> bool:
        """Give `item` to the first queued poller with an open session; whether there was one."""
        while self.pollers:
            session, request = self.pollers.popleft()
            if host.is_open(session):
                self.handed[(session, request)] = item
                host.publish(session, self.kind, self.name, request, [item])
                return True
        return False

    def _ack(self, session: int, done: tuple[int, ...]) -> None:
        for request in done:
            self.handed.pop((session, request), None)

    def idle(self) -> bool:
        return not self.items and not self.pollers and not self.handed

    def dump(self) -> list[Any]:
        handed = [[s, r, item] for (s, r), item in self.handed.items()]
        return [[list(self.items), [list(p) for p in self.pollers], handed]]

    def load(self, chunks: list[Any]) -> None:
        items, pollers, handed = chunks[0]
        self.items = deque(items)
        self.pollers = deque((s, r) for s, r in pollers)
        self.handed = {(s, r): item for s, r, item in handed}
