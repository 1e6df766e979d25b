"""Response status, the error types servers report, and the exceptions that carry them.

The eight error types are Copycat's; PROTOCOL (for frames that cannot be decoded),
UNKNOWN_OPERATION and UNAUTHORIZED are ours.
"""

from __future__ import annotations

import enum

import attrs


class Status(enum.IntEnum):
    """Whether a response carries a result or an error."""

    OK = 0
    ERROR = 1


class ErrorType(enum.IntEnum):
    """Why a request failed, as a server reports it."""

    NO_LEADER = 1
    """No leader is known, or the leader could not be reached; safe to retry elsewhere."""
    QUERY = 2
    """A query could not be served at the requested consistency."""
    COMMAND = 3
    """A command could not be sequenced or committed; it was not applied."""
    APPLICATION = 4
    """The user's state machine raised; the message names the exception."""
    ILLEGAL_MEMBER_STATE = 5
    """The member cannot serve this request in its current role or type."""
    UNKNOWN_SESSION = 6
    """The session does not exist (never registered, closed or expired)."""
    INTERNAL = 7
    """An unexpected failure inside the server."""
    CONFIGURATION = 8
    """A configuration change was rejected."""
    PROTOCOL = 9
    """A frame or message was malformed, oversized or of an unknown type."""
    UNKNOWN_OPERATION = 10
    """The servers' state machine does not know the operation's type; it changed nothing."""
    UNAUTHORIZED = 11
    """The client's identity lacks the role the request needs; nothing was done."""


@attrs.frozen
class ErrorInfo:
    """An error as it travels in a response: its type and a sentence for people."""

    type: ErrorType
    message: str = ""


class CopycatError(Exception):
    """Base of every error this library raises on purpose."""

    error_type: ErrorType = ErrorType.INTERNAL

    def __init__(self, message: str = "", *, error_type: ErrorType | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(self.error_type, self.message)


class NoLeaderError(CopycatError):
    """No leader is known, or it could not be reached, or the member forwarding the request
    stopped following it: the request may be sent again (a client does so itself)."""

    error_type = ErrorType.NO_LEADER


class QueryError(CopycatError):
    """A query could not be served at the consistency asked for (the member is behind the client,
    or lost leadership before the read was confirmed); another member may serve it."""

    error_type = ErrorType.QUERY


class CommandError(CopycatError):
    """The command was not applied (refused before the log, or replaced by a new leader's entry);
    sent again under its sequence number, it applies at most once."""

    error_type = ErrorType.COMMAND


class ApplicationError(CopycatError):
    """The state machine raised while applying an operation; the server went on."""

    error_type = ErrorType.APPLICATION


class UnknownOperationError(ApplicationError):
    """The servers' state machine has no handler for the operation's type, or the servers have
    not registered its wire tag at all; the operation changed nothing, and retrying it cannot
    help until the servers run code that knows it."""

    error_type = ErrorType.UNKNOWN_OPERATION


class IllegalMemberStateError(CopycatError):
    """The member cannot serve this request in its role or type (a RESERVE member, a member
    removed from the cluster, or one that is not the leader for a leader-only request)."""

    error_type = ErrorType.ILLEGAL_MEMBER_STATE


class UnknownSessionError(CopycatError):
    """The session does not exist on the servers: never registered, closed, or expired (no
    keep-alive within its timeout)."""

    error_type = ErrorType.UNKNOWN_SESSION


class InternalError(CopycatError):
    """An unexpected failure inside a server; the request's outcome is unknown to that member."""

    error_type = ErrorType.INTERNAL


class ConfigurationError(CopycatError):
    """A configuration change, or the settings a server or client was given, are invalid."""

    error_type = ErrorType.CONFIGURATION


class ProtocolError(CopycatError):
    """Bytes from the network that are not a valid message: the connection is closed."""

    error_type = ErrorType.PROTOCOL


class UnreadableRequestError(ProtocolError):
    """A request frame whose id could be read but whose body could not be decoded: the server
    answers it with a PROTOCOL error and keeps the connection open."""

    def __init__(self, message: str, request_id: int) -> None:
        super().__init__(message)
        self.request_id = request_id


class IncompatibleVersionError(ProtocolError):
    """The other side of a connection speaks another major version of the protocol."""


class UnauthorizedError(CopycatError):
    """The client's identity (its certificate's common name, or its token's name) lacks the
    role the request needs (read, write or admin: docs/security.md); nothing was done, and
    the connection and the session stay usable for what the role allows."""

    error_type = ErrorType.UNAUTHORIZED


class OutcomeUnknownError(CopycatError):
    """The request was sent but no answer came (timeout or lost connection).

    The operation may or may not have been applied; it is never reported as failed.
    """

    error_type = ErrorType.INTERNAL


_BY_TYPE: dict[ErrorType, type[CopycatError]] = {
    cls.error_type: cls
    for cls in (
        NoLeaderError,
        QueryError,
        CommandError,
        ApplicationError,
        UnknownOperationError,
        IllegalMemberStateError,
        UnknownSessionError,
        InternalError,
        ConfigurationError,
        ProtocolError,
        UnauthorizedError,
    )
}


def error_from_info(info: ErrorInfo) -> CopycatError:
    """The exception a client raises for an error a server reported."""
    return _BY_TYPE.get(info.type, CopycatError)(info.message, error_type=info.type)
