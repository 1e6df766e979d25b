"""DiskStorage: round trips across reopen, rolling, truncation, locking, group commit, failures."""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.errors import ConfigurationError
from copycat_trio.protocol.messages import ConfigurationEntry, Member, NoOpEntry
from copycat_trio.storage import (
    DiskStorage,
    MemoryStorage,
    Storage,
    StorageError,
    StorageFailedError,
    StorageLevel,
    StorageLockedError,
)
from copycat_trio.storage.fs import OsFileSystem

from . import entries, entry, reopen, segment_files


async def test_fresh_directory_loads_empty_state(tmp_path: Path) -> None:
    hard_state, loaded = await reopen(tmp_path / "new" / "dir")
    assert hard_state == HardState()
    assert loaded == []
    assert (tmp_path / "new" / "dir" / "LOCK").exists()


async def test_entries_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    members = (Member(1, "a:1"), Member(2, "b:2"))
    batch = [
        NoOpEntry(term=1, index=1, timestamp=5),
        ConfigurationEntry(term=1, index=2, members=members),
        *entries(3, 10, term=1),
    ]
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(1, 2), truncate_from=None, entries=batch[:4])
        await storage.save(hard_state=HardState(1, 2), truncate_from=None, entries=batch[4:])
    hard_state, loaded = await reopen(tmp_path)
    assert hard_state == HardState(1, 2)
    assert loaded == batch
    # A second life appends after the first.
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(
            hard_state=HardState(3, None), truncate_from=None, entries=[entry(11, 3)]
        )
    assert await reopen(tmp_path) == (HardState(3, None), [*batch, entry(11, 3)])


async def test_load_twice_returns_the_same_state(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(2, 1), truncate_from=None, entries=entries(1, 3))
        assert await storage.load() == await storage.load()
        assert list((await storage.load()).entries) == entries(1, 3)


async def test_segments_roll_by_entry_count(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path, entries_per_segment=3) as storage:
        await storage.load()
        for index in range(1, 11):
            await storage.save(hard_state=None, truncate_from=None, entries=[entry(index)])
        assert storage.statistics().segments == 4
    names = [path.name for path in segment_files(tmp_path)]
    assert names == [f"{first:020d}.log" for first in (1, 4, 7, 10)]
    assert (await reopen(tmp_path, entries_per_segment=3))[1] == entries(1, 10)


async def test_segments_roll_by_size_and_a_batch_stays_in_one_file(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path, segment_size=500) as storage:
        await storage.load()
        await storage.save(hard_state=None, truncate_from=None, entries=entries(1, 20, size=100))
        assert len(segment_files(tmp_path)) == 1  # one batch, one file, one fsync
        for index in range(21, 31):
            await storage.save(
                hard_state=None, truncate_from=None, entries=[entry(index, size=100)]
            )
    sizes = [path.stat().st_size for path in segment_files(tmp_path)]
    assert len(sizes) > 3
    assert all(size < 500 + 200 for size in sizes[1:])
    assert (await reopen(tmp_path))[1] == [*entries(1, 20, size=100), *entries(21, 30, size=100)]


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 7, 9, 12, 13])
async def test_truncation_is_durable_across_reopen(tmp_path: Path, cut: int) -> None:
    """Cut inside a file, at a file boundary, in the last file, and past the end."""
    async with DiskStorage(tmp_path, entries_per_segment=3) as storage:
        await storage.load()
        for first in range(1, 13, 3):
            await storage.save(
                hard_state=None, truncate_from=None, entries=entries(first, first + 2)
            )
        await storage.save(hard_state=HardState(2, 1), truncate_from=cut, entries=[])
        expected = entries(1, min(cut - 1, 12))
        assert storage.last_index == len(expected)
    assert (await reopen(tmp_path))[1] == expected
    async with DiskStorage(tmp_path, entries_per_segment=3) as storage:
        await storage.load()
        await storage.save(
            hard_state=None, truncate_from=None, entries=[entry(len(expected) + 1, 2)]
        )
    assert (await reopen(tmp_path))[1] == [*expected, entry(len(expected) + 1, 2)]


async def test_truncate_and_append_in_one_save(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path, entries_per_segment=4) as storage:
        await storage.load()
        for first in range(1, 13, 4):
            await storage.save(
                hard_state=None, truncate_from=None, entries=entries(first, first + 3)
            )
        await storage.save(hard_state=HardState(3, 2), truncate_from=6, entries=entries(6, 8, 3))
    assert await reopen(tmp_path) == (HardState(3, 2), [*entries(1, 5), *entries(6, 8, 3)])
    assert not (tmp_path / "log" / f"{9:020d}.log").exists()


