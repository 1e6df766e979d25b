"""server.watch_role(): the role, term and leader an embedding application can follow."""

from __future__ import annotations

import itertools

import trio

from copycat_trio.recipes.kv import KeyValueStore
from copycat_trio.server.roles import RoleChange
from copycat_trio.testing import open_memory_cluster


async def test_watch_role_follows_an_election_and_a_failover(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        first = await cluster.wait_for_leader()
        watcher = next(i for i in cluster.all_ids() if i != first)
        seen: list[RoleChange] = []

        async def watch() -> None:
            async for change in cluster.servers[watcher].watch_role():
                seen.append(change)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0.5)
            assert seen == [RoleChange("follower", seen[0].term, first)], seen
            cluster.crash(first)
            second = await cluster.wait_for_leader([i for i in cluster.all_ids() if i != first])
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert seen[-1].leader == second and seen[-1].term > seen[0].term, seen
        assert seen[-1].role == ("leader" if second == watcher else "follower"), seen
        assert all(a != b for a, b in itertools.pairwise(seen)), seen  # no repeats
