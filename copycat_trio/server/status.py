"""What a member reports about itself (`CopycatServer.status()`, the status request, metrics)
and what those reports read of it."""

from __future__ import annotations

from typing import Protocol

import attrs

from ..protocol.messages import Member
from ..storage.base import LogStorage
from .executor import Executor
from .loop import RaftLoop
from .observations import RequestCounts
from .options import ServerOptions


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


class MonitoredMember(Protocol):
    """What metrics and health read of a member (CopycatServer is one)."""

    id: int
    ready: bool
    storage: LogStorage
    options: ServerOptions
    request_counts: RequestCounts

    @property
    def cluster_id(self) -> str: ...

    @property
    def running(self) -> tuple[RaftLoop, Executor] | None: ...

    @property
    def removal(self) -> tuple[int, tuple[Member, ...]] | None: ...

    @property
    def is_leader(self) -> bool: ...

    def status(self) -> ServerStatus: ...
