"""A segmented log on disk: checksummed records in files named by the index of their first entry.

Blocking code throughout: DiskStorage runs it in a worker thread. Layout of ``<directory>``::

    00000000000000000001.log    entries 1..1000   (named by its first index, 20 digits)
    00000000000000001001.log    entries 1001..    (the last file is the one appended to)

A record is a 28-byte big-endian header, then the payload (a codec-encoded entry)::

    magic b"\\xc5\\x1e" | version u8 = 1 | reserved u8 = 0 | length u32 | term u64 | index u64 |
    crc u32

``crc`` is zlib's CRC-32 over the first 24 header bytes followed by the payload.

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

Recovery scans every file. Bytes that fail to parse or match their checksum at the end of the last
non-empty file, with no valid record anywhere after them, are a torn tail (a crash during an
unacknowledged write) if a torn write can explain them: the record is incomplete (fewer bytes than
its header promises, or not even a header), or one of its sectors (512 bytes, by file offset) is
all zeros, as an unwritten sector reads after a crash. They are cut off and logged. A complete
record with no zeroed sector that fails its checksum (or that verifies once its magic, version and
reserved bytes are put right) was damaged after it was written, and may have been acknowledged:
cutting it would make this member forget an entry that counted toward a commit. So it, and
anything else (bad data followed by a valid record, a bad record in an earlier file, a gap, an
overlap, an index out of sequence, a decreasing term) raises StorageCorruptionError naming the file
and offset: the server refuses to start rather than diverge. What a torn write can still hide: a
flipped bit in the length field that makes the last record look longer than the file.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import struct
import zlib
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from .errors import StorageCorruptionError, StorageError
from .fs import OS, FileSystem, fsync_directory, write_all

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MAGIC = b"\xc5\x1e"
VERSION = 1
_HEAD = struct.Struct(">2sBBIQQ")
"""The CRC-covered part of a record header: magic, version, reserved, length, term, index."""
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size
"""Bytes before a record's payload (28)."""
MAX_PAYLOAD = 2**32 - 1
_NAME = re.compile(r"^(\d{20})\.log$")


def encode_record(term: int, index: int, payload: bytes) -> bytes:
    """One record: header with CRC, then the payload."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(
            f"entry {index} encodes to {len(payload)} bytes; the limit is {MAX_PAYLOAD}"
        )
    head = _HEAD.pack(MAGIC, VERSION, 0, len(payload), term, index)
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


def _check_record(data: bytes, pos: int) -> tuple[int, int, int] | str:
    """(term, index, payload length) of the record at `pos`, or why there is none."""
    available = len(data) - pos
    if available < HEADER_SIZE:
        return f"incomplete record header ({available} of {HEADER_SIZE} bytes)"
    magic, version, reserved, length, term, index = _HEAD.unpack_from(data, pos)
    if magic != MAGIC:
        return "no record starts here (bad magic)"
    if version != VERSION:
        return f"unknown record version {version}"
    if reserved:
        return "nonzero reserved header byte"
    end = pos + HEADER_SIZE + length
    if end > len(data):
        return f"incomplete record ({available - HEADER_SIZE} of {length} payload bytes)"
    (crc,) = _CRC.unpack_from(data, pos + _HEAD.size)
    view = memoryview(data)
    if zlib.crc32(view[pos + HEADER_SIZE : end], zlib.crc32(view[pos : pos + _HEAD.size])) != crc:
        return "checksum mismatch"
    return term, index, length


SECTOR = 512
"""The unit a crash tears a write at: each sector of an unsynced write is there or not."""


def _damaged_complete_record(data: bytes, pos: int) -> str | None:
    """Why the bad record at `pos`, with nothing valid after it, is damage rather than a torn
    write; None if a torn write can explain it.

    A torn write leaves fewer bytes than the header promises, or sectors that were never written
    and read as zeros (or, for the header, bytes that are no record at all). A record whose bytes
    are all there, with no zeroed sector, that fails its checksum was damaged after it was
    written, and may have been acknowledged; so is a complete record that verifies once its
    fixed header bytes (magic, version, reserved) are put right.
    """
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, version, reserved, length, term, index = _HEAD.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if end > len(data):
        return None
    first = pos // SECTOR * SECTOR
    for sector in range(first, end, SECTOR):
        chunk = data[max(sector, pos) : min(sector + SECTOR, len(data))]
        if chunk.count(0) == len(chunk):
            return None  # a sector the crash did not write
    (crc,) = _CRC.unpack_from(data, pos + _HEAD.size)
    payload = memoryview(data)[pos + HEADER_SIZE : end]
    what = f"a complete record ({length} payload bytes, index {index}, term {term})"
    if (magic, version, reserved) == (MAGIC, VERSION, 0):
        return f"{what} fails its checksum: the bytes were damaged after they were written"
    head = _HEAD.pack(MAGIC, VERSION, 0, length, term, index)
    if zlib.crc32(payload, zlib.crc32(head)) == crc:
        return f"{what} has a damaged magic, version or reserved byte"
    return None


def _find_valid_record(data: bytes, start: int, after_index: int) -> int | None:
    """Offset of any checksum-valid record at or after `start` with an index past `after_index`."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        if len(data) - pos >= HEADER_SIZE and _HEAD.unpack_from(data, pos)[5] > after_index:
            found = _check_record(data, pos)
            if not isinstance(found, str):
                return pos
        pos = data.find(MAGIC, pos + 1)
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
            data = self.fs.read_file(path)
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
                    later = _find_valid_record(data, pos + 1, expected - 1)
                    if later is not None:
                        problem = f"{found}, yet a valid record follows at offset {later}"
                        raise _corrupt(path, pos, problem)
                    damage = _damaged_complete_record(data, pos)
                    if damage is not None:
                        raise _corrupt(path, pos, damage + " (not a torn write)")
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
                term, index, length = found
                if index != expected:
                    raise _corrupt(path, pos, f"the record has index {index}, expected {expected}")
                if term < prev_term:
                    raise _corrupt(path, pos, f"term {term} follows term {prev_term}")
                start = pos + HEADER_SIZE
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
            for term, index, payload in records:
                record = encode_record(term, index, payload)
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
        self.fs.fsync(fd)
        self.fsyncs += 1

    def _fsync_directory(self) -> None:
        fsync_directory(self.fs, self.directory)
        self.fsyncs += 1