async def test_save_refuses_entries_that_do_not_extend_the_log(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=None, truncate_from=None, entries=entries(1, 3, term=2))
        with pytest.raises(ValueError, match="does not follow"):
            await storage.save(hard_state=None, truncate_from=None, entries=[entry(5, 2)])
        with pytest.raises(ValueError, match="does not follow"):
            await storage.save(
                hard_state=None, truncate_from=None, entries=[entry(4, 2), entry(6, 2)]
            )
        with pytest.raises(ValueError, match="term"):
            await storage.save(hard_state=None, truncate_from=None, entries=[entry(4, term=1)])
        with pytest.raises(ValueError, match="truncate_from"):
            await storage.save(hard_state=None, truncate_from=0, entries=[])
        # Nothing was written by the refused calls, and the storage is still usable.
        await storage.save(hard_state=None, truncate_from=None, entries=[entry(4, 2)])
    assert (await reopen(tmp_path))[1] == [*entries(1, 3, term=2), entry(4, 2)]


async def test_save_before_load_is_refused(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        with pytest.raises(StorageError, match="load"):
            await storage.save(hard_state=HardState(1), truncate_from=None, entries=[])


async def test_a_second_storage_on_the_directory_is_refused(tmp_path: Path) -> None:
    first = DiskStorage(tmp_path)
    with pytest.raises(StorageLockedError, match=str(tmp_path)):
        DiskStorage(tmp_path)
    await first.aclose()
    await first.aclose()  # idempotent
    second = DiskStorage(tmp_path)  # released by aclose
    await second.aclose()
    with pytest.raises(StorageError, match="closed"):
        await second.load()


def test_the_lock_holds_against_another_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom copycat_trio.storage import DiskStorage, StorageLockedError\n"
        "try:\n    DiskStorage(sys.argv[1])\nexcept StorageLockedError as e:\n    print(e)\n"
    )
    storage = DiskStorage(tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
        )
    finally:
        trio.run(storage.aclose)
    assert "is in use" in result.stdout, result.stderr


