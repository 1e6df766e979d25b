"""Named scenarios: short, deterministic runs that each end in a check of one rule.

Most step pure `RaftCore`s by hand through `Cores` (messages queue until delivered; a member's
disk can be held so that what it wrote is not yet durable), as tests/core does; one runs
servers on the simulated cluster. Each raises AssertionError when its rule is broken and takes
milliseconds (the server one, a second). They are what `python -m
copycat_trio.testing.mutation` runs on a mutant before any simulation seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ...core.raft import ConfigurationChangeError, HardState, RaftConfig, RaftCore, Role
from ...core.sessions import CachedResult, CommandDecision, SessionTable
from ...protocol.messages import AppendRequest, CommandEntry, Entry, Envelope, Member
from ..mutation import Scenario

CONFIG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1)


def members(n: int) -> tuple[Member, ...]:
    return tuple(Member(i, f"10.0.0.{i}:5000") for i in range(1, n + 1))


class Cores:
    """Pure cores joined by a queue of envelopes. `cut` holds pairs that cannot talk;
    `held_disks` members whose writes are not durable yet (`persisted` is not called)."""

    def __init__(
        self,
        n: int = 3,
        *,
        config: RaftConfig = CONFIG,
        logs: Mapping[int, Sequence[Entry]] | None = None,
        term: int = 0,
        seed: int = 0,
    ) -> None:
        self.now = 0.0
        self.members = members(n)
        self.cores = {
            m.id: RaftCore(
                m.id,
                config=config,
                members=self.members,
                hard_state=HardState(term, None),
                entries=(logs or {}).get(m.id, ()),
                rng=random.Random(seed * 100 + m.id),
                now=-3.0,  # started a while ago: past a restarted member's wait
            )
            for m in self.members
        }
        self.queue: list[Envelope] = []
        self.cut: set[frozenset[int]] = set()
        self.held_disks: set[int] = set()
        self.reads: dict[int, list[tuple[object, int]]] = {m.id: [] for m in self.members}

    def __getitem__(self, member_id: int) -> RaftCore:
        return self.cores[member_id]

    def flush(self, member_id: int) -> None:
        """Take the member's Ready: persist (unless its disk is held), queue its messages."""
        core = self.cores[member_id]
        while core.has_ready():
            ready = core.ready()
            if member_id not in self.held_disks:
                core.persisted(core.log.last_index)
            self.queue.extend(ready.messages)
            self.reads[member_id].extend(ready.reads)

    def deliver(self, keep: Callable[[Envelope], bool] = lambda e: True) -> None:
        """Deliver queued messages, and those they cause, until none are left."""
        for member_id in self.cores:
            self.flush(member_id)
        for _ in range(100_000):
            if not self.queue:
                return
            envelope = self.queue.pop(0)
            if frozenset((envelope.source, envelope.target)) in self.cut or not keep(envelope):
                continue
            if envelope.target not in self.cores:
                continue  # a member the cores do not simulate
            self.cores[envelope.target].step(envelope.source, envelope.message, self.now)
            self.flush(envelope.target)
        raise AssertionError("messages never stop")

    def advance(
        self, seconds: float, *, step: float = 0.01, each: Callable[[], None] = lambda: None
    ) -> None:
        """Let time pass in steps: tick every core, deliver, then call `each`."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for core in self.cores.values():
                if core.next_deadline() <= self.now:
                    core.tick(self.now)
            self.deliver()
            each()

    def elect(self, member_id: int) -> None:
        self.cores[member_id].campaign(self.now)
        self.deliver()
        assert self.cores[member_id].role is Role.LEADER, self.describe()

    def isolate(self, member_id: int) -> None:
        self.cut |= {frozenset((member_id, o)) for o in self.cores if o != member_id}

    def leaders(self) -> list[int]:
        return [i for i, c in self.cores.items() if c.role is Role.LEADER]

    def describe(self) -> str:
        return "; ".join(
            f"{i}: {c.role.value} term {c.term} last {c.log.last_index} commit {c.commit_index}"
            for i, c in self.cores.items()
        )


def cmd(term: int, index: int, value: object = None) -> CommandEntry:
    return CommandEntry(term=term, index=index, operation=value)


def committed_value(core: RaftCore, value: object) -> int:
    """The index where `value` sits in core's log, asserting it is committed there."""
    for index in range(core.log.first_index, core.log.last_index + 1):
        entry = core.log.entry(index)
        if isinstance(entry, CommandEntry) and entry.operation == value:
            assert index <= core.commit_index, f"{value!r} at {index} is not committed"
            return index
    raise AssertionError(f"{value!r} is not in member {core.id}'s log")


