"""The persister's plan: consecutive Ready writes merge into as few saves as stay equivalent."""

from __future__ import annotations

import random
from typing import Any

import attrs
import trio
import trio.testing

from copycat_trio.core.raft import HardState, RaftConfig, RaftCore, Ready
from copycat_trio.protocol.messages import AppendRequest, AppendResponse, CommandEntry, Envelope
from copycat_trio.server.loop import RaftLoop, Step
from copycat_trio.server.persistence import QueuedWrite, Save, plan_saves

from ..core.harness import members


def entries(*indexes: int, term: int = 1) -> list[CommandEntry]:
    return [CommandEntry(term=term, index=i) for i in indexes]


def write(
    *indexes: int, term: int = 1, truncate_from: int | None = None, vote: int | None = None
) -> QueuedWrite:
    hard_state = HardState(term, vote) if vote is not None else None
    ready = Ready(
        hard_state=hard_state, truncate_from=truncate_from, entries=entries(*indexes, term=term)
    )
    return QueuedWrite(ready=ready)


async def nothing(storage: object) -> None:
    return None


def test_appends_merge_into_one_save_with_the_last_hard_state() -> None:
    plan = plan_saves([write(1, 2, vote=1), write(3), write(4, 5, term=2, vote=2)])
    assert plan == [
        Save(hard_state=HardState(2, 2), entries=entries(1, 2) + entries(3) + entries(4, 5, term=2))
    ]


def test_a_truncation_starts_its_own_save() -> None:
    """Each save means "truncate, then append": merging a truncation into an earlier save would
    truncate before that save's own entries were written."""
    plan = plan_saves([write(5, 6, 7), write(6, term=2, truncate_from=6), write(7, term=2)])
    assert plan == [
        Save(entries=entries(5, 6, 7)),
        Save(truncate_from=6, entries=entries(6, 7, term=2)),
    ]


def test_an_operation_keeps_its_place_and_ready_without_writes_add_nothing() -> None:
    operation = QueuedWrite(operation=nothing)
    empty = QueuedWrite(ready=Ready())
    plan = plan_saves([write(1), empty, operation, write(2), write(3)])
    assert plan == [Save(entries=entries(1)), operation, Save(entries=entries(2, 3))]


# --- the loop with a disk that holds its writes ------------------------------------------------


class HeldStorage:
    """Log storage whose saves wait until released (a slow disk)."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.saved: list[int] = []

    async def save(self, *, hard_state: object, truncate_from: object, entries: list[Any]) -> None:
        self.started.set()
        await self.release.wait()
        self.saved += [entry.index for entry in entries]


class RecordingPeers:
    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def learn(self, member_id: int, address: str) -> None:
        pass

    def send(self, envelope: Envelope) -> None:
        self.sent.append(envelope)


class Handed:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    def hand_over(self, entries: list[Any]) -> None:
        self.entries += entries


def acknowledgements(peers: RecordingPeers) -> list[AppendResponse]:
    return [e.message for e in peers.sent if isinstance(e.message, AppendResponse)]


async def test_the_loop_goes_on_while_a_write_is_held_and_acknowledges_only_once_durable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """etcd-io/raft's asynchronous storage writes: stepping goes on during the write, but the
    follower's acknowledgement (and the apply of what the append committed) waits for it."""
    core = RaftCore(
        2, config=RaftConfig(), members=members(3), rng=random.Random(1), now=trio.current_time()
    )
    storage, peers, executor = HeldStorage(), RecordingPeers(), Handed()
    loop = RaftLoop(core, storage, peers, executor)  # type: ignore[arg-type]
    append = AppendRequest(
        term=1,
        leader=1,
        prev_log_index=0,
        prev_log_term=0,
        entries=tuple(entries(1, 2)),
        commit_index=1,
    )
    with trio.fail_after(5):  # a loop that waits for its disk never answers the call below
        await follow(loop, storage, peers, executor, append)


async def follow(
    loop: RaftLoop,
    storage: HeldStorage,
    peers: RecordingPeers,
    executor: Handed,
    append: AppendRequest,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await loop.inbox_send.send(Step(1, append))
        await storage.started.wait()
        # The loop still serves while the disk holds the write...
        assert await loop.call(lambda core, now: core.log.last_index) == 2
        heartbeat = attrs.evolve(append, prev_log_index=2, prev_log_term=1, entries=())
        await loop.inbox_send.send(Step(1, heartbeat))
        await trio.testing.wait_all_tasks_blocked()  # the loop has done all it can
        # ...but nothing it promises leaves before the write is durable: not the append's
        # acknowledgement, not the heartbeat's (it would claim entry 2), and nothing is applied.
        assert acknowledgements(peers) == [] and executor.entries == []
        storage.release.set()
        await trio.testing.wait_all_tasks_blocked()  # the write, then what it held back
        assert storage.saved == [1, 2]
        assert [a.log_index for a in acknowledgements(peers)] == [2, 2]
        assert [e.index for e in executor.entries] == [1]
        nursery.cancel_scope.cancel()
