"""A pipelining workload for simulations: clients with many commands in flight in one session,
SEQUENTIAL reads checked for what sessions promise, and sessions that expire and recover.

Each pipelining client `i` writes only its own key `p{i}`: Put(p{i}, str(n)) for n = 1, 2, 3 ...
from up to `window` slot tasks at once in one session (slot `s` is process `p{i}/{s}` in the
shared History, so the linearizability checker sees its commands as concurrent). n is taken in
the same step as the command's sequence number, so sequence order is n order within a session.
A reader task of the same client reads the key: now and then LINEARIZABLE (into the History),
mostly SEQUENTIAL, which is not linearizable and is checked here instead (`check_pipeline`).

What docs/sessions.md promises a SEQUENTIAL read, and what is checked: it is answered once the
member has applied every index the client has seen (its session's registration included) and
the session's earlier commands. For a key only this client writes that gives, in log positions
(the index at which the value read was applied; absent is 0), a read returns a value applied at
or after
- every Put of this client acknowledged before the read started (read your writes: in the same
  session by the index, in a later one because the new registration is appended after them),
- every Put submitted earlier in the read's own session (the session's earlier commands),
- every value an earlier read of this client returned (monotonic reads: again across sessions,
  because a new registration comes after whatever an earlier read saw).
No floor is reset when a session is renewed. Positions, not the values themselves, are
compared: RecoveryStrategy.RECOVER keeps no order between an old session's commands and a new
one's, so a lower n may legitimately apply after a higher one.

Exactly once across session expiry: every Put's value is unique, so a Put applied at two log
indices (by any sessions) is a command applied twice; the per-session invariant (session,
sequence) cannot see a command that a client resubmitted in a new session.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import trio

from ..client.client import CopycatClient
from ..client.strategies import ClientState, RecoveryStrategy, ServerSelection
from ..protocol.errors import ApplicationError, CopycatError
from ..protocol.operations import Consistency
from ..recipes.kv import Get, Put
from ..transport.base import TransportError
from .history import OpKind, Outcome
from .invariants import Applied
from .workload import WorkloadHost, command_outcome

__all__ = ["PipelineRecord", "PipelineWorkload", "SequentialRead", "check_pipeline"]


@attrs.frozen
class SequentialRead:
    """One SEQUENTIAL read that answered, with what the client knew when it started."""

    process: str
    key: str
    value: Any
    invoked: float
    completed: float
    acknowledged: int
    """How many of the client's Puts (`PipelineRecord.acknowledged`) were acknowledged before
    the read started."""
    session_floor: int
    """The highest n submitted in the read's session before it started (0: none)."""
    earlier_reads: int
    """How many of the client's SEQUENTIAL reads had answered before this one started."""


@attrs.define
class PipelineRecord:
    """What one pipelining client saw, for `check_pipeline`."""

    key: str
    acknowledged: list[int] = attrs.Factory(list)
    """n of each acknowledged Put, in the order the answers came."""
    reads: list[SequentialRead] = attrs.Factory(list)
    """SEQUENTIAL reads that answered, in order (one reader: they do not overlap)."""
    submitted: dict[int, int] = attrs.Factory(dict)
    """Session id -> the highest n submitted in it so far."""
    sessions: list[int] = attrs.Factory(list)
    """The client's sessions, in the order they were first used (RECOVER renews them)."""

    def note_session(self, trace: Any, process: str, session: int) -> None:
        """Record (and trace) a session the client is using for the first time."""
        if session and session not in self.sessions:
            if self.sessions:
                trace.record(
                    "client", f"{process} renewed its session {self.sessions[-1]} as {session}"
                )
            self.sessions.append(session)