# --- leases --------------------------------------------------------------------------------


def lease_ends_when_leadership_is_handed_over() -> None:
    """Leader 1 hands over to 2 (TimeoutNow) and is then cut off; once 2 commits a write that
    1 never saw, 1 must not answer a read from its lease."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.25)  # heartbeat rounds answered: 1 holds a lease
    assert c[1].lease_valid(c.now), "no lease after a heartbeat round (setup)"
    c[1].transfer_leadership(2, c.now)
    c.flush(1)
    c.isolate(1)  # TimeoutNow is on its way; nothing else reaches 1 or leaves it
    c.cut.discard(frozenset((1, 2)))
    c.deliver(keep=lambda e: e.source == 1 or (e.source != 1 and e.target != 1))
    c.isolate(1)
    c.deliver()
    assert c[2].role is Role.LEADER, c.describe()
    c[2].propose("written after the handover")
    c.deliver()
    committed_value(c[2], "written after the handover")
    assert not c[1].lease_valid(c.now), "the old leader still holds a lease (stale reads)"


def lease_expires_before_another_leader_is_elected() -> None:
    """Leader 1 is cut off right after a heartbeat round; whenever another leader has
    committed in its term, 1's lease must have expired (check-quorum off: 1 stays leader)."""
    for seed in range(3):
        c = Cores(3, config=attrs.evolve(CONFIG, check_quorum=False), seed=seed)
        c.elect(1)
        c.advance(0.3)
        assert c[1].lease_valid(c.now), "no lease after heartbeat rounds (setup)"
        c.isolate(1)

        def check(c: Cores = c, seed: int = seed) -> None:
            for i in c.leaders():
                if i != 1 and c[i].commit_index >= c[i].log.last_index:
                    assert not c[1].lease_valid(c.now), (
                        f"seed {seed}: member {i} leads term {c[i].term} while cut-off leader "
                        f"1 still holds a lease at {c.now:.2f}"
                    )

        c.advance(4.0, each=check)
        assert any(i != 1 for i in c.leaders()), f"seed {seed}: no new leader: {c.describe()}"


def restarted_member_waits_before_voting() -> None:
    """Five members; 4 and 5 have long been cut off from leader 1, whose lease 2 and 3
    confirm. 3 restarts (knowing no leader) on 4's side of a cut: it must not help 4 win an
    election inside 1's lease, as it may have confirmed that lease just before its crash."""
    c = Cores(5)
    c.elect(1)
    c.advance(0.3)
    c.cut |= {frozenset((1, 4)), frozenset((1, 5))}
    c.advance(1.5)
    assert c[1].role is Role.LEADER and c[1].lease_valid(c.now), "no lease (setup)"
    old = c[3]
    c.cores[3] = RaftCore(
        3,
        config=CONFIG,
        members=c.members,
        hard_state=old.hard_state,
        entries=old.log.slice(1, old.log.last_index + 1),
        rng=random.Random(33),
        now=c.now,
    )
    c.cut.add(frozenset((1, 3)))
    c[4].campaign(c.now)

    def check() -> None:
        for i in c.leaders():
            if i != 1 and c[i].commit_index >= c[i].log.last_index:
                assert not c[1].lease_valid(c.now), (
                    f"member {i} leads term {c[i].term} while leader 1 still holds a lease: "
                    + c.describe()
                )

    c.deliver()
    check()
    c.advance(3.0, each=check)


