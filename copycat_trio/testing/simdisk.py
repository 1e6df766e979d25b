"""A simulated disk for one member: it keeps exactly what was durably saved, across crashes.

`SimDisk` is a `LogStorage` (and, through `snapshots`, a snapshot store) that lives outside the
server, so a member crashed with `MemoryCluster.crash` and started again finds what it had saved.
Each save takes a little virtual time; a crash (the server's cancel scope) that lands in the
middle of one keeps a prefix of it chosen by the seeded rng: the truncation, then some of the
entries, then the hard state, in the order the DISK storage writes them. A save that returned
is durable. `stall(seconds)` makes saves slow for a while (a disk that hangs).

It refuses what DiskStorage refuses, so that a simulation fails where a real disk would: a save
that would leave a gap, an overlap or a decreasing term (storage.base.check_save), an entry that
does not encode or is too big for a record; and it keeps each entry as the codec reads it back.

Nothing here runs in a thread or reads a real clock, so a simulation on a MockClock stays
deterministic.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import cast

import attrs
import trio

from ..core.raft import HardState
from ..protocol.codec import TypeRegistry
from ..protocol.codec import registry as default_registry
from ..protocol.messages import ENTRY_TYPES, Entry
from ..storage.base import StoredState
from ..storage.disk import DiskStorage, encode_entry
from ..storage.errors import StorageError
from ..storage.memory import MemoryStorage
from ..storage.segments import HEADER_SIZE, MAGIC
from ..storage.snapshots import SnapshotInfo, SnapshotReader, SnapshotStore, SnapshotWriter
from .simfs import SECTOR, PowerLoss, SimFileSystem

__all__ = ["DiskStatistics", "FsDisk", "SimDisk", "SimSnapshotStore"]


@attrs.define
class DiskStatistics:
    saves: int = 0
    torn_saves: int = 0
    """Saves cut short by a crash (a prefix of each was kept)."""
    snapshots: int = 0
    torn_snapshots: int = 0
    """Snapshot writes cut short by a crash (none of each was kept)."""


class SimDisk(MemoryStorage):
    """One member's durable log, hard state and snapshots, in memory; survives `crash`.
    Memory storage whose saves take time and can be torn."""

    def __init__(
        self,
        name: str,
        rng: random.Random,
        *,
        latency: float = 0.001,
        snapshots: bool = True,
        keep_snapshots: int = 2,
        registry: TypeRegistry = default_registry,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.name = name
        self.rng = rng
        self.latency = latency
        """Longest time a save takes (each draws uniformly up to it)."""
        self.snapshots: SimSnapshotStore | None = (
            SimSnapshotStore(name, self, keep=keep_snapshots) if snapshots else None
        )
        self.stats = DiskStatistics()
        self._stalled_until = 0.0
        self.on_torn: Callable[[str], None] | None = None
        """Told (with a description) whenever a crash tears a write: for the trace."""
        self.crash_on_next_save: Callable[[], None] | None = None
        """Called (once) when the next non-empty save starts: a simulation crashes the server
        there, so that the save is torn."""

    # --- LogStorage (what MemoryStorage does not already do) ---------------------------------

    def stall(self, seconds: float) -> None:
        """Make every save started in the next `seconds` wait until then (a hung disk)."""
        self._stalled_until = max(self._stalled_until, trio.current_time() + seconds)

    def unstall(self) -> None:
        self._stalled_until = 0.0

    async def _write_time(self) -> None:
        delay = self.rng.uniform(0, self.latency) if self.latency else 0.0
        delay = max(delay, self._stalled_until - trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()

    async def save(
        self,
        *,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        self.check_save(truncate_from, entries)
        steps: list[tuple[str, object]] = []
        if truncate_from is not None:
            steps.append(("truncate", truncate_from))
        steps.extend(("append", self._through_codec(entry)) for entry in entries)
        if hard_state is not None:
            steps.append(("hard state", hard_state))
        hook, self.crash_on_next_save = self.crash_on_next_save, None
        if hook is not None and steps:
            hook()
        elif hook is not None:
            self.crash_on_next_save = hook
        try:
            await self._write_time()
        except trio.Cancelled:
            kept = self.rng.randint(0, len(steps))
            self._apply(steps[:kept])
            self.stats.torn_saves += 1
            if self.on_torn is not None and steps:
                self.on_torn(f"{self.name}: save torn, kept {kept} of {len(steps)} steps")
            raise
        self._apply(steps)
        self.stats.saves += 1

    def _through_codec(self, entry: Entry) -> Entry:
        """The entry as a restart on DiskStorage would read it back: encoded (refused if too
        big or not encodable, as the disk refuses it) and decoded again."""
        value = self.registry.decode(encode_entry(self.registry, entry))
        decoded = cast(Entry, value)
        if not isinstance(value, ENTRY_TYPES) or (decoded.term, decoded.index) != (
            entry.term,
            entry.index,
        ):
            raise StorageError(f"{self.name}: entry {entry!r} decodes as {value!r}")
        return decoded

    def _apply(self, steps: list[tuple[str, object]]) -> None:
        for kind, value in steps:
            if kind == "truncate":
                assert isinstance(value, int)
                self.truncate(value)
            elif kind == "append":
                self.entries.append(value)  # type: ignore[arg-type]
            else:
                assert isinstance(value, HardState)
                self.hard_state = value

    async def compact_before(self, index: int) -> int:
        """Forget entries before `index` (a durable snapshot covers them); returns how many."""
        await trio.lowlevel.checkpoint()
        dropped = 0
        while self.entries and self.entries[0].index < index:
            self.entries.pop(0)
            dropped += 1
        return dropped


class _Writer(SnapshotWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(-1, path)
        self.buffer = bytearray()
        self.open = True

    async def write(self, data: bytes) -> None:
        if not self.open:
            raise StorageError(f"snapshot {self.path} is no longer open for writing")
        await trio.lowlevel.checkpoint()
        self.buffer += data
        self.bytes_written += len(data)


class _Reader(SnapshotReader):
    def __init__(self, info: SnapshotInfo, data: bytes) -> None:
        super().__init__(-1, info, 0)
        self._data = data

    async def read(self, max_bytes: int = 1 << 20) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        await trio.lowlevel.checkpoint()
        chunk = self._data[self._position : self._position + max_bytes]
        self._position += len(chunk)
        return chunk


class SimSnapshotStore(SnapshotStore):
    """Snapshots in memory, committed atomically when a write's block ends (a crash before
    then keeps nothing). It is a SnapshotStore so that servers accept it; `inline_snapshots`
    tells them to run snapshot code on the Trio thread rather than in a worker thread."""

    inline_snapshots = True

    def __init__(self, name: str, disk: SimDisk, *, keep: int = 2) -> None:
        # Deliberately not SnapshotStore.__init__: there is no directory.
        self.keep = keep
        self.disk = disk
        self.directory = Path(f"/sim/{name}/snapshots")
        self._files: dict[tuple[int, int], bytes] = {}

    def _describe(self, index: int, term: int) -> SnapshotInfo:
        path = self.directory / f"{index:020d}-{term:020d}.snapshot"
        return SnapshotInfo(index, term, path, len(self._files[index, term]))

    async def list_all(self) -> list[SnapshotInfo]:
        await trio.lowlevel.checkpoint()
        return [self._describe(i, t) for i, t in sorted(self._files)]

    async def latest(self) -> SnapshotInfo | None:
        await trio.lowlevel.checkpoint()
        if not self._files:
            return None
        index, term = max(self._files)
        return self._describe(index, term)

    def create(self, index: int, term: int) -> AbstractAsyncContextManager[SnapshotWriter]:
        if type(index) is not int or type(term) is not int or index < 0 or term < 0:
            raise ValueError(
                f"index and term must be non-negative integers, not {index!r}, {term!r}"
            )
        return self._create_in_memory(index, term)

    @asynccontextmanager
    async def _create_in_memory(self, index: int, term: int) -> AsyncIterator[SnapshotWriter]:
        writer = _Writer(self.directory / f"{index:020d}-{term:020d}.snapshot.tmp")
        try:
            yield writer
            await self.disk._write_time()  # a crash now loses the whole snapshot
        except BaseException:
            writer.open = False
            self.disk.stats.torn_snapshots += 1
            if self.disk.on_torn is not None:
                self.disk.on_torn(f"{self.disk.name}: snapshot {index} write lost")
            raise
        writer.open = False
        self._files[index, term] = bytes(writer.buffer)
        writer.info = self._describe(index, term)
        self.disk.stats.snapshots += 1
        for key in sorted(self._files)[: max(0, len(self._files) - self.keep)]:
            del self._files[key]

    def open(self, info: SnapshotInfo) -> AbstractAsyncContextManager[SnapshotReader]:
        return self._open_in_memory(info)

    @asynccontextmanager
    async def _open_in_memory(self, info: SnapshotInfo) -> AsyncIterator[SnapshotReader]:
        data = self._files.get((info.index, info.term))
        if data is None:
            raise StorageError(f"snapshot {info.index}-{info.term} is gone (pruned)")
        await trio.lowlevel.checkpoint()
        yield _Reader(info, data)


class FsDisk:
    """One member's disk as the real DiskStorage on a SimFileSystem that outlives the server:
    the real file format, fsync order and recovery, under a MockClock. A drop-in for SimDisk as
    a MemoryCluster storage (same stall, stats, on_torn and crash_on_next_save).

    Every start is a power cycle of the member's machine: `load` first crashes the file system
    (unsynced writes are torn, unsynced directory changes may be lost), then opens a new
    DiskStorage on it. A crash in the middle of a save (the server's scope cancelled while the
    save waits for the disk) lets the save run until a random file operation, where the power
    goes. Beyond the storage's model, `flip_on_load` damages a valid record or the meta file at
    a start (which must then refuse to start), and the file system's `fsync_lies` fake fsyncs.
    """

    def __init__(
        self,
        name: str,
        rng: random.Random,
        *,
        latency: float = 0.001,
        keep_snapshots: int = 2,
        fs: SimFileSystem | None = None,
        segment_size: int = 1 << 16,
        entries_per_segment: int = 64,
    ) -> None:
        self.name = name
        self.rng = rng
        self.latency = latency
        self.fs = fs if fs is not None else SimFileSystem(random.Random(rng.random()))
        self.directory = Path(f"/sim/{name}")
        self.keep_snapshots = keep_snapshots
        self.segment_size = segment_size
        self.entries_per_segment = entries_per_segment
        """Small files by default, so that runs roll, truncate and compact across files."""
        self.stats = DiskStatistics()
        self.on_torn: Callable[[str], None] | None = None
        self.crash_on_next_save: Callable[[], None] | None = None
        self.tearing_crashes = False
        """Whether `crash_on_next_save` waits for a save whose records span two or more
        sectors (a crash there can tear it out of order), rather than any save."""
        self.flip_on_load = 0.0
        """The probability that a power cycle also flips a bit at rest in a complete, valid
        log record or the meta file (damage beyond the storage's model: see `flip_at_rest`)."""
        self.on_flip: Callable[[str], None] | None = None
        """Told (with a description) of each bit flipped at rest: for the trace."""
        self.flips = 0
        self.undetected_flips: list[str] = []
        """Flips a start did not refuse (the storage missed damage it must detect)."""
        self._storage: DiskStorage | None = None
        self._stalled_until = 0.0

    @property
    def storage(self) -> DiskStorage:
        if self._storage is None:
            raise StorageError(f"{self.name}: load() first")
        return self._storage

    @property
    def snapshots(self) -> SnapshotStore | None:
        """The current DiskStorage's snapshot store (servers look for it after `load`)."""
        return None if self._storage is None else self._storage.snapshots

    @property
    def first_index(self) -> int:
        return self.storage.first_index

    @property
    def last_index(self) -> int:
        return self.storage.last_index

    def stall(self, seconds: float) -> None:
        """Make every save started in the next `seconds` wait until then (a hung disk)."""
        self._stalled_until = max(self._stalled_until, trio.current_time() + seconds)

    def unstall(self) -> None:
        self._stalled_until = 0.0

    async def load(self) -> StoredState:
        self.power_cycle()
        flipped = None
        if self.flip_on_load and self.rng.random() < self.flip_on_load:
            flipped = self.flip_at_rest()
        self._storage = self._open()
        state = await self._storage.load()
        if flipped is not None:
            self.undetected_flips.append(flipped)
        return state

    def _open(self) -> DiskStorage:
        return DiskStorage(
            self.directory,
            fs=self.fs,
            snapshots_to_keep=self.keep_snapshots,
            segment_size=self.segment_size,
            entries_per_segment=self.entries_per_segment,
        )

    def power_cycle(self) -> None:
        """Lose power and boot: the file system keeps what it keeps (simfs), and what a crash
        tore or undid is told to `on_torn`."""
        fs = self.fs
        before = (fs.torn_files, fs.sectors_lost, fs.names_lost, fs.lies_lost)
        fs.crash()
        torn, sectors, names, lies = (
            fs.torn_files - before[0],
            fs.sectors_lost - before[1],
            fs.names_lost - before[2],
            fs.lies_lost - before[3],
        )
        if (torn or sectors or names or lies) and self.on_torn is not None:
            parts = [f"{torn} file(s) torn", f"{sectors} unsynced sector(s) lost"]
            parts.append(f"{names} unsynced name change(s) undone")
            if lies:
                parts.append(f"{lies} lying fsync(s) exposed")
            self.on_torn(f"{self.name}: power cycle: " + ", ".join(parts))

    async def peek(self) -> tuple[list[Entry], bool]:
        """Power-cycle the stopped member's disk and read it as a start would: its entries and
        whether it holds a snapshot (a simulation decides from them how the member restarts).
        Raises what a start would raise on it."""
        self.power_cycle()
        storage = self._open()
        try:
            state = await storage.load()
            has_snapshot = await storage.snapshots.latest() is not None
        finally:
            await storage.aclose()
        return list(state.entries), has_snapshot

    def flip_at_rest(self) -> str | None:
        """Flip one bit of a complete log record whose checksum holds (anywhere but its length
        field, whose damage recovery may take for a torn tail: segments.py), or of the meta
        file: damage at rest that a start must detect (a checksum fails; the member refuses to
        start). Returns a description (None if there is nothing to damage)."""
        targets: list[tuple[Path, int, int]] = []
        log_dir = self.directory / "log"
        if self.fs.is_dir(log_dir):
            for name in self.fs.listdir(log_dir):
                if name.endswith(".log"):
                    path = log_dir / name
                    targets.extend((path, a, b) for a, b in _valid_records(self.fs.read_file(path)))
        meta = self.directory / "meta"
        if self.fs.is_dir(self.directory) and "meta" in self.fs.listdir(self.directory):
            size = self.fs.size(meta)
            if size:
                targets.append((meta, 0, size))
        if not targets:
            return None
        path, start, end = self.rng.choice(targets)
        offset = self.fs.flip_bit(path, self.rng.randrange(start, end))
        self.flips += 1
        text = f"{self.name}: bit flipped at rest in {path} at byte {offset}"
        if self.on_flip is not None:
            self.on_flip(text)
        return text

    async def save(
        self,
        *,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        storage = self.storage
        hook, self.crash_on_next_save = self.crash_on_next_save, None
        wanted = hard_state is not None or truncate_from is not None or bool(entries)
        if self.tearing_crashes:
            wanted = self._spans_sectors(entries)
        if hook is not None and wanted:
            hook()
        elif hook is not None:
            self.crash_on_next_save = hook
        delay = self.rng.uniform(0, self.latency) if self.latency else 0.0
        delay = max(delay, self._stalled_until - trio.current_time())
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            # Most saves are a write and its fsync: the power goes before the fsync as often
            # as anywhere else, so that unsynced sectors are there to be torn.
            operations = self.rng.choice((1, 2, 2, 2, 2, 3, 4, 6))
            self.fs.die_after(operations)
            try:
                with trio.CancelScope(shield=True):
                    await storage.save(
                        hard_state=hard_state, truncate_from=truncate_from, entries=entries
                    )
            except PowerLoss:
                self.stats.torn_saves += 1
                if self.on_torn is not None:
                    self.on_torn(
                        f"{self.name}: power lost in a save, at file operation {operations}"
                    )
            finally:
                self.fs.die_after(None)
            self._storage = None  # the process is gone; the next load power-cycles the disk
            raise
        await storage.save(hard_state=hard_state, truncate_from=truncate_from, entries=entries)
        self.stats.saves += 1

    def _spans_sectors(self, entries: Sequence[Entry]) -> bool:
        """Whether appending `entries` to the last log file likely crosses a sector boundary."""
        if not entries:
            return False
        size = sum(HEADER_SIZE + len(encode_entry(default_registry, e)) for e in entries)
        log_dir = self.directory / "log"
        names = [n for n in self.fs.listdir(log_dir) if n.endswith(".log")]
        offset = self.fs.size(log_dir / max(names)) if names else 0
        return offset // SECTOR != (offset + size - 1) // SECTOR

    async def compact_before(self, index: int) -> int:
        return await self.storage.compact_before(index)

    def term_at(self, index: int) -> int | None:
        return self.storage.term_at(index)

    async def aclose(self) -> None:
        if self._storage is not None:
            await self._storage.aclose()
        else:
            await trio.lowlevel.checkpoint()


def _valid_records(data: bytes) -> list[tuple[int, int]]:
    """The (start, end) byte ranges a flip may hit in each complete record of a segment whose
    checksum holds: all of it but the length field (bytes 4 to 8)."""
    ranges = []
    position = 0
    while position + HEADER_SIZE <= len(data):
        length = int.from_bytes(data[position + 4 : position + 8], "big")
        end = position + HEADER_SIZE + length
        if data[position : position + 2] != MAGIC or end > len(data):
            break
        crc = int.from_bytes(data[position + HEADER_SIZE - 4 : position + HEADER_SIZE], "big")
        covered = data[position : position + HEADER_SIZE - 4] + data[position + HEADER_SIZE : end]
        if zlib.crc32(covered) != crc:
            break
        ranges += [(position, position + 4), (position + 8, end)]
        position = end
    return ranges
