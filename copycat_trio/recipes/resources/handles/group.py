"""`Group(client, name)`: membership bound to sessions, with change events.

group = Group(client, "workers")
await group.join("worker-1", {"host": "a"})    # gone when this client's session ends
async with group.changes() as changes:
    async for change in changes:                # the members now as joins, then changes
        print(change.type, change.member)
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ....protocol.operations import Command
from ..errors import GroupMemberTakenError
from ..kinds.group import GroupJoin, GroupLeave, GroupMembers, GroupUnwatch, GroupWatch
from .common import Handle, Stream

__all__ = ["Group", "GroupChange", "GroupChanges", "GroupMember"]


@attrs.frozen
class GroupMember:
    """A member: its id, metadata, and the session it lives with."""

    member: str
    metadata: Any
    session: int


@attrs.frozen
class GroupChange:
    """A member joined (or updated its metadata) or left."""

    type: Literal["joined", "left"]
    member: str
    metadata: Any = None


class Group(Handle):
    """A named group of members."""

    kind = "group"

    async def join(self, member: str, metadata: Any = None) -> None:
        """Join as `member` with `metadata` (again: update the metadata). The member leaves
        when this client's session ends. Raises GroupMemberTakenError if another session
        holds that id."""
        if not await self._command(GroupJoin(self.name, member, metadata)):
            raise GroupMemberTakenError(
                f"member {member!r} of group {self.name!r} belongs to another session; "
                "pick another id, or wait for it to leave"
            )

    async def leave(self, member: str) -> bool:
        """Remove `member`; returns whether this session had joined it."""
        return bool(await self._command(GroupLeave(self.name, member)))

    async def members(self) -> dict[str, GroupMember]:
        """The members by id, in the order they joined."""
        listing = await self._query(GroupMembers(self.name))
        return {m: GroupMember(m, meta, s) for m, meta, s in listing}

    def changes(self) -> GroupChanges:
        """A "joined" change for each member now, then every join and leave."""
        return GroupChanges(self)


class GroupChanges(Stream[GroupChange]):
    """What `Group.changes` returns."""

    async def _register(self, request: int) -> list[GroupChange]:
        handle = self._handle
        listing = await handle.client.submit(GroupWatch(handle.name, request))
        return [GroupChange("joined", m, meta) for m, meta, _ in listing]

    def _deregister(self, request: int) -> Command:
        return GroupUnwatch(self._handle.name, request)

    def _convert(self, data: Any) -> GroupChange | None:
        change, member, metadata = data
        return GroupChange(change, member, metadata)
