"""Scheduled callbacks are replicated state: members that installed a snapshot, restarted from
one, or applied the whole log fire the same callbacks at the same log times (MockClock,
in-memory network, simulated disks with snapshots)."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
import trio

from copycat_trio.protocol.codec import register
from copycat_trio.protocol.messages import CommandEntry, NoOpEntry, RegisterEntry
from copycat_trio.protocol.operations import Command
from copycat_trio.server.executor import BufferedSink, BufferedSource, Executor
from copycat_trio.state_machine import (
    Commit,
    Scheduled,
    SnapshotSink,
    SnapshotSource,
    Snapshottable,
    StateMachine,
)
from copycat_trio.storage.errors import StorageCorruptionError
from copycat_trio.storage.snapshots import SnapshotStore
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.simdisk import SimDisk


@register(40471)
@attrs.frozen
class Start(Command):
    """Start the repeating tick (every interval_ms)."""

    interval_ms: int


@register(40472)
@attrs.frozen
class Arm(Command):
    """Schedule a ring and a chime, both after delay_ms (the same due time: a tie)."""

    delay_ms: int


@register(40473)
@attrs.frozen
class Mark(Command):
    """Does nothing: its log time makes every timer due by then fire."""


class Alarms(StateMachine, Snapshottable):
    """Records every callback it fires with the log time it fired at; the record is its state.

    The callbacks are bound methods without arguments and `install` schedules nothing: the
    timers come back from the snapshot."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, int]] = []
        self.ticks = 0

    def start(self, commit: Commit[Start]) -> None:
        self.context.schedule(
            commit.operation.interval_ms, self._tick, interval_ms=commit.operation.interval_ms
        )

    def arm(self, commit: Commit[Arm]) -> None:
        self.context.schedule(commit.operation.delay_ms, self._ring)
        self.context.schedule(commit.operation.delay_ms, self._chime)

    def mark(self, commit: Commit[Mark]) -> None:
        pass

    def _tick(self) -> None:
        self.ticks += 1
        self.fired.append((f"tick{self.ticks}", self.context.time))

    def _ring(self) -> None:
        self.fired.append(("ring", self.context.time))

    def _chime(self) -> None:
        self.fired.append(("chime", self.context.time))

    def snapshot(self, writer: SnapshotSink) -> None:
        writer.write_object([self.ticks, [list(f) for f in self.fired]])

    def install(self, reader: SnapshotSource) -> None:
        ticks, fired = reader.read_object()
        self.ticks, self.fired = ticks, [(name, time) for name, time in fired]


def sim_disks() -> Any:
    disks: dict[int, SimDisk] = {}

    def storage(member_id: int) -> SimDisk:
        if member_id not in disks:
            disks[member_id] = SimDisk(f"member{member_id}", random.Random(member_id))
        return disks[member_id]

    return storage


async def settle(cluster: Any) -> list[list[tuple[str, int]]]:
    """Wait until every member applied the same last index; their fired lists, by member."""
    with trio.fail_after(30):
        while len({s.status().applied_index for s in cluster.servers.values()}) != 1 or any(
            s.status().applied_index < s.status().commit_index for s in cluster.servers.values()
        ):
            await trio.sleep(0.1)
    return [list(cluster.servers[i].state_machine.fired) for i in cluster.all_ids()]


async def test_members_that_installed_or_restored_a_snapshot_fire_the_same_timers(
    autojump_clock: Any,
) -> None:
    async with open_memory_cluster(
        3, Alarms, storage=sim_disks(), snapshot_every=8, catch_up_entries=0
    ) as cluster:
        leader = await cluster.wait_for_leader()
        behind = next(i for i in cluster.all_ids() if i != leader)
        others = [i for i in cluster.all_ids() if i != behind]
        async with cluster.client(others) as client:
            await client.submit(Start(700))
            for delay in (300, 1200, 2500):
                await client.submit(Arm(delay))
            await trio.sleep(0.5)
            # `behind` holds those timers; cut off, it applies nothing while the others go on,
            # snapshot and compact, so it must install the leader's snapshot.
            cluster.isolate(behind)
            for step in range(30):
                await client.submit(Arm(400 + 100 * (step % 7)))
                await trio.sleep(0.13)
            cluster.network.heal()
            with trio.fail_after(30):
                while cluster.servers[behind]._replication.installed == 0:
                    await trio.sleep(0.1)
            # A restart restores the member's own latest snapshot and replays the log after it.
            restarted = next(i for i in others if i != cluster.leaders()[0])
            cluster.crash(restarted)
            for _ in range(12):
                await client.submit(Arm(900))
                await trio.sleep(0.2)
            await cluster.restart([restarted])
            for delay in (100, 1500):
                await client.submit(Arm(delay))
            await trio.sleep(4)
            await client.submit(Mark())
        fired = await settle(cluster)
        assert cluster.servers[restarted]._executor.snapshot_index > 0
        assert fired[1] == fired[0]
        assert fired[2] == fired[0]
        names = [name for name, _ in fired[0]]
        assert names.count("ring") == names.count("chime") == 47  # every Arm, by the Mark