class FsyncCounter:
    """Counts os.fsync calls per file (inode and path: an unlinked file's inode may be reused)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[tuple[int, int, str]] = Counter()
        self.directories = 0
        real = os.fsync

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            self.calls[(st.st_dev, st.st_ino, os.readlink(f"/proc/self/fd/{fd}"))] += 1
            if stat.S_ISDIR(st.st_mode):
                self.directories += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def take(self) -> Counter[tuple[int, int, str]]:
        calls, self.calls, self.directories = self.calls, Counter(), 0
        return calls


async def test_group_commit_fsyncs_each_file_at_most_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = FsyncCounter(monkeypatch)
    async with DiskStorage(tmp_path, entries_per_segment=50) as storage:
        await storage.load()
        counter.take()
        # A 64-entry batch with a new hard state: segment file (new, so the log directory),
        # meta temp file, data directory: four files, one fsync each.
        await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=entries(1, 64))
        calls = counter.take()
        assert max(calls.values()) == 1
        assert sum(calls.values()) == 4
        # The next batch rolls (64 >= 50): a new file and the log directory.
        await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=entries(65, 70))
        calls = counter.take()
        assert max(calls.values()) == 1 and sum(calls.values()) == 2
        # Appending to the current file: exactly one fsync, whatever the batch size.
        for size in (1, 5, 40):
            first = storage.last_index + 1
            batch = entries(first, first + size - 1)
            await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=batch)
            assert sum(counter.take().values()) == 1
        # Truncation across files plus an append and a new term: still once per file.
        await storage.save(hard_state=HardState(2, 3), truncate_from=30, entries=entries(30, 40, 2))
        calls = counter.take()
        assert max(calls.values()) == 1
        assert sum(calls.values()) == 6  # emptied file, cut file, new file, log dir, meta, dir
        # Nothing to do, nothing fsynced.
        await storage.save(hard_state=HardState(2, 3), truncate_from=None, entries=[])
        assert not counter.take()


async def test_hard_state_is_written_only_when_it_changes(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(1, None), truncate_from=None, entries=[])
        await storage.save(hard_state=HardState(1, None), truncate_from=None, entries=[entry(1)])
        await storage.save(hard_state=None, truncate_from=None, entries=[entry(2)])
        await storage.save(hard_state=HardState(1, 4), truncate_from=None, entries=[])
        assert storage.statistics().meta_writes == 2
    assert (await reopen(tmp_path))[0] == HardState(1, 4)


async def test_compaction_deletes_whole_segments_before_an_index(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path, entries_per_segment=5) as storage:
        await storage.load()
        for first in range(1, 26, 5):
            await storage.save(
                hard_state=None, truncate_from=None, entries=entries(first, first + 4)
            )
        assert await storage.compact_before(13) == 2  # files 1-5 and 6-10; 11-15 holds 13
        assert storage.first_index == 11
        assert await storage.compact_before(13) == 0
    assert [p.name for p in segment_files(tmp_path)] == [f"{i:020d}.log" for i in (11, 16, 21)]
    assert (await reopen(tmp_path))[1] == entries(11, 25)
    async with DiskStorage(tmp_path, entries_per_segment=5) as storage:
        await storage.load()
        assert await storage.compact_before(100) == 3  # everything, the open file too
        assert storage.last_index == 0
        await storage.save(hard_state=None, truncate_from=None, entries=entries(26, 27))
    assert (await reopen(tmp_path))[1] == entries(26, 27)


async def test_a_cancelled_save_still_finishes_its_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)
        real(fd)

    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        monkeypatch.setattr(os, "fsync", slow_fsync)
        started = trio.current_time()
        with trio.move_on_after(0.05):
            await storage.save(
                hard_state=HardState(1, 1), truncate_from=None, entries=entries(1, 3)
            )
            await trio.sleep_forever()
        assert trio.current_time() - started >= 0.2  # the shield held the cancellation off
        monkeypatch.setattr(os, "fsync", real)
    assert await reopen(tmp_path) == (HardState(1, 1), entries(1, 3))


async def test_a_failed_fsync_poisons_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=entries(1, 2))
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StorageFailedError, match="Input/output error"):
            await storage.save(hard_state=None, truncate_from=None, entries=[entry(3)])
        monkeypatch.setattr(os, "fsync", real)
        with pytest.raises(StorageFailedError, match="refuses further work"):
            await storage.save(hard_state=None, truncate_from=None, entries=[entry(3)])
    # A restart recovers what is on disk (here the unsynced record is in the page cache).
    _, loaded = await reopen(tmp_path)
    assert loaded[:2] == entries(1, 2)


async def test_storage_factory() -> None:
    assert isinstance(Storage(level=StorageLevel.MEMORY), MemoryStorage)
    with pytest.raises(ConfigurationError, match="DISK storage needs a directory"):
        Storage()
    with pytest.raises(ConfigurationError, match="takes no directory"):
        Storage("/tmp/x", StorageLevel.MEMORY)
    with pytest.raises(ConfigurationError, match="StorageLevel"):
        Storage("/tmp/x", "disk")  # type: ignore[arg-type]
    for name in ("segment_size", "entries_per_segment", "snapshots_to_keep"):
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ConfigurationError, match=name):
                Storage("/tmp/x", **{name: bad})  # type: ignore[arg-type]


async def test_storage_factory_disk(tmp_path: Path) -> None:
    storage = Storage(tmp_path, segment_size=1024, entries_per_segment=10, snapshots_to_keep=3)
    assert isinstance(storage, DiskStorage)
    assert storage.snapshots.keep == 3
    await storage.aclose()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        DiskStorage(tmp_path / "file")
    with pytest.raises(ConfigurationError, match="not a directory"):
        DiskStorage(tmp_path / "file" / "below")


class SlowFsync(OsFileSystem):
    """The real file system with an fsync that takes 150 ms."""

    def fsync(self, fd: int) -> None:
        time.sleep(0.15)
        super().fsync(fd)


async def test_a_slow_fsync_is_logged_at_most_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="copycat_trio.storage.segments"):
        async with DiskStorage(tmp_path, fs=SlowFsync()) as storage:
            await storage.load()
            for index in (1, 2, 3):
                await storage.save(hard_state=None, truncate_from=None, entries=[entry(index, 1)])
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow fsync")]
    assert len(slow) == 1, slow  # three slow fsyncs of log files within a second: one line
    assert "over 100 ms" in slow[0] and str(tmp_path) in slow[0], slow
