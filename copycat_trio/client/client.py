"""The client: a session with the cluster, exactly-once commands, queries, events, failover.

    async with open_client(["127.0.0.1:5001", "127.0.0.1:5002"]) as client:
        await client.submit(Put("k", "v"))

Each command gets the session's next sequence number and is resubmitted, to whichever member
answers, until it is answered: the servers apply it once and answer retries from a cache.
Answers complete in submission order, after the events published before them.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from .._nursery import open_background_nursery
from ..protocol.errors import (
    ConfigurationError,
    CopycatError,
    ErrorInfo,
    ErrorType,
    NoLeaderError,
    OutcomeUnknownError,
    Status,
    UnknownSessionError,
    error_from_info,
)
from ..protocol.messages import (
    CommandRequest,
    CommandResponse,
    ConnectRequest,
    Event,
    KeepAliveRequest,
    Member,
    MemberType,
    PublishRequest,
    PublishResponse,
    QueryRequest,
    QueryResponse,
    RegisterRequest,
    RegisterResponse,
    StatusRequest,
    StatusResponse,
    UnregisterRequest,
    error_of,
)
from ..protocol.operations import Command, Consistency, Query
from ..transport.base import Transport, split_address
from ..transport.framed import RefusedError
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost, RpcConnection
from ..transport.tcp import TcpTransport
from ..transport.tls import TlsContexts, default_client_tls
from .strategies import (
    ClientState,
    ConnectionStrategy,
    ErrorScope,
    RecoveryStrategy,
    ServerSelection,
    error_scope,
)

log = logging.getLogger(__name__)

EVENT_BUFFER = 256
"""Events buffered per subscriber; a slow subscriber slows delivery, it never loses events."""

WAKE_INTERVAL = 0.05
"""A new command ends the back-off of the oldest pending one at most this often (seconds)."""

PROBE_INTERVAL = 0.25
"""The longest the oldest pending command waits between rounds of members (seconds): it probes
for a new leader on behalf of all, whose back-offs end once it is served. Elections take an
election timeout or two; a back-off grown to seconds would add its own to that."""


class ClientClosedError(UnknownSessionError):
    """The client is closed (by `aclose`, or because its session was lost)."""


@attrs.define
class _Attempts:
    """What the attempts at one request showed, across failovers and resubmissions."""

    sequence: int = 0
    """The command's sequence number (0 for any other request)."""
    uncertain: bool = False
    """Some attempt may have reached the leader without its answer coming back (a lost
    answer, or a forwarding member's "outcome unknown"): no later error proves it did not
    apply."""


class _Unserved(Exception):
    """The one attempt of a command's fast path was not served (the member did not answer or
    cannot serve it): the command goes on in a task of its own, with the usual failover."""


