"""Replication: log matching, conflict truncation, commit rules (Raft 5.3, 5.4.2, Figure 8)."""

from __future__ import annotations

import random

import attrs
import pytest

from copycat_trio.core.raft import (
    CommittedEntryConflictError,
    HardState,
    NotLeaderError,
    RaftConfig,
    RaftCore,
    Role,
)
from copycat_trio.protocol.messages import (
    AppendRequest,
    AppendResponse,
    CommandEntry,
    Envelope,
    NoOpEntry,
)

from .harness import CONFIG, Cluster, members


def cmd(term: int, index: int, value: object = None) -> CommandEntry:
    return CommandEntry(term=term, index=index, operation=value)


def follower(entries=(), term: int = 1) -> RaftCore:
    return RaftCore(
        2,
        config=CONFIG,
        members=members(3),
        hard_state=HardState(term, None),
        entries=entries,
        rng=random.Random(0),
        now=0.0,
    )


def append(core: RaftCore, **fields) -> AppendResponse:
    request = AppendRequest(**{"term": 1, "leader": 1, "commit_index": 0, **fields})
    core.step(1, request, now=1.0)
    (reply,) = [e.message for e in core.ready().messages]
    assert isinstance(reply, AppendResponse)
    return reply


def test_append_rejected_when_prev_entry_missing() -> None:
    core = follower([cmd(1, 1)])
    reply = append(core, prev_log_index=3, prev_log_term=1, entries=(cmd(1, 4),))
    assert not reply.succeeded and reply.log_index == 2 and reply.rejected_index == 3


def test_append_rejected_when_prev_term_differs_hints_start_of_that_term() -> None:
    core = follower([cmd(1, 1), cmd(2, 2), cmd(2, 3), cmd(2, 4)], term=3)
    reply = append(core, term=3, prev_log_index=4, prev_log_term=3, entries=())
    assert not reply.succeeded and reply.log_index == 2


def test_conflicting_suffix_is_truncated_and_replaced() -> None:
    core = follower([cmd(1, 1, "a"), cmd(1, 2, "stale"), cmd(1, 3, "stale")], term=2)
    reply = append(core, term=2, prev_log_index=1, prev_log_term=1, entries=(cmd(2, 2, "new"),))
    assert reply.succeeded and reply.log_index == 2
    assert core.log.last_index == 2
    assert core.log.entry(2).operation == "new"


@pytest.mark.parametrize("where", ["in the entries", "at the previous entry"])
def test_a_leader_contradicting_a_committed_entry_stops_the_member(where: str) -> None:
    """Only lost acknowledged entries let a leader lack a committed one (a disk that lied
    about fsync): the member stops with a typed error naming the entry and the leader, and
    neither overwrites the entry nor answers as if the logs matched."""
    core = follower([cmd(1, 1, "a"), cmd(1, 2, "b")])
    assert append(core, prev_log_index=2, prev_log_term=1, commit_index=2).succeeded
    assert core.commit_index == 2
    if where == "in the entries":
        fields = {"prev_log_index": 1, "prev_log_term": 1, "entries": (cmd(2, 2, "other"),)}
    else:
        fields = {"prev_log_index": 2, "prev_log_term": 2, "entries": (cmd(2, 3, "c"),)}
    request = AppendRequest(term=2, leader=3, commit_index=3, **fields)
    with pytest.raises(
        CommittedEntryConflictError, match="leader 3 conflicts with committed entry 2"
    ) as raised:
        core.step(3, request, now=2.0)
    assert (raised.value.leader, raised.value.index) == (3, 2)
    assert core.log.entry(2).operation == "b" and core.log.last_index == 2
    assert core.commit_index == 2


def test_duplicate_append_is_idempotent_and_keeps_longer_log() -> None:
    core = follower([cmd(1, 1), cmd(1, 2), cmd(1, 3)])
    reply = append(core, prev_log_index=0, prev_log_term=0, entries=(cmd(1, 1), cmd(1, 2)))
    assert reply.succeeded and reply.log_index == 2
    assert core.log.last_index == 3  # a stale, shorter append must not cut matching entries


def test_commit_index_limited_to_what_the_append_proved() -> None:
    core = follower([cmd(1, 1), cmd(9, 2)], term=1)  # entry 2 may be stale
    append(core, prev_log_index=1, prev_log_term=1, entries=(), commit_index=5)
    assert core.commit_index == 1


def test_writes_apply_in_the_same_order_everywhere() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, range(50))
    cluster.advance(1.0)
    sequences = {
        i: [e.operation for e in applied if isinstance(e, CommandEntry)]
        for i, applied in cluster.applied.items()
    }
    assert sequences[1] == list(range(50))
    assert sequences[2] == sequences[1] == sequences[3]


