"""A hand-stepped cluster of pure cores: messages queue until the test delivers them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from copycat_trio.core.raft import RaftConfig, RaftCore, Ready, Role
from copycat_trio.protocol.messages import Entry, Envelope, Member

CONFIG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1)


def members(n: int) -> tuple[Member, ...]:
    return tuple(Member(i, f"127.0.0.1:{9000 + i}") for i in range(1, n + 1))


class Cluster:
    """Cores joined by a queue of envelopes; `cut` pairs drop messages both ways."""

    def __init__(self, n: int = 3, *, config: RaftConfig = CONFIG, seed: int = 0) -> None:
        # The cores start at 0 and the clock at one election timeout: a member refuses polls
        # and votes for that long after it starts, and none times out before it anyway.
        self.now = config.election_timeout
        self.config = config
        self.members = members(n)
        self.cores = {
            m.id: RaftCore(
                m.id,
                config=config,
                members=self.members,
                rng=random.Random(seed * 100 + m.id),
                now=0.0,
            )
            for m in self.members
        }
        self.queue: list[Envelope] = []
        self.cut: set[frozenset[int]] = set()
        self.applied: dict[int, list[Entry]] = {m.id: [] for m in self.members}
        self.reads: dict[int, list[tuple[object, int]]] = {m.id: [] for m in self.members}
        self.failed_reads: dict[int, list[object]] = {m.id: [] for m in self.members}
        self.leaders_by_term: dict[int, set[int]] = {}

    def core(self, member_id: int) -> RaftCore:
        return self.cores[member_id]

    def restart(self, member_id: int, *, seed: int = 1) -> RaftCore:
        """Crash a member and start it again at once from what it persisted (term, vote and
        log; this harness persists everything): a fresh core, and what was in flight to the
        dead process is lost."""
        old = self.cores[member_id]
        self.process(member_id)
        self.queue = [e for e in self.queue if e.target != member_id]
        core = self.cores[member_id] = RaftCore(
            member_id,
            config=self.config,
            members=self.members,
            hard_state=old.hard_state,
            entries=old.log.slice(old.log.first_index, old.log.last_index + 1),
            rng=random.Random(seed * 1000 + member_id),
            now=self.now,
        )
        return core

    def process(self, member_id: int) -> None:
        core = self.cores[member_id]
        while core.has_ready():
            ready: Ready = core.ready()
            core.persisted(core.log.last_index)
            self.queue.extend(ready.messages)
            self.applied[member_id].extend(ready.committed)
            self.reads[member_id].extend(ready.reads)
            self.failed_reads[member_id].extend(ready.failed_reads)
            for peer in ready.snapshots:
                self.send_snapshot(member_id, peer)
        if core.role is Role.LEADER:
            self.leaders_by_term.setdefault(core.term, set()).add(member_id)
            assert len(self.leaders_by_term[core.term]) == 1, "two leaders in one term"

    def send_snapshot(self, leader_id: int, peer: int) -> None:
        """Move the leader's snapshot (everything up to its first log index - 1) to peer at
        once, as the server's install stream would, unless the two are cut apart."""
        leader = self.cores[leader_id]
        index = leader.log.snapshot_index
        if frozenset((leader_id, peer)) in self.cut:
            leader.snapshot_sent(peer, index, False)
            return
        follower = self.cores[peer]
        if follower.accept_leader(leader.term, leader_id, self.now):
            term = leader.log.term_at(index)
            assert term is not None
            if follower.restore(index, term, leader.members, leader.configuration_index):
                self.applied[peer] = [e for e in self.applied[leader_id] if e.index <= index]
            leader.snapshot_sent(peer, index, True)

    def process_all(self) -> None:
        for member_id in self.cores:
            self.process(member_id)

    def isolate(self, member_id: int) -> None:
        for other in self.cores:
            if other != member_id:
                self.cut.add(frozenset((member_id, other)))

    def heal(self) -> None:
        self.cut.clear()

    def deliver(
        self, *, limit: int = 100_000, keep: Callable[[Envelope], bool] = lambda e: True
    ) -> int:
        """Deliver queued messages (and those they cause) until none are left."""
        delivered = 0
        self.process_all()
        while self.queue and delivered < limit:
            envelope = self.queue.pop(0)
            if frozenset((envelope.source, envelope.target)) in self.cut or not keep(envelope):
                continue
            core = self.cores.get(envelope.target)
            if core is None:
                continue
            core.step(envelope.source, envelope.message, self.now)
            self.process(envelope.target)
            delivered += 1
        return delivered

    def advance(
        self,
        seconds: float,
        *,
        step: float = 0.05,
        keep: Callable[[Envelope], bool] = lambda e: True,
    ) -> None:
        """Let time pass in small steps, ticking every core and delivering messages (those
        `keep` accepts)."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for core in self.cores.values():
                if core.next_deadline() <= self.now:
                    core.tick(self.now)
            self.deliver(keep=keep)

    def elect(self, member_id: int) -> None:
        """Make member_id campaign now and deliver until the election settles."""
        self.cores[member_id].campaign(self.now)
        self.deliver()
        assert self.cores[member_id].role is Role.LEADER, self.describe()

    def leaders(self) -> list[int]:
        return [i for i, c in self.cores.items() if c.role is Role.LEADER]

    def describe(self) -> str:
        return "; ".join(
            f"{i}:{c.role.value} t{c.term} lead={c.leader} last={c.log.last_index} "
            f"commit={c.commit_index}"
            for i, c in self.cores.items()
        )

    def propose(self, member_id: int, values: Iterable[object]) -> list[int]:
        indexes = [self.cores[member_id].propose(v)[0] for v in values]
        return indexes
