"""A simulated file system that forgets what a power loss forgets, for DiskStorage under test.

`SimFileSystem` implements storage.fs.FileSystem in memory, inline (no threads), so the real
DiskStorage, segmented log, meta file and snapshot store run on it deterministically. Its rules:

* A write goes to the file's current contents (what reads see: the page cache). It becomes
  durable when the file is fsynced. `crash()` keeps, for each file, its durable contents plus a
  random selection of the 512-byte sectors written since (not a prefix: any subset), with the
  file's length either the durable one or the current one; a sector not kept reads as its old
  contents, or zeros past the old end.
* A creation, rename or unlink becomes durable when its directory is fsynced. `crash()` keeps or
  loses each name changed since, independently: a file fsynced but not its directory may vanish,
  a rename may be undone, an unlinked file may come back.
* Faults, drawn from the seeded rng: `fsync_lies` (the probability an fsync returns without making
  anything durable), `fsync_errors` (the probability it raises EIO), and `flip_bit(path)` (damage
  at rest, in the durable contents). A failed fsync behaves as Linux's does: the file's unsynced
  bytes stay visible to reads (the pages are marked clean) but never reach the device, not even
  by a later successful fsync, until a read with `uncached=True` drops the cache and sees what
  the device holds.

A crash also closes every descriptor and releases every lock, as the process's death would.
Counters say what the faults struck (fsyncs, errors, lies, torn files, lost sectors and names,
lies a crash exposed), for a simulation's report.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import attrs

__all__ = ["PowerLoss", "SimFileSystem"]

SECTOR = 512


@attrs.define(eq=False)
class _Inode:
    data: bytearray = attrs.Factory(bytearray)
    """What reads see."""
    durable: bytes = b""
    """What survives a crash for sure."""
    failed: bytes | None = None
    """The contents when an fsync failed: those unsynced bytes will never reach the device."""
    lied: bytes | None = None
    """The contents a lying fsync claimed durable (until an honest fsync): lost if a crash
    keeps anything else."""


@attrs.define(eq=False)
class _Dir:
    names: dict[str, _Inode | _Dir] = attrs.Factory(dict)
    durable: dict[str, _Inode | _Dir] = attrs.Factory(dict)
    lied: dict[str, _Inode | _Dir] | None = None
    """The names a lying fsync claimed durable (until an honest fsync)."""


@attrs.define(eq=False)
class _Open:
    node: _Inode | _Dir
    path: Path
    flags: int
    position: int = 0


class PowerLoss(BaseException):
    """The simulated process died in the middle of a file operation (see `die_after`)."""


def _error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class SimFileSystem:
    """One machine's disk, in memory; see the module docstring. Paths must be absolute."""

    inline = True

    def __init__(self, rng: random.Random, *, fsync_lies: float = 0.0, fsync_errors: float = 0.0):
        self.rng = rng
        self.fsync_lies = fsync_lies
        self.fsync_errors = fsync_errors
        self._root = _Dir()
        self._fds: dict[int, _Open] = {}
        self._next_fd = 3
        self._locks: set[Path] = set()
        self.fsyncs = 0
        self.lies = 0
        self.errors = 0
        self.crashes = 0
        self.torn_files = 0
        """Files a crash left with some but not all of their unsynced sectors."""
        self.torn_out_of_order = 0
        """Of those, files where a kept sector follows a lost one (a tear that is no prefix)."""
        self.sectors_lost = 0
        """Unsynced sectors a crash dropped (they read as their old contents, or zeros)."""
        self.names_lost = 0
        """Unsynced directory changes (creations, renames, unlinks) a crash undid."""
        self.lies_lost = 0
        """Files and directories whose lying fsync a crash exposed: what it claimed is gone."""
        self._countdown: int | None = None

    # --- the namespace ---------------------------------------------------------------------

    def _parent(self, path: Path) -> _Dir:
        node: _Inode | _Dir = self._root
        for part in path.parent.parts[1:]:
            if not isinstance(node, _Dir) or part not in node.names:
                raise _error(errno.ENOENT, path)
            node = node.names[part]
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        return node

    def _lookup(self, path: Path) -> _Inode | _Dir:
        if path == Path("/"):
            return self._root
        node = self._parent(path).names.get(path.name)
        if node is None:
            raise _error(errno.ENOENT, path)
        return node

    def _file(self, fd: int) -> _Open:
        found = self._fds.get(fd)
        if found is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return found

    # --- FileSystem ------------------------------------------------------------------------

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        self._tick()
        parent = self._parent(path)
        node: _Inode | _Dir | None = (
            self._root if path == Path("/") else parent.names.get(path.name)
        )
        if node is None:
            if not flags & os.O_CREAT:
                raise _error(errno.ENOENT, path)
            node = parent.names[path.name] = _Inode()
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise _error(errno.EEXIST, path)
        if flags & os.O_DIRECTORY and not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        if isinstance(node, _Inode) and flags & os.O_TRUNC:
            del node.data[:]
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = _Open(node, path, flags)
        return fd

    def close(self, fd: int) -> None:
        self._file(fd)
        del self._fds[fd]

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._tick()
        handle = self._file(fd)
        assert isinstance(handle.node, _Inode)
        position = len(handle.node.data) if handle.flags & os.O_APPEND else handle.position
        self._write_at(handle.node, bytes(data), position)
        handle.position = position + len(data)
        return len(data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self._tick()
        handle = self._file(fd)
        assert isinstance(handle.node, _Inode)
        self._write_at(handle.node, data, offset)
        return len(data)

    @staticmethod
    def _write_at(node: _Inode, data: bytes, offset: int) -> None:
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(data)] = data

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        handle = self._file(fd)
        assert isinstance(handle.node, _Inode)
        return bytes(handle.node.data[offset : offset + size])

    def ftruncate(self, fd: int, size: int) -> None:
        self._tick()
        handle = self._file(fd)
        assert isinstance(handle.node, _Inode)
        if size < len(handle.node.data):
            del handle.node.data[size:]
        else:
            handle.node.data.extend(bytes(size - len(handle.node.data)))

    def fsync(self, fd: int) -> None:
        self._tick()
        handle = self._file(fd)
        self.fsyncs += 1
        draw = self.rng.random()
        if draw < self.fsync_errors:
            self.errors += 1
            if isinstance(handle.node, _Inode):
                handle.node.failed = bytes(handle.node.data)
            raise _error(errno.EIO, handle.path)
        node = handle.node
        if draw < self.fsync_errors + self.fsync_lies:
            self.lies += 1
            if isinstance(node, _Inode):
                node.lied = bytes(node.data)
            else:
                node.lied = dict(node.names)
            return
        if isinstance(node, _Inode):
            node.durable = self._persistable(node)
            node.lied = None
        else:
            node.durable = dict(node.names)
            node.lied = None

    def fstat_size(self, fd: int) -> int:
        handle = self._file(fd)
        assert isinstance(handle.node, _Inode)
        return len(handle.node.data)

    @staticmethod
    def _persistable(node: _Inode) -> bytes:
        """What an fsync writes: the current contents, but where a failed fsync left bytes
        marked clean and unchanged since, what the device had (zeros past its end)."""
        if node.failed is None:
            return bytes(node.data)
        data, failed, old = node.data, node.failed, node.durable
        out = bytearray(data)
        for i in range(min(len(data), len(failed))):
            before = old[i] if i < len(old) else 0
            if data[i] == failed[i] != before:
                out[i] = before
        return bytes(out)

    def read_file(self, path: Path, *, uncached: bool = False) -> bytes:
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, path)
        if uncached and node.failed is not None:
            # Dropping the cache discards the pages a failed fsync marked clean.
            node.data = bytearray(self._persistable(node))
            node.failed = None
        return bytes(node.data)

    def size(self, path: Path) -> int:
        return len(self.read_file(path))

    def listdir(self, path: Path) -> list[str]:
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        return sorted(node.names)

    def is_dir(self, path: Path) -> bool:
        try:
            return isinstance(self._lookup(path), _Dir)
        except OSError:
            return False

    def mkdir(self, path: Path) -> None:
        self._tick()
        parent = self._parent(path)
        if path.name in parent.names:
            raise _error(errno.EEXIST, path)
        parent.names[path.name] = _Dir()

    def replace(self, source: Path, target: Path) -> None:
        self._tick()
        source_dir, target_dir = self._parent(source), self._parent(target)
        node = source_dir.names.pop(source.name, None)
        if node is None:
            raise _error(errno.ENOENT, source)
        target_dir.names[target.name] = node

    def unlink(self, path: Path, *, missing_ok: bool = False) -> None:
        self._tick()
        parent = self._parent(path)
        node = parent.names.get(path.name)
        if node is None:
            if missing_ok:
                return
            raise _error(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, path)
        del parent.names[path.name]

    def lock(self, path: Path) -> int:
        from ..storage.fs import LockHeld

        if path in self._locks:
            raise LockHeld(str(path))
        fd = self.open(path, os.O_RDWR | os.O_CREAT)
        self._locks.add(path)
        return fd

    def unlock(self, fd: int) -> None:
        self._locks.discard(self._file(fd).path)
        self.close(fd)

    # --- faults ----------------------------------------------------------------------------

    def crash(self) -> None:
        """Power loss: keep what is durable and a random part of the rest (module docstring)."""
        self.crashes += 1
        self._fds.clear()
        self._locks.clear()
        self._crash_dir(self._root, set())

    def _crash_dir(self, directory: _Dir, seen: set[int]) -> None:
        names: dict[str, _Inode | _Dir] = {}
        for name in sorted(set(directory.names) | set(directory.durable)):
            now, then = directory.names.get(name), directory.durable.get(name)
            node = now if now is then or self.rng.random() < 0.5 else then
            if node is not now:
                self.names_lost += 1
            if node is not None:
                names[name] = node
        if directory.lied is not None and directory.lied != names:
            self.lies_lost += 1
        directory.lied = None
        directory.names = names
        directory.durable = dict(names)
        for node in names.values():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, _Dir):
                self._crash_dir(node, seen)
            else:
                self._crash_file(node)

    def _crash_file(self, node: _Inode) -> None:
        old, new = node.durable, bytes(node.data)
        lied, node.lied = node.lied, None
        if old == new:
            if lied is not None and lied != old:
                self.lies_lost += 1
            return
        length = self.rng.choice([len(old), len(new)])
        result = bytearray(old[:length].ljust(length, b"\0"))
        kept = lost = 0
        out_of_order = False
        for start in range(0, length, SECTOR):
            end = min(start + SECTOR, length)
            if new[start:end] != result[start:end]:
                if self.rng.random() < 0.5:
                    piece = new[start:end]
                    result[start : start + len(piece)] = piece
                    kept += 1
                    out_of_order = out_of_order or lost > 0
                else:
                    lost += 1
        if length < len(new):  # the file keeps its old length: what was appended is gone
            lost += -(-(len(new) - length) // SECTOR)
        if kept and lost:
            self.torn_files += 1
            self.torn_out_of_order += out_of_order
        self.sectors_lost += lost
        node.data = result
        node.durable = bytes(result)
        if lied is not None and lied != node.durable:
            self.lies_lost += 1

    def flip_bit(self, path: Path, offset: int | None = None) -> int:
        """Damage a file at rest: flip one bit (at `offset`, else in a random byte) of what it
        holds and of what survives a crash. Returns the offset."""
        node = self._lookup(path)
        assert isinstance(node, _Inode) and node.data
        if offset is None:
            offset = self.rng.randrange(len(node.data))
        mask = 1 << self.rng.randrange(8)
        node.data[offset] ^= mask
        if offset < len(node.durable):
            durable = bytearray(node.durable)
            durable[offset] ^= mask
            node.durable = bytes(durable)
        return offset

    def die_after(self, operations: int | None) -> None:
        """Make the process die (PowerLoss is raised) at the start of the `operations`-th
        file operation from now; None: never. Call `crash` afterwards."""
        self._countdown = operations

    def _tick(self) -> None:
        if self._countdown is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = None
                raise PowerLoss("the simulated machine lost power")