def _positions(applied: Iterable[Applied], keys: set[str]) -> dict[tuple[str, str], list[int]]:
    """(key, value) -> the distinct log indices at which Put(key, value) was applied."""
    found: dict[tuple[str, str], set[int]] = {}
    for record in applied:
        operation = record.operation
        if isinstance(operation, Put) and operation.key in keys:
            found.setdefault((operation.key, operation.value), set()).add(record.index)
    return {what: sorted(indices) for what, indices in found.items()}


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def check_pipeline(applied: Iterable[Applied], records: Iterable[PipelineRecord]) -> list[str]:
    """Every broken promise in the pipelining clients' records, as sentences; pure.

    `applied` is every command application the members reported (`InvariantChecker.applied`:
    one per log index). See the module's docstring for what is checked and why.
    """
    records = list(records)
    positions = _positions(applied, {r.key for r in records})
    problems: list[str] = []
    for (key, value), indices in sorted(positions.items()):
        if len(indices) > 1:
            problems.append(
                f"exactly once: Put({key!r}, {value!r}) was applied at log indices {indices}: "
                "a command applied twice (across sessions, if the per-session check is silent)"
            )
    for record in records:
        problems.extend(_check_reads(record, positions))
    return problems


def _check_reads(
    record: PipelineRecord, positions: Mapping[tuple[str, str], list[int]]
) -> list[str]:
    key = record.key
    problems: list[str] = []

    def position(value: Any, why: str) -> int | None:
        if value is None:
            return 0
        indices = positions.get((key, value))
        if not indices:
            problems.append(f"pipeline {key}: {why} {value!r}, which no member ever applied")
            return None
        return indices[0]

    # Prefix maxima: the (position, value) highest among the first k acknowledged Puts and
    # among the first k earlier reads.
    acked_floor: list[tuple[int, Any]] = [(0, None)]
    for n in record.acknowledged:
        acked_at = position(str(n), "acknowledged Put of") or 0
        acked_floor.append(max(acked_floor[-1], (acked_at, str(n)), key=_first))
    read_floor: list[tuple[int, Any]] = [(0, None)]
    for read in record.reads:
        at = position(read.value, f"{read.process} SEQUENTIAL read returned")
        if at is not None:
            where = f"{read.value!r} (applied at index {at})" if at else "nothing (absent)"
            span = f"[{read.invoked:.4f}, {read.completed:.4f}]"
            floors: list[tuple[str, tuple[int, Any]]] = [
                (
                    "acknowledged to this client before the read started (read your writes)",
                    acked_floor[read.acknowledged],
                ),
                ("read earlier by this client (monotonic reads)", read_floor[read.earlier_reads]),
            ]
            if read.session_floor:
                own = position(str(read.session_floor), "the session submitted") or 0
                floors.append(
                    (
                        "submitted earlier in the read's session (its earlier commands)",
                        (own, str(read.session_floor)),
                    )
                )
            for why, (floor_at, floor_value) in floors:
                if at < floor_at:
                    problems.append(
                        f"SEQUENTIAL read: {read.process} GET {key!r} {span} returned {where}, "
                        f"but {floor_value!r} (applied at index {floor_at}) was {why}"
                    )
        read_floor.append(max(read_floor[-1], (at or 0, read.value), key=_first))
    return problems


