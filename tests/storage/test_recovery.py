"""Recovery of the segmented log: torn tails are cut, any other damage refuses to start."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from copycat_trio.core.raft import HardState
from copycat_trio.protocol.codec import registry
from copycat_trio.protocol.messages import Entry
from copycat_trio.storage import (
    DiskStorage,
    Meta,
    MetaStore,
    StorageCorruptionError,
    StorageError,
    StorageFailedError,
)
from copycat_trio.storage.segments import HEADER_SIZE, encode_record

from . import entries, entry, reopen, segment_files


async def write_log(directory: Path, batches: list[list[Entry]], **options: Any) -> None:
    async with DiskStorage(directory, **options) as storage:
        await storage.load()
        for batch in batches:
            await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=batch)


def record_offsets(path: Path) -> list[int]:
    """Offsets of the records in a segment file, found by walking the length fields."""
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER_SIZE + int.from_bytes(data[pos + 4 : pos + 8], "big")
    return offsets


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("payload_size", [1, 300])
async def test_every_torn_prefix_of_the_last_record_is_cut_away(
    tmp_path: Path, payload_size: int
) -> None:
    await write_log(tmp_path, [entries(1, 4), [entry(5, size=payload_size)]])
    (segment,) = segment_files(tmp_path)
    original = segment.read_bytes()
    last = record_offsets(segment)[-1]
    assert len(original) - last > HEADER_SIZE + payload_size - 1
    for cut in range(last, len(original)):
        segment.write_bytes(original[:cut])
        hard_state, loaded = await reopen(tmp_path)
        assert loaded == entries(1, 4), cut
        assert hard_state == HardState(1, 1)
        assert segment.stat().st_size == last  # the torn bytes are gone from the file
    # After recovery the log takes new entries where the torn one was.
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=None, truncate_from=None, entries=[entry(5, 2)])
    assert (await reopen(tmp_path))[1] == [*entries(1, 4), entry(5, 2)]


async def test_a_torn_first_record_of_a_new_segment_removes_the_file(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3), entries(4, 5)], entries_per_segment=3)
    first, second = segment_files(tmp_path)
    original = second.read_bytes()
    for cut in range(1, record_offsets(second)[1]):
        second.write_bytes(original[:cut])
        assert (await reopen(tmp_path))[1] == entries(1, 3)
        assert not second.exists()
    assert segment_files(tmp_path) == [first]


async def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    """A crash can leave a file longer than its data (size committed, blocks not written)."""
    await write_log(tmp_path, [entries(1, 5)])
    (segment,) = segment_files(tmp_path)
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(bytes(4096))
    assert (await reopen(tmp_path))[1] == entries(1, 5)
    assert segment.stat().st_size == size


@pytest.mark.parametrize("where", ["payload", "crc", "magic", "version", "term", "position"])
async def test_a_flipped_bit_in_a_complete_last_record_refuses_to_start(
    tmp_path: Path, where: str
) -> None:
    """All of the record's bytes are there, so no torn write left it: the entry may have been
    acknowledged, and cutting it would make this member forget it."""
    await write_log(tmp_path, [entries(1, 4, size=64), [entry(5, size=64)]])
    (segment,) = segment_files(tmp_path)
    offset = record_offsets(segment)[-1]
    delta = {
        "payload": HEADER_SIZE + 30,
        "crc": 29,
        "magic": 1,
        "version": 2,
        "term": 12,
        "position": 25,
    }[where]
    flip_bit(segment, offset + delta, bit=3)
    original = segment.read_bytes()
    with pytest.raises(StorageCorruptionError) as caught:
        await reopen(tmp_path)
    message = str(caught.value)
    assert str(segment) in message and f"byte offset {offset}" in message
    assert "complete record" in message and "refuses to start" in message
    assert segment.read_bytes() == original  # nothing was "repaired"


@pytest.mark.parametrize("sector", [0, 1, 3])
async def test_a_complete_last_record_with_an_unwritten_sector_is_a_torn_tail(
    tmp_path: Path, sector: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash can persist a write's file size and some of its sectors but not others, which
    then read as zeros: the record looks complete but was never fsynced, never acknowledged."""
    await write_log(tmp_path, [entries(1, 3, size=100), [entry(4, size=2000)]])
    (segment,) = segment_files(tmp_path)
    offset = record_offsets(segment)[-1]
    data = bytearray(segment.read_bytes())
    start = (offset // 512 + sector) * 512  # the sector's part that the record occupies:
    data[max(start, offset) : start + 512] = bytes(len(data[max(start, offset) : start + 512]))
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert (await reopen(tmp_path))[1] == entries(1, 3, size=100)
    assert segment.stat().st_size == offset
    assert "torn tail" in caplog.text and str(segment) in caplog.text


@pytest.mark.parametrize("where", ["payload", "length", "index", "magic", "crc"])
async def test_a_flipped_bit_followed_by_valid_records_refuses_to_start(
    tmp_path: Path, where: str
) -> None:
    await write_log(tmp_path, [entries(1, 5, size=64), entries(6, 8, size=64)])
    (segment,) = segment_files(tmp_path)
    offset = record_offsets(segment)[3]
    delta = {"payload": HEADER_SIZE + 10, "length": 6, "index": 23, "magic": 0, "crc": 29}[where]
    flip_bit(segment, offset + delta, bit=4)
    original = segment.read_bytes()
    with pytest.raises(StorageCorruptionError) as caught:
        await reopen(tmp_path)
    message = str(caught.value)
    assert str(segment) in message
    assert f"byte offset {offset}" in message
    assert "refuses to start" in message
    assert segment.read_bytes() == original  # nothing was "repaired"


async def test_damage_in_an_earlier_segment_refuses_to_start(tmp_path: Path) -> None:
    """Even the last record of a file that is not the last: it was fsynced before the next
    file was begun, so a crash cannot explain it."""
    await write_log(tmp_path, [entries(1, 3), entries(4, 6)], entries_per_segment=3)
    first, _ = segment_files(tmp_path)
    flip_bit(first, record_offsets(first)[-1] + HEADER_SIZE + 2)
    with pytest.raises(StorageCorruptionError, match=str(first)):
        await reopen(tmp_path)
    # A torn (short) earlier file is refused too.
    await write_log(tmp_path / "b", [entries(1, 3), entries(4, 6)], entries_per_segment=3)
    first, _ = segment_files(tmp_path / "b")
    os.truncate(first, first.stat().st_size - 5)
    with pytest.raises(StorageCorruptionError, match="not the last one"):
        await reopen(tmp_path / "b")


async def test_a_missing_segment_refuses_to_start(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3), entries(4, 6), entries(7, 9)], entries_per_segment=3)
    _, middle, last = segment_files(tmp_path)
    middle.unlink()
    with pytest.raises(StorageCorruptionError, match=rf"{last}.*starts at index 7.*ends at 3"):
        await reopen(tmp_path)


