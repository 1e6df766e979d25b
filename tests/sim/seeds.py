"""Simulation seeds the default test run keeps: a sample across the fault profiles, and every
seed that once exposed a bug (each with what it found), so that the bug stays fixed.

A seed stands for a whole run: `SimulationConfig.for_seed(seed, profile)` picks its cluster size,
workload and fault rates (and its profile, PROFILES[seed % 8], unless one is named), and
everything random in the run is drawn from it. Replay one with
`python -m copycat_trio.testing.simulation --seed SEED [--profile PROFILE]`.

A seed means a run of the harness as it was when the seed was recorded; when the harness grows
(new faults, a different workload) the same seed makes a different run. So each bug is also kept
as a scripted scenario in test_simulation.py, which does not depend on the harness's draws.
"""

from __future__ import annotations

from typing import NamedTuple


class Seed(NamedTuple):
    seed: int
    profile: str | None
    """The fault profile it ran under (None: the seed's own)."""
    found: str
    """The bug, where it was, how it was fixed, and the scenario test that pins it."""


SAMPLE = tuple(range(0, 8))
"""One seed of each of the eight fault profiles (seed s runs PROFILES[s % 8]). `nox -s simulate`
runs these and the next sixteen (seeds 0 to 23, three per profile), and more on request."""

