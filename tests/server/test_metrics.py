"""Metrics and health of whole servers (in-memory network, MockClock), and the health rules."""

from __future__ import annotations

import json

import trio
from prometheus_client.parser import text_string_to_metric_families

from copycat_trio.protocol.errors import NoLeaderError
from copycat_trio.protocol.messages import CommandRequest, KeepAliveRequest, NoOpEntry
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.metrics import (
    Buckets,
    RoundTrips,
    judge_health,
    request_type,
    server_health,
)
from copycat_trio.server.server import CopycatServer
from copycat_trio.testing import open_memory_cluster

LISTED = {
    "copycat_server_has_leader",
    "copycat_server_is_leader",
    "copycat_server_leader_changes_seen",
    "copycat_server_term",
    "copycat_server_commit_index",
    "copycat_server_applied_index",
    "copycat_server_proposals_committed",
    "copycat_server_proposals_failed",
    "copycat_server_proposals_pending",
    "copycat_disk_fsync_duration_seconds",
    "copycat_disk_backend_commit_batch_entries",
    "copycat_network_peer_round_trip_time_seconds",
    "copycat_network_peer_sent_bytes",
    "copycat_sessions_open",
    "copycat_snapshot_save_duration_seconds",
    "copycat_client_requests",
}
"""The issue's names; the parser gives counters without their _total suffix."""

METRICS = {"metrics_address": "127.0.0.1:0"}


def scrape(
    server: CopycatServer,
) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family -> {(sample name, labels): value}, through prometheus-client's own parser."""
    assert server.metrics is not None
    text = server.metrics.render().decode()
    return {
        family.name: {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in family.samples
        }
        for family in text_string_to_metric_families(text)
    }


def value(
    families: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]],
    name: str,
    sample: str | None = None,
    **labels: str,
) -> float:
    return families[name][(sample or name, tuple(sorted(labels.items())))]


async def test_every_listed_metric_is_served_and_moves(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, **METRICS) as cluster:
        leader_id = await cluster.wait_for_leader()
        leader = cluster.servers[leader_id]
        follower = cluster.servers[next(i for i in cluster.all_ids() if i != leader_id)]
        before = scrape(leader)
        assert set(before) >= LISTED
        async with cluster.client() as client:
            for i in range(20):
                await client.submit(Put(f"k{i}", "v"))
            assert await client.submit(Get("k3")) == "v"
            after = scrape(leader)
            assert value(after, "copycat_sessions_open") == 1
        assert value(after, "copycat_server_is_leader") == 1
        assert value(after, "copycat_server_has_leader") == 1
        assert (
            value(
                after,
                "copycat_server_leader_changes_seen",
                "copycat_server_leader_changes_seen_total",
            )
            >= 1
        )
        grew = value(after, "copycat_server_commit_index") - value(
            before, "copycat_server_commit_index"
        )
        assert grew >= 21  # the register and 20 puts
        assert (
            value(after, "copycat_server_applied_index")
            >= value(before, "copycat_server_applied_index") + 21
        )
        committed = "copycat_server_proposals_committed"
        assert (
            value(after, committed, committed + "_total")
            >= value(before, committed, committed + "_total") + 21
        )
        assert (
            value(
                after,
                "copycat_client_requests",
                "copycat_client_requests_total",
                type="command",
                status="ok",
            )
            >= 1
        )
        batches = "copycat_disk_backend_commit_batch_entries"
        assert value(after, batches, batches + "_count") > value(
            before, batches, batches + "_count"
        )
        rtt = "copycat_network_peer_round_trip_time_seconds"
        for peer in cluster.all_ids():
            if peer != leader_id:
                assert value(after, rtt, rtt + "_count", peer=str(peer)) > 0
                sent = "copycat_network_peer_sent_bytes"
                # The memory transport counts no bytes; the series exists for every peer.
                assert (sent + "_total", (("peer", str(peer)),)) in after[sent]
        on_follower = scrape(follower)
        assert set(on_follower) >= LISTED
        assert value(on_follower, "copycat_server_is_leader") == 0
        assert (
            value(on_follower, "copycat_server_commit_index")
            >= value(before, "copycat_server_commit_index") + 21
        )


async def test_leader_changes_are_counted_on_the_survivors(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, **METRICS) as cluster:
        old = await cluster.wait_for_leader()
        name = "copycat_server_leader_changes_seen"
        survivors = [i for i in cluster.all_ids() if i != old]
        seen = {i: value(scrape(cluster.servers[i]), name, name + "_total") for i in survivors}
        cluster.crash(old)
        new = await cluster.wait_for_leader(survivors)
        assert new != old
        for i in survivors:
            assert value(scrape(cluster.servers[i]), name, name + "_total") >= seen[i] + 1


async def test_refused_proposals_are_failures(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, **METRICS) as cluster:
        leader_id = await cluster.wait_for_leader()
        follower = cluster.servers[next(i for i in cluster.all_ids() if i != leader_id)]
        assert follower._loop is not None
        name = "copycat_server_proposals_failed"
        before = value(scrape(follower), name, name + "_total")
        try:
            await follower._loop.propose(NoOpEntry)
        except NoLeaderError:
            pass
        else:
            raise AssertionError("a follower appended a proposal")
        assert value(scrape(follower), name, name + "_total") == before + 1


