"""Applies committed entries to the user's state machine, in log order, and completes waiters.

Log time comes from the leader's timestamps and never goes backwards, so every server sees the
same `commit.time`. An exception in user code becomes an APPLICATION error for that one command;
the server goes on.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from ..protocol.errors import ApplicationError, CommandError, CopycatError, ErrorInfo, ErrorType
from ..protocol.messages import CommandEntry, Entry
from ..state_machine import Commit, StateMachine

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Pending:
    """A proposal waiting for its entry to be applied."""

    index: int
    term: int
    event: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: CopycatError | None = None

    def resolve(self, result: Any = None, error: CopycatError | None = None) -> None:
        if not self.event.is_set():
            self.result, self.error = result, error
            self.event.set()


def application_error(exc: BaseException) -> ApplicationError:
    return ApplicationError(f"{type(exc).__qualname__}: {exc}")


class Executor:
    """Owns the state machine; the raft loop hands it committed entries."""

    def __init__(self, state_machine: StateMachine) -> None:
        self.state_machine = state_machine
        self.applied_index = AsyncValue(0)
        self.log_time = 0
        self._queue: collections.deque[Entry] = collections.deque()
        self._wakeup = trio.Event()
        self.pending: dict[int, Pending] = {}
        self.applied_commands = 0
        self.application_errors = 0

    def hand_over(self, entries: list[Entry]) -> None:
        """Called by the raft loop; never blocks (the queue is bounded by the log itself)."""
        self._queue.extend(entries)
        self._wakeup.set()

    def expect(self, index: int, term: int) -> Pending:
        pending = self.pending[index] = Pending(index, term)
        return pending

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            count = 0
            while self._queue:
                self.apply(self._queue.popleft())
                count += 1
                if count % 256 == 0:
                    await trio.lowlevel.checkpoint()

    def apply(self, entry: Entry) -> None:
        self.log_time = max(self.log_time, entry.timestamp)
        result: Any = None
        error: CopycatError | None = None
        if isinstance(entry, CommandEntry):
            commit = Commit(operation=entry.operation, index=entry.index, time=self.log_time)
            try:
                result = self.state_machine.apply(commit)
            except CopycatError as exc:
                error = exc
            except Exception as exc:
                log.info("state machine raised on entry %s: %r", entry.index, exc)
                error = application_error(exc)
            self.applied_commands += 1
            if error is not None:
                self.application_errors += 1
        pending = self.pending.pop(entry.index, None)
        if pending is not None:
            if pending.term == entry.term:
                pending.resolve(result, error)
            else:
                pending.resolve(
                    error=CommandError(
                        f"entry {entry.index} was replaced by a new leader's entry; not applied"
                    )
                )
        self.applied_index.value = entry.index

    def query(self, operation: Any) -> tuple[Any, ErrorInfo | None]:
        """Evaluate a read against the current state (the caller has waited for the index)."""
        commit = Commit(operation=operation, index=self.applied_index.value, time=self.log_time)
        try:
            return self.state_machine.apply(commit), None
        except CopycatError as exc:
            return None, exc.to_info()
        except Exception as exc:
            return None, ErrorInfo(ErrorType.APPLICATION, f"{type(exc).__qualname__}: {exc}")
