"""The resource workload (copycat_trio/testing/resource_workload.py): its checkers on hand-made
histories, each catching a planted violation, a few simulation seeds across the profiles, and a
broken lock (granting to two waiters) caught by the simulation run itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from copycat_trio.recipes.resources.base import Host
from copycat_trio.recipes.resources.kinds.lock import (
    LockAcquire,
    LockCancel,
    LockRelease,
    LockResource,
)
from copycat_trio.recipes.resources.kinds.map import MapCompareAndSet, MapDelete, MapPut
from copycat_trio.recipes.resources.kinds.queue import QueueCancel, QueueOffer, QueuePoll
from copycat_trio.testing.history import Outcome
from copycat_trio.testing.invariants import Applied
from copycat_trio.testing.resource_checks import (
    Grant,
    LearnedGrant,
    Receipt,
    check_fencing,
    check_lock,
    check_queue,
    check_watch,
    hold_ends,
    lock_grants,
)
from copycat_trio.testing.resource_machine import Published
from copycat_trio.testing.simulation import run_simulation

L = "l"


def applied(*commands: tuple[int, int, Any, Any]) -> list[Applied]:
    """Applied records from (index, session, operation, result)."""
    return [Applied(1, i, s, n, op, r) for n, (i, s, op, r) in enumerate(commands, 1)]


def handed_lock(index: int, session: int, request: int) -> Published:
    return Published(index, session, "lock", L, request, index)


# --- locks ---------------------------------------------------------------------------------


def lock_problems(
    log: list[Applied],
    published: Sequence[Published] = (),
    closes: dict[int, int] | None = None,
    learned: Sequence[LearnedGrant] = (),
) -> list[str]:
    grants = lock_grants(L, log, published)
    ends = hold_ends(L, grants, log, closes or {})
    return check_lock(L, grants, ends, learned)


def test_a_lock_handed_on_by_release_and_by_session_close_passes() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        (11, 2, LockAcquire(L, 1), None),
        (12, 3, LockAcquire(L, 1), None),
        (13, 1, LockRelease(L, 1), True),  # hands to 2 at 13
    )
    # Session 2 expires at 20 (it may still believe it holds): the lock goes to 3 there.
    published = [handed_lock(13, 2, 1), handed_lock(20, 3, 1)]
    learned = [
        LearnedGrant("a", (1,), 10, 1.0, 1.1),
        LearnedGrant("b", (2,), 13, 1.05, 1.3),
        LearnedGrant("c", (3,), 20, 1.06, 3.0),
    ]
    assert lock_problems(log, published, {2: 20}, learned) == []


def test_a_grant_while_a_live_session_holds_is_caught() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        (11, 2, LockAcquire(L, 1), None),
        (15, 1, LockRelease(L, 1), True),
    )
    published = [handed_lock(12, 2, 1)]  # handed on before session 1 released
    (problem,) = lock_problems(log, published)
    assert "mutual exclusion" in problem and "session 2" in problem and "until index 15" in problem


def test_a_lock_granted_to_two_waiters_at_once_is_caught() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        (11, 2, LockAcquire(L, 1), None),
        (12, 3, LockAcquire(L, 1), None),
        (13, 1, LockRelease(L, 1), True),
    )
    problems = lock_problems(log, [handed_lock(13, 2, 1), handed_lock(13, 3, 1)])
    assert any("token 13 was granted 2 times" in p for p in problems)
    assert any("mutual exclusion" in p for p in problems)


def test_a_token_that_is_not_its_granting_index_is_caught() -> None:
    (problem,) = lock_problems(applied((10, 1, LockAcquire(L, 1), 7)))
    assert "granted token 7 at index 10" in problem


def test_a_cancel_ends_a_grant_its_client_never_learned() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), None),
        (11, 2, LockAcquire(L, 1), 11),
        (12, 2, LockRelease(L, 1), True),
        (14, 1, LockCancel(L, 1), False),  # granted at 12 unseen, released here
        (15, 3, LockAcquire(L, 1), 15),
    )
    assert lock_problems(log, [handed_lock(12, 1, 1)]) == []
    # Without the cancel, session 1 still holds at 15.
    assert "mutual exclusion" in lock_problems(log[:3] + log[4:], [handed_lock(12, 1, 1)])[0]


def test_what_clients_were_told_is_checked_against_the_log_and_real_time() -> None:
    log = applied((10, 1, LockAcquire(L, 1), 10), (11, 1, LockRelease(L, 1), True))
    log += applied((20, 2, LockAcquire(L, 1), 20))
    wrong_session = [LearnedGrant("b", (9,), 20, 2.0, 2.1)]
    assert "the log has a grant to session 2" in lock_problems(log, learned=wrong_session)[0]
    # b learned 20 before a invoked the acquire that got 10: the later grant has the smaller token.
    backwards = [LearnedGrant("b", (2,), 20, 1.0, 1.5), LearnedGrant("a", (1,), 10, 2.0, 2.5)]
    (problem,) = lock_problems(log, learned=backwards)
    assert "a later grant must have a larger token" in problem


# --- fencing -------------------------------------------------------------------------------


def fenced(index: int, session: int, old: str | None, new: str, result: bool) -> Any:
    return (index, session, MapCompareAndSet("f", "k", old, new), result)


def fencing_problems(log: list[Applied], closes: dict[int, int] | None = None) -> list[str]:
    grants = lock_grants(L, log, [])
    return check_fencing("f", "k", log, grants, hold_ends(L, grants, log, closes or {}))


def test_fenced_writes_under_growing_tokens_pass() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        fenced(11, 1, None, "10:a:1", True),
        fenced(12, 1, "10:a:1", "10:a:2", True),
        (13, 1, LockRelease(L, 1), True),
        (14, 2, LockAcquire(L, 1), 14),
        fenced(15, 2, "10:a:2", "14:b:1", True),
        fenced(16, 1, "10:a:2", "10:a:3", False),  # refused by the CAS: not accepted
    )
    assert fencing_problems(log) == []


def test_a_write_under_a_lower_token_after_a_higher_one_is_caught() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        (12, 2, LockAcquire(L, 1), 12),
        fenced(13, 2, None, "12:b:1", True),
        fenced(14, 3, "12:b:1", "10:a:1", True),  # a paused former holder's write accepted
    )
    problems = fencing_problems(log, closes={1: 11})
    assert any("under token 10 at index 14, after one under token 12" in p for p in problems)


def test_a_write_outside_its_sessions_hold_is_caught() -> None:
    log = applied(
        (10, 1, LockAcquire(L, 1), 10),
        (11, 1, LockRelease(L, 1), True),
        fenced(12, 1, None, "10:a:1", True),
    )
    (problem,) = fencing_problems(log)
    assert "outside its hold of token 10 (index 10 to index 11)" in problem


# --- queues --------------------------------------------------------------------------------


Q = "q"


def queue_problems(
    log: list[Applied],
    published: Sequence[Published] = (),
    offers: dict[str, Outcome] | None = None,
    receipts: Sequence[Receipt] = (),
    remaining: Sequence[str] = (),
) -> list[str]:
    return check_queue(Q, log, published, offers or {}, receipts, remaining)


def handed_item(index: int, session: int, request: int, item: str) -> Published:
    return Published(index, session, "queue", Q, request, [item])


def test_items_handed_once_given_back_and_handed_again_pass() -> None:
    log = applied(
        (10, 1, QueueOffer(Q, "a"), None),
        (11, 1, QueueOffer(Q, "b"), None),
        (12, 2, QueuePoll(Q, 1), ["a"]),
        (13, 3, QueuePoll(Q, 1), ["b"]),
        (14, 3, QueueCancel(Q, 1), False),  # b given back (its answer was lost)
        (15, 4, QueuePoll(Q, 1), None),
        (16, 1, QueueOffer(Q, "c"), None),  # c to the waiting poll of 4
        (17, 2, QueuePoll(Q, 2), ["b"]),
    )
    offers = {"a": Outcome.OK, "b": Outcome.OK, "c": Outcome.UNKNOWN, "d": Outcome.UNKNOWN}
    receipts = [Receipt("x", (2,), "a", 1.0), Receipt("z", (4,), "c", 2.0)]
    # b went to session 2, which never saw it (its session died): delivered, not received.
    assert queue_problems(log, [handed_item(16, 4, 1, "c")], offers, receipts) == []


def test_an_item_handed_to_a_second_poller_without_being_given_back_is_caught() -> None:
    log = applied(
        (10, 1, QueueOffer(Q, "a"), None),
        (12, 2, QueuePoll(Q, 1), ["a"]),
        (13, 3, QueuePoll(Q, 1), ["a"]),
    )
    (problem,) = queue_problems(log)
    assert "handed to session 3 at index 13 while still delivered to session 2" in problem


def test_a_lost_acknowledged_item_and_a_doubly_queued_one_are_caught() -> None:
    log = applied(
        (10, 1, QueueOffer(Q, "a"), None),
        (11, 1, QueueOffer(Q, "b"), None),
        (12, 2, QueuePoll(Q, 1), ["b"]),
        (13, 2, QueueCancel(Q, 1), False),
    )
    problems = queue_problems(log, offers={"a": Outcome.OK}, remaining=["a", "a"])
    assert any("item 'a' (offered in the log) is 2 places at once" in p for p in problems)
    assert any("item 'b' (offered in the log) is nowhere (lost)" in p for p in problems)
    missing = queue_problems(log[1:], offers={"a": Outcome.OK}, remaining=["b"])
    assert missing == ["queue q: the acknowledged offer of 'a' is not in the log"]


def test_clients_receipts_and_failed_offers_are_checked() -> None:
    log = applied((10, 1, QueueOffer(Q, "a"), None), (12, 2, QueuePoll(Q, 1), ["a"]))
    twice = [Receipt("x", (2,), "a", 1.0), Receipt("y", (3,), "a", 2.0)]
    (problem,) = queue_problems(log, receipts=twice)
    assert "received by x at 1.0000 and by y at 2.0000" in problem
    elsewhere = [Receipt("y", (3,), "a", 2.0)]
    assert "which the log last delivered to session 2" in queue_problems(log, receipts=elsewhere)[0]
    (problem,) = queue_problems(log, offers={"a": Outcome.FAILED})
    assert "the offer of 'a' failed, yet the log has it" in problem


# --- watches -------------------------------------------------------------------------------


W = "w"
WATCH_LOG = applied(
    (10, 1, MapPut(W, "a", "1"), None),
    (11, 1, MapPut(W, "b", "2"), None),
    (12, 1, MapDelete(W, "a"), True),
    (13, 1, MapDelete(W, "a"), False),  # nothing to delete: no change
    (14, 1, MapCompareAndSet(W, "b", "2", "3"), True),
)
CHANGES = [
    (1, 10, "put", "a", "1"),
    (2, 11, "put", "b", "2"),
    (4, 12, "delete", "a", None),
    (5, 14, "put", "b", "3"),
]


def watch_problems(
    watched: list[Any],
    changes: list[Any] = CHANGES,
    entries: dict[str, Any] | None = None,
    acknowledged: Sequence[tuple[str, Any]] = (),
    registered: int | None = 5,
) -> list[str]:
    entries = {"b": "3"} if entries is None else entries
    return check_watch(W, WATCH_LOG, changes, entries, acknowledged, watched, registered)


def test_a_watch_that_saw_every_change_once_in_order_passes() -> None:
    assert watch_problems(CHANGES, acknowledged=[("a", "1"), ("b", "2")]) == []
    # Registered after index 10: the first change is not owed to it.
    assert watch_problems(CHANGES[1:], registered=10) == []


@pytest.mark.parametrize(
    ("watched", "complaint"),
    [
        (CHANGES[:1] + CHANGES[2:], "where (2, 11, 'put', 'b', '2') comes (skipped"),
        (CHANGES[:2] + CHANGES[1:], "change (2, 11, 'put', 'b', '2') yielded 2 times"),
        ([CHANGES[1], CHANGES[0], *CHANGES[2:]], "skipped or out of order"),
        (CHANGES[:3], "yielded 3 of the 4 changes"),
        ([*CHANGES, (6, 15, "put", "c", "9")], "which is not a change after the watch's"),
    ],
)
def test_a_watch_that_skips_repeats_reorders_or_stops_is_caught(
    watched: list[Any], complaint: str
) -> None:
    (problem,) = watch_problems(watched)
    assert complaint in problem


def test_a_change_history_that_disagrees_with_the_log_or_the_state_is_caught() -> None:
    lost = [CHANGES[0], *CHANGES[2:]]  # the put at 11 is missing from the history
    problems = watch_problems(lost, changes=lost, acknowledged=[("b", "2")])
    assert any("applied at index 11 made ('put', 'b', '2'), which is not" in p for p in problems)
    assert any("acknowledged put b='2' is not a change" in p for p in problems)
    (problem,) = watch_problems(CHANGES, entries={"b": "3", "a": "1"})
    assert "replaying the change history gives {'b': '3'}" in problem
    extra = [*CHANGES, (6, 15, "expire", "b", None)]
    assert any("the command applied there made None" in p for p in watch_problems(extra, extra))


# --- the simulation ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 3])  # partitions, crashes, pauses
def test_seeds_of_the_resource_workload_pass(seed: int) -> None:
    result = run_simulation(seed, scenario="resources")
    assert result.ok, result.report()
    assert "resources" in result.trace.format(["resources"])


def test_a_lock_that_grants_two_waiters_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def hand_over_to_two(self: LockResource, host: Host) -> None:
        self.holder = None
        granted = 0
        while self.waiters and granted < 2:
            session, request = self.waiters.popleft()
            if not host.is_open(session):
                continue
            if granted == 0:
                self.holder = (session, request, host.index)
            host.publish(session, self.kind, self.name, request, host.index)
            granted += 1

    monkeypatch.setattr(LockResource, "_hand_over", hand_over_to_two)
    result = run_simulation(3, scenario="resources")
    assert not result.ok
    failures = "\n".join(result.failures())
    assert "was granted 2 times" in failures and "mutual exclusion" in failures


def test_infinity_marks_a_hold_to_the_end() -> None:
    log = applied((10, 1, LockAcquire(L, 1), 10))
    grants = lock_grants(L, log, [])
    assert hold_ends(L, grants, log, {}) == {Grant(10, 10, 1, 1): math.inf}


def test_seed_144_a_client_learns_its_session_expired_after_a_partition() -> None:
    """It failed: the watcher (RECOVER, session timeout 0.5 s, keep-alive budget 1 s) talks
    through member 1, which a partition leaves unanswered; after healing, each keep-alive goes
    first to the leader, which answers UNKNOWN_SESSION at once, but `_request_any` first
    switched the session to that member (`_switch_to`: a ConnectRequest, which the member holds
    for an election timeout, 1 s, waiting for the unknown session to appear) and the
    keep-alive's budget ran out before the verdict was raised. So the client stayed SUSPENDED
    for good ("the watcher's client was SUSPENDED in session 6, which the servers had closed"),
    never recovered its session, and its watch never yielded again. Now a member that answers
    UNKNOWN_SESSION is not switched to: the verdict is raised at once."""
    result = run_simulation(144, scenario="resources")
    assert result.ok, result.report()


def test_seed_1025_a_member_that_restarted_pushes_events_again() -> None:
    """It failed: the watcher's member restarted; the client's new connection to it sent the
    session's ConnectRequest, which the member (not yet caught up, no leader) could not accept,
    and the keep-alive that made the connection gave up first. The client still believed it
    talked through that member, whose keep-alive answers kept it CONNECTED, so no event came
    again ("yielded 15 of the 17 changes after its registration"). Now a reconnect that does
    not succeed leaves the client connected through no member, and the next answer connects it."""
    result = run_simulation(1025, scenario="resources")
    assert result.ok, result.report()


def test_seed_94079_a_refused_expiry_does_not_spin() -> None:
    """It failed ("stopped after 300s of CPU time (spinning?)"): the leader's session-expiry
    task, made deadline-driven, proposed a due session's expiry during a leadership transfer,
    which refuses proposals; it looked again at once, and again, so virtual time never reached
    the transfer's timeout. Now a refused proposal waits a quarter election timeout."""
    result = run_simulation(94079, scenario="resources", wall_limit=120)
    assert result.ok, result.report()


def test_seed_71005_the_final_queue_is_read_on_a_member_that_applied_everything() -> None:
    """It failed: member 3, demoted to RESERVE near the end, receives no more entries, and the
    check read the queue's final items on it (the first member in the cluster's table) at index
    921 while the others had applied 1109; every item polled after 921 was then "2 places at
    once". Now the final state is read on the member that applied the most."""
    result = run_simulation(71005, scenario="resources")
    assert result.ok, result.report()
