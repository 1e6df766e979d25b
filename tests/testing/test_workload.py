"""How the workload classifies a command's error: FAILED only when its type says the command did
not take effect, so a client that reports such an error for an applied command is caught."""

from __future__ import annotations

import pytest
import trio

from copycat_trio.client.client import ClientClosedError
from copycat_trio.protocol.errors import (
    ApplicationError,
    CommandError,
    ConfigurationError,
    CopycatError,
    ErrorType,
    IllegalMemberStateError,
    InternalError,
    NoLeaderError,
    OutcomeUnknownError,
    ProtocolError,
    QueryError,
    UnknownSessionError,
)
from copycat_trio.testing.history import History, OpKind, Outcome
from copycat_trio.testing.linearizability import check
from copycat_trio.testing.workload import PROVES_NOT_APPLIED, command_outcome
from copycat_trio.transport.base import TransportError

FAILED, UNKNOWN = Outcome.FAILED, Outcome.UNKNOWN


def test_every_error_type_says_whether_it_proves_the_command_did_not_apply() -> None:
    assert set(PROVES_NOT_APPLIED) == set(ErrorType)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ClientClosedError("closed"), FAILED),
        (NoLeaderError("no leader"), FAILED),
        (CommandError("not applied"), FAILED),
        (IllegalMemberStateError("a RESERVE member"), FAILED),
        (UnknownSessionError("unknown session 3"), FAILED),
        (ConfigurationError("rejected"), FAILED),
        (ProtocolError("undecodable"), FAILED),
        (QueryError("not a command"), FAILED),
        (OutcomeUnknownError("no answer"), UNKNOWN),
        (InternalError("outcome unknown: forwarded to leader, connection lost"), UNKNOWN),
        (ApplicationError("raised"), UNKNOWN),  # applied: the caller records it completed
        (CopycatError("of no known type", error_type=99), UNKNOWN),  # type: ignore[arg-type]
        (trio.TooSlowError(), UNKNOWN),
        (TransportError("reset"), UNKNOWN),
        (RuntimeError("anything else"), UNKNOWN),
    ],
)
def test_command_outcome(error: BaseException, outcome: Outcome) -> None:
    assert command_outcome(error) is outcome


def test_a_write_failed_by_a_reserve_member_but_applied_is_caught_by_the_checker() -> None:
    # Issue 10, bug 3: the write applied, its answer was lost, a RESERVE member answered
    # ILLEGAL_MEMBER_STATE and the client raised that; a later read sees the write.
    def history_with(outcome: Outcome) -> History:
        history = History()
        token = history.invoke(1, OpKind.PUT, "k", "x", time=0)
        if outcome is Outcome.FAILED:
            history.fail(token, time=5)
        else:
            history.unknown(token)
        history.complete(history.invoke(2, OpKind.GET, "k", time=10), "x", time=11)
        return history

    outcome = command_outcome(IllegalMemberStateError("member 4 is a RESERVE member"))
    assert outcome is Outcome.FAILED
    assert not check(history_with(outcome)).ok  # the client's lie shows
    assert check(history_with(Outcome.UNKNOWN)).ok  # recorded as unknown, it would hide
