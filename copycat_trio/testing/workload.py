"""A key-value workload for simulations: clients doing random puts, gets, CASes and deletes on a
few keys, each operation recorded in a History with its outcome as the client can know it.

How an outcome is classified is the heart of a sound check (see `command_outcome`): an error whose
type says the command did not take effect makes it FAILED, so a client that reports such an error
for a command that did apply is caught by the linearizability checker (a later read sees the
write). A timeout, a lost connection, a lost session, INTERNAL or anything unexpected makes it
UNKNOWN: it may have taken effect, once, at any time after it was invoked. An APPLICATION error
means the command was applied (and raised).
"""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs
import trio

from ..client.client import ClientClosedError, CopycatClient
from ..client.strategies import ClientState, ServerSelection
from ..protocol.errors import ApplicationError, CopycatError, ErrorType, OutcomeUnknownError
from ..protocol.operations import Consistency
from ..recipes.kv import CompareAndSet, Delete, Get, Put
from ..transport.base import TransportError
from .history import History, OpKind, Outcome

__all__ = ["PROVES_NOT_APPLIED", "KvWorkload", "WorkloadHost", "command_outcome"]


class _Recorder(Protocol):
    def record(self, kind: str, text: str) -> None: ...


class WorkloadHost(Protocol):
    """What a workload runs against: a simulation, or a cluster of real processes."""

    client_hosts: list[str]

    @property
    def history(self) -> History: ...

    @property
    def trace(self) -> _Recorder: ...

    def rng(self, name: str) -> random.Random: ...

    def client(
        self, *, host: str = ..., name: str | None = None, **options: Any
    ) -> AbstractAsyncContextManager[CopycatClient]: ...


PROVES_NOT_APPLIED: dict[ErrorType, bool] = {
    ErrorType.NO_LEADER: True,  # the member knew no leader to forward it to
    ErrorType.QUERY: True,  # not served (and no command at all)
    ErrorType.COMMAND: True,  # "could not be sequenced or committed; it was not applied"
    ErrorType.APPLICATION: False,  # applied, and raised: see KvWorkload
    ErrorType.ILLEGAL_MEMBER_STATE: True,  # the member refused it (a RESERVE member, say)
    ErrorType.UNKNOWN_SESSION: True,  # no session to apply it in
    ErrorType.INTERNAL: False,  # "outcome unknown", or a failure nobody can see through
    ErrorType.CONFIGURATION: True,  # a change rejected
    ErrorType.PROTOCOL: True,  # a request no member could decode
    ErrorType.UNKNOWN_OPERATION: True,  # logged, but its application changed nothing
    ErrorType.UNAUTHORIZED: True,  # refused by the member it reached, before it was sequenced
}
"""Per error type: whether the protocol says a request answered with it did not take effect."""


def command_outcome(exc: BaseException) -> Outcome:
    """What a command's exception, as `submit` raised it, says about whether it took effect.

    FAILED when the error's type says the command did not happen (`PROVES_NOT_APPLIED`): the
    client may raise such an error only if no attempt at the command can have applied, so
    recording it as failed is what lets the checker catch a client that breaks that promise
    (one that, say, reported a RESERVE member's ILLEGAL_MEMBER_STATE for a command whose answer
    was lost). Everything else is UNKNOWN: OutcomeUnknownError (no answer in time, or the
    session was lost while the command was being resubmitted), INTERNAL, TooSlowError from an
    outer timeout, transport errors, errors of no known type. ApplicationError is not an
    outcome question (the command was applied): callers record it as completed.
    """
    if isinstance(exc, ClientClosedError):
        return Outcome.FAILED  # raised before anything is sent
    if isinstance(exc, OutcomeUnknownError) or not isinstance(exc, CopycatError):
        return Outcome.UNKNOWN
    if PROVES_NOT_APPLIED.get(exc.error_type, False):
        return Outcome.FAILED
    return Outcome.UNKNOWN


