"""A resources workload for simulations: clients of the Resources state machine contending for
a lock and writing a fenced map entry under it, offering to and polling a queue, and changing a
map that a watcher watches, all under the simulation's faults; checked by resource_checks.py.

- Lockers (`lockers`) each loop: acquire the lock LOCK (with a timeout), write the protected
  entry FENCED/KEY once or twice with the fencing check (read it; compare-and-set it to
  "token:writer:n" unless it holds a higher token), release. Half of them (`recover`) use
  RecoveryStrategy.RECOVER with a short session timeout, so partitions and pauses expire their
  sessions while they hold the lock, and a new holder is granted while the old one still
  believes it holds.
- Producers offer distinct items "q{p}-{n}" to QUEUE; consumers poll it with timeouts of 0, 0.5
  or 2 s (a timed-out poll withdraws, giving back an item handed to it meanwhile). After the
  faults a fresh client drains the queue.
- One watcher watches the map WATCHED from before any change to it (writers wait for its
  registration), resuming from the revision of the last change it yielded whenever its session
  or client ends; writers put, delete and compare-and-set a few keys of it, with unique values.
The protected entry and the watched map's keys go into the simulation's History too (as
registers "FENCED/KEY", "WATCHED/k"), so the linearizability check covers them as well.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import attrs
import trio

from ..client.client import CopycatClient
from ..client.strategies import ClientState, RecoveryStrategy, ServerSelection
from ..protocol.errors import ApplicationError, CopycatError
from ..recipes.resources import Lock, LockNotHeldError, LockTimeoutError, Map, Queue
from ..recipes.resources.kinds.map import MapWatch
from ..transport.base import TransportError
from .history import OpKind, Outcome
from .invariants import InvariantChecker
from .resource_checks import (
    Change,
    LearnedGrant,
    Receipt,
    check_fencing,
    check_lock,
    check_queue,
    check_watch,
    fenced_value,
    hold_ends,
    lock_grants,
    parse_fenced,
)
from .resource_machine import ResourceProbe, resources_state
from .workload import WorkloadHost, command_outcome

__all__ = ["FENCED", "KEY", "LOCK", "QUEUE", "WATCHED", "ResourceRecord", "ResourceWorkload"]

LOCK = "sim-lock"
FENCED = "fenced"
KEY = "resource"
QUEUE = "jobs"
WATCHED = "watched"

FAULTS = (CopycatError, TransportError, trio.TooSlowError)
"""What a client call may raise under faults (ResourceError is a CopycatError)."""


class ResourceHost(WorkloadHost, Protocol):
    """What the resources scenario runs against: a simulation."""

    invariants: InvariantChecker
    cluster: Any

    async def run_faults(self, until: float) -> None: ...

    async def heal(self) -> None: ...

    async def settle(self, timeout: float | None = None) -> int | None: ...

    async def converge(
        self, state: Callable[[Any], Any] | None = None, timeout: float = 30.0
    ) -> bool: ...


@attrs.define
class ResourceRecord:
    """What the clients saw, for the checks."""

    learned: list[LearnedGrant] = attrs.Factory(list)
    offers: dict[str, Outcome] = attrs.Factory(dict)
    receipts: list[Receipt] = attrs.Factory(list)
    acknowledged: list[tuple[str, str]] = attrs.Factory(list)
    """(key, value) of each acknowledged put of the watched map."""
    watched: list[Change] = attrs.Factory(list)
    """Every change the watcher yielded, in order, across its resumptions."""
    watch_session: int | None = None
    """The session whose watch registration (from now) succeeded first."""
    watching: trio.Event = attrs.Factory(trio.Event)
    writes: dict[str, int] = attrs.Factory(dict)
    """Fenced writes by outcome: accepted, refused, lost (CAS lost a race), unknown."""


class _Process:
    """A client's process name in the History: a new one after an operation of unknown outcome
    (a process with an operation in limbo is done)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.generation = 0

    @property
    def name(self) -> str:
        return f"{self.base}.{self.generation}" if self.generation else self.base

    def limbo(self) -> None:
        self.generation += 1


