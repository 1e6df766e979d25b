"""Snapshot files: streamed to a temp file, checksummed, fsynced, renamed into place.

Files live in ``<directory>/snapshots/`` and are named ``<index>-<term>.snapshot`` (20 digits each).
A file is a 40-byte big-endian header, then the data::

    magic b"CCTSNAP1" | index u64 | term u64 | length u64 | data crc u32 | header crc u32

The data CRC is zlib's CRC-32 of the data; the header CRC covers the 36 bytes before it. A writer
streams into ``<name>.<token>.tmp`` behind a zeroed header, then fills the header in, fsyncs,
renames, fsyncs the directory (after hashicorp/raft's file snapshots) and prunes old snapshots.
Readers verify the whole file before handing out a byte, and verify again as they stream.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import trio

from .errors import StorageCorruptionError, StorageError
from .fs import OS, FileSystem, fsync_directory, make_directory, run_blocking, write_all

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"CCTSNAP1"
_HEAD = struct.Struct(">8sQQQI")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size
"""Bytes before a snapshot's data (40)."""
CHUNK_SIZE = 1 << 20
"""Largest read a reader does at once, and the chunk size of verification."""
_NAME = re.compile(r"^(\d{20})-(\d{20})\.snapshot$")


def _snapshot_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}.snapshot"


@attrs.frozen
class SnapshotInfo:
    """A complete snapshot on disk, as its header describes it."""

    index: int
    """Index of the last entry the snapshot covers."""
    term: int
    """Term of that entry."""
    path: Path
    size: int
    """Bytes of data (the file is HEADER_SIZE bytes longer)."""


def _corrupt(path: Path, offset: int, problem: str) -> StorageCorruptionError:
    return StorageCorruptionError(
        f"snapshot file {path} is corrupt at byte offset {offset}: {problem}. It will not be "
        "installed; the server refuses to start rather than restore wrong state."
    )


def _read_header(fs: FileSystem, fd: int, path: Path) -> SnapshotInfo:
    """Parse and check a snapshot's header and file length (not the data checksum)."""
    head = fs.pread(fd, HEADER_SIZE, 0)
    if len(head) < HEADER_SIZE:
        raise _corrupt(path, len(head), f"the file is {len(head)} bytes, shorter than its header")
    magic, index, term, length, _ = _HEAD.unpack_from(head)
    if magic != SNAPSHOT_MAGIC:
        raise _corrupt(path, 0, "bad magic")
    if zlib.crc32(head[: _HEAD.size]) != _CRC.unpack_from(head, _HEAD.size)[0]:
        raise _corrupt(path, 0, "header checksum mismatch")
    match = _NAME.match(path.name)
    if match is None or (int(match.group(1)), int(match.group(2))) != (index, term):
        raise _corrupt(path, 0, f"the header says index {index}, term {term}, unlike the name")
    actual = fs.fstat_size(fd)
    if actual != HEADER_SIZE + length:
        problem = f"the header promises {length} data bytes but {actual - HEADER_SIZE} are there"
        raise _corrupt(path, min(actual, HEADER_SIZE + length), problem)
    return SnapshotInfo(index, term, path, length)


def _data_crc(fs: FileSystem, fd: int) -> int:
    _, _, _, _, crc = _HEAD.unpack(fs.pread(fd, _HEAD.size, 0))
    return int(crc)


class SnapshotWriter:
    """Streams one snapshot's data to its temp file; see SnapshotStore.create."""

    def __init__(self, fd: int, path: Path, fs: FileSystem = OS) -> None:
        self._fd = fd
        self.fs = fs
        self.path = path
        """The temp file being written."""
        self._crc = 0
        self.bytes_written = 0
        self.info: SnapshotInfo | None = None
        """Set once the snapshot is committed, when the `async with` block exits cleanly."""

    async def write(self, data: bytes) -> None:
        """Append a chunk (its size is the caller's choice; nothing is kept in memory)."""
        if self._fd < 0:
            raise StorageError(f"snapshot {self.path} is no longer open for writing")
        await run_blocking(self.fs, write_all, self.fs, self._fd, data)
        self._crc = zlib.crc32(data, self._crc)
        self.bytes_written += len(data)


