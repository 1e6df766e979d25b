"""Configuration changes, leadership transfer and priorities in the pure core."""

from __future__ import annotations

import random

import attrs
import pytest

from copycat_trio.core.raft import ConfigurationChangeError, NotLeaderError, RaftCore, Role
from copycat_trio.protocol.messages import Member, MemberType, PollRequest, PollResponse

from .harness import CONFIG, Cluster


def settle(cluster: Cluster, seconds: float = 1.0) -> None:
    cluster.advance(seconds)


def test_one_configuration_change_at_a_time_and_only_after_the_noop_commits() -> None:
    cluster = Cluster(3)
    cluster.core(1).campaign(cluster.now)
    cluster.deliver(keep=lambda e: type(e.message).__name__ not in ("AppendRequest",))
    leader = cluster.core(1)
    assert leader.role is Role.LEADER
    with pytest.raises(ConfigurationChangeError, match="first entry"):
        leader.propose_configuration(cluster.members)
    settle(cluster)
    leader.propose_configuration(cluster.members[:2])
    with pytest.raises(ConfigurationChangeError, match="in progress"):
        leader.propose_configuration(cluster.members)


def test_removed_leader_steps_down_once_removal_commits() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    settle(cluster)
    leader = cluster.core(1)
    leader.propose_configuration([m for m in cluster.members if m.id != 1])
    settle(cluster, 0.3)
    assert leader.role is not Role.LEADER
    settle(cluster, 5.0)
    assert len(cluster.leaders()) == 1 and cluster.leaders()[0] in (2, 3)
    # The removed member stays quiet: it is no voter, so it never campaigns.
    term = cluster.core(2).term
    settle(cluster, 10.0)
    assert cluster.core(2).term == term and cluster.core(1).role is Role.FOLLOWER


def test_removed_member_cannot_win_polls() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    settle(cluster)
    cluster.core(1).propose_configuration([m for m in cluster.members if m.id != 3])
    settle(cluster)
    follower = cluster.core(2)
    follower.step(
        3, PollRequest(term=99, candidate=3, log_index=999, log_term=99), cluster.now + 50
    )
    answers = [e.message for e in follower.ready().messages if e.target == 3]
    assert PollResponse(term=follower.term, accepted=False) in answers


def test_leadership_transfer_to_caught_up_member() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    settle(cluster)
    cluster.propose(1, range(10))
    old_term = cluster.core(1).term
    cluster.core(1).transfer_leadership(3, cluster.now)
    with pytest.raises(NotLeaderError):
        cluster.core(1).propose("during transfer")
    cluster.deliver()
    assert cluster.leaders() == [3]
    assert cluster.core(3).term == old_term + 1
    settle(cluster)
    assert cluster.leaders() == [3]


def test_transfer_waits_for_the_target_to_catch_up() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    settle(cluster)
    cluster.isolate(3)
    cluster.propose(1, range(10))
    settle(cluster, 0.3)
    cluster.core(1).transfer_leadership(3, cluster.now)
    cluster.deliver()
    assert cluster.leaders() == [1]  # 3 is behind and cut off: no TimeoutNow yet
    cluster.heal()
    settle(cluster, 0.5)
    assert cluster.leaders() == [3]
    assert cluster.core(3).log.last_index >= cluster.core(1).log.last_index


def test_abandoned_transfer_lets_the_leader_go_on() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    settle(cluster)
    cluster.isolate(3)
    cluster.cut.discard(frozenset((1, 2)))
    cluster.core(1).transfer_leadership(3, cluster.now)
    settle(cluster, CONFIG.election_timeout + 0.2)
    assert cluster.core(1).role is Role.LEADER
    cluster.core(1).propose("after the transfer gave up")


def priority_cluster(priorities: dict[int, int], seed: int) -> Cluster:
    cluster = Cluster(3, seed=seed)
    members = tuple(attrs.evolve(m, priority=priorities[m.id]) for m in cluster.members)
    cluster.members = members
    cluster.cores = {
        m.id: RaftCore(
            m.id,
            config=CONFIG,
            members=members,
            rng=random.Random(seed * 100 + m.id),
            now=0.0,
        )
        for m in members
    }
    return cluster


def test_higher_priority_campaigns_first() -> None:
    for seed in range(20):
        cluster = priority_cluster({1: 0, 2: 0, 3: 5}, seed)
        cluster.advance(5.0)
        assert cluster.leaders() == [3], cluster.describe()


def test_leader_hands_over_to_caught_up_higher_priority_member() -> None:
    cluster = priority_cluster({1: 0, 2: 0, 3: 5}, seed=1)
    cluster.isolate(3)
    cluster.advance(5.0)
    assert cluster.leaders()[0] in (1, 2)
    cluster.heal()
    cluster.advance(3.0)
    assert cluster.leaders() == [3]
    cluster.advance(5.0)
    assert cluster.leaders() == [3]  # settled, no flapping


def test_passive_members_replicate_but_never_vote_or_campaign() -> None:
    cluster = Cluster(3)
    members = tuple(
        attrs.evolve(m, type=MemberType.PASSIVE) if m.id == 3 else m for m in cluster.members
    )
    cluster.elect(1)
    settle(cluster)
    cluster.core(1).propose_configuration(members)
    cluster.propose(1, ["x"])
    settle(cluster)
    assert cluster.core(3).log.last_index == cluster.core(1).log.last_index
    cluster.isolate(1)
    cluster.advance(10.0)
    assert cluster.core(3).role is Role.FOLLOWER  # never campaigns
    assert (
        cluster.core(3).term == cluster.core(2).term or cluster.core(3).term <= cluster.core(2).term
    )
    assert Member(3, cluster.members[2].address, MemberType.PASSIVE) in cluster.core(2).members
