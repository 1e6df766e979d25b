"""The resources under faults on the in-memory cluster (MockClock): session expiry, a leader
crash in the middle of locking, queueing and watching, a snapshot install, and every kind used
at once from several clients."""

from __future__ import annotations

import random
from collections import Counter as Tally
from typing import Any

import pytest
import trio

from copycat_trio.client import ClientState
from copycat_trio.client.client import ClientClosedError
from copycat_trio.protocol.codec import registry
from copycat_trio.recipes.resources import (
    Counter,
    Election,
    Group,
    Lock,
    Map,
    MapChange,
    Queue,
    Resources,
    SessionEndedError,
)
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.simdisk import SimDisk


def manager(cluster: Any, member_id: int) -> Resources:
    machine = cluster.servers[member_id].state_machine
    assert isinstance(machine, Resources)
    return machine


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Wait for a condition on the members' state (checked every 0.1 s of mock time)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.1)


def dump(machine: Resources) -> list[bytes]:
    """The state machine's snapshot, as bytes, to compare members."""
    written: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            raise AssertionError("Resources writes objects only")

        def write_object(self, value: Any) -> None:
            written.append(registry.encode(value))

    machine.snapshot(Sink())
    return written


async def test_session_expiry_releases_locks_group_membership_and_polls(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        leader = await cluster.wait_for_leader()
        held = trio.Event()
        async with cluster.client(host="live") as live, trio.open_nursery() as nursery:

            async def doomed() -> None:
                async with cluster.client(host="doomed", session_timeout=2.0) as client:
                    await Lock(client, "l").acquire()
                    await Group(client, "g").join("d")
                    held.set()
                    await Queue(client, "q").poll()  # waits; its process dies first

            nursery.start_soon(doomed)
            await held.wait()
            await until(lambda: manager(cluster, leader).resources.get(("queue", "q")))
            waiter = Lock(live, "l")
            async with trio.open_nursery() as waiting:
                waiting.start_soon(waiter.acquire)
                await until(lambda: manager(cluster, leader).resources[("lock", "l")].waiters)
                cluster.cut_off_host("doomed")  # the holder's process "dies"
                started = trio.current_time()
            # Not before its session timed out: 2 s after its last keep-alive, which came at
            # most a third of that before the cut (the expiry follows the deadline, no later).
            assert trio.current_time() - started >= 2.0 * 2 / 3
            assert waiter.token is not None
            assert await Group(live, "g").members() == {}
            await Queue(live, "q").offer("x")  # not handed to the dead poller
            assert await Queue(live, "q").poll(timeout=0) == "x"
            nursery.cancel_scope.cancel()


async def test_fencing_tokens_grow_and_holders_exclude_each_other_across_a_leader_crash(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        await cluster.wait_for_leader()
        tokens: list[int] = []
        inside: list[int] = []
        overlaps: list[tuple[int, int]] = []
        rounds = 12

        async def worker(n: int) -> None:
            async with cluster.client(host=f"w{n}") as client:
                for _ in range(rounds):
                    async with Lock(client, "l") as token:
                        if inside:
                            overlaps.append((inside[0], n))
                        inside.append(n)
                        tokens.append(token)
                        await trio.sleep(0.05)
                        inside.remove(n)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(worker, n)
            await until(lambda: len(tokens) >= 10)
            crashed = cluster.leaders()[0]
            cluster.crash(crashed)
            await until(lambda: len(tokens) >= 20)
            await cluster.restart([crashed])
        assert overlaps == []
        assert len(tokens) == 3 * rounds
        assert tokens == sorted(set(tokens))  # strictly increasing


async def test_queue_delivers_each_item_once_across_a_leader_change(autojump_clock: Any) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        await cluster.wait_for_leader()
        offered = [f"job{i}" for i in range(60)]
        received: list[Any] = []

        async def producer(items: list[str]) -> None:
            async with cluster.client(host=f"p{items[0]}") as client:
                for item in items:
                    await Queue(client, "jobs").offer(item)
                    await trio.sleep(0.05)

        async def consumer(n: int) -> None:
            async with cluster.client(host=f"c{n}") as client:
                queue = Queue(client, "jobs")
                while True:
                    item = await queue.poll(timeout=random.Random(n).choice([0.2, 1.0, None]))
                    if item is not None:
                        received.append(item)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(consumer, n)
            async with trio.open_nursery() as producing:
                producing.start_soon(producer, offered[:30])
                producing.start_soon(producer, offered[30:])
                await until(lambda: len(received) >= 20)
                cluster.crash(cluster.leaders()[0])
            await until(lambda: len(received) >= len(offered))
            nursery.cancel_scope.cancel()
        assert sorted(received) == sorted(offered)
        assert [c for c, n in Tally(received).items() if n > 1] == []


async def test_a_watch_sees_every_change_once_in_order_across_a_failover(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        await cluster.wait_for_leader()
        seen: list[MapChange] = []
        async with cluster.client(host="watcher") as watcher, cluster.client() as writer:
            users = Map(writer, "users")
            async with trio.open_nursery() as nursery, Map(watcher, "users").watch() as changes:

                async def watch() -> None:
                    async for change in changes:
                        seen.append(change)

                nursery.start_soon(watch)
                for i in range(40):
                    await users.put(f"k{i}", i)
                    if i == 15:
                        cluster.crash(cluster.leaders()[0])
                await until(lambda: len(seen) == 40)
                nursery.cancel_scope.cancel()
            assert [(c.type, c.key, c.value) for c in seen] == [
                ("put", f"k{i}", i) for i in range(40)
            ]
            revisions = [c.revision for c in seen]
            assert revisions == sorted(set(revisions))
        # A new session resumes after any change it saw: the rest, no gap, no duplicate.
        async with cluster.client(host="again") as again:
            async with Map(again, "users").watch(since=seen[19].revision) as resumed:
                rest = [await resumed.__anext__() for _ in range(20)]
            assert rest == seen[20:]


def sim_disks() -> Any:
    disks: dict[int, SimDisk] = {}

    def storage(member_id: int) -> SimDisk:
        return disks.setdefault(member_id, SimDisk(f"m{member_id}", random.Random(member_id)))

    return storage


async def test_a_snapshot_install_keeps_every_resource_and_session_bound_state(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(
        3, Resources, storage=sim_disks(), snapshot_every=8, catch_up_entries=0
    ) as cluster:
        leader = await cluster.wait_for_leader()
        behind = next(i for i in cluster.all_ids() if i != leader)
        others = [i for i in cluster.all_ids() if i != behind]
        cluster.isolate(behind)
        async with (
            cluster.client(others, host="a") as a,
            cluster.client(others, host="b") as b,
            trio.open_nursery() as nursery,
        ):
            holder = Lock(a, "l")
            await holder.acquire()
            nursery.start_soon(Lock(b, "l").acquire)  # queued behind a
            await Group(a, "g").join("a", {"n": 1})
            await Election(a, "e").campaign("A")
            nursery.start_soon(Election(b, "e").campaign, "B")
            nursery.start_soon(Queue(b, "q").poll)  # a poller waiting
            await Map(a, "m").put("ttl", "v", ttl=20.0)
            await Counter(a, "c").add_and_get(7)
            for i in range(30):
                await Map(a, "m").put(f"k{i}", i)
            await until(lambda: cluster.servers[leader]._executor.snapshot_index > 0)
            cluster.network.heal()
            await until(lambda: cluster.servers[behind]._replication.installed > 0)
            await until(lambda: dump(manager(cluster, behind)) == dump(manager(cluster, leader)))
            installed = manager(cluster, behind)
            lock: Any = installed.resources[("lock", "l")]
            assert lock.holder[0] == a.session_id
            assert [w[0] for w in lock.waiters] == [b.session_id]
            # Session-bound state acts after the install: a leaves, b gets lock and lead.
            await a.aclose()
            await until(lambda: lock.holder is not None and lock.holder[0] == b.session_id)
            election: Any = installed.resources[("election", "e")]
            assert election.leader[0] == b.session_id
            assert ("group", "g") not in installed.resources  # its only member left
            await Queue(b, "q").offer("job")  # to b's waiting poll, not into the queue
            assert await Queue(b, "q").size() == 0
            await trio.sleep(21)
            await Counter(b, "c").increment()  # log time passes the TTL
            await until(lambda: dump(installed) == dump(manager(cluster, leader)))
            entries: Any = installed.resources[("map", "m")]
            assert "ttl" not in entries.entries and "k29" in entries.entries
            assert await Map(b, "m").get("ttl") is None
            assert await Counter(b, "c").value() == 8
            nursery.cancel_scope.cancel()


async def test_every_kind_at_once_from_several_clients(autojump_clock: Any) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        await cluster.wait_for_leader()
        done: list[int] = []
        polled: list[Any] = []
        leaders: list[int] = []

        async def client_work(n: int) -> None:
            async with cluster.client(host=f"c{n}") as client:
                await Group(client, "workers").join(f"w{n}")
                for i in range(10):
                    await Map(client, "m").put(f"c{n}-{i}", i)
                    await Counter(client, "hits").increment()
                    async with Lock(client, "shared") as _token:
                        value = await Map(client, "m").get("total") or 0
                        await Map(client, "m").put("total", value + 1)
                    await Queue(client, "q").offer(f"{n}-{i}")
                    polled.append(await Queue(client, "q").poll())
                election = Election(client, "e")
                with trio.move_on_after(0.5):
                    await election.campaign(n)
                    leaders.append(n)
                done.append(n)
                await until(lambda: len(done) == 3)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(client_work, n)
        async with cluster.client() as client:
            assert await Map(client, "m").get("total") == 30  # no lost update under the lock
            assert await Map(client, "m").size() == 31
            assert await Counter(client, "hits").value() == 30
            assert sorted(polled) == sorted(f"{n}-{i}" for n in range(3) for i in range(10))
            assert await Queue(client, "q").size() == 0
            assert len(leaders) == 1
            assert await Group(client, "workers").members() == {}  # their sessions closed


async def test_a_wait_whose_session_expired_raises_instead_of_hanging(autojump_clock: Any) -> None:
    async with open_memory_cluster(3, Resources) as cluster, cluster.client(host="a") as a:
        await Lock(a, "l").acquire()
        async with cluster.client(host="b", session_timeout=2.0) as b:
            lock = Lock(b, "l")

            async def expire_b() -> None:
                await until(lambda: manager(cluster, 1).resources[("lock", "l")].waiters)
                cluster.cut_off_host("b")
                await trio.sleep(5)  # b's session expires meanwhile
                cluster.network.heal()  # b hears of it at its next keep-alive

            async with trio.open_nursery() as nursery:
                nursery.start_soon(expire_b)
                with (
                    pytest.raises(SessionEndedError, match="waiting for Lock"),
                    trio.fail_after(30),
                ):
                    await lock.acquire()
            assert lock.token is None
            holder = await Lock(a, "l").holder()
            assert holder is not None and holder.session == a.session_id


async def test_a_lock_lost_with_its_session_fails_its_block_without_hiding_its_error(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(3, Resources) as cluster:
        for body_fails in (True, False):
            host = f"b{body_fails}"
            async with cluster.client(host=host, session_timeout=2.0) as b:
                expected = ValueError if body_fails else ClientClosedError
                with pytest.raises(expected):
                    async with Lock(b, "l"):
                        cluster.cut_off_host(host)
                        await trio.sleep(5)  # the session expires meanwhile
                        cluster.network.heal()
                        await b.state.wait_value(lambda s: s is ClientState.CLOSED)
                        if body_fails:
                            raise ValueError("the body's own error")
