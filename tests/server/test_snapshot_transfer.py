"""Snapshot transfer when a message is lost (MockClock, in-memory network, simulated disks): a
lost chunk or a lost answer costs about an election timeout, not the request timeout, and the
follower hears from the leader the whole time."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio

from copycat_trio.protocol.messages import InstallRequest, InstallResponse, RpcRequest, RpcResponse
from copycat_trio.recipes.kv import KeyValueStore, Put
from copycat_trio.server import replication
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.simdisk import SimDisk
from copycat_trio.transport.memory import MemoryStream

ELECTION_TIMEOUT = 1.0


def drop_once(monkeypatch: pytest.MonkeyPatch, matches: Callable[[Any], bool]) -> list[Any]:
    """Lose the first message on the network that `matches`; returns what was lost."""
    lost: list[Any] = []
    send = MemoryStream.send

    async def lossy_send(self: MemoryStream, message: Any) -> None:
        if not lost and matches(message):
            lost.append(message)
            await trio.lowlevel.checkpoint()
            return
        await send(self, message)

    monkeypatch.setattr(MemoryStream, "send", lossy_send)
    return lost


def install_request(offset: int | None = None) -> Callable[[Any], bool]:
    def matches(message: Any) -> bool:
        return (
            isinstance(message, RpcRequest)
            and isinstance(message.body, InstallRequest)
            and (offset is None or message.body.offset == offset)
        )

    return matches


def install_answer_after(offset: int) -> Callable[[Any], bool]:
    def matches(message: Any) -> bool:
        return (
            isinstance(message, RpcResponse)
            and isinstance(message.body, InstallResponse)
            and message.body.error is None
            and message.body.offset > offset
        )

    return matches


async def catch_up_after_a_loss(
    monkeypatch: pytest.MonkeyPatch, lose: Callable[[Any], bool] | None, *, stall: float = 0.0
) -> tuple[float, list[Any], float]:
    """Cut a follower off while the others compact, then lose one snapshot message as it comes
    back (and stall its disk for `stall` seconds). Returns the seconds it took to catch up,
    what was lost, and the longest the follower went without a leader once it had found it
    again."""
    disks: dict[int, SimDisk] = {}

    def storage(member_id: int) -> SimDisk:
        return disks.setdefault(member_id, SimDisk(f"m{member_id}", random.Random(member_id)))

    async with open_memory_cluster(
        3,
        KeyValueStore,
        storage=storage,
        election_timeout=ELECTION_TIMEOUT,
        heartbeat_interval=0.1,
        snapshot_every=10,
        catch_up_entries=0,
    ) as cluster:
        leader = await cluster.wait_for_leader()
        behind = next(i for i in cluster.all_ids() if i != leader)
        cluster.isolate(behind)
        others = [i for i in cluster.all_ids() if i != behind]
        async with cluster.client(others) as client:
            for i in range(40):
                await client.submit(Put(f"k{i}", "v" * 200))
        lost = drop_once(monkeypatch, lose) if lose is not None else []
        target = cluster.servers[leader].status().commit_index
        follower = cluster.servers[behind]
        term = follower.status().term
        started = trio.current_time()
        if stall:
            disks[behind].stall(stall)
        cluster.network.heal()
        found: float | None = None
        leaderless = 0.0
        with trio.fail_after(60):
            while follower.status().applied_index < target:
                now = trio.current_time()
                if follower.status().leader == leader:
                    found = now
                elif found is not None:
                    leaderless = max(leaderless, now - found)
                await trio.sleep(0.01)
        took = trio.current_time() - started
        sender = cluster.servers[leader]._replication
        assert sender is not None
        print(
            f"caught up in {took:.2f}s after losing {[type(m.body).__name__ for m in lost]}; "
            f"leaderless for {leaderless:.2f}s; {sender.resent} chunks sent again"
        )
        assert follower._replication is not None and follower._replication.installed == 1
        assert follower.state_machine.data == {f"k{i}": "v" * 200 for i in range(40)}
        assert cluster.leaders() == [leader] and follower.status().term == term
        if lose is not None:
            assert sender.resent == 1  # the lost one, and no other
        return took, lost, leaderless


async def test_a_lost_snapshot_chunk_is_sent_again_within_an_election_timeout(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    took, lost, leaderless = await catch_up_after_a_loss(monkeypatch, install_request())
    assert len(lost) == 1
    assert took < 2 * ELECTION_TIMEOUT, took  # was 15 s: the request timeout, then a back-off
    assert leaderless == 0.0


async def test_without_a_loss_a_follower_catches_up_by_snapshot_at_once(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    took, _, leaderless = await catch_up_after_a_loss(monkeypatch, None)
    assert took < 0.5, took
    assert leaderless == 0.0


@pytest.mark.parametrize(
    "lose",
    [install_request(offset=2048), install_answer_after(2048)],
    ids=["a middle chunk", "a middle chunk's answer"],
)
async def test_a_transfer_in_many_chunks_resumes_where_a_message_was_lost(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, lose: Callable[[Any], bool]
) -> None:
    """The chunk is sent again (its answer lost: the follower answers the repeat without
    writing it twice); the snapshot installs whole, without starting over."""
    monkeypatch.setattr(replication, "CHUNK_SIZE", 1024)
    took, lost, leaderless = await catch_up_after_a_loss(monkeypatch, lose)
    assert len(lost) == 1
    assert took < 2 * ELECTION_TIMEOUT, took
    assert leaderless == 0.0


async def test_a_follower_hears_heartbeats_while_a_slow_snapshot_write_holds_up_the_answer(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last chunk's answer waits for the snapshot to be durable and installed (here, a disk
    stalled for 6 s); heartbeats keep the follower with its leader, and repeats of the chunk
    are answered, not written again."""
    took, _, leaderless = await catch_up_after_a_loss(monkeypatch, None, stall=6.0)
    assert took < 6.5, took
    assert leaderless == 0.0
