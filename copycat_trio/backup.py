"""Backups: a consistent snapshot fetched from the leader into one file, and a new cluster's
data directory made from it (`copycat-trio snapshot save` and `snapshot restore`, like
etcdctl's).

The file is a line naming the format, a CBOR header (index, term, data size, CRC-32 of the
data) and the snapshot's data exactly as the leader's snapshot store holds it (its first frame
names the configuration in force; the rest are sessions, timers and the state machine's own
bytes). A restore checks the checksum, replaces the configuration with the new cluster's
members, and writes the snapshot and a term into an empty data directory: every member of the
new cluster is restored from the same file, then started with `serve` as usual.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import cbor2

from .core.raft import HardState
from .protocol.codec import registry
from .protocol.messages import Member
from .storage.disk import DiskStorage
from .storage.errors import StorageCorruptionError

__all__ = ["BACKUP_MAGIC", "BackupHeader", "read_backup", "restore_backup", "write_backup"]

BACKUP_MAGIC = b"copycat-trio backup 1\n"
_LENGTH = struct.Struct(">I")


@attrs.frozen
class BackupHeader:
    index: int
    """The last log index the snapshot covers."""
    term: int
    size: int
    crc: int
    """CRC-32 of the data, as the leader's snapshot store computed it."""


def write_backup(path: Path, header: BackupHeader, data: bytes) -> None:
    """Write the backup file (to a temporary name, fsynced, then renamed into place)."""
    if zlib.crc32(data) != header.crc or len(data) != header.size:
        raise StorageCorruptionError("the snapshot received does not match its checksum")
    head = cbor2.dumps(attrs.asdict(header))
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as out:
        out.write(BACKUP_MAGIC + _LENGTH.pack(len(head)) + head + data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def read_backup(path: Path) -> tuple[BackupHeader, bytes]:
    """The header and data of a backup file, checked; StorageCorruptionError if damaged."""
    blob = path.read_bytes()
    if not blob.startswith(BACKUP_MAGIC):
        raise StorageCorruptionError(f"{path} is not a copycat-trio backup")
    rest = blob[len(BACKUP_MAGIC) :]
    try:
        (length,) = _LENGTH.unpack_from(rest)
        fields = cbor2.loads(rest[_LENGTH.size : _LENGTH.size + length])
        header = BackupHeader(**fields)
    except (struct.error, cbor2.CBORError, TypeError, ValueError) as exc:
        raise StorageCorruptionError(f"{path}: the backup's header is damaged: {exc}") from None
    data = rest[_LENGTH.size + length :]
    if len(data) != header.size or zlib.crc32(data) != header.crc:
        raise StorageCorruptionError(f"{path}: the snapshot data does not match its checksum")
    return header, data


def with_members(data: bytes, members: Sequence[Member]) -> bytes:
    """The snapshot data with its configuration replaced by `members`."""
    (length,) = _LENGTH.unpack_from(data)
    head: Any = registry.decode(data[_LENGTH.size : _LENGTH.size + length])
    if not isinstance(head, dict) or "members" not in head:
        raise StorageCorruptionError("the snapshot does not start with its header")
    head = {**head, "members": list(members)}
    encoded = registry.encode(head)
    return _LENGTH.pack(len(encoded)) + encoded + data[_LENGTH.size + length :]


async def restore_backup(path: Path, directory: Path, members: Sequence[Member]) -> BackupHeader:
    """Make `directory` (absent or empty) the data directory of a member of a new cluster of
    `members`, holding the backup's state; returns the backup's header."""
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty: restore needs a new data directory")
    header, data = read_backup(path)
    data = with_members(data, members)
    storage = DiskStorage(directory)
    try:
        await storage.load()
        assert storage.snapshots is not None
        async with storage.snapshots.create(header.index, header.term) as writer:
            await writer.write(data)
        # The new cluster's terms go on from the snapshot's: a log's terms never go down.
        await storage.save(hard_state=HardState(term=header.term), truncate_from=None, entries=())
    finally:
        await storage.aclose()
    return header
