"""How a client picks servers, backs off between attempts, and recovers a lost session."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence


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
