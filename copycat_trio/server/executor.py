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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from ..core.sessions import CachedResult, CommandDecision, Session, SessionTable
from ..protocol.codec import registry
from ..protocol.errors import (
    ApplicationError,
    CommandError,
    CopycatError,
    ErrorInfo,
    ErrorType,
    InternalError,
    UnknownOperationError,
    UnknownSessionError,
)
from ..protocol.messages import (
    CommandEntry,
    ConfigurationEntry,
    Entry,
    Event,
    KeepAliveEntry,
    Member,
    NoOpEntry,
    RegisterEntry,
    UnknownOperation,
    UnregisterEntry,
)
from ..state_machine import (
    Commit,
    Scheduled,
    ServerSession,
    Snapshottable,
    StateMachine,
    StateMachineContext,
)
from ..storage.errors import StorageCorruptionError
from ..storage.snapshots import SnapshotInfo, SnapshotReader, SnapshotStore
from .snapshots import (
    SnapshotHeader,
    ThreadSink,
    ThreadSource,
    TimerRecord,
    read_snapshot,
    write_snapshot,
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
    on_resolve: Callable[[Pending], None] | None = None
    """Called once when resolved (an answer written without a task waiting for it)."""

    def resolve(
        self, result: Any = None, error: CopycatError | None = None, event_index: int = 0
    ) -> None:
        if not self.event.is_set():
            self.result, self.error, self.event_index = result, error, event_index
            self.event.set()
            if self.on_resolve is not None:
                self.on_resolve(self)


def unknown_operation(operation: UnknownOperation, state_machine: object) -> UnknownOperationError:
    """The answer to an operation whose wire tag the servers have not registered."""
    return UnknownOperationError(
        f"operation tag {operation.tag} is not registered on the servers, whose state machine "
        f"is {type(state_machine).__qualname__}: they must import the module that registers "
        "the operation's class (or run the state machine it was written for)"
    )


def application_error(exc: BaseException) -> ApplicationError:
    return ApplicationError(f"{type(exc).__qualname__}: {exc}")


class _Context(StateMachineContext):
    """The executor's view handed to the state machine."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.sequence = 0
        """The session sequence number of the command being applied (tests count these)."""

    @property
    def sessions(self) -> dict[int, ServerSession]:
        return self._executor.handles

    def schedule(
        self,
        delay_ms: int,
        callback: Callable[..., None],
        *args: Any,
        interval_ms: int | None = None,
    ) -> Scheduled:
        return self._executor.schedule(delay_ms, callback, args, interval_ms)

    @property
    def timers(self) -> tuple[Scheduled, ...]:
        return self._executor.pending_timers()


class Executor:
    """Owns the state machine and the session table; the raft loop hands it committed entries."""

    def __init__(
        self,
        state_machine: StateMachine,
        *,
        members: tuple[Member, ...] = (),
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 10_000,
        on_snapshot: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.state_machine = state_machine
        self.configuration: tuple[int, tuple[Member, ...]] = (0, members)
        """The configuration in force at the applied index: (its index, its members)."""
        self.on_configuration: Callable[[int, tuple[Member, ...]], None] | None = None
        """Told each configuration as it comes into force here (applied, or installed)."""
        self.snapshots = snapshots if isinstance(state_machine, Snapshottable) else None
        self.snapshot_every = snapshot_every
        self._on_snapshot = on_snapshot
        self.snapshot_index = 0
        self.applied_term = 0
        self.lock = trio.Lock()
        """Held while applying; a snapshot or an install takes it so nothing changes meanwhile."""
        self.context = _Context(self)
        state_machine.context = self.context
        self.sessions = SessionTable()
        self.handles: dict[int, ServerSession] = {}
        self.applied_index = AsyncValue(0)
        self._applied_callbacks: list[tuple[int, int, Callable[[], None]]] = []
        """A heap of (index, order, callback): `when_applied` callbacks not yet due."""
        self._callback_order = 0
        self.log_time = 0
        self._queue: collections.deque[Entry] = collections.deque()
        self._wakeup = trio.Event()
        self.pending: dict[int, Pending] = {}
        self._timers: list[tuple[int, int, Scheduled]] = []
        """A heap of (due log time, order, handle); cancelled handles are dropped when due."""
        self._timer_sequence = 0
        """The next timer id and tie-break order: replicated state (snapshots carry it)."""
        self._installing = False
        self.session_changed = trio.Event()
        """Set (and replaced) whenever sessions or their events change: wakes event pushers."""
        self.expiry_changed = trio.Event()
        """Set (and replaced) when a session is added or removed, or an expiry refused: the
        earliest session deadline may have moved earlier (or its session gone), so the
        leader's expiry task looks again. Keep-alives do not set it: they only move deadlines
        later, and the task finds that out when the earlier one comes."""
        self.applied_commands = 0
        self.application_errors = 0
        self.proposals_committed = 0
        """Entries this member appended as leader that were applied as appended."""
        self.proposals_failed = 0
        """Proposals refused at append, or appended and replaced (another leader, a snapshot)."""
        self.on_snapshot_saved: Callable[[float], None] | None = None
        """Told the seconds each snapshot took to write (set when metrics are served)."""

    # --- feeding ---------------------------------------------------------------------------

    def hand_over(self, entries: list[Entry]) -> None:
        """Called by the raft loop; never blocks (the queue is bounded by the log itself)."""
        self._queue.extend(entries)
        self._wakeup.set()

    def expect(self, index: int, term: int, waiter: Pending | None = None) -> Pending:
        """A waiter for the entry this leader just appended at `index` in `term` (`waiter`, if
        the proposer made one already, so it waits on one event for append and apply). A waiter
        still there from an earlier term lost its entry: this leader's log holds another one
        at that index, so the earlier entry never committed and never will."""
        replaced = self.pending.get(index)
        if replaced is not None:
            self.proposals_failed += 1
            replaced.resolve(
                error=CommandError(
                    f"entry {index} of term {replaced.term} was replaced by an entry of term "
                    f"{term}; not applied"
                )
            )
        if waiter is None:
            waiter = Pending(index, term)
        else:
            waiter.index, waiter.term = index, term
        self.pending[index] = waiter
        return waiter

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            async with self.lock:
                count = 0
                while self._queue:
                    entry = self._queue.popleft()
                    self._apply(entry)
                    count += 1
                    if count % 256 == 0 or not self._queue:
                        # Waiters on the applied index wake once per batch, not once per entry.
                        self._publish_applied(entry.index)
                    if count % 256 == 0:
                        await trio.lowlevel.checkpoint()
                if self.snapshot_due():
                    await self.take_snapshot()

    # --- snapshots -------------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        return (
            self.snapshots is not None
            and self.applied_index.value - self.snapshot_index >= self.snapshot_every
        )

    async def take_snapshot(self) -> None:
        """Write a snapshot at the applied index (the caller holds the lock), then let the
        log before it be compacted."""
        assert self.snapshots is not None
        index = self.applied_index.value
        header = SnapshotHeader(
            index=index,
            term=self.applied_term,
            log_time=self.log_time,
            members=self.configuration[1],
            configuration_index=self.configuration[0],
            timer_sequence=self._timer_sequence,
        )
        timers = self._timer_records()
        started = time.perf_counter()
        async with self.snapshots.create(index, self.applied_term) as writer:
            if runs_inline(self.snapshots):
                buffered = BufferedSink(writer)
                write_snapshot(buffered, header, self.sessions, self.state_machine, timers)
                await buffered.drain()
            else:
                sink = ThreadSink(writer)
                await trio.to_thread.run_sync(
                    write_snapshot, sink, header, self.sessions, self.state_machine, timers
                )
        self.snapshot_index = index
        if self.on_snapshot_saved is not None:
            self.on_snapshot_saved(time.perf_counter() - started)
        log.info("snapshot taken at index %s (term %s)", index, self.applied_term)
        if self._on_snapshot is not None:
            await self._on_snapshot(index)

    async def install_snapshot(self, info: SnapshotInfo) -> SnapshotHeader:
        """Replace the state machine, sessions and timers with a snapshot's (the caller holds
        the lock). Entries queued up to its index are dropped: the snapshot contains them.

        Before the user's `install` runs, every pending timer is dropped and the snapshot's are
        restored, and index, log time and sessions become the snapshot's: from then on this
        member fires what a member that applied the whole log fires, at the same log times."""
        assert self.snapshots is not None
        self._installing = True
        try:
            async with self.snapshots.open(info) as reader:
                if runs_inline(self.snapshots):
                    header = read_snapshot(
                        await BufferedSource.load(reader), self.state_machine, self._adopt
                    )
                else:
                    source = ThreadSource(reader)

                    def adopt(
                        header: SnapshotHeader, table: SessionTable, timers: list[TimerRecord]
                    ) -> None:
                        trio.from_thread.run_sync(self._adopt, header, table, timers)

                    header = await trio.to_thread.run_sync(
                        read_snapshot, source, self.state_machine, adopt
                    )
        finally:
            self._installing = False
        self._configure(header.configuration_index, header.members)
        self.snapshot_index = header.index
        self.applied_term = header.term
        self._queue = collections.deque(e for e in self._queue if e.index > header.index)
        for index in [i for i in self.pending if i <= header.index]:
            self.proposals_failed += 1
            self.pending.pop(index).resolve(
                error=InternalError(f"entry {index} was superseded by a snapshot; outcome unknown")
            )
        self._publish_applied(max(self.applied_index.value, header.index))
        self.session_changed.set()
        self.expiry_changed.set()
        return header

    # --- scheduling ------------------------------------------------------------------------

    def schedule(
        self,
        delay_ms: int,
        callback: Callable[..., None],
        args: tuple[Any, ...],
        interval_ms: int | None,
    ) -> Scheduled:
        """A timer due `delay_ms` after the current log time; for a Snapshottable state machine
        it must be a method of it with plain-data arguments, since snapshots hold it."""
        if delay_ms < 0 or (interval_ms is not None and interval_ms <= 0):
            raise ValueError("delay must be >= 0 and interval > 0")
        if self._installing:
            raise RuntimeError(
                "install must not schedule: the snapshot's timers are restored for it "
                "(see context.timers)"
            )
        if isinstance(self.state_machine, Snapshottable):
            _snapshot_method(self.state_machine, callback)
            args = _plain_copy(args)
        handle = Scheduled(self._timer_sequence, self.log_time + delay_ms, callback, args)
        handle.interval_ms = interval_ms
        self._push_timer(handle)
        return handle

    def _push_timer(self, handle: Scheduled) -> None:
        heapq.heappush(self._timers, (handle.due, self._timer_sequence, handle))
        self._timer_sequence += 1

    def pending_timers(self) -> tuple[Scheduled, ...]:
        """The timers not yet fired nor cancelled, in firing order."""
        entries = sorted(self._timers, key=lambda entry: entry[:2])
        return tuple(handle for _, _, handle in entries if not handle.cancelled)

    def _timer_records(self) -> list[TimerRecord]:
        """The pending timers as a snapshot holds them, in firing order."""
        return [
            TimerRecord(
                due, order, h.id, h.interval_ms, getattr(h.callback, "__name__", ""), h.args
            )
            for due, order, h in sorted(self._timers, key=lambda entry: entry[:2])
            if not h.cancelled
        ]

    def _adopt(
        self, header: SnapshotHeader, table: SessionTable, records: list[TimerRecord]
    ) -> None:
        """Called by read_snapshot before the user's `install`: take the snapshot's sessions,
        drop every pending timer and put the snapshot's in their place, and move to the
        snapshot's index and log time (what `install` sees in the context)."""
        self.sessions = table
        for session in self.handles.values():
            session.closed = True
        self.handles = {
            s.id: ServerSession(s.id, s.client, self._publish, s.identity)
            for s in table.sessions.values()
        }
        for _, _, stale in self._timers:
            stale.cancelled = True  # a handle the state machine kept from before never fires
        self._timers = []
        for record in records:
            callback = getattr(self.state_machine, record.method, None)
            if record.method.startswith("__") or not callable(callback):
                raise StorageCorruptionError(
                    f"the snapshot has a timer for {record.method!r}, which "
                    f"{type(self.state_machine).__qualname__} has no method called"
                )
            handle = Scheduled(record.timer_id, record.due, callback, record.args)
            handle.interval_ms = record.interval_ms
            self._timers.append((record.due, record.order, handle))
        heapq.heapify(self._timers)
        self._timer_sequence = header.timer_sequence
        self.log_time = header.log_time
        self.context.index = header.index
        self.context.time = header.log_time

    def _fire_timers(self, now: int) -> None:
        """Run every callback due by log time `now`, in due order, as if at its due time."""
        while self._timers and self._timers[0][0] <= now:
            due, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.log_time = max(self.log_time, due)
            self.context.time = self.log_time
            interval = handle.interval_ms
            if interval is not None:
                handle.due = due + interval
            assert handle.callback is not None
            try:
                handle.callback(*handle.args)
            except Exception:
                log.exception("scheduled callback %r raised", handle)
            if interval is not None and not handle.cancelled:
                self._push_timer(handle)

    # --- applying --------------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        """Apply one committed entry and publish it as applied."""
        self._apply(entry)
        self._publish_applied(entry.index)

    def when_applied(self, index: int, callback: Callable[[], None]) -> None:
        """Call `callback` (no task of its own) as soon as everything up to `index` is
        applied: now, if it is; else right after the batch that applies it."""
        if self.applied_index.value >= index:
            callback()
            return
        self._callback_order += 1
        heapq.heappush(self._applied_callbacks, (index, self._callback_order, callback))

    def _publish_applied(self, index: int) -> None:
        """Set the applied index, waking its waiters, and run the callbacks now due."""
        self.applied_index.value = index
        due = self._applied_callbacks
        while due and due[0][0] <= index:
            heapq.heappop(due)[2]()

    def _apply(self, entry: Entry) -> None:
        """Apply one committed entry; the caller publishes `applied_index` (once per batch)."""
        # Timers due by this entry's time fire under its index: their events then share the
        # index with the entry's own, in one batch. Under the previous entry's index, a client
        # that already held that index dropped them as duplicates (an event lost).
        self.context.index = entry.index
        self._fire_timers(entry.timestamp)
        self.log_time = max(self.log_time, entry.timestamp)
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
            self.expiry_changed.set()  # gone, or an expiry refused: its next deadline counts
        elif isinstance(entry, ConfigurationEntry):
            self._configure(entry.index, entry.members)
        elif isinstance(entry, NoOpEntry):
            # A new leader: sessions get a full timeout from now to find it.
            self.sessions.touch_all(self.log_time)
        pending = self.pending.pop(entry.index, None)
        if pending is not None:
            if pending.term == entry.term:
                self.proposals_committed += 1
                pending.resolve(result, error, event_index)
            else:
                self.proposals_failed += 1
                pending.resolve(
                    error=CommandError(
                        f"entry {entry.index} was replaced by a new leader's entry; not applied"
                    )
                )
        self.applied_term = entry.term

    def _configure(self, index: int, members: tuple[Member, ...]) -> None:
        self.configuration = (index, members)
        if self.on_configuration is not None:
            self.on_configuration(index, members)

    def _apply_command(self, entry: CommandEntry) -> tuple[Any, CopycatError | None, int]:
        decision = self.sessions.decide(entry.session, entry.sequence)
        if decision is CommandDecision.UNKNOWN_SESSION:
            return None, UnknownSessionError(f"unknown session {entry.session}"), 0
        session = self.sessions.get(entry.session)
        assert session is not None
        if decision is CommandDecision.GAP:
            return (
                None,
                CommandError(
                    f"command {entry.sequence} of session {entry.session} came before command "
                    f"{session.command_sequence + 1}; not applied: resubmit it after that one"
                ),
                0,
            )
        if decision is CommandDecision.DUPLICATE:
            cached = session.results.get(entry.sequence)
            if cached is None:
                # Its result was freed when the client's keep-alive acknowledged it, so only a
                # stale copy of the request gets here, and nobody waits for the answer. Not
                # COMMAND ("not applied": a client resubmits it, and this answer would never
                # change): APPLICATION, whose promise is that the command was applied.
                return (
                    None,
                    ApplicationError(
                        f"command {entry.sequence} of session {entry.session} was applied once; "
                        "its result was acknowledged by the client and is no longer kept"
                    ),
                    session.event_index,
                )
            error = _error(cached.error) if cached.error else None
            return cached.result, error, cached.event_index
        handle = self.handles[session.id]
        commit = Commit(
            operation=entry.operation, index=entry.index, time=self.log_time, session=handle
        )
        self.context.sequence = entry.sequence
        result: Any = None
        error_info: ErrorInfo | None = None
        try:
            if type(entry.operation) is UnknownOperation:
                raise unknown_operation(entry.operation, self.state_machine)
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
        session = self.sessions.register(
            entry.index, entry.client, entry.timeout, self.log_time, entry.identity
        )
        handle = self.handles[session.id] = ServerSession(
            session.id, entry.client, self._publish, entry.identity
        )
        self._listener("on_register", handle)
        self.session_changed.set()
        self.expiry_changed.set()
        return session.id

    def _apply_unregister(self, entry: UnregisterEntry) -> CopycatError | None:
        session = self.sessions.get(entry.session)
        if session is None:
            return UnknownSessionError(f"unknown session {entry.session}")
        if entry.expired and self.log_time < session.expires_at:
            return CommandError(f"session {entry.session} was kept alive; not expired")
        self.sessions.remove(session.id)
        if entry.expired:
            # Logged when applied, not when the leader proposed it: a keep-alive that raced in
            # first refuses the expiry (above).
            log.info("session %s expired (client %s)", session.id, session.client)
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

    def notify_expiry_change(self) -> trio.Event:
        """The event to wait on for the next session added or removed (or expiry refused)."""
        if self.expiry_changed.is_set():
            self.expiry_changed = trio.Event()
        return self.expiry_changed

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
            if type(operation) is UnknownOperation:
                raise unknown_operation(operation, self.state_machine)
            return self.state_machine.apply(commit), None
        except CopycatError as exc:
            return None, exc.to_info()
        except Exception as exc:
            return None, ErrorInfo(ErrorType.APPLICATION, f"{type(exc).__qualname__}: {exc}")


