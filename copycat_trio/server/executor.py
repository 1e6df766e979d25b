"""Applies committed entries to the user's state machine, in log order, and completes waiters.

This is the server state machine of Copycat: besides user commands it applies session entries
(register, keep-alive, unregister and expiry), caches each command's result by session and
sequence so a retried command is answered without being applied twice, queues the events
commands publish, and fires scheduled callbacks by log time. Log time comes from the leader's
timestamps and never goes backwards, so all of this is identical on every server. An exception
in user code becomes an APPLICATION error for that one command; the server goes on.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from ..core.sessions import CachedResult, CommandDecision, Session, SessionTable
from ..protocol.errors import (
    ApplicationError,
    CommandError,
    CopycatError,
    ErrorInfo,
    ErrorType,
    UnknownSessionError,
)
from ..protocol.messages import (
    CommandEntry,
    Entry,
    Event,
    KeepAliveEntry,
    NoOpEntry,
    RegisterEntry,
    UnregisterEntry,
)
from ..state_machine import (
    Commit,
    Scheduled,
    ServerSession,
    StateMachine,
    StateMachineContext,
)

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Pending:
    """A proposal waiting for its entry to be applied."""

    index: int
    term: int
    event: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: CopycatError | None = None
    event_index: int = 0

    def resolve(
        self, result: Any = None, error: CopycatError | None = None, event_index: int = 0
    ) -> None:
        if not self.event.is_set():
            self.result, self.error, self.event_index = result, error, event_index
            self.event.set()


def application_error(exc: BaseException) -> ApplicationError:
    return ApplicationError(f"{type(exc).__qualname__}: {exc}")


class _Context(StateMachineContext):
    """The executor's view handed to the state machine."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    @property
    def sessions(self) -> dict[int, ServerSession]:
        return self._executor.handles

    def schedule(
        self, delay_ms: int, callback: Callable[[], None], *, interval_ms: int | None = None
    ) -> Scheduled:
        return self._executor.schedule(delay_ms, callback, interval_ms)


