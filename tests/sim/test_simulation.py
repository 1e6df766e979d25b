"""Deterministic simulation: seeds across the fault mix, replay, and the harness's own checks.

Each seed runs a cluster with clients on the key-value store under its faults, checks Raft's
invariants while it runs and linearizability at the end (copycat_trio.testing.simulation).
A failing seed prints its report: configuration, fault schedule, failures, history and trace.
"""

from __future__ import annotations

import functools

import attrs
import pytest
import trio

from copycat_trio.client.client import ClientClosedError
from copycat_trio.protocol.errors import NoLeaderError, OutcomeUnknownError, QueryError
from copycat_trio.protocol.operations import Consistency
from copycat_trio.recipes.counter import Counter, Increment, Value
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing.faults import FaultMix
from copycat_trio.testing.simulation import (
    SimulationConfig,
    SimulationFailure,
    SimulationResult,
    open_simulation,
    run_simulation,
)
from copycat_trio.transport.memory import LinkFaults

from .seeds import KNOWN_FAILURES, REGRESSIONS, SAMPLE, Seed


@functools.cache
def _run(seed: int, profile: str | None) -> SimulationResult:
    """The run of a seed, made once per test process: a seed gives the same run every time (the
    replay test below runs one afresh and compares), so the tests that only read a seed's result
    share it instead of running it again."""
    return run_simulation(seed, profile=profile)


def _check(seed: int, profile: str | None = None) -> None:
    result = _run(seed, profile)
    assert result.ok, result.report()
    assert result.stats["ok"] > 0, result.report()


@pytest.mark.parametrize("seed", SAMPLE)
def test_seed(seed: int) -> None:
    _check(seed)


@pytest.mark.parametrize("regression", REGRESSIONS, ids=lambda r: f"{r.seed}-{r.profile}")
def test_regression_seed(regression: Seed) -> None:
    _check(regression.seed, regression.profile)


def test_known_failures_still_fail() -> None:
    """Each documented, unfixed bug's seed must still expose it (once one no longer does, move
    it to REGRESSIONS). Their reports are printed (pytest -s, or shown on failure)."""
    passing = []
    for known in KNOWN_FAILURES:
        result = run_simulation(known.seed, profile=known.profile, wall_limit=60)
        print(f"known failure, seed {known.seed}: {known.found}\n{result.report()}")
        if result.ok:
            passing.append(f"seed {known.seed} passes now: {known.found}")
    assert not passing, passing


def test_a_seed_replays_exactly() -> None:
    first = _run(7, None)  # test_seed[7]'s run
    second = run_simulation(7)
    assert first is not second
    assert first.stats["episodes"] > 0
    assert first.digest == second.digest
    assert first.trace.lines() == second.trace.lines()
    assert first.history.format() == second.history.format()


def test_another_seed_gives_another_run() -> None:
    """Two seeds of one profile (7 and 55 are both `mixed`): the seed, not only the profile,
    makes the run (both runs are test_seed[7]'s and test_regression_seed[55-mixed]'s)."""
    assert _run(7, None).config.profile == _run(55, "mixed").config.profile == "mixed"
    assert _run(7, None).digest != _run(55, "mixed").digest


def test_every_profile_injects_its_faults() -> None:
    config = SimulationConfig.for_seed(31, "mixed", duration=25.0)
    config = attrs.evolve(
        config,
        faults=attrs.evolve(
            config.faults,
            partitions=1,
            crashes=1,
            pauses=1,
            clock_jumps=1,
            disk_stalls=1,
            link=LinkFaults(drop=0.02, duplicate=0.02, delay=0.1, max_delay=0.05),
            joins=1,
            concurrency=3,
            gap=(0.05, 0.3),
            length=(0.3, 2.0),
        ),
    )
    result = run_simulation(31, config=config)
    assert result.ok, result.report()
    schedule = "\n".join(result.trace.lines())
    for kind in ("partition", "crash", "pause", "clock", "stalls", "join"):
        assert kind in schedule, kind
    assert result.stats["dropped"] and result.stats["duplicated"] and result.stats["delayed"]


# --- the harness catches what it should -------------------------------------------------------


