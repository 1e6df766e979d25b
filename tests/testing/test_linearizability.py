"""The linearizability checker: it accepts what a register could do and rejects known anomalies.

Hand-built histories cover each anomaly; Hypothesis generates linearizable histories by running a
register at random atomic points inside random intervals (they must pass), corrupts them (they
must fail), and compares the checker with brute force on small arbitrary histories.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copycat_trio.testing.history import History, Operation, OpKind, Outcome
from copycat_trio.testing.linearizability import (
    CheckResult,
    CheckStatus,
    check,
    check_key,
)

OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN


def put(p: int, value: Any, start: float, end: float | None, outcome: Outcome = OK) -> Operation:
    return Operation(p, OpKind.PUT, "k", value, start, end, outcome)


def get(p: int, result: Any, start: float, end: float | None, outcome: Outcome = OK) -> Operation:
    return Operation(p, OpKind.GET, "k", None, start, end, outcome, result)


def delete(p: int, start: float, end: float | None, outcome: Outcome = OK) -> Operation:
    return Operation(p, OpKind.DELETE, "k", None, start, end, outcome)


def cas(
    p: int,
    expected: Any,
    new: Any,
    result: bool | None,
    start: float,
    end: float | None,
    outcome: Outcome = OK,
) -> Operation:
    return Operation(p, OpKind.CAS, "k", (expected, new), start, end, outcome, result)


def put_unknown(p: int, value: Any, start: float) -> Operation:
    return put(p, value, start, None, UNKNOWN)


def assert_linearizable(ops: Sequence[Operation], initial: Any = None) -> CheckResult:
    result = check_key(ops, initial)
    assert result.ok, str(result)
    assert result.status is CheckStatus.LINEARIZABLE
    assert_valid_linearization(ops, result, initial)
    return result


def assert_violation(ops: Sequence[Operation], initial: Any = None) -> CheckResult:
    result = check_key(ops, initial)
    assert result.violation, str(result)
    assert not result.ok
    assert "NOT linearizable" in result.explanation
    return result


def apply(op: Operation, state: Any) -> tuple[bool, Any]:
    """The register model, written independently of the checker: (possible?, new value)."""
    if op.kind is OpKind.PUT:
        return True, op.value
    if op.kind is OpKind.DELETE:
        return True, None
    if op.kind is OpKind.GET:
        return op.result == state, state
    expected, new = op.value
    if op.outcome is UNKNOWN:
        return True, new if state == expected else state
    if op.result:
        return state == expected, new
    return state != expected, state


def assert_valid_linearization(ops: Sequence[Operation], result: CheckResult, initial: Any) -> None:
    """The order the checker found obeys real time and the model, and places every completed op."""
    order = result.linearization
    completed = [op for op in ops if op.outcome is OK]
    assert sorted(map(id, (op for op in order if op.outcome is OK))) == sorted(map(id, completed))
    assert all(op.outcome is not FAILED for op in order)
    for earlier, later in itertools.combinations(order, 2):
        assert not later.effective_end < earlier.invoked, (earlier, later)
    state = initial
    for op in order:
        possible, state = apply(op, state)
        assert possible, op


def brute_force(ops: Sequence[Operation], initial: Any = None) -> bool:
    """Linearizable? Every subset of unknown writes, every permutation (small histories only)."""
    relevant = [
        op
        for op in ops
        if op.outcome is OK or (op.outcome is UNKNOWN and op.kind is not OpKind.GET)
    ]
    completed = [op for op in relevant if op.outcome is OK]
    maybe = [op for op in relevant if op.outcome is UNKNOWN]
    for n in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, n):
            for order in itertools.permutations([*completed, *chosen]):
                if any(
                    later.effective_end < earlier.invoked
                    for earlier, later in itertools.combinations(order, 2)
                ):
                    continue
                state, possible = initial, True
                for op in order:
                    possible, state = apply(op, state)
                    if not possible:
                        break
                if possible:
                    return True
    return False


# Accepted histories


def test_empty_and_trivial_histories_pass() -> None:
    assert check([]).ok
    assert check([]).keys == 0
    assert_linearizable([])
    assert_linearizable([get(1, None, 0, 1)])
    assert_linearizable([get(1, 5, 0, 1)], initial=5)


def test_sequential_history_passes() -> None:
    assert_linearizable(
        [
            put(1, 1, 0, 1),
            get(1, 1, 2, 3),
            cas(1, 1, 2, True, 4, 5),
            cas(1, 1, 3, False, 6, 7),
            get(1, 2, 8, 9),
            delete(1, 10, 11),
            get(1, None, 12, 13),
            cas(1, None, 4, True, 14, 15),
            get(1, 4, 16, 17),
        ]
    )


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    # Two overlapping writes; reads after both see the one that went second, either way.
    for last in (1, 2):
        assert_linearizable([put(1, 1, 0, 10), put(2, 2, 1, 9), get(3, last, 11, 12)])
    # A read overlapping a write may see the old value or the new.
    for seen in (None, 1):
        assert_linearizable([put(1, 1, 0, 10), get(2, seen, 2, 3)])
    # Reads concurrent with each other and a write: the old value then the new is fine...
    assert_linearizable([put(1, 1, 0, 10), get(2, None, 1, 5), get(3, 1, 2, 6)])
    # ...and so is the new then the old, since the two reads overlap each other.
    assert_linearizable([put(1, 1, 0, 10), get(2, 1, 1, 5), get(3, None, 2, 6)])


def test_touching_intervals_count_as_concurrent() -> None:
    # The read is invoked exactly when the write completes: either order is allowed.
    assert_linearizable([put(1, 1, 0, 1), put(1, 2, 1, 2), get(2, 1, 2, 3)])


def test_unknown_write_may_take_effect() -> None:
    assert_linearizable([put(1, 0, 0, 1), put_unknown(2, 7, 2), get(3, 7, 3, 4)])


def test_unknown_write_may_never_take_effect() -> None:
    assert_linearizable([put(1, 0, 0, 1), put_unknown(2, 7, 2), get(3, 0, 3, 4), get(3, 0, 5, 6)])


def test_unknown_write_may_take_effect_long_after_the_client_gave_up() -> None:
    # p2 timed out at about 3 and went on; its write lands after p3's two later reads.
    assert_linearizable(
        [
            put(1, 0, 0, 1),
            put_unknown(2, 7, 2),
            put(2, 8, 4, 5),
            get(3, 8, 6, 7),
            get(3, 7, 100, 101),
        ]
    )


def test_unknown_cas_and_delete_may_or_may_not_apply() -> None:
    base = [put(1, 0, 0, 1), cas(2, 0, 5, None, 2, None, UNKNOWN)]
    assert_linearizable([*base, get(3, 5, 3, 4)])
    assert_linearizable([*base, get(3, 0, 3, 4)])
    base = [put(1, 0, 0, 1), delete(2, 2, None, UNKNOWN)]
    assert_linearizable([*base, get(3, None, 3, 4)])
    assert_linearizable([*base, get(3, 0, 3, 4), get(3, None, 5, 6)])


def test_unknown_write_of_an_unread_value_can_explain_a_failed_cas() -> None:
    # CAS(0->1) says False though 0 was written: only the unknown write of 9 explains it.
    assert_linearizable([put(1, 0, 0, 1), put_unknown(2, 9, 2), cas(3, 0, 1, False, 3, 4)])


def test_failed_and_unknown_read_operations_are_ignored() -> None:
    result = assert_linearizable(
        [
            put(1, 1, 0, 1),
            put(2, 5, 2, 3, FAILED),
            get(3, "anything", 4, None, UNKNOWN),
            get(1, 1, 5, 6),
        ]
    )
    assert result.ignored == 2
    assert result.operations == 2


def test_keys_are_checked_independently() -> None:
    history = History()
    for key, value in (("a", 1), ("b", 2)):
        history.complete(history.invoke(1, OpKind.PUT, key, value, time=0), None, time=1)
        history.complete(history.invoke(2, OpKind.GET, key, time=2), value, time=3)
    result = check(history)
    assert result.ok and result.keys == 2 and len(result.per_key) == 2
    assert check(history, initial={"a": 1}).ok
    # A read of key "a" must not be explained by a write to "b".
    history.complete(history.invoke(3, OpKind.GET, "a", time=4), 2, time=5)
    result = check(history)
    assert result.violation and result.key == "a"
    assert [r.ok for r in result.per_key] == [False, True]


def test_values_compare_by_equality_and_lists_equal_tuples() -> None:
    # CBOR turns tuples into lists, so the checker counts a list equal to a tuple (unlike ==).
    assert check_key([put(1, (1, 2), 0, 1), get(2, [1, 2], 2, 3)]).ok
    assert check_key([put(1, {"a": [1]}, 0, 1), get(2, {"a": (1,)}, 2, 3)]).ok
    assert_linearizable([put(1, {"a": [1]}, 0, 1), get(2, {"a": [1]}, 2, 3)])
    assert_linearizable([put(1, 1, 0, 1), get(2, 1.0, 2, 3)])
    assert_violation([put(1, {"a": [1]}, 0, 1), get(2, {"a": [2]}, 2, 3)])


# Rejected histories: the anomalies a broken Raft implementation produces


def test_rejects_stale_read() -> None:
    # A read that starts after PUT 2 completed returns the older 1.
    assert_violation([put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, 1, 4, 5)])
    # Also when the new write was concurrent with an earlier read that already saw it.
    assert_violation([put(1, 1, 0, 1), put(1, 2, 2, 10), get(2, 2, 3, 4), get(3, 1, 5, 6)])


def test_rejects_lost_write() -> None:
    # PUT 2 was acknowledged, yet every later read sees the value it overwrote.
    assert_violation(
        [put(1, 1, 0, 1), put(2, 2, 2, 3), get(3, 1, 4, 5), get(3, 1, 6, 7), get(1, 1, 8, 9)]
    )
    # Two concurrent acknowledged writes; reads afterwards see 3, then the older 1 again.
    assert_violation(
        [put(1, 1, 0, 1), put(1, 2, 2, 5), put(2, 3, 3, 4), get(3, 3, 6, 7), get(3, 1, 8, 9)]
    )


def test_rejects_resurrection_after_overwrite() -> None:
    # 1 is overwritten by 2 (read back), then 1 reappears with no write of it in between.
    assert_violation([put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, 2, 4, 5), get(2, 1, 6, 7)])
    # Same after a delete.
    assert_violation([put(1, 1, 0, 1), delete(1, 2, 3), get(2, None, 4, 5), get(2, 1, 6, 7)])


def test_rejects_double_application_of_an_unknown_write() -> None:
    # The timed-out PUT 1 took effect (read at 1-2), was overwritten, and must not take effect
    # a second time: "unknown" allows once or never, not twice.
    assert_violation(
        [
            put_unknown(1, 1, 0),
            get(2, 1, 1, 2),
            put(2, 2, 3, 4),
            get(2, 2, 5, 6),
            get(3, 1, 7, 8),
        ]
    )


def test_rejects_two_concurrent_cas_both_succeeding() -> None:
    assert_violation([put(1, 0, 0, 1), cas(1, 0, 1, True, 2, 5), cas(2, 0, 1, True, 3, 6)])
    # With unknown writes around that never write 0, still impossible.
    assert_violation(
        [
            put(1, 0, 0, 1),
            put_unknown(3, 1, 1.5),
            cas(1, 0, 1, True, 2, 5),
            cas(2, 0, 1, True, 3, 6),
        ]
    )


def test_rejects_cas_false_when_the_value_matched_throughout() -> None:
    assert_violation([put(1, 0, 0, 1), cas(2, 0, 1, False, 2, 3), get(3, 0, 4, 5)])
    # A concurrent write of the same value does not help.
    assert_violation([put(1, 0, 0, 1), put(3, 0, 1.5, 4), cas(2, 0, 1, False, 2, 3)])


def test_rejects_cas_success_when_the_value_never_matched() -> None:
    assert_violation([put(1, 0, 0, 1), cas(2, 5, 6, True, 2, 3)])
    # A concurrent write of another value does not make 5 appear.
    assert_violation([put(1, 0, 0, 1), put(3, 7, 2, 4), cas(2, 5, 6, True, 2, 3)])
    # Nor does a FAILED write of 5: it proves it never took effect.
    assert_violation([put(1, 0, 0, 1), put(3, 5, 1, 2, FAILED), cas(2, 5, 6, True, 3, 4)])


def test_rejects_read_of_a_value_never_written() -> None:
    assert_violation([get(1, 42, 0, 1)])
    assert_violation([put(1, 1, 0, 1), put(2, 2, 0, 1), get(3, 42, 0, 5)])
    # A failed write's value counts as never written.
    assert_violation([put(1, 42, 0, 1, FAILED), get(2, 42, 2, 3)])


def test_rejects_read_your_writes_violation() -> None:
    # p1 writes 1, then p1 itself reads the initial absent value.
    assert_violation([put(1, 1, 0, 1), get(1, None, 2, 3)])
    # Concurrent writers of other values do not excuse it.
    assert_violation([put(2, 2, 0, 5), put(1, 1, 1, 2), get(1, None, 3, 4)])


def test_rejects_unknown_write_read_before_it_was_invoked() -> None:
    ops = [put(1, 0, 0, 1), get(2, 7, 2, 3), put_unknown(3, 7, 4)]
    assert_violation(ops)
    # The same read overlapping the invocation is fine.
    assert_linearizable([put(1, 0, 0, 1), get(2, 7, 2, 5), put_unknown(3, 7, 4)])


def test_violation_report_names_the_operation_that_could_not_be_placed() -> None:
    result = check([put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, 1, 4, 5)])
    text = str(result)
    assert text.startswith("NOT LINEARIZABLE (key 'k')")
    assert "places 2 of the 3 completed operations" in text
    assert "p2 GET 'k' -> 1" in text
    assert "read 1 but the value was 2" in text


def test_budget_exhaustion_is_unknown_not_a_pass() -> None:
    # Many concurrent writes, then reads of two of them: no order can explain both, but the
    # search must try many orders to find out.
    ops = [put(p, p, 0, 10) for p in range(12)] + [get(99, 0, 11, 12), get(99, 1, 13, 14)]
    result = check_key(ops, max_states=50)
    assert result.status is CheckStatus.UNKNOWN
    assert not result.ok and not result.violation
    assert result.states <= 50
    assert result.explanation.startswith("UNKNOWN")
    whole = check(ops, max_states=50)
    assert whole.status is CheckStatus.UNKNOWN and not whole.ok
    assert check_key(ops).violation  # with the default budget it is decided
    # A violation on another key outranks UNKNOWN.
    other = Operation(1, OpKind.GET, "other", None, 0, 1, OK, 5)
    assert check([*ops, other], max_states=50).violation


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one key"):
        check_key([put(1, 1, 0, 1), Operation(1, OpKind.GET, "j", None, 0, 1, OK, None)])
    with pytest.raises(ValueError, match="positive"):
        check_key([put(1, 1, 0, 1)], max_states=0)


# Generated histories


@st.composite
def linearizable_histories(draw: st.DrawFn, max_ops: int = 24) -> list[Operation]:
    """A register run at random atomic points, each inside its operation's random interval.

    Some writes time out (UNKNOWN): their effect lands at a random time after invocation, even
    after the client moved on, or never. Some fail (never applied), some reads time out.
    """
    processes = draw(st.integers(1, 6))
    specs = draw(
        st.lists(
            st.tuples(
                st.integers(0, processes - 1),
                st.sampled_from(["put", "get", "get", "cas", "delete"]),
                st.integers(0, 3),
                st.one_of(st.none(), st.integers(0, 3)),
                st.integers(0, 3),  # gap before invocation
                st.integers(0, 3),  # invocation to atomic point
                st.integers(0, 3),  # atomic point to completion
                st.sampled_from(["ok"] * 6 + ["unknown", "failed"]),
                st.booleans(),  # an unknown op's effect happened
                st.integers(0, 40),  # how late it happened
            ),
            max_size=max_ops,
        )
    )
    return simulate(specs)


def simulate(specs: Sequence[tuple[Any, ...]]) -> list[Operation]:
    clocks: dict[int, float] = {}
    planned = []
    for seq, (proc, kind, value, expected, gap, d1, d2, fate, applied, late) in enumerate(specs):
        invoked = clocks.get(proc, 0) + gap
        point = invoked + d1
        completed = point + d2
        clocks[proc] = completed
        if fate == "unknown":
            point += late
        planned.append((point, seq, proc, kind, value, expected, invoked, completed, fate, applied))
    state: Any = None
    ops: list[tuple[int, Operation]] = []
    for _point, seq, proc, kind, value, expected, invoked, completed, fate, applied in sorted(
        planned, key=lambda p: p[:2]
    ):
        takes_effect = fate == "ok" or (fate == "unknown" and applied)
        result: Any = None
        if kind == "put":
            op_kind, arg = OpKind.PUT, value
            if takes_effect:
                state = value
        elif kind == "delete":
            op_kind, arg = OpKind.DELETE, None
            if takes_effect:
                state = None
        elif kind == "get":
            op_kind, arg, result = OpKind.GET, None, state
        else:
            op_kind, arg = OpKind.CAS, (expected, value)
            result = state == expected
            if takes_effect and result:
                state = value
        if fate != "ok":
            result = None
        outcome = {"ok": OK, "unknown": UNKNOWN, "failed": FAILED}[fate]
        end = None if fate == "unknown" else completed
        ops.append((seq, Operation(proc, op_kind, "k", arg, invoked, end, outcome, result)))
    return [op for _, op in sorted(ops, key=lambda pair: pair[0])]


@settings(max_examples=300, deadline=None)
@given(linearizable_histories())
def test_generated_linearizable_histories_pass(ops: list[Operation]) -> None:
    assert_linearizable(ops)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(linearizable_histories(), st.data())
def test_reading_a_value_never_written_is_caught(ops: list[Operation], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(ops) if op.kind is OpKind.GET and op.outcome is OK]
    if not reads:
        ops = [*ops, get(0, None, 1000, 1001)]  # ensure there is a read to corrupt
        reads = [len(ops) - 1]
    i = data.draw(st.sampled_from(reads))
    old = ops[i]
    ops[i] = Operation(
        old.process, old.kind, old.key, None, old.invoked, old.completed, OK, "never written"
    )
    result = assert_violation(ops)
    assert "'never written'" in result.explanation


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """Small histories with arbitrary results: linearizable or not, brute force decides."""
    ops = []
    for proc in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(OpKind))
        outcome = draw(st.sampled_from([OK, OK, OK, UNKNOWN, FAILED]))
        invoked = draw(st.integers(0, 8))
        completed = None if outcome is UNKNOWN else invoked + draw(st.integers(0, 5))
        value: Any = None
        result: Any = None
        if kind is OpKind.PUT:
            value = draw(st.integers(0, 2))
        elif kind is OpKind.GET:
            result = draw(st.one_of(st.none(), st.integers(0, 2)))
        elif kind is OpKind.CAS:
            value = (draw(st.one_of(st.none(), st.integers(0, 2))), draw(st.integers(0, 2)))
            result = draw(st.booleans()) if outcome is OK else None
        ops.append(Operation(proc, kind, "k", value, invoked, completed, outcome, result))
    return ops


@settings(max_examples=1500, deadline=None)
@given(arbitrary_histories(), st.one_of(st.none(), st.integers(0, 2)))
def test_agrees_with_brute_force(ops: list[Operation], initial: Any) -> None:
    result = check_key(ops, initial)
    assert result.status is not CheckStatus.UNKNOWN
    assert result.ok == brute_force(ops, initial), str(result)
    if result.ok:
        assert_valid_linearization(ops, result, initial)


# Performance


def random_specs(
    rng: random.Random, processes: int, per_process: int, unknown_percent: int
) -> list[tuple[Any, ...]]:
    """Round-robin specs for `simulate`: a busy register contended over five values, as in
    Jepsen's CAS-register test; 2% of operations fail, `unknown_percent`% time out."""
    specs = []
    for _ in range(per_process):
        for proc in range(processes):
            kind = rng.choice(["put", "get", "get", "cas", "delete"])
            weights = [98 - unknown_percent, unknown_percent, 2]
            fate = rng.choices(["ok", "unknown", "failed"], weights)[0]
            specs.append(
                (
                    proc,
                    kind,
                    rng.randrange(5),
                    rng.choice([None, 0, 1, 2, 3, 4]),
                    rng.uniform(0, 2),
                    rng.uniform(0, 3),
                    rng.uniform(0, 3),
                    fate,
                    rng.random() < 0.5,
                    rng.uniform(0, 30),
                )
            )
    return specs


