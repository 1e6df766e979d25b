"""`Election(client, name)`: leader election among clients, with terms as fencing tokens.

election = Election(client, "scheduler")
term = await election.campaign("node-a")   # returns once this handle leads
...
await election.resign()

async with election.observe() as leaders:
    async for leader in leaders:           # the leader now, then each change
        print(leader)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from ....protocol.operations import Command, Consistency
from ..errors import HandleBusyError
from ..kinds.election import (
    ElectionCampaign,
    ElectionLeader,
    ElectionObserve,
    ElectionResign,
    ElectionUnobserve,
)
from .common import Handle, Stream, receive, router_of, submit_anyway

if TYPE_CHECKING:
    from ....client.client import CopycatClient

__all__ = ["Election", "LeaderInfo", "LeaderStream"]


@attrs.frozen
class LeaderInfo:
    """A leadership: the leader's session, its proposal, and the term, which is the log index
    of the command that elected it (larger for every later leadership: a fencing token)."""

    session: int
    proposal: Any
    term: int


def _leader(data: Any) -> LeaderInfo | None:
    return None if data is None else LeaderInfo(data[0], data[1], data[2])


class Election(Handle):
    """A named election; one handle is one candidate at a time."""

    kind = "election"

    def __init__(
        self,
        client: CopycatClient,
        name: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> None:
        super().__init__(client, name, consistency=consistency)
        self._request: int | None = None
        self.term: int | None = None
        """The term of this handle's leadership while it leads."""

    async def campaign(self, proposal: Any = None) -> int:
        """Stand with `proposal` and wait until elected (candidates are served in arrival
        order); returns the term. Cancelling it withdraws the candidacy."""
        if self._request is not None:
            raise HandleBusyError(
                f"this handle already campaigns in or leads {self.name!r}; resign first"
            )
        router = router_of(self.client)
        request = self._request = router.new_request()
        term: int | None = None
        try:
            with router.mailbox((self.kind, self.name, request)) as box:
                term = await self._command(ElectionCampaign(self.name, request, proposal))
                if term is None:
                    term = int(await receive(self.client, box, f"campaigning in {self!r}"))
        finally:
            if term is None:
                self._request = None
                await submit_anyway(
                    self.client, ElectionResign(self.name, request), f"withdraw from {self!r}"
                )
        self.term = term
        return term

    async def resign(self) -> bool:
        """Step down; returns whether this handle was still leading (False: it lost the
        leadership with its session, or never had it)."""
        request, self._request, self.term = self._request, None, None
        if request is None:
            return False
        with trio.CancelScope(shield=True):
            resigned = await self._command(ElectionResign(self.name, request))
        return bool(resigned)

    async def leader(self) -> LeaderInfo | None:
        """The current leader, or None."""
        return _leader(await self._query(ElectionLeader(self.name)))

    def observe(self) -> LeaderStream:
        """The leader now, then the leader after each change (None while there is none)."""
        return LeaderStream(self)


class LeaderStream(Stream[LeaderInfo | None]):
    """What `Election.observe` returns."""

    async def _register(self, request: int) -> list[LeaderInfo | None]:
        handle = self._handle
        return [_leader(await handle.client.submit(ElectionObserve(handle.name, request)))]

    def _deregister(self, request: int) -> Command:
        return ElectionUnobserve(self._handle.name, request)

    async def __anext__(self) -> LeaderInfo | None:
        await self.start()
        if self._pending:
            return self._pending.popleft()
        if self._closed or self._box is None:
            raise StopAsyncIteration
        return _leader(await receive(self._handle.client, self._box, f"{self} ran"))
