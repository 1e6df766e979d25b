"""A snapshot store's file names depend only on what it did, not on the process: the
simulation runs the real store, and a seed must replay in any process, after any other run."""

from __future__ import annotations

import random
from pathlib import Path

from copycat_trio.storage.snapshots import SnapshotStore
from copycat_trio.testing.simfs import SimFileSystem


class Recording(SimFileSystem):
    """Remembers every path opened."""

    def __init__(self) -> None:
        super().__init__(random.Random(0))
        self.opened: list[str] = []

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        self.opened.append(str(path))
        return super().open(path, flags, mode)


async def names_of_two_snapshot_writes() -> list[str]:
    fs = Recording()
    store = SnapshotStore(Path("/data"), fs=fs)
    for index in (5, 9):
        async with store.create(index, 1) as writer:
            await writer.write(b"state")
    return [p for p in fs.opened if p.endswith(".tmp")]


async def test_temp_names_do_not_depend_on_earlier_stores_or_the_process() -> None:
    first = await names_of_two_snapshot_writes()
    again = await names_of_two_snapshot_writes()
    assert len(first) == 2
    assert first == again
    assert all(".tmp" in name and "-" not in name.rsplit(".snapshot.", 1)[1] for name in first)


async def test_a_temp_name_in_use_is_skipped() -> None:
    fs = SimFileSystem(random.Random(0))
    store = SnapshotStore(Path("/data"), fs=fs)
    taken = store.directory / "00000000000000000005-00000000000000000001.snapshot.0.tmp"
    fd = fs.open(taken, 0o101)  # O_WRONLY | O_CREAT: another writer's temp file
    fs.close(fd)
    async with store.create(5, 1) as writer:
        await writer.write(b"state")
    assert (await store.latest()) is not None
    assert "00000000000000000005-00000000000000000001.snapshot.0.tmp" in fs.listdir(store.directory)
