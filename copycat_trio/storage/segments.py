"""A segmented log on disk: checksummed records in files named by the index of their first entry.

Blocking code throughout: DiskStorage runs it in a worker thread. Layout of ``<directory>``::

    00000000000000000001.log    entries 1..1000   (named by its first index, 20 digits)
    00000000000000001001.log    entries 1001..    (the last file is the one appended to)

A record is a 32-byte big-endian header, then the payload (a codec-encoded entry)::

    magic b"\\xc5\\x1e" | version u8 = 2 | flags u8 = 0 | length u32 | term u64 | index u64 |
    position u32 | crc u32

``crc`` is zlib's CRC-32 over the first 28 header bytes followed by the payload. ``position`` is
the record's place in its write (0 for the first record a save appends), so recovery can tell
which write a record belongs to. Version 1 records (28-byte header, no position) are still read.

Durability rules (each save fsyncs every file it touches once, and the directory at most once):

* An append writes all its records to ONE file with one write and fsyncs it; a new file is started
  (named by its first index) when the last one has reached ``segment_size`` bytes or
  ``entries_per_segment`` entries, so a file may overshoot by one batch.
* Truncating to ``k`` first empties (ftruncate 0 + fsync) every file that starts at or after ``k``,
  newest first, then cuts the file holding ``k`` at that record's offset and fsyncs it, then unlinks
  the emptied files. A crash part-way leaves a shorter, still contiguous log, never a gap. Empty
  files are ignored and removed on recovery. Entries appended in the same call go to a new file,
  because new data must never share an unsynced file with a cut that is not yet durable.
* Compaction unlinks whole leading files, oldest first, fsyncing the directory after each.

Recovery scans every file. A crash tears only the last write (each earlier one was fsynced), and
tears it by sector (512 bytes, by file offset): each sector of it is on disk or not, in any order,
and one that is not reads as zeros. So a bad record in the last non-empty file is a torn tail, cut
off with everything after it (and logged), when a torn write explains it: the record is incomplete
(fewer bytes than its header promises, or not even a header) or has an all-zero sector, and every
valid record after it belongs to the same write (its index minus its position is at most the bad
record's index). A complete record with no zeroed sector that fails its checksum (or that
verifies once its magic, version and flags are put right) was damaged after it was written, and
may have been acknowledged: cutting it would make this member forget an entry that counted toward
a commit. So it, and anything else (damage followed by a later write, a bad record in an earlier
file, a gap, an overlap, an index out of sequence, a decreasing term) raises
StorageCorruptionError naming the file and offset: the server refuses to start rather than
diverge. What a torn write can still hide: a flipped bit in a length field that makes the last
record look longer than the file, and a zeroed sector in the last write that is really damage.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from .errors import StorageCorruptionError, StorageError
from .fs import OS, FileSystem, fsync_directory, write_all

SLOW_FSYNC = 0.1
"""Seconds beyond which a log fsync is logged as slow (etcd warns from 100 ms too)."""
SLOW_FSYNC_WARN_EVERY = 1.0

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MAGIC = b"\xc5\x1e"
VERSION = 2
"""Version of the records written; version 1 (no position field) is still read."""
_PREFIX = struct.Struct(">2sBBI")
"""magic, version, flags (0), payload length: where every version's header starts."""
_HEADS = {1: struct.Struct(">2sBBIQQ"), 2: struct.Struct(">2sBBIQQI")}
"""The CRC-covered part of a header by version: the prefix, term, index (and position)."""
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADS[2].size + _CRC.size
"""Bytes before a record's payload (32; 28 in version 1 records)."""
MAX_PAYLOAD = 2**32 - 1
_NAME = re.compile(r"^(\d{20})\.log$")