REGRESSIONS: tuple[Seed, ...] = (
    Seed(
        55,
        "mixed",
        "After healing, open_client registered a session through member 1, whose disk was "
        "still stalled: the leader applied the registration, but member 1 could not within an "
        "election timeout and refused the ConnectRequest with UNKNOWN_SESSION; open_session gave "
        "up, so open_client raised UnknownSessionError for the session it had just registered. "
        "Fixed in client/client.py (_connect_after_register: connect through the leader or any "
        "other member when the first refuses). Scenario: "
        "test_open_client_connects_elsewhere_when_the_registering_member_lags.",
    ),
    Seed(
        12,
        "membership",
        "Member 2 crashed; member 4 joined and was promoted; member 2 restarted and caught up "
        "by installing a snapshot whose configuration includes member 4, but its peer links "
        "only learn addresses from configuration entries in appends and from the log at start, "
        "so member 2 had no address for member 4. Once member 2 led (after a leadership "
        "transfer) it dropped every message to member 4, which stayed 22 entries behind as a "
        "pre-candidate forever: a liveness failure after healing. Fixed in "
        "server/replication.py (_install: learn the addresses of the installed configuration). "
        "Scenario: test_member_restored_from_a_snapshot_can_reach_members_that_joined_meanwhile.",
    ),
    Seed(
        1083,
        "membership",
        "Fixed in core/raft.py (TimeoutNow only once the logs match). "
        "A message storm during a leadership transfer: leader 1 is "
        "transferring to member 2, whose match index (99) lags the leader's last index (100) "
        "because the append carrying entry 100 was dropped. Every AppendResponse from member 2 "
        "runs _on_append_response -> _maybe_send_timeout_now, which, the logs not matching, "
        "sends another heartbeat at the match point; member 2 answers it at once, and so on: "
        "about 18,000 frames per 10 ms between the two until the pipeline is declared lost (a "
        "heartbeat interval later) or the transfer times out. On a real network, a flood at "
        "line rate; on the simulation's zero-latency network, virtual time barely moves (the "
        "run used to hit the 300 s wall-clock limit). Fix: answer a response during a transfer "
        "with TimeoutNow only once the logs match, and leave catching up to normal replication "
        "(send the heartbeat only from transfer_leadership itself).",
    ),
    Seed(
        1088,
        "membership",
        "Fixed: the leader pushes its configuration (ConfigureRequest) to members silent "
        "for an election timeout, which learn the addresses from it. Member 1 heard nobody "
        "(one-way partition) while "
        "member 7 joined; the configuration entry naming member 7 was compacted into snapshots "
        "before member 1 could receive it. Member 7 then became leader. Member 1 receives its "
        "appends but has no address for member 7, so every answer (the rejection that would "
        "make the leader send it a snapshot) is dropped ('no address for member 7'): member 1 "
        "stays at index 277 of 642 forever, and the cluster has one voter fewer than it thinks. "
        "A member learns addresses only from configuration entries in appends, from its log at "
        "start and (since the fix for seed 12) from installed snapshots; a member whose leader "
        "it cannot name never gets a snapshot. Fix options: carry the leader's address in "
        "AppendRequest (or the Envelope), or have the leader push its configuration "
        "(ConfigureRequest, as for RESERVE members) to a member that does not answer.",
    ),
    Seed(
        30863,
        "mixed",
        "A deadlock: a crashed leader never stopped. Its snapshot sender told the raft loop "
        "that the send had ended, in a shielded block (so that cancellation would not skip it), "
        "but the loop had already stopped and its inbox was full: the shielded send waited "
        "forever, the server's task never ended, and the run hung (the watchdog's cancellation "
        "could not end a shielded wait). Fixed in server/loop.py (a stopped loop fails what is "
        "queued and refuses new items with NoLeaderError) and server/replication.py (the "
        "shielded call is bounded). The harness now ends a deadlocked run with a task dump "
        "(sim_watch.deadlock_sentinel). Scenario: "
        "test_a_stopped_raft_loop_answers_shielded_callers.",
    ),
    Seed(
        90038,
        "snapshots",
        "A storage failure reported twice: an fsync failed with EIO in the persister (storage "
        "writes had just left the raft loop), the loop stopped and failed the compaction call "
        "the executor was waiting on, and the executor, woken before its own cancellation, "
        "raised NoLeaderError beside the real StorageFailedError, so the run ended in an error "
        "rather than a clean fail-stop. Fixed in server/loop.py: a caller cancelled meanwhile "
        "sees Cancelled (_fail). Scenario: the same seed; the disk-fault tests cover the rest.",
    ),
    Seed(
        540044,
        "disk-beyond",
        "A lying fsync lost acknowledged entries at a power loss; a leader elected without "
        "committed entry 34 then sent member 2 an append that contradicted it, and the core's "
        "bare AssertionError left the raft loop and ended the run as an error, although "
        "disk-beyond reports what lost data breaks as beyond the model. Fixed in core/raft.py "
        "(a typed CommittedEntryConflictError, the member stops) and testing/simulation.py "
        "(that stop is excused only once a lying fsync has lost data). Scenarios: "
        "test_a_leader_contradicting_a_committed_entry_stops_the_member, "
        "test_a_committed_entry_conflict_without_lost_data_fails_the_run.",
    ),
    Seed(
        840153,
        "disk-beyond",
        "Lying fsyncs lost data on all three members, and each refused to start at its next "
        "restart (a segment missing, a record gone in a file that is not the last): correct, "
        "and beyond the model. But the harness then opened a client of no member at all, and "
        "open_client's ValueError (no address) ended the run as an error. Fixed in "
        "testing/simulation.py (Simulation.client raises NoLeaderError, a fault the workloads "
        "wait out, once no member is left). Scenario: "
        "test_a_client_of_a_cluster_with_no_member_left_waits_like_for_a_fault.",
    ),
    Seed(
        840167,
        "disk-beyond",
        "Lying fsyncs lost data at a power loss of all three members: member 3 came back with "
        "no log and term 0, and voted member 2 (stored term 2, log up to term 4) leader of "
        "term 3; its no-op of term 3 below its own term-4 entries raised the log's bare "
        "LogError, which ended the run as an error. Fixed in core/raft.py (_become_leader "
        "stops the member with a typed TermBehindLogError, as a leader contradicting "
        "committed entries does) and testing/simulation.py (excused only once a lying fsync "
        "has lost data). Scenario: test_an_election_won_below_the_logs_term_stops_the_member.",
    ),
)
"""Seeds that found a bug (now fixed); each runs in the default test run."""

KNOWN_FAILURES: tuple[Seed, ...] = ()
"""Seeds that expose a bug not fixed yet. Each runs in the default test run and must still
fail there (its report is printed) until the bug is fixed; then it moves to REGRESSIONS."""