class _Divergent(KeyValueStore):
    """A state machine that is not deterministic: the second replica created stores values
    differently, as if it had a bug or read a local clock."""

    created = 0

    def __init__(self) -> None:
        super().__init__()
        type(self).created += 1
        self.odd = type(self).created == 2

    def put(self, commit):  # type: ignore[no-untyped-def]
        if self.odd:
            return super().put(attrs.evolve(commit, operation=Put(commit.operation.key, "odd")))
        return super().put(commit)


async def test_a_divergent_replica_is_caught(autojump_clock) -> None:
    _Divergent.created = 0
    with pytest.raises(SimulationFailure, match="state machine safety"):
        async with open_simulation(_Divergent, seed=1, faults="none", servers=3) as sim:
            async with sim.client() as client:
                for i in range(5):
                    await client.submit(Put("k", i))
            await trio.sleep(1)


async def test_a_client_of_a_cluster_with_no_member_left_waits_like_for_a_fault(
    autojump_clock,
) -> None:
    """Regression (seed 840153, disk-beyond, see seeds.py): once every member has refused to
    start and is kept down, the harness has no member to give a client; it must say so as a
    fault the workloads wait out (NoLeaderError), not end the run with open_client's
    ValueError for an empty address list."""
    async with open_simulation(KeyValueStore, seed=3, faults="none", servers=3) as sim:
        saved = list(sim.member_ids)
        sim.member_ids.clear()  # as a member refusing to start leaves the list
        with pytest.raises(NoLeaderError, match="no member of the simulated cluster is left"):
            async with sim.client():
                pass
        sim.member_ids.extend(saved)
        async with sim.client() as client:  # and the members still there serve as before
            await client.submit(Put("k", "v"))


# --- users' own state machines ----------------------------------------------------------------


async def test_counter_under_crashes_counts_every_acknowledged_increment(autojump_clock) -> None:
    """The docs' example (docs/testing.md): Counter under seed 4's crash faults."""
    async with open_simulation(Counter, seed=4, faults="crashes", servers=3) as sim:
        sim.start_faults(15.0)  # crash and restart members for 15 virtual seconds
        acknowledged = unknown = 0
        async with sim.client(timeout=2.0, request_timeout=0.5) as client:
            with trio.move_on_after(15.0):
                for _ in range(200):
                    try:
                        await client.submit(Increment(1))
                        acknowledged += 1
                    except OutcomeUnknownError:
                        unknown += 1  # it may have been applied (once), or not
                    except ClientClosedError:
                        break  # the session expired: nothing more can be sent on it
                    await trio.sleep(0.05)
        await sim.heal()  # stop the faults, undo those in force, restart the crashed
        assert await sim.settle() is not None  # a leader every member agrees on
        async with sim.client() as client:
            value = await client.submit(Value())
        assert acknowledged <= value <= acknowledged + unknown
        assert await sim.converge(lambda counter: counter.value)  # every replica agrees
        counts = sim.injector.counts  # a lease restart crashes and restarts a member too
        assert counts.get("crash", 0) + counts.get("lease_restart", 0) > 0


async def test_fault_mix_can_be_given_directly(autojump_clock) -> None:
    mix = FaultMix(partitions=1, gap=(0.2, 0.5), length=(0.5, 1.0))
    async with open_simulation(Counter, seed=9, faults=mix, servers=5) as sim:
        sim.start_faults(5.0)
        await trio.sleep(5.0)
        await sim.heal()
        assert await sim.settle() is not None
    assert "partition" in sim.trace.format()


async def test_open_client_connects_elsewhere_when_the_registering_member_lags(
    autojump_clock,
) -> None:
    """Regression (found by simulation, see seeds.py): registration through a follower whose
    disk hangs succeeds (the leader applies it), but that follower cannot apply it, so it
    refuses the client's ConnectRequest with UNKNOWN_SESSION; open_client used to give up."""
    async with open_simulation(KeyValueStore, seed=2, faults="none", servers=3) as sim:
        await trio.sleep(2)
        (leader,) = sim.current_leaders()
        lagging = next(i for i in sorted(sim.cluster.servers) if i != leader)
        others = [i for i in sorted(sim.cluster.servers) if i != lagging]
        sim.disks[lagging].stall(5.0)
        async with sim.cluster.client([lagging, *others], timeout=10.0) as client:
            await client.submit(Put("k", "v"))
        await trio.sleep(5)