def encode_record(term: int, index: int, payload: bytes, *, position: int = 0) -> bytes:
    """One record: header with CRC, then the payload; `position` is its place in its write."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(
            f"entry {index} encodes to {len(payload)} bytes; the limit is {MAX_PAYLOAD}"
        )
    head = _HEADS[2].pack(MAGIC, VERSION, 0, len(payload), term, index, position)
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}.log"


@attrs.frozen
class RawRecord:
    """A record found by recovery, with where it lives (for error messages)."""

    path: Path
    offset: int
    term: int
    index: int
    payload: bytes


@attrs.define
class Segment:
    """The in-memory index of one file: offset and term of each record, and its length."""

    first_index: int
    path: Path
    offsets: array[int] = attrs.field(factory=lambda: array("Q"))
    terms: array[int] = attrs.field(factory=lambda: array("Q"))
    size: int = 0

    @property
    def count(self) -> int:
        return len(self.offsets)

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


def _corrupt(path: Path, offset: int, problem: str) -> StorageCorruptionError:
    return StorageCorruptionError(
        f"log file {path} is corrupt at byte offset {offset}: {problem}. The server refuses to "
        "start rather than risk diverging from its cluster; restore this member's directory from "
        "a backup or remove it and re-add the member."
    )


@attrs.frozen
class _Header:
    version: int
    term: int
    index: int
    length: int
    """Payload bytes."""
    position: int
    """Place in its write (0: the write's first record); 0 in version 1 records."""
    size: int
    """Header bytes."""


def _check_record(data: bytes, pos: int) -> _Header | str:
    """The header of the checksum-valid record at `pos`, or why there is none."""
    available = len(data) - pos
    if available < _PREFIX.size:
        return f"incomplete record header ({available} bytes)"
    magic, version, flags, length = _PREFIX.unpack_from(data, pos)
    if magic != MAGIC:
        return "no record starts here (bad magic)"
    head = _HEADS.get(version)
    if head is None:
        return f"unknown record version {version}"
    if flags:
        return "nonzero flags header byte"
    size = head.size + _CRC.size
    if available < size:
        return f"incomplete record header ({available} of {size} bytes)"
    _, _, _, _, term, index, *position = head.unpack_from(data, pos)
    end = pos + size + length
    if end > len(data):
        return f"incomplete record ({available - size} of {length} payload bytes)"
    (crc,) = _CRC.unpack_from(data, pos + head.size)
    view = memoryview(data)
    if zlib.crc32(view[pos + size : end], zlib.crc32(view[pos : pos + head.size])) != crc:
        return "checksum mismatch"
    return _Header(version, term, index, length, position[0] if position else 0, size)


SECTOR = 512
"""The unit a crash tears a write at: each sector of an unsynced write is there or not."""


def _damaged_complete_record(data: bytes, pos: int) -> str | None:
    """Why the bad record at `pos` is damage rather than a torn write; None if a torn write
    can explain it.

    A torn write leaves fewer bytes than the header promises, or sectors that were never written
    and read as zeros (or, for the header, bytes that are no record at all). A record whose bytes
    are all there, with no zeroed sector, that fails its checksum was damaged after it was
    written, and may have been acknowledged; so is a complete record that verifies once its
    fixed header bytes (magic, version, flags) are put right.
    """
    if len(data) - pos < _PREFIX.size:
        return None
    magic, version, flags, length = _PREFIX.unpack_from(data, pos)
    intact = magic == MAGIC and version in _HEADS and not flags
    for form, head in _HEADS.items():
        if intact and form != version:
            continue
        end = pos + head.size + _CRC.size + length
        if end > len(data):
            continue  # incomplete: what a torn write leaves
        first = pos // SECTOR * SECTOR
        if any(
            not data[max(sector, pos) : min(sector + SECTOR, len(data))].strip(b"\0")
            for sector in range(first, end, SECTOR)
        ):
            return None  # a sector the crash did not write
        _, _, _, _, term, index, *_ = head.unpack_from(data, pos)
        what = f"a complete record ({length} payload bytes, index {index}, term {term})"
        if intact:
            return f"{what} fails its checksum: the bytes were damaged after they were written"
        fixed = bytearray(data[pos : pos + head.size])
        fixed[: _PREFIX.size] = _PREFIX.pack(MAGIC, form, 0, length)
        (crc,) = _CRC.unpack_from(data, pos + head.size)
        if zlib.crc32(data[pos + head.size + _CRC.size : end], zlib.crc32(fixed)) == crc:
            return f"{what} has a damaged magic, version or flags byte"
    return None


def _later_write(data: bytes, start: int, index: int) -> int | None:
    """The offset of a valid record at or after `start` that belongs to a write begun after
    entry `index` (or is of version 1, which cannot say), or None if every valid record from
    `start` on belongs to the write holding `index`: a torn last write then explains the damage
    to `index`."""
    found = data.find(MAGIC, start)
    while found != -1:
        header = _check_record(data, found)
        if (
            not isinstance(header, str)
            and header.index > index
            and (header.version == 1 or header.index - header.position > index)
        ):
            return found
        found = data.find(MAGIC, found + 1)
    return None


class SegmentedLog:
    """The log's files and an index (index -> file, offset, term); every method blocks."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_size: int,
        entries_per_segment: int,
        fs: FileSystem = OS,
    ) -> None:
        self.directory = directory
        self.fs = fs
        self.segment_size = segment_size
        self.entries_per_segment = entries_per_segment
        self.segments: list[Segment] = []
        self._firsts: list[int] = []
        self._fd: int | None = None
        """Append descriptor of the last segment, opened on demand."""
        self.fsyncs = 0
        self._slow_warned = -math.inf
        self.on_fsync: Callable[[float], None] | None = None
        """Told each segment fsync's duration in seconds (see DiskStorage.observe_fsyncs)."""

    # --- reading the state ---------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """Index of the first entry; 0 when the log is empty."""
        return self.segments[0].first_index if self.segments else 0

    @property
    def last_index(self) -> int:
        """Index of the last entry; 0 when the log is empty."""
        return self.segments[-1].last_index if self.segments else 0

    @property
    def size(self) -> int:
        """Bytes in all segment files."""
        return sum(seg.size for seg in self.segments)

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if the log does not hold it."""
        found = self._locate(index)
        return None if found is None else found[0].terms[found[1]]

    def _locate(self, index: int) -> tuple[Segment, int] | None:
        if not self.segments or not self.first_index <= index <= self.last_index:
            return None
        seg = self.segments[bisect.bisect_right(self._firsts, index) - 1]
        return seg, index - seg.first_index

    # --- recovery --------------------------------------------------------------------------

    def recover(self, decode: Callable[[RawRecord], _T]) -> list[_T]:
        """Scan every file, cut a torn tail, index the records; `decode` each one, in order."""
        self.close()
        files: list[tuple[int, Path]] = []
        for name in self.fs.listdir(self.directory):
            path = self.directory / name
            match = _NAME.match(name)
            if match is None:
                log.warning("ignoring %s: not a log segment name", path)
            else:
                files.append((int(match.group(1)), path))
        files.sort()
        sizes = [self.fs.size(path) for _, path in files]
        last_nonempty = max((i for i, size in enumerate(sizes) if size), default=-1)

        out: list[_T] = []
        segments: list[Segment] = []
        doomed: list[Path] = []
        cut: tuple[Path, int] | None = None
        prev_last: int | None = None
        prev_term = 0
        for i, (first, path) in enumerate(files):
            if sizes[i] == 0:
                doomed.append(path)
                continue
            data = self.fs.read_file(path, uncached=True)  # the device's bytes, not the cache's
            if prev_last is not None and first != prev_last + 1:
                problem = f"the file starts at index {first} but the one before ends at {prev_last}"
                raise _corrupt(path, 0, problem + " (a file is missing or overlaps)")
            seg = Segment(first, path)
            pos = 0
            expected = first
            while pos < len(data):
                found = _check_record(data, pos)
                if isinstance(found, str):
                    if i != last_nonempty:
                        raise _corrupt(path, pos, found + " in a file that is not the last one")
                    damage = _damaged_complete_record(data, pos)
                    if damage is not None:
                        raise _corrupt(path, pos, damage + " (not a torn write)")
                    later = _later_write(data, pos + 1, expected)
                    if later is not None:
                        problem = f"{found}, yet a later write follows (at offset {later})"
                        raise _corrupt(path, pos, problem)
                    log.warning(
                        "log file %s: cutting a torn tail of %d bytes at offset %d (%s); a crash "
                        "interrupted a write that was never acknowledged",
                        path,
                        len(data) - pos,
                        pos,
                        found,
                    )
                    cut = (path, pos)
                    break
                term, index, length = found.term, found.index, found.length
                if index != expected:
                    raise _corrupt(path, pos, f"the record has index {index}, expected {expected}")
                if term < prev_term:
                    raise _corrupt(path, pos, f"term {term} follows term {prev_term}")
                start = pos + found.size
                out.append(decode(RawRecord(path, pos, term, index, data[start : start + length])))
                seg.offsets.append(pos)
                seg.terms.append(term)
                prev_term = term
                expected += 1
                pos = start + length
            seg.size = pos
            if seg.count:
                segments.append(seg)
                prev_last = seg.last_index
            else:
                doomed.append(path)

        # Everything checked: only now change the files.
        if cut is not None and cut[1] > 0:
            fd = self.fs.open(cut[0], os.O_WRONLY)
            try:
                self.fs.ftruncate(fd, cut[1])
                self._fsync(fd)
            finally:
                self.fs.close(fd)
        for path in doomed:
            log.info("removing empty or torn log file %s", path)
            self.fs.unlink(path)
        if doomed:
            self._fsync_directory()
        self.segments = segments
        self._firsts = [seg.first_index for seg in segments]
        return out

    # --- writing -----------------------------------------------------------------------------

    def write(
        self, *, truncate_from: int | None, records: Sequence[tuple[int, int, bytes]]
    ) -> None:
        """Truncate from an index, then append (term, index, payload) records, durably.

        The caller has checked that the records are contiguous and follow the truncated log.
        """
        synced: set[int] = set()
        directory_changed = False
        if truncate_from is not None and self.segments and truncate_from <= self.last_index:
            directory_changed = self._truncate(truncate_from, synced)
        if records:
            seg = self.segments[-1] if self.segments else None
            if (
                seg is None
                or id(seg) in synced
                or seg.size >= self.segment_size
                or seg.count >= self.entries_per_segment
            ):
                seg = self._new_segment(records[0][1])
                directory_changed = True
            fd = self._append_fd()
            chunks: list[bytes] = []
            offsets = array("Q")
            terms = array("Q")
            pos = seg.size
            for position, (term, index, payload) in enumerate(records):
                record = encode_record(term, index, payload, position=position)
                chunks.append(record)
                offsets.append(pos)
                terms.append(term)
                pos += len(record)
            write_all(self.fs, fd, b"".join(chunks))
            self._fsync(fd)
            seg.offsets.extend(offsets)
            seg.terms.extend(terms)
            seg.size = pos
        if directory_changed:
            self._fsync_directory()

    def _truncate(self, index: int, synced: set[int]) -> bool:
        """Remove entries from `index` on; returns whether files were removed."""
        cut = bisect.bisect_left(self._firsts, index)
        doomed = self.segments[cut:]
        self.close()
        for seg in reversed(doomed):
            fd = self.fs.open(seg.path, os.O_WRONLY)
            try:
                self.fs.ftruncate(fd, 0)
                self._fsync(fd)
            finally:
                self.fs.close(fd)
        del self.segments[cut:]
        del self._firsts[cut:]
        if self.segments and self.segments[-1].last_index >= index:
            seg = self.segments[-1]
            keep = index - seg.first_index
            offset = seg.offsets[keep]
            fd = self._append_fd()
            self.fs.ftruncate(fd, offset)
            self._fsync(fd)
            synced.add(id(seg))
            del seg.offsets[keep:]
            del seg.terms[keep:]
            seg.size = offset
        for seg in doomed:
            self.fs.unlink(seg.path)
        return bool(doomed)

    def _new_segment(self, first_index: int) -> Segment:
        self.close()
        path = self.directory / segment_name(first_index)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
            self._fd = self.fs.open(path, flags, 0o644)
        except FileExistsError:
            raise StorageError(f"log file {path} already exists; the log index is stale") from None
        seg = Segment(first_index, path)
        self.segments.append(seg)
        self._firsts.append(first_index)
        return seg

    def _append_fd(self) -> int:
        if self._fd is None:
            self._fd = self.fs.open(self.segments[-1].path, os.O_WRONLY | os.O_APPEND)
        return self._fd

    def compact_before(self, index: int) -> int:
        """Delete files whose entries all precede `index`, oldest first; returns how many."""
        removed = 0
        while self.segments and self.segments[0].last_index < index:
            seg = self.segments[0]
            if len(self.segments) == 1:
                self.close()
            self.fs.unlink(seg.path)
            self._fsync_directory()
            del self.segments[0]
            del self._firsts[0]
            removed += 1
        return removed

    def close(self) -> None:
        """Close the append descriptor; the log can still be written (it reopens on demand)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.fs.close(fd)

    def _fsync(self, fd: int) -> None:
        started = time.perf_counter()
        self.fs.fsync(fd)
        self.fsyncs += 1
        elapsed = time.perf_counter() - started
        if self.on_fsync is not None:
            self.on_fsync(elapsed)
        if elapsed > SLOW_FSYNC and started - self._slow_warned >= SLOW_FSYNC_WARN_EVERY:
            # Each commit waits for this; at most one line a second, so a slow disk is seen
            # without the log drowning in it.
            self._slow_warned = started
            log.warning(
                "slow fsync: %.0f ms for a log file in %s (over %.0f ms): every commit waits "
                "for it; is the disk busy or failing?",
                elapsed * 1000,
                self.directory,
                SLOW_FSYNC * 1000,
            )

    def _fsync_directory(self) -> None:
        fsync_directory(self.fs, self.directory)
        self.fsyncs += 1