def timed_check(ops: list[Operation]) -> tuple[CheckResult, float]:
    start = time.perf_counter()
    result = check_key(ops)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"took {elapsed:.1f}s"  # a fail-safe, not a benchmark
    return result, elapsed


@pytest.mark.parametrize(("processes", "per_process"), [(5, 400), (10, 200)])
@pytest.mark.parametrize("seed", range(3))
def test_two_thousand_operations_on_one_key_check_quickly(
    processes: int, per_process: int, seed: int
) -> None:
    ops = simulate(random_specs(random.Random(seed), processes, per_process, unknown_percent=4))
    assert len(ops) == 2000
    result, elapsed = timed_check(ops)
    assert result.ok, str(result)
    print(f"{processes}x{per_process} seed {seed}: {elapsed * 1000:.0f} ms, {result.states} states")


@pytest.mark.parametrize("seed", range(3))
def test_a_late_corrupted_read_is_decided(seed: int) -> None:
    # Without unknown outcomes, any wrong read near the end is decided by searching (nearly)
    # every order of the whole history; its value is one that was written (no shortcut).
    ops = simulate(random_specs(random.Random(seed), 5, 400, unknown_percent=0))
    reads = [i for i, op in enumerate(ops) if op.kind is OpKind.GET and op.outcome is OK]
    old = ops[reads[-5]]
    wrong = 1 if old.result != 1 else 2
    ops[reads[-5]] = Operation(
        old.process, old.kind, "k", None, old.invoked, old.completed, OK, wrong
    )
    result, elapsed = timed_check(ops)
    assert result.status is not CheckStatus.UNKNOWN
    assert result.states > 0
    print(f"corrupted seed {seed}: {result.status.name} in {elapsed * 1000:.0f} ms")


def test_effective_end_of_unknown_is_infinite() -> None:
    assert put_unknown(1, 1, 5).effective_end == math.inf
    assert put(1, 1, 5, 6).effective_end == 6
