"""A named lock: one holder at a time, first come first served, with fencing tokens.

The token of a grant is the log index of the command that granted it (the acquire itself, or
the release, cancel or session close that handed the lock on), so tokens only grow. Waiters are
(session, request id) pairs; a session's grant and queue places go when it closes. Request id
0 is the older `recipes.lock` protocol (reentrant per session, told by LOCK_EVENT).
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import attrs

from ...lock import LOCK_EVENT
from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = ["LockAcquire", "LockCancel", "LockHolder", "LockRelease", "LockResource"]

LEGACY = 0
"""The request id of operations from the older lock recipe."""


@attrs.frozen
class LockAcquire(ResourceCommand):
    """Take the lock if free: returns the fencing token. Else, if `wait`, queue for it
    (returns None; a [lock, name, request, token] event follows), or return None at once."""

    kind: ClassVar[str] = "lock"
    request: int = 0
    wait: bool = True


@attrs.frozen
class LockRelease(ResourceCommand):
    """Release the grant of `request`; returns whether it held the lock."""

    kind: ClassVar[str] = "lock"
    request: int = 0


@attrs.frozen
class LockCancel(ResourceCommand):
    """Give up `request`: leave the queue, or release the lock if it was granted meanwhile.
    Returns whether it was still waiting (False: it was granted and is now released, or
    unknown)."""

    kind: ClassVar[str] = "lock"
    request: int = 0


@attrs.frozen
class LockHolder(ResourceQuery):
    """[session id, fencing token] of the holder, or None when free."""

    kind: ClassVar[str] = "lock"


class LockResource(Resource):
    kind: ClassVar[str] = "lock"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.holder: tuple[int, int, int] | None = None
        """(session, request, token) of the grant."""
        self.waiters: deque[tuple[int, int]] = deque()

    def acquire(self, session: int, request: int, wait: bool, host: Host) -> int | None:
        if self.holder is None:
            self.holder = (session, request, host.index)
            return host.index
        if request == LEGACY and self.holder[:2] == (session, LEGACY):
            return self.holder[2]
        if wait and (session, request) not in self.waiters:
            self.waiters.append((session, request))
        return None

    def release(self, session: int, request: int, host: Host) -> bool:
        if self.holder is None or self.holder[:2] != (session, request):
            return False
        self._hand_over(host)
        return True

    def cancel(self, session: int, request: int, host: Host) -> bool:
        if (session, request) in self.waiters:
            self.waiters.remove((session, request))
            return True
        self.release(session, request, host)
        return False

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, LockAcquire):
            return self.acquire(session, op.request, op.wait, host)
        if isinstance(op, LockRelease):
            return self.release(session, op.request, host)
        if isinstance(op, LockCancel):
            return self.cancel(session, op.request, host)
        raise TypeError(f"not a lock command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        return None if self.holder is None else [self.holder[0], self.holder[2]]

    def on_close(self, session: int, host: Host) -> None:
        self.waiters = deque(w for w in self.waiters if w[0] != session)
        if self.holder is not None and self.holder[0] == session:
            self._hand_over(host)

    def _hand_over(self, host: Host) -> None:
        """Grant the lock to the first waiter whose session is open, at this index."""
        self.holder = None
        while self.waiters:
            session, request = self.waiters.popleft()
            if not host.is_open(session):
                continue
            self.holder = (session, request, host.index)
            if request == LEGACY:
                host.publish_raw(session, LOCK_EVENT, self.name)
            else:
                host.publish(session, self.kind, self.name, request, host.index)
            return

    def idle(self) -> bool:
        return self.holder is None and not self.waiters

    def dump(self) -> list[Any]:
        return [[list(self.holder) if self.holder else None, [list(w) for w in self.waiters]]]

    def load(self, chunks: list[Any]) -> None:
        holder, waiters = chunks[0]
        self.holder = (holder[0], holder[1], holder[2]) if holder else None
        self.waiters = deque((s, r) for s, r in waiters)