# --- durability --------------------------------------------------------------------------


def leader_counts_itself_only_once_durable() -> None:
    """Leader 1's disk is slow; 2 acknowledges a new entry, 3 is cut off. One durable copy of
    three is no majority: the entry must not commit until 1's own write is done."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.2)
    c.isolate(3)
    c.cut.discard(frozenset((1, 2)))
    c.held_disks.add(1)
    (index, _) = c[1].propose("x")
    c.deliver()
    assert c[1].progress[2].match_index >= index, "2 did not acknowledge (setup)"
    assert c[1].commit_index < index, "committed with only one durable copy of three"
    c.held_disks.discard(1)
    c[1].persisted(c[1].log.last_index)
    c.deliver()
    assert c[1].commit_index >= index, "not committed once durable on a majority"


def acknowledged_write_is_on_a_majority_of_disks() -> None:
    """Three servers on simulated disks; both followers' disks hang for two seconds. A write
    that is acknowledged meanwhile must already be durable on two of the three disks."""
    import trio
    import trio.testing

    from ...recipes.kv import KeyValueStore, Put
    from ..simdisk import SimDisk
    from ..simulation import open_simulation

    async def run() -> None:
        async with open_simulation(
            KeyValueStore, seed=1, faults="none", servers=3, disk="sim"
        ) as sim:
            await trio.sleep(2)
            (leader,) = sim.current_leaders()
            async with sim.client() as client:
                for i in (1, 2, 3):
                    if i != leader:
                        sim.disks[i].stall(2.0)
                await client.submit(Put("k", "v"))
                durable = [
                    i
                    for i, disk in sim.disks.items()
                    if isinstance(disk, SimDisk)
                    and any(getattr(e, "operation", None) == Put("k", "v") for e in disk.entries)
                ]
                assert len(durable) >= 2, (
                    f"write acknowledged while durable only on {durable} (leader {leader})"
                )

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


# --- commitment and log matching -----------------------------------------------------------


def old_term_entry_commits_only_through_the_leaders_own() -> None:
    """Raft Figure 8: leader 1 of term 4 spreads a term-2 entry to a majority; before its own
    term's no-op is on a majority too, that entry must not count as committed (member 5 could
    still be elected and overwrite it)."""
    logs = {
        1: [cmd(1, 1), cmd(2, 2)],
        2: [cmd(1, 1), cmd(2, 2)],
        3: [cmd(1, 1)],
        4: [cmd(1, 1)],
        5: [cmd(1, 1), cmd(3, 2)],
    }
    c = Cores(5, config=attrs.evolve(CONFIG, max_append_entries=1), logs=logs, term=3)
    c.cut |= {frozenset((5, i)) for i in (1, 2, 3, 4)}

    def hold_back_noop(e: Envelope) -> bool:
        # The term-2 entry spreads; the no-op (index 3) reaches nobody that could take it.
        m = e.message
        noop = isinstance(m, AppendRequest) and any(x.index == 3 for x in m.entries)
        return not (noop and c[e.target].log.last_index >= 2)

    c[1].campaign(0.0)
    c.deliver(keep=hold_back_noop)
    assert c[1].role is Role.LEADER and c[1].term == 4, c.describe()
    assert c[3].log.term_at(2) == 2, "the term-2 entry did not spread (setup)"
    assert c[1].commit_index < 2, "committed an entry of term 2 by counting replicas"
    c.advance(0.6)
    assert c[1].commit_index == 3, "did not commit through the no-op: " + c.describe()


def stale_leaders_append_is_refused() -> None:
    """Leader 1 (term 1) is cut off; 2 is elected for term 2 and commits with 3. When 1's
    append of term 1 reaches 3, 3 must refuse it and keep what term 2 committed."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.2)
    c.isolate(1)
    c.now += 2.0  # 2 and 3 no longer hear from 1
    c.elect(2)
    c[2].propose("term 2")
    c.deliver()
    c.advance(0.2)
    index = committed_value(c[3], "term 2")
    c[1].propose("stale")
    c.flush(1)
    stale = [e for e in c.queue if e.source == 1 and e.target == 3]
    c.queue = [e for e in c.queue if e.source != 1]
    for envelope in stale:
        c[3].step(1, envelope.message, c.now)
        c.flush(3)
    assert c[3].leader == 2 and c[3].term == 2, f"3 follows the stale leader: {c.describe()}"
    assert committed_value(c[3], "term 2") == index


