"""The pure Raft core: messages and time go in; what to persist, send and apply comes out.

No I/O, no clock, no trio: every call takes `now` (seconds on any monotonic scale) and randomness
comes from an injected `random.Random`. The shell calls `step`, `tick`, `propose`, `read_index`,
then `ready()` to collect a `Ready`, persists its hard state and entries, sends its messages,
applies its committed entries, and reports `persisted(index)` (etcd-io/raft's Ready/Advance).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..protocol.errors import CopycatError
from ..protocol.messages import (
    AppendRequest,
    AppendResponse,
    CommandEntry,
    ConfigurationEntry,
    Entry,
    Envelope,
    Member,
    MemberType,
    NoOpEntry,
    PollRequest,
    PollResponse,
    RaftMessage,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)
from .log import RaftLog, candidate_log_ok, default_entry_size
from .progress import Progress, ProgressState
from .quorum import has_quorum, majority_index

log = logging.getLogger(__name__)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeaderError(Exception):
    """A proposal or read reached a member that is not the leader."""

    def __init__(self, leader: int | None) -> None:
        super().__init__(f"not the leader (leader is {leader})")
        self.leader = leader


class ConfigurationChangeError(Exception):
    """A configuration change that the rules forbid right now."""


class CommittedEntryConflictError(CopycatError):
    """The leader's log contradicts an entry this member has committed.

    Raft's leader completeness makes this impossible unless some member lost entries it had
    acknowledged (a disk that lied about fsync, a data directory restored from an old copy).
    Raft cannot repair that, so the member stops rather than overwrite what it has applied.
    """

    def __init__(self, leader: int, index: int, term: int, leader_term: int | None) -> None:
        claimed = "has no entry there" if leader_term is None else f"says term {leader_term}"
        super().__init__(
            f"leader {leader} conflicts with committed entry {index}: this member committed it "
            f"in term {term}, the leader {claimed}; some member lost acknowledged entries "
            "(a disk that lied about fsync, or a data directory restored from an old copy); "
            "this member stops rather than overwrite them: see docs/operations.md, "
            '"A member stops: committed entry conflict"'
        )
        self.leader = leader
        self.index = index


class TermBehindLogError(CopycatError):
    """This member won an election for a term older than entries in its own log.

    A member's stored term can trail its log after a power loss between the log's fsync and
    the meta file's (harmless: a majority has the newer term, so no election at the older one
    can succeed). Winning one means a majority had lost terms it had made durable: disks that
    lied about fsync, or data directories restored from old copies. Raft cannot lead from
    there, so the member stops rather than append below its own log.
    """

    def __init__(self, member: int, term: int, log_term: int) -> None:
        super().__init__(
            f"member {member} won term {term}, but its log holds entries of term {log_term}: "
            "a majority of the cluster lost writes it had made durable (a disk that lied "
            "about fsync, or a data directory restored from an old copy); this member stops "
            'rather than lead from there: see docs/operations.md, "A member stops: committed '
            'entry conflict"'
        )
        self.term = term
        self.log_term = log_term


@attrs.frozen
class HardState:
    """What must be durable before any message that depends on it leaves the server."""

    term: int = 0
    vote: int | None = None


@attrs.frozen(kw_only=True)
class RaftConfig:
    """Timing and flow-control settings of the core; validated on construction."""

    election_timeout: float = 1.0
    """Base election timeout in seconds; each wait is drawn from [T, 2T)."""
    heartbeat_interval: float = 0.15
    max_append_entries: int = 512
    max_append_bytes: int = 1024 * 1024
    max_inflight: int = 2
    """Appends in flight per follower. Few keeps appends large under load: entries proposed
    while the pipeline is full go out together in the next one (16 cost about 17% more CPU
    per put at 64 writers, for no gain in throughput on loopback)."""
    commit_notify_delay: float = 0.005
    """Seconds a leader may hold a new commit index that no append carries yet before sending
    it alone (0: at once). The next append usually carries it first: one round per write
    instead of two, at the cost of followers applying up to this much later when idle."""
    check_quorum: bool = True
    pre_vote: bool = True
    lease_ratio: float = 0.75
    """A leader's read lease lasts this fraction of the election timeout from the send time of
    the last heartbeat round a majority answered; the rest is the bound on clock drift."""

    def __attrs_post_init__(self) -> None:
        validate_timing(self.election_timeout, self.heartbeat_interval)
        if not 0 < self.lease_ratio < 1:
            raise ValueError("lease_ratio must be between 0 and 1")
        if not 0 <= self.commit_notify_delay < self.heartbeat_interval:
            raise ValueError("commit_notify_delay must be in [0, heartbeat_interval)")
        for name in ("max_append_entries", "max_append_bytes", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def validate_timing(election_timeout: float, heartbeat_interval: float) -> None:
    """Reject timings that cannot keep a healthy leader in office."""
    if heartbeat_interval <= 0:
        raise ValueError("heartbeat interval must be positive")
    if election_timeout <= 0:
        raise ValueError("election timeout must be positive")
    if election_timeout < 2 * heartbeat_interval:
        raise ValueError(
            f"election timeout ({election_timeout}s) must be at least twice the heartbeat "
            f"interval ({heartbeat_interval}s), or followers will time out on a healthy leader"
        )


@attrs.define
class Ready:
    """Work for the shell, in this order: persist, then send, then apply."""

    hard_state: HardState | None = None
    truncate_from: int | None = None
    """Durably remove log entries from this index on, before appending `entries`."""
    entries: list[Entry] = attrs.Factory(list)
    messages: list[Envelope] = attrs.Factory(list)
    committed: list[Entry] = attrs.Factory(list)
    reads: list[tuple[Any, int]] = attrs.Factory(list)
    """Confirmed read-index requests: (context, index to wait for before reading)."""
    failed_reads: list[Any] = attrs.Factory(list)
    """Read requests that can no longer be confirmed (this member lost leadership)."""
    snapshots: list[int] = attrs.Factory(list)
    """Peers that need the latest snapshot (their next entry was compacted away); the shell
    sends it and reports back with `snapshot_sent`."""

    def __bool__(self) -> bool:
        return bool(
            self.hard_state
            or self.truncate_from is not None
            or self.entries
            or self.messages
            or self.committed
            or self.reads
            or self.failed_reads
            or self.snapshots
        )


@attrs.define
class _PendingRead:
    context: Any
    index: int
    round: int


class RaftCore:
    """One member's consensus state machine."""

    def __init__(
        self,
        member_id: int,
        *,
        config: RaftConfig,
        members: Sequence[Member] = (),
        hard_state: HardState = HardState(),
        entries: Sequence[Entry] = (),
        rng: random.Random,
        now: float,
        timestamp: Callable[[], int] = lambda: 0,
        entry_size: Callable[[Entry], int] = default_entry_size,
        snapshot: tuple[int, int, tuple[Member, ...], int] | None = None,
    ) -> None:
        """`snapshot` is (index, term, members, configuration index) of the snapshot the
        state machine was restored from; `entries` may start before it (they are skipped)."""
        self.id = member_id
        self.config = config
        self.rng = rng
        self._timestamp = timestamp
        self.term = hard_state.term
        self.vote = hard_state.vote
        snapshot_index, snapshot_term = snapshot[:2] if snapshot else (0, 0)
        entries = _entries_after(entries, snapshot_index, snapshot_term)
        self.log = RaftLog(
            entries,
            snapshot_index=snapshot_index,
            snapshot_term=snapshot_term,
            entry_size=entry_size,
        )
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self.commit_index = snapshot_index
        self.persisted_index = self.log.last_index
        self._handed_index = snapshot_index
        # The configuration in force is the last one in the log, else the bootstrap one.
        self._bootstrap_members = tuple(members)
        self._pushed: tuple[int, tuple[Member, ...]] | None = None
        self._configurations: list[tuple[int, tuple[Member, ...]]] = [
            (e.index, e.members) for e in entries if isinstance(e, ConfigurationEntry)
        ]
        if snapshot is not None:
            self._configurations.insert(0, (snapshot[3], tuple(snapshot[2])))
        self._ready = Ready()
        self._saved_hard_state = HardState(self.term, self.vote)
        self._votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self._last_leader_contact: float | None = None
        self._started_at = now
        """When this member (re)started: before its crash it may have acknowledged a leader
        whose lease counts on it, so it acts as if it had just heard from one."""
        self._election_deadline = now + self._random_timeout()
        self._heartbeat_deadline = float("inf")
        self._check_quorum_deadline = float("inf")
        self._broadcast_pending = False
        self._commit_notify_at = float("inf")
        """When to send a commit index no append has carried yet (see commit_notify_delay)."""
        self._read_round = 0
        self._round_sent_at: dict[int, float] = {}
        self._lease_expiry = float("-inf")
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_noop: list[Any] = []
        self._term_start_index = 0
        self._transfer: tuple[int, float] | None = None
        self._lease_void_in_term = -1
        """(target, deadline) while handing leadership over; proposals wait meanwhile."""
        self._now = now

    # --- views -----------------------------------------------------------------------------

    @property
    def members(self) -> tuple[Member, ...]:
        """The configuration in force: the latest in the log, committed or not (or one the
        leader pushed to this member, if newer: RESERVE members have no log)."""
        if self._pushed is not None and self._pushed[0] > self._log_configuration_index:
            return self._pushed[1]
        if self._configurations:
            return self._configurations[-1][1]
        return self._bootstrap_members

    @property
    def _log_configuration_index(self) -> int:
        return self._configurations[-1][0] if self._configurations else 0

    @property
    def configuration_index(self) -> int:
        if self._pushed is not None and self._pushed[0] > self._log_configuration_index:
            return self._pushed[0]
        return self._log_configuration_index

    def adopt_configuration(self, index: int, members: Sequence[Member]) -> None:
        """A configuration the leader pushed (ConfigureRequest) rather than replicated."""
        if index > self.configuration_index:
            self._pushed = (index, tuple(members))

    @property
    def voters(self) -> list[int]:
        return [m.id for m in self.members if m.type is MemberType.ACTIVE]

    @property
    def is_voter(self) -> bool:
        return self.id in self.voters

    def member(self, member_id: int) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    def _replication_targets(self) -> list[int]:
        return [
            m.id
            for m in self.members
            if m.id != self.id and m.type in (MemberType.ACTIVE, MemberType.PASSIVE)
        ]

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote)

    def next_deadline(self) -> float:
        """When `tick` next has work to do."""
        if self.role is Role.LEADER:
            return min(
                self._heartbeat_deadline, self._check_quorum_deadline, self._commit_notify_at
            )
        return self._election_deadline

    def has_ready(self) -> bool:
        self._flush_broadcast()
        self._collect_committed()
        return bool(self._ready) or self.hard_state != self._saved_hard_state

    def ready(self) -> Ready:
        """Take the accumulated work; the shell must persist it before sending its messages."""
        self._flush_broadcast()
        self._collect_committed()
        ready, self._ready = self._ready, Ready()
        if self.hard_state != self._saved_hard_state:
            ready.hard_state = self._saved_hard_state = self.hard_state
        return ready

    def persisted(self, index: int, term: int | None = None) -> None:
        """The shell made entries up to index durable; the leader may now count itself.
        With `term` (the term of the entry at `index` when its write began), a report that a
        later truncation or snapshot overtook is ignored: what the log now holds there is
        another entry, not yet durable (writes run while the core goes on)."""
        if term is not None and self.log.term_at(index) != term:
            return
        if index > self.persisted_index:
            self.persisted_index = min(index, self.log.last_index)
            if self.role is Role.LEADER:
                self._maybe_commit()

    # --- time ------------------------------------------------------------------------------

    def _random_timeout(self) -> float:
        """A wait in [T, 2T); with priorities, higher-priority members draw from earlier
        slices of that range, so among up-to-date members they campaign first."""
        t = self.config.election_timeout
        levels = sorted(
            {m.priority for m in self.members if m.type is MemberType.ACTIVE}, reverse=True
        )
        me = self.member(self.id)
        if len(levels) <= 1 or me is None or me.priority not in levels:
            return t + self.rng.random() * t
        width = t / len(levels)
        return t + (levels.index(me.priority) + self.rng.random()) * width

    def _reset_election_deadline(self, now: float) -> None:
        self._election_deadline = now + self._random_timeout()

    def _in_leader_lease(self, now: float) -> bool:
        """Leader stickiness: a follower that heard from a live leader within the (minimum)
        election timeout, or started within it, refuses polls and votes. A leader's read lease
        relies on it; a member that restarted may have acknowledged that leader just before,
        and remembers no leader now. A member that campaigns has given up on any leader."""
        if self.role is Role.LEADER:
            return True
        if self.role is not Role.FOLLOWER:
            return False
        timeout = self.config.election_timeout
        if now - self._started_at < timeout:
            return True
        return (
            self.leader is not None
            and self._last_leader_contact is not None
            and now - self._last_leader_contact < timeout
        )

    def tick(self, now: float) -> None:
        """Act on every deadline that has passed."""
        self._now = now
        if self.role is Role.LEADER and self._transfer is not None and now >= self._transfer[1]:
            log.info("member %s: transfer to %s timed out", self.id, self._transfer[0])
            self._transfer = None
        if self.role is Role.LEADER:
            if now >= self._check_quorum_deadline:
                self._check_quorum(now)
            if self.role is Role.LEADER and now >= self._heartbeat_deadline:
                self._heartbeat_deadline = now + self.config.heartbeat_interval
                self._commit_notify_at = float("inf")  # the heartbeats carry it
                for progress in self.progress.values():
                    progress.heartbeat_due()
                self._new_round(now)
                self._broadcast(heartbeat=True)
            if self.role is Role.LEADER and now >= self._commit_notify_at:
                self._commit_notify_at = float("inf")
                for peer, progress in self.progress.items():
                    if progress.commit_sent < self.commit_index:
                        self._send_append(peer, progress, heartbeat=True)
        elif now >= self._election_deadline:
            self.campaign(now)

    def _check_quorum(self, now: float) -> None:
        self._check_quorum_deadline = now + self.config.election_timeout
        if not self.config.check_quorum:
            return
        active = sum(
            1
            for v in self.voters
            if v == self.id or (v in self.progress and self.progress[v].recent_active)
        )
        for progress in self.progress.values():
            progress.recent_active = False
        if not has_quorum(active, len(self.voters)):
            log.info("member %s: no quorum heard for an election timeout; stepping down", self.id)
            self._become_follower(now, self.term, None)

    # --- elections -------------------------------------------------------------------------

    def campaign(self, now: float) -> None:
        """Start an election: a poll round first when pre-vote is on."""
        if not self.is_voter:
            self._reset_election_deadline(now)
            return
        if self.config.pre_vote:
            self._become_pre_candidate(now)
        else:
            self._become_candidate(now)

    def _become_pre_candidate(self, now: float) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._last_leader_contact = None
        self._votes = {self.id: True}
        self._reset_election_deadline(now)
        request = PollRequest(
            term=self.term + 1,
            candidate=self.id,
            log_index=self.log.last_index,
            log_term=self.log.last_term,
        )
        for voter in self.voters:
            if voter != self.id:
                self._send(voter, request)
        self._tally(now)

    def _become_candidate(self, now: float, *, transfer: bool = False) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self._last_leader_contact = None
        self._votes = {self.id: True}
        self._reset_election_deadline(now)
        request = VoteRequest(
            term=self.term,
            candidate=self.id,
            log_index=self.log.last_index,
            log_term=self.log.last_term,
            transfer=transfer,
        )
        for voter in self.voters:
            if voter != self.id:
                self._send(voter, request)
        self._tally(now)

    def _tally(self, now: float) -> None:
        granted = sum(1 for v, ok in self._votes.items() if ok and v in self.voters)
        rejected = sum(1 for v, ok in self._votes.items() if not ok and v in self.voters)
        voters = len(self.voters)
        if has_quorum(granted, voters):
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate(now)
            elif self.role is Role.CANDIDATE:
                self._become_leader(now)
        elif has_quorum(rejected, voters):
            self._become_follower(now, self.term, None)

    def _become_follower(self, now: float, term: int, leader: int | None) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self.leader = leader
        self._votes = {}
        self._reset_election_deadline(now)
        self._heartbeat_deadline = float("inf")
        self._check_quorum_deadline = float("inf")
        if was_leader:
            self._transfer = None
            self._lease_expiry = float("-inf")
            self._round_sent_at = {}
            self.progress = {}
            self._broadcast_pending = False
            self._ready.failed_reads.extend(r.context for r in self._pending_reads)
            self._ready.failed_reads.extend(self._reads_awaiting_noop)
            self._pending_reads = []
            self._reads_awaiting_noop = []

    def _become_leader(self, now: float) -> None:
        if self.term < self.log.last_term:
            raise TermBehindLogError(self.id, self.term, self.log.last_term)
        log.info("member %s: leader for term %s", self.id, self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._votes = {}
        self.progress = {
            peer: Progress(self.log.last_index + 1, self.config.max_inflight)
            for peer in self._replication_targets()
        }
        self._heartbeat_deadline = now + self.config.heartbeat_interval
        self._check_quorum_deadline = now + self.config.election_timeout
        self._commit_notify_at = float("inf")
        self._new_round(now)
        self._term_start_index = self.log.last_index + 1
        self._append(
            NoOpEntry(term=self.term, index=self.log.last_index + 1, timestamp=self._timestamp())
        )
        self._broadcast(heartbeat=False)

    # --- inbound messages ------------------------------------------------------------------

    def step(self, source: int, message: RaftMessage, now: float) -> None:
        """Handle one Raft message from another member."""
        if isinstance(message, PollRequest):
            self._on_poll(source, message, now)
            return
        self._now = now
        if isinstance(message, VoteRequest) and message.term > self.term:
            if self._in_leader_lease(now) and not message.transfer:
                self._send(source, VoteResponse(term=self.term, voted=False))
                return
            self._become_follower(now, message.term, None)
        elif message.term > self.term:
            if isinstance(message, PollResponse) and message.accepted:
                pass  # a granted poll at our proposed term changes nobody's term
            else:
                leader = message.leader if isinstance(message, AppendRequest) else None
                self._become_follower(now, message.term, leader)
        handler = _HANDLERS[type(message)]
        handler(self, source, message, now)

    def _on_poll(self, source: int, request: PollRequest, now: float) -> None:
        granted = (
            request.term > self.term
            and request.candidate in self.voters
            and not self._in_leader_lease(now)
            and self.log.is_up_to_date(request.log_term, request.log_index)
        )
        self._send(
            source, PollResponse(term=request.term if granted else self.term, accepted=granted)
        )

    def _on_poll_response(self, source: int, response: PollResponse, now: float) -> None:
        if self.role is not Role.PRE_CANDIDATE:
            return
        if response.accepted and response.term != self.term + 1:
            return  # answers an older poll round
        self._votes[source] = response.accepted
        self._tally(now)

    def _on_vote(self, source: int, request: VoteRequest, now: float) -> None:
        granted = (
            request.term == self.term
            and request.candidate in self.voters
            and self.vote in (None, request.candidate)
            and self.log.is_up_to_date(request.log_term, request.log_index)
        )
        if granted:
            self.vote = request.candidate
            self._reset_election_deadline(now)
        self._send(source, VoteResponse(term=self.term, voted=granted))

    def _on_vote_response(self, source: int, response: VoteResponse, now: float) -> None:
        if self.role is not Role.CANDIDATE or response.term != self.term:
            return
        self._votes[source] = response.voted
        self._tally(now)

    def accept_leader(self, term: int, leader: int, now: float) -> bool:
        """A leader-only request (such as a snapshot chunk) arrived: adopt its term and leader,
        as an append would, or return False if it comes from a stale term."""
        if term < self.term:
            return False
        if term > self.term or self.role is not Role.FOLLOWER:
            self._become_follower(now, term, leader)
        self.leader = leader
        self._last_leader_contact = now
        self._reset_election_deadline(now)
        return True

    def snapshot_sent(self, peer: int, index: int, succeeded: bool) -> None:
        """The shell finished sending a snapshot up to index to peer."""
        progress = self.progress.get(peer) if self.role is Role.LEADER else None
        if progress is None:
            return
        progress.snapshot_done(index, succeeded)
        if succeeded:
            self._maybe_commit()
        self._send_append(peer, progress, heartbeat=True)

    def compact(self, index: int) -> None:
        """Entries up to index are in a durable snapshot: drop them from the log."""
        if index > self._handed_index:
            raise ValueError(f"cannot compact past the applied index {self._handed_index}")
        self.log.compact(index)
        in_force = [(i, m) for i, m in self._configurations if i <= index][-1:]
        self._configurations = in_force + [(i, m) for i, m in self._configurations if i > index]

    def restore(
        self, index: int, term: int, members: Sequence[Member], configuration_index: int
    ) -> bool:
        """Adopt a snapshot up to (index, term) that the leader sent. Returns False if this log
        already holds everything in it. Entries after it that match are kept."""
        if index <= self.commit_index:
            return False
        if self.log.term_at(index) == term:
            self.log.compact(index)
        else:
            self.log.reset(index, term)
            # The Ready must not write entries of the replaced log (accepted earlier in this
            # batch) after the storage dropped them: the stored log, too, starts afresh.
            self._ready.entries = []
            self._ready.truncate_from = 1
        self._configurations = [(configuration_index, tuple(members))] + [
            (i, m) for i, m in self._configurations if i > index and i <= self.log.last_index
        ]
        self.commit_index = index
        self._handed_index = index
        self.persisted_index = max(self.persisted_index, index)
        return True

    @property
    def applied_handed_index(self) -> int:
        """The last index handed to the shell to apply."""
        return self._handed_index

    def _on_append(self, source: int, request: AppendRequest, now: float) -> None:
        if request.term < self.term:
            self._send(
                source,
                AppendResponse(
                    term=self.term,
                    succeeded=False,
                    log_index=self.log.last_index + 1,
                    read_round=request.read_round,
                    rejected_index=request.prev_log_index,
                ),
            )
            return
        # Same term: whoever is candidate yields to the elected leader.
        if self.role is not Role.FOLLOWER:
            self._become_follower(now, request.term, request.leader)
        self.leader = request.leader
        self._last_leader_contact = now
        self._reset_election_deadline(now)
        self._send(source, self._accept_append(request))

    def _accept_append(self, request: AppendRequest) -> AppendResponse:
        """Log matching and conflict truncation (Raft 5.3); never truncates committed entries."""
        prev = request.prev_log_index
        reject = AppendResponse(
            term=self.term,
            succeeded=False,
            log_index=0,
            read_round=request.read_round,
            rejected_index=prev,
        )
        if prev > self.log.last_index:
            return attrs.evolve(reject, log_index=self.log.last_index + 1)
        if prev >= self.log.snapshot_index and self.log.term_at(prev) != request.prev_log_term:
            if prev <= self.commit_index:
                raise CommittedEntryConflictError(
                    request.leader, prev, self.log.term_at(prev) or 0, request.prev_log_term
                )
            hint = max(self.commit_index + 1, self.log.first_index_of_term(prev))
            return attrs.evolve(reject, log_index=hint)
        new_entries: list[Entry] = []
        for i, entry in enumerate(request.entries):
            if entry.index <= self.log.snapshot_index:
                continue
            existing = self.log.term_at(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                if entry.index <= self.commit_index:
                    raise CommittedEntryConflictError(
                        request.leader, entry.index, existing, entry.term
                    )
                self._truncate(entry.index)
            new_entries = list(request.entries[i:])
            break
        if new_entries:
            self._append_entries(new_entries)
        match = prev + len(request.entries)
        new_commit = min(request.commit_index, match)
        if new_commit > self.commit_index:
            self.commit_index = new_commit
        return AppendResponse(
            term=self.term, succeeded=True, log_index=match, read_round=request.read_round
        )

    def _on_append_response(self, source: int, response: AppendResponse, now: float) -> None:
        if self.role is not Role.LEADER or response.term != self.term:
            return
        progress = self.progress.get(source)
        if progress is None:
            return
        progress.recent_active = True
        if response.read_round > progress.read_round:
            progress.read_round = response.read_round
            self._release_reads()
            self._extend_lease()
        if response.succeeded:
            if progress.acknowledge(response.log_index):
                self._maybe_commit()
                self._maybe_hand_over(source, progress)
            self._send_append(source, progress)
            self._maybe_send_timeout_now(source)
        elif progress.reject(response.rejected_index, response.log_index):
            self._send_append(source, progress)

    # --- the leader's work -----------------------------------------------------------------

    def propose(self, operation: Any, *, session: int = 0, sequence: int = 0) -> tuple[int, int]:
        """Append a command; returns its (index, term). Raises NotLeaderError elsewhere."""
        return self.propose_entry(
            lambda **at: CommandEntry(**at, operation=operation, session=session, sequence=sequence)
        )

    def propose_entry(self, build: Callable[..., Entry]) -> tuple[int, int]:
        """Append the entry `build(term=, index=, timestamp=)` makes; returns (index, term)."""
        if self.role is not Role.LEADER or self._transfer is not None:
            raise NotLeaderError(self.leader if self._transfer is None else None)
        entry = build(term=self.term, index=self.log.last_index + 1, timestamp=self._timestamp())
        if isinstance(entry, ConfigurationEntry):
            raise ConfigurationChangeError("configuration entries go through propose_configuration")
        self._append(entry)
        self._broadcast_pending = True
        return entry.index, entry.term

    def transfer_leadership(self, target: int, now: float) -> None:
        """Hand leadership to `target`: once its log matches ours, tell it to campaign at once.
        New proposals are refused meanwhile; the transfer is abandoned after an election
        timeout."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if target == self.id:
            return
        if target not in self.voters or target not in self.progress:
            raise ConfigurationChangeError(f"member {target} is not a voting member")
        self._transfer = (target, now + self.config.election_timeout)
        progress = self.progress[target]
        if progress.match_index == self.log.last_index:
            self._maybe_send_timeout_now(target)
        else:
            self._send_append(target, progress, heartbeat=True)  # normal replication catches up

    @property
    def transferring_to(self) -> int | None:
        return self._transfer[0] if self._transfer else None

    def _maybe_send_timeout_now(self, peer: int) -> None:
        if self._transfer is None or self._transfer[0] != peer:
            return
        progress = self.progress[peer]
        # Only once the logs match: answering every response with another heartbeat while
        # the target lags would start a message storm between the two (simulation seed 1083).
        if progress.match_index == self.log.last_index:
            # The target's vote request will set the voters' stickiness aside, which is what a
            # lease relies on: from now on this term's lease is void.
            self._lease_void_in_term = self.term
            self._lease_expiry = float("-inf")
            self._send(peer, TimeoutNowRequest(term=self.term, leader=self.id))

    def _on_timeout_now(self, source: int, request: TimeoutNowRequest, now: float) -> None:
        if request.term == self.term and request.leader == self.leader and self.is_voter:
            log.info("member %s: asked by leader %s to take over", self.id, source)
            self._become_candidate(now, transfer=True)

    def lease_valid(self, now: float) -> bool:
        """Whether this leader may serve a read from its own state without a quorum round."""
        return (
            self.role is Role.LEADER
            and self._lease_void_in_term != self.term
            and self._committed_in_term()
            and now < self._lease_expiry
        )

    @property
    def term_start_index(self) -> int | None:
        """The index of this leader's first entry of its term (its no-op)."""
        if self.role is not Role.LEADER:
            return None
        return self._term_start_index

    def _new_round(self, now: float) -> None:
        self._read_round += 1
        self._round_sent_at[self._read_round] = now

    def _confirmed_round(self) -> int:
        rounds = [
            self._read_round if v == self.id else self.progress[v].read_round
            for v in self.voters
            if v == self.id or v in self.progress
        ]
        rounds += [0] * (len(self.voters) - len(rounds))
        return majority_index(rounds)

    def _extend_lease(self) -> None:
        """The lease runs from the send time of the latest heartbeat round at or before the
        round a majority confirmed: whoever answered a message of that round (or of a read's
        round after it) heard from this leader after that time, and refuses votes for an
        election timeout from then. Only a fraction of it is used: the rest allows for drift."""
        confirmed = self._confirmed_round()
        rounds = [r for r in self._round_sent_at if r <= confirmed]
        if not rounds:
            return
        latest = max(rounds)
        expiry = (
            self._round_sent_at[latest] + self.config.election_timeout * self.config.lease_ratio
        )
        self._lease_expiry = max(self._lease_expiry, expiry)
        for old in rounds:
            if old < latest:
                del self._round_sent_at[old]

    def propose_configuration(self, members: Sequence[Member]) -> tuple[int, int]:
        """Append a new configuration: one change at a time, after this term's no-op commits."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if not self._committed_in_term():
            raise ConfigurationChangeError("the leader's first entry of its term has not committed")
        if self.configuration_index > self.commit_index:
            raise ConfigurationChangeError("another configuration change is still in progress")
        entry = ConfigurationEntry(
            term=self.term,
            index=self.log.last_index + 1,
            timestamp=self._timestamp(),
            members=tuple(members),
        )
        self._append(entry)
        for peer in self._replication_targets():
            self.progress.setdefault(peer, Progress(self.log.last_index, self.config.max_inflight))
        for peer in list(self.progress):
            if peer not in self._replication_targets():
                del self.progress[peer]
        self._broadcast_pending = True
        self._maybe_commit()
        return entry.index, entry.term

    def read_index(self, context: Any) -> None:
        """Ask to serve a linearizable read; the answer comes in Ready.reads or failed_reads."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if not self._committed_in_term():
            self._reads_awaiting_noop.append(context)
            return
        self._read_round += 1
        self._pending_reads.append(_PendingRead(context, self.commit_index, self._read_round))
        # No send time is recorded for a read's round: its answers extend the lease only from
        # the heartbeat round before it (see _extend_lease).
        self._broadcast_pending = True
        self._release_reads()

    def _maybe_hand_over(self, peer: int, progress: Progress) -> None:
        """Leadership settles where the operator wants it: hand over to a caught-up voter of
        higher priority (only once this leader's term is established)."""
        if self._transfer is not None or not self._committed_in_term():
            return
        me, other = self.member(self.id), self.member(peer)
        if me is None or other is None or other.type is not MemberType.ACTIVE:
            return
        if other.priority > me.priority and progress.match_index == self.log.last_index:
            best = max(
                (m for m in self.members if m.type is MemberType.ACTIVE and m.id in self.progress),
                key=lambda m: m.priority,
            )
            if best.id == peer:
                log.info("member %s: handing over to member %s (higher priority)", self.id, peer)
                self.transfer_leadership(peer, self._now)

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.commit_index) == self.term

    def _release_reads(self) -> None:
        if not self._pending_reads:
            return
        confirmed = self._confirmed_round()
        still: list[_PendingRead] = []
        for read in self._pending_reads:
            if read.round <= confirmed:
                self._ready.reads.append((read.context, read.index))
            else:
                still.append(read)
        self._pending_reads = still

    def _append(self, entry: Entry) -> None:
        self._append_entries([entry])

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._ready.entries.extend(entries)
        for entry in entries:
            if isinstance(entry, ConfigurationEntry):
                self._configurations.append((entry.index, entry.members))

    def _truncate(self, index: int) -> None:
        self.log.truncate_from(index)
        self.persisted_index = min(self.persisted_index, index - 1)
        self._configurations = [(i, m) for i, m in self._configurations if i < index]
        self._ready.entries = [e for e in self._ready.entries if e.index < index]
        if self._ready.truncate_from is None or index < self._ready.truncate_from:
            self._ready.truncate_from = index

    def _maybe_commit(self) -> None:
        """Commit by quorum, but only entries of the leader's own term (Raft 5.4.2, Figure 8)."""
        matches = [
            self.persisted_index if v == self.id else self.progress[v].match_index
            for v in self.voters
            if v == self.id or v in self.progress
        ]
        matches += [0] * (len(self.voters) - len(matches))
        candidate = majority_index(matches)
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            self.commit_index = candidate
            if not self.is_voter and self.configuration_index <= self.commit_index:
                # Removed (or demoted) by a configuration that has now committed: step down.
                log.info("member %s: no longer a voter; stepping down", self.id)
                self._become_follower(self._now, self.term, None)
                return
            if self.config.commit_notify_delay > 0:
                notify_at = self._now + self.config.commit_notify_delay
                self._commit_notify_at = min(self._commit_notify_at, notify_at)
            else:
                self._broadcast_pending = True
            if self._reads_awaiting_noop:
                waiting, self._reads_awaiting_noop = self._reads_awaiting_noop, []
                for context in waiting:
                    self.read_index(context)

    def _broadcast(self, *, heartbeat: bool) -> None:
        for peer, progress in self.progress.items():
            self._send_append(peer, progress, heartbeat=heartbeat)
        self._broadcast_pending = False

    def _flush_broadcast(self) -> None:
        if self._broadcast_pending and self.role is Role.LEADER:
            self._broadcast(heartbeat=False)

    def _news_for(self, progress: Progress) -> bool:
        """Whether an empty append would tell an up-to-date peer something: a read's new
        heartbeat round (while a broadcast is pending), or, with no commit notify delay, a
        commit index it has not been sent. Not a broadcast for entries it was already sent in
        the same turn (its answer to an earlier append came in first)."""
        if self._broadcast_pending and progress.round_sent < self._read_round:
            return True
        return self.config.commit_notify_delay == 0 and progress.commit_sent < min(
            self.commit_index, progress.match_index
        )

    def _send_append(self, peer: int, progress: Progress, *, heartbeat: bool = False) -> None:
        """Send entries if the peer can take more; otherwise a heartbeat when one is due."""
        if progress.state is ProgressState.SNAPSHOT:
            if not heartbeat:
                return  # entries wait for the snapshot in flight
            # Heartbeats go on (an empty append at the snapshot, refused until it is installed):
            # a lost or slow chunk must not let the peer's election timer run out.
        elif progress.next_index <= self.log.snapshot_index:
            # The entries this peer needs were compacted into a snapshot: send that instead.
            progress.become_snapshot()
            self._ready.snapshots.append(peer)
            return
        has_entries = progress.next_index <= self.log.last_index
        if has_entries and not progress.paused:
            prev = progress.next_index - 1
            entries = self.log.batch(
                progress.next_index,
                max_entries=self.config.max_append_entries,
                max_bytes=self.config.max_append_bytes,
            )
            progress.sent(entries[-1].index)
        elif heartbeat or (not has_entries and self._news_for(progress)):
            prev = min(progress.match_index, progress.next_index - 1)
            entries = []
        else:
            return
        prev_term = self.log.term_at(prev)
        if prev_term is None:  # a heartbeat at a match point now compacted away
            prev, prev_term = self.log.snapshot_index, self.log.snapshot_term
        commit = min(self.commit_index, prev + len(entries))
        progress.commit_sent = max(progress.commit_sent, commit)
        progress.round_sent = self._read_round
        if self._commit_notify_at != float("inf") and all(
            p.commit_sent >= self.commit_index for p in self.progress.values()
        ):
            self._commit_notify_at = float("inf")  # every peer has it: no round of its own
        self._send(
            peer,
            AppendRequest(
                term=self.term,
                leader=self.id,
                prev_log_index=prev,
                prev_log_term=prev_term,
                entries=tuple(entries),
                commit_index=commit,
                read_round=self._read_round,
            ),
        )

    def _collect_committed(self) -> None:
        if self.commit_index > self._handed_index:
            limit = min(
                self.commit_index,
                self.persisted_index if self.role is Role.LEADER else self.log.last_index,
            )
            if limit > self._handed_index:
                self._ready.committed.extend(self.log.slice(self._handed_index + 1, limit + 1))
                self._handed_index = limit

    def _send(self, target: int, message: RaftMessage) -> None:
        self._ready.messages.append(Envelope(self.id, target, message))


def _entries_after(entries: Sequence[Entry], index: int, term: int) -> list[Entry]:
    """The stored entries that continue a snapshot at (index, term): contiguous from index + 1
    with terms not below it. Anything else is an uncommitted leftover of a replaced log."""
    out: list[Entry] = []
    for entry in entries:
        if entry.index <= index:
            continue
        expected = index + 1 + len(out)
        if entry.index != expected or entry.term < (out[-1].term if out else term):
            break
        out.append(entry)
    return out


_HANDLERS: dict[type, Callable[[RaftCore, int, Any, float], None]] = {
    AppendRequest: RaftCore._on_append,
    AppendResponse: RaftCore._on_append_response,
    PollResponse: RaftCore._on_poll_response,
    VoteRequest: RaftCore._on_vote,
    VoteResponse: RaftCore._on_vote_response,
    TimeoutNowRequest: RaftCore._on_timeout_now,
}

__all__ = [
    "ConfigurationChangeError",
    "HardState",
    "NotLeaderError",
    "RaftConfig",
    "RaftCore",
    "Ready",
    "Role",
    "candidate_log_ok",
]
