"""Errors of durable storage. Each one means the server must not go on with this directory as is."""

from __future__ import annotations

from ..protocol.errors import CopycatError, ErrorType


class StorageError(CopycatError):
    """Base of storage failures: the log, hard state or snapshots cannot be trusted or written."""

    error_type = ErrorType.INTERNAL


class StorageCorruptionError(StorageError):
    """Bytes on disk fail their checksum or sequence where a crash cannot explain it.

    The message names the file and byte offset. The server refuses to start rather than diverge.
    """


class StorageLockedError(StorageError):
    """Another storage object (in this or another process) holds the directory's LOCK file."""


class StorageFailedError(StorageError):
    """A write or fsync failed; after a failed fsync nothing unsynced can be trusted, so the
    storage refuses all further work and the server must restart (and recover from disk)."""