@attrs.frozen(kw_only=True)
class KvWorkload:
    """Random operations on a few keys by several clients, each bounded in count and time."""

    clients: int = 4
    keys: int = 3
    max_ops: int = 150
    """Operations per client, at most."""
    think: float | None = None
    """Longest pause between a client's operations, in seconds (uniform); None spreads each
    client's operations over the whole run (twice the mean gap)."""
    bursty: float = 0.0
    """Probability that a client skips its pause (operations come in bursts)."""
    op_timeout: float = 3.0
    """The client's per-operation timeout (after it a command is UNKNOWN)."""
    request_timeout: float = 1.0
    session_timeout: float = 5.0
    weights: tuple[tuple[float, float, float, float], ...] = (
        (0.4, 0.3, 0.2, 0.1),
        (0.9, 0.05, 0.05, 0.0),
        (0.1, 0.5, 0.3, 0.1),
    )
    """Relative frequencies of get, put, cas, delete: each client draws one of these (a
    read-mostly client keeps reading where a writer's pending command would hold it up)."""
    lease_reads: float = 0.3
    """Fraction of gets made at LINEARIZABLE_LEASE rather than LINEARIZABLE."""
    check_lease_reads: bool = True
    """False: lease reads go into the history as of unknown outcome, so the check ignores them
    (clocks drift beyond what the lease allows: they may be stale, and nothing else may)."""

    def key_names(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)]

    async def run(self, sim: WorkloadHost, until: float) -> None:
        """Run every client until virtual time `until` or its operation budget."""
        sim.client_hosts.extend(f"client{index}" for index in range(self.clients))
        async with trio.open_nursery() as nursery:
            for index in range(self.clients):
                rng = sim.rng(f"client{index}")
                nursery.start_soon(self._client, sim, index, rng, until)

    async def _client(
        self, sim: WorkloadHost, index: int, rng: random.Random, until: float
    ) -> None:
        history = sim.history
        think = self.think
        if think is None:
            think = 2 * max(0.0, until - trio.current_time()) / self.max_ops
        done = 0
        generation = 0
        sessions = 0
        seen: dict[str, Any] = {}
        # Clients differ: whom they prefer, and how long they wait for one member's answer
        # (a patient client may get an answer from a member that was paused meanwhile).
        selection = rng.choice(list(ServerSelection))
        weights = rng.choice(self.weights)
        request_timeout = self.request_timeout * rng.choice([0.5, 1, 1, 4])
        op_timeout = max(self.op_timeout * rng.choice([0.3, 1, 1]), request_timeout * 1.5)
        lease_reads = rng.choice([0.0, self.lease_reads, 0.9]) if self.lease_reads else 0.0
        if index == 0 and self.lease_reads:
            # A dedicated lease reader: it keeps reading (no pending write of its own holds its
            # reads back) and gives up quickly, so it reads often from whoever it can reach,
            # a deposed leader included.
            weights, lease_reads = (0.95, 0.05, 0.0, 0.0), 1.0
            request_timeout = op_timeout = self.request_timeout / 2
        while done < self.max_ops and trio.current_time() < until:
            sessions += 1
            try:
                async with sim.client(
                    host=f"client{index}",
                    name=f"c{index}s{sessions}",
                    timeout=op_timeout,
                    request_timeout=request_timeout,
                    session_timeout=self.session_timeout,
                    selection=selection,
                ) as client:
                    sim.trace.record("client", f"c{index} opened session {client.session_id}")
                    while done < self.max_ops and trio.current_time() < until:
                        done += 1
                        process = f"c{index}" if not generation else f"c{index}.{generation}"
                        outcome = await self._one(
                            sim,
                            client,
                            history,
                            process,
                            rng,
                            f"{index}-{done}",
                            seen,
                            weights,
                            lease_reads,
                        )
                        if outcome is Outcome.UNKNOWN:
                            generation += 1  # a process with an operation in limbo is done
                        if client.state.value is ClientState.CLOSED:
                            break  # the session ended: open another one
                        if rng.random() >= self.bursty:
                            await trio.sleep(rng.uniform(0, think))
                        else:
                            await trio.lowlevel.checkpoint()
            except (CopycatError, TransportError) as exc:
                sim.trace.record("client", f"c{index} session ended: {type(exc).__name__}")
                await trio.sleep(rng.uniform(0.1, 1.0))

    async def _one(
        self,
        sim: WorkloadHost,
        client: CopycatClient,
        history: History,
        process: str,
        rng: random.Random,
        token: str,
        seen: dict[str, Any],
        weights: tuple[float, float, float, float],
        lease_reads: float,
    ) -> Outcome:
        key = rng.choice(self.key_names())
        kind = rng.choices([OpKind.GET, OpKind.PUT, OpKind.CAS, OpKind.DELETE], weights)[0]
        # Outer guard: the client's own timeout should always fire first.
        guard = client.timeout * 3 + client.request_timeout * 4
        if kind is OpKind.GET:
            lease = rng.random() < lease_reads
            op = history.invoke(process, kind, key)
            sim.trace.record("invoke", f"{process} GET {key}{' (lease)' if lease else ''}")
            consistency = Consistency.LINEARIZABLE_LEASE if lease else Consistency.LINEARIZABLE
            try:
                with trio.fail_after(guard):
                    read = await client.submit(Get(key), consistency=consistency)
            except (CopycatError, TransportError, trio.TooSlowError) as exc:
                history.unknown(op)  # a read that did not answer took no effect either way
                sim.trace.record("unknown", f"{process} GET {key}: {type(exc).__name__}")
                return Outcome.OK  # a read of unknown outcome leaves nothing in limbo
            seen[key] = read
            if lease and not self.check_lease_reads:
                history.unknown(op)  # beyond the lease's clock bound: may be stale
                sim.trace.record("ok", f"{process} GET {key} -> {read!r} (lease, unchecked)")
                return Outcome.OK
            history.complete(op, read)
            sim.trace.record("ok", f"{process} GET {key} -> {read!r}")
            return Outcome.OK
        value: Any
        if kind is OpKind.PUT:
            value = f"v{token}"
            command: Any = Put(key, value)
            text = f"PUT {key}={value}"
        elif kind is OpKind.CAS:
            expected = seen.get(key) if rng.random() < 0.8 else None
            value = (expected, f"v{token}")
            command = CompareAndSet(key, expected, value[1])
            text = f"CAS {key} {expected}->{value[1]}"
        else:
            value = None
            command = Delete(key)
            text = f"DELETE {key}"
        op = history.invoke(process, kind, key, value)
        sim.trace.record("invoke", f"{process} {text}")
        try:
            with trio.fail_after(guard):
                result = await client.submit(command)
        except ApplicationError as exc:
            # Applied (and raised): a write's effect is known; a CAS's is not.
            if kind is OpKind.CAS:
                history.unknown(op)
                sim.trace.record("unknown", f"{process} {text}: {exc}")
                return Outcome.UNKNOWN
            history.complete(op, None)
            sim.trace.record("ok", f"{process} {text}: applied, raised {exc}")
            return Outcome.OK
        except (CopycatError, TransportError, trio.TooSlowError) as exc:
            outcome = command_outcome(exc)
            if outcome is Outcome.FAILED:
                history.fail(op)
            else:
                history.unknown(op)
            sim.trace.record(outcome.value, f"{process} {text}: {type(exc).__name__}")
            return outcome
        history.complete(op, result)
        if kind is OpKind.PUT:
            seen[key] = value
        elif kind is OpKind.CAS and result:
            seen[key] = value[1]
        elif kind is OpKind.DELETE:
            seen[key] = None
        sim.trace.record("ok", f"{process} {text} -> {result!r}")
        return Outcome.OK
