"""The meta file: hard state and members, replaced atomically, refused when damaged."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from copycat_trio.cli import main
from copycat_trio.core.raft import HardState
from copycat_trio.protocol.messages import Member, MemberType
from copycat_trio.storage import (
    DiskStorage,
    Meta,
    MetaStore,
    StorageCorruptionError,
    StorageFailedError,
)

from . import entries, reopen


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


async def test_a_lost_meta_file_beside_a_log_refuses_to_start(tmp_path: Path) -> None:
    """Without its meta file a member would start at term 0 with no vote, and could vote a
    second time in a term it already voted in."""
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(3, 2), truncate_from=None, entries=entries(1, 4, 3))
    (tmp_path / "meta").unlink()
    with pytest.raises(StorageCorruptionError) as caught:
        await reopen(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "meta") in message and "missing" in message
    assert "entries 1 to 4" in message and "term 3" in message
    assert "vote twice" in message and "durability.md" in message


async def test_the_meta_file_is_written_before_the_first_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a log without a meta file always means a lost file, never a crash: a crash (here a
    failing meta write) between the two writes of the first save leaves no entries."""
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=None, truncate_from=None, entries=entries(1, 2))
    assert (tmp_path / "meta").exists()
    assert await reopen(tmp_path) == (HardState(), entries(1, 2))

    other = tmp_path / "other"

    def crash(self: MetaStore, meta: Meta) -> None:
        raise OSError(5, "Input/output error")

    async with DiskStorage(other) as storage:
        await storage.load()
        monkeypatch.setattr(MetaStore, "write", crash)
        with pytest.raises(StorageFailedError):
            await storage.save(
                hard_state=HardState(1, 1), truncate_from=None, entries=entries(1, 2)
            )
    monkeypatch.undo()
    assert await reopen(other) == (HardState(), [])


async def test_a_log_emptied_by_truncation_keeps_its_meta_file(tmp_path: Path) -> None:
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(2, 1), truncate_from=None, entries=entries(1, 3))
        await storage.save(hard_state=None, truncate_from=1, entries=[])
        await storage.save(hard_state=None, truncate_from=None, entries=entries(7, 8, 2))
    assert await reopen(tmp_path) == (HardState(2, 1), entries(7, 8, 2))


def test_serve_reports_a_lost_meta_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        async with DiskStorage(tmp_path) as storage:
            await storage.load()
            await storage.save(
                hard_state=HardState(2, 1), truncate_from=None, entries=entries(1, 3)
            )

    trio.run(fill)
    (tmp_path / "meta").unlink()
    members = "1=127.0.0.1:1"
    with pytest.raises(SystemExit) as info:
        main(["serve", "--id", "1", "--members", members, "--data-dir", str(tmp_path)])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("copycat-trio: StorageCorruptionError: metadata file")
    assert "is missing" in err[-1]
