"""The requests about the member itself: status, backup, the leader's configuration push to
a RESERVE member, and snapshot installs (handed to SnapshotReplication)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

from ..core.raft import RaftCore
from ..protocol.errors import CopycatError, ErrorInfo, ErrorType, Status
from ..protocol.messages import (
    BackupRequest,
    BackupResponse,
    ConfigureRequest,
    ConfigureResponse,
    InstallRequest,
    InstallResponse,
    Member,
    MemberType,
    PeerContact,
    StatusRequest,
    StatusResponse,
)
from ..storage.base import InDirectory
from ..storage.snapshots import HEADER_SIZE as SNAPSHOT_HEADER_SIZE
from .executor import Executor
from .loop import RaftLoop
from .membership import configure_response
from .metrics import server_health
from .replication import SnapshotReplication
from .status import MonitoredMember

BACKUP_CHUNK = 1 << 20
"""Bytes of snapshot data per BackupResponse."""


class AdminHandlers:
    """Answers StatusRequest, BackupRequest, ConfigureRequest and InstallRequest for one
    running member."""

    def __init__(
        self,
        member: MonitoredMember,
        loop: RaftLoop,
        executor: Executor,
        replication: SnapshotReplication | None,
        on_configuration: Callable[[int, tuple[Member, ...]], None],
    ) -> None:
        self.member = member
        self.loop = loop
        self.executor = executor
        self.replication = replication
        self.on_configuration = on_configuration
        """Called with a configuration the leader pushed that leaves this member out."""

    async def install(self, request: InstallRequest) -> InstallResponse:
        if self.replication is None:
            return InstallResponse(
                status=Status.ERROR,
                error=ErrorInfo(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    "this member keeps no snapshots (memory storage or a state machine that is "
                    "not Snapshottable)",
                ),
            )
        return await self.replication.on_install(request)

    async def status(self, request: StatusRequest) -> StatusResponse:
        await trio.lowlevel.checkpoint()
        confirmed = False
        if request.confirm and self.member.is_leader:
            # A leader cut off from its peers still says "leader" until it steps down; one
            # heartbeat round tells an operator whether a quorum still follows it.
            with trio.move_on_after(self.member.options.election_timeout):
                with contextlib.suppress(CopycatError):
                    await self.loop.read_index()
                    confirmed = True
        status = self.member.status()
        heard = self.loop.silent_for(self.loop.clock())
        health = server_health(self.member)
        return StatusResponse(
            healthy=health.healthy,
            health=health.reason,
            confirmed=confirmed,
            snapshot_index=self.executor.snapshot_index,
            sessions=len(self.executor.sessions),
            log_bytes=await self.bytes_on_disk(),
            heard=tuple(PeerContact(m, round(s, 3)) for m, s in sorted(heard.items())),
            status=Status.OK,
            id=status.id,
            role=status.role,
            term=status.term,
            leader=status.leader,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            last_log_index=status.last_log_index,
            members=status.members,
            unavailable=tuple(status.unavailable),
            cluster_id=self.member.cluster_id,
        )

    async def bytes_on_disk(self) -> int:
        """The size of the member's data directory (log, snapshots, meta); 0 if it has none."""
        if not isinstance(self.member.storage, InDirectory):
            return 0
        directory = self.member.storage.directory

        def walk() -> int:
            total = 0
            for root, _dirs, files in os.walk(directory):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.path.getsize(os.path.join(root, name))
            return total

        return await trio.to_thread.run_sync(walk)

    async def backup(self, request: BackupRequest) -> BackupResponse:
        """A consistent snapshot for `copycat-trio snapshot save`: taken by the leader at its
        applied index (everything in it is committed), then read out chunk by chunk."""
        executor, store = self.executor, self.executor.snapshots

        def error(kind: ErrorType, text: str) -> BackupResponse:
            return BackupResponse(status=Status.ERROR, error=ErrorInfo(kind, text))

        if store is None:
            return error(
                ErrorType.ILLEGAL_MEMBER_STATE,
                f"member {self.member.id} keeps no snapshots (memory storage, or a state machine "
                "that is not Snapshottable)",
            )
        crc = 0
        if request.index == 0:
            if not self.member.is_leader:
                leader = self.loop.core.leader
                return error(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    f"member {self.member.id} is not the leader (member {leader} is); ask the "
                    "leader",
                )
            async with executor.lock:
                if executor.applied_index.value > executor.snapshot_index:
                    await executor.take_snapshot()
            info = await store.latest()
            if info is None:
                return error(ErrorType.ILLEGAL_MEMBER_STATE, "nothing has been applied yet")
            async with store.open(info) as reader:  # verifies the whole file's checksum
                crc = reader.expected_crc
        else:
            found = [i for i in await store.list_all() if i.index == request.index]
            if not found:
                return error(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    f"snapshot {request.index} is no longer kept here (a newer one replaced it); "
                    "start the backup again",
                )
            info = found[0]
        offset = max(0, min(request.offset, info.size))

        def read() -> bytes:
            with open(info.path, "rb") as file:
                file.seek(SNAPSHOT_HEADER_SIZE + offset)
                return file.read(min(BACKUP_CHUNK, info.size - offset))

        data = await trio.to_thread.run_sync(read)
        return BackupResponse(
            status=Status.OK,
            index=info.index,
            term=info.term,
            size=info.size,
            crc=crc,
            offset=offset,
            data=data,
        )

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        """The leader pushing the configuration to this (RESERVE) member."""

        def adopt(core: RaftCore, now: float) -> bool:
            if not core.accept_leader(request.term, request.leader, now):
                return False
            for member in request.members:
                self.loop.peers.learn(member.id, member.address)
            me = next((m for m in request.members if m.id == self.member.id), None)
            if me is not None and me.type is MemberType.RESERVE:
                core.adopt_configuration(request.index, request.members)
            if me is None and request.index >= core.configuration_index:
                # The leader tells a member it removed (it replicates to it no more).
                self.on_configuration(request.index, request.members)
            return True

        if await self.loop.call(adopt):
            return configure_response(True)
        return configure_response(False, "configuration from a stale term")
