"""The simulation's state machine: the key-value store, plus events and timers to check.

`SimStore` is a `KeyValueStore` whose extra commands exercise what a plain store never does:

- `Watch(key)` makes the session a watcher of `key`; `Emit(key, value)` records `value` under
  `key` and publishes an "emit" event to every session watching `key` (the writer's own, if it
  watches). Its result names the sessions it published to, so the applied records (which every
  member must agree on) are the ground truth of what was published (`event_workload.py`).
- `Arm(name, delay_ms, interval_ms, notify)` schedules `ring(name, notify)` with
  `context.schedule`, once or repeating; `Disarm(name)` cancels it; `PutTtl(key, value, ttl_ms)`
  sets a key that the timer callback `expire` removes once its time is up (unless rewritten).
  A ring bumps a counter and, with `notify`, publishes a "ring" event to `name`'s watchers.

Nothing here touches the store's own keys (`data`): timer effects and emitted values live in
their own maps, outside the linearizability checker's history, so the history still holds only
what clients wrote. Every timer firing is folded into a replicated digest (`timer_digest`):
the simulation records it with each applied command (`invariants.Applied.timers`), so members
that fire different timers, or the same ones at different log positions, disagree at the next
command, and their final states differ too (`sim_state`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..protocol.codec import registry
from ..protocol.operations import Command
from ..recipes.kv import KeyValueStore
from ..state_machine import Commit, Scheduled, ServerSession, SnapshotSink, SnapshotSource

__all__ = [
    "Arm",
    "Disarm",
    "Emit",
    "Firing",
    "PutTtl",
    "SimStore",
    "Watch",
    "sim_state",
]


def _keys(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(keys)


@attrs.frozen
class Watch(Command):
    """Publish these keys' emits (and, for a timer's name, its rings) to this session from now
    on; returns the command's log index."""

    keys: tuple[str, ...] = attrs.field(converter=_keys)


@attrs.frozen
class Emit(Command):
    """Record `value` under `key` and publish it to `key`'s watchers; returns
    `[index, [session ids published to]]`."""

    key: str
    value: str


@attrs.frozen
class Arm(Command):
    """(Re)schedule the timer `name`: `ring` after delay_ms, then every interval_ms if given;
    returns `[index, timer id]`."""

    name: str
    delay_ms: int
    interval_ms: int | None = None
    notify: bool = False


@attrs.frozen
class Disarm(Command):
    """Cancel the timer `name`; returns whether one was armed."""

    name: str


@attrs.frozen
class PutTtl(Command):
    """Set `key` to `value` until ttl_ms of log time pass (a timer removes it); returns the
    command's log index."""

    key: str
    value: str
    ttl_ms: int


@attrs.frozen
class Firing:
    """One timer callback as a member ran it: where in the log, which timer, what it did."""

    after: int
    """context.index when it fired: the entry whose time fired it (timers fire just before
    that entry applies), or a snapshot's index."""
    due: int
    timer: int
    name: str
    effect: Any
    """What it changed: e.g. ["ring", count, [sessions notified]] or ["expired", key]."""
    number: int
    """Its place among every firing so far (replicated: the same on every member)."""


