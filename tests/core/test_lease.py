"""The leader's read lease and the promise it rests on: a member that acknowledged the leader, or
may have acknowledged it before it restarted, refuses polls and votes for an election timeout."""

from __future__ import annotations

import random

import pytest

from copycat_trio.core.raft import HardState, RaftConfig, RaftCore, Role
from copycat_trio.protocol.messages import (
    PollRequest,
    PollResponse,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)

from .harness import CONFIG, Cluster, members

T = CONFIG.election_timeout


def booted_core(now: float, *, term: int = 3) -> RaftCore:
    """Member 1 of three, started (or restarted from a term-3 hard state) at `now`."""
    return RaftCore(
        1,
        config=CONFIG,
        members=members(3),
        hard_state=HardState(term, None),
        rng=random.Random(1),
        now=now,
    )


def answers(core: RaftCore) -> list[object]:
    return [e.message for e in core.ready().messages]


def newer_commit_elsewhere(cluster: Cluster, old_leader: int, term: int) -> list[int]:
    """Members other than the old leader that committed an entry of a term after `term`."""
    return [
        i
        for i, c in cluster.cores.items()
        if i != old_leader and (c.log.term_at(c.commit_index) or 0) > term
    ]


def assert_no_stale_lease(cluster: Cluster, old_leader: int) -> None:
    leader = cluster.core(old_leader)
    if leader.lease_valid(cluster.now):
        assert not newer_commit_elsewhere(cluster, old_leader, leader.term), (
            f"member {old_leader} holds a lease at {cluster.now:.2f} while a newer term has "
            f"committed: {cluster.describe()}"
        )


# --- a member that starts honours the lease it may have granted before ------------------------


def test_started_member_refuses_polls_and_votes_for_one_election_timeout() -> None:
    core = booted_core(now=10.0)
    core.step(2, PollRequest(term=4, candidate=2, log_index=0, log_term=0), now=10.0 + 0.9 * T)
    core.step(2, VoteRequest(term=4, candidate=2, log_index=0, log_term=0), now=10.0 + 0.9 * T)
    assert answers(core) == [
        PollResponse(term=3, accepted=False),
        VoteResponse(term=3, voted=False),
    ]
    assert core.hard_state == HardState(3, None)  # refused without adopting the term
    core.step(2, PollRequest(term=4, candidate=2, log_index=0, log_term=0), now=10.0 + T)
    core.step(2, VoteRequest(term=4, candidate=2, log_index=0, log_term=0), now=10.0 + T)
    assert answers(core) == [
        PollResponse(term=4, accepted=True),
        VoteResponse(term=4, voted=True),
    ]


def test_started_member_grants_a_leadership_transfer_vote_at_once() -> None:
    # The leader that sends TimeoutNow voids its own lease, so the transfer vote may pass.
    core = booted_core(now=10.0)
    request = VoteRequest(term=4, candidate=2, log_index=0, log_term=0, transfer=True)
    core.step(2, request, now=10.1)
    assert answers(core) == [VoteResponse(term=4, voted=True)]


def test_started_member_that_campaigns_itself_grants_polls() -> None:
    # A member campaigning has given up on any leader (the trap of etcd PR 8334); a transfer
    # makes a member campaign inside its start window.
    core = booted_core(now=10.0)
    core.campaign(10.1)
    assert core.role is Role.PRE_CANDIDATE
    core.ready()
    core.step(2, PollRequest(term=4, candidate=2, log_index=0, log_term=0), now=10.2)
    assert answers(core) == [PollResponse(term=4, accepted=True)]


def test_no_stale_lease_after_a_voter_restarts_right_after_acknowledging() -> None:
    # Issue 10, bug 2. L = 1, A = 2, B = 3. L is cut off from B; A acknowledges L's latest
    # heartbeat round, crashes and restarts at once; L is then cut off from A as well, so the
    # lease from that round is all it has. B's election timer fires at that moment: it must not
    # win with A's vote while L, still inside its lease, would serve the old k=1.
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, ["k=1"])
    cluster.advance(0.5)
    cluster.cut.add(frozenset((1, 3)))
    cluster.advance(2.5)  # B times out and polls, but A, hearing from L, refuses
    leader = cluster.core(1)
    assert leader.role is Role.LEADER and leader.lease_valid(cluster.now)
    term = leader.term
    cluster.restart(2)
    cluster.cut.add(frozenset((1, 2)))
    cluster.core(3).campaign(cluster.now)
    cluster.deliver()
    if cluster.core(3).role is Role.LEADER:
        cluster.propose(3, ["k=2"])
        cluster.deliver()
    assert_no_stale_lease(cluster, 1)
    # And B (or A) does take over, once the lease and A's start window are over.
    deadline = cluster.now + 3 * T
    while not newer_commit_elsewhere(cluster, 1, term):
        assert cluster.now < deadline, cluster.describe()
        cluster.advance(0.05)
        assert_no_stale_lease(cluster, 1)