class SnapshotReader:
    """Streams a verified snapshot's data; see SnapshotStore.open."""

    def __init__(self, fd: int, info: SnapshotInfo, expected_crc: int, fs: FileSystem = OS) -> None:
        self._fd = fd
        self.fs = fs
        self.info = info
        self._expected_crc = expected_crc
        self._crc = 0
        self._position = 0

    @property
    def expected_crc(self) -> int:
        """The CRC-32 of the whole data, as recorded when the snapshot was written."""
        return self._expected_crc

    @property
    def remaining(self) -> int:
        return self.info.size - self._position

    async def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        """Up to `max_bytes` of data, b"" at the end; the last chunk is verified before return."""
        if self._fd < 0:
            raise StorageError(f"snapshot {self.info.path} is closed")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        want = min(max_bytes, CHUNK_SIZE, self.remaining)
        if want == 0:
            await trio.lowlevel.checkpoint()
            return b""
        offset = HEADER_SIZE + self._position
        data = await run_blocking(self.fs, self.fs.pread, self._fd, want, offset)
        if len(data) < want:
            raise _corrupt(self.info.path, offset + len(data), "the file was cut while reading")
        self._crc = zlib.crc32(data, self._crc)
        self._position += len(data)
        if self.remaining == 0 and self._crc != self._expected_crc:
            raise _corrupt(self.info.path, HEADER_SIZE, "the data changed while it was read")
        return data


