"""LINEARIZABLE reads on the leader's fast path: no task per read, answered once the read
index is confirmed and applied, never from a state older than the read index."""

from __future__ import annotations

from typing import Any

import trio

from copycat_trio.protocol.messages import QueryRequest
from copycat_trio.protocol.operations import Consistency
from copycat_trio.server.connections import ConnectionHandler
from copycat_trio.testing import open_memory_cluster

from .test_sessions import Journal, Record, Records


async def test_linearizable_reads_on_the_leader_take_no_task_each(
    autojump_clock, monkeypatch
) -> None:
    slow_path: list[Any] = []
    answer = ConnectionHandler.answer

    async def counting(self: ConnectionHandler, connection: Any, request: Any, *args: Any) -> None:
        if isinstance(request.body, QueryRequest):
            slow_path.append(request.body)
        await answer(self, connection, request, *args)

    monkeypatch.setattr(ConnectionHandler, "answer", counting)
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client([leader]) as client:
            await client.submit(Record("x"))
            slow_path.clear()  # a first read may wait for the term's start to be applied
            results: list[list[str]] = []

            async def read() -> None:
                results.append(await client.submit(Records()))

            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(read)
    assert results == [["x"]] * 32
    assert slow_path == []


async def test_a_linearizable_read_waits_until_its_read_index_is_applied(
    autojump_clock,
) -> None:
    """The leader's state machine is held (as a long snapshot holds it) while a write commits:
    a read begun after the commit must see the write, however long the hold, and not answer
    from the older state once the server's request timeout has passed."""
    async with open_memory_cluster(3, Journal, request_timeout=1.0) as cluster:
        leader = await cluster.wait_for_leader()
        executor = cluster.servers[leader]._executor
        assert executor is not None
        async with cluster.client([leader]) as writer, cluster.client([leader]) as reader:
            await writer.submit(Record("before"))
            assert await reader.submit(Records()) == ["before"]
            held = trio.Event()
            release = trio.Event()

            async def hold() -> None:
                async with executor.lock:
                    held.set()
                    await release.wait()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                await held.wait()
                nursery.start_soon(writer.submit, Record("during"))
                core = cluster.servers[leader]._loop.core  # type: ignore[union-attr]
                while core.commit_index < executor.applied_index.value + 1:
                    await trio.sleep(0.01)
                reads: list[list[str]] = []

                async def read(consistency: Consistency) -> None:
                    reads.append(await reader.submit(Records(), consistency=consistency))

                nursery.start_soon(read, Consistency.LINEARIZABLE)
                await trio.sleep(3.0)  # three server request timeouts
                release.set()
            assert reads == [["before", "during"]]
