"""How a server answers clients: sessions, sequenced commands, queries by consistency, events.

Requests that need the leader (register, keep-alive, unregister, commands, linearizable
queries) are forwarded to it by followers. The leader sequences each session's commands by their
sequence numbers (seed 001): early arrivals wait their turn up to a bound, retries are appended
again and deduplicated when applied, and a command is appended only once every one before it is
(a refused one holds back those behind it until it is resubmitted), so each command applies
exactly once and in order.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from ..core.raft import Role
from ..core.sessions import Sequencing, SessionSequencer, clamp_timeout
from ..protocol.errors import (
    CommandError,
    CopycatError,
    ErrorInfo,
    ErrorType,
    NoLeaderError,
    QueryError,
    Status,
)
from ..protocol.messages import (
    CommandEntry,
    CommandRequest,
    CommandResponse,
    ConnectRequest,
    ConnectResponse,
    KeepAliveEntry,
    KeepAliveRequest,
    KeepAliveResponse,
    PublishRequest,
    PublishResponse,
    QueryRequest,
    QueryResponse,
    RegisterEntry,
    RegisterRequest,
    RegisterResponse,
    RpcRequest,
    RpcResponse,
    UnknownOperation,
    UnregisterEntry,
    UnregisterRequest,
    UnregisterResponse,
)
from ..protocol.operations import Command, Consistency, Query
from ..transport.base import MessageStream, TransportError
from .executor import Executor, Pending, unknown_operation
from .forwarding import Forward
from .log_clock import LogClock
from .loop import RaftLoop, ReadIndex

log = logging.getLogger(__name__)

MAX_QUEUED_COMMANDS = 1000
"""How far ahead of the last sequenced command a request may arrive and still be held."""


class ClientConnection:
    """A client's connection to this server: where its session's events are pushed from."""

    def __init__(self, stream: MessageStream, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.nursery = nursery
        self._ids = iter(range(1, 2**62))
        self._waiters: dict[int, tuple[trio.Event, list[Any]]] = {}
        self.pushers: dict[int, trio.CancelScope] = {}

    def on_response(self, response: RpcResponse) -> None:
        waiter = self._waiters.pop(response.id, None)
        if waiter is not None:
            waiter[1].append(response.body)
            waiter[0].set()

    async def request(self, body: Any, timeout: float) -> Any:
        """Send a request to the client over its own connection and wait for its answer."""
        request_id = next(self._ids)
        event, box = self._waiters[request_id] = (trio.Event(), [])
        try:
            await self.stream.send(RpcRequest(request_id, body))
            with trio.move_on_after(timeout):
                await event.wait()
            return box[0] if box else None
        finally:
            self._waiters.pop(request_id, None)


class _SessionGate:
    """One session's sequencer on this leader (see SessionSequencer), and the value its early
    arrivals wait on."""

    def __init__(self, session: int, sequencer: SessionSequencer) -> None:
        self.session = session
        self.sequencer = sequencer
        self.queued = AsyncValue(sequencer.queued)

    def queue(self, sequence: int) -> None:
        self.sequencer.queue(sequence)
        self.queued.value = self.sequencer.queued

    def refused(self) -> None:
        self.sequencer.refused()
        self.queued.value = self.sequencer.queued


@attrs.define(eq=False)
class _CommandAdmission:
    """The raft loop's check that a command comes right after what is appended (Admission)."""

    gate: _SessionGate
    sequence: int

    def admit(self, term: int) -> CopycatError | None:
        sequencer = self.gate.sequencer
        if sequencer.may_append(self.sequence, term):
            return None
        if term != sequencer.term:
            return CommandError("leadership changed while the command was queued; resubmit it")
        return CommandError(
            f"command {sequencer.appended + 1} of session {self.gate.session} was not appended; "
            f"resubmit from it (this was {self.sequence})"
        )

    def settled(self, appended: bool) -> None:
        if appended:
            self.gate.sequencer.appended_one(self.sequence)
            self.gate.queued.value = self.gate.sequencer.queued
        else:
            self.gate.refused()


