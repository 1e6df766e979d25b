"""Each resource kind's client API on a three-member in-memory cluster (MockClock)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from copycat_trio.protocol.errors import UnknownOperationError
from copycat_trio.recipes import counter as legacy_counter
from copycat_trio.recipes import election as legacy_election
from copycat_trio.recipes import kv
from copycat_trio.recipes import lock as legacy_lock
from copycat_trio.recipes.resources import (
    Counter,
    Election,
    Group,
    GroupChange,
    GroupMemberTakenError,
    HandleBusyError,
    LeaderInfo,
    Lock,
    LockHolderInfo,
    LockNotHeldError,
    LockTimeoutError,
    Map,
    MapChange,
    Queue,
    Resources,
    WatchCompactedError,
)
from copycat_trio.recipes.resources.kinds.map import MapPut
from copycat_trio.testing import open_memory_cluster

from ..server.test_sessions import Journal


async def test_map(autojump_clock: Any) -> None:
    async with open_memory_cluster(3, Resources) as cluster, cluster.client() as client:
        users = Map(client, "users")
        assert await users.put("alice", {"age": 30}) is None
        assert await users.put("alice", {"age": 31}) == {"age": 30}
        assert await users.get("alice") == {"age": 31}
        assert await users.put_if_absent("bob", 1) is True
        assert await users.put_if_absent("bob", 2) is False
        assert await users.compare_and_set("bob", 1, 3) is True
        assert await users.keys() == ["alice", "bob"]
        assert await users.keys(prefix="b") == ["bob"]
        assert await users.keys(limit=1) == ["alice"]
        assert await users.size() == 2
        assert await users.delete("bob") is True
        assert await users.delete("bob") is False
        assert await Map(client, "other").size() == 0
        # The key-value operations of today's users work on the map "default".
        await client.submit(kv.Put("k", "v"))
        assert await Map(client, "default").get("k") == "v"
        with pytest.raises(ValueError, match="cannot be None"):
            await users.put("x", None)


async def test_map_ttl_is_log_time(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as client,
        cluster.client() as watcher,
        Map(watcher, "cache").watch(prefix="k") as changes,
    ):
        cache = Map(client, "cache")
        await cache.put("k", "v", ttl=2.0)
        await trio.sleep(1.5)
        await cache.put("other", 1)  # log time moves with each entry: 1.5 s, not expired
        assert await cache.get("k") == "v"
        await trio.sleep(1.0)
        await cache.put("other", 2)  # log time passes 2 s: the key's timer fires first
        assert await cache.get("k") is None
        assert await cache.keys() == ["other"]
        with trio.fail_after(1):  # the expiry, a timer's change, reaches watchers too
            assert [(await changes.__anext__()).type for _ in range(2)] == ["put", "expire"]


async def test_map_watch(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, lambda: Resources(map_history=4)) as cluster,
        cluster.client() as writer,
        cluster.client() as reader,
    ):
        users = Map(writer, "users")
        await users.put("a1", 1)
        seen: list[MapChange] = []
        async with Map(reader, "users").watch(prefix="a") as changes:
            await users.put("b", 2)  # another prefix
            await users.put("a2", 2)
            await users.delete("a1")
            async for change in changes:
                seen.append(change)
                if len(seen) == 2:
                    break
        assert [(c.type, c.key, c.value, c.previous) for c in seen] == [
            ("put", "a2", 2, None),
            ("delete", "a1", None, 1),
        ]
        assert seen[0].revision < seen[1].revision
        # Resume after the first change: the second comes again, nothing else.
        async with Map(reader, "users").watch(prefix="a", since=seen[0].revision) as again:
            assert await again.__anext__() == seen[1]
        for n in range(5):
            await users.put(f"a{n}", n)  # the history (4) drops seen[1]
        with pytest.raises(WatchCompactedError) as caught:
            async with Map(reader, "users").watch(since=seen[0].revision):
                pass
        assert caught.value.oldest > seen[1].revision


async def test_a_watch_hears_a_change_within_a_heartbeat_of_its_commit(
    autojump_clock: Any,
) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as writer,
        cluster.client() as reader,
        Map(reader, "m").watch() as changes,
    ):
        for i in range(5):
            await Map(writer, "m").put("k", i)
            with trio.fail_after(cluster.heartbeat_interval * 2):
                assert (await changes.__anext__()).value == i


async def test_counter(autojump_clock: Any) -> None:
    async with open_memory_cluster(3, Resources) as cluster, cluster.client() as client:
        hits = Counter(client, "hits")
        assert await hits.increment() == 1
        assert await hits.add_and_get(10) == 11
        assert await hits.compare_and_set(11, 0) is True
        assert await hits.compare_and_set(11, 5) is False
        assert await hits.value() == 0
        assert await Counter(client, "other").value() == 0


async def test_lock(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        events: list[str] = []
        tokens: list[int] = []

        async def waiter() -> None:
            async with Lock(b, "jobs") as second:
                events.append("b holds")
                tokens.append(second)

        async with trio.open_nursery() as nursery, Lock(a, "jobs") as first:
            holder = await Lock(b, "jobs").holder()
            assert holder == LockHolderInfo(a.session_id, first)
            assert await Lock(b, "jobs").try_acquire() is None
            assert await Lock(a, "jobs").try_acquire() is None  # not reentrant
            with pytest.raises(LockTimeoutError, match="'jobs' was not granted"):
                await Lock(b, "jobs").acquire(timeout=1.0)
            nursery.start_soon(waiter)
            await trio.sleep(1)
            events.append("a releases")
        assert events == ["a releases", "b holds"]
        assert tokens[0] > first
        lock = Lock(a, "jobs")
        with pytest.raises(LockNotHeldError, match="does not hold lock 'jobs'"):
            await lock.release()
        assert await lock.try_acquire(timeout=5) is not None
        with pytest.raises(HandleBusyError):
            await lock.acquire()
        await lock.release()
        assert await lock.holder() is None


async def test_lock_waiter_that_timed_out_is_not_granted_later(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        held = Lock(a, "l")
        await held.acquire()
        assert await Lock(b, "l").try_acquire(timeout=1.0) is None
        await held.release()
        assert await Lock(a, "l").holder() is None  # b's withdrawn wait took nothing


async def test_election(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
        Election(b, "s").observe() as leaders,
    ):
        assert await leaders.__anext__() is None
        first = Election(a, "s")
        term = await first.campaign("A")
        leader_a = LeaderInfo(a.session_id, "A", term)
        assert await leaders.__anext__() == leader_a
        assert await Election(b, "s").leader() == leader_a
        second = Election(b, "s")
        terms: list[int] = []
        async with trio.open_nursery() as nursery:

            async def campaign_b() -> None:
                terms.append(await second.campaign("B"))

            nursery.start_soon(campaign_b)
            await trio.sleep(1)
            assert terms == []  # waits while A leads
            assert await first.resign() is True
        assert terms[0] > term
        assert second.term == terms[0]
        assert await leaders.__anext__() == LeaderInfo(b.session_id, "B", terms[0])
        assert await first.resign() is False
        assert await second.resign() is True
        assert await leaders.__anext__() is None


async def test_group(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        workers = Group(a, "workers")
        await workers.join("w1", {"host": "a"})
        with pytest.raises(GroupMemberTakenError):
            await Group(b, "workers").join("w1")
        async with Group(b, "workers").changes() as changes:
            assert await changes.__anext__() == GroupChange("joined", "w1", {"host": "a"})
            await Group(b, "workers").join("w2")
            assert await changes.__anext__() == GroupChange("joined", "w2", None)
            assert await workers.leave("w1") is True
            assert await changes.__anext__() == GroupChange("left", "w1", None)
        members = await workers.members()
        assert list(members) == ["w2"]
        assert members["w2"].session == b.session_id


async def test_queue(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        jobs = Queue(a, "jobs")
        await jobs.offer(1)
        await jobs.offer(2)
        assert await jobs.peek() == 1
        assert await jobs.size() == 2
        assert await Queue(b, "jobs").poll() == 1
        assert await jobs.poll(timeout=0) == 2
        assert await jobs.poll(timeout=0) is None
        assert await jobs.poll(timeout=1.0) is None
        got: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                got.append(await Queue(b, "jobs").poll())

            nursery.start_soon(poll)
            await trio.sleep(1)
            await jobs.offer(3)
        assert got == [3]
        assert await jobs.size() == 0


async def test_cancelled_poll_loses_no_item(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        with trio.move_on_after(1.0):
            await Queue(b, "q").poll()  # cancelled while waiting
        await Queue(a, "q").offer("x")
        assert await Queue(a, "q").poll(timeout=0) == "x"


async def test_a_user_state_machine_refuses_resource_operations_at_once(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(3, Journal) as cluster, cluster.client() as client:
        started = trio.current_time()
        with pytest.raises(UnknownOperationError, match="MapPut"):
            await client.submit(MapPut("m", "k", 1))
        assert trio.current_time() - started < 1.0


async def test_the_older_recipes_clients_work_against_resources(autojump_clock: Any) -> None:
    async with (
        open_memory_cluster(3, Resources) as cluster,
        cluster.client() as a,
        cluster.client() as b,
    ):
        assert await a.submit(legacy_counter.Increment(5)) == 5
        assert await Counter(b, "default").value() == 5
        await legacy_lock.Lock(a, "x").acquire()
        got: list[str] = []
        async with trio.open_nursery() as nursery:

            async def wait_b() -> None:
                await legacy_lock.Lock(b, "x").acquire()
                got.append("b")

            nursery.start_soon(wait_b)
            await trio.sleep(1)
            assert got == []
            assert await legacy_lock.Lock(a, "x").release()
        assert got == ["b"]
        assert await legacy_election.Election(a, "s").run() > 0
