"""A member's own monotonic clock rate drives its raft timers and lease (simulated drift)."""

from __future__ import annotations

import random

import pytest
import trio

from copycat_trio.core.raft import Role
from copycat_trio.recipes.kv import KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.cluster import DriftingClock
from copycat_trio.testing.simdisk import SimDisk


async def test_drifting_clock_reads_and_maps_back_to_trio_time(autojump_clock) -> None:
    start = trio.current_time()
    clock = DriftingClock(2.0, origin=start)
    await trio.sleep(1.5)
    assert clock.now() == pytest.approx(start + 3.0)
    assert clock.to_trio(start + 3.0) == pytest.approx(start + 1.5)
    assert clock.to_trio(float("inf")) == float("inf")


@pytest.mark.parametrize("rate", [0.5, 2.0])
async def test_a_members_election_timeout_runs_on_its_own_clock(autojump_clock, rate) -> None:
    # A restarted member whose clock runs at `rate` campaigns once its election timeout, drawn
    # from [T, 2T) on its own clock, has passed: between T / rate and 2T / rate of real time.
    disks = {i: SimDisk(f"member{i}", random.Random(i)) for i in (1, 2, 3)}
    async with open_memory_cluster(3, KeyValueStore, storage=disks.__getitem__) as cluster:
        leader = await cluster.wait_for_leader()
        member = next(i for i in cluster.all_ids() if i != leader)
        cluster.clock_rate = lambda member_id: rate if member_id == member else 1.0
        cluster.crash(member)
        await cluster.restart([member])
        async with cluster.client() as client:
            await client.submit(Put("k", "v"))
        cluster.isolate(member)
        isolated = trio.current_time()
        loop = cluster.servers[member]._loop
        assert loop is not None
        await loop.role.wait_value(lambda role: role is not Role.FOLLOWER)
        waited = trio.current_time() - isolated
        timeout = cluster.election_timeout
        assert timeout / rate - 0.15 <= waited < 2 * timeout / rate
        cluster.network.heal()