class Executor:
    """Owns the state machine and the session table; the raft loop hands it committed entries."""

    def __init__(self, state_machine: StateMachine) -> None:
        self.state_machine = state_machine
        self.context = _Context(self)
        state_machine.context = self.context
        self.sessions = SessionTable()
        self.handles: dict[int, ServerSession] = {}
        self.applied_index = AsyncValue(0)
        self.log_time = 0
        self._queue: collections.deque[Entry] = collections.deque()
        self._wakeup = trio.Event()
        self.pending: dict[int, Pending] = {}
        self._timers: list[tuple[int, int, Scheduled, Callable[[], None], int | None]] = []
        self._timer_ids = itertools.count()
        self.session_changed = trio.Event()
        """Set (and replaced) whenever sessions or their events change: wakes event pushers."""
        self.applied_commands = 0
        self.application_errors = 0

    # --- feeding ---------------------------------------------------------------------------

    def hand_over(self, entries: list[Entry]) -> None:
        """Called by the raft loop; never blocks (the queue is bounded by the log itself)."""
        self._queue.extend(entries)
        self._wakeup.set()

    def expect(self, index: int, term: int) -> Pending:
        pending = self.pending[index] = Pending(index, term)
        return pending

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            count = 0
            while self._queue:
                self.apply(self._queue.popleft())
                count += 1
                if count % 256 == 0:
                    await trio.lowlevel.checkpoint()

    # --- scheduling ------------------------------------------------------------------------

    def schedule(
        self, delay_ms: int, callback: Callable[[], None], interval_ms: int | None
    ) -> Scheduled:
        if delay_ms < 0 or (interval_ms is not None and interval_ms <= 0):
            raise ValueError("delay must be >= 0 and interval > 0")
        handle = Scheduled()
        due = self.log_time + delay_ms
        heapq.heappush(self._timers, (due, next(self._timer_ids), handle, callback, interval_ms))
        return handle

    def _fire_timers(self, now: int) -> None:
        """Run every callback due by log time `now`, in due order, as if at its due time."""
        while self._timers and self._timers[0][0] <= now:
            due, _, handle, callback, interval = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.log_time = max(self.log_time, due)
            self.context.time = self.log_time
            try:
                callback()
            except Exception:
                log.exception("scheduled callback %r raised", callback)
            if interval is not None and not handle.cancelled:
                heapq.heappush(
                    self._timers,
                    (due + interval, next(self._timer_ids), handle, callback, interval),
                )

    # --- applying --------------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        self._fire_timers(entry.timestamp)
        self.log_time = max(self.log_time, entry.timestamp)
        self.context.index = entry.index
        self.context.time = self.log_time
        result: Any = None
        error: CopycatError | None = None
        event_index = 0
        if isinstance(entry, CommandEntry):
            result, error, event_index = self._apply_command(entry)
        elif isinstance(entry, RegisterEntry):
            result = self._apply_register(entry)
        elif isinstance(entry, KeepAliveEntry):
            if not self.sessions.keep_alive(
                entry.session, entry.command_sequence, entry.event_index, self.log_time
            ):
                error = UnknownSessionError(f"unknown session {entry.session}")
            self.session_changed.set()
        elif isinstance(entry, UnregisterEntry):
            error = self._apply_unregister(entry)
        elif isinstance(entry, NoOpEntry):
            # A new leader: sessions get a full timeout from now to find it.
            self.sessions.touch_all(self.log_time)
        pending = self.pending.pop(entry.index, None)
        if pending is not None:
            if pending.term == entry.term:
                pending.resolve(result, error, event_index)
            else:
                pending.resolve(
                    error=CommandError(
                        f"entry {entry.index} was replaced by a new leader's entry; not applied"
                    )
                )
        self.applied_index.value = entry.index

    def _apply_command(self, entry: CommandEntry) -> tuple[Any, CopycatError | None, int]:
        decision = self.sessions.decide(entry.session, entry.sequence)
        if decision is CommandDecision.UNKNOWN_SESSION:
            return None, UnknownSessionError(f"unknown session {entry.session}"), 0
        session = self.sessions.get(entry.session)
        assert session is not None
        if decision is CommandDecision.DUPLICATE:
            cached = session.results.get(entry.sequence)
            if cached is None:
                return (
                    None,
                    CommandError(
                        f"command {entry.sequence} of session {entry.session} was applied and "
                        "its result already acknowledged"
                    ),
                    session.event_index,
                )
            error = _error(cached.error) if cached.error else None
            return cached.result, error, cached.event_index
        handle = self.handles[session.id]
        commit = Commit(
            operation=entry.operation, index=entry.index, time=self.log_time, session=handle
        )
        result: Any = None
        error_info: ErrorInfo | None = None
        try:
            result = self.state_machine.apply(commit)
        except CopycatError as exc:
            error_info = exc.to_info()
        except Exception as exc:
            log.info("state machine raised on entry %s: %r", entry.index, exc)
            error_info = application_error(exc).to_info()
        self.applied_commands += 1
        if error_info is not None:
            self.application_errors += 1
            result = None
        cached = CachedResult(entry.index, session.event_index, result, error_info)
        self.sessions.record(session, entry.sequence, cached)
        return result, _error(error_info) if error_info else None, session.event_index

    def _apply_register(self, entry: RegisterEntry) -> int:
        session = self.sessions.register(entry.index, entry.client, entry.timeout, self.log_time)
        handle = self.handles[session.id] = ServerSession(session.id, entry.client, self._publish)
        self._listener("on_register", handle)
        self.session_changed.set()
        return session.id

    def _apply_unregister(self, entry: UnregisterEntry) -> CopycatError | None:
        session = self.sessions.get(entry.session)
        if session is None:
            return UnknownSessionError(f"unknown session {entry.session}")
        if entry.expired and self.log_time - session.last_active <= session.timeout:
            return CommandError(f"session {entry.session} was kept alive; not expired")
        self.sessions.remove(session.id)
        handle = self.handles.pop(session.id)
        handle.closed = True
        self._listener("on_expire" if entry.expired else "on_unregister", handle)
        self._listener("on_close", handle)
        self.session_changed.set()
        return None

    def _listener(self, name: str, handle: ServerSession) -> None:
        try:
            getattr(self.state_machine, name)(handle)
        except Exception:
            log.exception("state machine %s(%r) raised", name, handle)

    def _publish(self, session_id: int, name: str, payload: Any) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            self.sessions.publish(session, self.context.index, Event(name, payload))
            self.session_changed.set()

    def notify_session_change(self) -> trio.Event:
        """The event to wait on for the next change; replaced once set."""
        if self.session_changed.is_set():
            self.session_changed = trio.Event()
        return self.session_changed

    # --- reading ---------------------------------------------------------------------------

    def session(self, session_id: int) -> Session | None:
        return self.sessions.get(session_id)

    def query(self, operation: Any, session_id: int = 0) -> tuple[Any, ErrorInfo | None]:
        """Evaluate a read against the current state (the caller has waited for the index)."""
        handle = self.handles.get(session_id)
        commit = Commit(
            operation=operation,
            index=self.applied_index.value,
            time=self.log_time,
            session=handle,
        )
        try:
            return self.state_machine.apply(commit), None
        except CopycatError as exc:
            return None, exc.to_info()
        except Exception as exc:
            return None, ErrorInfo(ErrorType.APPLICATION, f"{type(exc).__qualname__}: {exc}")


def _error(info: ErrorInfo) -> CopycatError:
    from ..protocol.errors import error_from_info

    return error_from_info(info)
