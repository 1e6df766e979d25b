"""Readys from the pure core, persisted the way the raft loop does it, on real DiskStorage.

A snapshot restore runs as a loop call whose storage step (`align_storage`) runs before the
batch's Ready is saved; entries the core accepted earlier in the same batch sit in that Ready.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from copycat_trio.core.raft import HardState, RaftConfig, RaftCore, Ready
from copycat_trio.protocol.messages import AppendRequest, CommandEntry, Entry, Member
from copycat_trio.server.replication import align_storage
from copycat_trio.storage import DiskStorage
from copycat_trio.testing.simdisk import SimDisk

CONFIG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1)
MEMBERS = tuple(Member(i, f"127.0.0.1:{9000 + i}") for i in range(1, 4))


def cmd(term: int, index: int) -> CommandEntry:
    return CommandEntry(term=term, index=index, operation=f"{index}:{term}")


def follower(entries: list[Entry], term: int) -> RaftCore:
    return RaftCore(
        2,
        config=CONFIG,
        members=MEMBERS,
        hard_state=HardState(term, None),
        entries=entries,
        rng=random.Random(0),
        now=0.0,
    )


def append(core: RaftCore, term: int, prev: int, prev_term: int, *entries: Entry) -> None:
    request = AppendRequest(
        term=term,
        leader=1,
        prev_log_index=prev,
        prev_log_term=prev_term,
        entries=entries,
        commit_index=0,
    )
    core.step(1, request, now=1.0)


async def save(storage: DiskStorage | SimDisk, ready: Ready) -> None:
    await storage.save(
        hard_state=ready.hard_state, truncate_from=ready.truncate_from, entries=ready.entries
    )


async def restore_in_batch(storage: DiskStorage | SimDisk, core: RaftCore) -> None:
    """The loop's order: the call's storage step first, then the batch's Ready."""
    await align_storage(storage, core)
    await save(storage, core.ready())


async def check_log_continues_snapshot(
    storage: DiskStorage | SimDisk, core: RaftCore, snapshot_term: int
) -> None:
    """The stored log takes the leader's next entries, and a restart sees what the core has."""
    index = core.log.last_index
    append(core, snapshot_term, index, core.log.term_at(index) or 0, cmd(snapshot_term, index + 1))
    await save(storage, core.ready())
    assert storage.last_index == index + 1
    stored = (await storage.load()).entries
    assert [e for e in stored if e.index > core.log.snapshot_index] == core.log.slice(
        core.log.snapshot_index + 1, core.log.last_index + 1
    )


async def stale_append_then_restore(storage: DiskStorage | SimDisk) -> None:
    await storage.load()
    core = follower([cmd(1, i) for i in range(1, 5)], term=1)
    await storage.save(
        hard_state=HardState(1, None), truncate_from=None, entries=[cmd(1, i) for i in range(1, 5)]
    )
    # One batch: an append of 5..7 (still in the Ready), then a snapshot to 10 the log lacks.
    append(core, 1, 4, 1, cmd(1, 5), cmd(1, 6), cmd(1, 7))
    assert core.restore(10, 1, MEMBERS, 0)
    await restore_in_batch(storage, core)
    await check_log_continues_snapshot(storage, core, 1)


async def conflicting_append_then_restore(storage: DiskStorage | SimDisk) -> None:
    await storage.load()
    stale = [cmd(1, i) for i in range(1, 13)]
    core = follower(stale, term=2)
    await storage.save(hard_state=HardState(2, None), truncate_from=None, entries=stale)
    # One batch: an append that cuts the stale suffix at 8, then a snapshot to 10 (term 3).
    append(core, 2, 7, 1, cmd(2, 8), cmd(2, 9))
    assert core.restore(10, 3, MEMBERS, 0)
    await restore_in_batch(storage, core)
    await check_log_continues_snapshot(storage, core, 3)


async def restore_then_append(storage: DiskStorage | SimDisk) -> None:
    await storage.load()
    core = follower([cmd(1, i) for i in range(1, 5)], term=1)
    await storage.save(
        hard_state=HardState(1, None), truncate_from=None, entries=[cmd(1, i) for i in range(1, 5)]
    )
    # One batch, the other order: the snapshot to 10, then the leader's entries after it.
    assert core.restore(10, 1, MEMBERS, 0)
    append(core, 1, 10, 1, cmd(1, 11), cmd(1, 12))
    await restore_in_batch(storage, core)
    assert storage.last_index == 12
    await check_log_continues_snapshot(storage, core, 1)


async def test_stale_append_and_restore_in_one_ready_on_disk(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await stale_append_then_restore(storage)


async def test_conflicting_append_and_restore_in_one_ready_on_disk(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await conflicting_append_then_restore(storage)


async def test_restore_then_append_in_one_ready_on_disk(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await restore_then_append(storage)


async def test_the_same_readys_on_simdisk() -> None:
    for scenario in (stale_append_then_restore, conflicting_append_then_restore):
        await scenario(SimDisk("m", random.Random(0), latency=0))
    await restore_then_append(SimDisk("m", random.Random(0), latency=0))


class Unregistered:
    """An operation type the codec does not know."""


BAD_SAVES: dict[str, tuple[int | None, list[Entry]]] = {
    "gap": (None, [cmd(2, 5)]),
    "gap inside": (None, [cmd(2, 4), cmd(2, 6)]),
    "overlap": (None, [cmd(2, 3)]),
    "lower term": (None, [cmd(1, 4)]),
    "gap after a truncation": (3, [cmd(2, 4)]),
    "truncate_from 0": (0, []),
    "not an entry": (None, ["entry"]),  # type: ignore[list-item]
    "index beyond 64 bits": (None, [cmd(2, 2**64)]),
    "does not encode": (None, [CommandEntry(term=2, index=4, operation=Unregistered())]),
}


@pytest.mark.parametrize("bad", BAD_SAVES, ids=list(BAD_SAVES))
async def test_simdisk_refuses_what_disk_storage_refuses(tmp_path: Path, bad: str) -> None:
    truncate_from, batch = BAD_SAVES[bad]
    refusals = []
    async with DiskStorage(tmp_path) as disk:
        for storage in (disk, SimDisk("m", random.Random(0), latency=0)):
            await storage.load()
            good = [cmd(2, i) for i in range(1, 4)]
            await storage.save(hard_state=HardState(2, None), truncate_from=None, entries=good)
            with pytest.raises(Exception) as caught:
                await storage.save(hard_state=None, truncate_from=truncate_from, entries=batch)
            refusals.append(type(caught.value))
            assert [e.index for e in (await storage.load()).entries] == [1, 2, 3]
    assert refusals[0] is refusals[1]