def test_isolated_minority_never_commits() -> None:
    cluster = Cluster(5)
    cluster.elect(1)
    cluster.advance(0.5)
    commit_before = cluster.core(1).commit_index
    for a in (1, 2):
        for b in (3, 4, 5):
            cluster.cut.add(frozenset((a, b)))
    cluster.propose(1, ["lost"])
    cluster.advance(0.5)
    assert cluster.core(1).commit_index == commit_before
    assert all(
        e.operation != "lost"
        for e in cluster.applied[1] + cluster.applied[2]
        if isinstance(e, CommandEntry)
    )
    cluster.advance(5.0)
    # The majority moved on; once healed, the minority's entry is overwritten, never applied.
    cluster.heal()
    cluster.advance(5.0)
    for applied in cluster.applied.values():
        assert all(getattr(e, "operation", None) != "lost" for e in applied)


def test_leader_does_not_commit_old_term_entry_by_counting_replicas() -> None:
    # Reference: Figure 8. Leader 1 in term 4 holds an entry of term 2 that now sits on a
    # majority; it must not commit it until an entry of term 4 is on a majority too.
    config = attrs.evolve(CONFIG, max_append_entries=1)
    cores = {}
    logs = {
        1: [cmd(1, 1), cmd(2, 2)],
        2: [cmd(1, 1), cmd(2, 2)],
        3: [cmd(1, 1)],
        4: [cmd(1, 1)],
        5: [cmd(1, 1), cmd(3, 2)],
    }
    for i, entries in logs.items():
        cores[i] = RaftCore(
            i,
            config=config,
            members=members(5),
            hard_state=HardState(3, None),
            entries=entries,
            rng=random.Random(i),
            now=-config.election_timeout,  # up long enough to grant votes at time 0
        )
    queue: list[Envelope] = []

    def pump(allowed) -> None:
        for core in cores.values():
            ready = core.ready()
            core.persisted(core.log.last_index)
            queue.extend(ready.messages)
        while queue:
            e = queue.pop(0)
            if allowed(e):
                cores[e.target].step(e.source, e.message, 0.0)
                ready = cores[e.target].ready()
                cores[e.target].persisted(cores[e.target].log.last_index)
                queue.extend(ready.messages)

    cores[1].campaign(0.0)

    # 1 wins with 2, 3, 4 (5's term-3 entry beats 1's log, so 5 would refuse).
    def hold_back_noop(e: Envelope) -> bool:
        # Let the term-2 entry spread, but not the no-op of term 4 (index 3).
        m = e.message
        carries_noop = isinstance(m, AppendRequest) and any(x.index == 3 for x in m.entries)
        return e.target in (1, 2, 3, 4) and not (
            carries_noop and cores[e.target].log.last_index >= 2
        )

    pump(hold_back_noop)
    leader = cores[1]
    assert leader.role is Role.LEADER and leader.term == 4
    assert cores[3].log.term_at(2) == 2  # the term-2 entry is now on 1, 2 and 3: a majority
    assert leader.commit_index == 0
    # Once the leader's own no-op (term 4) reaches a majority, everything before it commits:
    # the held-back appends count as lost and are resent after heartbeats.
    for now in (0.2, 0.4, 0.6):
        leader.tick(now)
        pump(lambda e: e.target in (1, 2, 3, 4))
    assert leader.commit_index == 3


def test_lost_appends_are_resent_after_a_heartbeat() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, ["x", "y"])
    cluster.process_all()
    cluster.queue.clear()  # every append lost
    cluster.advance(1.0)
    assert cluster.core(1).commit_index == cluster.core(1).log.last_index
    assert cluster.core(2).log.last_index == cluster.core(1).log.last_index


