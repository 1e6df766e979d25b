"""The file operations durable storage uses, behind one small interface.

DiskStorage, the segmented log, the meta file and the snapshot store do all their file work
through a `FileSystem`: `OS` (the real one, `os` calls) in production, and in tests a simulated
one that keeps only what was fsynced across a crash and injects faults (copycat_trio.testing.simfs).
Descriptors are ints either way. Paths are `Path`s. Every method blocks; `inline` says whether
callers may run them on the Trio thread (a simulated file system: no thread, so a run on a
MockClock stays deterministic) rather than in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, TypeVarTuple

import trio

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)


class LockHeld(Exception):
    """`FileSystem.lock` found the lock file held by someone else."""


class FileSystem(Protocol):
    """What storage asks of a file system (a subset of POSIX, with its durability rules: data
    is durable once its file is fsynced; a creation, rename or unlink once its directory is)."""

    inline: bool
    """Whether the methods may run on the Trio thread (they do no real I/O)."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int: ...

    def close(self, fd: int) -> None: ...

    def write(self, fd: int, data: bytes | memoryview) -> int: ...

    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...

    def pread(self, fd: int, size: int, offset: int) -> bytes: ...

    def ftruncate(self, fd: int, size: int) -> None: ...

    def fsync(self, fd: int) -> None:
        """Flush the file's data (or, for a directory opened O_DIRECTORY, its entries)."""
        ...

    def fstat_size(self, fd: int) -> int: ...

    def read_file(self, path: Path, *, uncached: bool = False) -> bytes:
        """The whole file. `uncached` first drops the file's clean cached pages, so that what is
        read is what the device holds: after a failed fsync, Linux marks the lost pages clean
        and goes on returning them to reads, though no fsync will ever write them."""
        ...

    def size(self, path: Path) -> int: ...

    def listdir(self, path: Path) -> list[str]: ...

    def is_dir(self, path: Path) -> bool: ...

    def mkdir(self, path: Path) -> None: ...

    def replace(self, source: Path, target: Path) -> None: ...

    def unlink(self, path: Path, *, missing_ok: bool = False) -> None: ...

    def lock(self, path: Path) -> int:
        """Create and exclusively lock `path`; LockHeld if another holder has it."""
        ...

    def unlock(self, fd: int) -> None: ...


class OsFileSystem:
    """The real file system: `os` calls (F_FULLFSYNC on macOS, where fsync stops at the drive)."""

    inline = False

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        if _FULLFSYNC is not None:
            fcntl.fcntl(fd, _FULLFSYNC)
        else:
            os.fsync(fd)

    def fstat_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def read_file(self, path: Path, *, uncached: bool = False) -> bytes:
        with path.open("rb") as file:
            if uncached and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return file.read()

    def size(self, path: Path) -> int:
        return path.stat().st_size

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path, *, missing_ok: bool = False) -> None:
        path.unlink(missing_ok=missing_ok)

    def lock(self, path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for people; the flock is what counts
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def unlock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


OS = OsFileSystem()
"""The real file system, the default everywhere."""


async def run_blocking(fs: FileSystem, function: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
    """Run blocking file work: in a worker thread, or inline for a simulated file system."""
    if fs.inline:
        await trio.lowlevel.checkpoint()
        return function(*args)
    return await trio.to_thread.run_sync(function, *args)


def fsync_directory(fs: FileSystem, path: Path) -> None:
    """Make creations, renames and unlinks in a directory durable."""
    fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


def make_directory(fs: FileSystem, path: Path) -> None:
    """mkdir -p that fsyncs the parent of every directory it creates, so the new entry lasts."""
    if fs.is_dir(path):
        return
    make_directory(fs, path.parent)
    try:
        fs.mkdir(path)
    except FileExistsError:
        if not fs.is_dir(path):
            raise
        return
    fsync_directory(fs, path.parent)


def write_all(fs: FileSystem, fd: int, data: bytes | memoryview) -> None:
    """Write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        written = fs.write(fd, view)
        view = view[written:]
