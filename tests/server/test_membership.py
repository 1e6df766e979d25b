"""Membership on whole servers (in-memory network, MockClock): growing and shrinking under load,
automatic replacement, removing the leader, leadership transfer, partitions during changes."""

from __future__ import annotations

import pytest
import trio

from copycat_trio.client.admin import fetch_status
from copycat_trio.protocol.errors import CopycatError
from copycat_trio.protocol.messages import MemberType
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.server import CopycatServer
from copycat_trio.testing import MemoryCluster, open_memory_cluster


def types(server: CopycatServer) -> dict[int, MemberType]:
    return {m.id: m.type for m in server.status().members}


class LeaderWatch:
    """Remembers every leader seen per term, across the whole run."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.by_term: dict[int, set[int]] = {}

    async def run(self) -> None:
        while True:
            for member_id, server in list(self.cluster.servers.items()):
                if server.is_leader:
                    self.by_term.setdefault(server.status().term, set()).add(member_id)
            await trio.sleep(0.01)

    def check(self) -> None:
        for term, leaders in self.by_term.items():
            assert len(leaders) == 1, f"two leaders in term {term}: {leaders}"


class Load:
    """One client writing numbered keys; every acknowledged write is checked at the end."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.acknowledged: list[int] = []
        self.stop = trio.Event()

    async def run(self) -> None:
        async with self.cluster.client([1], timeout=60) as client:
            i = 0
            while not self.stop.is_set() and i < 5000:
                await client.submit(Put(f"k{i}", i))
                self.acknowledged.append(i)
                i += 1
                await trio.sleep(0.01)

    async def verify(self) -> None:
        async with self.cluster.client() as client:
            for i in self.acknowledged:
                assert await client.submit(Get(f"k{i}")) == i


async def wait_until(predicate, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_grow_from_one_to_five_and_shrink_to_three_under_load(autojump_clock) -> None:
    async with open_memory_cluster(1, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        load = Load(cluster)
        watch = LeaderWatch(cluster)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run)
            nursery.start_soon(watch.run)
            for member_id in (2, 3, 4, 5):
                server = await cluster.join(member_id, via=[1])
                # It joins as PASSIVE and is promoted once caught up.
                await wait_until(lambda s=server: types(s).get(s.id) is MemberType.ACTIVE)
                count = len(load.acknowledged)
                await wait_until(lambda c=count: len(load.acknowledged) >= c + 10)
            leader = cluster.servers[await cluster.wait_for_leader()]
            assert sorted(types(leader)) == [1, 2, 3, 4, 5]
            for member_id in (4, 5):
                await cluster.servers[member_id].leave()
                cluster.crash(member_id)
                count = len(load.acknowledged)
                await wait_until(lambda c=count: len(load.acknowledged) >= c + 10)
            load.stop.set()
            nursery.cancel_scope.cancel()
        leader = cluster.servers[await cluster.wait_for_leader()]
        assert sorted(types(leader)) == [1, 2, 3]
        watch.check()
        assert len(load.acknowledged) > 50
        await load.verify()


async def test_failed_voter_replaced_by_reserve_and_cluster_survives_another_failure(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore, replace_after=3.0) as cluster:
        await cluster.wait_for_leader()
        standby = await cluster.join(4, via=[1], member_type=MemberType.RESERVE)
        await wait_until(lambda: types(standby).get(4) is MemberType.RESERVE)
        leader_id = await cluster.wait_for_leader()
        victim = next(i for i in (1, 2, 3) if i != leader_id)
        cluster.crash(victim)
        leader = cluster.servers[leader_id]
        await wait_until(lambda: types(leader).get(4) is MemberType.ACTIVE, timeout=60)
        await wait_until(lambda: types(leader).get(victim) is MemberType.RESERVE, timeout=60)
        async with cluster.client([leader_id]) as client:
            await client.submit(Put("before", 1))
        # Three voters again (the standby took the failed one's place): one more may fail.
        other = next(i for i in cluster.all_ids() if i not in (leader_id, 4))
        cluster.crash(other)
        async with cluster.client([leader_id, 4]) as client:
            await client.submit(Put("after", 2))
            assert await client.submit(Get("before")) == 1


async def test_reserve_member_serves_no_clients(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        reserve = await cluster.join(4, via=[1], member_type=MemberType.RESERVE)
        await wait_until(lambda: types(reserve).get(4) is MemberType.RESERVE)
        with pytest.raises(CopycatError):
            async with cluster.client([4], timeout=3) as client:
                await client.submit(Put("x", 1))
        (status,) = await fetch_status(
            [cluster.address(4)], transport=cluster.network.transport("op")
        )
        assert not isinstance(status, CopycatError) and status.role == "follower"


async def test_removing_the_leader_hands_over(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        async with cluster.client() as client:
            await client.submit(Put("a", 1))
        await cluster.servers[old].leave()
        rest = [i for i in cluster.all_ids() if i != old]
        new = await cluster.wait_for_leader(rest)
        assert new != old
        assert old not in types(cluster.servers[new])
        async with cluster.client(rest) as client:
            await client.submit(Put("b", 2))
            assert await client.submit(Get("a")) == 1
        await trio.sleep(10)  # the removed member stays quiet and disrupts nobody
        assert await cluster.wait_for_leader(rest) == new


async def test_leadership_transfer(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        target = next(i for i in cluster.all_ids() if i != old)
        started = trio.current_time()
        await cluster.servers[old].transfer_leadership(target)
        took = trio.current_time() - started
        assert await cluster.wait_for_leader() == target
        assert took < 1.0  # no election timeout was waited for
        async with cluster.client() as client:
            await client.submit(Put("after transfer", 1))


async def test_partitions_during_configuration_changes_never_give_two_leaders(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        watch = LeaderWatch(cluster)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            server4 = await cluster.join(4, via=[1, 2, 3])
            for round_ in range(6):
                leader = await cluster.wait_for_leader(timeout=60)
                ids = cluster.all_ids()
                cluster.partition([leader], [i for i in ids if i != leader][: 1 + round_ % 2])
                await trio.sleep(2)
                cluster.network.heal()
                await cluster.wait_for_leader(timeout=60)
            await wait_until(lambda: types(server4).get(4) is MemberType.ACTIVE, timeout=60)
            nursery.cancel_scope.cancel()
        watch.check()