@attrs.frozen(kw_only=True)
class ResourceWorkload:
    """Lockers, producers, consumers, map writers and a watcher, bounded in count and time."""

    lockers: int = 3
    producers: int = 2
    consumers: int = 2
    writers: int = 2
    keys: int = 3
    max_ops: int = 60
    """Operations per client (lock rounds, offers, polls, map writes), at most."""
    recover: float = 0.5
    short_session_timeouts: tuple[float, ...] = (0.5, 1.0, 2.0)
    session_timeout: float = 5.0
    op_timeout: float = 3.0
    request_timeout: float = 1.0
    catch_up: float = 30.0
    """After healing: virtual seconds for the watcher to yield the last change."""

    @classmethod
    def draw(cls, rng: random.Random) -> ResourceWorkload:
        """A seed's resources workload."""
        return cls(
            lockers=rng.choice([2, 3, 4]),
            producers=rng.choice([1, 2]),
            consumers=rng.choice([1, 2, 3]),
            writers=rng.choice([1, 2]),
            keys=rng.choice([1, 3]),
            max_ops=rng.choice([40, 80]),
        )

    def describe(self) -> str:
        return (
            f"resources: {self.lockers} lockers, {self.producers} producers, {self.consumers} "
            f"consumers, {self.writers} writers on {self.keys} watched key(s), up to "
            f"{self.max_ops} operations each"
        )

    def history_keys(self) -> list[str]:
        """The registers the workload records in the History."""
        return [f"{FENCED}/{KEY}", *(f"{WATCHED}/k{i}" for i in range(self.keys))]

    # --- the scenario ----------------------------------------------------------------------

    async def scenario(self, sim: ResourceHost, probe: ResourceProbe, duration: float) -> None:
        """Workload under faults, heal, settle, drain, read, converge, check."""
        record = ResourceRecord()
        until = trio.current_time() + duration
        async with trio.open_nursery() as watcher:
            watcher.start_soon(self._watcher, sim, record)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sim.run_faults, until)
                await self.run(sim, until, record)
                nursery.cancel_scope.cancel()
            await sim.heal()
            if await sim.settle() is None:
                watcher.cancel_scope.cancel()
                return
            await self._drain(sim, record)
            await self._final_reads(sim)
            if not await sim.converge():
                watcher.cancel_scope.cancel()
                return
            truth = _truth(sim)
            last = truth["changes"][-1][0] if truth["changes"] else None
            with trio.move_on_after(self.catch_up):
                while record.watching.is_set() and last is not None:
                    if record.watched and record.watched[-1][0] >= last:
                        break
                    await trio.sleep(0.1)
            watcher.cancel_scope.cancel()
        if await sim.converge(resources_state):
            self.check(sim, record, probe, truth)

    async def run(self, sim: ResourceHost, until: float, record: ResourceRecord) -> None:
        """Every client but the watcher, until virtual time `until` or its budget."""
        roles: list[tuple[str, int, Callable[..., Coroutine[Any, Any, None]]]] = [
            *(("locker", i, self._locker) for i in range(self.lockers)),
            *(("producer", i, self._producer) for i in range(self.producers)),
            *(("consumer", i, self._consumer) for i in range(self.consumers)),
            *(("writer", i, self._writer) for i in range(self.writers)),
        ]
        sim.client_hosts.extend(f"{role}{i}" for role, i, _ in roles)
        sim.client_hosts.append("watcher")
        async with trio.open_nursery() as nursery:
            for role, index, body in roles:
                nursery.start_soon(self._sessions, sim, f"{role}{index}", body, record, until)

    async def _sessions(
        self,
        sim: ResourceHost,
        name: str,
        body: Callable[..., Coroutine[Any, Any, None]],
        record: ResourceRecord,
        until: float,
    ) -> None:
        """Run `body(sim, client, state, record)` in one session after another, until the
        client's budget or time is spent."""
        rng = sim.rng(name)
        recover = rng.random() < self.recover
        recovery = RecoveryStrategy.RECOVER if recover else RecoveryStrategy.CLOSE
        options: dict[str, Any] = {
            "timeout": self.op_timeout,
            "request_timeout": self.request_timeout * rng.choice([0.5, 1]),
            "session_timeout": (
                rng.choice(self.short_session_timeouts) if recover else self.session_timeout
            ),
            "selection": rng.choice(list(ServerSelection)),
            "recovery": recovery,
        }
        sim.trace.record(
            "client",
            f"{name}: {recovery.name}, session timeout {options['session_timeout']:g}s, "
            f"request timeout {options['request_timeout']:g}s, {options['selection'].name}",
        )
        state = _ClientState(name, self.max_ops, until, rng)
        opened = 0
        while state.more():
            opened += 1
            try:
                async with sim.client(host=name, name=f"{name}s{opened}", **options) as client:
                    sim.trace.record("client", f"{name} opened session {client.session_id}")
                    await body(sim, client, state, record)
            except FAULTS as exc:
                sim.trace.record("client", f"{name} session ended: {type(exc).__name__}")
                await trio.sleep(rng.uniform(0.1, 1.0))

    # --- lockers ---------------------------------------------------------------------------

    async def _locker(
        self, sim: ResourceHost, client: CopycatClient, state: _ClientState, record: ResourceRecord
    ) -> None:
        rng, name = state.rng, state.name
        while state.going(client):
            state.spend()
            lock = Lock(client, LOCK)
            invoked = trio.current_time()
            state.note(client)
            try:
                with trio.fail_after(state.guard(client)):
                    token = await lock.acquire(timeout=rng.choice([0.5, 2.0, 5.0]))
            except LockTimeoutError:
                sim.trace.record("client", f"{name} acquire timed out")
                await state.think()
                continue
            except FAULTS as exc:
                sim.trace.record("client", f"{name} acquire: {type(exc).__name__}")
                await state.think()
                continue
            state.note(client)
            record.learned.append(
                LearnedGrant(name, tuple(state.sessions), token, invoked, trio.current_time())
            )
            sim.trace.record("ok", f"{name} holds {LOCK} with token {token}")
            for _ in range(rng.randint(1, 2)):
                outcome = await self._fenced_write(sim, client, state, token)
                record.writes[outcome] = record.writes.get(outcome, 0) + 1
            await trio.sleep(rng.uniform(0, 0.2))
            try:
                with trio.fail_after(state.guard(client)):
                    await lock.release()
                sim.trace.record("ok", f"{name} released token {token}")
            except LockNotHeldError:
                sim.trace.record("client", f"{name} had lost token {token} (its session ended)")
            except FAULTS as exc:
                sim.trace.record("client", f"{name} release: {type(exc).__name__}")
            await state.think()

    async def _fenced_write(
        self, sim: ResourceHost, client: CopycatClient, state: _ClientState, token: int
    ) -> str:
        """Write the protected entry under `token` unless it holds a higher one; how it went."""
        history, fenced, register = sim.history, Map(client, FENCED), f"{FENCED}/{KEY}"
        state.writes += 1
        for _ in range(3):
            op = history.invoke(state.process.name, OpKind.GET, register)
            try:
                with trio.fail_after(state.guard(client)):
                    current = await fenced.get(KEY)
            except FAULTS as exc:
                history.unknown(op)
                sim.trace.record("unknown", f"{state.name} GET {register}: {type(exc).__name__}")
                return "unknown"
            history.complete(op, current)
            if parse_fenced(current) > token:
                sim.trace.record("ok", f"{state.name} refused: {current!r} beats token {token}")
                return "refused"
            new = fenced_value(token, state.name, state.writes)
            op = history.invoke(state.process.name, OpKind.CAS, register, (current, new))
            text = f"{state.name} CAS {register} {current!r}->{new!r}"
            try:
                with trio.fail_after(state.guard(client)):
                    accepted = await fenced.compare_and_set(KEY, current, new)
            except ApplicationError as exc:
                history.unknown(op)  # applied, and raised: its result is unknown
                state.process.limbo()
                sim.trace.record("unknown", f"{text}: {exc}")
                return "unknown"
            except FAULTS as exc:
                if command_outcome(exc) is Outcome.FAILED:
                    history.fail(op)
                else:
                    history.unknown(op)
                    state.process.limbo()
                sim.trace.record("unknown", f"{text}: {type(exc).__name__}")
                return "unknown"
            history.complete(op, accepted)
            sim.trace.record("ok", f"{text} -> {accepted}")
            if accepted:
                return "accepted"
        return "lost"

    # --- the queue -------------------------------------------------------------------------

    async def _producer(
        self, sim: ResourceHost, client: CopycatClient, state: _ClientState, record: ResourceRecord
    ) -> None:
        queue = Queue(client, QUEUE)
        while state.going(client):
            state.spend()
            item = f"q{state.name.removeprefix('producer')}-{state.spent}"
            record.offers[item] = Outcome.UNKNOWN
            try:
                with trio.fail_after(state.guard(client)):
                    await queue.offer(item)
            except ApplicationError:
                record.offers[item] = Outcome.OK  # applied (and raised)
            except FAULTS as exc:
                record.offers[item] = command_outcome(exc)
                sim.trace.record("client", f"{state.name} offer {item}: {type(exc).__name__}")
            else:
                record.offers[item] = Outcome.OK
                sim.trace.record("ok", f"{state.name} offered {item}")
            await state.think()

    async def _consumer(
        self, sim: ResourceHost, client: CopycatClient, state: _ClientState, record: ResourceRecord
    ) -> None:
        queue = Queue(client, QUEUE)
        while state.going(client):
            state.spend()
            state.note(client)
            try:
                with trio.fail_after(state.guard(client) + 2.0):
                    item = await queue.poll(timeout=state.rng.choice([0, 0.5, 2.0]))
            except FAULTS as exc:
                sim.trace.record("client", f"{state.name} poll: {type(exc).__name__}")
                await state.think()
                continue
            if item is not None:
                state.note(client)
                record.receipts.append(
                    Receipt(state.name, tuple(state.sessions), item, trio.current_time())
                )
                sim.trace.record("ok", f"{state.name} polled {item}")
            await state.think()

    async def _drain(self, sim: ResourceHost, record: ResourceRecord) -> None:
        """After healing: poll every item left, through a fresh client."""
        try:
            async with sim.client(host="final", name="drain", timeout=30.0) as client:
                queue = Queue(client, QUEUE)
                for _ in range(len(record.offers) + 5):
                    item = await queue.poll(timeout=0)
                    if item is None:
                        return
                    sessions = (client.session_id,)
                    record.receipts.append(Receipt("drain", sessions, item, trio.current_time()))
                    sim.trace.record("ok", f"drain polled {item}")
        except FAULTS as exc:
            sim.invariants.violation(f"liveness: draining the queue after healing: {exc!r}")

    # --- the watched map -------------------------------------------------------------------

    async def _writer(
        self, sim: ResourceHost, client: CopycatClient, state: _ClientState, record: ResourceRecord
    ) -> None:
        with trio.move_on_at(state.until):
            await record.watching.wait()  # changes come after the watch's registration
        watched, history, rng = Map(client, WATCHED), sim.history, state.rng
        while state.going(client):
            state.spend()
            key = f"k{rng.randrange(self.keys)}"
            register = f"{WATCHED}/{key}"
            kind = rng.choices([OpKind.PUT, OpKind.DELETE, OpKind.CAS, OpKind.GET], [5, 1, 2, 2])[0]
            value = f"{state.name}-{state.spent}"
            expected = state.seen.get(key)
            op_value: Any = {OpKind.PUT: value, OpKind.CAS: (expected, value)}.get(kind)
            op = history.invoke(state.process.name, kind, register, op_value)
            text = f"{state.name} {kind.name} {register} {op_value!r}"
            try:
                with trio.fail_after(state.guard(client)):
                    result = await _map_call(watched, kind, key, expected, value)
            except ApplicationError as exc:
                if kind in (OpKind.CAS, OpKind.GET):
                    history.unknown(op)
                else:
                    history.complete(op, None)
                sim.trace.record("client", f"{text}: applied, raised {exc}")
            except FAULTS as exc:
                if kind is not OpKind.GET and command_outcome(exc) is Outcome.FAILED:
                    history.fail(op)
                else:
                    history.unknown(op)
                    if kind is not OpKind.GET:
                        state.process.limbo()
                sim.trace.record("unknown", f"{text}: {type(exc).__name__}")
            else:
                history.complete(op, result)
                sim.trace.record("ok", f"{text} -> {result!r}")
                if kind is OpKind.PUT:
                    record.acknowledged.append((key, value))
                    state.seen[key] = value
                elif kind is OpKind.DELETE:
                    state.seen[key] = None
                elif kind is OpKind.GET:
                    state.seen[key] = result
                elif result:
                    state.seen[key] = value
            await state.think()

    async def _watcher(self, sim: ResourceHost, record: ResourceRecord) -> None:
        """Watch WATCHED until cancelled: from now at first, then from the last revision."""
        rng = sim.rng("watcher")
        recover = rng.random() < self.recover
        session_timeout = rng.choice(self.short_session_timeouts) if recover else 5.0
        revision: int | None = None
        opened = 0
        while True:
            opened += 1
            try:
                async with sim.client(
                    host="watcher",
                    name=f"watcher{opened}",
                    timeout=self.op_timeout,
                    request_timeout=self.request_timeout,
                    session_timeout=session_timeout,
                    recovery=RecoveryStrategy.RECOVER if recover else RecoveryStrategy.CLOSE,
                ) as client:
                    while client.state.value is not ClientState.CLOSED:
                        revision = await self._watch_once(sim, client, record, revision)
            except FAULTS as exc:
                sim.trace.record("client", f"watcher session ended: {type(exc).__name__}")
            await trio.sleep(rng.uniform(0.1, 1.0))

    async def _watch_once(
        self, sim: ResourceHost, client: CopycatClient, record: ResourceRecord, since: int | None
    ) -> int | None:
        """One watch stream until it fails; the revision to resume after."""
        stream = Map(client, WATCHED).watch(since=since)
        try:
            async with stream:
                if since is None:
                    record.watch_session = client.session_id
                    record.watching.set()
                    since = 0
                sim.trace.record("client", f"watcher watches from revision {since}")
                async for change in stream:
                    record.watched.append(
                        (change.revision, change.index, change.type, change.key, change.value)
                    )
                    since = change.revision
        except FAULTS as exc:
            sim.trace.record("client", f"watcher stream ended: {type(exc).__name__}")
            await trio.sleep(0.1)
        return since

    # --- the end ---------------------------------------------------------------------------

    async def _final_reads(self, sim: ResourceHost) -> None:
        """Read every register once more, into the History (no acknowledged write lost)."""
        try:
            async with sim.client(host="final", name="final", timeout=30.0) as client:
                for register in self.history_keys():
                    name, key = register.split("/", 1)
                    op = sim.history.invoke("final", OpKind.GET, register)
                    value = await Map(client, name).get(key)
                    sim.history.complete(op, value)
                    sim.trace.record("ok", f"final GET {register} -> {value!r}")
        except FAULTS as exc:
            sim.invariants.violation(f"liveness: final reads after healing: {exc!r}")

    def check(
        self, sim: ResourceHost, record: ResourceRecord, probe: ResourceProbe, truth: Any
    ) -> None:
        """Report every broken promise to `sim.invariants` (after the run has converged)."""
        applied = sorted(sim.invariants.applied.values(), key=lambda a: a.index)
        grants = lock_grants(LOCK, applied, probe.published)
        ends = hold_ends(LOCK, grants, applied, probe.closes)
        registered = min(
            (
                a.index
                for a in applied
                if isinstance(a.operation, MapWatch)
                and a.operation.name == WATCHED
                and a.session == record.watch_session
            ),
            default=None,
        )
        problems = [
            *probe.conflicts,
            *check_lock(LOCK, grants, ends, record.learned),
            *check_fencing(FENCED, KEY, applied, grants, ends),
            *check_queue(
                QUEUE, applied, probe.published, record.offers, record.receipts, truth["queued"]
            ),
        ]
        if truth["dropped"]:
            problems.append(f"watch {WATCHED}: its history dropped changes (make fewer)")
        else:
            problems.extend(
                check_watch(
                    WATCHED,
                    applied,
                    truth["changes"],
                    truth["entries"],
                    record.acknowledged,
                    record.watched,
                    registered,
                )
            )
        for problem in problems:
            sim.invariants.violation(problem)
        closed = sum(1 for g in grants if ends[g] == probe.closes.get(g.session))
        sim.trace.record(
            "resources",
            f"checked {len(grants)} grants ({len(record.learned)} learned, {closed} ended by "
            f"their session's close), fenced writes "
            f"{dict(sorted(record.writes.items()))}, {len(record.offers)} offers, "
            f"{len(record.receipts)} receipts, {len(record.watched)} of "
            f"{len(truth['changes'])} changes watched",
        )


