"""An events-and-timers workload for simulations: clients that watch keys, emit to them, arm
timers whose callbacks publish, and check what docs/sessions.md promises about events.

Each event client `i` watches every client's emit key (`e0`, `e1` ...) and every timer name in
its session (again after a RECOVER renewal: a new session watches nothing), then issues Emit,
Arm, Disarm and PutTtl commands on the `SimStore` (sim_machine.py). It records every event
delivered to it (with the session it was delivered in) and, for each acknowledged command, how
many events it had received per session when the answer came.

What is published is known exactly: an Emit's result names the sessions it published to, and
every ring of a timer with `notify` names those it told (`Firing.effect`); members agree on both
(the invariant checker compares results and firings). An emit's event has the command's log
index; a ring's has the index of the entry applied before it fired (`context.index` then).
`check_events` asserts, per session:
- no duplicates: no event is delivered twice;
- in order, none skipped: what a session received is a prefix of what was published to it, in
  publish order (index, then commands before the timers fired after them, then firing order);
- none lost while the session lives: the answer to a command applied at index i in a session
  comes after every event published to that session at an index before i, and after the
  command's own (docs/sessions.md: "before the answer to the command that published them"). An
  answer that arrives once its session was replaced (RECOVER) promises nothing: the session's
  undelivered events died with it. After a session expires nothing more is published to it;
- delivered to the right session: an event's payload names the session it was published to,
  and the client delivers it only in that session;
- exactly once across sessions: each Emit's value is unique, so one applied at two log indices
  is a command applied twice (the per-session invariant cannot see a command a client resubmits
  in a new session).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import trio

from ..client.client import CopycatClient
from ..client.strategies import ClientState, RecoveryStrategy, ServerSelection
from ..protocol.errors import CopycatError
from ..protocol.messages import Event
from ..transport.base import TransportError
from .invariants import Applied
from .sim_machine import Arm, Disarm, Emit, Firing, PutTtl, Watch
from .workload import WorkloadHost

__all__ = ["Answer", "EventRecord", "EventWorkload", "check_events", "published"]


@attrs.frozen
class Answer:
    """An acknowledged command of an event client: its log index, the client's session when the
    answer came, and how many events each session had received by then."""

    index: int
    current_session: int
    received: Mapping[int, int]


@attrs.define
class EventRecord:
    """What one event client saw."""

    client: str
    received: dict[int, list[str]] = attrs.Factory(dict)
    """Session id -> the tokens of the events delivered in it, in delivery order."""
    answers: list[Answer] = attrs.Factory(list)
    misdelivered: list[str] = attrs.Factory(list)

    def deliver(self, session: int, event: Event) -> None:
        """Called by the client as it delivers `event` in `session`."""
        payload = event.payload if isinstance(event.payload, dict) else {}
        token = event_token(payload)
        if payload.get("to") != session:
            self.misdelivered.append(
                f"{self.client}: event {token} for session {payload.get('to')} was delivered in "
                f"session {session}"
            )
        self.received.setdefault(session, []).append(token)

    def answered(self, index: int, session: int) -> None:
        counts = {s: len(tokens) for s, tokens in self.received.items()}
        self.answers.append(Answer(index, session, counts))


def event_token(payload: Mapping[str, Any]) -> str:
    """A name unique to one published event (per session): what it is and where it came from."""
    if payload.get("kind") == "ring":
        return f"ring#{payload.get('number')}"
    return f"emit@{payload.get('index')}"


Order = tuple[int, int, int]
"""Where an event stands in its session's publish order: (index, 0 ring / 1 emit, firing).
Timers due by an entry's time fire just before it applies, under its index: their events come
first in that index's batch."""


def published(
    applied: Iterable[Applied], firings: Iterable[Firing]
) -> dict[int, list[tuple[Order, str]]]:
    """Session id -> every event published to it, in publish order, as (order, token)."""
    out: dict[int, list[tuple[Order, str]]] = {}
    for record in applied:
        if isinstance(record.operation, Emit) and isinstance(record.result, list):
            index, targets = record.result
            for session in targets:
                out.setdefault(session, []).append(((index, 1, 0), f"emit@{index}"))
    for firing in firings:
        effect = firing.effect
        if effect and effect[0] == "ring":
            for session in effect[2]:
                out.setdefault(session, []).append(
                    ((firing.after, 0, firing.number), f"ring#{firing.number}")
                )
    for events in out.values():
        events.sort()
    return out


