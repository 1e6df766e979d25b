"""Durable hard state (term, vote) and the last known members, in one small checksummed file.

The file ``<directory>/meta`` holds a 16-byte big-endian header and a CBOR payload::

    magic b"CCMT" | version u8 = 1 | 3 zero bytes | length u32 | crc u32 | payload

``crc`` is zlib's CRC-32 over the first 12 header bytes and the payload; the payload is the codec's
encoding of ``[term, vote, members or None]``. A write goes to ``meta.tmp``, is fsynced, renamed
over ``meta``, and the directory is fsynced: a crash leaves the old file or the new one, whole.
Blocking code: DiskStorage calls it from a worker thread.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import attrs

from ..core.raft import HardState
from ..protocol.codec import TypeRegistry
from ..protocol.codec import registry as default_registry
from ..protocol.errors import CopycatError
from ..protocol.messages import Member
from .errors import StorageCorruptionError
from .fs import OS, FileSystem, fsync_directory, write_all

META_MAGIC = b"CCMT"
META_VERSION = 1
_HEAD = struct.Struct(">4sB3xI")
_CRC = struct.Struct(">I")
META_FILE = "meta"


@attrs.frozen
class Meta:
    """What meta stores: the hard state and, once known, the latest configuration's members."""

    hard_state: HardState = attrs.field(factory=HardState)
    members: tuple[Member, ...] | None = None


class MetaStore:
    """Reads and atomically replaces ``<directory>/meta``; every method blocks."""

    def __init__(
        self, directory: Path, *, registry: TypeRegistry = default_registry, fs: FileSystem = OS
    ) -> None:
        self.directory = directory
        self.fs = fs
        self.path = directory / META_FILE
        self.temp_path = directory / (META_FILE + ".tmp")
        self.registry = registry
        self.writes = 0

    def read(self) -> Meta | None:
        """The stored state, or None if none was ever written; a damaged file raises."""
        self.fs.unlink(self.temp_path, missing_ok=True)  # a write that crashed before its rename
        try:
            data = self.fs.read_file(self.path, uncached=True)
        except FileNotFoundError:
            return None
        if len(data) < _HEAD.size + _CRC.size:
            raise self._corrupt(0, f"the file is {len(data)} bytes, shorter than its header")
        magic, version, length = _HEAD.unpack_from(data)
        if magic != META_MAGIC:
            raise self._corrupt(0, "bad magic")
        if version != META_VERSION:
            raise self._corrupt(4, f"unknown version {version}")
        start = _HEAD.size + _CRC.size
        if len(data) != start + length:
            raise self._corrupt(
                8, f"the header says {length} payload bytes, {len(data) - start} follow"
            )
        (crc,) = _CRC.unpack_from(data, _HEAD.size)
        if zlib.crc32(data[start:], zlib.crc32(data[: _HEAD.size])) != crc:
            raise self._corrupt(_HEAD.size, "checksum mismatch")
        try:
            value = self.registry.decode(data[start:])
        except CopycatError as exc:
            raise self._corrupt(start, f"the payload does not decode: {exc}") from exc
        return self._parse(value, start)

    def _parse(self, value: Any, offset: int) -> Meta:
        if not (isinstance(value, list | tuple) and len(value) == 3):
            raise self._corrupt(offset, "the payload is not [term, vote, members]")
        term, vote, members = value
        if type(term) is not int or term < 0 or not (vote is None or type(vote) is int):
            raise self._corrupt(offset, f"bad term {term!r} or vote {vote!r}")
        if members is not None and not (
            isinstance(members, list | tuple) and all(isinstance(m, Member) for m in members)
        ):
            raise self._corrupt(offset, "members are not a list of Member")
        return Meta(HardState(term, vote), None if members is None else tuple(members))

    def write(self, meta: Meta) -> None:
        """Replace the stored state durably: temp file, fsync, rename, fsync the directory."""
        members = None if meta.members is None else list(meta.members)
        payload = self.registry.encode([meta.hard_state.term, meta.hard_state.vote, members])
        head = _HEAD.pack(META_MAGIC, META_VERSION, len(payload))
        data = head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload
        fd = self.fs.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(self.fs, fd, data)
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)
        self.fs.replace(self.temp_path, self.path)
        fsync_directory(self.fs, self.directory)
        self.writes += 1

    def _corrupt(self, offset: int, problem: str) -> StorageCorruptionError:
        return StorageCorruptionError(
            f"metadata file {self.path} is corrupt at byte offset {offset}: {problem}. The server "
            "refuses to start rather than forget its term and vote (it could vote twice and let "
            "two leaders be elected); restore the directory from a backup or remove it and re-add "
            "the member."
        )
