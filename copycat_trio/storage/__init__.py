"""Durable storage of the log, hard state and snapshots (DISK), or none of it (MEMORY)."""

from .base import LogStorage as LogStorage
from .base import StoredState as StoredState
from .disk import DiskStorage as DiskStorage
from .disk import Storage as Storage
from .disk import StorageLevel as StorageLevel
from .disk import StorageStatistics as StorageStatistics
from .errors import StorageCorruptionError as StorageCorruptionError
from .errors import StorageError as StorageError
from .errors import StorageFailedError as StorageFailedError
from .errors import StorageLockedError as StorageLockedError
from .memory import MemoryStorage as MemoryStorage
from .meta import Meta as Meta
from .meta import MetaStore as MetaStore
from .snapshots import SnapshotInfo as SnapshotInfo
from .snapshots import SnapshotReader as SnapshotReader
from .snapshots import SnapshotStore as SnapshotStore
from .snapshots import SnapshotWriter as SnapshotWriter