async def _map_call(watched: Map, kind: OpKind, key: str, expected: Any, value: str) -> Any:
    """One operation of a writer on the watched map."""
    if kind is OpKind.PUT:
        return await watched.put(key, value)
    if kind is OpKind.DELETE:
        return await watched.delete(key)
    if kind is OpKind.CAS:
        return await watched.compare_and_set(key, expected, value)
    return await watched.get(key)


def _truth(sim: ResourceHost) -> dict[str, Any]:
    """The watched map's history and contents and the queue's items, on a converged member."""
    server = next(s for s in sim.cluster.servers.values() if s._executor is not None)
    resources = server.state_machine.resources
    watched = resources.get(("map", WATCHED))
    queue = resources.get(("queue", QUEUE))
    return {
        "changes": [tuple(c[:5]) for c in watched.history] if watched else [],
        "dropped": watched.dropped if watched else 0,
        "entries": {k: v[0] for k, v in watched.entries.items()} if watched else {},
        "queued": list(queue.items) if queue else [],
    }


class _ClientState:
    """One workload client's budget, randomness, sessions and History process."""

    def __init__(self, name: str, budget: int, until: float, rng: random.Random) -> None:
        self.name = name
        self.budget = budget
        self.spent = 0
        self.until = until
        self.rng = rng
        self.sessions: list[int] = []
        self.process = _Process(name)
        self.seen: dict[str, Any] = {}
        self.writes = 0
        self.pause = 2 * max(0.0, until - trio.current_time()) / max(1, budget)

    def more(self) -> bool:
        return self.spent < self.budget and trio.current_time() < self.until

    def going(self, client: CopycatClient) -> bool:
        return self.more() and client.state.value is not ClientState.CLOSED

    def spend(self) -> None:
        self.spent += 1

    def note(self, client: CopycatClient) -> None:
        if client.session_id and client.session_id not in self.sessions:
            self.sessions.append(client.session_id)

    def guard(self, client: CopycatClient) -> float:
        """An outer timeout: the client's own should always fire first."""
        return client.timeout * 3 + client.request_timeout * 4

    async def think(self) -> None:
        await trio.sleep(self.rng.uniform(0, self.pause))
