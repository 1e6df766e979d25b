"""The raft loop: the one task that owns the core. Inputs arrive through a bounded inbox; after
each batch it persists the Ready, then sends its messages, then hands committed entries on.

The election timer is a cancel scope whose deadline the loop moves to the core's next deadline
after every step (each heartbeat from the leader pushes it back).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

import attrs
import trio
from trio_util import AsyncValue

from ..core.raft import (
    ConfigurationChangeError,
    NotLeaderError,
    RaftCore,
    Ready,
    Role,
)
from ..protocol.errors import ConfigurationError, CopycatError, NoLeaderError, QueryError
from ..protocol.messages import (
    AppendRequest,
    AppendResponse,
    ConfigurationEntry,
    Entry,
    Member,
    RaftMessage,
)
from ..storage.base import LogStorage
from .executor import Executor, Pending
from .observations import Observer
from .peers import PeerLinks
from .persistence import Persister, QueuedWrite

log = logging.getLogger(__name__)

INBOX_CAPACITY = 4096
BATCH_LIMIT = 512


@attrs.frozen
class Step:
    source: int
    message: RaftMessage


class _Wake:
    """Writes became durable (see Persister): the loop collects them on this turn."""


_WAKE = _Wake()


@attrs.frozen
class Tick:
    """A deadline of the core has passed; `handled` is set once the loop has acted on it."""

    handled: trio.Event = attrs.field(factory=trio.Event)


class Admission(Protocol):
    """A condition on appending a proposal, checked inside the loop at the moment of appending
    (so nothing can come between the check and the append), and told the outcome."""

    def admit(self, term: int) -> CopycatError | None:
        """None to append the entry as leader of `term`; else the error that refuses it."""

    def settled(self, appended: bool) -> None:
        """The proposal was appended, or refused (by `admit` or because this is no leader)."""


class _Refused(Exception):
    """An Admission refused a proposal inside the loop; carries the error to answer."""

    def __init__(self, error: CopycatError) -> None:
        super().__init__(error)
        self.error = error


@attrs.define(eq=False)
class Propose:
    build: Callable[..., Entry]
    """Makes the entry from term=, index=, timestamp= (see RaftCore.propose_entry)."""
    admission: Admission | None = None
    reply: trio.Event = attrs.Factory(trio.Event)
    pending: Pending | None = None
    error: CopycatError | None = None
    waiter: Pending | None = None
    """The proposer's own Pending, if it made one: resolved with the error on refusal, else
    registered for the entry's apply, so a proposer waits on one event for both."""


@attrs.define(eq=False)
class Reconfigure:
    members: tuple[Member, ...]
    reply: trio.Event = attrs.Factory(trio.Event)
    pending: Pending | None = None
    error: CopycatError | None = None


@attrs.define(eq=False)
class ReadIndex:
    reply: trio.Event = attrs.Factory(trio.Event)
    index: int | None = None
    error: CopycatError | None = None
    on_done: Callable[[ReadIndex], None] | None = None
    """Called once, from the loop, when `index` or `error` is set (the reader's fast path)."""

    def finish(self) -> None:
        """`index` or `error` is set: wake the waiter and tell the callback."""
        self.reply.set()
        if self.on_done is not None:
            self.on_done(self)


@attrs.define(eq=False)
class Call:
    """Run a function on the core inside the loop (so the loop stays its only owner) and
    hand back its result: snapshot bookkeeping and leader contact from a snapshot stream."""

    function: Callable[[RaftCore, float], Any]
    storage_op: Callable[[LogStorage, Any], Awaitable[None]] | None = None
    """Storage work that must follow, in order with the loop's own saves (given the result)."""
    reply: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None


Input = Step | Tick | Propose | Reconfigure | ReadIndex | Call | _Wake


class MonotonicClock(Protocol):
    """A member's own monotonic clock (the core's time), for simulating clock drift."""

    def now(self) -> float:
        """The time on this clock."""
        ...

    def to_trio(self, time: float) -> float:
        """Trio's time when this clock reads `time` (for timers)."""
        ...


class TrioClock:
    """Trio's own clock: what a member uses unless told otherwise."""

    def now(self) -> float:
        return trio.current_time()

    def to_trio(self, time: float) -> float:
        return time


