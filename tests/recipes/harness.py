"""Drive a `Resources` state machine by hand: sessions, commands at chosen log times, timers,
events, and snapshots through the real codec, with no server (for the rules, not the I/O)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from copycat_trio.protocol.codec import registry
from copycat_trio.recipes.resources import Resources
from copycat_trio.recipes.resources.base import EVENT
from copycat_trio.state_machine import Commit, Scheduled, ServerSession, StateMachineContext


class _Context(StateMachineContext):
    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    @property
    def sessions(self) -> dict[int, ServerSession]:
        return self._harness.sessions

    def schedule(
        self,
        delay_ms: int,
        callback: Callable[..., None],
        *args: Any,
        interval_ms: int | None = None,
    ) -> Scheduled:
        harness = self._harness
        assert getattr(callback, "__self__", None) is harness.machine  # a snapshottable timer
        harness.timer_seq += 1
        due = self.time + delay_ms
        args_copy = registry.decode(registry.encode(list(args)))
        handle = Scheduled(harness.timer_seq, due, callback, tuple(args_copy))
        entry = (due, harness.timer_seq, callback.__name__, args_copy)
        heapq.heappush(harness.timers, entry)
        return handle


class Harness:
    """One member's state machine, applied by hand; `events[session]` is what it was sent."""

    def __init__(self, **options: Any) -> None:
        self.machine = Resources(**options)
        self.context = _Context(self)
        self.machine.context = self.context
        self.sessions: dict[int, ServerSession] = {}
        self.events: dict[int, list[tuple[str, Any]]] = {}
        self.timers: list[tuple[int, int, str, Any]] = []
        self.timer_seq = 0
        self.index = 0
        self.time = 0

    def _step(self, advance_ms: int) -> None:
        target = self.time + advance_ms
        while self.timers and self.timers[0][0] <= target:
            due, _, method, args = heapq.heappop(self.timers)
            self.context.time = self.time = max(self.time, due)
            getattr(self.machine, method)(*args)
        self.time = target
        self.index += 1
        self.context.index, self.context.time = self.index, self.time

    def open(self) -> int:
        """Register a session; its id is its register entry's index."""
        self._step(0)
        sid = self.index

        def publish(session_id: int, name: str, payload: Any) -> None:
            self.events[session_id].append((name, registry.decode(registry.encode(payload))))

        self.sessions[sid] = ServerSession(sid, f"client{sid}", publish)
        self.events[sid] = []
        self.machine.on_register(self.sessions[sid])
        return sid

    def close(self, sid: int, advance_ms: int = 0) -> None:
        self._step(advance_ms)
        handle = self.sessions.pop(sid)
        handle.closed = True
        self.machine.on_expire(handle)
        self.machine.on_close(handle)

    def command(self, sid: int, op: Any, advance_ms: int = 0) -> Any:
        """Apply op (after a codec round trip) from session sid, at this log time + advance."""
        op = registry.decode(registry.encode(op))
        self._step(advance_ms)
        result = self.machine.apply(Commit(op, self.index, self.time, self.sessions[sid]))
        return registry.decode(registry.encode(result))

    def query(self, op: Any, sid: int | None = None) -> Any:
        op = registry.decode(registry.encode(op))
        session = self.sessions[sid] if sid is not None else None
        return self.machine.apply(Commit(op, self.index, self.time, session))

    def advance(self, ms: int) -> None:
        """Let log time pass (as a keep-alive entry would), firing due timers."""
        self._step(ms)

    def resource_events(self, sid: int) -> list[Any]:
        """The [kind, name, request, data] events session sid was sent, and forget them."""
        got = [payload for name, payload in self.events[sid] if name == EVENT]
        self.events[sid] = [(n, p) for n, p in self.events[sid] if n != EVENT]
        return got

    def snapshot_bytes(self) -> list[bytes]:
        written: list[bytes] = []

        class Sink:
            def write(self, data: bytes) -> None:
                raise AssertionError("Resources writes objects only")

            def write_object(self, value: Any) -> None:
                written.append(registry.encode(value))

        self.machine.snapshot(Sink())
        return written

    def restored(self) -> Harness:
        """A new member that installed this one's snapshot (sessions and timers as the server
        restores them)."""
        chunks = iter(self.snapshot_bytes())

        class Source:
            def read(self, size: int) -> bytes:
                return b""

            def read_object(self) -> Any:
                return registry.decode(next(chunks))

        other = Harness()
        other.machine.install(Source())
        other.index, other.time = self.index, self.time
        other.context.index, other.context.time = self.index, self.time
        other.timers, other.timer_seq = list(self.timers), self.timer_seq
        for sid in self.sessions:
            other.events[sid] = []

            def publish(session_id: int, name: str, payload: Any, o: Harness = other) -> None:
                o.events[session_id].append((name, registry.decode(registry.encode(payload))))

            other.sessions[sid] = ServerSession(sid, f"client{sid}", publish)
        return other
