"""The sequencing rules, pure: a leader never appends a session's command past a gap, however
its proposals are refused, and a server never applies one past a gap (issue 10, bug 1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from copycat_trio.core.sessions import (
    CommandDecision,
    Sequencing,
    SessionSequencer,
    SessionTable,
    decide_command,
)


def test_decide_command_applies_in_order_and_never_past_a_gap() -> None:
    assert decide_command(4, 5) is CommandDecision.APPLY
    assert decide_command(4, 4) is CommandDecision.DUPLICATE
    assert decide_command(4, 1) is CommandDecision.DUPLICATE
    assert decide_command(4, 6) is CommandDecision.GAP
    assert decide_command(0, 1) is CommandDecision.APPLY
    assert decide_command(0, 2) is CommandDecision.GAP


def test_session_table_refuses_a_gap_without_moving_the_sequence() -> None:
    table = SessionTable()
    session = table.register(index=1, client="c", timeout=1000, now=0)
    assert table.decide(1, 2) is CommandDecision.GAP
    assert session.command_sequence == 0
    assert table.decide(1, 1) is CommandDecision.APPLY
    assert table.decide(7, 1) is CommandDecision.UNKNOWN_SESSION


def test_a_refused_command_holds_back_the_one_queued_behind_it() -> None:
    # N and N+1 handed to the loop back to back; the loop refuses N (a transfer began).
    sequencer = SessionSequencer(term=3, appended=4)
    assert sequencer.classify(5, max_queue=10) is Sequencing.NOW
    sequencer.queue(5)
    assert sequencer.classify(6, max_queue=10) is Sequencing.NOW
    sequencer.queue(6)
    sequencer.refused()  # 5: not appended
    assert not sequencer.may_append(6, term=3)  # so 6, behind it in the inbox, is not either
    sequencer.refused()
    # The transfer timed out; the retry of 6 arrives before the retry of 5: it waits.
    assert sequencer.classify(6, max_queue=10) is Sequencing.WAIT
    assert sequencer.classify(5, max_queue=10) is Sequencing.NOW
    sequencer.queue(5)
    assert sequencer.may_append(5, term=3)
    sequencer.appended_one(5)
    assert sequencer.classify(6, max_queue=10) is Sequencing.NOW
    assert sequencer.may_append(6, term=3)


def test_a_sequencer_of_an_earlier_term_appends_nothing() -> None:
    sequencer = SessionSequencer(term=3, appended=4)
    assert sequencer.may_append(5, term=3)
    assert not sequencer.may_append(5, term=5)


# One step of a leader's life with one session: a request for a sequence arrives, the raft loop
# handles the oldest queued proposal (appending it unless told to refuse, as during a transfer),
# or the early arrivals held waiting give up (their request timed out).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(min_value=1, max_value=6)),
        st.tuples(st.just("loop"), st.booleans()),
        st.tuples(st.just("give_up"), st.just(0)),
    ),
    max_size=300,
)


@settings(max_examples=500)
@given(steps, st.integers(min_value=0, max_value=2))
def test_whatever_is_refused_the_log_has_no_gap(script: list[tuple[str, int]], start: int) -> None:
    sequencer = SessionSequencer(term=1, appended=start)
    inbox: list[int] = []
    held: list[int] = []
    log: list[int] = []

    def release_held() -> None:
        for sequence in sorted(held):
            if sequencer.classify(sequence, max_queue=3) is Sequencing.NOW:
                held.remove(sequence)
                sequencer.queue(sequence)
                inbox.append(sequence)

    for action, value in script:
        if action == "arrive":
            kind = sequencer.classify(value, max_queue=3)
            if kind is Sequencing.NOW:
                sequencer.queue(value)
                inbox.append(value)
            elif kind is Sequencing.WAIT:
                held.append(value)
        elif action == "loop" and inbox:
            sequence = inbox.pop(0)
            refuse = bool(value)
            if not refuse and sequencer.may_append(sequence, term=1):
                log.append(sequence)
                sequencer.appended_one(sequence)
            else:
                sequencer.refused()
        elif action == "give_up":
            held.clear()
        release_held()
        assert sequencer.appended <= sequencer.queued

    # Every appended command comes right after what was appended before it (or repeats one).
    highest = start
    for sequence in log:
        assert sequence <= highest + 1, f"{sequence} appended after {highest}: {log}"
        highest = max(highest, sequence)
    # So a server applies each in order, once, and never meets a gap.
    applied = start
    for sequence in log:
        decision = decide_command(applied, sequence)
        assert decision is not CommandDecision.GAP
        if decision is CommandDecision.APPLY:
            applied = sequence
    assert applied == highest
