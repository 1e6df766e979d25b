"""DISK storage: the log in segment files, term and vote in a meta file, snapshots beside them.

Directory layout::

    <directory>/LOCK         flock'd while a DiskStorage is open (holds the owner's pid)
    <directory>/meta         hard state (meta.py); written before the log's first entry, so
                             a log without it means a lost file, and load refuses it
    <directory>/log/         segment files (segments.py)
    <directory>/snapshots/   snapshot files (snapshots.py)

`save` returns only once everything it was given is on stable storage: PySyncObj kept term and
vote in memory and wrote its journal without fsync, and lost committed data when a whole cluster
restarted. Blocking file work runs in `trio.to_thread.run_sync`, shielded from cancellation (inline
on a simulated file system, see fs.py).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

import attrs
import trio

from ..core.raft import HardState
from ..protocol.codec import TypeRegistry
from ..protocol.codec import registry as default_registry
from ..protocol.errors import ConfigurationError, CopycatError
from ..protocol.messages import ENTRY_TYPES, Entry
from .base import LogStorage, StoredState, check_save
from .errors import StorageCorruptionError, StorageError, StorageFailedError, StorageLockedError
from .fs import OS, FileSystem, LockHeld, make_directory, run_blocking
from .memory import MemoryStorage
from .meta import Meta, MetaStore
from .segments import MAX_PAYLOAD, RawRecord, SegmentedLog
from .snapshots import SnapshotStore

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE = 32 * 1024 * 1024
DEFAULT_ENTRIES_PER_SEGMENT = 1 << 20
DEFAULT_SNAPSHOTS_TO_KEEP = 2
LOCK_FILE = "LOCK"


class StorageLevel(enum.Enum):
    """Where a server keeps its log and hard state."""

    MEMORY = "memory"
    """Nothing survives the process; a restarted server is a new member."""
    DISK = "disk"
    """Files in a directory, fsynced before `save` returns."""


@attrs.frozen
class StorageStatistics:
    """A DiskStorage's counters, for monitoring and benchmarks."""

    first_index: int
    """First index in the log (0 if empty)."""
    last_index: int
    """Last index in the log (0 if empty)."""
    segments: int
    """Segment files."""
    log_bytes: int
    """Bytes in segment files."""
    saves: int
    """Calls to save that wrote something."""
    log_fsyncs: int
    """fsyncs of segment files and the log directory."""
    meta_writes: int
    """Hard-state writes (each a temp file fsync, a rename and a directory fsync)."""


