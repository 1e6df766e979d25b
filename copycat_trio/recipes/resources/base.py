"""What every resource kind shares: the operation bases (each names its resource), the host a
resource publishes events and schedules timers through, and the Resource base class.

A resource is plain, deterministic state: the manager hands it each operation with the host,
which knows the log index and time being applied and the open sessions. Resources never touch
the server or the event loop, so they snapshot as plain data.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import attrs

from ...protocol.operations import Command, Query

__all__ = [
    "EVENT",
    "Host",
    "Resource",
    "ResourceCommand",
    "ResourceQuery",
    "check_name",
    "need_session",
]

EVENT = "copycat.resources"
"""The name of every event a resource publishes; the payload is [kind, name, id, data]."""


def check_name(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Resource names are non-empty strings."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, not {value!r}")


@attrs.frozen
class ResourceCommand(Command):
    """A command on the resource of its kind called `name` (created on first use)."""

    kind: ClassVar[str] = ""
    name: str = attrs.field(validator=check_name)


@attrs.frozen
class ResourceQuery(Query):
    """A query on the resource of its kind called `name` (absent reads as empty)."""

    kind: ClassVar[str] = ""
    name: str = attrs.field(validator=check_name)


class Host(Protocol):
    """The manager as a resource sees it while one operation (or timer, or close) applies."""

    @property
    def index(self) -> int:
        """The log index being applied (the last applied one, in a timer or a query)."""
        ...

    @property
    def time(self) -> int:
        """Log time in milliseconds: the same on every member."""
        ...

    def is_open(self, session_id: int) -> bool:
        """Whether the session is still open."""
        ...

    def publish(self, session_id: int, kind: str, name: str, ident: int, data: Any) -> None:
        """Send [kind, name, ident, data] to the session as an EVENT (if it is open)."""
        ...

    def publish_raw(self, session_id: int, event: str, payload: Any) -> None:
        """Send an event of another name (the older recipes' events)."""
        ...

    def schedule_expiry(self, delay_ms: int, name: str, key: str, due: int) -> None:
        """Call the map `name`'s expire(key, due) once log time has advanced delay_ms."""
        ...

    def next_revision(self) -> int:
        """The next revision number of a map change, unique and increasing across all maps."""
        ...


class Resource:
    """One named resource: applies its kind's operations, forgets closed sessions, snapshots."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        self.name = name

    def command(self, op: Any, session: int, host: Host) -> Any:
        """Apply a command of this kind from `session`; returns its result."""
        raise NotImplementedError

    def query(self, op: Any, host: Host) -> Any:
        """Answer a query of this kind."""
        raise NotImplementedError

    def on_close(self, session: int, host: Host) -> None:
        """The session closed or expired: release what it held, drop what it waited for."""

    def idle(self) -> bool:
        """Whether it holds nothing a fresh one would not: then the manager forgets it (so
        names used once do not pile up)."""
        return False

    def dump(self) -> list[Any]:
        """The state as a list of plain-data chunks (written one object each)."""
        raise NotImplementedError

    def load(self, chunks: list[Any]) -> None:
        """Replace the state with what `dump` wrote."""
        raise NotImplementedError


def need_session(session: int | None, what: str) -> int:
    """The submitting session's id; session-bound operations cannot run without one."""
    if session is None:
        raise ValueError(f"{what} needs a client session")
    return session
