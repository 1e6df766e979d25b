"""Elections: vote and poll granting, stickiness, check-quorum (Raft sections 5.2, 5.4.1, 9.6)."""

from __future__ import annotations

import random

import pytest

from copycat_trio.core.log import candidate_log_ok
from copycat_trio.core.raft import HardState, RaftCore, Role, TermBehindLogError
from copycat_trio.protocol.messages import (
    NoOpEntry,
    PollRequest,
    PollResponse,
    VoteRequest,
    VoteResponse,
)

from .harness import CONFIG, Cluster, members


def lone_core(member_id: int = 1, *, term: int = 0, entries=(), vote=None) -> RaftCore:
    return RaftCore(
        member_id,
        config=CONFIG,
        members=members(3),
        hard_state=HardState(term, vote),
        entries=entries,
        rng=random.Random(1),
        now=0.0,
    )


def replies(core: RaftCore) -> list:
    return [e.message for e in core.ready().messages]


def test_up_to_date_rule_later_term_wins_then_longer_log() -> None:
    # Reference: section 5.4.1
    assert candidate_log_ok(3, 1, 2, 10)
    assert not candidate_log_ok(2, 10, 3, 1)
    assert candidate_log_ok(2, 5, 2, 5)
    assert not candidate_log_ok(2, 4, 2, 5)


def test_vote_granted_once_per_term() -> None:
    core = lone_core(term=1)
    core.step(2, VoteRequest(term=2, candidate=2, log_index=0, log_term=0), now=5.0)
    core.step(3, VoteRequest(term=2, candidate=3, log_index=0, log_term=0), now=5.0)
    assert replies(core) == [VoteResponse(term=2, voted=True), VoteResponse(term=2, voted=False)]
    assert core.hard_state == HardState(2, 2)


def test_vote_repeated_to_same_candidate_is_granted_again() -> None:
    core = lone_core(term=2, vote=2)
    core.step(2, VoteRequest(term=2, candidate=2, log_index=0, log_term=0), now=5.0)
    assert replies(core) == [VoteResponse(term=2, voted=True)]


def test_vote_refused_to_stale_log_but_term_adopted() -> None:
    core = lone_core(term=1, entries=[NoOpEntry(term=1, index=1)])
    core.step(2, VoteRequest(term=3, candidate=2, log_index=0, log_term=0), now=5.0)
    assert replies(core) == [VoteResponse(term=3, voted=False)]
    assert core.term == 3 and core.vote is None


def test_vote_refused_for_lower_term() -> None:
    core = lone_core(term=5)
    core.step(2, VoteRequest(term=4, candidate=2, log_index=9, log_term=4), now=5.0)
    assert replies(core) == [VoteResponse(term=5, voted=False)]


def test_poll_changes_no_term_and_grants_up_to_date_log() -> None:
    core = lone_core(term=1)
    core.step(2, PollRequest(term=2, candidate=2, log_index=0, log_term=0), now=5.0)
    assert replies(core) == [PollResponse(term=2, accepted=True)]
    assert core.term == 1 and core.vote is None


def test_poll_refused_to_stale_log_and_lower_term() -> None:
    core = lone_core(term=3, entries=[NoOpEntry(term=3, index=1)])
    core.step(2, PollRequest(term=4, candidate=2, log_index=0, log_term=0), now=5.0)
    core.step(2, PollRequest(term=3, candidate=2, log_index=1, log_term=3), now=5.0)
    assert replies(core) == [
        PollResponse(term=3, accepted=False),
        PollResponse(term=3, accepted=False),
    ]


def test_rejected_poll_with_higher_term_makes_candidate_catch_up() -> None:
    core = lone_core(term=1)
    core.campaign(now=5.0)
    assert core.role is Role.PRE_CANDIDATE
    core.step(2, PollResponse(term=7, accepted=False), now=5.0)
    assert core.role is Role.FOLLOWER and core.term == 7


def test_three_members_elect_exactly_one_leader() -> None:
    for seed in range(20):
        cluster = Cluster(3, seed=seed)
        cluster.advance(5.0)
        assert len(cluster.leaders()) == 1, cluster.describe()
        leader = cluster.core(cluster.leaders()[0])
        for core in cluster.cores.values():
            assert core.term == leader.term and core.leader == leader.id