# --- the executor on its own: snapshots on disk (user code in worker threads) ---------------


@register(40474)
@attrs.frozen
class Every(Command):
    """Fire `name` after delay_ms, or every interval_ms when it is set."""

    name: str
    delay_ms: int
    interval_ms: int | None = None


@register(40475)
@attrs.frozen
class Stop(Command):
    name: str


class Timers(StateMachine, Snapshottable):
    """Named timers with plain-data arguments; keeps their handles to cancel them, and finds
    them again after an install through `context.timers`."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, int, int]] = []
        self.handles: dict[str, Scheduled] = {}
        self.installed_at: tuple[int, int, list[int]] | None = None
        """What `install` saw in the context: the snapshot's index, log time and sessions."""

    def every(self, commit: Commit[Every]) -> None:
        op = commit.operation
        handle = self.context.schedule(op.delay_ms, self._fire, op.name, interval_ms=op.interval_ms)
        self.handles[op.name] = handle

    def stop(self, commit: Commit[Stop]) -> None:
        self.handles.pop(commit.operation.name).cancel()

    def _fire(self, name: str) -> None:
        self.fired.append((name, self.context.time, self.context.index))
        if self.handles[name].interval_ms is None:
            del self.handles[name]

    def snapshot(self, writer: SnapshotSink) -> None:
        writer.write_object(
            [[list(f) for f in self.fired], {n: h.id for n, h in self.handles.items()}]
        )

    def install(self, reader: SnapshotSource) -> None:
        fired, ids = reader.read_object()
        self.fired = [(name, time, index) for name, time, index in fired]
        by_id = {timer.id: timer for timer in self.context.timers}
        self.handles = {name: by_id[timer_id] for name, timer_id in ids.items()}
        self.installed_at = (self.context.index, self.context.time, sorted(self.context.sessions))


def entries_from(first_index: int, commands: list[tuple[int, Any]]) -> list[Any]:
    return [
        CommandEntry(
            term=1,
            index=first_index + i,
            timestamp=time,
            operation=op,
            session=1,
            sequence=first_index + i - 1,
        )
        for i, (time, op) in enumerate(commands)
    ]


async def test_an_installed_snapshot_brings_back_every_timer_due_when_it_was(tmp_path) -> None:
    store = SnapshotStore(tmp_path)
    live = Executor(Timers(), snapshots=store)
    before = [RegisterEntry(term=1, index=1, timestamp=1000, client="c", timeout=60_000)]
    before += entries_from(
        2,
        [
            (1000, Every("tick", 100, 250)),
            (1010, Every("x", 300)),
            (1010, Every("y", 300)),  # due with x at 1310: x first, as scheduled
            (1020, Every("z", 50)),
            (1030, Every("slow", 500, 500)),
            (1200, Every("gone", 10)),
            (1205, Stop("gone")),  # a cancelled timer does not come back
        ],
    )
    after = entries_from(
        9,
        [(1400, Stop("slow")), (1500, Every("w", 0)), (2000, Every("v", 1)), (3000, Stop("tick"))],
    )
    after.append(NoOpEntry(term=2, index=13, timestamp=4000))
    for entry in before:
        live.apply(entry)
    await live.take_snapshot()
    info = await store.latest()
    assert info is not None and info.index == 8

    installed = Executor(Timers(), snapshots=store)
    await installed.install_snapshot(info)
    assert installed.state_machine.installed_at == (8, 1205, [1])
    assert installed.log_time == live.log_time == 1205
    assert [(t.id, t.due, t.args) for t in installed.context.timers] == [
        (t.id, t.due, t.args) for t in live.context.timers
    ]
    for entry in after:
        live.apply(entry)
        installed.apply(entry)
    assert installed.state_machine.fired == live.state_machine.fired
    # Ties fire in scheduling order; "slow" and "gone" were cancelled, "tick" stopped at 3000.
    # A timer fires just before the entry whose time is past its due time, under its index.
    assert live.state_machine.fired == [
        ("z", 1070, 7),
        ("tick", 1100, 7),
        ("x", 1310, 9),
        ("y", 1310, 9),
        ("tick", 1350, 9),
        ("w", 1500, 11),
        ("tick", 1600, 11),
        ("tick", 1850, 11),
        ("v", 2001, 12),
        ("tick", 2100, 12),
        ("tick", 2350, 12),
        ("tick", 2600, 12),
        ("tick", 2850, 12),
    ]
    assert installed.context.timers == ()  # "slow" and "tick" were cancelled through handles


