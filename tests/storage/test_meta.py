"""The meta file: hard state and members, replaced atomically, refused when damaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import Member, MemberType
from copycat_trio.storage import DiskStorage, Meta, MetaStore, StorageCorruptionError

from . import reopen


def test_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    assert MetaStore(tmp_path).read() is None


def test_round_trip_with_members(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    members = (Member(1, "a:1"), Member(2, "b:2", MemberType.PASSIVE, "b:3"))
    for meta in (Meta(HardState(3, 2)), Meta(HardState(4, None), members), Meta(HardState(5, 1))):
        store.write(meta)
        assert MetaStore(tmp_path).read() == meta
    assert not store.temp_path.exists()


def test_a_leftover_temp_file_is_ignored_and_removed(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    store.write(Meta(HardState(7, 1)))
    store.temp_path.write_bytes(b"half a write")
    assert store.read() == Meta(HardState(7, 1))
    assert not store.temp_path.exists()


def test_every_flipped_bit_is_refused(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    store.write(Meta(HardState(12, 3), (Member(3, "c:1"),)))
    original = store.path.read_bytes()
    for offset in range(len(original)):
        for bit in (0, 7):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << bit
            store.path.write_bytes(bytes(damaged))
            with pytest.raises(StorageCorruptionError, match=str(store.path)):
                store.read()


def test_truncated_or_extended_files_are_refused(tmp_path: Path) -> None:
    store = MetaStore(tmp_path)
    store.write(Meta(HardState(12, 3)))
    original = store.path.read_bytes()
    for cut in range(len(original)):
        store.path.write_bytes(original[:cut])
        with pytest.raises(StorageCorruptionError, match="refuses to start"):
            store.read()
    store.path.write_bytes(original + b"\x00")
    with pytest.raises(StorageCorruptionError):
        store.read()


async def test_a_damaged_meta_file_stops_disk_storage_from_loading(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(2, 1), truncate_from=None, entries=[])
    path = tmp_path / "meta"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptionError, match="vote twice"):
        await reopen(tmp_path)