class ClientService:
    """The client-facing request handlers of one server."""

    def __init__(
        self,
        loop: RaftLoop,
        executor: Executor,
        forward: Forward,
        *,
        default_session_timeout_ms: int,
        request_timeout: float,
        election_timeout: float,
        log_clock: LogClock,
    ) -> None:
        self.loop = loop
        self.executor = executor
        self.forward = forward
        self.default_session_timeout_ms = default_session_timeout_ms
        self.request_timeout = request_timeout
        self.election_timeout = election_timeout
        self.log_clock = log_clock
        """Log time as this member would stamp an entry now (see log_clock.py)."""
        self._gates: dict[int, _SessionGate] = {}
        """Leader-local, per session: how far its commands are sequenced in this term."""
        self._term = -1

    # --- helpers ---------------------------------------------------------------------------

    def _members_and_leader(self) -> dict[str, Any]:
        core = self.loop.core
        return {"leader": core.leader, "members": core.members}

    async def _as_leader(self) -> bool:
        """Whether to handle a leader-only request here; waits until this leader has applied
        everything committed before its term, so its session table is current. A wait that
        spans a new election starts again for the new term."""
        if self._leading_now():
            return True  # the common case, decided without a task switch
        core = self.loop.core
        with trio.move_on_after(2 * self.election_timeout):
            while core.role is Role.LEADER:
                term, start = core.term, core.term_start_index
                if term != self._term:
                    self._term = term
                    self._gates.clear()
                if start is None:
                    return False
                await self.executor.applied_index.wait_value(lambda a, s=start: a >= s)
                if core.role is Role.LEADER and core.term == term:
                    return True
        return False

    def _leading_now(self) -> bool:
        """`_as_leader` when it needs no wait: this member leads the term its gates are for
        and has applied everything before the term."""
        core = self.loop.core
        if core.role is not Role.LEADER or core.term != self._term:
            return False
        start = core.term_start_index
        return start is not None and self.executor.applied_index.value >= start

    async def _propose_and_wait(self, build: Callable[..., Any]) -> Pending:
        pending = await self.loop.propose(build)
        await pending.event.wait()
        return pending

    # --- sessions --------------------------------------------------------------------------

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        def error(info: ErrorInfo) -> RegisterResponse:
            return RegisterResponse(status=Status.ERROR, error=info)

        if not await self._as_leader():
            return await self.forward(request, RegisterResponse, error)
        timeout = clamp_timeout(request.timeout, self.default_session_timeout_ms)
        pending = await self._propose_and_wait(
            functools.partial(
                RegisterEntry, client=request.client, timeout=timeout, identity=request.identity
            )
        )
        if pending.error is not None:
            return error(pending.error.to_info())
        return RegisterResponse(
            status=Status.OK, session=pending.result, timeout=timeout, **self._members_and_leader()
        )

    async def keep_alive(self, request: KeepAliveRequest) -> KeepAliveResponse:
        def error(info: ErrorInfo) -> KeepAliveResponse:
            return KeepAliveResponse(status=Status.ERROR, error=info, **self._members_and_leader())

        if not await self._as_leader():
            return await self.forward(request, KeepAliveResponse, error)
        if self.executor.session(request.session) is None:
            return error(ErrorInfo(ErrorType.UNKNOWN_SESSION, f"unknown session {request.session}"))
        pending = await self._propose_and_wait(
            functools.partial(
                KeepAliveEntry,
                session=request.session,
                command_sequence=request.command_sequence,
                event_index=request.event_index,
            )
        )
        if pending.error is not None:
            return error(pending.error.to_info())
        return KeepAliveResponse(status=Status.OK, **self._members_and_leader())

    async def unregister(self, request: UnregisterRequest) -> UnregisterResponse:
        def error(info: ErrorInfo) -> UnregisterResponse:
            return UnregisterResponse(status=Status.ERROR, error=info)

        if not await self._as_leader():
            return await self.forward(request, UnregisterResponse, error)
        pending = await self._propose_and_wait(
            functools.partial(UnregisterEntry, session=request.session, expired=False)
        )
        if pending.error is not None:
            return error(pending.error.to_info())
        return UnregisterResponse(status=Status.OK)

    async def connect(
        self, request: ConnectRequest, connection: ClientConnection
    ) -> ConnectResponse:
        """The client will talk through this server: push its session's events from here."""
        session = self.executor.session(request.session)
        if session is None:
            # This member may lag behind the register entry; give it a moment to catch up.
            with trio.move_on_after(self.election_timeout):
                await self.executor.applied_index.wait_value(
                    lambda _: self.executor.session(request.session) is not None
                )
        if self.executor.session(request.session) is None:
            return ConnectResponse(
                status=Status.ERROR,
                error=ErrorInfo(ErrorType.UNKNOWN_SESSION, f"unknown session {request.session}"),
                **self._members_and_leader(),
            )
        old = connection.pushers.pop(request.session, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope()
        connection.pushers[request.session] = scope
        connection.nursery.start_soon(self._push_events, request.session, connection, scope)
        return ConnectResponse(status=Status.OK, **self._members_and_leader())

    async def _push_events(
        self, session_id: int, connection: ClientConnection, scope: trio.CancelScope
    ) -> None:
        """Send the session's unacknowledged events in order; the client drops duplicates and
        names its last index when it sees a gap, and we resend from there."""
        with scope:
            sent = 0
            while True:
                changed = self.executor.notify_session_change()
                session = self.executor.session(session_id)
                if session is None:
                    return
                batches = list(session.events_after(max(sent, session.acknowledged_event_index)))
                for batch in batches:
                    publish = PublishRequest(
                        session=session_id,
                        event_index=batch.index,
                        previous_index=batch.previous_index,
                        events=tuple(batch.events),
                    )
                    try:
                        answer = await connection.request(publish, self.request_timeout)
                    except TransportError:
                        return
                    if not isinstance(answer, PublishResponse):
                        break  # no answer in time: try again on the next change
                    if answer.status is Status.OK:
                        sent = max(sent, batch.index)
                    else:
                        sent = answer.index  # the client's last index: resend after it
                        break
                else:
                    await changed.wait()
                    continue
                await trio.sleep(0.01)

    # --- commands --------------------------------------------------------------------------

    async def command(self, request: CommandRequest) -> CommandResponse:
        def error(info: ErrorInfo) -> CommandResponse:
            return CommandResponse(status=Status.ERROR, error=info)

        # An UnknownOperation (a tag the servers have not registered) is logged like any
        # command, so the session's later commands follow it in order; applying it answers
        # UNKNOWN_OPERATION.
        if not isinstance(request.operation, Command | UnknownOperation):
            return error(ErrorInfo(ErrorType.COMMAND, "only a Command can be submitted as one"))
        if not await self._as_leader():
            return await self.forward(request, CommandResponse, error)
        session = self.executor.session(request.session)
        if session is None:
            return error(ErrorInfo(ErrorType.UNKNOWN_SESSION, f"unknown session {request.session}"))
        gate = self._gate(request.session, session.command_sequence)
        kind = gate.sequencer.classify(request.sequence, MAX_QUEUED_COMMANDS)
        if kind is Sequencing.REJECT:
            return error(
                ErrorInfo(
                    ErrorType.COMMAND,
                    f"sequence {request.sequence} is too far ahead; resubmit from "
                    f"{gate.sequencer.queued + 1}",
                )
            )
        if kind is Sequencing.WAIT:
            with trio.move_on_after(self.request_timeout):
                await gate.queued.wait_value(lambda queued: request.sequence <= queued + 1)
            if request.sequence > gate.queued.value + 1:
                return error(
                    ErrorInfo(
                        ErrorType.COMMAND,
                        f"commands before {request.sequence} never arrived; resubmit from "
                        f"{gate.queued.value + 1}",
                    )
                )
        # The inbox is first in, first out: once this one is in, the next command of this
        # session may follow it at once; the loop appends that one only if this one was
        # appended (_CommandAdmission), and a refusal moves the mark back.
        gate.queue(request.sequence)
        pending = Pending(0, 0)  # one event for both the append (or refusal) and the apply
        try:
            await self.loop.enqueue(
                functools.partial(
                    CommandEntry,
                    operation=request.operation,
                    session=request.session,
                    sequence=request.sequence,
                ),
                _CommandAdmission(gate, request.sequence),
                waiter=pending,
            )
        except BaseException:
            gate.refused()  # never reached the loop (it stopped, or this request was cancelled)
            raise
        await pending.event.wait()
        return _command_response(pending)

    def command_now(
        self, request: CommandRequest, answer: Callable[[CommandResponse], None]
    ) -> bool:
        """Take a command without a task of its own when nothing needs a wait: this member
        leads (as `_as_leader` requires), the session is known, the command is the next in
        its sequence and the raft loop's inbox has room. `answer` is then called once with
        the response, from the loop (a refusal) or the executor (applied). False: nothing was
        done; take the usual path (`command`)."""
        if not isinstance(request.operation, Command | UnknownOperation) or not self._leading_now():
            return False
        session = self.executor.session(request.session)
        if session is None:
            return False
        gate = self._gate(request.session, session.command_sequence)
        if gate.sequencer.classify(request.sequence, MAX_QUEUED_COMMANDS) is not Sequencing.NOW:
            return False
        pending = Pending(0, 0, on_resolve=lambda done: answer(_command_response(done)))
        build = functools.partial(
            CommandEntry,
            operation=request.operation,
            session=request.session,
            sequence=request.sequence,
        )
        if not self.loop.enqueue_nowait(build, _CommandAdmission(gate, request.sequence), pending):
            return False
        gate.queue(request.sequence)  # before the loop runs: it appends only after a yield
        return True

    def _gate(self, session: int, applied_sequence: int) -> _SessionGate:
        """The session's gate for this term, made on its first command in the term."""
        gate = self._gates.get(session)
        if gate is None:
            # Everything before this term is applied (_as_leader): the session's applied
            # sequence is all that is in the log for it so far.
            sequencer = SessionSequencer(self.loop.core.term, applied_sequence)
            gate = self._gates[session] = _SessionGate(session, sequencer)
        return gate

    # --- queries ---------------------------------------------------------------------------

    async def query(self, request: QueryRequest) -> QueryResponse:
        def error(info: ErrorInfo) -> QueryResponse:
            return QueryResponse(status=Status.ERROR, error=info)

        if isinstance(request.operation, UnknownOperation):
            unknown = unknown_operation(request.operation, self.executor.state_machine)
            return error(unknown.to_info())
        if not isinstance(request.operation, Query):
            return error(ErrorInfo(ErrorType.QUERY, "only a Query can be submitted as one"))
        try:
            consistency = Consistency(request.consistency)
        except ValueError:
            return error(ErrorInfo(ErrorType.QUERY, f"unknown consistency {request.consistency}"))
        if consistency is Consistency.SEQUENTIAL:
            # Any member, once it has applied what the client has seen and its own commands.
            with trio.move_on_after(self.request_timeout):
                await self.executor.applied_index.wait_value(lambda a: a >= request.index)
            if self.executor.applied_index.value < request.index:
                return error(ErrorInfo(ErrorType.QUERY, "this member is too far behind"))
            return await self._answer_query(request, error)
        if not await self._as_leader():
            return await self.forward(request, QueryResponse, error)
        if consistency is Consistency.LINEARIZABLE_LEASE and self.loop.lease_valid():
            index = self.loop.core.commit_index
        else:
            try:
                index = await self.loop.read_index()
            except (NoLeaderError, QueryError) as exc:
                return error(exc.to_info())
        with trio.move_on_after(self.request_timeout):
            await self.executor.applied_index.wait_value(lambda applied: applied >= index)
        if self.executor.applied_index.value < index:
            # Answering now would read a state older than the read index (and perhaps older
            # than one this session already saw elsewhere): another member may do better.
            return error(ErrorInfo(ErrorType.QUERY, "this member has not applied the read index"))
        return await self._answer_query(request, error)

    def query_now(self, request: QueryRequest) -> QueryResponse | None:
        """A query answered at once, without a task of its own, when nothing needs a wait: a
        SEQUENTIAL one on a member that has applied what the client has seen, or a
        LINEARIZABLE_LEASE one on a leader inside its lease that has applied its commit index,
        and in both cases the session's earlier commands. None: take the usual path (`query`)."""
        if not isinstance(request.operation, Query):
            return None
        applied = self.executor.applied_index.value
        if request.consistency == Consistency.SEQUENTIAL.value:
            if applied < request.index:
                return None
        elif request.consistency == Consistency.LINEARIZABLE_LEASE.value:
            leading = self._leading_now() and self.loop.lease_valid()
            if not leading or applied < self.loop.core.commit_index:
                return None
        else:
            return None
        session = self.executor.session(request.session)
        if session is None or session.command_sequence < request.sequence:
            return None
        return self._read_applied(request)

    def read_now(self, request: QueryRequest, answer: Callable[[QueryResponse], None]) -> bool:
        """Take a LINEARIZABLE read (or a LINEARIZABLE_LEASE one outside the lease) without a
        task of its own when this member leads and has applied the session's earlier
        commands: the raft loop confirms a read index with a quorum (one round for every read
        of its turn), and `answer` is called once, from the loop (an error) or the executor
        (once the index is applied). False: nothing was done; take the usual path (`query`)."""
        if (
            not isinstance(request.operation, Query)
            or request.consistency
            not in (Consistency.LINEARIZABLE.value, Consistency.LINEARIZABLE_LEASE.value)
            or not self._leading_now()
        ):
            return False
        session = self.executor.session(request.session)
        if session is None or session.command_sequence < request.sequence:
            return False
        executor = self.executor

        def confirmed(read: ReadIndex) -> None:
            if read.error is not None:
                answer(QueryResponse(status=Status.ERROR, error=read.error.to_info()))
                return
            assert read.index is not None
            executor.when_applied(read.index, lambda: answer(self._read_applied(request)))

        return self.loop.read_index_nowait(confirmed)

    def _read_applied(self, request: QueryRequest) -> QueryResponse:
        """The answer to a query whose wait is over: read the state machine as applied."""
        session = self.executor.session(request.session)
        if session is None:
            info = ErrorInfo(ErrorType.UNKNOWN_SESSION, f"unknown session {request.session}")
            return QueryResponse(status=Status.ERROR, error=info)
        result, failure = self.executor.query(request.operation, request.session)
        if failure is not None:
            return QueryResponse(status=Status.ERROR, error=failure)
        return QueryResponse(
            status=Status.OK,
            index=self.executor.applied_index.value,
            event_index=session.event_index,
            result=result,
        )

    async def _answer_query(
        self, request: QueryRequest, error: Callable[[ErrorInfo], QueryResponse]
    ) -> QueryResponse:
        session = self.executor.session(request.session)
        if session is None and request.session > self.executor.applied_index.value:
            return error(ErrorInfo(ErrorType.QUERY, "this member is behind the session's register"))
        if session is None:
            return error(ErrorInfo(ErrorType.UNKNOWN_SESSION, f"unknown session {request.session}"))
        # Read after the session's own earlier commands (its sequence), wherever they are.
        if session.command_sequence < request.sequence:
            with trio.move_on_after(self.request_timeout):
                await self.executor.applied_index.wait_value(
                    lambda _: session.command_sequence >= request.sequence
                )
            if session.command_sequence < request.sequence:
                return error(
                    ErrorInfo(ErrorType.QUERY, "the session's earlier commands are not applied")
                )
        return self._read_applied(request)

    # --- expiry (the leader's duty) ----------------------------------------------------------

    async def expire_sessions(self) -> None:
        """Commit the expiry of each session silent for longer than its timeout, by log time,
        when its deadline comes.

        Runs only on the leader, in the leader's nursery, from the moment it has applied its
        term's first entry (which gave every session a fresh timeout). It sleeps until log
        time can reach the earliest deadline (`SessionTable.next_expiry`), or until a session
        is added or removed or an expiry refused (`Executor.notify_expiry_change`), then
        proposes what is due and looks again. Keep-alives only move deadlines later: waking
        at the old one finds nothing due and sleeps until the next. Every server applies the
        same entry and re-checks the timeout against log time, so a keep-alive that raced in
        wins.
        """
        proposed: dict[int, Pending] = {}
        refused = False
        while True:
            if not await self._as_leader():
                await trio.sleep(self.election_timeout / 4)  # stepping down, or far behind
                continue
            changed = self.executor.notify_expiry_change()
            proposed = {i: p for i, p in proposed.items() if not p.event.is_set()}
            for session in self.executor.sessions.expired(self.log_clock()):
                if session.id in proposed:
                    continue
                log.debug(
                    "proposing the expiry of session %s (client %s)", session.id, session.client
                )
                try:
                    proposed[session.id] = await self.loop.propose(
                        functools.partial(UnregisterEntry, session=session.id, expired=True)
                    )
                except CopycatError:  # lost leadership, or handing it over: look again later
                    refused = True
            due = self.executor.sessions.next_expiry(excluding=proposed)
            delay = math.inf if due is None else self.log_clock.seconds_until(due, self.log_clock())
            if refused:
                # A refused proposal leaves its session due: without a pause this loop would
                # propose again at once, forever (resource seed 94079: a transfer refuses
                # proposals until it times out, and virtual time never got there).
                delay = max(delay, self.election_timeout / 4)
                refused = False
            with trio.move_on_after(delay):
                await changed.wait()


def _command_response(pending: Pending) -> CommandResponse:
    """The answer to a command from its resolved Pending (index 0: refused, never appended)."""
    if pending.error is not None and pending.index == 0:
        return CommandResponse(status=Status.ERROR, error=pending.error.to_info())
    if pending.error is not None:
        return CommandResponse(
            status=Status.ERROR,
            error=pending.error.to_info(),
            index=pending.index,
            event_index=pending.event_index,
        )
    return CommandResponse(
        status=Status.OK,
        index=pending.index,
        event_index=pending.event_index,
        result=pending.result,
    )
