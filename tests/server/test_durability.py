"""Disk storage under whole servers: restarts, snapshots, compaction, catching up by snapshot.

Real time (fsync runs in threads, which MockClock cannot account for), in-memory network.
"""

from __future__ import annotations

from pathlib import Path

import trio

from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.storage import DiskStorage
from copycat_trio.testing import open_memory_cluster

FAST = {"election_timeout": 0.3, "heartbeat_interval": 0.05}


def disk(tmp_path: Path):
    return lambda member_id: DiskStorage(tmp_path / f"member{member_id}")


async def read_all(cluster, count: int, ids=None) -> dict[str, int]:
    async with cluster.client(ids) as client:
        return {f"k{i}": await client.submit(Get(f"k{i}")) for i in range(count)}


async def test_all_members_restart_from_disk_with_every_acknowledged_write(tmp_path) -> None:
    with trio.fail_after(60):
        async with open_memory_cluster(3, KeyValueStore, storage=disk(tmp_path), **FAST) as cluster:
            await cluster.wait_for_leader()
            async with cluster.client() as client:
                for i in range(50):
                    await client.submit(Put(f"k{i}", i))
            terms = {i: s.status().term for i, s in cluster.servers.items()}
            for member_id in cluster.all_ids():
                cluster.crash(member_id)
            await cluster.restart([1, 2, 3])
            await cluster.wait_for_leader()
            for member_id, server in cluster.servers.items():
                assert server.status().term >= terms[member_id]  # the term was durable
            assert await read_all(cluster, 50) == {f"k{i}": i for i in range(50)}


async def test_snapshots_compact_the_log_and_restarts_restore_from_them(tmp_path) -> None:
    with trio.fail_after(60):
        async with open_memory_cluster(
            3,
            KeyValueStore,
            storage=disk(tmp_path),
            snapshot_every=40,
            catch_up_entries=5,
            **FAST,
        ) as cluster:
            await cluster.wait_for_leader()
            async with cluster.client() as client:
                for i in range(200):
                    await client.submit(Put(f"k{i}", i))
            await trio.sleep(0.5)
            for member_id, server in cluster.servers.items():
                assert server._executor is not None and server._executor.snapshot_index >= 120
                assert server._loop is not None
                assert server._loop.core.log.first_index > 100, member_id
                assert list((tmp_path / f"member{member_id}" / "snapshots").glob("*.snapshot"))
            for member_id in cluster.all_ids():
                cluster.crash(member_id)
            await cluster.restart([1, 2, 3])
            await cluster.wait_for_leader()
            assert await read_all(cluster, 200) == {f"k{i}": i for i in range(200)}


async def test_follower_stopped_while_leader_compacts_catches_up_by_snapshot(tmp_path) -> None:
    with trio.fail_after(60):
        async with open_memory_cluster(
            3,
            KeyValueStore,
            storage=disk(tmp_path),
            snapshot_every=30,
            catch_up_entries=0,
            **FAST,
        ) as cluster:
            leader = await cluster.wait_for_leader()
            follower = next(i for i in cluster.all_ids() if i != leader)
            cluster.crash(follower)
            async with cluster.client() as client:
                for i in range(120):
                    await client.submit(Put(f"k{i}", i))
            await trio.sleep(0.3)
            assert cluster.servers[leader]._loop.core.log.first_index > 60
            await cluster.restart([follower])
            server = cluster.servers[follower]
            with trio.fail_after(20):
                while server.status().applied_index < cluster.servers[leader].status().commit_index:
                    await trio.sleep(0.05)
            assert server._replication is not None and server._replication.installed >= 1
            assert dict(server.state_machine.data) == {f"k{i}": i for i in range(120)}


async def test_new_member_catches_up_by_snapshot(tmp_path) -> None:
    with trio.fail_after(60):
        async with open_memory_cluster(
            3,
            KeyValueStore,
            storage=disk(tmp_path),
            snapshot_every=25,
            catch_up_entries=0,
            **FAST,
        ) as cluster:
            await cluster.wait_for_leader()
            async with cluster.client() as client:
                for i in range(100):
                    await client.submit(Put(f"k{i}", i))
            await trio.sleep(0.3)
            server = await cluster.join(4, via=[1, 2, 3])
            with trio.fail_after(20):
                while len(server.state_machine.data) < 100:
                    await trio.sleep(0.05)
            assert server._replication is not None and server._replication.installed >= 1
            assert dict(server.state_machine.data) == {f"k{i}": i for i in range(100)}


async def test_exactly_once_survives_compaction_and_restart(tmp_path) -> None:
    """Sessions live in the snapshot: after compaction and a full restart the client's session
    and its sequence numbers are still there."""
    with trio.fail_after(60):
        async with open_memory_cluster(
            3,
            KeyValueStore,
            storage=disk(tmp_path),
            snapshot_every=20,
            catch_up_entries=0,
            **FAST,
        ) as cluster:
            await cluster.wait_for_leader()
            async with cluster.client(session_timeout=30) as client:
                for i in range(60):
                    await client.submit(Put("counter", i))
                session = client.session_id
                for member_id in cluster.all_ids():
                    cluster.crash(member_id)
                await cluster.restart([1, 2, 3])
                await cluster.wait_for_leader()
                # The session came back from snapshot and log: the next command is accepted
                # in sequence, not refused as an unknown session.
                await client.submit(Put("counter", 60))
                assert await client.submit(Get("counter")) == 60
                await trio.sleep(0.5)
                for server in cluster.servers.values():
                    restored = server._executor.sessions.get(session)
                    assert restored is not None and restored.command_sequence == 61