class SimStore(KeyValueStore):
    """KeyValueStore with watchers, emits and timers (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.watchers: dict[str, list[int]] = {}
        self.emitted: dict[str, str] = {}
        self.armed: dict[str, int] = {}
        """Timer name -> the id of its pending timer."""
        self.rings: dict[str, int] = {}
        self.ttl: dict[str, str] = {}
        self.fired = 0
        self.timer_digest = ""
        """A hash chained over every firing (replicated; snapshots carry it)."""
        self.recent: list[list[Any]] = []
        """The last few firings, for reports."""
        self._handles: dict[str, Scheduled] = {}
        """Timer name -> its handle (rebuilt from context.timers after an install)."""
        self.observer: Callable[[Firing], None] | None = None
        """Not replicated: the simulation's hook, told of every firing on this member."""

    # --- commands ----------------------------------------------------------------------

    def watch(self, commit: Commit[Watch]) -> int:
        assert commit.session is not None
        for key in commit.operation.keys:
            sessions = self.watchers.setdefault(key, [])
            if commit.session.id not in sessions:
                sessions.append(commit.session.id)
        return commit.index

    def emit(self, commit: Commit[Emit]) -> list[Any]:
        op = commit.operation
        self.emitted[op.key] = op.value
        payload = {"kind": "emit", "key": op.key, "value": op.value, "index": commit.index}
        return [commit.index, self._publish(op.key, "emit", payload)]

    def arm(self, commit: Commit[Arm]) -> list[Any]:
        op = commit.operation
        self._cancel(op.name)
        handle = self.context.schedule(
            op.delay_ms, self.ring, op.name, op.notify, interval_ms=op.interval_ms
        )
        self._handles[op.name] = handle
        self.armed[op.name] = handle.id
        return [commit.index, handle.id]

    def disarm(self, commit: Commit[Disarm]) -> bool:
        return self._cancel(commit.operation.name)

    def put_ttl(self, commit: Commit[PutTtl]) -> int:
        op = commit.operation
        self.ttl[op.key] = op.value
        self.context.schedule(op.ttl_ms, self.expire, op.key, op.value)
        return commit.index

    def on_close(self, session: ServerSession) -> None:
        for key in list(self.watchers):
            sessions = [s for s in self.watchers[key] if s != session.id]
            if sessions:
                self.watchers[key] = sessions
            else:
                del self.watchers[key]

    # --- timer callbacks (by method name: snapshots hold them) ---------------------------

    def ring(self, name: str, notify: bool) -> None:
        """A timer of `name` fired: count it and, if asked, tell its watchers."""
        count = self.rings[name] = self.rings.get(name, 0) + 1
        handle = self._handles.get(name)
        timer = handle.id if handle is not None else -1
        if handle is not None and handle.interval_ms is None:
            self._handles.pop(name, None)  # a one-shot timer is done
            self.armed.pop(name, None)
        notified: list[int] = []
        if notify:
            payload = {"kind": "ring", "key": name, "count": count, "number": self.fired + 1}
            notified = self._publish(name, "ring", payload)
        self._record(name, ["ring", count, notified], timer)

    def expire(self, key: str, value: str) -> None:
        """A PutTtl's time is up: remove the key unless it has been set again since."""
        if self.ttl.get(key) == value:
            del self.ttl[key]
            self._record(key, ["expired", key], -1)
        else:
            self._record(key, ["kept", key], -1)

    # --- snapshots ---------------------------------------------------------------------

    def snapshot(self, writer: SnapshotSink) -> None:
        super().snapshot(writer)
        writer.write_object(
            {
                "watchers": self.watchers,
                "emitted": self.emitted,
                "armed": self.armed,
                "rings": self.rings,
                "ttl": self.ttl,
                "fired": self.fired,
                "digest": self.timer_digest,
                "recent": self.recent,
            }
        )

    def install(self, reader: SnapshotSource) -> None:
        super().install(reader)
        extra = reader.read_object()
        self.watchers = {k: list(v) for k, v in extra["watchers"].items()}
        self.emitted = dict(extra["emitted"])
        self.armed = dict(extra["armed"])
        self.rings = dict(extra["rings"])
        self.ttl = dict(extra["ttl"])
        self.fired = extra["fired"]
        self.timer_digest = extra["digest"]
        self.recent = [list(r) for r in extra["recent"]]
        # The server restored the pending timers before install: find ours by id.
        by_id = {handle.id: handle for handle in self.context.timers}
        self._handles = {
            name: by_id[timer_id] for name, timer_id in self.armed.items() if timer_id in by_id
        }

    # --- helpers -----------------------------------------------------------------------

    def _publish(self, key: str, name: str, payload: dict[str, Any]) -> list[int]:
        sessions = self.context.sessions
        targets = [s for s in self.watchers.get(key, ()) if s in sessions]
        for session_id in targets:
            sessions[session_id].publish(name, {**payload, "to": session_id})
        return targets

    def _cancel(self, name: str) -> bool:
        handle = self._handles.pop(name, None)
        self.armed.pop(name, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def _record(self, name: str, effect: list[Any], timer: int) -> None:
        """Fold a firing into the digest (and tell the observer); `timer` is its id (-1 for
        a TTL's, whose handle nobody keeps)."""
        self.fired += 1
        context = self.context
        firing = [context.index, context.time, timer, name, effect, self.fired]
        chained = f"{self.timer_digest}|{firing!r}".encode()
        self.timer_digest = hashlib.sha256(chained).hexdigest()[:16]
        self.recent = [*self.recent[-7:], firing]
        if self.observer is not None:
            self.observer(Firing(context.index, context.time, timer, name, effect, self.fired))


def sim_state(state_machine: Any) -> Any:
    """What must agree across members of a SimStore: contents, watchers, timers fired."""
    if not isinstance(state_machine, SimStore):
        return dict(state_machine.data)
    return {
        "data": dict(state_machine.data),
        "emitted": dict(state_machine.emitted),
        "watchers": state_machine.watchers,
        "armed": state_machine.armed,
        "rings": state_machine.rings,
        "ttl": state_machine.ttl,
        "fired": state_machine.fired,
        "digest": state_machine.timer_digest,
        "recent firings": state_machine.recent,
    }


WIRE_TAGS = {Watch: 33100, Emit: 33101, Arm: 33102, Disarm: 33103, PutTtl: 33104}
"""The CBOR tags these operations travel under (the library's testing range)."""

for _cls, _tag in WIRE_TAGS.items():
    registry.register(_cls, _tag, builtin=True)
