"""Leader election among clients: the first session to run is leader until its session closes
or expires or it resigns; the next candidate is told by an event. Each leadership has an epoch
that only grows, so a deposed leader's actions can be fenced.

    election = Election(client, "scheduler")
    epoch = await election.run()     # returns once this client leads
    ...
    await election.resign()

Serve `ElectionStateMachine` on the cluster.
"""

from __future__ import annotations

import attrs

from ..client.client import CopycatClient
from ..protocol.codec import registry
from ..protocol.operations import Command, Query
from ..state_machine import Commit, ServerSession, StateMachine
from .queueing import next_live_session, require_client, require_session

__all__ = ["Election", "ElectionStateMachine", "Leader", "Resign", "Run"]

ELECTED_EVENT = "copycat.election.elected"


@attrs.frozen
class Run(Command):
    """Stand for election: returns the epoch if elected at once, else None (an event follows)."""

    name: str


@attrs.frozen
class Resign(Command):
    """Step down (or leave the queue of candidates)."""

    name: str


@attrs.frozen
class Leader(Query):
    """[session id, epoch] of the current leader, or None."""

    name: str


class ElectionStateMachine(StateMachine):
    """Per name: the leader's session and epoch, and the queue of candidates."""

    def __init__(self) -> None:
        self.leaders: dict[str, tuple[int, int]] = {}
        self.candidates: dict[str, list[int]] = {}
        self.epochs: dict[str, int] = {}

    def run(self, commit: Commit[Run]) -> int | None:
        session = _session(commit)
        name = commit.operation.name
        current = self.leaders.get(name)
        if current is not None and current[0] == session.id:
            return current[1]
        if current is None:
            return self._elect(name, session.id)
        queue = self.candidates.setdefault(name, [])
        if session.id not in queue:
            queue.append(session.id)
        return None

    def resign(self, commit: Commit[Resign]) -> None:
        self._leave(commit.operation.name, _session(commit).id)

    def leader(self, commit: Commit[Leader]) -> list[int] | None:
        current = self.leaders.get(commit.operation.name)
        return list(current) if current else None

    def on_close(self, session: ServerSession) -> None:
        for name in list(set(self.leaders) | set(self.candidates)):
            self._leave(name, session.id)

    def _elect(self, name: str, session_id: int) -> int:
        epoch = self.epochs[name] = self.epochs.get(name, 0) + 1
        self.leaders[name] = (session_id, epoch)
        return epoch

    def _leave(self, name: str, session_id: int) -> None:
        queue = self.candidates.get(name, [])
        if session_id in queue:
            queue.remove(session_id)
        current = self.leaders.get(name)
        if current is None or current[0] != session_id:
            return
        del self.leaders[name]
        candidate = next_live_session(queue, self.context.sessions)
        if candidate is not None:
            epoch = self._elect(name, candidate.id)
            candidate.publish(ELECTED_EVENT, [name, epoch])


def _session(commit: Commit[object]) -> ServerSession:
    return require_session(commit, "elections")


class Election:
    """The client side of one named election."""

    def __init__(self, client: CopycatClient, name: str) -> None:
        self.client = require_client(client, "Election")
        self.name = name

    async def run(self) -> int:
        """Wait until this session leads; returns the leadership's epoch."""
        async with self.client.events(ELECTED_EVENT) as events:
            epoch = await self.client.submit(Run(self.name))
            if epoch is not None:
                return int(epoch)
            async for event in events:
                name, epoch = event.payload
                if name == self.name:
                    return int(epoch)
        raise RuntimeError("event stream ended")  # pragma: no cover

    async def resign(self) -> None:
        await self.client.submit(Resign(self.name))


registry.register(Run, 33030, builtin=True)
registry.register(Resign, 33031, builtin=True)
registry.register(Leader, 33032, builtin=True)