class SnapshotStore:
    """Snapshots in ``<directory>/snapshots``, newest `keep` kept. Use one store per directory
    at a time (DiskStorage creates it under its LOCK): opening removes leftover temp files."""

    def __init__(
        self, directory: str | os.PathLike[str], *, keep: int = 2, fs: FileSystem = OS
    ) -> None:
        if type(keep) is not int or keep < 1:
            raise ValueError(f"keep must be a positive integer, not {keep!r}")
        self.directory = Path(directory) / "snapshots"
        self.keep = keep
        self.fs = fs
        self._tokens = itertools.count()
        """Temp file tokens: the store's own count, so that its file names depend on what it
        did, not on the process (a simulation on the real store replays in any process); a
        name another writer holds is skipped (O_EXCL)."""
        self.inline_snapshots = fs.inline
        """Whether servers run snapshot code on the Trio thread (see executor.runs_inline)."""
        make_directory(fs, self.directory)
        leftovers = [
            self.directory / name for name in fs.listdir(self.directory) if name.endswith(".tmp")
        ]
        for path in leftovers:
            log.info("removing %s, left by a snapshot write that did not finish", path)
            fs.unlink(path)
        if leftovers:
            fsync_directory(fs, self.directory)

    def _names(self) -> list[tuple[int, int, Path]]:
        """(index, term, path) of every complete snapshot, oldest first, from names only."""
        found = []
        for name in self.fs.listdir(self.directory):
            match = _NAME.match(name)
            if match is not None:
                found.append((int(match.group(1)), int(match.group(2)), self.directory / name))
        return sorted(found)

    def _info(self, path: Path) -> SnapshotInfo:
        fd = self.fs.open(path, os.O_RDONLY)
        try:
            return _read_header(self.fs, fd, path)
        finally:
            self.fs.close(fd)

    async def list_all(self) -> list[SnapshotInfo]:
        """Every complete snapshot, oldest first, each header checked."""

        def scan() -> list[SnapshotInfo]:
            return [self._info(path) for _, _, path in self._names()]

        return await run_blocking(self.fs, scan)

    async def latest(self) -> SnapshotInfo | None:
        """The newest snapshot (by index), its header checked; None if there is none.

        A damaged newest snapshot raises rather than falling back to an older one, since the
        log before the newest may already be compacted away.
        """

        def newest() -> SnapshotInfo | None:
            names = self._names()
            return self._info(names[-1][2]) if names else None

        return await run_blocking(self.fs, newest)

    def create(self, index: int, term: int) -> AbstractAsyncContextManager[SnapshotWriter]:
        """``async with store.create(index, term) as writer: await writer.write(chunk)``.

        Committed (durably, under the final name) only if the block exits without an exception;
        otherwise the temp file is removed.
        """
        if type(index) is not int or type(term) is not int or index < 0 or term < 0:
            raise ValueError(
                f"index and term must be non-negative integers, not {index!r}, {term!r}"
            )
        return self._create(index, term)

    @asynccontextmanager
    async def _create(self, index: int, term: int) -> AsyncIterator[SnapshotWriter]:
        final = self.directory / _snapshot_name(index, term)
        fs = self.fs

        def start() -> tuple[int, Path]:
            while True:
                temp = final.with_name(f"{final.name}.{next(self._tokens)}.tmp")
                try:
                    fd = fs.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
                break
            try:
                write_all(fs, fd, bytes(HEADER_SIZE))
            except BaseException:
                fs.close(fd)
                fs.unlink(temp)
                raise
            return fd, temp

        fd, temp = await run_blocking(fs, start)
        writer = SnapshotWriter(fd, temp, fs)
        try:
            yield writer
        except BaseException:
            writer._fd = -1
            with trio.CancelScope(shield=True):
                await run_blocking(fs, self._discard, fd, temp)
            raise
        writer._fd = -1
        info = SnapshotInfo(index, term, final, writer.bytes_written)
        head = _HEAD.pack(SNAPSHOT_MAGIC, index, term, writer.bytes_written, writer._crc)
        head += _CRC.pack(zlib.crc32(head))
        with trio.CancelScope(shield=True):
            await run_blocking(fs, self._commit, fd, head, temp, final)
        writer.info = info
        await run_blocking(fs, self._prune)

    def _commit(self, fd: int, head: bytes, temp: Path, final: Path) -> None:
        """Header, fsync, rename, fsync the directory; the temp file goes if any step fails."""
        fs = self.fs
        try:
            try:
                fs.pwrite(fd, head, 0)
                fs.fsync(fd)
            finally:
                fs.close(fd)
            fs.replace(temp, final)
        except BaseException:
            fs.unlink(temp, missing_ok=True)
            raise
        fsync_directory(fs, self.directory)

    def _discard(self, fd: int, temp: Path) -> None:
        self.fs.close(fd)
        self.fs.unlink(temp, missing_ok=True)

    def _prune(self) -> None:
        names = self._names()
        doomed = names[: max(0, len(names) - self.keep)]
        for _, _, path in doomed:
            log.info("removing old snapshot %s", path)
            self.fs.unlink(path)
        if doomed:
            fsync_directory(self.fs, self.directory)

    def open(self, info: SnapshotInfo) -> AbstractAsyncContextManager[SnapshotReader]:
        """``async with store.open(info) as reader: await reader.read(n)``.

        The whole file's checksum is verified before the block starts, so a truncated or
        bit-flipped snapshot raises StorageCorruptionError before any data reaches the caller.
        """
        return self._open(info)

    @asynccontextmanager
    async def _open(self, info: SnapshotInfo) -> AsyncIterator[SnapshotReader]:
        fs = self.fs

        def verify() -> tuple[int, int]:
            fd = fs.open(info.path, os.O_RDONLY)
            try:
                found = _read_header(fs, fd, info.path)
                if found != info:
                    raise _corrupt(info.path, 0, f"the header describes {found}, not {info}")
                crc = 0
                offset = HEADER_SIZE
                while offset < HEADER_SIZE + info.size:
                    chunk = fs.pread(fd, min(CHUNK_SIZE, HEADER_SIZE + info.size - offset), offset)
                    if not chunk:
                        raise _corrupt(info.path, offset, "the file was cut while verifying")
                    crc = zlib.crc32(chunk, crc)
                    offset += len(chunk)
                expected = _data_crc(fs, fd)
                if crc != expected:
                    raise _corrupt(info.path, HEADER_SIZE, "data checksum mismatch")
                return fd, expected
            except BaseException:
                fs.close(fd)
                raise

        fd, expected = await run_blocking(fs, verify)
        reader = SnapshotReader(fd, info, expected, fs)
        try:
            yield reader
        finally:
            reader._fd = -1
            fs.close(fd)
