"""Whole servers (in-memory network, MockClock) on the real DiskStorage over the simulated file
system: crashes in the middle of saves are power losses at a random file operation, and every
acknowledged write survives them."""

from __future__ import annotations

import random

import pytest
import trio

from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.cluster import MemoryCluster
from copycat_trio.testing.simdisk import FsDisk


async def crash_during_save(cluster: MemoryCluster, disk: FsDisk, member_id: int) -> None:
    """Crash the member in its next save (the power goes part-way through it)."""
    fired = trio.Event()

    def hook() -> None:
        cluster.crash(member_id)
        fired.set()

    disk.crash_on_next_save = hook
    with trio.fail_after(5):
        await fired.wait()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("snapshot_every", [None, 7])
async def test_acknowledged_writes_survive_power_loss_in_saves(
    autojump_clock: trio.abc.Clock, seed: int, snapshot_every: int | None
) -> None:
    rng = random.Random(seed)
    disks = {
        i: FsDisk(f"member{i}", random.Random(f"{seed}:{i}"), entries_per_segment=5)
        for i in (1, 2, 3)
    }
    options = {} if snapshot_every is None else {"snapshot_every": snapshot_every}
    acknowledged: dict[str, int] = {}
    async with (
        open_memory_cluster(
            3, KeyValueStore, seed=seed, storage=disks.__getitem__, **options
        ) as cluster,
        cluster.client(cluster.all_ids(), timeout=30) as client,
    ):
        for step in range(40):
            key = f"k{rng.randrange(6)}"
            await client.submit(Put(key, step))
            acknowledged[key] = step
            if step % 8 == 3:
                leader = await cluster.wait_for_leader()
                victim = rng.choice([leader, *(i for i in cluster.all_ids() if i != leader)])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(crash_during_save, cluster, disks[victim], victim)
                    await client.submit(Put("during", step))
                acknowledged["during"] = step
                cluster.restart_soon(victim)
        # Then the whole cluster loses power at once, and starts again.
        for member_id in cluster.all_ids():
            cluster.crash(member_id)
        for member_id in disks:
            cluster.restart_soon(member_id)
        while not all(i in cluster.servers for i in disks):
            await trio.sleep(0.01)  # each restarts once its old server has stopped
        await cluster.wait_for_leader(list(disks))
        for key, value in acknowledged.items():
            assert await client.submit(Get(key)) == value, key
    torn = sum(disk.stats.torn_saves for disk in disks.values())
    assert torn >= 1  # the crashes did tear saves (typically 3 or 4 of the 5)
