"""Storage writes off the raft loop's path (etcd-io/raft's asynchronous storage writes).

The loop queues each Ready's writes and goes on stepping, sending and replicating; one task
makes them durable in order, many Readys in one write when they queued up meanwhile, and
reports back. Whatever a Ready promises (a vote, an acknowledgement, an apply) is carried out
only once its write and every earlier one are durable: the loop holds those parts back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from ..core.raft import HardState, Ready
from ..protocol.messages import Entry
from ..storage.base import LogStorage
from .observations import Observer

WRITE_QUEUE = 256
"""Queued writes before the loop waits for the disk (backpressure, not unbounded memory)."""


@attrs.define(eq=False)
class QueuedWrite:
    """A Ready's storage work (or a storage operation run in order with the saves), and what
    follows it once durable."""

    ready: Ready | None = None
    early: bool = False
    """The Ready's messages were sent already (a leader's appends: see RaftLoop)."""
    durable_at: tuple[int, int] | None = None
    """(index, term) of the log's last entry when queued: durable once this is written."""
    operation: Callable[[LogStorage], Awaitable[None]] | None = None
    """Instead of a Ready: storage work that must keep its place among the saves."""
    error: BaseException | None = None
    """What `operation` raised, if anything."""
    call: Any = None
    """The loop's own: whom to answer once `operation` is done."""

    @property
    def writes(self) -> bool:
        ready = self.ready
        return ready is not None and (
            ready.hard_state is not None or bool(ready.entries) or ready.truncate_from is not None
        )


@attrs.define
class Save:
    """One call of LogStorage.save covering one or more consecutive queued writes."""

    hard_state: HardState | None = None
    truncate_from: int | None = None
    entries: list[Entry] = attrs.Factory(list)


def plan_saves(queued: Sequence[QueuedWrite]) -> list[Save | QueuedWrite]:
    """Merge consecutive Ready writes into as few saves as keeps them equivalent: a later
    write joins the one before it unless it truncates (a truncation starts a save of its own,
    so each save still means "truncate, then append"); an operation stands alone, in place."""
    plan: list[Save | QueuedWrite] = []
    current: Save | None = None
    for item in queued:
        if item.operation is not None:
            plan.append(item)
            current = None
            continue
        ready = item.ready
        if ready is None or not item.writes:
            continue
        if current is None or ready.truncate_from is not None:
            current = Save(truncate_from=ready.truncate_from)
            plan.append(current)
        current.entries.extend(ready.entries)
        if ready.hard_state is not None:
            current.hard_state = ready.hard_state
    return plan


class Persister:
    """The one task that writes to the log storage, in the order writes were queued."""

    def __init__(
        self,
        storage: LogStorage,
        on_durable: Callable[[list[QueuedWrite]], None],
        metrics: Observer | None = None,
    ) -> None:
        """`on_durable(items)` is called, in order, once items are durable (it must not block:
        the loop collects them on its next turn)."""
        self.storage = storage
        self.on_durable = on_durable
        self.metrics = metrics
        self._send, self._receive = trio.open_memory_channel[QueuedWrite](WRITE_QUEUE)
        self.queued = 0
        """Items queued and not yet reported durable."""
        self._writing: list[QueuedWrite] = []
        """The batch being written now."""

    async def put(self, item: QueuedWrite) -> None:
        """Queue a write; waits only when WRITE_QUEUE of them are queued already."""
        self.queued += 1
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            await self._send.send(item)

    async def run(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self._writing = batch
            for step in plan_saves(batch):
                await self._do(step)
            self._writing = []
            self.queued -= len(batch)
            self.on_durable(batch)

    async def _do(self, step: Save | QueuedWrite) -> None:
        if isinstance(step, QueuedWrite):
            assert step.operation is not None
            try:
                await step.operation(self.storage)
            except Exception as exc:  # the caller of RaftLoop.call hears of it
                step.error = exc
            return
        await self.storage.save(
            hard_state=step.hard_state, truncate_from=step.truncate_from, entries=step.entries
        )
        if self.metrics is not None and step.entries:
            self.metrics.batch_entries.observe(len(step.entries))

    def unwritten(self) -> list[QueuedWrite]:
        """What is being written or still queued (the loop is stopping: it fails their
        waiters, who must not wait for a write that will not be reported)."""
        left, self._writing = self._writing, []
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                return left
