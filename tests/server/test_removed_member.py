"""A member removed from the configuration knows it: it stops serving clients with an error that
names the current members, logs why, and says "removed" in its status (issue 14)."""

from __future__ import annotations

import logging

import pytest
import trio

from copycat_trio.protocol import CommandRequest, ErrorResponse, ErrorType, QueryRequest
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster
from copycat_trio.transport.rpc import ConnectionPool


async def test_a_removed_member_stops_serving_and_says_why(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        gone = next(i for i in cluster.all_ids() if i != leader)
        async with cluster.client() as client:
            await client.submit(Put("k", 1))
        with caplog.at_level(logging.WARNING, logger="copycat_trio.server.server"):
            await cluster.servers[gone].leave()
            with trio.fail_after(5):
                await cluster.servers[gone].removed.wait()
        assert f"member {gone} was removed from the cluster" in caplog.text
        assert cluster.servers[gone].status().role == "removed"
        for member_id in cluster.all_ids():
            if member_id != gone:
                assert cluster.servers[member_id].removal is None
        async with trio.open_nursery() as nursery:
            pool = ConnectionPool(cluster.network.transport("operator"), nursery)
            for body in (CommandRequest(operation=Put("k", 2)), QueryRequest(operation=Get("k"))):
                answer = await pool.request(cluster.address(gone), body, 5)
                assert isinstance(answer, ErrorResponse) and answer.error is not None, answer
                assert answer.error.type is ErrorType.ILLEGAL_MEMBER_STATE
                assert f"member {gone} was removed" in answer.error.message
                others = sorted(i for i in cluster.all_ids() if i != gone)
                assert all(f"{i}=" in answer.error.message for i in others), answer.error
            nursery.cancel_scope.cancel()
        # The cluster goes on without it; a client that lists it fails over.
        async with cluster.client([gone, *[i for i in cluster.all_ids() if i != gone]]) as client:
            await client.submit(Put("k", 3))
            assert await client.submit(Get("k")) == 3


async def test_a_joining_member_is_not_mistaken_for_a_removed_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A joiner applies the configurations from before it was added, which do not name it.
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        await cluster.servers[3].leave()
        joined = await cluster.join(4, via=[1, 2])
        with trio.move_on_after(3):
            await joined.removed.wait()
        assert joined.removal is None and joined.status().role != "removed"
        async with cluster.client([4]) as client:
            await client.submit(Put("via", 4))
