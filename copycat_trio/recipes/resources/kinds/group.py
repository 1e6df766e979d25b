"""A named group: members (an id and metadata) bound to the session that joined them.

A member leaves when asked or when its session closes (ZooKeeper's ephemeral nodes). Watchers
hear each join and leave as [group, name, request, [change, member, metadata]] events.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = [
    "GroupJoin",
    "GroupLeave",
    "GroupMembers",
    "GroupResource",
    "GroupUnwatch",
    "GroupWatch",
]

JOINED = "joined"
LEFT = "left"


@attrs.frozen
class GroupJoin(ResourceCommand):
    """Join as `member` (or update its metadata); returns False if another session holds it."""

    kind: ClassVar[str] = "group"
    member: str = attrs.field(default="", validator=attrs.validators.min_len(1))
    metadata: Any = None


@attrs.frozen
class GroupLeave(ResourceCommand):
    """Remove `member` if this session joined it; returns whether it did."""

    kind: ClassVar[str] = "group"
    member: str = ""


@attrs.frozen
class GroupWatch(ResourceCommand):
    """Hear of joins and leaves from now on; returns the members now, as GroupMembers does."""

    kind: ClassVar[str] = "group"
    request: int = 0


@attrs.frozen
class GroupUnwatch(ResourceCommand):
    """Stop the watcher `request`; returns whether it was watching."""

    kind: ClassVar[str] = "group"
    request: int = 0


@attrs.frozen
class GroupMembers(ResourceQuery):
    """The members in the order they joined: [[member, metadata, session id], ...]."""

    kind: ClassVar[str] = "group"


class GroupResource(Resource):
    kind: ClassVar[str] = "group"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.members: dict[str, tuple[int, Any]] = {}
        """member -> (session, metadata), in join order."""
        self.watchers: dict[tuple[int, int], None] = {}

    def listing(self) -> list[list[Any]]:
        return [[member, meta, session] for member, (session, meta) in self.members.items()]

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, GroupJoin):
            held = self.members.get(op.member)
            if held is not None and held[0] != session:
                return False
            self.members[op.member] = (session, op.metadata)
            self._tell(host, [JOINED, op.member, op.metadata])
            return True
        if isinstance(op, GroupLeave):
            held = self.members.get(op.member)
            if held is None or held[0] != session:
                return False
            self._leave(op.member, host)
            return True
        if isinstance(op, GroupWatch):
            self.watchers[(session, op.request)] = None
            return self.listing()
        if isinstance(op, GroupUnwatch):
            return self.watchers.pop((session, op.request), False) is None
        raise TypeError(f"not a group command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        return self.listing()

    def on_close(self, session: int, host: Host) -> None:
        self.watchers = {w: None for w in self.watchers if w[0] != session}
        for member in [m for m, (s, _) in self.members.items() if s == session]:
            self._leave(member, host)

    def _leave(self, member: str, host: Host) -> None:
        del self.members[member]
        self._tell(host, [LEFT, member, None])

    def _tell(self, host: Host, change: list[Any]) -> None:
        for session, request in self.watchers:
            host.publish(session, self.kind, self.name, request, change)

    def idle(self) -> bool:
        return not self.members and not self.watchers

    def dump(self) -> list[Any]:
        return [[self.listing(), [list(w) for w in self.watchers]]]

    def load(self, chunks: list[Any]) -> None:
        members, watchers = chunks[0]
        self.members = {m: (s, meta) for m, meta, s in members}
        self.watchers = {(s, r): None for s, r in watchers}
