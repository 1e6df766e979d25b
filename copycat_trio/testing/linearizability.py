"""A linearizability checker for key-value histories, after Knossos and Porcupine.

`check(history)` decides whether the operations clients saw could have happened one at a time, in
some order consistent with real time (an operation that completed before another was invoked
comes first), on one register per key. Keys are independent registers, so each is checked alone
(P-compositionality); a violation spanning keys (say, a transaction) is out of scope. Values are
compared with ==, except that a list equals a tuple with equal items (CBOR turns one into the
other); touching intervals (one completes exactly when the other is invoked) count as concurrent.

The search is Wing & Gong's backtracking over orders, with Lowe's memoization of explored (placed
operations, register value) states and Porcupine's doubly linked list of call and return events:
the candidates to take effect next are the calls before the first pending return. Operations of
unknown outcome have no return and need never be placed (one placed after everything else is the
same as one that never happened). Unbounded, they would multiply the states, so the search keeps
them in a second list and places one only where it changes the value to one that the next
operation needs (any linearization can be rearranged so); interchangeable ones in invocation
order; and treats a state reached with fewer of them placed as covering the same state with more.
A read of a value nothing could have written by then is reported without a search.

The search is exponential in the worst case (many concurrent operations, or many unknown writes
of a few values), so it has a budget: `max_states` distinct states per key. A search that runs
out ends with status UNKNOWN, which is never a pass (`ok` is False).
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .history import History, Operation, OpKind, Outcome, format_operations

__all__ = ["DEFAULT_MAX_STATES", "CheckResult", "CheckStatus", "check", "check_key"]

DEFAULT_MAX_STATES = 2_000_000
"""Distinct search states per key before the checker gives up with UNKNOWN. Each costs about a
hundred bytes and a few microseconds, so the default bounds one key's search to roughly 200 MB
and ten seconds; linearizable histories of thousands of operations usually need thousands."""


class CheckStatus(enum.Enum):
    """The verdict: only LINEARIZABLE is a pass."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"
    """The search budget ran out before the history was proven either way."""


@attrs.frozen
class CheckResult:
    """The verdict for one key, or for a whole history (then `per_key` holds each key's)."""

    status: CheckStatus
    key: str | None
    """The key checked; for a whole history, the first key that did not pass (None if all did)."""
    explanation: str = ""
    """Why the check did not pass, for a failure report; empty when it passed."""
    operations: int = 0
    """Operations checked: completed ones, and writes of unknown outcome."""
    unknown: int = 0
    """Of those, writes of unknown outcome (which may have taken effect, or not)."""
    ignored: int = 0
    """Operations left out: failed ones (never took effect) and reads of unknown outcome."""
    states: int = 0
    """Distinct search states explored."""
    keys: int = 1
    linearization: tuple[Operation, ...] = ()
    """For a passing key, an order in which its operations took effect (unknown-outcome writes
    not in it took effect after all of them, or never)."""
    per_key: tuple[CheckResult, ...] = ()

    @property
    def ok(self) -> bool:
        """True only if the history is linearizable; False for a violation and for UNKNOWN."""
        return self.status is CheckStatus.LINEARIZABLE

    @property
    def violation(self) -> bool:
        """True if the history is proven not linearizable."""
        return self.status is CheckStatus.NOT_LINEARIZABLE

    def __str__(self) -> str:
        where = "" if self.key is None else f" (key {self.key!r})"
        summary = (
            f"{self.status.value.upper()}{where}: {self.operations} operations on {self.keys} "
            f"key(s), {self.unknown} of unknown outcome, {self.ignored} ignored, "
            f"{self.states} states explored"
        )
        return f"{summary}\n{self.explanation}" if self.explanation else summary


