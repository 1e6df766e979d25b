"""The session rules, pure: deduplication by sequence, sequencing, expiry by log time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from copycat_trio.core.sessions import (
    CachedResult,
    CommandDecision,
    Sequencing,
    SessionTable,
    clamp_timeout,
    classify_sequence,
)


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=200))
def test_each_sequence_applies_once_whatever_the_arrival_order(arrivals: list[int]) -> None:
    """Deliver command sequences with duplicates, gaps and reordering, as a leader that holds
    early arrivals would: each sequence number is applied at most once, in increasing order,
    and a duplicate gets the cached result of the original."""
    table = SessionTable()
    session = table.register(index=1, client="c", timeout=1000, now=0)
    applied: list[int] = []
    answers: dict[int, object] = {}
    held: set[int] = set()
    sequenced = 0
    for sequence in arrivals:
        kind = classify_sequence(sequence, sequenced, max_queue=10)
        if kind is Sequencing.REJECT:
            continue
        if kind is Sequencing.WAIT:
            held.add(sequence)
            continue
        ready = [sequence]
        sequenced = max(sequenced, sequence)
        while sequenced + 1 in held:
            held.discard(sequenced + 1)
            sequenced += 1
            ready.append(sequenced)
        for seq in ready:
            decision = table.decide(1, seq)
            if decision is CommandDecision.APPLY:
                applied.append(seq)
                table.record(session, seq, CachedResult(index=seq, event_index=0, result=seq * 10))
                answers[seq] = seq * 10
            else:
                assert decision is CommandDecision.DUPLICATE
                cached = session.results.get(seq)
                assert cached is not None and cached.result == answers[seq]
    assert applied == sorted(set(applied))
    assert applied == list(range(1, len(applied) + 1))  # no gaps ever applied


@given(
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=1, max_value=20),
)
def test_classify_sequence(sequence: int, sequenced: int, max_queue: int) -> None:
    kind = classify_sequence(sequence, sequenced, max_queue)
    if sequence <= sequenced + 1:
        assert kind is Sequencing.NOW
    elif sequence - sequenced > max_queue:
        assert kind is Sequencing.REJECT
    else:
        assert kind is Sequencing.WAIT


def test_keep_alive_frees_acknowledged_results_and_events() -> None:
    from copycat_trio.protocol.messages import Event

    table = SessionTable()
    session = table.register(index=5, client="c", timeout=1000, now=0)
    for seq in (1, 2, 3):
        table.record(session, seq, CachedResult(index=10 + seq, event_index=0))
        table.publish(session, 10 + seq, Event("e", seq))
    assert table.keep_alive(5, command_sequence=2, event_index=12, now=50)
    assert sorted(session.results) == [3]
    assert [b.index for b in session.events] == [13]
    assert session.events[0].previous_index == 12
    assert not table.keep_alive(99, 0, 0, 0)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3000)), max_size=50))
def test_expiry_by_log_time(keepalives: list[tuple[int, int]]) -> None:
    table = SessionTable()
    for i in range(1, 6):
        table.register(index=i, client=str(i), timeout=1000, now=0)
    last = dict.fromkeys(range(1, 6), 0)
    now = 0
    for session_id, step in keepalives:
        now += step
        if session_id in last:
            table.keep_alive(session_id, 0, 0, now)
            last[session_id] = now
    expired = {s.id for s in table.expired(now)}
    assert expired == {i for i, t in last.items() if now - t > 1000}
    table.touch_all(now)
    assert table.expired(now) == []


@given(
    st.lists(st.tuples(st.integers(100, 3000), st.integers(0, 5000)), min_size=1, max_size=20),
    st.sets(st.integers(1, 20)),
)
def test_next_expiry_is_the_first_log_time_a_session_expires(
    sessions: list[tuple[int, int]], excluding: set[int]
) -> None:
    """What the leader sleeps until: nothing outside `excluding` has expired a millisecond
    before it, something has at it; a keep-alive only moves it later."""
    table = SessionTable()
    for i, (timeout, registered) in enumerate(sessions, start=1):
        table.register(index=i, client=str(i), timeout=timeout, now=registered)
    due = table.next_expiry(excluding)
    if due is None:
        assert set(range(1, len(sessions) + 1)) <= excluding
        return

    def expired_at(now: int) -> set[int]:
        return {s.id for s in table.expired(now)} - excluding

    assert expired_at(due - 1) == set() and expired_at(due) != set()
    first = next(s for s in table.sessions.values() if s.expires_at == due)
    table.keep_alive(first.id, 0, 0, due - 1)
    later = table.next_expiry(excluding)
    assert later is not None and later >= due


def test_next_expiry_without_sessions() -> None:
    assert SessionTable().next_expiry() is None


def test_timeout_clamped() -> None:
    assert clamp_timeout(0, 5000) == 5000
    assert clamp_timeout(1, 5000) == 100
    assert clamp_timeout(10**12, 5000) == 24 * 3600 * 1000
