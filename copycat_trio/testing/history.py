"""Histories of key-value operations as clients saw them, for the linearizability checker.

A test records every operation a client invokes and how it ended, with the times it started and
finished, then hands the history to `copycat_trio.testing.linearizability.check`:

    history = History(clock=trio.current_time)
    token = history.invoke(process, OpKind.PUT, "k", 3)
    try:
        await client.submit(Put("k", 3))
    except CommandError:  # proves the command never entered the log
        history.fail(token)
    except (trio.TooSlowError, OutcomeUnknownError):  # may or may not have been applied
        history.unknown(token)
    else:
        history.complete(token, None)

How an operation ended matters. Only an error that *proves* the operation never entered the log
may be recorded with `fail`: the checker ignores failed operations entirely. A timeout or a lost
connection must be recorded with `unknown` (or simply never completed): the operation may take
effect at any time after its invocation, or never. Copycat's own Jepsen client recorded timeouts
as failures, which hides lost and doubled writes; recording them as unknown does not.

Pure: no Trio, no I/O; times are whatever clock the caller uses, as long as it is one clock.
"""

from __future__ import annotations

import enum
import math
import time as _time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

__all__ = ["History", "OpKind", "Operation", "Outcome", "format_operations"]


class OpKind(enum.Enum):
    """What an operation does to its key's register."""

    PUT = "put"
    """Write `value`; any result (the previous value, or None) is ignored by the checker."""
    GET = "get"
    """Read; the result is the value read, None if the key was absent."""
    CAS = "cas"
    """Compare-and-set: `value` is `(expected, new)`; the result is whether it set."""
    DELETE = "delete"
    """Remove the key (its value becomes None); any result is ignored by the checker."""


class Outcome(enum.Enum):
    """How an operation ended, as far as the client can tell."""

    OK = "ok"
    """The client received the result: the operation took effect exactly once, in its interval."""
    FAILED = "failed"
    """An error proved the operation never entered the log: it never took effect."""
    UNKNOWN = "unknown"
    """No answer (timeout, lost connection, cancelled): it took effect at most once, at some time
    after its invocation, possibly long after the client gave up, or never."""


@attrs.frozen
class Operation:
    """One operation on one key, from invocation to outcome.

    `value` is the value written for PUT, `(expected, new)` for CAS, None for GET and DELETE.
    `result` is the value read for GET (None for absent), a bool for CAS, and whatever the server
    returned (previous value or None; never relied on) for PUT and DELETE. `completed` is None
    (or infinity) for UNKNOWN operations.
    """

    process: int | str
    kind: OpKind
    key: str
    value: Any
    invoked: float
    completed: float | None
    outcome: Outcome
    result: Any = None

    def __attrs_post_init__(self) -> None:
        if self.completed is not None and self.completed < self.invoked:
            raise ValueError(
                f"operation completed at {self.completed} before it was invoked at {self.invoked}"
            )
        if self.outcome is Outcome.OK and self.completed is None:
            raise ValueError("an OK operation needs the time it completed")
        if self.kind is OpKind.CAS:
            if not (isinstance(self.value, tuple | list) and len(self.value) == 2):
                raise ValueError(f"CAS value must be (expected, new), not {self.value!r}")
            if self.outcome is Outcome.OK and not isinstance(self.result, bool):
                raise TypeError(f"a completed CAS's result must be a bool, not {self.result!r}")

    @property
    def effective_end(self) -> float:
        """When the operation must have taken effect by: `completed`, or infinity if UNKNOWN."""
        if self.outcome is Outcome.UNKNOWN or self.completed is None:
            return math.inf
        return self.completed

    def describe(self) -> str:
        """The operation without its times, e.g. `p1 CAS 'k' 0->1 -> True` (p for int processes)."""
        if self.kind is OpKind.PUT:
            what = f"PUT {self.key!r} = {self.value!r}"
        elif self.kind is OpKind.CAS:
            expected, new = self.value
            what = f"CAS {self.key!r} {expected!r}->{new!r}"
        else:
            what = f"{self.kind.name} {self.key!r}"
        if self.outcome is Outcome.OK:
            end = f"-> {self.result!r}" if self.kind in (OpKind.GET, OpKind.CAS) else "ok"
        else:
            end = self.outcome.name
        who = f"p{self.process}" if isinstance(self.process, int) else self.process
        return f"{who} {what} {end}"

    def format(self) -> str:
        """One line with the interval, e.g. `[    1.000,     2.500] p1 GET 'k' -> 3`."""
        if self.outcome is Outcome.UNKNOWN or self.completed is None:
            completed = "        ?"
        else:
            completed = f"{self.completed:9.3f}"
        return f"[{self.invoked:9.3f}, {completed}] {self.describe()}"

    def __str__(self) -> str:
        return self.format()


