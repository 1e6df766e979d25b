"""How a client picks servers, backs off between attempts, and recovers a lost session."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence

from ..protocol.errors import ErrorType


class ClientState(enum.Enum):
    """What the client knows about its session."""

    CONNECTED = "connected"
    """The session is registered and its last keep-alive succeeded."""
    SUSPENDED = "suspended"
    """Keep-alives are failing; the session may still be alive on the servers."""
    CLOSED = "closed"
    """The session is gone (closed by us, or expired); no more operations."""


class ServerSelection(enum.Enum):
    """Which members a client talks to (commands are forwarded to the leader either way)."""

    ANY = "any"
    LEADER = "leader"
    FOLLOWERS = "followers"

    def order(self, addresses: Sequence[str], leader: str | None, start: int = 0) -> list[str]:
        """The addresses to try, best first."""
        rotated = list(addresses[start % len(addresses) :]) + list(
            addresses[: start % len(addresses)]
        )
        if self is ServerSelection.LEADER and leader in rotated:
            rotated.remove(leader)
            return [leader, *rotated]
        if self is ServerSelection.FOLLOWERS and leader in rotated and len(rotated) > 1:
            rotated.remove(leader)
            return [*rotated, leader]
        return rotated


class ConnectionStrategy(enum.Enum):
    """How long to wait between rounds of attempts to reach a member."""

    ONCE = "once"
    """Try each member once, then fail."""
    EXPONENTIAL = "exponential"
    """Wait 50 ms, 100 ms, 200 ms ... up to 2 s between rounds, until the operation's deadline."""
    FIBONACCI = "fibonacci"
    """Wait 50 ms, 50 ms, 100 ms, 150 ms, 250 ms ... up to 2 s between rounds."""

    def delays(self, base: float = 0.05, cap: float = 2.0) -> Iterator[float | None]:
        """Delays before each further round; None means give up."""
        if self is ConnectionStrategy.ONCE:
            while True:
                yield None
        elif self is ConnectionStrategy.EXPONENTIAL:
            delay = base
            while True:
                yield delay
                delay = min(cap, delay * 2)
        else:
            a, b = base, base
            while True:
                yield a
                a, b = b, min(cap, a + b)


class RecoveryStrategy(enum.Enum):
    """What to do when the servers say the session no longer exists (it expired)."""

    CLOSE = "close"
    """Close the client: pending and later operations fail with UnknownSessionError."""
    RECOVER = "recover"
    """Register a new session and go on. Operations pending at the time fail with
    OutcomeUnknownError, and ordering between the old and the new session is not kept."""


class ErrorScope(enum.Enum):
    """What an error a member answers with is about: that member, or the request itself."""

    MEMBER = "member"
    """This member cannot serve the request now (no leader, wrong type, behind, its link to
    the leader broke): try the next member. Says nothing about whether a command applied."""
    VERDICT = "verdict"
    """The answer about the request itself (from the leader, or the state machine): final."""


_ERROR_SCOPES: dict[ErrorType, ErrorScope] = {
    # No leader known, or the leader could not be reached from this member.
    ErrorType.NO_LEADER: ErrorScope.MEMBER,
    # A RESERVE member, a member that is not (or no longer) the leader for a leader-only step.
    ErrorType.ILLEGAL_MEMBER_STATE: ErrorScope.MEMBER,
    # This member could not serve a query at that consistency (behind, lost leadership).
    ErrorType.QUERY: ErrorScope.MEMBER,
    # "Outcome unknown: forwarded to leader, connection lost", or a failure inside this member:
    # nothing is known about the request, and every request the client fails over is safe to
    # send again (commands carry their sequence number).
    ErrorType.INTERNAL: ErrorScope.MEMBER,
    # The leader could not sequence or commit the command: the caller decides (it resubmits).
    ErrorType.COMMAND: ErrorScope.VERDICT,
    # The state machine raised: the command applied, everywhere the same.
    ErrorType.APPLICATION: ErrorScope.VERDICT,
    # The session does not exist (answered once the member has applied what the client saw).
    ErrorType.UNKNOWN_SESSION: ErrorScope.VERDICT,
    # A configuration change the leader rejected.
    ErrorType.CONFIGURATION: ErrorScope.VERDICT,
    # The request could not be decoded or is not accepted: no other member will do better.
    ErrorType.PROTOCOL: ErrorScope.VERDICT,
    # The servers' state machine does not know the operation (a command was logged as
    # UnknownOperation and changed nothing): retrying elsewhere cannot help.
    ErrorType.UNKNOWN_OPERATION: ErrorScope.VERDICT,
    # The client's identity lacks the role: every member has the same roles (docs/security.md).
    ErrorType.UNAUTHORIZED: ErrorScope.VERDICT,
}


def error_scope(error_type: ErrorType) -> ErrorScope:
    """Whether an error answer means "try the next member" or is the request's verdict.

    Types added later (unknown here) count as verdicts: a client that retried an error it
    does not understand could retry forever."""
    return _ERROR_SCOPES.get(error_type, ErrorScope.VERDICT)