def test_follower_in_lease_rejects_poll_and_vote_from_rejoining_member() -> None:
    # Reference: section 9.6 (pre-vote) and leader stickiness.
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.advance(10.0)  # member 3 polls over and over but cannot raise its term
    assert cluster.core(3).term == cluster.core(1).term
    # Now 3 pretends to be a disruptive candidate with a higher term.
    cluster.heal()
    term = cluster.core(1).term
    cluster.core(2).step(
        3, VoteRequest(term=term + 5, candidate=3, log_index=99, log_term=99), cluster.now
    )
    cluster.core(2).step(
        3, PollRequest(term=term + 5, candidate=3, log_index=99, log_term=99), cluster.now
    )
    answers = [e.message for e in cluster.core(2).ready().messages if e.target == 3]
    assert VoteResponse(term=term, voted=False) in answers
    assert PollResponse(term=term, accepted=False) in answers
    assert cluster.core(2).term == term and cluster.core(2).leader == 1
    cluster.advance(5.0)
    assert cluster.leaders() == [1] and cluster.core(1).term == term


def test_rejoining_member_does_not_disrupt_healthy_leader() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    term = cluster.core(1).term
    cluster.isolate(3)
    cluster.advance(20.0)
    cluster.heal()
    cluster.advance(5.0)
    assert cluster.leaders() == [1]
    assert cluster.core(1).term == term
    assert cluster.core(3).leader == 1


def test_partitioned_leader_steps_down_by_check_quorum() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.advance(2.5)
    assert cluster.core(1).role is not Role.LEADER
    new_leaders = [i for i in cluster.leaders() if i != 1]
    assert len(new_leaders) == 1


def test_leader_that_hears_from_quorum_stays() -> None:
    cluster = Cluster(5)
    cluster.elect(1)
    cluster.cut.add(frozenset((1, 4)))
    cluster.cut.add(frozenset((1, 5)))
    cluster.advance(10.0)
    assert cluster.core(1).role is Role.LEADER


def test_prevote_with_check_quorum_does_not_stall_after_leader_vanishes() -> None:
    # The trap of etcd PR 8334: a member that has itself timed out must no longer act loyal to
    # the old leader, or two followers can keep rejecting each other's polls forever.
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.advance(0.3)
    # 3 campaigns first (as after its own timeout, or a manual campaign) and polls 2, which
    # still holds a lease on leader 1 and refuses.
    cluster.core(3).campaign(cluster.now)
    cluster.deliver()
    assert cluster.core(3).role is Role.PRE_CANDIDATE
    assert cluster.core(2).leader == 1
    # Then 2 campaigns while 3's lease on leader 1 has not run out by the clock: 3 has given up
    # on the old leader by campaigning, so it must grant.
    cluster.now += 0.1
    cluster.core(2).campaign(cluster.now)
    cluster.deliver()
    assert Role.LEADER in (cluster.core(2).role, cluster.core(3).role), cluster.describe()


def test_elections_settle_after_minority_leader_steps_down() -> None:
    for seed in range(10):
        cluster = Cluster(5, seed=seed)
        cluster.elect(1)
        # Leader 1 keeps only member 2: a minority, so it must step down and the rest elect.
        for a in (1, 2):
            for b in (3, 4, 5):
                cluster.cut.add(frozenset((a, b)))
        cluster.advance(8.0)
        majority_leaders = [i for i in cluster.leaders() if i in (3, 4, 5)]
        assert len(majority_leaders) == 1, cluster.describe()
        assert cluster.core(1).role is not Role.LEADER
        cluster.heal()
        cluster.advance(8.0)
        assert len(cluster.leaders()) == 1, cluster.describe()


def test_an_election_won_below_the_logs_term_stops_the_member() -> None:
    """A stored term behind the member's own log (its meta file lost a write) is harmless until
    an election for such a term succeeds, which only a majority that lost durable writes
    allows: then the member stops with a typed error instead of appending below its log."""
    core = lone_core(term=2, entries=[NoOpEntry(term=4, index=1)])
    core.campaign(now=5.0)
    assert core.role is Role.PRE_CANDIDATE
    core.step(2, PollResponse(term=3, accepted=True), now=5.0)  # a peer that lost term 4 too
    assert core.role is Role.CANDIDATE and core.term == 3
    with pytest.raises(TermBehindLogError, match="member 1 won term 3, but its log holds") as e:
        core.step(2, VoteResponse(term=3, voted=True), now=5.0)
    assert (e.value.term, e.value.log_term) == (3, 4)
    assert core.role is not Role.LEADER and core.log.last_index == 1