class RaftLoop:
    """Drives a RaftCore with real time, storage, peers and an executor."""

    def __init__(
        self,
        core: RaftCore,
        storage: LogStorage,
        peers: PeerLinks,
        executor: Executor,
        clock: Callable[[], float] = trio.current_time,
        on_snapshot_needed: Callable[[int], None] = lambda peer: None,
        to_trio: Callable[[float], float] = lambda deadline: deadline,
    ) -> None:
        """`clock` is the member's monotonic clock, the core's time; `to_trio` turns a time on
        it into Trio's for timers (a simulation runs each member's clock at its own rate)."""
        self.on_snapshot_needed = on_snapshot_needed
        self.to_trio = to_trio
        self._deferred: list[Call] = []
        self._started = clock()
        self._last_heard: dict[int, float] = {}
        self.core = core
        self.storage = storage
        self.peers = peers
        self.executor = executor
        self.clock = clock
        self.inbox_send, self.inbox_receive = trio.open_memory_channel[Input](INBOX_CAPACITY)
        self.leader = AsyncValue(core.leader)
        self.role = AsyncValue(core.role)
        self._timer_scope = trio.CancelScope()
        self._learn_addresses(core.members)
        self.leader_changes = 0
        """Times a new leader was seen: a different one, or one after none (as etcd counts)."""
        self._persister = Persister(storage, self._on_durable)
        self._durable: list[QueuedWrite] = []
        """Writes the persister reported durable; what follows them is done on the next turn."""
        self._metrics: Observer | None = None

    @property
    def metrics(self) -> Observer | None:
        """Set when the server serves metrics: round trips and save batches are observed."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Observer | None) -> None:
        self._metrics = self._persister.metrics = metrics

    def _learn_addresses(self, members: Sequence[Member]) -> None:
        for member in members:
            self.peers.learn(member.id, member.address)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._election_timer)
                nursery.start_soon(self._persister.run)
                task_status.started()
                while True:
                    item = await self.inbox_receive.receive()
                    now = self.clock()
                    self._handle(item, now)
                    for _ in range(BATCH_LIMIT):
                        try:
                            item = self.inbox_receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self._handle(item, now)
                    await self._process_ready()
        finally:
            self._close_inbox()

    def _close_inbox(self) -> None:
        """The loop has stopped: fail what is queued and refuse what comes, so that no caller
        (a shielded one least of all) waits forever for an answer."""
        error = NoLeaderError(f"member {self.core.id} is stopping")
        unanswered: list[Input] = list(self._deferred)
        self._deferred.clear()
        for write in self._durable + self._persister.unwritten():
            if write.call is not None:
                unanswered.append(write.call)
            if write.ready is not None:
                for context in [c for c, _ in write.ready.reads] + write.ready.failed_reads:
                    context.error = error
                    context.finish()
        self._durable.clear()
        while True:
            try:
                unanswered.append(self.inbox_receive.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
        for item in unanswered:
            if isinstance(item, ReadIndex):
                item.error = error
                item.finish()
            elif isinstance(item, Propose | Reconfigure | Call):
                item.error = error
                item.reply.set()
            if isinstance(item, Propose) and item.waiter is not None:
                item.waiter.resolve(error=error)
        self.inbox_receive.close()

    async def _put(self, item: Input) -> None:
        try:
            try:
                self.inbox_send.send_nowait(item)  # the common case: no task switch to queue
            except trio.WouldBlock:
                await self.inbox_send.send(item)  # full: wait (backpressure on the proposer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The loop stopped; if because this server is being cancelled, the caller is too:
            # it must see Cancelled (a clean stop), not an error that crashes its nursery.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise NoLeaderError(f"member {self.core.id} is stopping") from None

    async def _election_timer(self) -> None:
        # One Tick in flight at a time: until the loop has ticked the core, its deadline is
        # still in the past, and sending again would only fill the inbox with Ticks.
        while True:
            with trio.CancelScope(deadline=self.to_trio(self.core.next_deadline())) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            tick = Tick()
            await self.inbox_send.send(tick)
            await tick.handled.wait()

    def _handle(self, item: Input, now: float) -> None:
        core = self.core
        if isinstance(item, Step):
            self._last_heard[item.source] = now
            message = item.message
            if self.metrics is not None and type(message) is AppendResponse:
                self.metrics.round_trips.answered(item.source, message.read_round)
            if isinstance(message, AppendRequest):
                # A member being added learns where the leader is from the configuration in
                # flight, before its own log can take the entry, so it can answer at all.
                for entry in message.entries:
                    if isinstance(entry, ConfigurationEntry):
                        self._learn_addresses(entry.members)
            core.step(item.source, message, now)
        elif isinstance(item, Tick):
            core.tick(now)
            item.handled.set()
        elif isinstance(item, Propose):
            admission = item.admission
            build = item.build
            if admission is not None:

                def build(admission: Admission = admission, **at: Any) -> Entry:
                    # Called by the core once it knows it may append (leader, no transfer).
                    refusal = admission.admit(at["term"])
                    if refusal is not None:
                        raise _Refused(refusal)
                    return item.build(**at)

            try:
                index, term = core.propose_entry(build)
                item.pending = self.executor.expect(index, term, item.waiter)
            except NotLeaderError as exc:
                item.error = NoLeaderError(str(exc))
                self.executor.proposals_failed += 1
            except _Refused as refused:
                item.error = refused.error
                self.executor.proposals_failed += 1
            if admission is not None:
                admission.settled(item.error is None)
            if item.error is not None and item.waiter is not None:
                item.waiter.resolve(error=item.error)
            item.reply.set()
        elif isinstance(item, Reconfigure):
            try:
                index, term = core.propose_configuration(item.members)
                item.pending = self.executor.expect(index, term)
            except NotLeaderError as exc:
                item.error = NoLeaderError(str(exc))
                self.executor.proposals_failed += 1
            except ConfigurationChangeError as exc:
                item.error = ConfigurationError(str(exc))
                self.executor.proposals_failed += 1
            item.reply.set()
        elif isinstance(item, Call):
            try:
                item.result = item.function(core, now)
            except Exception as exc:
                item.error = exc
            if item.storage_op is not None and item.error is None:
                self._deferred.append(item)
            else:
                item.reply.set()
        elif isinstance(item, ReadIndex):
            try:
                core.read_index(item)
            except NotLeaderError as exc:
                item.error = NoLeaderError(str(exc))
                item.finish()

    def _on_durable(self, writes: list[QueuedWrite]) -> None:
        """From the persister: these writes are durable. Never blocks: if the inbox is full,
        the loop is busy and collects them on its next turn anyway."""
        self._durable.extend(writes)
        wake_failed = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)
        with contextlib.suppress(*wake_failed):
            self.inbox_send.send_nowait(_WAKE)

    def _collect_durable(self) -> None:
        """Do what follows the writes reported durable, in order."""
        while self._durable:
            durable, self._durable = self._durable, []
            for write in durable:
                self._after_write(write)

    async def _process_ready(self) -> None:
        core = self.core
        self._collect_durable()
        while self._deferred:
            call = self._deferred.pop(0)  # answered once its storage work is done, in order
            await self._persister.put(
                QueuedWrite(operation=functools.partial(_storage_op, call), call=call)
            )
        while core.has_ready():
            ready = core.ready()
            # A leader may send its new entries before its own write is durable (it counts
            # itself toward a commit only after `persisted`); anything else waits for the disk,
            # so no vote or acknowledgement leaves before what it promises is durable.
            early = ready.hard_state is None and core.role is Role.LEADER
            if early:
                for envelope in ready.messages:
                    self.peers.send(envelope)
            write = QueuedWrite(ready=ready, early=early)
            if write.writes:
                # The loop goes on while the disk works (Persister); the rest of this Ready
                # follows once the write is durable, and so does every later Ready's.
                write.durable_at = (core.log.last_index, core.log.last_term)
                await self._persister.put(write)
            else:
                # A report may have come while the loop waited for room in the queue: what
                # follows earlier writes goes first (applies must stay in log order).
                self._collect_durable()
                if self._persister.queued:
                    await self._persister.put(write)  # keeps its place behind queued writes
                else:
                    self._after_ready(ready, early)
        if core.leader is not None and core.leader != self.leader.value:
            self.leader_changes += 1
        self.leader.value = core.leader
        self.role.value = core.role
        self._timer_scope.deadline = self.to_trio(core.next_deadline())

    def _after_write(self, write: QueuedWrite) -> None:
        """What follows a write once it (and every earlier one) is durable."""
        if write.call is not None:
            call: Call = write.call
            call.error = write.error
            call.reply.set()
            return
        if write.durable_at is not None:
            self.core.persisted(*write.durable_at)
        assert write.ready is not None
        self._after_ready(write.ready, write.early)

    def _after_ready(self, ready: Ready, early: bool) -> None:
        """Send, apply and answer what a Ready holds (its writes, if any, are durable)."""
        if any(isinstance(e, ConfigurationEntry) for e in ready.entries):
            self._learn_addresses(self.core.members)
        if not early:
            for envelope in ready.messages:
                self.peers.send(envelope)
        for peer in ready.snapshots:
            self.on_snapshot_needed(peer)
        if ready.committed:
            self.executor.hand_over(ready.committed)
        for context, index in ready.reads:
            context.index = index
            context.finish()
        for context in ready.failed_reads:
            context.error = QueryError("leadership was lost before the read was confirmed")
            context.finish()

    # --- called by request handlers ------------------------------------------------------

    async def propose(self, build: Callable[..., Entry]) -> Pending:
        """Append an entry; the Pending resolves when its index is applied."""
        return await self._append(Propose(build))

    async def enqueue(
        self,
        build: Callable[..., Entry],
        admission: Admission | None = None,
        waiter: Pending | None = None,
    ) -> Propose:
        """Queue an entry and return at once: entries are appended in the order enqueued.
        Await `wait_appended` on the result to learn its Pending (or the error), or wait on
        `waiter`: it resolves with the refusal, or when the entry is applied (its index is 0
        if the entry was never appended). An `admission` is checked at the moment of
        appending, and told whether it was."""
        item = Propose(build, admission, waiter=waiter)
        await self._put(item)
        return item

    def enqueue_nowait(
        self, build: Callable[..., Entry], admission: Admission | None, waiter: Pending
    ) -> bool:
        """`enqueue` without waiting: False if the inbox is full or closed (nothing queued)."""
        try:
            self.inbox_send.send_nowait(Propose(build, admission, waiter=waiter))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def read_index_nowait(self, on_done: Callable[[ReadIndex], None]) -> bool:
        """Ask for a read index without waiting: `on_done` is called from the loop once the
        index is confirmed by a quorum (or with the error). False if the inbox is full or
        closed (nothing asked)."""
        try:
            self.inbox_send.send_nowait(ReadIndex(on_done=on_done))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    @staticmethod
    async def wait_appended(item: Propose) -> Pending:
        await item.reply.wait()
        if item.error is not None:
            await _fail(item.error)
        assert item.pending is not None
        return item.pending

    async def reconfigure(self, members: Sequence[Member]) -> Pending:
        """Append a configuration; the Pending resolves when its index is applied."""
        return await self._append(Reconfigure(tuple(members)))

    async def _append(self, request: Propose | Reconfigure) -> Pending:
        await self._put(request)
        await request.reply.wait()
        if request.error is not None:
            await _fail(request.error)
        assert request.pending is not None
        return request.pending

    async def call(
        self,
        function: Callable[[RaftCore, float], Any],
        storage_op: Callable[[LogStorage, Any], Awaitable[None]] | None = None,
    ) -> Any:
        """Run `function(core, now)` in the loop, then `storage_op(storage, result)` in order
        with the loop's saves, and return the function's result."""
        item = Call(function, storage_op)
        await self._put(item)
        await item.reply.wait()
        if item.error is not None:
            await _fail(item.error)
        return item.result

    def heard_from(self, member_id: int) -> None:
        """Note that a member answered (for members that send no Raft messages: RESERVE)."""
        self._last_heard[member_id] = self.clock()

    def silent_for(self, now: float) -> dict[int, float]:
        """Seconds since each other member was last heard from (since start if never); `now`
        is on this loop's `clock`."""
        return {
            m.id: now - self._last_heard.get(m.id, self._started)
            for m in self.core.members
            if m.id != self.core.id
        }

    def lease_valid(self) -> bool:
        return self.core.lease_valid(self.clock())

    async def read_index(self) -> int:
        """The index a linearizable read must wait for, confirmed by a quorum round."""
        request = ReadIndex()
        await self._put(request)
        await request.reply.wait()
        if request.error is not None:
            await _fail(request.error)
        assert request.index is not None
        return request.index

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER


async def _storage_op(call: Call, storage: LogStorage) -> None:
    assert call.storage_op is not None
    await call.storage_op(storage, call.result)


async def _fail(error: BaseException) -> NoReturn:
    """Raise a request's error; but a caller cancelled meanwhile (its server is stopping:
    the loop failed what it held as it stopped) sees Cancelled, a clean stop, not an error
    that would crash its nursery beside the real cause."""
    await trio.lowlevel.checkpoint_if_cancelled()
    raise error
