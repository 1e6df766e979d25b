"""Lease reads on whole servers (in-memory network, MockClock, simulated disks): a voter that
restarts must not let a new leader in while the old leader's lease still counts on it."""

from __future__ import annotations

import random

import pytest
import trio

from copycat_trio.protocol.errors import NoLeaderError, QueryError
from copycat_trio.protocol.operations import Consistency
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.cluster import MemoryCluster
from copycat_trio.testing.simdisk import SimDisk
from copycat_trio.transport.base import TransportError


async def listening(cluster: MemoryCluster, member_id: int) -> None:
    """Wait until a restarted member's new server accepts connections (the crashed one's
    listener is gone before the new server exists)."""
    while member_id not in cluster.servers or cluster.servers[member_id]._loop is None:
        await trio.sleep(0.001)
    probe = cluster.network.transport("probe")
    while True:
        try:
            stream = await probe.connect(cluster.address(member_id))
        except TransportError:
            await trio.sleep(0.001)
        else:
            await stream.aclose()
            return


async def test_no_stale_lease_read_after_a_voter_restarts(autojump_clock) -> None:
    # Issue 10, bug 2: L is cut off from B; A acknowledges L, crashes and starts again at once;
    # L is then cut off from A too, so its lease rests on A's acknowledgement. B's election
    # timer fires at that moment (forced here: it is the worst moment). B must not win with
    # A's vote and commit k=2 while L, inside its lease, still answers k=1.
    disks = {i: SimDisk(f"member{i}", random.Random(i)) for i in (1, 2, 3)}
    async with open_memory_cluster(3, KeyValueStore, storage=disks.__getitem__) as cluster:
        leader = await cluster.wait_for_leader()
        a, b = (i for i in cluster.all_ids() if i != leader)
        # A long session: no keep-alive entry lengthens A's log past B's during the test.
        reader_client = cluster.client(
            [leader], host="reader", timeout=5, request_timeout=1, session_timeout=60
        )
        async with reader_client as reader:
            await reader.submit(Put("k", 1))
            cluster.partition([leader], [b])
            await trio.sleep(2.5)  # B times out and polls; A, hearing from L, refuses
            assert cluster.servers[leader].is_leader
            assert await reader.submit(Get("k"), consistency=Consistency.LINEARIZABLE_LEASE) == 1
            cluster.crash(a)
            cluster.restart_soon(a)
            cluster.partition([leader], [a])
            await listening(cluster, a)
            loop_b = cluster.servers[b]._loop
            assert loop_b is not None
            await loop_b.call(lambda core, now: core.campaign(now))
            async with cluster.client([b], host="writer", timeout=10) as writer:
                await writer.submit(Put("k", 2))  # acknowledged by a new leader
            try:
                value = await reader.submit(Get("k"), consistency=Consistency.LINEARIZABLE_LEASE)
            except (NoLeaderError, QueryError):
                value = None  # the old leader's lease is over and it cannot confirm a read
            assert value != 1, "the isolated old leader served a stale lease read"
            cluster.network.heal()


@pytest.mark.parametrize("seed", range(3))
async def test_fresh_cluster_elects_within_two_election_timeouts(autojump_clock, seed) -> None:
    # Members refuse polls for an election timeout after they start; booting together, their
    # own first timeouts (drawn from [T, 2T)) come after that, so no round is lost to it.
    start = trio.current_time()
    async with open_memory_cluster(3, KeyValueStore, seed=seed, election_timeout=1.0) as cluster:
        await cluster.wait_for_leader()
        assert trio.current_time() - start < 2.2