def test_no_stale_lease_when_a_voter_restarts_at_any_moment() -> None:
    # The same race with the timing left to the cores: for many seeds and restart moments, the
    # old leader never holds a lease while a newer term has committed.
    for seed in range(20):
        cluster = Cluster(3, seed=seed)
        cluster.elect(1)
        cluster.propose(1, ["k=1"])
        cluster.advance(0.5)
        term = cluster.core(1).term
        cluster.cut.add(frozenset((1, 3)))
        rng = random.Random(seed)
        cluster.advance(2.0 + rng.random())
        cluster.restart(2, seed=seed)
        cluster.cut.add(frozenset((1, 2)))
        for _ in range(100):
            cluster.advance(0.05)
            assert_no_stale_lease(cluster, 1)
        assert newer_commit_elsewhere(cluster, 1, term), cluster.describe()


# --- a fresh cluster still elects at once -------------------------------------------------------


def first_leader_times(seeds: range, n: int = 3) -> list[float]:
    """Time to the first leader of a cluster whose members all start at time 0."""
    times = []
    for seed in seeds:
        cluster = Cluster(n, seed=seed)
        cluster.now = 0.0
        while not cluster.leaders():
            assert cluster.now < 10 * T, cluster.describe()
            cluster.advance(0.01, step=0.01)
        times.append(cluster.now)
    return times


def test_fresh_cluster_elects_within_the_first_election_timeouts() -> None:
    # The members' own timeouts are drawn from [T, 2T), so the first poll arrives when every
    # start window (T) is over: no election is lost to it.
    times = first_leader_times(range(50))
    assert max(times) < 2 * T + 0.05
    assert sum(times) / len(times) < 1.5 * T


# --- the lease's arithmetic ----------------------------------------------------------------


def settled_leader() -> tuple[Cluster, RaftCore]:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.advance(0.3)
    return cluster, cluster.core(1)


def test_lease_runs_from_when_the_round_was_sent_not_when_it_was_answered() -> None:
    cluster, leader = settled_leader()
    cluster.now = leader.next_deadline()
    leader.tick(cluster.now)  # a heartbeat round goes out now...
    cluster.process(1)
    sent = cluster.now
    cluster.now += 0.4  # ...and its answers come back 0.4 s later
    cluster.deliver()
    end = sent + T * CONFIG.lease_ratio
    assert leader.lease_valid(end - 1e-6)
    assert not leader.lease_valid(end)  # not end + 0.4, as counting from the answers would


def test_a_reads_round_extends_the_lease_from_the_heartbeat_before_it() -> None:
    # Appends sent after a read carry the read's round; a majority answering it has also seen
    # the heartbeat round before it, so the lease runs from that round's send time.
    cluster, leader = settled_leader()
    cluster.now = leader.next_deadline()
    leader.tick(cluster.now)
    cluster.process(1)
    sent = cluster.now
    cluster.queue.clear()  # that round's heartbeats are lost
    leader.read_index("r")
    cluster.deliver()  # the read's round is answered
    assert [ctx for ctx, _ in cluster.reads[1]] == ["r"]
    end = sent + T * CONFIG.lease_ratio
    assert leader.lease_valid(end - 1e-6)
    assert not leader.lease_valid(end)


def test_lease_ends_a_drift_margin_before_any_acknowledging_voter_would_grant() -> None:
    cluster, leader = settled_leader()
    cluster.isolate(1)
    while leader.lease_valid(cluster.now):
        cluster.advance(0.01, step=0.01)
    lapsed = cluster.now  # within 0.01 s after the true end of the lease
    margin = T * (1 - CONFIG.lease_ratio)
    assert margin >= 0.25 * T
    for follower in (cluster.core(2), cluster.core(3)):
        assert follower.role is Role.FOLLOWER
        poll = PollRequest(term=follower.term + 1, candidate=3, log_index=99, log_term=99)
        follower.step(3, poll, lapsed + margin - 0.02)
        assert answers(follower) == [PollResponse(term=follower.term, accepted=False)]


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.2])
def test_lease_must_be_shorter_than_the_election_timeout(ratio: float) -> None:
    with pytest.raises(ValueError, match="lease_ratio"):
        RaftConfig(lease_ratio=ratio)


# --- leadership transfer voids the lease -------------------------------------------------------


def test_transfer_voids_the_lease_for_the_rest_of_the_term() -> None:
    cluster, leader = settled_leader()
    assert leader.lease_valid(cluster.now)
    term = leader.term
    leader.transfer_leadership(3, cluster.now)
    assert not leader.lease_valid(cluster.now)  # TimeoutNow is out: 3 may win at once
    # Even if the TimeoutNow is lost and the transfer is abandoned, the lease stays void in
    # this term (a late TimeoutNow could still arrive), while reads by quorum round go on.
    cluster.advance(T + 0.2, keep=lambda e: not isinstance(e.message, TimeoutNowRequest))
    assert leader.role is Role.LEADER and leader.term == term
    assert leader.transferring_to is None
    assert not leader.lease_valid(cluster.now)
    leader.read_index("r")
    cluster.deliver()
    assert [ctx for ctx, _ in cluster.reads[1]] == ["r"]


def test_transfer_target_wins_inside_the_old_leaders_lease_window_but_lease_is_void() -> None:
    cluster, leader = settled_leader()
    term = leader.term
    leader.transfer_leadership(3, cluster.now)
    cluster.deliver()
    assert cluster.core(3).role is Role.LEADER
    cluster.propose(3, ["k=2"])
    cluster.deliver()
    assert newer_commit_elsewhere(cluster, 1, term)
    assert not leader.lease_valid(cluster.now)
