"""`Lock(client, name)`: a fair distributed lock with fencing tokens.

    async with Lock(client, "jobs") as token:
        await storage.write(data, fencing_token=token)

The token is the log index of the command that granted the lock: every later grant of the same
lock has a larger one, so a resource that remembers the largest token it has seen refuses a
paused former holder. The lock is released when the block ends or the session ends.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import attrs
import trio

from ....protocol.errors import CopycatError
from ....protocol.operations import Consistency
from ..errors import HandleBusyError, LockNotHeldError, LockTimeoutError
from ..kinds.lock import LockAcquire, LockCancel, LockHolder, LockRelease
from .common import Handle, receive, router_of, submit_anyway

if TYPE_CHECKING:
    from ....client.client import CopycatClient

__all__ = ["Lock", "LockHolderInfo"]

log = logging.getLogger(__name__)


@attrs.frozen
class LockHolderInfo:
    """Who holds a lock: the session and the fencing token of its grant."""

    session: int
    token: int


class Lock(Handle):
    """A named lock; one handle holds at most one grant at a time."""

    kind = "lock"

    def __init__(
        self,
        client: CopycatClient,
        name: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> None:
        super().__init__(client, name, consistency=consistency)
        self._request: int | None = None
        self.token: int | None = None
        """The fencing token of this handle's grant while it holds the lock."""

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait (first come, first served) until this handle holds the lock; returns the
        fencing token. Raises LockTimeoutError if `timeout` seconds pass first."""
        token = await self._acquire(timeout)
        if token is None:
            raise LockTimeoutError(f"lock {self.name!r} was not granted within {timeout}s")
        return token

    async def try_acquire(self, timeout: float = 0.0) -> int | None:
        """Take the lock if it is free, or wait up to `timeout` seconds for it; returns the
        fencing token, or None if it was not granted (then this handle is not queued)."""
        return await self._acquire(timeout)

    async def _acquire(self, timeout: float | None) -> int | None:
        if self._request is not None:
            raise HandleBusyError(
                f"this handle already holds or is acquiring lock {self.name!r}; "
                "release it first, or use another Lock handle"
            )
        router = router_of(self.client)
        request = self._request = router.new_request()
        token: int | None = None
        settled = False
        try:
            with router.mailbox((self.kind, self.name, request)) as box:
                token = await self._command(LockAcquire(self.name, request, timeout != 0))
                if token is None and timeout != 0:
                    with trio.move_on_after(math.inf if timeout is None else timeout):
                        token = int(await receive(self.client, box, f"waiting for {self!r}"))
                settled = token is not None or timeout == 0
        finally:
            if token is None:
                self._request = None
            if not settled:
                # Leave the queue; if the grant came meanwhile (or a cancelled acquire applied
                # and took the lock unseen), this releases it to the next waiter.
                await submit_anyway(
                    self.client, LockCancel(self.name, request), f"withdraw from {self!r}"
                )
        self.token = token
        return token

    async def release(self) -> None:
        """Release this handle's grant; raises LockNotHeldError if it held none (or lost it
        with its session)."""
        request, self._request, self.token = self._request, None, None
        if request is None:
            raise LockNotHeldError(f"this handle does not hold lock {self.name!r}")
        if not await self._command(LockRelease(self.name, request)):
            raise LockNotHeldError(
                f"lock {self.name!r} was no longer held by this session (did its session "
                "expire?): the work done under it may have overlapped another holder's"
            )

    async def holder(self) -> LockHolderInfo | None:
        """The holder's session and fencing token, or None if the lock is free."""
        held = await self._query(LockHolder(self.name))
        return None if held is None else LockHolderInfo(held[0], held[1])

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.release()
            except CopycatError as exc:
                if exc_type is None:
                    raise
                log.info("could not release %r after its block failed: %s", self, exc)
