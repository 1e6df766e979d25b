"""The history recorder: what it records for each way an operation can end, and its reports."""

from __future__ import annotations

import math

import pytest

from copycat_trio.testing.history import (
    History,
    Operation,
    OpKind,
    Outcome,
    format_operations,
)
from copycat_trio.testing.linearizability import check


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_records_each_outcome() -> None:
    history = History()
    put = history.invoke(1, OpKind.PUT, "k", 5, time=0.0)
    get = history.invoke(2, OpKind.GET, "k", time=0.5)
    cas = history.invoke(3, OpKind.CAS, "k", [5, 6], time=0.7)
    delete = history.invoke("c4", OpKind.DELETE, "k", time=0.8)
    assert history.complete(put, None, time=1.0) == Operation(
        1, OpKind.PUT, "k", 5, 0.0, 1.0, Outcome.OK, None
    )
    assert history.complete(get, 5, time=2.0).result == 5
    failed = history.fail(cas, time=3.0)
    assert failed.outcome is Outcome.FAILED and failed.completed == 3.0
    assert failed.value == (5, 6)  # a CAS's (expected, new) is kept as a tuple
    unknown = history.unknown(delete)
    assert unknown.outcome is Outcome.UNKNOWN and unknown.completed is None
    assert unknown.effective_end == math.inf
    assert [op.process for op in history.operations()] == [1, 2, 3, "c4"]
    assert len(history) == 4


def test_operations_never_ended_are_unknown() -> None:
    history = History()
    history.invoke(1, OpKind.PUT, "k", 1, time=0)
    (op,) = history.operations()
    assert op.outcome is Outcome.UNKNOWN and op.completed is None


def test_times_default_to_the_clock() -> None:
    history = History(clock=FakeClock())
    token = history.invoke(1, OpKind.GET, "k")
    op = history.complete(token, None)
    assert (op.invoked, op.completed) == (1.0, 2.0)


def test_operations_and_groups_are_in_invocation_order() -> None:
    history = History()
    late = history.invoke(1, OpKind.PUT, "a", 1, time=5)
    early = history.invoke(2, OpKind.PUT, "b", 2, time=1)
    middle = history.invoke(3, OpKind.GET, "a", time=3)
    for token in (late, early, middle):
        history.complete(token, None, time=10)
    assert [op.invoked for op in history.operations()] == [1, 3, 5]
    groups = history.by_key()
    assert list(groups) == ["b", "a"]
    assert [op.invoked for op in groups["a"]] == [3, 5]


def test_each_operation_ends_once() -> None:
    history = History()
    token = history.invoke(1, OpKind.PUT, "k", 1, time=0)
    history.unknown(token)
    with pytest.raises(ValueError, match="already ended"):
        history.complete(token, None, time=1)
    with pytest.raises(ValueError, match="unknown token"):
        history.fail(7, time=1)


def test_rejects_malformed_operations() -> None:
    history = History()
    with pytest.raises(ValueError, match="expected, new"):
        history.invoke(1, OpKind.CAS, "k", 5, time=0)
    token = history.invoke(1, OpKind.CAS, "k", (1, 2), time=0)
    with pytest.raises(TypeError, match="bool"):
        history.complete(token, "yes", time=1)
    with pytest.raises(ValueError, match="before it was invoked"):
        Operation(1, OpKind.GET, "k", None, 5, 4, Outcome.OK, None)
    with pytest.raises(ValueError, match="completed"):
        Operation(1, OpKind.GET, "k", None, 5, None, Outcome.OK, None)


def test_format_is_one_line_per_operation_by_invocation() -> None:
    history = History()
    history.complete(history.invoke(2, OpKind.GET, "k", time=2), 7, time=3)
    history.invoke(1, OpKind.PUT, "k", 7, time=1)
    history.fail(history.invoke(3, OpKind.CAS, "k", (7, 8), time=4), time=4.5)
    history.complete(history.invoke("w", OpKind.DELETE, "k", time=6), 7, time=6.25)
    lines = history.format().splitlines()
    assert lines == [
        "[    1.000,         ?] p1 PUT 'k' = 7 UNKNOWN",
        "[    2.000,     3.000] p2 GET 'k' -> 7",
        "[    4.000,     4.500] p3 CAS 'k' 7->8 FAILED",
        "[    6.000,     6.250] w DELETE 'k' ok",
    ]
    assert format_operations(reversed(history.operations())) == history.format()
    assert str(history.operations()[0]) == lines[0]


def test_a_timeout_recorded_as_unknown_is_not_a_lost_write() -> None:
    # The write timed out but was applied; a later read sees it. Recorded as unknown (right),
    # the history passes; recorded as failed (what Copycat's Jepsen client did), it cannot.
    for outcome, ok in ((Outcome.UNKNOWN, True), (Outcome.FAILED, False)):
        history = History()
        token = history.invoke(1, OpKind.PUT, "k", "x", time=0)
        if outcome is Outcome.UNKNOWN:
            history.unknown(token)
        else:
            history.fail(token, time=5)
        history.complete(history.invoke(2, OpKind.GET, "k", time=10), "x", time=11)
        assert check(history).ok is ok