def _snapshot_method(state_machine: StateMachine, callback: Callable[..., None]) -> str:
    """The name a snapshot knows `callback` by: it must be a method of the state machine."""
    func = getattr(callback, "__func__", None)
    name = getattr(func, "__name__", "")
    if (
        getattr(callback, "__self__", None) is not state_machine
        or not name
        or getattr(type(state_machine), name, None) is not func
    ):
        raise TypeError(
            f"{type(state_machine).__qualname__} is Snapshottable, so its timers go into "
            f"snapshots: schedule one of its own methods (self.some_method) with plain-data "
            f"arguments, not {callback!r}"
        )
    return name


def _plain_copy(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments as a snapshot gives them back (CBOR round trip), so that the callback
    sees the same values on a member that installed a snapshot as on one that did not."""
    try:
        return tuple(registry.decode(registry.encode(list(args))))
    except CopycatError as exc:
        raise TypeError(f"timer arguments must be CBOR-encodable plain data: {exc}") from exc


def runs_inline(store: SnapshotStore | None) -> bool:
    """Whether snapshot code runs on the Trio thread, buffered in memory, rather than in a
    worker thread: for stores that say `inline_snapshots = True` (the simulation's in-memory
    store), so that a run on a MockClock stays deterministic (no thread to wait for)."""
    return store is not None and store.inline_snapshots


class BufferedSink(ThreadSink):
    """A ThreadSink that keeps everything in memory until `drain` writes it (inline stores)."""

    def flush(self) -> None:
        pass

    async def drain(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        await self._writer.write(data)


class BufferedSource(ThreadSource):
    """A ThreadSource over a snapshot read whole into memory first (inline stores)."""

    @classmethod
    async def load(cls, reader: SnapshotReader) -> BufferedSource:
        source = cls(reader)
        while chunk := await reader.read():
            source._buffer += chunk
        source._eof = True
        return source

    def _fill(self, size: int) -> None:
        pass


def _error(info: ErrorInfo) -> CopycatError:
    from ..protocol.errors import error_from_info

    return error_from_info(info)
