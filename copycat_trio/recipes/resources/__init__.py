"""Named resources of the built-in kinds, served together by one `Resources` state machine.

Server side: `Resources` (the default of `copycat-trio serve`). Client side, each a handle
`(client, name)`: `Map`, `Counter`, `Lock`, `Election`, `Group`, `Queue`. See docs/resources.md.
"""

from . import wire as _wire  # noqa: F401  (registers every operation's wire tag)
from .errors import (
    GroupMemberTakenError,
    HandleBusyError,
    LockNotHeldError,
    LockTimeoutError,
    ResourceError,
    SessionEndedError,
    WatchCompactedError,
)
from .handles.counter import Counter
from .handles.election import Election, LeaderInfo
from .handles.group import Group, GroupChange, GroupMember
from .handles.lock import Lock, LockHolderInfo
from .handles.map import Map, MapChange
from .handles.queue import Queue
from .manager import DEFAULT, Resources

__all__ = [
    "DEFAULT",
    "Counter",
    "Election",
    "Group",
    "GroupChange",
    "GroupMember",
    "GroupMemberTakenError",
    "HandleBusyError",
    "LeaderInfo",
    "Lock",
    "LockHolderInfo",
    "LockNotHeldError",
    "LockTimeoutError",
    "Map",
    "MapChange",
    "Queue",
    "ResourceError",
    "Resources",
    "SessionEndedError",
    "WatchCompactedError",
]