async def test_member_restored_from_a_snapshot_can_reach_members_that_joined_meanwhile(
    autojump_clock,
) -> None:
    """Regression (seed 12, membership profile): a member that caught up by installing a
    snapshot learned the snapshot's configuration but not the addresses of members that had
    joined while it was down; once it led, it could not replicate to them."""
    async with open_simulation(
        KeyValueStore,
        seed=3,
        faults="none",
        servers=3,
        snapshot_every=10,
        catch_up_entries=0,
    ) as sim:
        await trio.sleep(2)
        (leader,) = sim.current_leaders()
        away = next(i for i in sorted(sim.cluster.servers) if i != leader)
        await sim.crash(away)
        await sim.add_member()  # member 4: joins, is promoted to a voter
        await trio.sleep(3)
        assert sim.cluster.servers[4]._loop.core.is_voter
        async with sim.client() as client:
            for i in range(40):  # several snapshots; the log before them is compacted
                await client.submit(Put("k", i))
        sim.restart(away)
        await trio.sleep(3)
        assert sim.cluster.servers[away]._replication.installed >= 1  # caught up by snapshot
        assert await sim.transfer_leadership(away) == f"done, leader {away}"
        async with sim.client() as client:
            await client.submit(Put("k", "after"))
        await trio.sleep(2)
        assert sim.cluster.servers[4].state_machine.data == {"k": "after"}


async def test_no_stale_lease_read_after_a_leadership_transfer(autojump_clock) -> None:
    """Found by the simulation: a leader that sent TimeoutNow must stop serving lease reads
    (the target's vote request sets the stickiness aside that the lease relies on)."""
    async with open_simulation(KeyValueStore, seed=1, faults="none", servers=3) as sim:
        await trio.sleep(2)
        (old,) = sim.current_leaders()
        new, other = (i for i in sorted(sim.cluster.servers) if i != old)
        network, address = sim.network, sim.cluster.address
        core = sim.cluster.servers[old]._loop.core
        send = core._send

        def late_news(target: int, message: object) -> None:
            # From the moment the old leader sends TimeoutNow, nothing reaches it for a while
            # (the new leader's vote request and appends are late).
            if type(message).__name__ == "TimeoutNowRequest":
                network.cut_one_way(address(new), address(old))
                network.cut_one_way(address(other), address(old))
            send(target, message)

        core._send = late_news  # type: ignore[method-assign]
        lease = Consistency.LINEARIZABLE_LEASE
        async with (
            sim.cluster.client([old], host="reader") as reader,
            sim.cluster.client([new, other], host="writer") as writer,
            trio.open_nursery() as nursery,
        ):
            await writer.submit(Put("k", "before"))
            assert await reader.submit(Get("k"), consistency=lease) == "before"
            nursery.start_soon(sim.transfer_leadership, new)
            with trio.fail_after(1):
                while not sim.cluster.servers[new].is_leader:
                    await trio.sleep(0.0005)
            await writer.submit(Put("k", "after"))  # acknowledged by the new leader
            # The old leader, cut off, must not answer from its lease: either it confirms a
            # read index (and sees "after") or the read fails; "before" would be stale.
            try:
                value = await reader.submit(Get("k"), consistency=lease, timeout=3)
            except (NoLeaderError, QueryError):
                value = None
            assert value in ("after", None), f"stale lease read: {value!r}"
            nursery.cancel_scope.cancel()


def test_the_watchdog_counts_cpu_time_not_a_starved_runs_waiting() -> None:
    """A run that spins is stopped; a run the machine starves (here: one that waits in real
    time without using the CPU) is not, since a slow seed on a busy machine is not stuck."""
    import time

    from copycat_trio.testing.sim_watch import CpuWatchdog

    async def waits(watchdog: CpuWatchdog) -> None:
        with trio.CancelScope() as watchdog.scope:
            time.sleep(0.3)  # real time passes, no CPU time: starvation, as the watchdog sees it
            await trio.sleep(0)
        assert not watchdog.fired

    trio.run(waits, (idle := CpuWatchdog(0.1)), instruments=[idle])

    async def spins(watchdog: CpuWatchdog) -> None:
        with trio.CancelScope() as watchdog.scope:
            for _ in range(10_000_000):  # bounded: ends the test if the watchdog never fires
                await trio.sleep(0)
        assert watchdog.fired

    trio.run(spins, (busy := CpuWatchdog(0.1)), instruments=[busy])