async def test_install_replaces_the_timers_a_member_had(tmp_path) -> None:
    """A member that fell behind drops its own pending timers: only the snapshot's fire."""
    store = SnapshotStore(tmp_path)
    leader = Executor(Timers(), snapshots=store)
    behind = Executor(Timers(), snapshots=store)
    common = [RegisterEntry(term=1, index=1, timestamp=1000, client="c", timeout=60_000)]
    common += entries_from(2, [(1000, Every("a", 500))])
    for entry in common:
        leader.apply(entry)
        behind.apply(entry)
    stale = behind.context.timers[0]
    for entry in entries_from(3, [(1100, Stop("a")), (1200, Every("b", 100))]):
        leader.apply(entry)
    await leader.take_snapshot()
    info = await store.latest()
    assert info is not None
    await behind.install_snapshot(info)
    assert stale.cancelled
    tail = [*entries_from(5, [(2000, Every("c", 1))]), NoOpEntry(term=1, index=6, timestamp=3000)]
    for entry in tail:
        leader.apply(entry)
        behind.apply(entry)
    assert (
        behind.state_machine.fired
        == leader.state_machine.fired
        == [
            ("b", 1300, 5),
            ("c", 2001, 6),
        ]
    )


class Plain(StateMachine):
    """Not Snapshottable: never installs, so any callable may be scheduled."""


def test_a_snapshottable_state_machine_schedules_only_its_methods_with_plain_data() -> None:
    executor = Executor(Timers())
    context = executor.context
    with pytest.raises(TypeError, match="its own methods"):
        context.schedule(10, lambda: None)
    with pytest.raises(TypeError, match="its own methods"):
        context.schedule(10, Timers()._fire, "other instance")
    with pytest.raises(TypeError, match="CBOR-encodable"):
        context.schedule(10, executor.state_machine._fire, object())
    handle = context.schedule(10, executor.state_machine._fire, ("a", 1))
    assert handle.args == (["a", 1],)  # as a snapshot would give it back
    fired: list[int] = []
    plain = Executor(Plain())
    plain.context.schedule(0, lambda: fired.append(1))
    plain.apply(NoOpEntry(term=1, index=1, timestamp=5))
    assert fired == [1]


class Rescheduling(Timers):
    """Follows the old contract: schedules again in `install`."""

    def install(self, reader: SnapshotSource) -> None:
        super().install(reader)
        self.context.schedule(10, self._fire, "again")


class Renamed(StateMachine, Snapshottable):
    """Has no `_fire`: a snapshot with a timer for it cannot be installed."""

    def snapshot(self, writer: SnapshotSink) -> None:
        pass

    def install(self, reader: SnapshotSource) -> None:
        reader.read_object()


async def test_install_refuses_to_schedule_and_needs_the_timers_methods(tmp_path) -> None:
    store = SnapshotStore(tmp_path)
    live = Executor(Timers(), snapshots=store)
    for entry in [RegisterEntry(term=1, index=1, timestamp=1, client="c", timeout=60_000)]:
        live.apply(entry)
    live.apply(entries_from(2, [(1, Every("a", 5))])[0])
    await live.take_snapshot()
    info = await store.latest()
    assert info is not None
    with pytest.raises(RuntimeError, match="install must not schedule"):
        await Executor(Rescheduling(), snapshots=store).install_snapshot(info)
    with pytest.raises(StorageCorruptionError, match="_fire"):
        await Executor(Renamed(), snapshots=store).install_snapshot(info)


async def test_a_snapshot_written_before_timers_were_snapshotted_still_installs(tmp_path) -> None:
    """Format 1 had no timers section: it installs, with no timers."""
    store = SnapshotStore(tmp_path)
    async with store.create(3, 1) as writer:
        sink = BufferedSink(writer)
        sink.write_object(
            {
                "format": 1,
                "index": 3,
                "term": 1,
                "log_time": 777,
                "members": [],
                "configuration_index": 0,
                "sessions": 0,
            }
        )
        sink.write_object([[["old", 700, 2]], {}])
        await sink.drain()
    info = await store.latest()
    assert info is not None
    executor = Executor(Timers(), snapshots=store)
    header = await executor.install_snapshot(info)
    assert header.index == 3 and executor.log_time == 777
    assert executor.state_machine.fired == [("old", 700, 2)]
    assert executor.context.timers == ()


async def test_a_state_machine_that_never_scheduled_writes_the_earlier_format(tmp_path) -> None:
    """So members of the previous version can install its snapshots (a rolling upgrade); one
    that has scheduled writes format 2."""
    store = SnapshotStore(tmp_path)
    executor = Executor(Timers(), snapshots=store)
    executor.apply(RegisterEntry(term=1, index=1, timestamp=1, client="c", timeout=60_000))
    await executor.take_snapshot()
    executor.apply(entries_from(2, [(2, Every("a", 5))])[0])
    await executor.take_snapshot()
    formats = []
    for info in await store.list_all():
        async with store.open(info) as reader:
            formats.append((await BufferedSource.load(reader)).read_object()["format"])
    assert formats == [1, 2]
