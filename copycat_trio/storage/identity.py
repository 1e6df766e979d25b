"""Which cluster and which member a data directory belongs to, in a small file next to the log.

``<directory>/identity`` is two text lines, ``cluster = <id>`` and ``member = <id>``, written at
bootstrap or join (to a temporary file, fsynced, renamed, the directory fsynced) and checked at
every start: a server refuses a directory of another member, or of another cluster when it is
told which cluster it belongs to. A cluster id of "" means not known yet (a member still
joining, or a directory written before identities existed). Blocking code: call it from a
worker thread (fs.run_blocking), through the storage's FileSystem (simulations give theirs).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import attrs

from .errors import StorageCorruptionError
from .fs import OS, FileSystem, fsync_directory, write_all

IDENTITY_FILE = "identity"


@attrs.frozen
class Identity:
    """A data directory's cluster id ("" if not known yet) and member id."""

    cluster_id: str
    member_id: int


def new_cluster_id() -> str:
    """A random cluster id, made once by bootstrap."""
    return secrets.token_hex(8)


def read_identity(directory: Path, fs: FileSystem = OS) -> Identity | None:
    """The identity stored in `directory`, or None if it has none (new, or from before)."""
    path = directory / IDENTITY_FILE
    try:
        text = fs.read_file(path).decode(errors="replace")
    except FileNotFoundError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    member = fields.get("member", "")
    if "cluster" not in fields or not member.isdigit():
        raise StorageCorruptionError(f"{path}: not an identity file (cluster = ..., member = N)")
    return Identity(fields["cluster"], int(member))


def write_identity(directory: Path, identity: Identity, fs: FileSystem = OS) -> None:
    """Store `identity` durably: a crash leaves the old file or the new one."""
    path = directory / IDENTITY_FILE
    temporary = directory / (IDENTITY_FILE + ".tmp")
    data = f"cluster = {identity.cluster_id}\nmember = {identity.member_id}\n".encode()
    fd = fs.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fs, fd, data)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.replace(temporary, path)
    fsync_directory(fs, directory)


def identity_refusal(
    found: Identity, directory: Path, member_id: int, cluster_id: str | None
) -> str | None:
    """Why a server that is member `member_id` (of cluster `cluster_id`, if it was told) must
    not start on `directory` holding `found`; None if it may."""
    cluster = found.cluster_id or "(not known yet)"
    if found.member_id != member_id:
        return (
            f"data directory {directory} belongs to member {found.member_id} of cluster "
            f"{cluster}, not to member {member_id}: refusing to start on another member's data"
        )
    if cluster_id and found.cluster_id and found.cluster_id != cluster_id:
        return (
            f"data directory {directory} belongs to cluster {found.cluster_id}, not to cluster "
            f"{cluster_id}: refusing to start on another cluster's data"
        )
    return None