def conflicting_suffix_is_replaced() -> None:
    """Leader 1 writes two entries nobody else gets, is cut off, and 2 leads term 2 with 3;
    once 1 is back, its log must end up the same as the others' (its suffix replaced)."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.2)
    c.isolate(1)
    c[1].propose("lost 1")
    c[1].propose("lost 2")
    c.deliver()
    c.now += 2.0
    c.elect(2)
    c[2].propose("kept")
    c.deliver()
    c.cut.clear()
    c.advance(1.0)
    entries = {i: c[i].log.slice(1, c[i].log.last_index + 1) for i in (1, 2, 3)}
    assert entries[1] == entries[2] == entries[3], c.describe()
    committed_value(c[1], "kept")


# --- elections ------------------------------------------------------------------------------


def stale_candidate_is_refused_votes() -> None:
    """Pre-vote off, so only the vote's own log check stands in the way: 1 commits "x" with 2
    while 3 is cut off; then 1 is gone and 3 campaigns. 2 must refuse: 3 lacks a committed
    entry (leader completeness, Raft 5.4.1)."""
    c = Cores(3, config=attrs.evolve(CONFIG, pre_vote=False))
    c.elect(1)
    c.isolate(3)
    c.cut.discard(frozenset((1, 2)))
    c[1].propose("x")
    c.deliver()
    c.advance(0.2)
    committed_value(c[1], "x")
    c.isolate(1)
    c.cut.discard(frozenset((2, 3)))
    c.now += 2.0  # 2 has not heard from its leader for an election timeout
    c[3].campaign(c.now)
    c.deliver()
    assert c[3].role is not Role.LEADER, "elected without a committed entry: " + c.describe()


def only_voters_votes_count() -> None:
    """Member 1's configuration is {1, 2, 3}; a granted vote from member 4 (removed, or never a
    member: a stale or misdirected answer) must not make it leader without 2 or 3."""
    from ...protocol.messages import VoteResponse

    c = Cores(3, config=attrs.evolve(CONFIG, pre_vote=False))
    c.isolate(1)
    c[1].campaign(c.now)
    c.flush(1)
    c[1].step(4, VoteResponse(term=c[1].term, voted=True), c.now)
    assert c[1].role is not Role.LEADER, "a vote from outside the configuration counted"


# --- configuration changes -------------------------------------------------------------------


def configuration_change_waits_for_the_terms_first_commit() -> None:
    """A new leader whose no-op has not committed must refuse a configuration change (Ongaro's
    single-server-change fix)."""
    c = Cores(3)
    c[1].campaign(c.now)
    c.deliver(keep=lambda e: not (isinstance(e.message, AppendRequest) and e.message.entries))
    assert c[1].role is Role.LEADER and c[1].commit_index == 0, c.describe()
    try:
        c[1].propose_configuration(members(4))
    except ConfigurationChangeError:
        return
    raise AssertionError("configuration change accepted before the term's first commit")


def one_configuration_change_at_a_time() -> None:
    """While one configuration change is uncommitted, a second is refused."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.2)
    c.isolate(1)
    c[1].propose_configuration(members(4))
    c.deliver()
    try:
        c[1].propose_configuration(members(3))
    except ConfigurationChangeError:
        return
    raise AssertionError("a second configuration change accepted while one is in flight")