async def test_health_of_members_of_a_healthy_and_a_split_cluster(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore, election_timeout=1.0, **METRICS) as cluster:
        leader_id = await cluster.wait_for_leader()
        for server in cluster.servers.values():
            health = server_health(server)
            assert health.healthy, health
            assert server.metrics is not None
            answer = server.metrics.answer("/health")
            assert answer.status == 200
            assert json.loads(answer.body)["health"] is True
            assert server.metrics.answer("/ready").status == 200
        assert cluster.servers[leader_id].metrics.answer("/nothing").status == 404  # type: ignore[union-attr]
        cluster.isolate(leader_id)
        await trio.sleep(2.5)  # past two election timeouts of silence
        cut_off = server_health(cluster.servers[leader_id])
        assert not cut_off.healthy
        assert "quorum" in cut_off.reason or "no leader" in cut_off.reason, cut_off.reason
        assert cluster.servers[leader_id].metrics.answer("/health").status == 503  # type: ignore[union-attr]


def test_health_rules() -> None:
    common = {"term": 4, "voters": [1, 2, 3], "election_timeout": 1.0, "storage_problem": None}
    healthy = judge_health(
        member_id=2, role="follower", leader=1, silent_for={1: 0.2, 3: 9.0}, **common
    )
    assert healthy.healthy and healthy.reason == ""
    silent_leader = judge_health(
        member_id=2, role="follower", leader=1, silent_for={1: 1.5, 3: 0.1}, **common
    )
    assert not silent_leader.healthy
    assert "no contact with leader 1 for 1.5s" in silent_leader.reason
    none = judge_health(member_id=2, role="candidate", leader=None, silent_for={}, **common)
    assert not none.healthy and "no leader known" in none.reason
    quorum = judge_health(
        member_id=1, role="leader", leader=1, silent_for={2: 0.3, 3: 7.0}, **common
    )
    assert quorum.healthy
    alone = judge_health(
        member_id=1, role="leader", leader=1, silent_for={2: 2.0, 3: 7.0}, **common
    )
    assert not alone.healthy
    assert "heard from 1 of 3 voters" in alone.reason and "2 for 2.0s" in alone.reason
    broken = judge_health(
        member_id=1,
        role="leader",
        leader=1,
        silent_for={2: 0.1, 3: 0.1},
        **{**common, "storage_problem": "a write failed earlier"},
    )
    assert not broken.healthy and broken.reason.startswith("storage: ")
    assert json.loads(broken.body())["health"] is False


def test_request_type_labels() -> None:
    assert request_type(CommandRequest) == "command"
    assert request_type(KeepAliveRequest) == "keep_alive"


async def test_no_metrics_unless_asked(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_cluster(1, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        server = cluster.servers[1]
        assert server.metrics is None and server.metrics_address is None
        assert server._loop is not None and server._loop.metrics is None


def test_buckets_count_as_prometheus_histograms_do() -> None:
    buckets = Buckets((1.0, 2.0, 4.0))
    for observation in (0.5, 1.0, 1.5, 4.0, 9.0):
        buckets.observe(observation)
    assert buckets.cumulative() == [("1.0", 2.0), ("2.0", 3.0), ("4.0", 4.0), ("+Inf", 5.0)]
    assert buckets.sum == 16.0


async def test_one_round_trip_sample_per_peer_per_heartbeat_round(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The first AppendRequest of a round to a peer starts the clock and its answer stops it;
    the round's later requests (one per put under load) are not timed again."""
    trips = RoundTrips()

    def samples() -> int:
        return sum(trips.child(2).counts)

    trips.sent(2, 1)
    await trio.sleep(0.003)
    trips.sent(2, 1)  # pipelined behind the first: not timed
    trips.answered(2, 1)
    assert samples() == 1 and abs(trips.child(2).sum - 0.003) < 1e-9
    for _ in range(3):  # more puts in the same round
        trips.sent(2, 1)
        await trio.sleep(0.001)
        trips.answered(2, 1)
    assert samples() == 1
    trips.sent(2, 2)  # the next heartbeat round is timed
    await trio.sleep(0.002)
    trips.answered(2, 2)
    assert samples() == 2 and abs(trips.child(2).sum - 0.005) < 1e-9
    trips.sent(2, 3)  # lost: the answer comes from a later round, nothing is observed
    trips.answered(2, 5)
    trips.sent(2, 5)  # round 5 has been answered already
    trips.answered(2, 5)
    assert samples() == 2
    trips.sent(2, 6)
    trips.answered(2, 6)
    assert samples() == 3


async def test_a_removed_member_is_unhealthy(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, **METRICS) as cluster:
        leader = await cluster.wait_for_leader()
        leaving = cluster.servers[next(i for i in cluster.all_ids() if i != leader)]
        await leaving.leave()
        with trio.fail_after(10):
            await leaving.removed.wait()
        health = server_health(leaving)
        assert not health.healthy
        assert "removed from the cluster" in health.reason, health.reason
