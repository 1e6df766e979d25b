"""`Resources`: one state machine hosting any number of named resources of the built-in kinds.

Resources are keyed by (kind, name) and created by the first command on them; a query on one
that does not exist reads a fresh, empty one (and creates nothing: queries change no state).
The older recipes' operations work too: kv's Put/Get/... on the map DEFAULT, the counter's
Increment/Value on the counter DEFAULT, the lock's and election's on their named resources.
Everything, session-bound state and TTL timers included, goes into snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...state_machine import (
    Commit,
    ServerSession,
    SnapshotSink,
    SnapshotSource,
    Snapshottable,
    StateMachine,
)
from .. import counter as legacy_counter
from .. import election as legacy_election
from .. import kv
from .. import lock as legacy_lock
from . import wire as _wire  # noqa: F401  (registers the operations' wire tags)
from .base import EVENT, Resource, ResourceCommand, ResourceQuery, need_session
from .kinds.counter import CounterResource
from .kinds.election import ElectionResource
from .kinds.group import GroupResource
from .kinds.lock import LEGACY, LockResource
from .kinds.map import HISTORY, MapResource
from .kinds.queue import QueueResource

__all__ = ["DEFAULT", "KINDS", "Resources"]

DEFAULT = "default"
"""The map the key-value operations use, and the counter Increment/Value use."""

KINDS: dict[str, Callable[[str], Resource]] = {
    "map": MapResource,
    "counter": CounterResource,
    "lock": LockResource,
    "election": ElectionResource,
    "group": GroupResource,
    "queue": QueueResource,
}

SNAPSHOT_VERSION = 1


class _Host:
    """The manager's side of `base.Host`, reading the server's context."""

    def __init__(self, manager: Resources) -> None:
        self._manager = manager

    @property
    def index(self) -> int:
        return self._manager.context.index

    @property
    def time(self) -> int:
        return self._manager.context.time

    def is_open(self, session_id: int) -> bool:
        return session_id in self._manager.context.sessions

    def publish(self, session_id: int, kind: str, name: str, ident: int, data: Any) -> None:
        self.publish_raw(session_id, EVENT, [kind, name, ident, data])

    def publish_raw(self, session_id: int, event: str, payload: Any) -> None:
        session = self._manager.context.sessions.get(session_id)
        if session is not None:
            session.publish(event, payload)

    def schedule_expiry(self, delay_ms: int, name: str, key: str, due: int) -> None:
        manager = self._manager
        manager.context.schedule(delay_ms, manager.expire_key, name, key, due)

    def next_revision(self) -> int:
        self._manager.revision += 1
        return self._manager.revision


class Resources(StateMachine, Snapshottable):
    """Named maps, counters, locks, elections, groups and queues in one state machine.

    `map_history` bounds the changes each map keeps for watches to resume from.
    """

    def __init__(self, map_history: int = HISTORY) -> None:
        self.resources: dict[tuple[str, str], Resource] = {}
        self.revision = 0
        """The revision of the latest map change (all maps share one sequence)."""
        self.map_history = map_history
        self._host = _Host(self)

    def _new(self, kind: str, name: str) -> Resource:
        if kind == "map":
            return MapResource(name, self.map_history)
        return KINDS[kind](name)

    def _resource(self, kind: str, name: str) -> Any:
        """The resource, created if absent (commands only)."""
        resource = self.resources.get((kind, name))
        if resource is None:
            resource = self.resources[(kind, name)] = self._new(kind, name)
        return resource

    def _existing(self, kind: str, name: str) -> Any:
        """The resource, or a fresh one not kept (queries only)."""
        return self.resources.get((kind, name)) or self._new(kind, name)

    # --- the resource operations -----------------------------------------------------------

    def resource_command(self, commit: Commit[ResourceCommand]) -> Any:
        op = commit.operation
        session = need_session(commit.session.id if commit.session else None, type(op).__name__)
        resource = self._resource(op.kind, op.name)
        try:
            return resource.command(op, session, self._host)
        finally:
            self._forget_if_idle(resource)

    def resource_query(self, commit: Commit[ResourceQuery]) -> Any:
        op = commit.operation
        return self._existing(op.kind, op.name).query(op, self._host)

    def on_close(self, session: ServerSession) -> None:
        for resource in list(self.resources.values()):
            resource.on_close(session.id, self._host)
            self._forget_if_idle(resource)

    def _forget_if_idle(self, resource: Resource) -> None:
        if resource.idle():
            self.resources.pop((resource.kind, resource.name), None)

    def expire_key(self, name: str, key: str, due: int) -> None:
        """A TTL timer (scheduled by the map `name`; its arguments go into snapshots)."""
        resource = self.resources.get(("map", name))
        if isinstance(resource, MapResource):
            resource.expire(key, due, self._host)

    # --- the older recipes' operations -----------------------------------------------------

    def _default_map(self) -> MapResource:
        resource: MapResource = self._resource("map", DEFAULT)
        return resource

    def kv_put(self, commit: Commit[kv.Put]) -> Any:
        op = commit.operation
        if op.value is None:  # as KeyValueStore: None means absent
            return self._default_map().delete(op.key, self._host)
        return self._default_map().put(op.key, op.value, None, self._host)

    def kv_get(self, commit: Commit[kv.Get]) -> Any:
        return self._existing("map", DEFAULT).get(commit.operation.key, self._host)

    def kv_delete(self, commit: Commit[kv.Delete]) -> Any:
        return self._default_map().delete(commit.operation.key, self._host)

    def kv_compare_and_set(self, commit: Commit[kv.CompareAndSet]) -> bool:
        op = commit.operation
        return self._default_map().compare_and_set(op.key, op.expected, op.new, None, self._host)

    def kv_keys(self, commit: Commit[kv.Keys]) -> list[str]:
        op = commit.operation  # a prefix and a limit, if this version's Keys has them
        prefix, limit = getattr(op, "prefix", ""), getattr(op, "limit", None)
        keys: list[str] = self._existing("map", DEFAULT).keys(prefix, limit, self._host)
        return keys

    def kv_size(self, commit: Commit[kv.Size]) -> int:
        return len(self._existing("map", DEFAULT).keys("", None, self._host))

    def counter_increment(self, commit: Commit[legacy_counter.Increment]) -> int:
        counter: CounterResource = self._resource("counter", DEFAULT)
        value = counter.add(commit.operation.delta)
        self._forget_if_idle(counter)
        return value

    def counter_value(self, commit: Commit[legacy_counter.Value]) -> int:
        counter: CounterResource = self._existing("counter", DEFAULT)
        return counter.value

    def lock_acquire(self, commit: Commit[legacy_lock.Acquire]) -> bool:
        session = need_session(commit.session.id if commit.session else None, "Acquire")
        lock: LockResource = self._resource("lock", commit.operation.name)
        return lock.acquire(session, LEGACY, True, self._host) is not None

    def lock_release(self, commit: Commit[legacy_lock.Release]) -> bool:
        session = need_session(commit.session.id if commit.session else None, "Release")
        lock: LockResource = self._resource("lock", commit.operation.name)
        released = lock.release(session, LEGACY, self._host)
        self._forget_if_idle(lock)
        return released

    def lock_holder(self, commit: Commit[legacy_lock.Holder]) -> int | None:
        lock: LockResource = self._existing("lock", commit.operation.name)
        return None if lock.holder is None else lock.holder[0]

    def election_run(self, commit: Commit[legacy_election.Run]) -> int | None:
        session = need_session(commit.session.id if commit.session else None, "Run")
        election: ElectionResource = self._resource("election", commit.operation.name)
        return election.campaign(session, LEGACY, None, self._host)

    def election_resign(self, commit: Commit[legacy_election.Resign]) -> None:
        session = need_session(commit.session.id if commit.session else None, "Resign")
        election: ElectionResource = self._resource("election", commit.operation.name)
        election.resign(session, LEGACY, self._host)
        self._forget_if_idle(election)

    def election_leader(self, commit: Commit[legacy_election.Leader]) -> list[int] | None:
        election: ElectionResource = self._existing("election", commit.operation.name)
        return election.legacy_leader()

    # --- snapshots -------------------------------------------------------------------------

    def snapshot(self, writer: SnapshotSink) -> None:
        """[version, revision, map_history, count], then per resource [kind, name, chunks]
        followed by that many chunks."""
        writer.write_object(
            [SNAPSHOT_VERSION, self.revision, self.map_history, len(self.resources)]
        )
        for (kind, name), resource in self.resources.items():
            chunks = resource.dump()
            writer.write_object([kind, name, len(chunks)])
            for chunk in chunks:
                writer.write_object(chunk)

    def install(self, reader: SnapshotSource) -> None:
        version, revision, map_history, count = reader.read_object()
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"Resources snapshot version {version} is not {SNAPSHOT_VERSION}")
        resources: dict[tuple[str, str], Resource] = {}
        self.map_history = map_history
        for _ in range(count):
            kind, name, n_chunks = reader.read_object()
            resource = self._new(kind, name)
            resource.load([reader.read_object() for _ in range(n_chunks)])
            resources[(kind, name)] = resource
        self.resources, self.revision = resources, revision
