"""A member's own requests to its cluster: joining it (seed 000's loop over the members it
was given), asking to be promoted until it is, and asking the current leader (leave,
transfer) wherever the leader is."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio

from ..protocol.errors import ConfigurationError, CopycatError, ErrorType, Status
from ..protocol.messages import JoinRequest, JoinResponse, Member, Response, error_of
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from .cluster_identity import ClusterIdentity
from .loop import RaftLoop

log = logging.getLogger(__name__)


class MemberRequests:
    """Sends this member's requests about itself to the cluster's leader."""

    def __init__(
        self,
        loop: RaftLoop,
        pool: ConnectionPool,
        dispatch: Callable[[object, None], Awaitable[Response]],
        identity: ClusterIdentity,
        nursery: trio.Nursery,
        election_timeout: float,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.dispatch = dispatch
        """This member's own request router (used when it leads)."""
        self.identity = identity
        self.nursery = nursery
        self.election_timeout = election_timeout

    async def ask_leader(self, body: object, timeout: float) -> object:
        """The leader's answer to `body` (answered here if this member leads), retried while
        no leader is known or reachable; TooSlowError after `timeout`."""
        loop = self.loop
        with trio.fail_after(timeout):
            while True:
                if loop.is_leader:
                    response: object = await self.dispatch(body, None)
                else:
                    leader = loop.core.leader
                    member = loop.core.member(leader) if leader is not None else None
                    if member is None:
                        await trio.sleep(0.05)
                        continue
                    try:
                        response = await self.pool.request(member.address, body, timeout)
                    except (RequestNotSent, ResponseLost):
                        await trio.sleep(0.05)
                        continue
                error = error_of(response)
                if error is not None and error.type is ErrorType.NO_LEADER:
                    await trio.sleep(0.05)
                    continue
                return response

    async def join(self, cluster: list[str], me: Member) -> None:
        """Seed 000's loop: ask each member in turn; retry every 2x election timeout."""
        retry = 2 * self.election_timeout
        attempt = 0
        while True:
            address = cluster[attempt % len(cluster)]
            attempt += 1
            try:
                response = await self.pool.request(address, JoinRequest(member=me), retry)
            except (RequestNotSent, ResponseLost) as exc:
                log.info("join via %s failed: %s", address, exc)
                await trio.sleep(retry if attempt % len(cluster) == 0 else 0)
                continue
            if isinstance(response, JoinResponse) and response.status is Status.OK:
                await self.identity.adopt(response.cluster_id, f"the join answer of {address}")
                for member in response.members:
                    self.loop.peers.learn(member.id, member.address)
                log.info("member %s joined at index %s", me.id, response.index)
                self.nursery.start_soon(self.until_promoted, me)
                return
            error = error_of(response)
            log.info("join via %s refused: %s", address, error)
            if error is not None and error.type is ErrorType.ILLEGAL_MEMBER_STATE:
                raise ConfigurationError(f"cannot join: {error.message}")
            await trio.sleep(retry if attempt % len(cluster) == 0 else 0.05)

    async def until_promoted(self, me: Member) -> None:
        """A member that joined to vote comes in as PASSIVE: keep asking until the leader,
        seeing it caught up, makes it ACTIVE."""
        while True:
            current = self.loop.core.member(me.id)
            if current is not None and current.type is me.type:
                return
            await trio.sleep(self.election_timeout)
            with contextlib.suppress(CopycatError, TimeoutError, trio.TooSlowError):
                await self.ask_leader(JoinRequest(member=me), 2 * self.election_timeout)
