"""The Resources state machine with a probe: what no command result shows, for the checks.

A command's result is in the applied records (`invariants.Applied`), which every member must
agree on. Two things a resource does are not: the events it publishes (a lock handed over to a
waiter, an item handed to a waiting poller, a change sent to a watcher) and the sessions it
closes (a session's end releases its lock). `ProbedResources` reports both, with the log index
they happened at, to a `ResourceProbe` shared by every member. Members apply the same log, so
they report the same facts; a fact is kept once, and a session closed at two different indices
is noted as a conflict (the invariant checker's log matching would fail first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..protocol.codec import registry
from ..recipes.resources import Resources
from ..recipes.resources.base import Host
from ..state_machine import ServerSession

__all__ = ["ProbedResources", "Published", "ResourceProbe", "resources_state"]


@attrs.frozen
class Published:
    """One resource event sent to an open session while the log index `index` applied:
    `payload` is [kind, name, request, data] as a tuple (data as the wire gives it back)."""

    index: int
    session: int
    kind: str
    name: str
    request: int
    data: Any


@attrs.define
class ResourceProbe:
    """What every member's ProbedResources reported, each fact once."""

    published: list[Published] = attrs.Factory(list)
    closes: dict[int, int] = attrs.Factory(dict)
    """Session id -> the log index of the entry that closed it (expiry or unregistration)."""
    conflicts: list[str] = attrs.Factory(list)
    _seen: set[tuple[int, int, str]] = attrs.Factory(set)

    def on_publish(self, index: int, session: int, payload: list[Any]) -> None:
        kind, name, request, data = registry.decode(registry.encode(payload))
        key = (index, session, repr(payload))
        if key not in self._seen:
            self._seen.add(key)
            self.published.append(Published(index, session, kind, name, request, data))

    def on_close(self, index: int, session: int) -> None:
        known = self.closes.setdefault(session, index)
        if known != index:
            self.conflicts.append(f"session {session} closed at index {known} and at {index}")


class _ProbedHost:
    """A base.Host that tells the probe of each event it delivers to an open session."""

    def __init__(self, inner: Host, report: Callable[[int, int, list[Any]], None]) -> None:
        self._inner = inner
        self._report = report

    @property
    def index(self) -> int:
        return self._inner.index

    @property
    def time(self) -> int:
        return self._inner.time

    def is_open(self, session_id: int) -> bool:
        return self._inner.is_open(session_id)

    def publish(self, session_id: int, kind: str, name: str, ident: int, data: Any) -> None:
        if self._inner.is_open(session_id):
            self._report(self._inner.index, session_id, [kind, name, ident, data])
        self._inner.publish(session_id, kind, name, ident, data)

    def publish_raw(self, session_id: int, event: str, payload: Any) -> None:
        self._inner.publish_raw(session_id, event, payload)

    def schedule_expiry(self, delay_ms: int, name: str, key: str, due: int) -> None:
        self._inner.schedule_expiry(delay_ms, name, key, due)

    def next_revision(self) -> int:
        return self._inner.next_revision()


class ProbedResources(Resources):
    """Resources reporting its published events and closed sessions to `probe`."""

    def __init__(self, probe: ResourceProbe) -> None:
        super().__init__()
        self.probe = probe
        self._host = _ProbedHost(self._host, probe.on_publish)  # type: ignore[assignment]

    def on_close(self, session: ServerSession) -> None:
        self.probe.on_close(self.context.index, session.id)
        super().on_close(session)


def resources_state(state_machine: Any) -> Any:
    """What must agree across members of a Resources: its snapshot, encoded."""
    written: list[bytes] = []

    class _Sink:
        def write(self, data: bytes) -> None:
            written.append(data)

        def write_object(self, value: Any) -> None:
            written.append(registry.encode(value))

    state_machine.snapshot(_Sink())
    return written