def check(
    history: History | Iterable[Operation],
    initial: Mapping[str, Any] | None = None,
    *,
    max_states: int | None = DEFAULT_MAX_STATES,
) -> CheckResult:
    """Check every key of a history (keys start absent unless `initial` says otherwise).

    The result is NOT_LINEARIZABLE if any key is, else UNKNOWN if any key's search ran out of
    budget, else LINEARIZABLE. `max_states` applies to each key; None means no limit.
    """
    ops = history.operations() if isinstance(history, History) else list(history)
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op.key, []).append(op)
    initial = initial or {}
    results = tuple(
        check_key(groups[key], initial.get(key), max_states=max_states) for key in sorted(groups)
    )
    bad = [r for r in results if r.status is CheckStatus.NOT_LINEARIZABLE]
    unsure = [r for r in results if r.status is CheckStatus.UNKNOWN]
    if bad:
        status = CheckStatus.NOT_LINEARIZABLE
    elif unsure:
        status = CheckStatus.UNKNOWN
    else:
        status = CheckStatus.LINEARIZABLE
    return CheckResult(
        status,
        (bad + unsure)[0].key if bad or unsure else None,
        "\n\n".join(r.explanation for r in bad + unsure),
        operations=sum(r.operations for r in results),
        unknown=sum(r.unknown for r in results),
        ignored=sum(r.ignored for r in results),
        states=sum(r.states for r in results),
        keys=len(results),
        per_key=results,
    )


def check_key(
    ops: Iterable[Operation],
    initial: Any = None,
    *,
    max_states: int | None = DEFAULT_MAX_STATES,
) -> CheckResult:
    """Check the operations on one key against a register that starts as `initial` (None: absent).

    PUT sets the value, DELETE sets None, GET must read the current value, and CAS(expected, new)
    sets `new` if and only if the value equals `expected`, which its result must report.
    """
    ops = list(ops)
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(f"check_key needs the operations of one key, not {sorted(keys)!r}")
    key = next(iter(keys)) if keys else None
    return _KeyCheck(key, ops, initial, max_states).run()


# Internals. Values are interned to small ints (None is 0) so that model states hash cheaply;
# operations become (code, a, b) on those ints.

_READ, _WRITE, _CAS_OK, _CAS_FAIL, _CAS_MAYBE = range(5)

_SEQ, _MAP, _SET = object(), object(), object()


