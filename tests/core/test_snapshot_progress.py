"""A peer that is being sent a snapshot (its progress in SNAPSHOT state) still hears heartbeats:
the transfer may take many election timeouts, or lose a chunk, and the peer must neither start
an election nor wait in silence."""

from __future__ import annotations

from copycat_trio.core.progress import ProgressState
from copycat_trio.core.raft import Role
from copycat_trio.protocol.messages import AppendRequest, Envelope

from .harness import CONFIG, Cluster


class HeldSnapshots(Cluster):
    """The snapshots a leader asks to send stay in flight until the test finishes them."""

    def __init__(self, n: int = 3) -> None:
        super().__init__(n)
        self.in_flight: list[tuple[int, int]] = []

    def send_snapshot(self, leader_id: int, peer: int) -> None:
        self.in_flight.append((leader_id, peer))


def behind_a_compacted_leader() -> HeldSnapshots:
    """Member 1 leads and has compacted everything member 3 (cut off meanwhile) lacks."""
    cluster = HeldSnapshots(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, range(40))
    cluster.advance(0.5)
    leader = cluster.core(1)
    leader.compact(leader.applied_handed_index)
    cluster.heal()
    cluster.advance(0.3)
    assert cluster.in_flight == [(1, 3)]
    assert leader.progress[3].state is ProgressState.SNAPSHOT
    return cluster


def test_a_peer_being_sent_a_snapshot_gets_heartbeats_and_keeps_its_leader() -> None:
    cluster = behind_a_compacted_leader()
    leader, follower = cluster.core(1), cluster.core(3)
    sent: list[Envelope] = []

    def watch(envelope: Envelope) -> bool:
        sent.append(envelope)
        return True

    cluster.advance(5 * CONFIG.election_timeout, keep=watch)  # a slow transfer
    assert follower.role is Role.FOLLOWER and follower.leader == 1
    assert follower.term == leader.term
    heartbeats = [e.message for e in sent if e.target == 3 and isinstance(e.message, AppendRequest)]
    assert len(heartbeats) >= 40  # one per heartbeat interval
    assert all(not h.entries and h.prev_log_index == leader.log.snapshot_index for h in heartbeats)
    # Refused (the follower lacks the snapshot's last entry) without disturbing the transfer.
    assert leader.progress[3].state is ProgressState.SNAPSHOT
    assert cluster.in_flight == [(1, 3)]


def test_a_heartbeat_answered_after_the_install_resumes_appends_before_the_report() -> None:
    """The follower installed the snapshot and the next heartbeat matches: appends resume at
    once; the sender's report that comes later changes nothing."""
    cluster = behind_a_compacted_leader()
    leader, follower = cluster.core(1), cluster.core(3)
    index = leader.log.snapshot_index
    term = leader.log.term_at(index)
    assert term is not None
    assert follower.restore(index, term, leader.members, leader.configuration_index)
    cluster.propose(1, ["after"])
    cluster.advance(0.3)
    assert leader.progress[3].state is ProgressState.REPLICATE
    assert follower.commit_index == leader.commit_index == leader.log.last_index
    leader.snapshot_sent(3, index, True)
    cluster.advance(0.3)
    assert leader.progress[3].match_index == leader.log.last_index
    assert follower.log.last_index == leader.log.last_index
