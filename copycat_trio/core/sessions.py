"""Client sessions as the replicated state machine keeps them: pure and deterministic.

Every server applies the same session entries in the same order, so every server agrees on which
sessions exist, which command sequence each has applied, the cached results that make retries
exactly-once, the events not yet acknowledged, and when a session expired (by log time: the
leader's timestamps in the log, never a local clock).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Container, Iterator
from typing import Any

import attrs

from ..protocol.errors import ErrorInfo
from ..protocol.messages import Event

MIN_SESSION_TIMEOUT_MS = 100
MAX_SESSION_TIMEOUT_MS = 24 * 3600 * 1000


@attrs.define
class CachedResult:
    """What a command returned, kept until the client acknowledges it (by keep-alive)."""

    index: int
    event_index: int
    result: Any = None
    error: ErrorInfo | None = None


@attrs.define
class EventBatch:
    """Events one command published to one session; `index` is that command's log index."""

    index: int
    previous_index: int
    events: list[Event]


@attrs.define(eq=False)
class Session:
    """One client session, identified by the log index of its registration."""

    id: int
    client: str
    timeout: int
    """Milliseconds of log time without a keep-alive after which the session expires."""
    last_active: int
    """Log time of the last keep-alive (or of registration, or of a leader change)."""
    command_sequence: int = 0
    """The highest command sequence number applied for this session; every one below it was
    applied too (commands never apply past a gap)."""
    results: dict[int, CachedResult] = attrs.Factory(dict)
    event_index: int = 0
    """Index of the last command that published to this session (0 if none)."""
    events: deque[EventBatch] = attrs.Factory(deque)
    """Published and not yet acknowledged by the client, oldest first."""
    acknowledged_event_index: int = 0
    identity: str = ""
    """Who opened the session (a certificate's common name or a token's name; "" without
    authentication), from its register entry: state machines authorize by it."""

    @property
    def expires_at(self) -> int:
        """The first log time at which the session has been silent for longer than its
        timeout: the leader proposes its expiry then, and every server refuses it before."""
        return self.last_active + self.timeout + 1

    def events_after(self, index: int) -> Iterator[EventBatch]:
        for batch in self.events:
            if batch.index > index:
                yield batch


class CommandDecision(enum.Enum):
    """What a server does with a committed command entry of a session."""

    APPLY = "apply"
    """The next in sequence: apply it."""
    DUPLICATE = "duplicate"
    """Already applied: answer with the cached result, do not apply again."""
    GAP = "gap"
    """An earlier command of the session has not been applied: do not apply this one (it
    would be out of order); the client resubmits it."""
    UNKNOWN_SESSION = "unknown-session"


def decide_command(applied_sequence: int, sequence: int) -> CommandDecision:
    """Apply a session's commands one after another, never past a gap: `applied_sequence` is
    the highest sequence applied so far, and every sequence below it was applied too."""
    if sequence <= applied_sequence:
        return CommandDecision.DUPLICATE
    if sequence == applied_sequence + 1:
        return CommandDecision.APPLY
    return CommandDecision.GAP


def clamp_timeout(requested_ms: int, default_ms: int) -> int:
    """The session timeout a server grants: the default for 0, else within fixed bounds."""
    if requested_ms <= 0:
        return default_ms
    return max(MIN_SESSION_TIMEOUT_MS, min(MAX_SESSION_TIMEOUT_MS, requested_ms))