def test_duplicated_and_reordered_messages_keep_logs_identical() -> None:
    rng = random.Random(7)
    cluster = Cluster(3)
    cluster.elect(1)
    for round_ in range(30):
        cluster.propose(1, [round_])
        cluster.process_all()
        extra = (
            [rng.choice(cluster.queue) for _ in range(len(cluster.queue) // 2)]
            if cluster.queue
            else []
        )
        cluster.queue.extend(extra)
        rng.shuffle(cluster.queue)
        cluster.deliver()
    cluster.advance(1.0)
    logs = [
        [(e.index, e.term) for e in c.log.slice(1, c.log.last_index + 1)]
        for c in cluster.cores.values()
    ]
    assert logs[0] == logs[1] == logs[2]
    ops = [e.operation for e in cluster.applied[2] if isinstance(e, CommandEntry)]
    assert ops == list(range(30))


def test_follower_rejects_proposals() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    with pytest.raises(NotLeaderError) as info:
        cluster.core(2).propose("x")
    assert info.value.leader == 1


def test_batches_respect_entry_limit() -> None:
    config = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, max_append_entries=4)
    cluster = Cluster(3, config=config)
    cluster.elect(1)
    cluster.propose(1, range(20))
    cluster.process(1)
    sizes = [len(e.message.entries) for e in cluster.queue if isinstance(e.message, AppendRequest)]
    assert sizes and max(sizes) <= 4
    cluster.advance(1.0)
    assert cluster.core(3).commit_index == cluster.core(1).log.last_index


def test_noop_appended_when_leader_takes_office() -> None:
    cluster = Cluster(3)
    cluster.elect(2)
    last = cluster.core(2).log.entry(cluster.core(2).log.last_index)
    assert isinstance(last, NoOpEntry) and last.term == cluster.core(2).term


def test_read_index_confirmed_by_quorum_round_and_failed_on_step_down() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.advance(0.3)
    cluster.core(1).read_index("r1")
    cluster.process(1)
    assert cluster.reads[1] == []  # needs a heartbeat round with a quorum first
    cluster.deliver()
    assert [ctx for ctx, _ in cluster.reads[1]] == ["r1"]
    cluster.isolate(1)
    cluster.core(1).read_index("r2")
    cluster.advance(3.0)
    assert "r2" in cluster.failed_reads[1]
    assert [ctx for ctx, _ in cluster.reads[1]] == ["r1"]


def test_lease_follows_quorum_heartbeats_and_lapses_without_them() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    leader = cluster.core(1)
    cluster.advance(0.3)
    assert leader.lease_valid(cluster.now)
    cluster.isolate(1)
    lease_end = cluster.now + CONFIG.election_timeout * CONFIG.lease_ratio
    cluster.advance(0.2)
    assert leader.lease_valid(cluster.now)  # still inside the lease from the last round
    while cluster.now < lease_end:
        cluster.advance(0.05)
    assert not leader.lease_valid(cluster.now)
    # The others may only elect a new leader after the lease has run out.
    assert all(cluster.core(i).role is not Role.LEADER for i in (2, 3))


def test_no_lease_before_own_term_entry_commits() -> None:
    cluster = Cluster(3)
    cluster.core(1).campaign(cluster.now)
    # Deliver only votes, not appends: the leader's no-op is not committed yet.
    cluster.deliver(keep=lambda e: not isinstance(e.message, AppendRequest))
    leader = cluster.core(1)
    assert leader.role is Role.LEADER
    assert not leader.lease_valid(cluster.now)


def test_follower_behind_a_compacted_log_catches_up_by_snapshot() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, range(40))
    cluster.advance(0.5)
    leader = cluster.core(1)
    applied = leader.applied_handed_index
    leader.compact(applied - 5)
    cluster.core(2).compact(cluster.core(2).applied_handed_index)
    assert leader.log.first_index > cluster.core(3).log.last_index + 1
    cluster.heal()
    cluster.propose(1, ["after"])
    cluster.advance(1.0)
    follower = cluster.core(3)
    assert follower.commit_index == leader.commit_index
    ops = [e.operation for e in cluster.applied[3] if isinstance(e, CommandEntry)]
    assert ops == [*range(40), "after"]
    assert follower.log.last_index == leader.log.last_index


def test_snapshot_restore_keeps_matching_suffix_and_drops_conflicts() -> None:
    core = follower([cmd(1, 1), cmd(1, 2), cmd(1, 3), cmd(1, 4)])
    assert core.restore(2, 1, members(3), 0)
    assert core.log.first_index == 3 and core.log.last_index == 4
    other = follower([cmd(1, 1), cmd(1, 2), cmd(1, 3)])
    assert other.restore(3, 2, members(3), 0)  # term differs at 3: nothing of the log is kept
    assert other.log.last_index == 3 and other.log.first_index == 4
    assert other.commit_index == 3
    assert not other.restore(2, 1, members(3), 0)  # older than what is committed


def test_follower_that_lost_acknowledged_tail_is_replicated_again() -> None:
    # Disk damage cut a follower's last acknowledged entries (recovery treats a damaged last
    # record as torn): the leader must notice and send them again, not stall.
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, range(5))
    cluster.advance(0.5)
    follower = cluster.core(3)
    last = follower.log.last_index
    follower.log.truncate_from(last - 2)
    follower.persisted_index = follower.log.last_index
    cluster.propose(1, ["more"])
    cluster.advance(1.0)
    assert follower.log.last_index == cluster.core(1).log.last_index
    assert follower.commit_index == cluster.core(1).commit_index
