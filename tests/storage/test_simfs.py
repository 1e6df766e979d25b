"""The real DiskStorage on the simulated file system: power loss at every file operation, torn
writes that are not a prefix, lost directory entries, failing fsyncs and damage at rest."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import Entry
from copycat_trio.storage import DiskStorage, StorageCorruptionError, StorageFailedError
from copycat_trio.testing.simfs import PowerLoss, SimFileSystem

from . import entries, entry

DIR = Path("/data/member-1")


async def test_everything_saved_survives_a_crash() -> None:
    fs = SimFileSystem(random.Random(0))
    async with DiskStorage(DIR, fs=fs, entries_per_segment=5) as storage:
        await storage.load()
        for first in (1, 6, 11):
            await storage.save(
                hard_state=HardState(2, 1), truncate_from=None, entries=entries(first, first + 4)
            )
        await storage.save(hard_state=None, truncate_from=9, entries=entries(9, 10, 2))
        async with storage.snapshots.create(5, 1) as writer:
            await writer.write(b"state" * 300)
        await storage.compact_before(6)
    fs.crash()
    async with DiskStorage(DIR, fs=fs) as storage:
        state = await storage.load()
        assert state.hard_state == HardState(2, 1)
        assert list(state.entries) == [*entries(6, 8), *entries(9, 10, 2)]
        info = await storage.snapshots.latest()
        assert info is not None and (info.index, info.term) == (5, 1)
        async with storage.snapshots.open(info) as reader:
            assert await reader.read() == b"state" * 300


def possible(
    acknowledged: list[Entry], pending: tuple[int | None, list[Entry]] | None
) -> list[list[Entry]]:
    """The logs a power loss may leave: the acknowledged one, or part of the pending save (a
    truncation partly done from the end, then a prefix of its entries)."""
    if pending is None:
        return [acknowledged]
    cut, batch = pending
    base = acknowledged if cut is None else acknowledged[: cut - 1]
    logs = [acknowledged[:n] for n in range(len(base), len(acknowledged) + 1)]
    return logs + [base + batch[:n] for n in range(1, len(batch) + 1)]


def snapshot_data(index: int, term: int) -> bytes:
    return f"{index}:{term};".encode() * 100


def matching(
    loaded: list[Entry], logs: list[list[Entry]], compacted_upto: int
) -> list[Entry] | None:
    """The possible log that `loaded` is, once entries up to `compacted_upto` (covered by a
    durable snapshot) may be gone from its start."""
    for log in logs:
        if loaded == log:
            return log
        dropped = len(log) - len(loaded) if loaded else len(log)
        if 0 < dropped <= compacted_upto and log[dropped:] == loaded:
            return log
    return None


async def power_loss_run(seed: int, rounds: int = 12) -> None:
    rng = random.Random(seed)
    fs = SimFileSystem(random.Random(f"fs:{seed}"))
    acknowledged: list[Entry] = []
    """The whole acknowledged log from index 1 (the disk may have compacted its start)."""
    hard_states = [HardState()]
    """The acknowledged hard state, and a pending one a torn save may have written."""
    pending: tuple[int | None, list[Entry]] | None = None
    snapshot: tuple[int, int] | None = None
    """The newest acknowledged snapshot (index, term)."""
    pending_snapshot: tuple[int, int] | None = None
    term = 1
    for round_ in range(rounds):
        fs.die_after(rng.randint(1, 80))
        try:
            async with DiskStorage(DIR, fs=fs, entries_per_segment=4, segment_size=600) as disk:
                where = f"seed {seed} round {round_}"
                state = await disk.load()
                info = await disk.snapshots.latest()
                newest = None if info is None else (info.index, info.term)
                assert newest in (snapshot, pending_snapshot or snapshot), where
                if info is not None:
                    async with disk.snapshots.open(info) as reader:
                        assert await reader.read(1 << 20) == snapshot_data(info.index, info.term)
                loaded = list(state.entries)
                log = matching(loaded, possible(acknowledged, pending), newest[0] if newest else 0)
                assert log is not None, where
                assert state.hard_state in hard_states, where
                acknowledged, hard_states, pending = log, [state.hard_state], None
                snapshot, pending_snapshot = newest, None
                term = max(term, state.hard_state.term, *(e.term for e in log[-1:]))
                while True:
                    last = len(acknowledged)
                    covered = snapshot[0] if snapshot else 0
                    if last > covered and rng.random() < 0.15:
                        index = rng.randint(covered + 1, last)
                        pending_snapshot = (index, acknowledged[index - 1].term)
                        async with disk.snapshots.create(*pending_snapshot) as writer:
                            await writer.write(snapshot_data(*pending_snapshot))
                        snapshot, pending_snapshot = pending_snapshot, None
                        await disk.compact_before(index + 1 - rng.choice([0, 3]))
                        continue
                    cut = None
                    if last > covered + 3 and rng.random() < 0.2:
                        term += 1
                        cut = rng.randint(last - 3, last)
                    first = cut or last + 1
                    batch = [
                        entry(i, term, rng.choice([8, 100, 700]))
                        for i in range(first, first + rng.randint(1, 6))
                    ]
                    hard_state = HardState(term, rng.choice([None, 1, 2]))
                    pending = (cut, batch)
                    hard_states.append(hard_state)
                    await disk.save(hard_state=hard_state, truncate_from=cut, entries=batch)
                    base = acknowledged if cut is None else acknowledged[: cut - 1]
                    acknowledged, hard_states, pending = base + batch, [hard_state], None
        except PowerLoss:
            pass
        fs.crash()


@pytest.mark.parametrize("seed", range(40))
async def test_power_loss_at_any_file_operation_keeps_every_acknowledged_save(seed: int) -> None:
    await power_loss_run(seed)


async def test_a_failed_fsync_poisons_the_storage_and_a_crash_recovers() -> None:
    for seed in range(20):
        fs = SimFileSystem(random.Random(seed), fsync_errors=0.15)
        acknowledged: list[Entry] = []
        pending: tuple[int | None, list[Entry]] | None = None
        try:
            async with DiskStorage(DIR, fs=fs, entries_per_segment=4) as disk:
                await disk.load()
                while True:
                    batch = entries(len(acknowledged) + 1, len(acknowledged) + 3, size=300)
                    pending = (None, batch)
                    await disk.save(hard_state=HardState(1, 1), truncate_from=None, entries=batch)
                    acknowledged, pending = acknowledged + batch, None
        except (StorageFailedError, OSError):
            pass  # EIO: at open (StorageFailedError poisons later calls) or in load/save
        assert fs.errors, seed
        fs.fsync_errors = 0.0
        fs.crash()
        async with DiskStorage(DIR, fs=fs) as disk:
            assert list((await disk.load()).entries) in possible(acknowledged, pending), seed


async def written_log(
    fs: SimFileSystem, rng: random.Random, written: list[Entry] | None = None
) -> list[Entry]:
    """A log of a few writes (with truncations), all acknowledged; `written` gets every entry."""
    log: list[Entry] = []
    async with DiskStorage(DIR, fs=fs, entries_per_segment=6) as disk:
        await disk.load()
        for term in range(1, 6):
            cut = rng.randint(max(1, len(log) - 2), len(log) + 1) if log else None
            first = cut or 1
            batch = [entry(i, term, rng.choice([10, 200, 900])) for i in range(first, first + 3)]
            await disk.save(hard_state=HardState(term, 1), truncate_from=cut, entries=batch)
            log = log[: first - 1] + batch
            if written is not None:
                written.extend(batch)
    return log


async def test_a_flipped_bit_anywhere_is_refused_or_cut_never_believed() -> None:
    """Damage at rest never yields a different log: the storage refuses to start, or (for a
    length field that makes the last record look longer than the file) forgets that record."""
    refused = cut = 0
    for seed in range(60):
        rng = random.Random(seed)
        fs = SimFileSystem(random.Random(f"fs:{seed}"))
        log = await written_log(fs, rng)
        directory = DIR / "log"
        names = [*fs.listdir(directory), "meta"]
        name = rng.choice(names)
        path = directory / name if name != "meta" else DIR / "meta"
        fs.flip_bit(path)
        fs.crash()
        try:
            async with DiskStorage(DIR, fs=fs) as disk:
                loaded = list((await disk.load()).entries)
        except StorageCorruptionError:
            refused += 1
            continue
        if loaded != log:
            assert loaded == log[:-1], seed
            cut += 1
    assert refused > 50 and cut < 5


async def test_a_lying_fsync_loses_data_but_never_invents_it() -> None:
    """With fsyncs that return without syncing, acknowledged saves may be lost (no storage can
    tell), but what loads is entries that were written, in order, or a refusal to start."""
    outcomes = {"refused": 0, "lost": 0, "kept": 0}
    for seed in range(40):
        rng = random.Random(seed)
        fs = SimFileSystem(random.Random(f"fs:{seed}"), fsync_lies=0.5)
        written: list[Entry] = []
        log = await written_log(fs, rng, written)
        fs.crash()
        try:
            async with DiskStorage(DIR, fs=fs) as disk:
                loaded = list((await disk.load()).entries)
        except StorageCorruptionError:
            outcomes["refused"] += 1
            continue
        # A lost directory entry can drop a leading file: the log then starts later, as if
        # compacted (the server ignores a log that does not continue its snapshot).
        first = loaded[0].index if loaded else 1
        assert [e.index for e in loaded] == list(range(first, first + len(loaded))), seed
        assert all(e in written for e in loaded), seed
        outcomes["kept" if loaded == log else "lost"] += 1
    assert outcomes["lost"] and outcomes["kept"], outcomes


async def test_a_restart_after_a_failed_fsync_reads_the_device_not_the_page_cache() -> None:
    """After a failed fsync Linux marks the unsynced pages clean: reads still return the lost
    write, and no later fsync writes it. A restarted server that believed them would acknowledge
    entries that a power loss then takes away."""
    fs = SimFileSystem(random.Random(0))
    async with DiskStorage(DIR, fs=fs) as disk:
        await disk.load()
        await disk.save(hard_state=HardState(1, 1), truncate_from=None, entries=entries(1, 3))
        fs.fsync_errors = 1.0
        with pytest.raises(StorageFailedError):
            await disk.save(hard_state=None, truncate_from=None, entries=entries(4, 6))
    fs.fsync_errors = 0.0
    async with DiskStorage(DIR, fs=fs) as disk:  # the process restarts; the machine does not
        assert list((await disk.load()).entries) == entries(1, 3)
        await disk.save(hard_state=None, truncate_from=None, entries=entries(4, 4, 2))
    fs.crash()
    async with DiskStorage(DIR, fs=fs) as disk:
        assert list((await disk.load()).entries) == [*entries(1, 3), *entries(4, 4, 2)]
