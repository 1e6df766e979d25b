"""A forwarded request's answer comes back as the response its handler promises."""

from __future__ import annotations

from copycat_trio.protocol import ErrorInfo, ErrorType, Status
from copycat_trio.protocol.messages import (
    CommandResponse,
    ErrorResponse,
    QueryResponse,
    Response,
    error_of,
)
from copycat_trio.server.forwarding import _typed


def _error(info: ErrorInfo) -> CommandResponse:
    return CommandResponse(status=Status.ERROR, error=info)


def test_the_expected_response_passes_through_unchanged() -> None:
    answer = CommandResponse(status=Status.OK, index=7)
    assert _typed(answer, CommandResponse, _error) is answer


def test_an_error_response_keeps_its_error_in_the_expected_shape() -> None:
    info = ErrorInfo(ErrorType.UNAUTHORIZED, "role reader may not write")
    answer = _typed(ErrorResponse(Status.ERROR, info), CommandResponse, _error)
    assert isinstance(answer, CommandResponse) and answer.error == info


def test_any_other_answer_is_an_internal_error_naming_it() -> None:
    answer = _typed(QueryResponse(status=Status.OK), CommandResponse, _error)
    assert answer.error_type is ErrorType.INTERNAL
    assert answer.error is not None and "QueryResponse" in answer.error.message


def test_every_client_and_server_response_shares_the_response_base() -> None:
    ok = CommandResponse(status=Status.OK)
    failed = ErrorResponse(Status.ERROR, ErrorInfo(ErrorType.NO_LEADER, "none"))
    assert isinstance(ok, Response) and ok.ok and ok.error_type is None and error_of(ok) is None
    assert not failed.ok and failed.error_type is ErrorType.NO_LEADER
    assert error_of(failed) == failed.error
    assert error_of("not a response") is None