def _freeze(value: Any) -> Any:
    """A hashable stand-in equal for equal values; lists and tuples alike (CBOR makes one the
    other)."""
    if isinstance(value, list | tuple):
        return (_SEQ, *map(_freeze, value))
    if isinstance(value, dict):
        return (_MAP, frozenset((_freeze(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, set | frozenset):
        return (_SET, frozenset(map(_freeze, value)))
    return value


class _Interner:
    """Numbers values by equality (==), keeping the first of each as its representative."""

    def __init__(self) -> None:
        self.values: list[Any] = [None]
        self._ids: dict[Any, int] = {None: 0}
        self._unhashable: list[tuple[Any, int]] = []

    def __call__(self, value: Any) -> int:
        frozen = _freeze(value)
        try:
            found = self._ids.get(frozen)
        except TypeError:
            for other, index in self._unhashable:
                if other == value:
                    return index
            self.values.append(value)
            self._unhashable.append((value, len(self.values) - 1))
            return len(self.values) - 1
        if found is None:
            found = self._ids[frozen] = len(self.values)
            self.values.append(value)
        return found


class _Entry:
    """A call or return event in a doubly linked list; calls carry the operation's model step."""

    __slots__ = (
        "a",
        "b",
        "bit",
        "code",
        "finite",
        "is_call",
        "lifted",
        "match",
        "next",
        "op",
        "pos",
        "prev",
        "twin",
    )

    def __init__(self, op: int, is_call: bool, code: int = 0, a: int = 0, b: int = 0) -> None:
        self.op = op
        self.is_call = is_call
        self.code = code
        self.a = a
        self.b = b
        self.bit = 0
        self.pos = 0
        self.finite = False
        self.lifted = False
        self.match = self
        """A finite op's call: its return event."""
        self.prev = self
        self.next = self
        self.twin: _Entry | None = None
        """An unknown op's call: the latest earlier one with the same effect."""


def _step(code: int, a: int, b: int, state: int) -> int:
    """The register's value after the operation, or -1 if it cannot happen in `state`."""
    if code == _READ:
        return state if state == a else -1
    if code == _WRITE:
        return a
    if code == _CAS_OK:
        return b if state == a else -1
    if code == _CAS_FAIL:
        return state if state != a else -1
    return b if state == a else state


_END = sys.maxsize


def _wanted(head: _Entry, state: int, maybe_expects: frozenset[int]) -> frozenset[int] | None:
    """The values an unknown op placed now could usefully write: those that the candidates to
    follow it (the calls before the first pending return, and unknown CASes) expect; None if any
    change would do (a candidate CAS reported False, yet expects the current value)."""
    wanted = set(maybe_expects)
    entry = head.next
    while entry.is_call:
        if entry.code == _CAS_FAIL:
            if entry.a == state:
                return None
        elif entry.code != _WRITE:
            wanted.add(entry.a)
        entry = entry.next
    return frozenset(wanted)


def _dominated(seen: int | list[int] | None, placed: int) -> bool:
    """Whether some explored set of unknown ops is a subset of `placed`."""
    if seen is None:
        return False
    if isinstance(seen, int):
        return seen & ~placed == 0
    return any(other & ~placed == 0 for other in seen)


def _novel(memo: dict[int, int | list[int]], key: int, placed: int) -> bool:
    """Record reaching state `key` with the unknown ops `placed` placed; False if not new.

    A state explored with fewer unknown ops placed dominates this one (those left over may
    simply never take effect), so it is not new either. Each entry keeps only minimal sets.
    """
    seen = memo.get(key)
    if seen is None:
        memo[key] = placed
        return True
    if isinstance(seen, int):
        if seen & ~placed == 0:
            return False
        memo[key] = placed if placed & ~seen == 0 else [seen, placed]
        return True
    if any(other & ~placed == 0 for other in seen):
        return False
    seen[:] = [other for other in seen if placed & ~other != 0]
    seen.append(placed)
    return True


def _link(entries: list[_Entry]) -> _Entry:
    """Chain entries between fresh sentinels (the tail's position is after everything)."""
    head = _Entry(-1, False)
    tail = _Entry(-1, False)
    tail.pos = _END
    prev = head
    for entry in [*entries, tail]:
        prev.next = entry
        entry.prev = prev
        prev = entry
    return head


class _KeyCheck:
    """One key's search: preparation, the backtracking loop, and the report."""

    def __init__(self, key: str | None, ops: list[Operation], initial: Any, max_states: int | None):
        if max_states is not None and max_states < 1:
            raise ValueError(f"max_states must be positive, not {max_states}")
        self.key = key
        self.max_states = max_states
        self.values = _Interner()
        self.initial = self.values(initial)
        self.ignored = 0
        self.finite: list[Operation] = []
        self.maybe: list[Operation] = []
        for op in ops:
            if op.outcome is Outcome.FAILED or (
                op.outcome is Outcome.UNKNOWN and op.kind is OpKind.GET
            ):
                self.ignored += 1
            elif op.outcome is Outcome.UNKNOWN:
                self.maybe.append(op)
            else:
                self.finite.append(op)
        self.finite.sort(key=lambda op: op.invoked)
        self.maybe.sort(key=lambda op: op.invoked)
        self.calls: list[_Entry] = []  # completed ops' call events, by invocation
        self.ucalls: list[_Entry] = []  # unknown ops' call events, by invocation
        self.useful: list[_Entry] = []  # those worth placing
        self._build()

    def _code(self, op: Operation) -> tuple[int, int, int]:
        intern = self.values
        if op.kind is OpKind.GET:
            return (_READ, intern(op.result), 0)
        if op.kind is OpKind.PUT:
            return (_WRITE, intern(op.value), 0)
        if op.kind is OpKind.DELETE:
            return (_WRITE, 0, 0)
        expected, new = op.value
        if op.outcome is Outcome.UNKNOWN:
            return (_CAS_MAYBE, intern(expected), intern(new))
        if not isinstance(op.result, bool):
            raise TypeError(f"a completed CAS's result must be a bool: {op}")
        return (_CAS_OK if op.result else _CAS_FAIL, intern(expected), intern(new))

    def _build(self) -> None:
        events: list[tuple[float, int, int, _Entry]] = []
        for i, op in enumerate(self.finite):
            call = _Entry(i, True, *self._code(op))
            ret = _Entry(i, False)
            call.match = ret
            call.bit = 1 << i
            call.finite = ret.finite = True
            self.calls.append(call)
            assert op.completed is not None
            # At equal times calls sort before returns: touching intervals count as concurrent.
            events.append((op.invoked, 0, len(events), call))
            events.append((op.completed, 1, len(events), ret))
        for j, op in enumerate(self.maybe):
            call = _Entry(j, True, *self._code(op))
            call.bit = 1 << j
            self.ucalls.append(call)
            events.append((op.invoked, 0, len(events), call))
        events.sort(key=lambda e: e[:3])
        for pos, event in enumerate(events):
            event[3].pos = pos
        self.head = _link([e[3] for e in events if e[3].finite])
        self.useful = self._useful_unknowns()
        self.uhead = _link(self.useful)

    def _useful_unknowns(self) -> list[_Entry]:
        """The unknown-outcome writes worth placing, each pointing at its earlier twin.

        A write of a value nothing observes (no read returns it, no CAS expects it) can only make
        later reads fail, so it is never needed, unless some CAS reports False (any value other
        than the expected one helps that). Twins (same effect) are interchangeable once both are
        invoked, so only orders that place them in invocation order are tried.
        """
        observed: set[int] = set()
        any_cas_false = False
        for call in [*self.calls, *self.ucalls]:
            if call.code != _WRITE:
                observed.add(call.a)
            any_cas_false = any_cas_false or call.code == _CAS_FAIL
        useful = []
        last_twin: dict[tuple[int, int, int], _Entry] = {}
        for call in self.ucalls:
            written = call.a if call.code == _WRITE else call.b
            if not any_cas_false and written not in observed:
                continue
            signature = (call.code, call.a, call.b)
            call.twin = last_twin.get(signature)
            last_twin[signature] = call
            useful.append(call)
        return useful

    def run(self) -> CheckResult:
        """Search depth-first for an order; see the module docstring and `_useful_unknowns`.

        Unknown-outcome operations are placed lazily: only where they change the value, and
        only right before an operation that needs the new value (any linearization can be made
        so by dropping unknown operations nothing needs and delaying the rest). A node reached
        by placing one is therefore restricted, and its memo key records that (`mode`).
        """
        n_finite = len(self.calls)
        kshift = (n_finite + 1).bit_length()
        vshift = (len(self.values.values) + 1).bit_length()
        budget = self.max_states if self.max_states is not None else _END
        head = self.head
        uhead = self.uhead
        maybe_expects = frozenset(u.a for u in self.useful if u.code == _CAS_MAYBE)
        # Explored states: (completed ops placed, value, mode) packed into an int, mapped to the
        # minimal sets of unknown ops placed with them (see `_novel`).
        memo: dict[int, int | list[int]] = {}
        states = 0
        # Frames: (entry placed, value before it, barrier or -1 if completed, parent's mode).
        stack: list[tuple[_Entry, int, int, int]] = []
        best: list[_Entry] = []
        best_done = 0
        state = self.initial
        lf = 0  # bitset of placed completed ops; bits below k are all set
        lu = 0  # bitset of placed unknown ops
        done = 0
        # 0, or 1 + the value before the unknown op just placed: then the next op must need it.
        mode = 0
        if n_finite == 0:
            return self._result(CheckStatus.LINEARIZABLE, 0, [])
        impossible = self._unwritten_observation()
        if impossible is not None:
            op = self._op(impossible)
            value = self._value(impossible.a)
            return self._result(
                CheckStatus.NOT_LINEARIZABLE,
                0,
                [],
                f"Key {self.key!r} is NOT linearizable: this operation observed the value {value}"
                f"\n  {op}\nbut no operation that could have written {value} was invoked before "
                f"it completed at {op.completed} (the initial value is "
                f"{self._value(self.initial)}).",
            )
        entry = head.next
        while True:
            if entry.is_call:
                code = entry.code
                a = entry.a
                if code == _READ:
                    new = state if state == a else -1
                elif code == _WRITE:
                    new = a if mode == 0 else -1  # a blind write would hide the unknown op
                elif code == _CAS_OK:
                    new = entry.b if state == a else -1
                else:  # _CAS_FAIL (completed ops are never _CAS_MAYBE)
                    new = state if state != a and (mode == 0 or mode == a + 1) else -1
                if new >= 0:
                    nlf = lf | entry.bit
                    k = (nlf ^ (nlf + 1)).bit_length() - 1
                    memo_key = ((((nlf >> k) << vshift | new) << vshift) << kshift) | k
                    if _novel(memo, memo_key, lu):
                        states += 1
                        if states >= budget:
                            break
                        stack.append((entry, state, -1, mode))
                        # Lift the call and its return out of the list.
                        entry.prev.next = entry.next
                        entry.next.prev = entry.prev
                        ret = entry.match
                        ret.prev.next = ret.next
                        ret.next.prev = ret.prev
                        lf = nlf
                        state = new
                        mode = 0
                        done += 1
                        if done > best_done:
                            best_done = done
                            best = [frame[0] for frame in stack]
                            if done == n_finite:
                                return self._result(CheckStatus.LINEARIZABLE, states, best)
                        entry = head.next
                        continue
                entry = entry.next
                continue
            # `entry` is the first pending return: its call must be placed before it. Try the
            # unknown-outcome calls that precede it, then backtrack.
            barrier = entry.pos
            u = uhead.next
            wanted = _wanted(head, state, maybe_expects) if u.pos < barrier else None
            placed = False
            while True:
                while u.pos < barrier:  # the tail sentinel's position ends the list
                    twin = u.twin
                    if (twin is None or twin.lifted) and (mode == 0 or u.code == _CAS_MAYBE):
                        new = _step(u.code, u.a, u.b, state)
                        # Unknown ops never fail; place one only if it changes the value to one
                        # that a candidate to follow it needs.
                        if new != state and (wanted is None or new in wanted):
                            nlu = lu | u.bit
                            k = (lf ^ (lf + 1)).bit_length() - 1
                            packed = ((lf >> k) << vshift | new) << vshift
                            if not _dominated(memo.get(packed << kshift | k), nlu) and _novel(
                                memo, ((packed | (state + 1)) << kshift) | k, nlu
                            ):
                                states += 1
                                if states >= budget:
                                    return self._result(CheckStatus.UNKNOWN, states, best)
                                stack.append((u, state, barrier, mode))
                                u.prev.next = u.next
                                u.next.prev = u.prev
                                u.lifted = True
                                lu = nlu
                                mode = state + 1
                                state = new
                                placed = True
                                break
                    u = u.next
                if placed:
                    entry = head.next
                    break
                if not stack:
                    return self._result(CheckStatus.NOT_LINEARIZABLE, states, best)
                back, state, back_barrier, mode = stack.pop()
                if back_barrier < 0:
                    ret = back.match
                    ret.prev.next = ret
                    ret.next.prev = ret
                    back.prev.next = back
                    back.next.prev = back
                    lf ^= back.bit
                    done -= 1
                    entry = back.next
                    break
                back.prev.next = back
                back.next.prev = back
                back.lifted = False
                lu ^= back.bit
                u = back.next
                barrier = back_barrier
                wanted = _wanted(head, state, maybe_expects)
        return self._result(CheckStatus.UNKNOWN, states, best)

    # Reporting

    def _op(self, entry: _Entry) -> Operation:
        return self.finite[entry.op] if entry.finite else self.maybe[entry.op]

    def _unwritten_observation(self) -> _Entry | None:
        """A read or successful CAS of a value (not the initial one) that nothing invoked before it
        completed could have written: a violation found without a search, and explained better."""
        first_writer: dict[int, int] = {}
        for call in [*self.calls, *self.useful]:
            if call.code == _WRITE:
                written = call.a
            elif call.code in (_CAS_OK, _CAS_MAYBE):
                written = call.b
            else:
                continue
            first_writer[written] = min(call.pos, first_writer.get(written, _END))
        impossible = [
            call
            for call in self.calls
            if call.code in (_READ, _CAS_OK)
            and call.a != self.initial
            and first_writer.get(call.a, _END) > call.match.pos
        ]
        return min(impossible, key=lambda call: call.match.pos, default=None)

    def _result(
        self, status: CheckStatus, states: int, best: list[_Entry], explanation: str = ""
    ) -> CheckResult:
        linearization: tuple[Operation, ...] = ()
        if status is CheckStatus.LINEARIZABLE:
            linearization = tuple(self._op(e) for e in best)
        elif not explanation:
            explanation = self._explain(status, best)
        return CheckResult(
            status,
            self.key,
            explanation,
            operations=len(self.finite) + len(self.maybe),
            unknown=len(self.maybe),
            ignored=self.ignored,
            states=states,
            linearization=linearization,
        )

    def _value(self, value_id: int) -> str:
        return "absent (None)" if value_id == 0 else repr(self.values.values[value_id])

    def _could_help(self, unknown: _Entry, state: int, candidates: list[_Entry]) -> bool:
        """Whether placing this unknown-outcome op now would let one of the candidates follow."""
        new = _step(unknown.code, unknown.a, unknown.b, state)
        if new == state or unknown not in self.useful:
            return False
        return any(
            (c.code in (_READ, _CAS_OK) and c.a == new) or (c.code == _CAS_FAIL and c.a == state)
            for c in candidates
        )

    def _why_not(self, call: _Entry, state: int) -> str:
        value = self._value(state)
        if _step(call.code, call.a, call.b, state) >= 0:
            return "could take effect here, but every order that follows fails"
        if call.code == _READ:
            return f"read {self._value(call.a)} but the value was {value}"
        if call.code == _CAS_OK:
            return f"succeeded but the value was {value}, not the expected {self._value(call.a)}"
        return f"reported False but the value was the expected {value}"

    def _explain(self, status: CheckStatus, best: list[_Entry]) -> str:
        lines = []
        if status is CheckStatus.UNKNOWN:
            lines.append(
                f"UNKNOWN for key {self.key!r}: the search budget of {self.max_states} states ran "
                "out before the history was proven linearizable or not; this is not a pass "
                "(raise max_states, or check shorter histories)."
            )
        else:
            lines.append(
                f"Key {self.key!r} is NOT linearizable: no order of its operations, each taking "
                "effect once between its invocation and its completion, fits one register."
            )
        state = self.initial
        for entry in best:
            state = _step(entry.code, entry.a, entry.b, state)
        placed = {id(entry) for entry in best}
        done = sum(1 for e in best if e.finite)
        lines.append(
            f"The longest linearizable prefix found places {done} of the {len(self.calls)} "
            f"completed operations (and {len(best) - done} of unknown outcome), leaving the value "
            f"{self._value(state)}:"
        )
        if not best:
            lines.append("  (none)")
        shown = best[-12:]
        if len(best) > len(shown):
            lines.append(f"  ... {len(best) - len(shown)} earlier operations")
        lines.extend(f"  {self._op(e)}" for e in shown)
        pending = [c for c in self.calls if id(c) not in placed]
        if not pending:  # only when the budget ran out
            return "\n".join(lines)
        blocking = min(pending, key=lambda c: c.match.pos)
        barrier = blocking.match.pos
        blocked_op = self._op(blocking)
        lines.append("Then this operation had to take effect before it completed, but could not:")
        lines.append(f"  {blocked_op}")
        candidates = [c for c in pending if c.pos < barrier]
        unknowns = [u for u in self.ucalls if id(u) not in placed and u.pos < barrier]
        helpful = [u for u in unknowns if self._could_help(u, state, candidates)]
        lines.append("Operations that could have taken effect next, and why none fits:")
        lines.extend(f"  {self._op(c)}: {self._why_not(c, state)}" for c in candidates)
        lines.extend(f"  {self._op(u)}: {self._why_not(u, state)}" for u in helpful)
        if len(unknowns) > len(helpful):
            lines.append(
                f"  ({len(unknowns) - len(helpful)} more operations of unknown outcome, pending "
                "but of no help there)"
            )
        start = min(self._op(c).invoked for c in candidates if c.finite)
        window = [
            op
            for op in sorted(self.finite + self.maybe, key=lambda op: op.invoked)
            if start <= op.effective_end < math.inf or start <= op.invoked
            if op.invoked <= blocked_op.effective_end
        ]
        if len(window) > len(candidates):
            lines.append("All operations overlapping that window (the last 40):")
            lines.append(format_operations(window[-40:]))
        return "\n".join(lines)
