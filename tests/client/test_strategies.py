"""The client's pure rules: which member errors mean "try the next member"."""

from __future__ import annotations

import pytest

from copycat_trio.client.strategies import ErrorScope, error_scope
from copycat_trio.protocol.errors import ErrorType

MEMBER, VERDICT = ErrorScope.MEMBER, ErrorScope.VERDICT

SCOPES = {
    ErrorType.NO_LEADER: MEMBER,
    ErrorType.ILLEGAL_MEMBER_STATE: MEMBER,
    ErrorType.QUERY: MEMBER,
    ErrorType.INTERNAL: MEMBER,
    ErrorType.COMMAND: VERDICT,
    ErrorType.APPLICATION: VERDICT,
    ErrorType.UNKNOWN_SESSION: VERDICT,
    ErrorType.CONFIGURATION: VERDICT,
    ErrorType.PROTOCOL: VERDICT,
    ErrorType.UNKNOWN_OPERATION: VERDICT,
    ErrorType.UNAUTHORIZED: VERDICT,
}


def test_every_error_type_is_classified() -> None:
    assert set(SCOPES) == set(ErrorType)


@pytest.mark.parametrize(("error_type", "scope"), sorted(SCOPES.items()))
def test_error_scope(error_type: ErrorType, scope: ErrorScope) -> None:
    assert error_scope(error_type) is scope
