"""The simulated file system's counts of what a power loss did, which the simulation reports:
a tear that keeps a later sector but not an earlier one is counted as out of order."""

from __future__ import annotations

import os
import random
from pathlib import Path

from copycat_trio.testing.simfs import SECTOR, SimFileSystem

PATH = Path("/f")


def sync_root(fs: SimFileSystem) -> None:
    fd = fs.open(Path("/"), os.O_RDONLY | os.O_DIRECTORY)
    fs.fsync(fd)
    fs.close(fd)


def torn_counts(seed: int) -> tuple[int, int, int, bytes]:
    fs = SimFileSystem(random.Random(seed))
    fd = fs.open(PATH, os.O_WRONLY | os.O_CREAT)
    fs.fsync(fd)
    sync_root(fs)
    fs.write(fd, b"a" * SECTOR + b"b" * SECTOR + b"c" * SECTOR)
    fs.crash()
    return fs.torn_files, fs.torn_out_of_order, fs.sectors_lost, fs.read_file(PATH)


def test_an_out_of_order_tear_is_counted_as_one() -> None:
    for seed in range(200):
        torn, out_of_order, lost, data = torn_counts(seed)
        kept = [data[i * SECTOR : (i + 1) * SECTOR] != bytes(SECTOR) for i in range(3)]
        if len(data) < 3 * SECTOR:  # the file kept its old length: nothing of the write
            assert (torn, out_of_order, lost, data) == (0, 0, 3, b"")
            continue
        assert lost == kept.count(False)
        assert torn == (0 < lost < 3)
        later_kept_after_lost = any(kept[j] and not kept[i] for i in range(3) for j in range(i, 3))
        assert out_of_order == later_kept_after_lost
        if out_of_order:
            return
    raise AssertionError("no seed tore the write out of order")


def test_a_lie_is_counted_when_a_crash_exposes_it() -> None:
    exposed = 0
    for seed in range(20):
        fs = SimFileSystem(random.Random(seed))
        fd = fs.open(PATH, os.O_WRONLY | os.O_CREAT)
        sync_root(fs)  # the name is durable
        fs.fsync_lies = 1.0
        fs.write(fd, b"x" * 10)
        fs.fsync(fd)  # lies: the data is not durable
        fs.crash()
        lost = fs.read_file(PATH) != b"x" * 10
        assert fs.lies == 1 and fs.lies_lost == lost
        exposed += lost
    assert exposed
