"""`Queue(client, name)`: a work queue; each item goes to exactly one poller.

queue = Queue(client, "jobs")
await queue.offer({"id": 1})
item = await queue.poll()             # waits for an item
item = await queue.poll(timeout=5)    # None if none came within 5 s
"""

from __future__ import annotations

import math
from typing import Any

import trio

from ..kinds.queue import QueueCancel, QueueOffer, QueuePeek, QueuePoll, QueueSize
from .common import Handle, receive, router_of, submit_anyway

__all__ = ["Queue"]


class Queue(Handle):
    """A named FIFO queue. Items cannot be None."""

    kind = "queue"

    async def offer(self, item: Any) -> None:
        """Append `item` (it goes to the longest-waiting poller, if any)."""
        if item is None:
            raise ValueError("a queue item cannot be None (poll returns None for 'no item')")
        await self._command(QueueOffer(self.name, item))

    async def poll(self, timeout: float | None = None) -> Any:
        """Take the first item, waiting for one up to `timeout` seconds (None: forever; 0: do
        not wait); None if none came. A poll that times out or is cancelled withdraws, and an
        item handed to it meanwhile goes to the next poller: no item is lost or given twice."""
        router = router_of(self.client)
        request = router.new_request()
        done = router.done.pop(self.name, [])
        result: list[Any] | None = None
        settled = False
        try:
            with router.mailbox((self.kind, self.name, request)) as box:
                op = QueuePoll(self.name, request, timeout != 0, tuple(done))
                result = await self._command(op)
                done = []
                if result is None and timeout != 0:
                    with trio.move_on_after(math.inf if timeout is None else timeout):
                        result = await receive(self.client, box, f"polling {self!r}")
                settled = result is not None or timeout == 0
        finally:
            if done:  # the acknowledgements may not have applied: send them again later
                router.done.setdefault(self.name, []).extend(done)
            if not settled:
                await submit_anyway(
                    self.client, QueueCancel(self.name, request), f"withdraw from {self!r}"
                )
        if result is None:
            return None
        router.done.setdefault(self.name, []).append(request)
        return result[0]

    async def peek(self) -> Any:
        """The first item without taking it, or None if the queue is empty."""
        first = await self._query(QueuePeek(self.name))
        return None if first is None else first[0]

    async def size(self) -> int:
        """How many items wait (not counting those handed to pollers)."""
        return int(await self._query(QueueSize(self.name)))