def check_events(
    applied: Iterable[Applied], firings: Iterable[Firing], records: Iterable[EventRecord]
) -> tuple[list[str], list[str]]:
    """Every broken event promise in the event clients' records, as sentences; pure. Returns
    (problems, late): `late` are answers that came before events owed to them (see
    `EventWorkload.strict_answers`), at most one per session.

    `applied` is one application per log index (`InvariantChecker.applied`), `firings` one per
    firing number (`InvariantChecker.firings`). See the module docstring for what is checked."""
    applied = list(applied)
    by_index = {record.index: record for record in applied}
    publish = published(applied, firings)
    problems: list[str] = []
    late: list[str] = []
    emits: dict[str, list[int]] = {}
    for record in applied:
        if isinstance(record.operation, Emit):
            emits.setdefault(record.operation.value, []).append(record.index)
    for value, indices in sorted(emits.items()):
        if len(indices) > 1:
            problems.append(
                f"exactly once: Emit of {value!r} was applied at log indices {sorted(indices)}: a "
                "command applied twice (across sessions, if the per-session check is silent)"
            )
    for seen in records:
        problems.extend(seen.misdelivered)
        for session, tokens in sorted(seen.received.items()):
            problems.extend(_check_session(seen.client, session, tokens, publish.get(session)))
        sessions: set[int] = set()
        for answer in seen.answers:
            problem = _check_answer(seen.client, answer, by_index, publish, seen.received)
            if problem and problem[0] not in sessions:
                sessions.add(problem[0])  # one per session: the first answer that came too early
                late.append(problem[1])
    return problems, late


def _check_session(
    client: str, session: int, tokens: list[str], events: list[tuple[Order, str]] | None
) -> list[str]:
    expected = [token for _, token in events or ()]
    where = f"events: {client} session {session}"
    seen: set[str] = set()
    for token in tokens:
        if token in seen:
            return [f"{where}: event {token} was delivered twice (received {tokens})"]
        seen.add(token)
    for position, token in enumerate(tokens):
        if position >= len(expected) or expected[position] != token:
            if token not in expected:
                return [f"{where}: received {token}, which was never published to it"]
            missing = expected[position] if position < len(expected) else "?"
            return [
                f"{where}: received {token} as its event #{position + 1}, but the next one "
                f"published to it was {missing} (lost, or out of order); received {tokens}, "
                f"published {expected}"
            ]
    return []


def _check_answer(
    client: str,
    answer: Answer,
    by_index: Mapping[int, Applied],
    publish: Mapping[int, list[tuple[Order, str]]],
    received: Mapping[int, list[str]],
) -> tuple[int, str] | None:
    """(session, why) if the answer came before an event it must come after."""
    applied = by_index.get(answer.index)
    if applied is None:
        return 0, f"events: {client} was answered for index {answer.index}, which no member applied"
    session = applied.session
    if session != answer.current_session:
        return None  # answered after its session was replaced: nothing is promised
    owed = [
        token
        for (index, _kind, _), token in publish.get(session, ())
        if index <= answer.index  # a ring under this index fired just before it applied
    ]
    got = set(received.get(session, ())[: answer.received.get(session, 0)])
    missing = [token for token in owed if token not in got]
    if missing:
        return session, (
            f"events: the answer to {applied.operation!r} (index {answer.index}, session "
            f"{session}) reached {client} before event {missing[0]} published to that session "
            f"by then ({len(missing)} of {len(owed)} owed missing): an event lost or late"
        )
    return None


