"""The built-in mutant catalogue: one broken rule of copycat_trio's Raft, sessions or storage
discipline each, with the named scenarios that should catch them (scenarios.py) and the
key-value simulation. `python -m copycat_trio.testing.mutation --list` prints it.

Each snippet must occur exactly once in its function; when the code changes under it the run
stops with an error naming the mutant, and the snippet here must be brought up to date.
"""

from __future__ import annotations

from ..mutation import Catalogue, Edit, Mutant, kv_simulation, mutant
from .scenarios import SCENARIOS

RAFT = "copycat_trio.core.raft:RaftCore"

MUTANTS: tuple[Mutant, ...] = (
    mutant(
        "lease-not-voided-on-transfer",
        "a leader that sent TimeoutNow must stop serving lease reads (the target's vote "
        "request sets aside the stickiness the lease relies on)",
        f"{RAFT}._maybe_send_timeout_now",
        "self._lease_void_in_term = self.term",
        "pass",
        Edit(f"{RAFT}._maybe_send_timeout_now", 'self._lease_expiry = float("-inf")', "pass"),
        aimed_at=["lease-after-handover"],
    ),
    mutant(
        "lease-3x-too-long",
        "a lease must end before the followers' stickiness does (a fraction of the election "
        "timeout after the heartbeat round a majority answered)",
        f"{RAFT}._extend_lease",
        "self.config.election_timeout * self.config.lease_ratio",
        "self.config.election_timeout * self.config.lease_ratio * 3",
        aimed_at=["lease-vs-new-leader"],
    ),
    mutant(
        "restart-grants-votes-at-once",
        "a member that (re)starts refuses polls and votes for an election timeout: before its "
        "crash it may have confirmed a leader's lease, and it remembers no leader now",
        f"{RAFT}._in_leader_lease",
        "if now - self._started_at < timeout:",
        "if False:",
        aimed_at=["restarted-member-waits"],
    ),
    mutant(
        "follower-acks-before-durable",
        "a follower acknowledges an append only once the entries are durable",
        "copycat_trio.server.loop:RaftLoop._process_ready",
        "early = ready.hard_state is None and core.role is Role.LEADER",
        "early = ready.hard_state is None",
        aimed_at=["ack-means-durable"],
    ),
    mutant(
        "leader-counts-itself-before-durable",
        "the leader counts itself toward a commit only once its own write is durable",
        f"{RAFT}._maybe_commit",
        "self.persisted_index if v == self.id",
        "self.log.last_index if v == self.id",
        aimed_at=["leader-durable-before-counting"],
    ),
    mutant(
        "figure-8-commit-by-count",
        "an entry of an earlier term is never committed by counting replicas (Raft 5.4.2)",
        f"{RAFT}._maybe_commit",
        "candidate > self.commit_index and self.log.term_at(candidate) == self.term",
        "candidate > self.commit_index",
        aimed_at=["figure-8"],
    ),
    mutant(
        "config-change-before-first-commit",
        "a leader changes the configuration only once its term's first entry has committed",
        f"{RAFT}.propose_configuration",
        "if not self._committed_in_term():",
        "if False:",
        aimed_at=["config-after-first-commit"],
    ),
    mutant(
        "two-config-changes-in-flight",
        "one configuration change at a time: the previous one must have committed",
        f"{RAFT}.propose_configuration",
        "if self.configuration_index > self.commit_index:",
        "if False:",
        aimed_at=["one-config-change"],
    ),
    mutant(
        "vote-without-log-check",
        "a vote goes only to a candidate whose log is at least as up to date (Raft 5.4.1)",
        f"{RAFT}._on_vote",
        "and self.log.is_up_to_date(request.log_term, request.log_index)",
        "and True",
        aimed_at=["stale-candidate-refused"],
    ),
    mutant(
        "append-without-term-check",
        "an append from an older term is refused",
        f"{RAFT}._on_append",
        "if request.term < self.term:",
        "if False:",
        aimed_at=["stale-append-refused"],
    ),
    mutant(
        "no-conflict-truncation",
        "a follower removes a conflicting suffix before appending the leader's entries",
        f"{RAFT}._accept_append",
        "self._truncate(entry.index)",
        "pass",
        aimed_at=["conflict-replaced"],
    ),
    mutant(
        "dedup-off",
        "a session's command applies once: a retried sequence number is answered from the cache",
        "copycat_trio.server.executor:Executor._apply_command",
        "if decision is CommandDecision.DUPLICATE:",
        "if False:",
        aimed_at=["retry-applies-once"],
    ),
    mutant(
        "expiry-not-rechecked",
        "applying an expiry re-checks the session's timeout against log time, so a keep-alive "
        "logged before it wins",
        "copycat_trio.server.executor:Executor._apply_unregister",
        "if entry.expired and self.log_time < session.expires_at:",
        "if False:",
        aimed_at=["keep-alive-beats-expiry"],
    ),
    mutant(
        "read-index-before-first-commit",
        "a read index is taken only once the leader's term has committed an entry",
        f"{RAFT}.read_index",
        "if not self._committed_in_term():",
        "if False:",
        aimed_at=["read-after-first-commit"],
    ),
    mutant(
        "no-sequencing-wait",
        "a session's command that arrives before the ones ahead of it waits its turn on the "
        "leader; it is never appended ahead of them",
        "copycat_trio.server.client_service:ClientService.command",
        "if kind is Sequencing.WAIT:",
        "if False:",
        aimed_at=["early-command-waits"],
    ),
    mutant(
        "removed-member-vote-counted",
        "only the votes of the configuration's voters count toward an election",
        f"{RAFT}._tally",
        "if ok and v in self.voters)",
        "if ok)",
        aimed_at=["only-voters-count"],
    ),
)

CATALOGUE = Catalogue(mutants=MUTANTS, scenarios=SCENARIOS, simulation=kv_simulation)