def format_operations(operations: Iterable[Operation]) -> str:
    """One line per operation, sorted by invocation time, for failure reports."""
    ordered = sorted(operations, key=lambda op: op.invoked)
    return "\n".join(op.format() for op in ordered)


@attrs.frozen
class _Invocation:
    process: int | str
    kind: OpKind
    key: str
    value: Any
    invoked: float


class History:
    """Records operations as a test's clients invoke and complete them.

    `invoke` returns a token; end it with exactly one of `complete`, `fail` or `unknown`. An
    operation never ended (say, its task was cancelled) is reported as UNKNOWN. `time` arguments
    default to `clock()`; pass `clock=trio.current_time` under Trio's MockClock.
    """

    def __init__(self, clock: Callable[[], float] = _time.monotonic) -> None:
        self._clock = clock
        self._invocations: list[_Invocation] = []
        self._ended: dict[int, Operation] = {}

    def __len__(self) -> int:
        return len(self._invocations)

    def invoke(
        self,
        process: int | str,
        kind: OpKind,
        key: str,
        value: Any = None,
        time: float | None = None,
    ) -> int:
        """Record that `process` started an operation; returns the token to end it with."""
        if kind is OpKind.CAS and not (isinstance(value, tuple | list) and len(value) == 2):
            raise ValueError(f"CAS value must be (expected, new), not {value!r}")
        if kind is OpKind.CAS:
            value = tuple(value)
        invoked = self._clock() if time is None else time
        self._invocations.append(_Invocation(process, kind, key, value, invoked))
        return len(self._invocations) - 1

    def _end(self, token: int, completed: float | None, outcome: Outcome, result: Any) -> Operation:
        if not 0 <= token < len(self._invocations):
            raise ValueError(f"unknown token {token!r}")
        if token in self._ended:
            raise ValueError(f"operation {token} already ended: {self._ended[token]}")
        inv = self._invocations[token]
        op = Operation(
            inv.process, inv.kind, inv.key, inv.value, inv.invoked, completed, outcome, result
        )
        self._ended[token] = op
        return op

    def complete(self, token: int, result: Any = None, time: float | None = None) -> Operation:
        """The operation returned `result` (the value read, CAS's bool, or anything for writes)."""
        return self._end(token, self._clock() if time is None else time, Outcome.OK, result)

    def fail(self, token: int, time: float | None = None) -> Operation:
        """An error PROVED the operation never entered the log; never use for timeouts."""
        return self._end(token, self._clock() if time is None else time, Outcome.FAILED, None)

    def unknown(self, token: int) -> Operation:
        """No answer (timeout, lost connection): it may take effect any time after invocation."""
        return self._end(token, None, Outcome.UNKNOWN, None)

    def operations(self) -> list[Operation]:
        """Every operation so far, by invocation time; those never ended are UNKNOWN."""
        ops = []
        for token, inv in enumerate(self._invocations):
            op = self._ended.get(token)
            if op is None:
                op = Operation(
                    inv.process, inv.kind, inv.key, inv.value, inv.invoked, None, Outcome.UNKNOWN
                )
            ops.append(op)
        ops.sort(key=lambda op: op.invoked)
        return ops

    def by_key(self) -> dict[str, list[Operation]]:
        """The operations grouped by key (keys are independent registers), by invocation time."""
        groups: dict[str, list[Operation]] = {}
        for op in self.operations():
            groups.setdefault(op.key, []).append(op)
        return groups

    def format(self) -> str:
        """One line per operation, sorted by invocation time, for failure reports."""
        return format_operations(self.operations())
