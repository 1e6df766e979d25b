"""The errors the resource handles raise, each saying what went wrong and what to do."""

from __future__ import annotations

from ...protocol.errors import CopycatError, ErrorType

__all__ = [
    "GroupMemberTakenError",
    "HandleBusyError",
    "LockNotHeldError",
    "LockTimeoutError",
    "ResourceError",
    "SessionEndedError",
    "WatchCompactedError",
]


class ResourceError(CopycatError):
    """Base of the resource handles' errors."""

    error_type = ErrorType.APPLICATION


class LockNotHeldError(ResourceError):
    """A release of a lock this handle does not hold (never acquired, released, or lost with
    its session)."""


class LockTimeoutError(ResourceError):
    """`Lock.acquire(timeout=...)` did not get the lock in time (and is no longer queued)."""


class HandleBusyError(ResourceError):
    """One handle holds one lock grant or candidacy at a time; use another handle for more."""


class SessionEndedError(ResourceError):
    """The client's session ended (expired, or closed) while a handle waited or watched: what
    the session held or waited for is released on the servers. Open a new client (or, with
    RecoveryStrategy.RECOVER, use the same one) and start again; a map watch resumes from the
    revision of the last change it yielded."""


class GroupMemberTakenError(ResourceError):
    """Another session already joined the group under this member id."""


class WatchCompactedError(ResourceError):
    """A watch asked to resume from a revision older than the map's history reaches back to:
    changes were dropped. Read the map afresh and watch from now (or from `oldest`)."""

    def __init__(self, message: str, *, since: int, oldest: int) -> None:
        super().__init__(message)
        self.since = since
        self.oldest = oldest
        """The oldest revision a watch can still resume from."""