class SessionTable:
    """All sessions, changed only by applying log entries."""

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, session_id: int) -> Session | None:
        return self.sessions.get(session_id)

    def register(
        self, index: int, client: str, timeout: int, now: int, identity: str = ""
    ) -> Session:
        session = Session(
            id=index, client=client, timeout=timeout, last_active=now, identity=identity
        )
        self.sessions[index] = session
        return session

    def keep_alive(
        self, session_id: int, command_sequence: int, event_index: int, now: int
    ) -> bool:
        """Record that the client is alive and what it has received; frees cached state."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        session.last_active = max(session.last_active, now)
        for sequence in [s for s in session.results if s <= command_sequence]:
            del session.results[sequence]
        if event_index > session.acknowledged_event_index:
            session.acknowledged_event_index = event_index
            while session.events and session.events[0].index <= event_index:
                session.events.popleft()
        return True

    def remove(self, session_id: int) -> Session | None:
        return self.sessions.pop(session_id, None)

    def touch_all(self, now: int) -> None:
        """A new leader took office: give every session a full timeout to find it."""
        for session in self.sessions.values():
            session.last_active = max(session.last_active, now)

    def expired(self, now: int) -> list[Session]:
        """Sessions whose last activity is more than their timeout before `now` (log time)."""
        return [s for s in self.sessions.values() if now >= s.expires_at]

    def next_expiry(self, excluding: Container[int] = ()) -> int | None:
        """The earliest log time at which a session not in `excluding` expires, if nothing
        keeps it alive first (None without such sessions): when the leader looks next."""
        return min(
            (s.expires_at for s in self.sessions.values() if s.id not in excluding), default=None
        )

    def decide(self, session_id: int, sequence: int) -> CommandDecision:
        session = self.sessions.get(session_id)
        if session is None:
            return CommandDecision.UNKNOWN_SESSION
        return decide_command(session.command_sequence, sequence)

    def record(self, session: Session, sequence: int, result: CachedResult) -> None:
        """The command at `sequence` was applied with this result."""
        session.command_sequence = max(session.command_sequence, sequence)
        session.results[sequence] = result

    def publish(self, session: Session, index: int, event: Event) -> None:
        """Queue an event published while applying the entry at `index`."""
        if session.events and session.events[-1].index == index:
            session.events[-1].events.append(event)
            return
        session.events.append(EventBatch(index, session.event_index, [event]))
        session.event_index = index


class Sequencing(enum.Enum):
    """How the leader treats a command request, given how far the session is sequenced."""

    NOW = "now"
    """Hand it to the raft loop now (a retry of an old sequence too: it is deduplicated when
    applied)."""
    WAIT = "wait"
    """It arrived early: hold it until the one before it has been handed on."""
    REJECT = "reject"
    """Too far ahead to hold: the client must resubmit the earlier ones first."""


def classify_sequence(sequence: int, sequenced: int, max_queue: int) -> Sequencing:
    """Sequence a command request against `sequenced`, the highest sequence of the session
    already handed on, holding at most `max_queue` early arrivals."""
    if sequence <= sequenced + 1:
        return Sequencing.NOW
    if sequence - sequenced > max_queue:
        return Sequencing.REJECT
    return Sequencing.WAIT


@attrs.define
class SessionSequencer:
    """The leader's marks for one session in one term, so that it never appends a command
    past a gap.

    `queued` is the highest sequence handed to the raft loop (its inbox is first in, first
    out, so the next command may be handed on behind it at once); `appended` the highest
    appended to the log in this term, or applied before it. A command is appended only if
    every sequence before it is (`may_append`, checked by the loop at the moment of
    appending); a refused command moves `queued` back, so nothing after it is appended
    until it is resubmitted.
    """

    term: int
    appended: int
    queued: int = attrs.field()

    @queued.default
    def _queued_default(self) -> int:
        return self.appended

    def classify(self, sequence: int, max_queue: int) -> Sequencing:
        return classify_sequence(sequence, self.queued, max_queue)

    def queue(self, sequence: int) -> None:
        """`sequence` was handed to the raft loop."""
        self.queued = max(self.queued, sequence)

    def may_append(self, sequence: int, term: int) -> bool:
        """Whether the loop may append `sequence` now, as leader of `term`."""
        return term == self.term and sequence <= self.appended + 1

    def appended_one(self, sequence: int) -> None:
        self.appended = max(self.appended, sequence)
        self.queued = max(self.queued, self.appended)

    def refused(self) -> None:
        """A command handed on was not appended: later ones must wait for its retry."""
        self.queued = self.appended
