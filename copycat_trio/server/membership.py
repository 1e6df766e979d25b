"""Membership on the leader: joins, leaves, promotions and demotions, leadership transfer, and
the automatic replacement of failed voters.

Every change is one configuration entry, one at a time (RaftCore.propose_configuration). A member
that asks to join as ACTIVE comes in as PASSIVE and is promoted only once its log is close to
the leader's, so adding a member never stalls commits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..core.raft import ConfigurationChangeError, NotLeaderError, Role
from ..protocol.errors import CopycatError, ErrorInfo, ErrorType, Status
from ..protocol.messages import (
    ConfigureRequest,
    ConfigureResponse,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    Member,
    MemberType,
    ReconfigureRequest,
    ReconfigureResponse,
    TransferRequest,
    TransferResponse,
)
from ..transport.rpc import ConnectionPool
from .forwarding import Forward
from .loop import RaftLoop

log = logging.getLogger(__name__)

REMOVAL_PUSHES = 10
"""How many times a leader tells a member it removed (every half election timeout)."""
CATCH_UP_MARGIN = 100
"""A member whose log is within this many entries of the leader's commit index is caught up."""


class MembershipService:
    """Configuration requests, answered by the leader (followers forward them)."""

    def __init__(
        self,
        loop: RaftLoop,
        pool: ConnectionPool,
        forward: Forward,
        *,
        election_timeout: float,
        replace_after: float | None,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.forward = forward
        self.election_timeout = election_timeout
        self.replace_after = replace_after
        self.removed: dict[int, tuple[Member, int]] = {}
        """Members this leader removed, with the pushes left to tell them (it replicates to
        them no more, so they would not learn it from the log)."""

    # --- helpers ---------------------------------------------------------------------------

    @property
    def core(self) -> Any:
        return self.loop.core

    def caught_up(self, member_id: int) -> bool:
        core = self.core
        progress = core.progress.get(member_id)
        return progress is not None and progress.match_index >= core.commit_index - CATCH_UP_MARGIN

    async def change(self, members: Sequence[Member]) -> ErrorInfo | None:
        """Commit a new configuration; None on success, else the reason."""
        try:
            pending = await self.loop.reconfigure(members)
        except CopycatError as exc:
            return exc.to_info()
        await pending.event.wait()
        return pending.error.to_info() if pending.error is not None else None

    def _with(self, member: Member) -> list[Member]:
        return [m for m in self.core.members if m.id != member.id] + [member]

    # --- requests --------------------------------------------------------------------------

    async def join(self, request: JoinRequest) -> JoinResponse:
        def error(info: ErrorInfo) -> JoinResponse:
            return JoinResponse(status=Status.ERROR, error=info)

        if not self.loop.is_leader:
            return await self.forward(request, JoinResponse, error)
        core = self.core
        joiner = request.member
        existing = core.member(joiner.id)
        if existing is not None and existing.address != joiner.address:
            return error(
                ErrorInfo(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    f"member id {joiner.id} is already used by {existing.address}",
                )
            )
        wanted = joiner.type
        target: MemberType | None = None
        if existing is None:
            # A voter-to-be starts without a vote until its log catches up.
            target = MemberType.PASSIVE if wanted is MemberType.ACTIVE else wanted
        elif existing.type is not wanted:
            if wanted is MemberType.ACTIVE and existing.type is MemberType.PASSIVE:
                if self.caught_up(joiner.id):
                    target = MemberType.ACTIVE
            elif wanted is MemberType.ACTIVE:
                target = MemberType.PASSIVE
            else:
                target = wanted
        if target is not None:
            failure = await self.change(self._with(attrs.evolve(joiner, type=target)))
            if failure is not None:
                return error(failure)
        return JoinResponse(
            status=Status.OK, index=core.configuration_index, term=core.term, members=core.members
        )

    async def leave(self, request: LeaveRequest) -> LeaveResponse:
        def error(info: ErrorInfo) -> LeaveResponse:
            return LeaveResponse(status=Status.ERROR, error=info)

        if not self.loop.is_leader:
            return await self.forward(request, LeaveResponse, error)
        core = self.core
        if core.member(request.member.id) is not None:
            remaining = [m for m in core.members if m.id != request.member.id]
            if not any(m.type is MemberType.ACTIVE for m in remaining):
                return error(ErrorInfo(ErrorType.CONFIGURATION, "the last voter cannot leave"))
            failure = await self.change(remaining)
            if failure is not None:
                return error(failure)
            self.removed[request.member.id] = (request.member, REMOVAL_PUSHES)
        return LeaveResponse(
            status=Status.OK, index=core.configuration_index, term=core.term, members=core.members
        )

    async def reconfigure(self, request: ReconfigureRequest) -> ReconfigureResponse:
        """Promote or demote a member (its type, and its priority)."""

        def error(info: ErrorInfo) -> ReconfigureResponse:
            return ReconfigureResponse(status=Status.ERROR, error=info)

        if not self.loop.is_leader:
            return await self.forward(request, ReconfigureResponse, error)
        core = self.core
        current = core.member(request.member.id)
        if current is None:
            return error(
                ErrorInfo(ErrorType.CONFIGURATION, f"member {request.member.id} is not a member")
            )
        wanted = request.member
        if (
            wanted.type is MemberType.ACTIVE
            and current.type is not MemberType.ACTIVE
            and not self.caught_up(wanted.id)
        ):
            return error(
                ErrorInfo(
                    ErrorType.CONFIGURATION,
                    f"member {wanted.id} is not caught up: make it PASSIVE and promote it once "
                    "its log is close to the leader's",
                )
            )
        voters = [m for m in core.members if m.type is MemberType.ACTIVE and m.id != wanted.id]
        if wanted.type is not MemberType.ACTIVE and not voters:
            return error(ErrorInfo(ErrorType.CONFIGURATION, "the last voter cannot be demoted"))
        updated = attrs.evolve(current, type=wanted.type, priority=wanted.priority)
        if updated != current:
            failure = await self.change(self._with(updated))
            if failure is not None:
                return error(failure)
        return ReconfigureResponse(
            status=Status.OK, index=core.configuration_index, term=core.term, members=core.members
        )

    async def transfer(self, request: TransferRequest) -> TransferResponse:
        def error(info: ErrorInfo) -> TransferResponse:
            return TransferResponse(status=Status.ERROR, error=info)

        if not self.loop.is_leader:
            return await self.forward(request, TransferResponse, error)
        try:
            await self.loop.call(lambda c, now: c.transfer_leadership(request.member, now))
        except (ConfigurationChangeError, NotLeaderError) as exc:
            return error(ErrorInfo(ErrorType.CONFIGURATION, str(exc)))
        with trio.move_on_after(2 * self.election_timeout):
            await self.loop.leader.wait_value(lambda leader: leader == request.member)
        leader = self.core.leader
        if leader != request.member:
            return TransferResponse(
                status=Status.ERROR,
                error=ErrorInfo(
                    ErrorType.NO_LEADER, f"transfer to {request.member} did not finish"
                ),
                leader=leader,
            )
        return TransferResponse(status=Status.OK, leader=leader)

    # --- the leader's duties -----------------------------------------------------------------

    async def push_configuration(self) -> None:
        """RESERVE members get no log: tell them the configuration (and who leads) directly."""
        while True:
            core = self.core
            if core.role is Role.LEADER:
                request = ConfigureRequest(
                    term=core.term,
                    leader=core.id,
                    index=core.configuration_index,
                    timestamp=0,
                    members=core.members,
                )
                silent = self.loop.silent_for(self.loop.clock())
                for member in core.members:
                    # RESERVE members get no log; a member that has not answered for an
                    # election timeout may not know where the leader is (it joined, or the
                    # entry naming the leader was compacted away before it could see it).
                    quiet = silent.get(member.id, 0.0) > self.election_timeout
                    if member.id != core.id and (member.type is MemberType.RESERVE or quiet):
                        try:
                            answer = await self.pool.request(
                                member.address, request, self.election_timeout / 2
                            )
                        except CopycatError:
                            continue
                        except ConnectionError:
                            continue
                        if isinstance(answer, ConfigureResponse) and answer.error is None:
                            self.loop.heard_from(member.id)
                for member_id, (member, left) in list(self.removed.items()):
                    if core.member(member_id) is not None or left <= 0:
                        del self.removed[member_id]  # added again, or never answered
                        continue
                    self.removed[member_id] = (member, left - 1)
                    with contextlib.suppress(CopycatError, ConnectionError):
                        answer = await self.pool.request(
                            member.address, request, self.election_timeout / 2
                        )
                        if isinstance(answer, ConfigureResponse) and answer.error is None:
                            del self.removed[member_id]
            await trio.sleep(self.election_timeout / 2)

    async def replace_failed(self) -> None:
        """Keep the number of voters: when a voter has been unreachable for `replace_after` and
        a standby (PASSIVE or RESERVE) is reachable, bring the standby up (RESERVE -> PASSIVE ->
        ACTIVE, once caught up) and then demote the failed voter to RESERVE."""
        if self.replace_after is None:
            return
        while True:
            await trio.sleep(self.election_timeout / 2)
            core = self.core
            if core.role is not Role.LEADER:
                continue
            silent = self.loop.silent_for(self.loop.clock())
            failed = [
                m
                for m in core.members
                if m.type is MemberType.ACTIVE
                and m.id != core.id
                and silent.get(m.id, 0.0) > self.replace_after
            ]
            if not failed:
                continue
            standbys = sorted(
                (
                    m
                    for m in core.members
                    if m.type in (MemberType.PASSIVE, MemberType.RESERVE)
                    and silent.get(m.id, 0.0) < self.election_timeout
                ),
                key=lambda m: (m.type is not MemberType.PASSIVE, -m.priority, m.id),
            )
            if not standbys:
                continue
            standby = standbys[0]
            if standby.type is MemberType.RESERVE:
                step = attrs.evolve(standby, type=MemberType.PASSIVE)
            elif self.caught_up(standby.id):
                step = attrs.evolve(standby, type=MemberType.ACTIVE)
            else:
                continue  # let it catch up first
            log.info(
                "replacing failed member %s: %s -> %s", failed[0].id, standby.id, step.type.name
            )
            failure = await self.change(self._with(step))
            if failure is None and step.type is MemberType.ACTIVE:
                demoted = attrs.evolve(failed[0], type=MemberType.RESERVE)
                log.info("demoting failed member %s to RESERVE", failed[0].id)
                await self.change(self._with(demoted))


def configure_response(ok: bool, message: str = "") -> ConfigureResponse:
    if ok:
        return ConfigureResponse(status=Status.OK)
    return ConfigureResponse(
        status=Status.ERROR, error=ErrorInfo(ErrorType.ILLEGAL_MEMBER_STATE, message)
    )