async def test_overlapping_segments_refuse_to_start(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3), entries(4, 6)], entries_per_segment=3)
    _, second = segment_files(tmp_path)
    shutil.copy(second, second.with_name(f"{3:020d}.log"))
    with pytest.raises(StorageCorruptionError, match="starts at index 3"):
        await reopen(tmp_path)


async def test_a_valid_record_out_of_sequence_refuses_to_start(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3)])
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as file:
        file.write(encode_record(1, 7, b"\x00"))
    with pytest.raises(StorageCorruptionError, match="has index 7, expected 4"):
        await reopen(tmp_path)


async def test_a_decreasing_term_refuses_to_start(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3, term=5)])
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as file:
        file.write(encode_record(4, 4, b"\x00"))
    with pytest.raises(StorageCorruptionError, match="term 4 follows term 5"):
        await reopen(tmp_path)


async def test_a_checksummed_record_that_does_not_decode_is_an_error(tmp_path: Path) -> None:
    await write_log(tmp_path, [entries(1, 3)])
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as file:
        file.write(encode_record(1, 4, b"\xff\xff"))
    with pytest.raises(StorageError, match="does not decode"):
        await reopen(tmp_path)


async def test_empty_segment_files_are_removed(tmp_path: Path) -> None:
    """Truncation empties files before unlinking them; a crash between leaves them empty."""
    await write_log(tmp_path, [entries(1, 3), entries(4, 6)], entries_per_segment=3)
    for first in (2, 7, 50):
        (tmp_path / "log" / f"{first:020d}.log").touch()
    (tmp_path / "log" / "notes.txt").write_text("left alone")
    assert (await reopen(tmp_path))[1] == entries(1, 6)
    assert len(segment_files(tmp_path)) == 2
    assert (tmp_path / "log" / "notes.txt").exists()