# --- reads --------------------------------------------------------------------------------


def read_index_waits_for_the_terms_first_commit() -> None:
    """Leader 1 commits "x" (2 and 3 hold it, but never hear that it committed) and is gone.
    2, the new leader, must not confirm a read at an index before "x"."""
    c = Cores(3)
    c.elect(1)
    c.advance(0.2)
    c[1].propose("x")
    c.flush(1)
    c.deliver(keep=lambda e: e.source != 1 or bool(getattr(e.message, "entries", ())))
    index = committed_value(c[1], "x")
    assert c[2].commit_index < index, "2 learned the commit (setup)"
    c.isolate(1)
    c.now += 2.0
    c[2].campaign(c.now)
    c.deliver(keep=lambda e: not (isinstance(e.message, AppendRequest) and e.message.entries))
    assert c[2].role is Role.LEADER, c.describe()
    c[2].read_index("read")
    c.advance(0.3)
    reads = [at for context, at in c.reads[2] if context == "read"]
    assert reads, "the read was never confirmed"
    assert reads[0] >= index, f"read confirmed at {reads[0]}, before committed entry {index}"


# --- sessions -----------------------------------------------------------------------------


def each_session_command_applies_once() -> None:
    """Commands arriving twice, and out of order, apply once each (the session table)."""
    table = SessionTable()
    session = table.register(1, "client", 5000, 0)
    applied = []
    for sequence in (1, 2, 2, 1, 3, 3):
        if table.decide(session.id, sequence) is CommandDecision.APPLY:
            applied.append(sequence)
            table.record(session, sequence, CachedResult(index=sequence, event_index=0))
    assert applied == [1, 2, 3], f"applied {applied}"


def a_keep_alive_that_raced_in_refuses_the_expiry() -> None:
    """The leader proposed a session's expiry, but a keep-alive was logged before it: applying
    the expiry re-checks the timeout against log time and refuses it (on every server alike);
    the next expiry, once the session has been silent for longer than its timeout, applies."""
    from ...protocol.messages import KeepAliveEntry, RegisterEntry, UnregisterEntry
    from ...recipes.counter import Counter
    from ...server.executor import Executor

    executor = Executor(Counter())
    executor.apply(RegisterEntry(term=1, index=1, timestamp=0, client="c", timeout=1000))
    executor.apply(KeepAliveEntry(term=1, index=2, timestamp=900, session=1))
    executor.apply(UnregisterEntry(term=1, index=3, timestamp=1001, session=1, expired=True))
    assert executor.session(1) is not None, "a session kept alive 101 ms before was expired"
    executor.apply(UnregisterEntry(term=1, index=4, timestamp=1901, session=1, expired=True))
    assert executor.session(1) is None, "a session silent for longer than its timeout stayed"


def _on_a_cluster(body: Callable[[Any, Callable[[int, Any], Any]], Any]) -> None:
    """Run `body(cluster, request)` on three in-memory servers of the Counter recipe under a
    MockClock; `request(sequence, operation)` sends a raw CommandRequest of one session to
    the leader (no client library: no retries, no sequencing of its own)."""
    import trio
    import trio.testing

    from ...protocol.messages import CommandRequest, RegisterRequest
    from ...recipes.counter import Counter
    from ...transport.rpc import ConnectionPool
    from ..cluster import open_memory_cluster

    async def run() -> None:
        async with open_memory_cluster(3, Counter) as cluster:
            leader = await cluster.wait_for_leader()
            address = cluster.address(leader)
            async with trio.open_nursery() as nursery:
                pool = ConnectionPool(cluster.network.transport("raw"), nursery)
                registered = await pool.request(address, RegisterRequest(client="raw"), 5)

                async def request(sequence: int, operation: Any) -> Any:
                    command = CommandRequest(
                        session=registered.session, sequence=sequence, operation=operation
                    )
                    return await pool.request(address, command, 10)

                with trio.fail_after(30):
                    await body(cluster.servers[leader], request)
                nursery.cancel_scope.cancel()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


