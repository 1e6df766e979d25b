"""A named election among client sessions: one leader at a time, candidates in arrival order.

A leadership's term is the log index of the command that elected it, so terms only grow and
serve as fencing tokens. Observers hear of every change of leader. A closed session's
leadership, candidacies and observers go. Request id 0 is the older `recipes.election`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import attrs

from ...election import ELECTED_EVENT
from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = [
    "ElectionCampaign",
    "ElectionLeader",
    "ElectionObserve",
    "ElectionResign",
    "ElectionResource",
    "ElectionUnobserve",
]

LEGACY = 0


@attrs.frozen
class ElectionCampaign(ResourceCommand):
    """Stand with `proposal`: returns the term if elected at once, else None (queued; a
    [election, name, request, term] event follows when elected)."""

    kind: ClassVar[str] = "election"
    request: int = 0
    proposal: Any = None


@attrs.frozen
class ElectionResign(ResourceCommand):
    """Step down, or leave the candidates; returns whether `request` was leader or candidate."""

    kind: ClassVar[str] = "election"
    request: int = 0


@attrs.frozen
class ElectionObserve(ResourceCommand):
    """Hear of each change of leader as [election, name, request, leader] events; returns the
    leader now. A leader is [session id, proposal, term], or None."""

    kind: ClassVar[str] = "election"
    request: int = 0


@attrs.frozen
class ElectionUnobserve(ResourceCommand):
    """Stop the observer `request`; returns whether it was observing."""

    kind: ClassVar[str] = "election"
    request: int = 0


@attrs.frozen
class ElectionLeader(ResourceQuery):
    """The leader: [session id, proposal, term], or None."""

    kind: ClassVar[str] = "election"


class ElectionResource(Resource):
    kind: ClassVar[str] = "election"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.leader: tuple[int, int, Any, int] | None = None
        """(session, request, proposal, term)."""
        self.candidates: deque[tuple[int, int, Any]] = deque()
        self.observers: dict[tuple[int, int], None] = {}
        """(session, request) of each observer, in the order they came."""

    def view(self) -> list[Any] | None:
        """The leader as queries and events show it."""
        if self.leader is None:
            return None
        session, _, proposal, term = self.leader
        return [session, proposal, term]

    def campaign(self, session: int, request: int, proposal: Any, host: Host) -> int | None:
        if self.leader is not None and self.leader[:2] == (session, request):
            return self.leader[3]
        if self.leader is None:
            self._elect(session, request, proposal, host)
            return host.index
        if all(c[:2] != (session, request) for c in self.candidates):
            self.candidates.append((session, request, proposal))
        return None

    def resign(self, session: int, request: int, host: Host) -> bool:
        before = len(self.candidates)
        self.candidates = deque(c for c in self.candidates if c[:2] != (session, request))
        if self.leader is not None and self.leader[:2] == (session, request):
            self._next(host)
            return True
        return len(self.candidates) != before

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, ElectionCampaign):
            return self.campaign(session, op.request, op.proposal, host)
        if isinstance(op, ElectionResign):
            return self.resign(session, op.request, host)
        if isinstance(op, ElectionObserve):
            self.observers[(session, op.request)] = None
            return self.view()
        if isinstance(op, ElectionUnobserve):
            return self.observers.pop((session, op.request), False) is None
        raise TypeError(f"not an election command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        return self.view()

    def legacy_leader(self) -> list[int] | None:
        """The older recipe's [session id, epoch]."""
        return None if self.leader is None else [self.leader[0], self.leader[3]]

    def on_close(self, session: int, host: Host) -> None:
        self.candidates = deque(c for c in self.candidates if c[0] != session)
        self.observers = {o: None for o in self.observers if o[0] != session}
        if self.leader is not None and self.leader[0] == session:
            self._next(host)

    def _elect(self, session: int, request: int, proposal: Any, host: Host) -> None:
        self.leader = (session, request, proposal, host.index)
        self._tell_observers(host)

    def _next(self, host: Host) -> None:
        """The leader left: elect the first candidate whose session is open, and tell it."""
        self.leader = None
        while self.candidates:
            session, request, proposal = self.candidates.popleft()
            if not host.is_open(session):
                continue
            self.leader = (session, request, proposal, host.index)
            if request == LEGACY:
                host.publish_raw(session, ELECTED_EVENT, [self.name, host.index])
            else:
                host.publish(session, self.kind, self.name, request, host.index)
            break
        self._tell_observers(host)

    def _tell_observers(self, host: Host) -> None:
        view = self.view()
        for session, request in self.observers:
            host.publish(session, self.kind, self.name, request, view)

    def idle(self) -> bool:
        return self.leader is None and not self.candidates and not self.observers

    def dump(self) -> list[Any]:
        leader = list(self.leader) if self.leader else None
        return [[leader, [list(c) for c in self.candidates], [list(o) for o in self.observers]]]

    def load(self, chunks: list[Any]) -> None:
        leader, candidates, observers = chunks[0]
        self.leader = (leader[0], leader[1], leader[2], leader[3]) if leader else None
        self.candidates = deque((s, r, p) for s, r, p in candidates)
        self.observers = {(s, r): None for s, r in observers}