@attrs.define(eq=False)
class _Submission:
    sequence: int
    operation: Command
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: CopycatError | None = None

    def finish(self, result: Any = None, error: CopycatError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class CopycatClient:
    """A session with a cluster; get one from `open_client`."""

    def __init__(
        self,
        addresses: Sequence[str],
        nursery: trio.Nursery,
        transport: Transport,
        *,
        session_timeout: float,
        timeout: float,
        request_timeout: float,
        selection: ServerSelection,
        connection_strategy: ConnectionStrategy,
        recovery: RecoveryStrategy,
        client_id: str,
    ) -> None:
        self.addresses = list(addresses)
        self._nursery = nursery
        self._pool = ConnectionPool(
            transport, nursery, on_request=self._on_server_request, on_reconnect=self._reconnected
        )
        self.session_timeout = session_timeout
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.selection = selection
        self.connection_strategy = connection_strategy
        self.recovery = recovery
        self.client_id = client_id
        self.state = AsyncValue(ClientState.SUSPENDED)
        self.session_id = 0
        self.leader: int | None = None
        self._known_leader: int | None = None
        """The last leader any answer named (`leader` may be None meanwhile)."""
        self.members: tuple[Member, ...] = ()
        self._address: str | None = None
        self._rotation = 0
        self._unanswered: str | None = None
        """The last member that did not answer in time: tried last until it answers again (a
        member that hears clients but cannot reach the leader would otherwise hold every
        request for a whole request timeout, keep-alives included)."""
        self._refused: str | None = None
        """The last member that answered "cannot serve this": tried last until it serves."""
        self._refusals: dict[str, RefusedError] = {}
        """Members that refused the connection itself (TLS, say) while the session opens."""
        self._served = 0
        """How many requests members have served (a back-off that sees it move starts over)."""
        self._retry = trio.Event()
        """Set (and replaced) to end back-offs early; see `_wake_retries`."""
        self._woken_at = -math.inf
        self._head_wakes = 0
        """How many times a new command asked the oldest pending one to try again now."""
        self._pending: set[int] = set()
        """Sequence numbers of the commands being (re)submitted, not yet answered."""
        self._in_flight: dict[str, set[trio.CancelScope]] = {}
        """The attempts waiting on each member, abandoned when another is named leader."""
        self._next_sequence = 1
        self._completed = AsyncValue(0)
        """Highest sequence such that it and every one before it have completed."""
        self._finished: set[int] = set()
        self._unauthorized: set[int] = set()
        """Sequences refused UNAUTHORIZED and not yet given back (see `_give_back`)."""
        self._event_index = AsyncValue(0)
        self.last_index = 0
        """The highest log index any answer has shown this client."""
        self._subscribers: dict[str | None, list[trio.MemorySendChannel[Event]]] = {}
        self._callbacks: dict[str | None, list[Callable[[Event], Awaitable[None] | None]]] = {}
        self._session_generation = 0
        self._recovering = False
        """A lost session is being replaced (RecoveryStrategy.RECOVER)."""

    # --- public ----------------------------------------------------------------------------

    async def submit(
        self,
        operation: Command | Query,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> Any:
        """Apply a command exactly once, or run a query at the chosen consistency.

        Raises the server's error as a typed exception. If no answer comes within the timeout,
        raises OutcomeUnknownError: a command keeps being resubmitted in the background (its
        sequence number must be filled for later commands to apply), so it may still apply.
        """
        self._check_open()
        budget = self.timeout if timeout is None else timeout
        if isinstance(operation, Command):
            return await self._submit_command(operation, budget)
        if isinstance(operation, Query):
            with trio.move_on_after(budget):
                return await self._run_query(operation, consistency)
            raise NoLeaderError(f"no member answered the query within {budget:.1f}s")
        raise TypeError(f"{type(operation).__name__} is neither a Command nor a Query")

    def on_event(
        self, name: str | None, callback: Callable[[Event], Awaitable[None] | None]
    ) -> None:
        """Call `callback(event)` for each event named `name` (None: every event), in order."""
        self._callbacks.setdefault(name, []).append(callback)

    @asynccontextmanager
    async def events(
        self, name: str | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """Receive events named `name` (None: all) while the block runs, in order, exactly once."""
        send, receive = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._subscribers.setdefault(name, []).append(send)
        try:
            yield receive
        finally:
            self._subscribers[name].remove(send)
            await send.aclose()

    async def status(self, address: str, *, timeout: float = 5.0) -> StatusResponse:
        """One member's view of the cluster."""
        response = await self._pool.request(address, StatusRequest(), timeout)
        if not isinstance(response, StatusResponse):
            error = error_of(response)
            raise error_from_info(error) if error else CopycatError("bad status answer")
        return response

    async def aclose(self) -> None:
        """Close the session on the servers (best effort, briefly) and stop."""
        if self.state.value is ClientState.CLOSED:
            return
        session = self.session_id
        self.state.value = ClientState.CLOSED
        if session:
            with trio.move_on_after(min(2.0, self.request_timeout)):
                try:
                    await self._request_any(UnregisterRequest(session=session))
                except CopycatError as exc:  # best effort: the session expires anyway
                    log.info("could not unregister session %s: %s", session, exc)

    # --- session lifecycle -----------------------------------------------------------------

    async def open_session(self) -> None:
        """Register a session, connect for its events, and start keep-alives."""
        response: Any = None
        request = RegisterRequest(client=self.client_id, timeout=int(self.session_timeout * 1000))
        with trio.move_on_after(self.timeout):
            response = await self._request_any(request)
        if response is None:
            raise NoLeaderError(f"could not register a session within {self.timeout:.1f}s")
        self._session_generation += 1
        self.session_id = response.session
        self.last_index = max(self.last_index, response.session)  # its register entry's index
        self.session_timeout = response.timeout / 1000
        self._note_cluster(response.leader, response.members)
        self._next_sequence = 1
        self._completed.value = 0
        self._finished.clear()
        self._unauthorized.clear()
        self._event_index.value = 0
        await self._connect_after_register()
        self.state.value = ClientState.CONNECTED
        self._nursery.start_soon(self._keep_alive, self._session_generation)

    async def _connect_after_register(self) -> None:
        """Connect through the member that answered the registration, else the leader, else
        any other: a member that has not applied the registration yet (say, a follower that
        forwarded it and lags) refuses with UNKNOWN_SESSION after a while."""
        first = self._address or self.addresses[0]
        candidates = [first, self._leader_address() or first, *self.addresses]
        failure: Exception | None = None
        for address in dict.fromkeys(candidates):
            try:
                await self._connect(address)
                return
            except (CopycatError, RequestNotSent, ResponseLost) as exc:
                log.debug("connect to %s failed: %s", address, exc)
                failure = exc
        assert failure is not None
        raise failure

    async def _connect(self, address: str) -> None:
        """Tell `address` that this session talks through it, so it pushes our events."""
        response = await self._pool.request(
            address,
            ConnectRequest(client=self.client_id, session=self.session_id),
            self.request_timeout,
        )
        error = error_of(response)
        if error is not None:
            raise error_from_info(error)
        self._address = address
        self._note_cluster(response.leader, response.members)

    async def _reconnected(self, address: str, connection: RpcConnection) -> None:
        """A new connection to the member this session talks through (the old one broke: it
        may have restarted and forgotten us): connect the session again on it before anything
        else is sent, so the member pushes our events (and resends those not acknowledged).
        Without it, events stopped until the client happened to switch members."""
        if address != self._address or not self.session_id:
            return
        request = ConnectRequest(client=self.client_id, session=self.session_id)
        connected = False
        try:
            response = await connection.request(request, self.request_timeout)
            error = error_of(response)
            if error is not None:
                log.debug("reconnecting the session at %s: %s", address, error)
            else:
                connected = True
                self._note_cluster(response.leader, response.members)
        except (RequestNotSent, ResponseLost) as exc:
            log.debug("reconnecting the session at %s failed: %s", address, exc)
        finally:
            if not connected:  # also when the request that made the connection gave up
                self._forget_address(address)

    def _forget_address(self, address: str) -> None:
        """The member no longer pushes our events (a restarted member that has not applied our
        session yet refuses to connect it): talk through none, so the next request answered
        connects the session where it was answered. Kept, the client believed it was connected
        there and got no event again (resource seed 1025: a watch silent for good)."""
        if self._address == address:
            self._address = None

    async def _keep_alive(self, generation: int) -> None:
        interval = max(0.05, self.session_timeout / 3)
        while self.state.value is not ClientState.CLOSED and generation == self._session_generation:
            await trio.sleep(interval)
            request = KeepAliveRequest(
                session=self.session_id,
                command_sequence=self._completed.value,
                event_index=self._event_index.value,
            )
            try:
                # Each member gets half an interval, so that several can be tried before the
                # session times out, however long request_timeout is.
                with trio.fail_after(max(interval, self.request_timeout)):
                    response = await self._request_any(
                        request, attempt_timeout=min(self.request_timeout, interval / 2)
                    )
                self._note_cluster(response.leader, response.members)
                self.state.value = ClientState.CONNECTED
            except UnknownSessionError:
                await self._session_lost(request.session)
                return
            except (CopycatError, trio.TooSlowError) as exc:
                log.info("keep-alive failed: %s", exc)
                if self.state.value is ClientState.CONNECTED:
                    self.state.value = ClientState.SUSPENDED

    async def _session_lost(self, session: int) -> None:
        """The servers no longer know `session` (it expired). Only the first to hear of the
        current session's loss acts: every other request of that session in flight hears the
        same, during or after the recovery, and must not abandon the new (live) session."""
        if self.state.value is ClientState.CLOSED or session != self.session_id:
            return
        if self._recovering:
            return
        # Release commands waiting for earlier ones of the old session to complete.
        self._completed.value = 2**62
        if self.recovery is RecoveryStrategy.RECOVER:
            log.warning("session %s expired; registering a new one", self.session_id)
            self.state.value = ClientState.SUSPENDED
            generation = self._session_generation
            self._recovering = True
            try:
                await self.open_session()
            except Exception as exc:
                log.warning("could not recover the session: %s", exc)
                self.state.value = ClientState.CLOSED
            finally:
                self._recovering = False
            if self._session_generation == generation:
                self.state.value = ClientState.CLOSED
        else:
            log.warning("session %s expired; closing the client", self.session_id)
            self.state.value = ClientState.CLOSED

    def _check_open(self) -> None:
        if self.state.value is ClientState.CLOSED:
            raise ClientClosedError("the client is closed (its session ended)")

    def _note_cluster(self, leader: int | None, members: Sequence[Member]) -> None:
        if members:
            self.members = tuple(members)
        self.leader = leader
        if leader is not None and leader != self._known_leader:
            if self._known_leader is not None:
                self._abandon_attempts(except_at=self._leader_address())
            self._known_leader = leader

    def _abandon_attempts(self, except_at: str | None) -> None:
        """A new leader was named: stop waiting on other members (a deposed leader cut off
        from its peers holds a command until it is healed); those requests go elsewhere."""
        for address, scopes in self._in_flight.items():
            if address != except_at:
                for scope in scopes:
                    scope.cancel()

    def _leader_address(self) -> str | None:
        for member in self.members:
            if member.id == self.leader:
                return member.effective_client_address
        return None

    # --- requests with failover ------------------------------------------------------------

    def _order(self) -> list[str]:
        """The members to try, best first: the one we talk through first, then the rest in
        the selection's order; known RESERVE members (they serve no clients), the last member
        that could not serve and the last that did not answer go to the back."""
        order = self.selection.order(self.addresses, self._leader_address(), self._rotation)
        if self._address in order:
            order.remove(self._address)
            order.insert(0, self._address)
        reserve = {m.effective_client_address for m in self.members if m.type is MemberType.RESERVE}
        for avoid in (*[a for a in order if a in reserve], self._refused, self._unanswered):
            if avoid in order and len(order) > 1:
                order.remove(avoid)
                order.append(avoid)
        return order

    def _note_answer(self, response: Any) -> None:
        """Raise `last_index` to what an answer shows: a SEQUENTIAL query must never read a
        member that is behind it (the session itself is the register entry's index)."""
        if isinstance(response, (CommandResponse, QueryResponse)):
            self.last_index = max(self.last_index, response.index)
        elif isinstance(response, RegisterResponse) and response.error is None:
            self.last_index = max(self.last_index, response.session)

    def _wake_retries(self, *, head_only: bool = False) -> None:
        """End every back-off now (a member just served a request: the cluster works), or only
        the oldest pending command's (a new command waits for it: it is needed now)."""
        if head_only:
            self._head_wakes += 1
        self._retry.set()
        self._retry = trio.Event()
        self._woken_at = trio.current_time()

    async def _back_off(self, delay: float, attempts: _Attempts | None) -> bool:
        """Sleep `delay`, less if woken; True if woken because a member served meanwhile."""
        served, head_wakes = self._served, self._head_wakes
        deadline = trio.current_time() + delay
        while trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await self._retry.wait()
            if self._served != served:
                return True
            if (
                self._head_wakes != head_wakes
                and attempts is not None
                and attempts.sequence == min(self._pending, default=0)
            ):
                return False
        return False

    async def _request_any(
        self,
        body: Any,
        attempt_timeout: float | None = None,
        attempts: _Attempts | None = None,
        *,
        first_only: bool = False,
    ) -> Any:
        """Send to the current member, failing over to the others, until one serves it.

        An answer that says "this member cannot serve this" (see `error_scope`: NO_LEADER,
        ILLEGAL_MEMBER_STATE, QUERY, INTERNAL) moves on to the next member at once; only an
        answer about the request itself is returned or raised. The connection strategy's
        back-off applies between rounds in which no member served, and ends early when any
        request of this client is served meanwhile. Only for requests that are safe to send
        twice. `attempt_timeout` bounds each member's turn (default: request_timeout);
        `attempts` learns whether some attempt may have reached the leader unanswered.
        `first_only`: try the first member only, and raise _Unserved if it does not serve.
        """
        delays = self.connection_strategy.delays()
        timeout = self.request_timeout if attempt_timeout is None else attempt_timeout
        refusal: ErrorInfo | None = None
        while True:
            for address in self._order():
                try:
                    response = await self._attempt(address, body, timeout)
                except (RequestNotSent, ResponseLost) as exc:
                    log.debug("%s: %s", address, exc)
                    self._note_refusal(address, exc)
                    if isinstance(exc, ResponseLost) and attempts is not None:
                        attempts.uncertain = True
                    self._rotation += 1
                    self._unanswered = address
                    if first_only:
                        raise _Unserved(str(exc)) from exc
                    continue
                if address == self._unanswered:
                    self._unanswered = None
                self._note_answer(response)
                error = error_of(response)
                if error is not None and error_scope(error.type) is ErrorScope.MEMBER:
                    log.debug("%s cannot serve %s: %s", address, type(body).__name__, error)
                    if error.type is ErrorType.INTERNAL and attempts is not None:
                        attempts.uncertain = True
                    self._refused = address
                    refusal = error
                    if first_only:
                        raise _Unserved(error.message)
                    continue
                if address == self._refused:
                    self._refused = None
                if (
                    address != self._address
                    and self.session_id
                    and not isinstance(body, (RegisterRequest, ConnectRequest))
                    # Not to a member that says the session is gone: it would hold the connect
                    # for an election timeout, and the verdict (raised below) came too late.
                    and (error is None or error.type is not ErrorType.UNKNOWN_SESSION)
                ):
                    await self._switch_to(address)
                elif not self.session_id or self._address is None:
                    self._address = address
                self._served += 1
                self._wake_retries()
                if error is not None:
                    raise error_from_info(error)
                return response
            delay = next(delays)
            if delay is None:
                why = f" (last: {refusal.type.name}: {refusal.message})" if refusal else ""
                raise NoLeaderError(f"no member could serve the request{why}")
            if attempts is not None and attempts.sequence == min(self._pending, default=0):
                delay = min(delay, PROBE_INTERVAL)
            if await self._back_off(delay, attempts):
                delays = self.connection_strategy.delays()  # the cluster works again

    def _note_refusal(self, address: str, exc: BaseException) -> None:
        """Before a session opens, a member refusing the connection itself (TLS, a client
        without a certificate, plaintext to a TLS port) is a configuration error: once every
        member has refused, raise it rather than retry until the timeout."""
        if self.session_id:
            return
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, RefusedError):
            cause = cause.__cause__
        if cause is None:
            return
        self._refusals[address] = cause
        if set(self.addresses) <= set(self._refusals):
            raise RefusedError(f"every member refused the connection; {cause}") from cause

    async def _attempt(self, address: str, body: Any, timeout: float) -> Any:
        """One member's turn at a request; given up, as if unanswered, if meanwhile another
        member is named leader (see `_abandon_attempts`)."""
        with trio.CancelScope() as scope:
            scopes = self._in_flight.setdefault(address, set())
            scopes.add(scope)
            try:
                return await self._pool.request(address, body, timeout)
            finally:
                scopes.discard(scope)
        raise ResponseLost(f"stopped waiting on {address}: member {self.leader} leads now")

    async def _switch_to(self, address: str) -> None:
        """Talk through another member from now on (it resends our unacknowledged events)."""
        try:
            await self._connect(address)
        except (CopycatError, RequestNotSent, ResponseLost) as exc:
            log.debug("connect to %s failed: %s", address, exc)

    async def _submit_command(self, operation: Command, budget: float) -> Any:
        submission = _Submission(self._next_sequence, operation)
        self._next_sequence += 1
        if self._pending and trio.current_time() - self._woken_at >= WAKE_INTERVAL:
            # The leader holds this command until the ones before it arrive: the oldest pending
            # one must not sit out its back-off. Only that one, at most once per WAKE_INTERVAL,
            # so submissions to a leaderless cluster cause no storm; once it is served, every
            # back-off ends.
            self._wake_retries(head_only=True)
        generation = self._session_generation
        attempts = _Attempts(sequence=submission.sequence)
        with trio.move_on_after(budget):
            # The fast path: one attempt in the caller's own task. Not served, or cancelled
            # before the answer (by the budget or the caller's own scope), the command goes on
            # in a task that resubmits it until answered: its sequence number must be filled.
            try:
                delay = await self._drive(submission, generation, attempts, first_only=True)
            except trio.Cancelled:
                if not submission.done.is_set():
                    attempts.uncertain = True  # the attempt cut short may have been applied
                    self._nursery.start_soon(self._drive, submission, generation, attempts)
                raise
            if delay is not None:
                self._nursery.start_soon(
                    functools.partial(
                        self._drive, submission, generation, attempts, first_delay=delay
                    )
                )
                await submission.done.wait()
        if not submission.done.is_set():
            raise OutcomeUnknownError(
                f"no answer within {budget:.1f}s; the command is still being resubmitted and "
                "may yet be applied (once)"
            )
        if submission.error is not None:
            raise submission.error
        return submission.result

    async def _drive(
        self,
        submission: _Submission,
        generation: int,
        attempts: _Attempts,
        *,
        first_only: bool = False,
        first_delay: float = 0.0,
    ) -> float | None:
        """Resubmit until answered; then complete in sequence order, after earlier events.
        `first_only`: one attempt, and if it is not answered, the delay after which to go on
        (in a task of its own: `_submit_command`); None once answered and completed."""
        request = CommandRequest(
            session=self.session_id, sequence=submission.sequence, operation=submission.operation
        )
        self._pending.add(submission.sequence)
        try:
            if first_delay:
                await trio.sleep(first_delay)
            return await self._resubmit(submission, generation, request, attempts, first_only)
        finally:
            self._pending.discard(submission.sequence)

    async def _resubmit(
        self,
        submission: _Submission,
        generation: int,
        request: CommandRequest,
        attempts: _Attempts,
        first_only: bool = False,
    ) -> float | None:
        """Submit until answered and completed (None); with `first_only`, stop after the first
        attempt that is not answered and return the delay after which to try again."""
        while True:
            if generation != self._session_generation or self.state.value is ClientState.CLOSED:
                submission.finish(
                    error=OutcomeUnknownError("the session ended before the command was answered")
                )
                return None
            try:
                response = await self._request_any(
                    request, attempts=attempts, first_only=first_only
                )
            except _Unserved:
                return 0.0  # on to the next member at once, as _request_any would go
            except (NoLeaderError, OutcomeUnknownError) as exc:
                log.debug("command %s: %s; resubmitting", submission.sequence, exc)
                if first_only:
                    return 0.05
                await trio.sleep(0.05)
                continue
            except UnknownSessionError as exc:
                await self._session_lost(request.session)
                submission.finish(error=OutcomeUnknownError(f"session lost: {exc}"))
                return None
            except CopycatError as exc:
                if exc.error_type in (ErrorType.COMMAND, ErrorType.INTERNAL):
                    # Not applied (or unknown, when forwarding broke): the same sequence number
                    # makes the resubmission safe.
                    attempts.uncertain |= exc.error_type is ErrorType.INTERNAL
                    if first_only:
                        return 0.02
                    await trio.sleep(0.02)
                    continue
                if attempts.uncertain and exc.error_type is not ErrorType.APPLICATION:
                    # An earlier attempt may have applied: this error proves nothing about it.
                    exc = OutcomeUnknownError(f"an earlier attempt may have applied; then: {exc}")
                self._pending.discard(submission.sequence)
                await self._complete(submission, 0, None, exc, generation)
                if exc.error_type is ErrorType.UNAUTHORIZED:
                    self._give_back(submission.sequence, generation)
                return None
            self._pending.discard(submission.sequence)  # answered: no longer the one held up
            await self._complete(
                submission, response.event_index, response.result, None, generation
            )
            return None

    def _give_back(self, sequence: int, generation: int) -> None:
        """A command refused UNAUTHORIZED was refused by the first member it reached, before
        any sequencing: its number is used again, else the session's later commands and
        queries would wait for it forever. Given back from the top only (a refused command
        below a pending one waits until that one is answered too)."""
        if generation != self._session_generation:
            return
        self._unauthorized.add(sequence)
        while self._next_sequence - 1 in self._unauthorized:
            self._next_sequence -= 1
            self._unauthorized.discard(self._next_sequence)
        self._completed.value = min(self._completed.value, self._next_sequence - 1)

    async def _complete(
        self,
        submission: _Submission,
        event_index: int,
        result: Any,
        error: CopycatError | None,
        generation: int,
    ) -> None:
        """Complete in sequence order, after the events published before the answer. An answer
        of a session that has since been replaced (RECOVER) completes at once: the new
        session's order and acknowledgements are not the old one's to move."""
        sequence = submission.sequence
        if generation != self._session_generation:
            submission.finish(result, error)
            return
        if self._completed.value < sequence - 1:  # else in order already: no task switch
            await self._completed.wait_value(lambda done: done >= sequence - 1)
            if generation != self._session_generation:  # replaced while this one waited
                submission.finish(result, error)
                return
        if self._event_index.value < event_index:
            with trio.move_on_after(self.request_timeout):
                await self._event_index.wait_value(lambda received: received >= event_index)
        self._completed.value = max(self._completed.value, sequence)
        submission.finish(result, error)

    async def _run_query(self, operation: Query, consistency: Consistency) -> Any:
        """Run a query after the session's earlier commands and at or after `last_index`;
        members that cannot serve it (behind, not leading) are tried in turn."""
        request = QueryRequest(
            session=self.session_id,
            sequence=self._next_sequence - 1,
            index=self.last_index,
            operation=operation,
            consistency=consistency,
        )
        try:
            response = await self._request_any(request)
        except UnknownSessionError:
            await self._session_lost(request.session)
            raise
        return response.result

    # --- events ----------------------------------------------------------------------------

    async def _on_server_request(self, body: Any) -> Any:
        """A member pushing our session's events over our connection to it."""
        if not isinstance(body, PublishRequest):
            return PublishResponse(
                status=Status.ERROR,
                error=ErrorInfo(ErrorType.PROTOCOL, f"clients accept no {type(body).__name__}"),
            )
        if body.session != self.session_id:
            return PublishResponse(
                status=Status.ERROR,
                error=ErrorInfo(ErrorType.UNKNOWN_SESSION, "not this client's session"),
                index=self._event_index.value,
            )
        received = self._event_index.value
        if body.event_index <= received:
            return PublishResponse(status=Status.OK, index=received)  # a duplicate
        if body.previous_index != received:
            return PublishResponse(status=Status.ERROR, index=received)  # a gap: resend
        for event in body.events:
            await self._deliver(event)
        self._event_index.value = body.event_index
        return PublishResponse(status=Status.OK, index=body.event_index)

    async def _deliver(self, event: Event) -> None:
        for key in (event.name, None):
            for channel in list(self._subscribers.get(key, ())):
                await channel.send(event)
            for callback in list(self._callbacks.get(key, ())):
                outcome = callback(event)
                if outcome is not None:
                    await outcome


@asynccontextmanager
async def open_client(
    addresses: Sequence[str],
    *,
    session_timeout: float = 5.0,
    timeout: float = 30.0,
    request_timeout: float = 5.0,
    selection: ServerSelection = ServerSelection.ANY,
    connection_strategy: ConnectionStrategy = ConnectionStrategy.EXPONENTIAL,
    recovery: RecoveryStrategy = RecoveryStrategy.CLOSE,
    transport: Transport | None = None,
    client_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> AsyncIterator[CopycatClient]:
    """Open a session with the cluster at any of `addresses`; it closes when the block ends.

    `timeout` bounds each operation; `request_timeout` each single attempt at one member.
    `ssl_context`: TLS for every connection (see transport/tls.py `client_context` and
    docs/security.md); members' certificates are checked against their address's host. If
    every member refuses the connection (TLS, a wrong token), raises RefusedError at once.
    `token`: a bearer token naming this client to members with a tokens file; it is sent over
    TLS only (with `ssl_context` or the CLI's default TLS), so ConfigurationError without.
    """
    if not addresses:
        raise ValueError("open_client needs at least one member address")
    for address in addresses:
        split_address(address)
    for name, value in (
        ("timeout", timeout),
        ("session_timeout", session_timeout),
        ("request_timeout", request_timeout),
    ):
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number of seconds")
    if transport is not None and ssl_context is not None:
        raise ValueError("give open_client a transport or an ssl_context, not both")
    if transport is None:
        tls = TlsContexts.for_client(ssl_context) if ssl_context is not None else None
        tls = tls or default_client_tls.get()
        if token:
            if tls is None:
                raise ConfigurationError(
                    "a token is sent over TLS only (it could be read on the way): give "
                    "open_client an ssl_context too"
                )
            tls = TlsContexts.for_client(tls.client, tls.server_name, token=token)
        transport = TcpTransport(tls=tls)
    elif token:
        raise ValueError("a token goes with open_client's own TCP transport, not a transport")
    async with open_background_nursery() as nursery:
        client = CopycatClient(
            addresses,
            nursery,
            transport,
            session_timeout=session_timeout,
            timeout=timeout,
            request_timeout=request_timeout,
            selection=selection,
            connection_strategy=connection_strategy,
            recovery=recovery,
            client_id=client_id or uuid.uuid4().hex,
        )
        await client.open_session()
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()


__all__ = [
    "ClientClosedError",
    "ClientState",
    "ConnectionStrategy",
    "CopycatClient",
    "RecoveryStrategy",
    "ServerSelection",
    "open_client",
]
