"""A new commit index rides on the next append; sent alone only after commit_notify_delay.

Under a closed loop (a client waits for each write), an append per write carries the entry and
the previous write's commit: one round per write, not two (Raft does not say when followers
must learn the commit index; etcd-io/raft sends it with the next message too).
"""

from __future__ import annotations

import attrs

from copycat_trio.core.raft import RaftConfig
from copycat_trio.protocol.messages import AppendRequest, Envelope

from .harness import CONFIG, Cluster


def appends_from(cluster: Cluster, leader: int) -> list[AppendRequest]:
    return [
        e.message
        for e in cluster.queue
        if e.source == leader and isinstance(e.message, AppendRequest)
    ]


def committed_write(cluster: Cluster) -> list[AppendRequest]:
    """Propose on leader 1, deliver the appends and their answers: the entry commits. Returns
    the leader's other appends meanwhile (held back, not delivered)."""
    cluster.propose(1, ["x"])
    cluster.process(1)
    entry_appends = appends_from(cluster, 1)
    assert [len(a.entries) for a in entry_appends] == [1, 1]
    held: list[AppendRequest] = []

    def keep(envelope: Envelope) -> bool:
        if envelope.message in entry_appends or envelope.target == 1:
            return True
        if isinstance(envelope.message, AppendRequest):
            held.append(envelope.message)
        return False

    cluster.deliver(keep=keep)
    assert cluster.core(1).commit_index == cluster.core(1).log.last_index
    return held


def test_the_commit_index_waits_for_the_next_append() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.advance(0.2)
    assert committed_write(cluster) == []  # no round only to say "committed"
    commit = cluster.core(1).commit_index
    assert cluster.core(2).commit_index < commit
    cluster.propose(1, ["y"])
    cluster.process(1)
    assert {a.commit_index for a in appends_from(cluster, 1)} == {commit}  # the next one says it


def test_without_a_next_append_it_is_sent_alone_after_the_delay() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.advance(0.2)
    committed_write(cluster)
    leader = cluster.core(1)
    deadline = leader.next_deadline()
    assert deadline <= cluster.now + CONFIG.commit_notify_delay
    cluster.now = deadline
    leader.tick(cluster.now)
    cluster.process(1)
    alone = appends_from(cluster, 1)
    assert [(len(a.entries), a.commit_index) for a in alone] == [(0, leader.commit_index)] * 2
    cluster.deliver()
    assert cluster.core(2).commit_index == cluster.core(3).commit_index == leader.commit_index


def test_a_delay_of_zero_sends_it_at_once() -> None:
    cluster = Cluster(3, config=attrs.evolve(CONFIG, commit_notify_delay=0.0))
    cluster.elect(1)
    cluster.advance(0.2)
    held = committed_write(cluster)
    commit = cluster.core(1).commit_index
    assert sum(1 for a in held if not a.entries and a.commit_index == commit) == 2  # at once


def test_the_delay_must_be_shorter_than_a_heartbeat() -> None:
    import pytest

    with pytest.raises(ValueError, match="commit_notify_delay"):
        RaftConfig(heartbeat_interval=0.1, election_timeout=1.0, commit_notify_delay=0.1)


def test_once_the_next_append_carried_it_no_timer_is_left() -> None:
    """An idle leader must not wake up for a commit index every peer was already sent."""
    cluster = Cluster(3)
    cluster.elect(1)
    leader = cluster.core(1)
    while leader.next_deadline() - cluster.now < 0.02:  # just after a heartbeat
        cluster.advance(0.01, step=0.01)
    committed_write(cluster)
    assert leader.next_deadline() <= cluster.now + CONFIG.commit_notify_delay
    cluster.propose(1, ["y"])
    cluster.process(1)
    assert leader.next_deadline() > cluster.now + CONFIG.commit_notify_delay  # the heartbeat's