def a_retried_command_applies_once() -> None:
    """A command sent twice with the same sequence number (a retry whose first answer was
    lost) is applied once; the retry gets the first result."""
    from ...recipes.counter import Increment

    async def body(leader: Any, request: Callable[[int, Any], Any]) -> None:
        first = await request(1, Increment(1))
        again = await request(1, Increment(1))
        assert (first.result, again.result) == (1, 1), (first, again)
        assert leader.state_machine.value == 1, f"applied {leader.state_machine.value} times"

    _on_a_cluster(body)


def an_early_command_waits_for_the_one_before() -> None:
    """Command 2 of a session reaches the leader before command 1 (as after a reordering
    network or a retry): it must wait, and then both apply, in sequence order."""
    import trio

    from ...recipes.counter import Increment

    async def body(leader: Any, request: Callable[[int, Any], Any]) -> None:
        answers: dict[int, Any] = {}

        async def send(sequence: int) -> None:
            answers[sequence] = await request(sequence, Increment(1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 2)
            await trio.sleep(0.05)  # virtual time: 2 has arrived and is being held
            assert 2 not in answers, f"command 2 answered before command 1 came: {answers[2]}"
            nursery.start_soon(send, 1)
        assert (answers[1].result, answers[2].result) == (1, 2), answers

    _on_a_cluster(body)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "lease-after-handover",
        lease_ends_when_leadership_is_handed_over,
        "a leader that sent TimeoutNow serves no lease reads",
    ),
    Scenario(
        "lease-vs-new-leader",
        lease_expires_before_another_leader_is_elected,
        "a lease ends before another leader can be elected",
    ),
    Scenario(
        "restarted-member-waits",
        restarted_member_waits_before_voting,
        "a member that restarts refuses polls and votes for an election timeout",
    ),
    Scenario(
        "leader-durable-before-counting",
        leader_counts_itself_only_once_durable,
        "the leader counts itself toward a commit only once its write is durable",
    ),
    Scenario(
        "ack-means-durable",
        acknowledged_write_is_on_a_majority_of_disks,
        "an acknowledged write is on a majority of disks",
    ),
    Scenario(
        "figure-8",
        old_term_entry_commits_only_through_the_leaders_own,
        "entries of earlier terms commit only through one of the leader's term",
    ),
    Scenario(
        "stale-append-refused",
        stale_leaders_append_is_refused,
        "an append from an older term is refused",
    ),
    Scenario(
        "conflict-replaced", conflicting_suffix_is_replaced, "a conflicting suffix is replaced"
    ),
    Scenario(
        "stale-candidate-refused",
        stale_candidate_is_refused_votes,
        "votes go only to candidates whose log is up to date",
    ),
    Scenario(
        "only-voters-count",
        only_voters_votes_count,
        "only votes of the configuration's voters count",
    ),
    Scenario(
        "config-after-first-commit",
        configuration_change_waits_for_the_terms_first_commit,
        "no configuration change before the term's first commit",
    ),
    Scenario(
        "one-config-change",
        one_configuration_change_at_a_time,
        "one configuration change at a time",
    ),
    Scenario(
        "read-after-first-commit",
        read_index_waits_for_the_terms_first_commit,
        "no read index before the term's first commit",
    ),
    Scenario(
        "retry-applies-once",
        a_retried_command_applies_once,
        "a retried command (same session and sequence) applies once",
    ),
    Scenario(
        "keep-alive-beats-expiry",
        a_keep_alive_that_raced_in_refuses_the_expiry,
        "an expiry is re-checked against log time when applied: a keep-alive before it wins",
    ),
    Scenario(
        "early-command-waits",
        an_early_command_waits_for_the_one_before,
        "a session's commands are appended in sequence order, early arrivals wait",
    ),
    Scenario(
        "applies-once",
        each_session_command_applies_once,
        "a session's command applies once however often it arrives",
    ),
)
