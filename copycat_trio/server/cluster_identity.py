"""Which cluster a member belongs to: the identity file in its data directory, the id it
makes at bootstrap or adopts from its peers, and the refusal of peers of another cluster."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from ..protocol.errors import ConfigurationError
from ..protocol.messages import Member
from ..storage.base import InDirectory, LogStorage, OnFileSystem
from ..storage.fs import OS, FileSystem, run_blocking
from ..storage.identity import (
    Identity,
    identity_refusal,
    new_cluster_id,
    read_identity,
    write_identity,
)
from ..transport.base import MessageStream, Transport
from ..transport.tcp import TcpTransport

log = logging.getLogger(__name__)


class ClusterIdentity:
    """One member's cluster id and how it came by it."""

    def __init__(
        self, member_id: int, storage: LogStorage, transport: Transport, expected: str | None
    ) -> None:
        self.member_id = member_id
        self.storage = storage
        self.transport = transport
        self.expected = expected
        """The cluster this member must belong to (None: whichever its directory says)."""
        self.cluster_id = ""
        """This member's cluster id once started ("" while joining, or on data from before
        cluster ids until a peer tells it)."""
        self.foreign_peers: set[tuple[str, str]] = set()
        """(host, cluster id) of peers of another cluster already logged."""
        self.on_adopted: Callable[[], None] | None = None
        """Called once an id is adopted from a peer (the server reconnects its peer links)."""

    async def load(self, has_data: bool, join: list[str] | None, members: Sequence[Member]) -> None:
        """Check the data directory's identity file, or write one. At bootstrap only the
        member with the lowest id makes the cluster id (two makers would split the cluster);
        the others, a joining member, and a directory from before identity files (kept
        working) record "" and adopt the id from the first member of their configuration
        that sends them Raft messages (or from the join answer). With memory storage nobody
        makes one: a restarted member would make another."""
        directory, fs = self.data_directory()
        expected = self.expected
        found = await run_blocking(fs, read_identity, directory, fs) if directory else None
        if found is not None:
            assert directory is not None
            refusal = identity_refusal(found, directory, self.member_id, expected)
            if refusal is not None:
                raise ConfigurationError(refusal)
            cluster = found.cluster_id or (expected or "")
        elif expected:
            cluster = expected
        elif (
            join is None
            and not has_data
            and directory is not None
            and self.member_id == min(m.id for m in members)
        ):
            cluster = new_cluster_id()
            log.info("member %s: new cluster %s", self.member_id, cluster)
        else:
            cluster = ""
            if has_data and directory is not None:
                log.info(
                    "member %s: data directory %s has no identity file (written before cluster"
                    " ids); recording member %s, the cluster id comes from the leader",
                    self.member_id,
                    directory,
                    self.member_id,
                )
        self.set(cluster)
        if directory is not None and found != Identity(cluster, self.member_id):
            await run_blocking(fs, write_identity, directory, Identity(cluster, self.member_id), fs)

    def data_directory(self) -> tuple[Path | None, FileSystem]:
        """The storage's directory and file system (None: storage without one, in memory)."""
        if not isinstance(self.storage, InDirectory):
            return None, OS
        fs = self.storage.fs if isinstance(self.storage, OnFileSystem) else OS
        return self.storage.directory, fs

    def set(self, cluster_id: str) -> None:
        """Take `cluster_id` as this member's (and say so in every new connection's Hello)."""
        self.cluster_id = cluster_id
        if isinstance(self.transport, TcpTransport):  # the Hello of every new connection
            self.transport.version = attrs.evolve(self.transport.version, cluster=cluster_id)

    async def adopt(self, cluster_id: str, source: str) -> None:
        """A member that does not know its cluster's id yet takes the one `source` gave."""
        if self.cluster_id or not cluster_id:
            return
        self.set(cluster_id)
        log.info("member %s: adopted cluster id %s from %s", self.member_id, cluster_id, source)
        if self.on_adopted is not None:  # so the peers learn it from us too
            self.on_adopted()
        directory, fs = self.data_directory()
        if directory is not None:
            await run_blocking(
                fs, write_identity, directory, Identity(cluster_id, self.member_id), fs
            )

    def foreign(self, stream: MessageStream) -> str | None:
        """Why a connection's peer is refused: its Hello names another cluster."""
        hello = getattr(stream, "peer_version", None)
        theirs = getattr(hello, "cluster", "")
        if not theirs or not self.cluster_id or theirs == self.cluster_id:
            return None
        reason = (
            f"{stream.peer} is of cluster {theirs}, member {self.member_id} of cluster "
            f"{self.cluster_id}"
        )
        key = (stream.peer.rpartition(":")[0], theirs)
        if key not in self.foreign_peers:  # once per peer: it keeps reconnecting
            self.foreign_peers.add(key)
            log.warning("refusing connection: %s", reason)
        return reason
