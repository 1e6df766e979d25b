"""What a member reports about itself: `CopycatServer.status()`, the status request, metrics."""

from __future__ import annotations

import attrs

from ..protocol.messages import Member


@attrs.frozen
class ServerStatus:
    """A member's view of itself and the cluster."""

    id: int
    role: str
    term: int
    leader: int | None
    commit_index: int
    applied_index: int
    last_log_index: int
    members: tuple[Member, ...]
    unavailable: tuple[int, ...] = ()
    """On the leader: members not heard from for an election timeout."""
    cluster_id: str = ""
    """The cluster's id ("" until this member knows it)."""
