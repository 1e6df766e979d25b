"""Whole servers on the in-memory network under Trio's MockClock: elections, partitions, joins."""

from __future__ import annotations

import attrs
import pytest
import trio

from copycat_trio.protocol.codec import register
from copycat_trio.protocol.errors import (
    ApplicationError,
    CommandError,
    NoLeaderError,
    OutcomeUnknownError,
)
from copycat_trio.protocol.operations import Command, Query
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.loop import Call
from copycat_trio.state_machine import Commit, StateMachine
from copycat_trio.testing import open_memory_cluster


async def test_three_servers_elect_one_leader_and_apply_in_order(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        assert cluster.leaders() == [leader]
        # Writes through every member (followers forward to the leader).
        for i in range(30):
            async with cluster.client([1 + i % 3]) as client:
                await client.submit(Put("k", i))
        async with cluster.client() as client:
            assert await client.submit(Get("k")) == 29
        await trio.sleep(1)
        for server in cluster.servers.values():
            assert server.state_machine.data == {"k": 29}
            assert server.status().applied_index == cluster.servers[leader].status().applied_index


async def test_isolated_minority_never_commits(autojump_clock) -> None:
    async with open_memory_cluster(5, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        buddy = next(i for i in cluster.all_ids() if i != old)
        minority = [old, buddy]
        majority = [i for i in cluster.all_ids() if i not in minority]
        async with cluster.client([old], timeout=3) as client:
            cluster.partition(minority, majority)
            with pytest.raises(OutcomeUnknownError):
                await client.submit(Put("lost", 1))
            assert (
                cluster.servers[old].status().commit_index
                < cluster.servers[old].status().last_log_index
            )
            new = await cluster.wait_for_leader(majority)
            assert new in majority
            for server in cluster.servers.values():
                assert "lost" not in server.state_machine.data
        async with cluster.client(majority) as client:
            await client.submit(Put("kept", 1))
        cluster.network.heal()
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            assert await client.submit(Get("lost")) is None
            assert await client.submit(Get("kept")) == 1
        await trio.sleep(1)
        for server in cluster.servers.values():
            assert "lost" not in server.state_machine.data


async def test_partitioned_leader_steps_down(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, election_timeout=1.0) as cluster:
        old = await cluster.wait_for_leader()
        cluster.isolate(old)
        await trio.sleep(2.5)  # check-quorum: one election timeout, plus a heartbeat round
        assert not cluster.servers[old].is_leader
        rest = [i for i in cluster.all_ids() if i != old]
        assert await cluster.wait_for_leader(rest) in rest


async def test_rejoining_member_does_not_disrupt_healthy_leader(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        term = cluster.servers[leader].status().term
        follower = next(i for i in cluster.all_ids() if i != leader)
        cluster.isolate(follower)
        await trio.sleep(30)  # it polls again and again, but never raises its term
        cluster.network.heal()
        await trio.sleep(5)
        assert cluster.leaders() == [leader]
        assert cluster.servers[leader].status().term == term
        assert cluster.servers[follower].status().leader == leader


async def test_elections_resume_after_minority_leader_steps_down(autojump_clock) -> None:
    async with open_memory_cluster(5, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        others = [i for i in cluster.all_ids() if i != old]
        loyal, rest = others[:1], others[1:]
        cluster.partition([old, *loyal], rest)
        new = await cluster.wait_for_leader(rest)
        await trio.sleep(3)
        assert not cluster.servers[old].is_leader
        cluster.network.heal()
        final = await cluster.wait_for_leader()
        assert final == new or cluster.servers[final].status().term > 0
        async with cluster.client() as client:
            await client.submit(Put("after", "heal"))


async def test_leader_crash_keeps_acknowledged_writes(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client() as client:
            for i in range(20):
                await client.submit(Put(f"k{i}", i))
        cluster.crash(leader)
        rest = cluster.all_ids()
        await cluster.wait_for_leader(rest)
        async with cluster.client(rest) as client:
            for i in range(20):
                assert await client.submit(Get(f"k{i}")) == i


async def test_new_server_joins_and_catches_up(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            for i in range(10):
                await client.submit(Put(f"k{i}", i))
        server = await cluster.join(4, via=[2, 1])
        await trio.sleep(2)
        assert len(server.status().members) == 4
        assert server.state_machine.data == {f"k{i}": i for i in range(10)}
        # The four-member cluster survives the loss of one member.
        cluster.crash(cluster.leaders()[0])
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            await client.submit(Put("after", 1))


async def test_single_server_cluster_grows_by_join(autojump_clock) -> None:
    async with open_memory_cluster(1, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        await cluster.join(2, via=[1])
        async with cluster.client() as client:
            await client.submit(Put("x", 1))
        await trio.sleep(1)
        assert cluster.servers[2].state_machine.data == {"x": 1}


@register(40100)
@attrs.frozen
class Explode(Command):
    reason: str


class Fragile(KeyValueStore):
    def explode(self, commit: Commit[Explode]) -> None:
        raise RuntimeError(commit.operation.reason)


async def test_state_machine_error_becomes_application_error_and_server_goes_on(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, Fragile) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            with pytest.raises(ApplicationError, match="RuntimeError: boom"):
                await client.submit(Explode("boom"))
            await client.submit(Put("still", "fine"))
            assert await client.submit(Get("still")) == "fine"


async def test_deposed_leaders_uncommitted_write_is_never_reported_successful(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, Appends) as cluster:
        old = await cluster.wait_for_leader()
        rest = [i for i in cluster.all_ids() if i != old]
        outcome: list[object] = []
        async with cluster.client([old], timeout=60) as client:
            cluster.isolate(old)  # the client can still reach the old leader

            async def write() -> None:
                try:
                    outcome.append(await client.submit(Append("ghost")))
                except Exception as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await trio.sleep(0.5)
                # The old leader took the write, but cannot commit it.
                assert not outcome
                await cluster.wait_for_leader(rest)
                async with cluster.client(rest) as other:
                    await other.submit(Append("real"))
                await trio.sleep(3)
                assert not outcome, "reported before the cluster could have committed it"
                cluster.network.heal()
        (result,) = outcome
        print("deposed-leader write outcome:", repr(result))
        async with cluster.client() as reader:
            items = await reader.submit(Items())
        # Never reported successful unless it is in the log exactly once; the old leader's own
        # entry was overwritten, and the session retry (same sequence) applied it at most once.
        if isinstance(result, Exception):
            assert isinstance(result, (CommandError, OutcomeUnknownError)), repr(result)
            assert items.count("ghost") <= 1
        else:
            assert items.count("ghost") == 1
        assert items.count("real") == 1


@register(40101)
@attrs.frozen
class Append(Command):
    value: str


@register(40102)
@attrs.frozen
class Items(Query):
    pass


class Appends(StateMachine):
    def __init__(self) -> None:
        self.items: list[str] = []

    def append(self, commit: Commit[Append]) -> int:
        self.items.append(commit.operation.value)
        return len(self.items)

    def list_items(self, commit: Commit[Items]) -> list[str]:
        return list(self.items)


async def test_client_address_refuses_server_traffic(autojump_clock) -> None:
    from copycat_trio.protocol.messages import JoinRequest, Member
    from copycat_trio.server.server import CopycatServer
    from copycat_trio.transport.memory import MemoryNetwork
    from copycat_trio.transport.rpc import ConnectionPool, ResponseLost

    network = MemoryNetwork()
    server = CopycatServer(
        1,
        "s1:1",
        client_address="s1:2",
        state_machine=KeyValueStore,
        transport=network.transport("s1:1"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.bootstrap)
        async with open_memory_client(network, ["s1:2"]) as client:
            await client.submit(Put("via", "client address"))
        pool = ConnectionPool(network.transport("intruder"), nursery)
        with pytest.raises(ResponseLost):
            await pool.request("s1:2", JoinRequest(member=Member(9, "x:1")), 5)
        nursery.cancel_scope.cancel()


async def test_stopping_the_nursery_stops_everything() -> None:
    # Real TCP: after cancellation the port is free again and nobody answers.
    from copycat_trio.server.server import CopycatServer

    server = CopycatServer(1, "127.0.0.1:0", state_machine=KeyValueStore)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.bootstrap)
        port = int(server.address.rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    for listener in listeners:
        await listener.aclose()


def open_memory_client(network, addresses):
    from copycat_trio.client import open_client

    return open_client(addresses, transport=network.transport("client"))


async def test_a_stopped_raft_loop_answers_shielded_callers(autojump_clock) -> None:
    # Seed 30863: a snapshot sender's shielded call into the raft loop of a crashed leader
    # waited forever on the loop's full inbox, so the server never finished stopping.
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        loop = cluster.servers[leader]._loop
        assert loop is not None
        queued = [Call(lambda core, now: None) for _ in range(3)]
        for item in queued:
            loop.inbox_send.send_nowait(item)
        cluster.crash(leader)
        await cluster.stopped[leader].wait()
        with trio.CancelScope(shield=True), trio.fail_after(1):
            for item in queued:  # handled, or failed when the loop stopped: answered either way
                await item.reply.wait()
            with pytest.raises(NoLeaderError):
                await loop.call(lambda core, now: None)


async def test_the_election_timer_sends_one_tick_per_deadline(autojump_clock, monkeypatch) -> None:
    # The timer used to send Tick after Tick while the loop had not yet ticked the core (its
    # deadline still in the past): here one idle Tick for every two useful ones; in a busy
    # simulation seed 295,000 timer turns, half of its run time.
    from copycat_trio.server import loop as loop_module

    handled = {"useful": 0, "idle": 0}
    original = loop_module.RaftLoop._handle

    def counting(self: loop_module.RaftLoop, item: object, now: float) -> None:
        if isinstance(item, loop_module.Tick):
            handled["useful" if now >= self.core.next_deadline() else "idle"] += 1
        original(self, item, now)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module.RaftLoop, "_handle", counting)
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        await trio.sleep(10)
    # A leader's heartbeats alone give about 100 deadlines in 10 s.
    assert handled["useful"] >= 50
    assert handled["idle"] <= handled["useful"] // 10, handled