def _check_positive(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value


def Storage(
    directory: str | os.PathLike[str] | None = None,
    level: StorageLevel = StorageLevel.DISK,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    entries_per_segment: int = DEFAULT_ENTRIES_PER_SEGMENT,
    snapshots_to_keep: int = DEFAULT_SNAPSHOTS_TO_KEEP,
) -> LogStorage:
    """Storage at a level: MemoryStorage, or a DiskStorage on `directory` (which DISK requires)."""
    if not isinstance(level, StorageLevel):
        raise ConfigurationError(f"storage level must be a StorageLevel, not {level!r}")
    _check_positive("segment_size", segment_size)
    _check_positive("entries_per_segment", entries_per_segment)
    _check_positive("snapshots_to_keep", snapshots_to_keep)
    if level is StorageLevel.MEMORY:
        if directory is not None:
            msg = "MEMORY storage keeps nothing on disk and takes no directory; use DISK to keep"
            raise ConfigurationError(f"{msg} state in {os.fspath(directory)!r}")
        return MemoryStorage()
    if directory is None:
        raise ConfigurationError(
            "DISK storage needs a directory for its files: Storage(directory=...), or "
            "StorageLevel.MEMORY for a server whose state does not survive a restart"
        )
    return DiskStorage(
        directory,
        segment_size=segment_size,
        entries_per_segment=entries_per_segment,
        snapshots_to_keep=snapshots_to_keep,
    )


def encode_entry(registry: TypeRegistry, entry: Entry) -> bytes:
    """An entry's record payload; ValueError if it is too big for a record."""
    payload = registry.encode(entry)
    if len(payload) > MAX_PAYLOAD:
        msg = f"entry {entry.index} encodes to {len(payload)} bytes, over {MAX_PAYLOAD}"
        raise ValueError(msg)
    return payload


def _lock_directory(fs: FileSystem, directory: Path) -> int:
    """Lock ``<directory>/LOCK``; raises StorageLockedError if someone holds it."""
    path = directory / LOCK_FILE
    try:
        return fs.lock(path)
    except LockHeld:
        raise StorageLockedError(
            f"storage directory {directory} is in use: another server holds {path}. Two servers "
            "must never share a directory; stop the other one or give this one its own."
        ) from None


class DiskStorage:
    """LogStorage on files in `directory`; holds the directory's LOCK from construction to aclose.

    Call `load` first (it recovers the log: see segments.py), then `save` per Ready. One `save` is
    one group commit: at most one fsync per file it touches, whatever the batch size.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        entries_per_segment: int = DEFAULT_ENTRIES_PER_SEGMENT,
        snapshots_to_keep: int = DEFAULT_SNAPSHOTS_TO_KEEP,
        registry: TypeRegistry = default_registry,
        fs: FileSystem = OS,
    ) -> None:
        """`fs` is the file system to work on: the real one, or a simulated one in tests."""
        self.fs = fs
        self.segment_size = _check_positive("segment_size", segment_size)
        self.entries_per_segment = _check_positive("entries_per_segment", entries_per_segment)
        _check_positive("snapshots_to_keep", snapshots_to_keep)
        if not os.fspath(directory):
            raise ConfigurationError("the storage directory must not be an empty path")
        self.directory = Path(directory)
        try:
            make_directory(fs, self.directory)
        except (FileExistsError, NotADirectoryError):
            raise ConfigurationError(
                f"storage directory {self.directory} is not a directory"
            ) from None
        self._lock_fd = _lock_directory(fs, self.directory)
        try:
            make_directory(fs, self.directory / "log")
            self.snapshots = SnapshotStore(self.directory, keep=snapshots_to_keep, fs=fs)
            """Snapshot files of this member (same directory, same lock)."""
        except BaseException:
            fs.unlock(self._lock_fd)
            raise
        self._registry = registry
        self._log = SegmentedLog(
            self.directory / "log",
            segment_size=segment_size,
            entries_per_segment=entries_per_segment,
            fs=fs,
        )
        self._meta_store = MetaStore(self.directory, registry=registry, fs=fs)
        self._meta: Meta | None = None
        """What the meta file holds, once loaded."""
        self._meta_on_disk = False
        """Whether the meta file exists: it is written before the log's first entry."""
        self._mutex = trio.Lock()
        self._closed = False
        self._failure: BaseException | None = None
        self._saves = 0

    # --- LogStorage -------------------------------------------------------------------------

    async def load(self) -> StoredState:
        """Recover the log (cutting a torn tail), read the hard state; refuses corrupt data."""
        async with self._mutex:
            self._check_usable()
            with trio.CancelScope(shield=True):
                try:
                    hard_state, entries = await run_blocking(self.fs, self._load_sync)
                except CopycatError:
                    raise
                except Exception as exc:
                    raise self._fail("loading", exc) from exc
            return StoredState(hard_state, tuple(entries))

    def _load_sync(self) -> tuple[HardState, list[Entry]]:
        meta = self._meta_store.read()
        entries = self._log.recover(self._decode)
        if meta is None and entries:
            raise self._meta_lost(entries[0].index, entries[-1].index, entries[-1].term)
        self._meta_on_disk = meta is not None
        self._meta = meta or Meta()
        return self._meta.hard_state, entries

    def _meta_lost(self, first: int, last: int, last_term: int) -> StorageCorruptionError:
        return StorageCorruptionError(
            f"metadata file {self._meta_store.path} is missing, but the log in "
            f"{self.directory / 'log'} holds entries {first} to {last} (the last of term "
            f"{last_term}). A save writes the metadata before the first entry, so the file was "
            "lost, not left unwritten by a crash; it held this member's term and vote, which may "
            "be later than any term in the log. The server refuses to start rather than vote "
            "twice in a term (two leaders could be elected). Remove the directory and add the "
            "member back as a new one; see 'A lost meta file' in docs/durability.md."
        )

    def _decode(self, raw: RawRecord) -> Entry:
        try:
            value = self._registry.decode(raw.payload)
        except CopycatError as exc:
            raise StorageError(
                f"log file {raw.path}: the record at byte offset {raw.offset} (index {raw.index}) "
                f"passes its checksum but does not decode ({exc}); is every operation type "
                "registered before the server starts?"
            ) from exc
        entry = cast(Entry, value)
        if not isinstance(value, ENTRY_TYPES) or (entry.term, entry.index) != (raw.term, raw.index):
            raise StorageCorruptionError(
                f"log file {raw.path} is corrupt at byte offset {raw.offset}: the record header "
                f"says index {raw.index}, term {raw.term}, the payload holds {value!r}. The server "
                "refuses to start rather than risk diverging from its cluster."
            )
        return entry

    async def save(
        self,
        *,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        """Truncate, append, fsync each touched log file once, then write a changed hard state.

        Returns only once all of it is durable. The file work is shielded: a cancelled caller
        still waits for it, so no half-written record is ever believed durable. Entries must
        continue the (truncated) log; an empty log takes any first index. Bad arguments raise
        ValueError before anything is written; an I/O failure raises StorageFailedError and
        poisons the storage.
        """
        async with self._mutex:
            self._check_usable()
            if self._meta is None:
                raise StorageError("load() must be called before save()")
            records = self._records(truncate_from, entries)
            meta = self._meta
            new_meta = None
            if hard_state is not None and hard_state != meta.hard_state:
                new_meta = attrs.evolve(meta, hard_state=hard_state)
            truncates = truncate_from is not None and truncate_from <= self._log.last_index
            if not (records or truncates or new_meta):
                await trio.lowlevel.checkpoint()
                return
            with trio.CancelScope(shield=True):
                try:
                    await run_blocking(self.fs, self._save_sync, truncate_from, records, new_meta)
                except Exception as exc:
                    raise self._fail("saving", exc) from exc
            self._saves += 1

    def _records(
        self, truncate_from: int | None, entries: Sequence[Entry]
    ) -> list[tuple[int, int, bytes]]:
        """Encode entries as (term, index, payload), checking they extend the truncated log."""
        check_save(
            first_index=self._log.first_index,
            last_index=self._log.last_index,
            term_at=self._log.term_at,
            truncate_from=truncate_from,
            entries=entries,
        )
        return [(entry.term, entry.index, encode_entry(self._registry, entry)) for entry in entries]

    def _save_sync(
        self,
        truncate_from: int | None,
        records: list[tuple[int, int, bytes]],
        meta: Meta | None,
    ) -> None:
        if records and not self._meta_on_disk:
            # A log never exists without a meta file beside it, so a missing one is a loss.
            self._write_meta(meta or self._meta or Meta())
            meta = None
        self._log.write(truncate_from=truncate_from, records=records)
        if meta is not None:
            self._write_meta(meta)

    def _write_meta(self, meta: Meta) -> None:
        self._meta_store.write(meta)
        self._meta = meta
        self._meta_on_disk = True

    async def aclose(self) -> None:
        """Close files and release the LOCK; waits for a save in progress. Idempotent."""
        with trio.CancelScope(shield=True):
            async with self._mutex:
                if self._closed:
                    return
                self._closed = True
                await run_blocking(self.fs, self._close_sync)

    def _close_sync(self) -> None:
        try:
            self._log.close()
        finally:
            self.fs.unlock(self._lock_fd)

    async def __aenter__(self) -> DiskStorage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- beyond LogStorage -----------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """The error that poisoned this storage (it then refuses all work), or None."""
        return self._failure

    def observe_fsyncs(self, observer: Callable[[float], None] | None) -> None:
        """Have `observer` told the seconds of each log segment fsync (metrics; called from the
        worker thread that does the fsync, so it must be thread-safe)."""
        self._log.on_fsync = observer

    async def compact_before(self, index: int) -> int:
        """Delete log files whose entries all precede `index` (covered by a snapshot) durably;
        returns how many were deleted. Entries before `index` in a kept file stay."""
        async with self._mutex:
            self._check_usable()
            removed = 0
            with trio.CancelScope(shield=True):
                try:
                    removed = await run_blocking(self.fs, self._log.compact_before, index)
                except Exception as exc:
                    raise self._fail("compacting", exc) from exc
            return removed

    @property
    def first_index(self) -> int:
        """Index of the first entry on disk (0 if the log is empty)."""
        return self._log.first_index

    @property
    def last_index(self) -> int:
        """Index of the last entry on disk (0 if the log is empty)."""
        return self._log.last_index

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, if the log holds it."""
        return self._log.term_at(index)

    def statistics(self) -> StorageStatistics:
        return StorageStatistics(
            first_index=self._log.first_index,
            last_index=self._log.last_index,
            segments=len(self._log.segments),
            log_bytes=self._log.size,
            saves=self._saves,
            log_fsyncs=self._log.fsyncs,
            meta_writes=self._meta_store.writes,
        )

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"storage on {self.directory} is closed")
        if self._failure is not None:
            raise StorageFailedError(
                f"storage on {self.directory} failed earlier ({self._failure}) and refuses further "
                "work; restart the server so it recovers from what is on disk"
            ) from self._failure

    def _fail(self, doing: str, exc: Exception) -> StorageFailedError:
        """Poison the storage: after a failed write or fsync, unsynced state can't be trusted."""
        self._failure = exc
        log.error("storage on %s failed while %s: %s", self.directory, doing, exc)
        return StorageFailedError(
            f"storage on {self.directory} failed while {doing}: {exc}; nothing more will be "
            "written, restart the server so it recovers from what is on disk"
        )