async def test_a_crash_at_any_fsync_of_a_truncating_save_leaves_a_consistent_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the save at each of its fsyncs in turn (the process dies, the page cache lives):
    the reopened log is the old one, a prefix of it at least up to the cut, or the new one."""
    old = entries(1, 12)
    new = [*entries(1, 4), *entries(5, 9, term=2)]
    real = os.fsync
    for crash_at in range(8):
        directory = tmp_path / str(crash_at)
        await write_log(directory, [old[i : i + 3] for i in range(0, 12, 3)], entries_per_segment=3)
        calls = 0

        def crashing_fsync(fd: int) -> None:
            nonlocal calls
            calls += 1
            if calls > crash_at:  # noqa: B023 -- read while this iteration's storage runs
                raise OSError(5, "simulated crash")
            real(fd)

        async with DiskStorage(directory, entries_per_segment=3) as storage:
            await storage.load()
            monkeypatch.setattr(os, "fsync", crashing_fsync)
            with contextlib.suppress(StorageFailedError):
                await storage.save(hard_state=HardState(2, 2), truncate_from=5, entries=new[4:])
            monkeypatch.setattr(os, "fsync", real)
        _, loaded = await reopen(directory)
        assert loaded in (new, *(old[:n] for n in range(4, 13))), crash_at
        indexes = [e.index for e in loaded]
        assert indexes == list(range(1, len(loaded) + 1))


@pytest.mark.parametrize("damaged", [4, 5])
async def test_a_torn_write_that_is_not_a_prefix_is_cut_at_its_first_lost_sector(
    tmp_path: Path, damaged: int
) -> None:
    """A crash may persist later sectors of a write but not earlier ones (the device reorders
    them): the surviving records of that unacknowledged write go with the lost one."""
    await write_log(tmp_path, [entries(1, 3, size=100), entries(4, 6, size=700)])
    (segment,) = segment_files(tmp_path)
    offset = record_offsets(segment)[damaged - 1]
    data = bytearray(segment.read_bytes())
    end = (offset // 512 + 1) * 512  # from the record's start to the end of its sector
    data[offset:end] = bytes(end - offset)
    segment.write_bytes(bytes(data))
    loaded = (await reopen(tmp_path))[1]
    assert loaded == [*entries(1, 3, size=100), *entries(4, damaged - 1, size=700)]
    assert segment.stat().st_size == offset


async def test_an_unwritten_looking_sector_in_an_earlier_write_refuses_to_start(
    tmp_path: Path,
) -> None:
    """Zeros in a write that later writes followed cannot be a torn write: only the last write
    can be unfinished."""
    await write_log(tmp_path, [entries(1, 3, size=700), entries(4, 5, size=100)])
    (segment,) = segment_files(tmp_path)
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    start = (offsets[1] // 512 + 1) * 512  # a sector inside record 2, of the first write
    data[start : start + 512] = bytes(512)
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptionError, match=f"byte offset {offsets[1]}"):
        await reopen(tmp_path)


def version_1_record(term: int, index: int, payload: bytes) -> bytes:
    """A record as version 1 wrote it: a 28-byte header without the position field."""
    head = struct.pack(">2sBBIQQ", b"\xc5\x1e", 1, 0, len(payload), term, index)
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


async def test_version_1_records_are_still_read(tmp_path: Path) -> None:
    old = entries(1, 4)
    (tmp_path / "log").mkdir(parents=True)
    MetaStore(tmp_path).write(Meta(HardState(1, 1)))
    segment = tmp_path / "log" / f"{1:020d}.log"
    segment.write_bytes(
        b"".join(version_1_record(e.term, e.index, registry.encode(e)) for e in old)
    )
    async with DiskStorage(tmp_path) as storage:
        await storage.load()
        await storage.save(hard_state=HardState(1, 1), truncate_from=None, entries=[entry(5)])
    assert (await reopen(tmp_path))[1] == entries(1, 5)
    # A damaged complete record is refused in a version 1 file too.
    data = bytearray(segment.read_bytes())
    data[40] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptionError, match="byte offset 0"):
        await reopen(tmp_path)
