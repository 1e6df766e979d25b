"""What the lock and election recipes share: a session-only command, a FIFO queue of waiting
sessions promoted past those that have closed, and a client checked once at construction."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from ..client.client import CopycatClient
from ..state_machine import Commit, ServerSession


def require_session(commit: Commit[object], what: str) -> ServerSession:
    """The commit's session; ValueError (a typed APPLICATION error for the client) without one."""
    if commit.session is None:
        raise ValueError(f"{what} need a client session")
    return commit.session


def next_live_session(
    queue: deque[int] | list[int], sessions: Mapping[int, ServerSession]
) -> ServerSession | None:
    """Take queued session ids, oldest first, until one is still open: its session, or None
    when none is (the closed ones are dropped from the queue on the way)."""
    while queue:
        waiter = queue.popleft() if isinstance(queue, deque) else queue.pop(0)
        session = sessions.get(waiter)
        if session is not None:
            return session
    return None


def require_client(client: CopycatClient, recipe: str) -> CopycatClient:
    """`client`, if it is a CopycatClient; TypeError at once otherwise (an untyped caller
    would else meet an AttributeError at the first operation)."""
    if not isinstance(client, CopycatClient):
        raise TypeError(f"{recipe} needs a CopycatClient, not {type(client).__name__}")
    return client