@attrs.frozen(kw_only=True)
class EventWorkload:
    """Event clients, bounded in count (`max_ops` commands each) and time."""

    clients: int = 2
    max_ops: int = 60
    recover: float = 0.5
    """Probability that a client uses RecoveryStrategy.RECOVER with a short session timeout."""
    short_session_timeouts: tuple[float, ...] = (0.5, 1.0, 2.0)
    session_timeout: float = 5.0
    op_timeout: float = 3.0
    request_timeout: float = 1.0
    strict_answers: bool = False
    """Whether an answer that comes before events owed to it is a failure. docs/sessions.md
    promises it never does, but the client waits at most a request timeout for them, so under
    faults it happens: off by default, reported in the trace (docs/testing.md). The member
    that pushes a session's events restarting no longer causes it (the client connects the
    session again on the new connection); with this on, seed 5001 (every member loses power
    at once) still fails, cause not yet found."""
    notify: float = 0.5
    """Fraction of Arm commands whose rings publish to the timer's watchers (events from
    timer callbacks: the executor once published them under the index of the entry applied
    before the timer fired, and a client holding that index dropped them)."""

    @classmethod
    def draw(cls, rng: random.Random) -> EventWorkload:
        """A seed's event workload."""
        return cls(clients=rng.choice([1, 1, 2]), max_ops=rng.choice([30, 60]))

    def emit_keys(self) -> list[str]:
        return [f"e{i}" for i in range(self.clients)]

    def timer_names(self) -> list[str]:
        return [f"t{i}{kind}" for i in range(self.clients) for kind in "ab"]

    def describe(self) -> str:
        return f"{self.clients} event client(s), up to {self.max_ops} commands each"

    async def run(
        self, sim: WorkloadHost, until: float, records: list[EventRecord] | None = None
    ) -> list[EventRecord]:
        """Run every client until virtual time `until` or its budget; what each saw (also
        appended to `records`, if given)."""
        mine = [EventRecord(f"ev{i}") for i in range(self.clients)]
        if records is not None:
            records.extend(mine)
        sim.client_hosts.extend(f"ev{i}" for i in range(self.clients))
        async with trio.open_nursery() as nursery:
            for index, record in enumerate(mine):
                nursery.start_soon(self._client, sim, index, record, until)
        return mine

    def check(self, sim: Any, records: Iterable[EventRecord]) -> None:
        """Report broken promises to `sim.invariants` (after the run has converged)."""
        records = list(records)
        invariants = sim.invariants
        problems, late = check_events(
            invariants.applied.values(), invariants.firings.values(), records
        )
        for problem in problems:
            invariants.violation(problem)
        for problem in late:
            if self.strict_answers:
                invariants.violation(problem)
            else:
                sim.trace.record("events", f"late (not checked): {problem}")
        sim.trace.record(
            "events",
            f"checked {sum(len(t) for r in records for t in r.received.values())} events "
            f"delivered and {sum(len(r.answers) for r in records)} answers ({len(late)} "
            f"sessions with an answer before its events); {len(invariants.firings)} timer firings",
        )

    async def _client(
        self, sim: WorkloadHost, index: int, record: EventRecord, until: float
    ) -> None:
        rng = sim.rng(f"events{index}")
        recover = rng.random() < self.recover
        session_timeout = (
            rng.choice(self.short_session_timeouts) if recover else self.session_timeout
        )
        selection = rng.choice(list(ServerSelection))
        think = 2 * max(0.0, until - trio.current_time()) / self.max_ops
        tokens = itertools.count(1)
        done = 0
        sessions = 0
        sim.trace.record(
            "client",
            f"ev{index}: {'RECOVER' if recover else 'CLOSE'}, session timeout "
            f"{session_timeout:g}s, {selection.name}",
        )
        while done < self.max_ops and trio.current_time() < until:
            sessions += 1
            try:
                async with sim.client(
                    host=f"ev{index}",
                    name=f"ev{index}s{sessions}",
                    timeout=self.op_timeout,
                    request_timeout=self.request_timeout,
                    session_timeout=session_timeout,
                    selection=selection,
                    recovery=RecoveryStrategy.RECOVER if recover else RecoveryStrategy.CLOSE,
                ) as client:

                    def deliver(event: Event, client: CopycatClient = client) -> None:
                        record.deliver(client.session_id, event)

                    client.on_event(None, deliver)
                    watching = 0
                    while done < self.max_ops and trio.current_time() < until:
                        if client.state.value is ClientState.CLOSED:
                            break
                        if watching != client.session_id:
                            session = client.session_id
                            if await self._watch(sim, client, record, index):
                                watching = session
                            continue
                        done += 1
                        await self._one(sim, client, record, index, rng, next(tokens))
                        await trio.sleep(rng.uniform(0, think))
            except (CopycatError, TransportError) as exc:
                sim.trace.record("client", f"ev{index} session ended: {type(exc).__name__}")
                await trio.sleep(rng.uniform(0.1, 1.0))

    async def _watch(
        self, sim: WorkloadHost, client: CopycatClient, record: EventRecord, index: int
    ) -> bool:
        """Watch every emit key and timer name in the client's current session."""
        keys = (*self.emit_keys(), *self.timer_names())
        if not await self._submit(sim, client, record, f"ev{index}", Watch(keys)):
            await trio.sleep(0.1)
            return False
        return True

    async def _one(
        self,
        sim: WorkloadHost,
        client: CopycatClient,
        record: EventRecord,
        index: int,
        rng: random.Random,
        token: int,
    ) -> None:
        roll = rng.random()
        command: Any
        if roll < 0.5:
            command = Emit(rng.choice(self.emit_keys()), f"ev{index}-{token}")
        elif roll < 0.7:
            repeat = rng.random() < 0.5
            command = Arm(
                f"t{index}{'a' if repeat else 'b'}",
                rng.randint(0, 1500),
                rng.randint(100, 600) if repeat else None,
                rng.random() < self.notify,
            )
        elif roll < 0.8:
            command = Disarm(f"t{index}{rng.choice('ab')}")
        else:
            command = PutTtl(f"x{index}", f"ev{index}-{token}", rng.randint(50, 2000))
        await self._submit(sim, client, record, f"ev{index}", command)

    async def _submit(
        self, sim: WorkloadHost, client: CopycatClient, record: EventRecord, who: str, command: Any
    ) -> bool:
        """Submit one command; on an answer, note what had been received. Whether it applied
        otherwise does not matter here (the checks use what members applied)."""
        guard = client.timeout * 3 + client.request_timeout * 4
        sim.trace.record("invoke", f"{who} {command!r}")
        try:
            with trio.fail_after(guard):
                result = await client.submit(command)
        except (CopycatError, TransportError, trio.TooSlowError) as exc:
            sim.trace.record("client", f"{who} {type(command).__name__}: {type(exc).__name__}")
            return False
        at = result[0] if isinstance(result, list) else result
        if isinstance(at, int) and not isinstance(at, bool):
            record.answered(at, client.session_id)
        sim.trace.record("ok", f"{who} {type(command).__name__} -> {result!r}")
        return True
