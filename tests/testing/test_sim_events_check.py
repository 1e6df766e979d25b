"""The event workload's checks (copycat_trio/testing/event_workload.py): per session, in order,
no duplicates, none skipped, delivered in the right session, answers after their events, and
exactly once across sessions."""

from __future__ import annotations

from copycat_trio.protocol.messages import Event
from copycat_trio.testing.event_workload import Answer, EventRecord, check_events
from copycat_trio.testing.invariants import Applied
from copycat_trio.testing.sim_machine import Emit, Firing

SESSION = 7


def _emit(index: int, value: str, targets: list[int]) -> Applied:
    return Applied(1, index, SESSION, index, Emit("e0", value), [index, targets])


APPLIED = [_emit(10, "a", [SESSION]), _emit(12, "b", [SESSION]), _emit(15, "c", [SESSION])]
# Fired just before entry 15 applied (so under index 15, ahead of emit@15).
RING = Firing(after=15, due=500, timer=3, name="t0a", effect=["ring", 1, [SESSION]], number=4)


def _record(tokens: list[str], answers: tuple[Answer, ...] = ()) -> EventRecord:
    return EventRecord("ev0", received={SESSION: tokens}, answers=list(answers))


def test_every_event_in_publish_order_passes() -> None:
    record = _record(["emit@10", "emit@12", "ring#4", "emit@15"], (Answer(15, SESSION, {7: 4}),))
    assert check_events(APPLIED, [RING], [record]) == ([], [])


def test_a_duplicate_is_reported() -> None:
    (problem,), _ = check_events(APPLIED, [], [_record(["emit@10", "emit@10"])])
    assert "emit@10 was delivered twice" in problem


def test_a_skipped_event_is_reported() -> None:
    # The timer's event, published under index 15 just before emit@15, never came.
    (problem,), _ = check_events(APPLIED, [RING], [_record(["emit@10", "emit@12", "emit@15"])])
    assert "received emit@15 as its event #3, but the next one published to it was ring#4" in (
        problem
    )


def test_events_out_of_order_are_reported() -> None:
    (problem,), _ = check_events(APPLIED, [], [_record(["emit@12", "emit@10"])])
    assert "received emit@12 as its event #1" in problem


def test_an_event_never_published_to_the_session_is_reported() -> None:
    (problem,), _ = check_events(APPLIED, [], [_record(["emit@11"])])
    assert "emit@11, which was never published to it" in problem


def test_an_event_delivered_in_another_session_is_reported() -> None:
    record = EventRecord("ev0")
    record.deliver(8, Event("emit", {"kind": "emit", "index": 10, "to": SESSION}))
    problems, _ = check_events(APPLIED, [], [record])
    assert any("for session 7 was delivered in session 8" in p for p in problems), problems


def test_an_answer_before_its_own_event_is_late() -> None:
    record = _record(["emit@10"], (Answer(12, SESSION, {SESSION: 1}),))
    problems, late = check_events(APPLIED, [], [record])
    assert problems == []
    (problem,) = late
    assert "before event emit@12" in problem


def test_a_ring_after_the_answered_index_is_not_owed_to_the_answer() -> None:
    record = _record(["emit@10", "emit@12"], (Answer(12, SESSION, {SESSION: 2}),))
    assert check_events(APPLIED, [RING], [record]) == ([], [])


def test_an_answer_after_its_session_was_replaced_owes_nothing() -> None:
    record = _record(["emit@10"], (Answer(15, 9, {SESSION: 1}),))
    assert check_events(APPLIED, [], [record]) == ([], [])


def test_an_emit_applied_twice_across_sessions_is_reported() -> None:
    applied = [*APPLIED, Applied(1, 20, 9, 1, Emit("e0", "a"), [20, []])]
    (problem,), _ = check_events(applied, [], [])
    assert "Emit of 'a' was applied at log indices [10, 20]" in problem
