"""The resources scenario of a simulation: the workload (resource_workload.py) under the
seed's faults, then healing, a drained queue, final reads, the watcher caught up, converged
members, and the checks of resource_checks.py against the log (applied commands, and the
probe's published events and session closes: resource_machine.py)."""

from __future__ import annotations

from typing import Any

import trio

from ..recipes.resources.kinds.map import MapWatch
from .resource_checks import (
    check_fencing,
    check_lock,
    check_queue,
    check_watch,
    hold_ends,
    lock_grants,
)
from .resource_machine import ResourceProbe, resources_state
from .resource_workload import (
    FENCED,
    KEY,
    LOCK,
    QUEUE,
    WATCHED,
    ResourceHost,
    ResourceRecord,
    ResourceWorkload,
)

__all__ = ["check_run", "run_resource_scenario"]


async def run_resource_scenario(
    workload: ResourceWorkload, sim: ResourceHost, probe: ResourceProbe, duration: float
) -> None:
    """Workload under faults, heal, settle, drain, read, converge, check."""
    record = ResourceRecord()
    until = trio.current_time() + duration
    async with trio.open_nursery() as watcher:
        watcher.start_soon(workload.watcher, sim, record)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim.run_faults, until)
            await workload.run(sim, until, record)
            nursery.cancel_scope.cancel()
        await sim.heal()
        if await sim.settle() is None:
            watcher.cancel_scope.cancel()
            return
        await workload.drain(sim, record)
        await workload.final_reads(sim)
        if not await sim.converge():
            watcher.cancel_scope.cancel()
            return
        truth = _truth(sim)
        last = truth["changes"][-1][0] if truth["changes"] else None
        with trio.move_on_after(workload.catch_up) as waited:
            while record.watching.is_set() and last is not None:
                if record.watched and record.watched[-1][0] >= last:
                    break
                await trio.sleep(0.1)
        if waited.cancelled_caught and record.watcher is not None:
            client = record.watcher
            record.stalled = (
                f"after {workload.catch_up:g}s the watcher's client was {client.state.value.name} "
                f"in session {client.session_id}"
            )
            sim.trace.record("client", record.stalled)
        watcher.cancel_scope.cancel()
    if await sim.converge(resources_state):
        check_run(sim, record, probe, truth)


def check_run(sim: ResourceHost, record: ResourceRecord, probe: ResourceProbe, truth: Any) -> None:
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
    if record.stalled and record.watcher is not None:
        closed = probe.closes.get(record.watcher.session_id)
        if closed is not None:
            record.stalled += f", which the servers had closed at index {closed}"
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
        watch = check_watch(
            WATCHED,
            applied,
            truth["changes"],
            truth["entries"],
            record.acknowledged,
            record.watched,
            registered,
        )
        problems.extend(f"{p} ({record.stalled})" if record.stalled else p for p in watch)
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


def _truth(sim: ResourceHost) -> dict[str, Any]:
    """The watched map's history and contents and the queue's items, on the member that
    applied the most: the members that take part have converged, but one demoted to RESERVE
    receives no entries and may be far behind (seed 71005)."""
    server = max(
        (s for s in sim.cluster.servers.values() if s._executor is not None),
        key=lambda s: s._executor.applied_index.value if s._executor is not None else -1,
    )
    resources = server.state_machine.resources
    watched = resources.get(("map", WATCHED))
    queue = resources.get(("queue", QUEUE))
    return {
        "changes": [tuple(c[:5]) for c in watched.history] if watched else [],
        "dropped": watched.dropped if watched else 0,
        "entries": {k: v[0] for k, v in watched.entries.items()} if watched else {},
        "queued": list(queue.items) if queue else [],
    }
