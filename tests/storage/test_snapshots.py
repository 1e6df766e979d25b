"""The snapshot store: streamed writes, verified reads, retention, crash leftovers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from copycat_trio.storage import SnapshotInfo, SnapshotStore, StorageCorruptionError
from copycat_trio.storage.snapshots import HEADER_SIZE

CHUNK = 256 * 1024


def chunk(n: int) -> bytes:
    """Deterministic, incompressible-looking chunk number n."""
    return hashlib.sha256(str(n).encode()).digest() * (CHUNK // 32)


async def write_snapshot(store: SnapshotStore, index: int, term: int, chunks: int) -> SnapshotInfo:
    async with store.create(index, term) as writer:
        for n in range(chunks):
            await writer.write(chunk(n))
    assert writer.info is not None
    return writer.info


async def read_all(store: SnapshotStore, info: SnapshotInfo, n: int = 100_000) -> bytes:
    digest = hashlib.sha256()
    size = 0
    async with store.open(info) as reader:
        while data := await reader.read(n):
            assert len(data) <= n
            digest.update(data)
            size += len(data)
    assert size == info.size
    return digest.digest()


def expected_digest(chunks: int) -> bytes:
    digest = hashlib.sha256()
    for n in range(chunks):
        digest.update(chunk(n))
    return digest.digest()


async def test_round_trip_of_a_multi_mib_snapshot_in_chunks(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert await store.latest() is None
    info = await write_snapshot(store, 100, 3, chunks=24)  # 6 MiB
    assert info.size == 24 * CHUNK
    assert info.path.stat().st_size == HEADER_SIZE + info.size
    assert await store.latest() == info
    assert await SnapshotStore(tmp_path).latest() == info  # survives reopening
    assert await read_all(store, info) == expected_digest(24)


async def test_an_empty_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    async with store.create(5, 1):
        pass
    info = await store.latest()
    assert info is not None and info.size == 0
    assert await read_all(store, info) == hashlib.sha256().digest()


@pytest.mark.parametrize("cut", [0, 10, HEADER_SIZE, HEADER_SIZE + 1, -1])
async def test_a_truncated_snapshot_is_detected(tmp_path: Path, cut: int) -> None:
    store = SnapshotStore(tmp_path)
    info = await write_snapshot(store, 10, 1, chunks=8)
    os.truncate(info.path, cut if cut >= 0 else info.path.stat().st_size + cut)
    with pytest.raises(StorageCorruptionError, match=str(info.path)):
        await store.latest()
    with pytest.raises(StorageCorruptionError, match=str(info.path)):
        async with store.open(info):
            pytest.fail("opened a truncated snapshot")


@pytest.mark.parametrize("offset", [3, 12, 30, 37, HEADER_SIZE, HEADER_SIZE + CHUNK + 77, -1])
async def test_a_flipped_bit_is_detected_before_any_data_is_returned(
    tmp_path: Path, offset: int
) -> None:
    store = SnapshotStore(tmp_path)
    info = await write_snapshot(store, 10, 1, chunks=8)
    data = bytearray(info.path.read_bytes())
    data[offset] ^= 0x04
    info.path.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptionError, match=str(info.path)):
        async with store.open(info):
            pytest.fail("opened a damaged snapshot")


async def test_damage_during_streaming_is_caught_before_the_last_chunk(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = await write_snapshot(store, 10, 1, chunks=4)
    async with store.open(info) as reader:
        await reader.read(CHUNK)
        with open(info.path, "r+b") as file:  # changed after open() verified it
            file.seek(HEADER_SIZE + 3 * CHUNK + 5)
            file.write(b"\x00\x01")
        with pytest.raises(StorageCorruptionError, match="changed while it was read"):
            while await reader.read(CHUNK):
                pass


async def test_only_the_newest_keep_snapshots_remain(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    infos = [await write_snapshot(store, index, 1, chunks=1) for index in (10, 20, 30, 40)]
    remaining = await store.list_all()
    assert remaining == infos[2:]
    assert sorted(p.name for p in store.directory.iterdir()) == [i.path.name for i in infos[2:]]
    assert await store.latest() == infos[3]


async def test_a_leftover_temp_file_is_removed_on_open(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = await write_snapshot(store, 10, 1, chunks=2)
    leftover = store.directory / f"{info.path.name}.999-0.tmp"
    leftover.write_bytes(b"\x00" * 1000)  # what a crash mid-write leaves behind
    assert await store.latest() == info  # never mistaken for a snapshot
    SnapshotStore(tmp_path)
    assert not leftover.exists()
    assert [p.name for p in store.directory.iterdir()] == [info.path.name]


async def test_a_failed_or_cancelled_write_leaves_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError):
        async with store.create(10, 1) as writer:
            await writer.write(chunk(0))
            raise RuntimeError("state machine failed")
    with trio.move_on_after(0.01):
        async with store.create(11, 1) as writer:
            while True:
                await writer.write(chunk(0))
    assert list(store.directory.iterdir()) == []
    assert await store.latest() is None


async def test_reads_after_the_block_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = await write_snapshot(store, 10, 1, chunks=1)
    async with store.open(info) as reader:
        pass
    with pytest.raises(Exception, match="closed"):
        await reader.read()
    async with store.create(12, 1) as writer:
        pass
    with pytest.raises(Exception, match="no longer open"):
        await writer.write(b"x")
