"""A distributed lock: held by one session at a time, released when its session closes or
expires, waiters woken in order by an event (never by polling).

    lock = Lock(client, "jobs")
    await lock.acquire()
    try: ...
    finally: await lock.release()

Serve `LockStateMachine` (or a subclass) on the cluster.
"""

from __future__ import annotations

from collections import deque

import attrs

from ..client.client import CopycatClient
from ..protocol.codec import registry
from ..protocol.operations import Command, Query
from ..state_machine import Commit, ServerSession, StateMachine
from .queueing import next_live_session, require_client, require_session

__all__ = ["Acquire", "Holder", "Lock", "LockStateMachine", "Release"]

LOCK_EVENT = "copycat.lock.acquired"


@attrs.frozen
class Acquire(Command):
    """Take the lock if free (returns True) or queue for it (returns False; an event follows)."""

    name: str


@attrs.frozen
class Release(Command):
    """Give the lock up (returns whether this session held it); the next waiter gets it."""

    name: str


@attrs.frozen
class Holder(Query):
    """The id of the session holding the lock, or None."""

    name: str


class LockStateMachine(StateMachine):
    """Named locks with FIFO queues of waiting sessions."""

    def __init__(self) -> None:
        self.holders: dict[str, int] = {}
        self.waiters: dict[str, deque[int]] = {}

    def acquire(self, commit: Commit[Acquire]) -> bool:
        session = _session(commit)
        name = commit.operation.name
        holder = self.holders.get(name)
        if holder is None or holder == session.id:
            self.holders[name] = session.id
            return True
        queue = self.waiters.setdefault(name, deque())
        if session.id not in queue:
            queue.append(session.id)
        return False

    def release(self, commit: Commit[Release]) -> bool:
        session = _session(commit)
        name = commit.operation.name
        if self.holders.get(name) != session.id:
            return False
        self._hand_over(name)
        return True

    def holder(self, commit: Commit[Holder]) -> int | None:
        return self.holders.get(commit.operation.name)

    def on_close(self, session: ServerSession) -> None:
        for queue in self.waiters.values():
            if session.id in queue:
                queue.remove(session.id)
        for name in [n for n, holder in self.holders.items() if holder == session.id]:
            self._hand_over(name)

    def _hand_over(self, name: str) -> None:
        del self.holders[name]
        waiter = next_live_session(self.waiters.get(name, deque()), self.context.sessions)
        if waiter is not None:
            self.holders[name] = waiter.id
            waiter.publish(LOCK_EVENT, name)


def _session(commit: Commit[object]) -> ServerSession:
    return require_session(commit, "locks")


class Lock:
    """The client side of one named lock."""

    def __init__(self, client: CopycatClient, name: str) -> None:
        self.client = require_client(client, "Lock")
        self.name = name

    async def acquire(self) -> None:
        """Wait until this session holds the lock."""
        async with self.client.events(LOCK_EVENT) as events:
            if await self.client.submit(Acquire(self.name)):
                return
            async for event in events:
                if event.payload == self.name:
                    return

    async def release(self) -> bool:
        return bool(await self.client.submit(Release(self.name)))


registry.register(Acquire, 33020, builtin=True)
registry.register(Release, 33021, builtin=True)
registry.register(Holder, 33022, builtin=True)
