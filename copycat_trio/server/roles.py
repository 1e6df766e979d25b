"""An observable of a member's role, term and leader, for applications that embed a server
(Copycat's onStateChange, hashicorp/raft's LeaderCh): `async for change in server.watch_role()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import attrs
from trio_util import wait_any

if TYPE_CHECKING:
    from .loop import RaftLoop

__all__ = ["RoleChange", "watch_role"]


@attrs.frozen
class RoleChange:
    """Where a member stands: its role ("leader", "follower", "candidate", ...), its term and
    the leader it knows (None while it knows none)."""

    role: str
    term: int
    leader: int | None


async def watch_role(loop: RaftLoop) -> AsyncIterator[RoleChange]:
    """Yield the member's current RoleChange, then each change of role or leader (and the
    term with it). Changes that come and go while the caller is busy are coalesced: the
    caller always gets the latest, never a stale one twice. Runs until cancelled."""
    last: RoleChange | None = None
    while True:
        core = loop.core
        current = RoleChange(core.role.value, core.term, core.leader)
        if current != last:
            yield current
            last = current
        await wait_any(loop.role.wait_transition, loop.leader.wait_transition)