@attrs.frozen(kw_only=True)
class PipelineWorkload:
    """Pipelining clients, each on its own key, bounded in count (`max_ops` Puts) and time."""

    clients: int = 2
    max_ops: int = 300
    """Puts per client, at most."""
    window: tuple[int, int] = (2, 16)
    """Each client draws how many commands it keeps in flight from this range."""
    recover: float = 0.5
    """Probability that a client uses RecoveryStrategy.RECOVER with a short session timeout."""
    short_session_timeouts: tuple[float, ...] = (0.5, 1.0, 2.0)
    session_timeout: float = 5.0
    op_timeout: float = 3.0
    request_timeout: float = 1.0
    think: float | None = None
    """Longest pause of a slot between its commands (uniform), seconds; None spreads the
    client's Puts over the whole run (twice the mean gap, per slot)."""
    read_think: float = 0.15
    linearizable_reads: float = 0.2
    """Fraction of the reader's reads made LINEARIZABLE (into the History)."""
    selection: ServerSelection | None = None
    """Whom the clients prefer; None: each draws one."""

    @classmethod
    def draw(cls, rng: random.Random) -> PipelineWorkload:
        """A seed's pipelining workload."""
        return cls(clients=rng.choice([1, 2, 2]), max_ops=rng.choice([80, 160]))

    def key_names(self) -> list[str]:
        return [f"p{i}" for i in range(self.clients)]

    def describe(self) -> str:
        return f"{self.clients} pipelining client(s), up to {self.max_ops} puts each"

    async def run(
        self, sim: WorkloadHost, until: float, records: list[PipelineRecord] | None = None
    ) -> list[PipelineRecord]:
        """Run every client until virtual time `until` or its budget; what each saw (also
        appended to `records`, if given)."""
        mine = [PipelineRecord(key) for key in self.key_names()]
        if records is not None:
            records.extend(mine)
        records = mine
        sim.client_hosts.extend(f"pipe{index}" for index in range(self.clients))
        async with trio.open_nursery() as nursery:
            for index, record in enumerate(records):
                nursery.start_soon(self._client, sim, index, record, until)
        return records

    def check(self, sim: Any, records: Iterable[PipelineRecord]) -> None:
        """Report broken promises to `sim.invariants` (after the run has converged)."""
        records = list(records)
        for problem in check_pipeline(sim.invariants.applied.values(), records):
            sim.invariants.violation(problem)
        sim.trace.record(
            "pipeline",
            f"checked {sum(len(r.reads) for r in records)} SEQUENTIAL reads and "
            f"{sum(len(r.acknowledged) for r in records)} acknowledged puts in "
            f"{sum(len(r.sessions) for r in records)} sessions",
        )

    async def _client(
        self, sim: WorkloadHost, index: int, record: PipelineRecord, until: float
    ) -> None:
        rng = sim.rng(f"pipeline{index}")
        window = rng.randint(*self.window)
        recover = rng.random() < self.recover
        session_timeout = (
            rng.choice(self.short_session_timeouts) if recover else self.session_timeout
        )
        selection = self.selection or rng.choice(list(ServerSelection))
        request_timeout = self.request_timeout * rng.choice([0.5, 1])
        think = self.think
        if think is None:
            think = 2 * window * max(0.0, until - trio.current_time()) / self.max_ops
        numbers = itertools.count(1)
        budget = [self.max_ops]
        sim.trace.record(
            "client",
            f"p{index}: window {window}, {'RECOVER' if recover else 'CLOSE'}, session timeout "
            f"{session_timeout:g}s, {selection.name}",
        )

        def more() -> bool:
            return budget[0] > 0 and trio.current_time() < until

        sessions = 0
        while more():
            sessions += 1
            try:
                async with sim.client(
                    host=f"pipe{index}",
                    name=f"p{index}s{sessions}",
                    timeout=self.op_timeout,
                    request_timeout=request_timeout,
                    session_timeout=session_timeout,
                    selection=selection,
                    recovery=RecoveryStrategy.RECOVER if recover else RecoveryStrategy.CLOSE,
                ) as client:
                    sim.trace.record("client", f"p{index} opened session {client.session_id}")

                    def going(client: CopycatClient = client) -> bool:
                        return more() and client.state.value is not ClientState.CLOSED

                    going_now: Callable[[], bool] = going

                    async with trio.open_nursery() as nursery:
                        for slot in range(window):
                            nursery.start_soon(
                                self._slot,
                                sim,
                                client,
                                index,
                                slot,
                                record,
                                numbers,
                                budget,
                                going_now,
                                rng,
                                think,
                            )
                        nursery.start_soon(self._reader, sim, client, index, record, going_now, rng)
            except (CopycatError, TransportError) as exc:
                sim.trace.record("client", f"p{index} session ended: {type(exc).__name__}")
                await trio.sleep(rng.uniform(0.1, 1.0))

    async def _slot(
        self,
        sim: WorkloadHost,
        client: CopycatClient,
        index: int,
        slot: int,
        record: PipelineRecord,
        numbers: Iterator[int],
        budget: list[int],
        going: Callable[[], bool],
        rng: random.Random,
        think: float,
    ) -> None:
        history = sim.history
        key = record.key
        generation = 0
        guard = client.timeout * 3 + client.request_timeout * 4
        while going():
            budget[0] -= 1
            # From here to the command's sequence number (taken inside submit before it first
            # waits) nothing yields: n and the sequence number are taken in the same order.
            n = next(numbers)
            record.note_session(sim.trace, f"p{index}", client.session_id)
            record.submitted[client.session_id] = n
            process = f"p{index}/{slot}" + (f".{generation}" if generation else "")
            op = history.invoke(process, OpKind.PUT, key, str(n))
            sim.trace.record("invoke", f"{process} PUT {key}={n}")
            try:
                with trio.fail_after(guard):
                    result = await client.submit(Put(key, str(n)))
            except ApplicationError as exc:  # applied, and raised (a Put does not)
                history.complete(op, None)
                record.acknowledged.append(n)
                sim.trace.record("ok", f"{process} PUT {key}={n}: applied, raised {exc}")
            except (CopycatError, TransportError, trio.TooSlowError) as exc:
                outcome = command_outcome(exc)
                if outcome is Outcome.FAILED:
                    history.fail(op)
                else:
                    history.unknown(op)
                    generation += 1  # a process with an operation in limbo is done
                sim.trace.record(outcome.value, f"{process} PUT {key}={n}: {type(exc).__name__}")
            else:
                history.complete(op, result)
                record.acknowledged.append(n)
                sim.trace.record("ok", f"{process} PUT {key}={n}")
            await trio.sleep(rng.uniform(0, think))

    async def _reader(
        self,
        sim: WorkloadHost,
        client: CopycatClient,
        index: int,
        record: PipelineRecord,
        going: Callable[[], bool],
        rng: random.Random,
    ) -> None:
        history = sim.history
        key = record.key
        generation = 0
        guard = client.timeout * 3 + client.request_timeout * 4
        while going():
            await trio.sleep(rng.uniform(0, self.read_think))
            if not going():
                return
            if rng.random() < self.linearizable_reads:
                process = f"p{index}/r" + (f".{generation}" if generation else "")
                op = history.invoke(process, OpKind.GET, key)
                try:
                    with trio.fail_after(guard):
                        value = await client.submit(Get(key))
                except (CopycatError, TransportError, trio.TooSlowError) as exc:
                    history.unknown(op)
                    generation += 1
                    sim.trace.record("unknown", f"{process} GET {key}: {type(exc).__name__}")
                    continue
                history.complete(op, value)
                sim.trace.record("ok", f"{process} GET {key} -> {value!r}")
                continue
            process = f"p{index}/s"
            invoked = trio.current_time()
            # What the client knows as the read starts (nothing yields until it is sent).
            acknowledged, earlier = len(record.acknowledged), len(record.reads)
            session_floor = record.submitted.get(client.session_id, 0)
            record.note_session(sim.trace, f"p{index}", client.session_id)
            try:
                with trio.fail_after(guard):
                    value = await client.submit(Get(key), consistency=Consistency.SEQUENTIAL)
            except (CopycatError, TransportError, trio.TooSlowError) as exc:
                sim.trace.record("client", f"{process} SEQUENTIAL GET {key}: {type(exc).__name__}")
                continue
            record.reads.append(
                SequentialRead(
                    process,
                    key,
                    value,
                    invoked,
                    trio.current_time(),
                    acknowledged,
                    session_floor,
                    earlier,
                )
            )
            sim.trace.record("ok", f"{process} SEQUENTIAL GET {key} -> {value!r}")
