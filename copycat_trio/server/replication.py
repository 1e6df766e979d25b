"""Snapshot traffic between members: the leader streams its latest snapshot to a follower whose
next entry was compacted away; the follower writes the chunks durably, then installs them.

Chunks carry their byte offset, so a broken transfer resumes or restarts cleanly, and nothing is
installed before the whole file is on disk and its checksum verified. A chunk (or its answer)
that is lost is sent again after an election timeout, then after twice as long, up to the
request timeout; the follower answers a repeat as it answered the first, and the leader's
heartbeats keep reaching it meanwhile (the core sends them to a peer in SNAPSHOT state), so a
lost message neither stalls a follower for the request timeout nor lets it start an election.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from ..core.raft import RaftCore, Role
from ..protocol.errors import ErrorInfo, ErrorType, Status
from ..protocol.messages import InstallRequest, InstallResponse, error_of
from ..storage.base import IndexedLog, LogStorage
from ..storage.errors import StorageCorruptionError
from ..storage.snapshots import SnapshotStore, SnapshotWriter
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from .executor import BufferedSource, Executor, runs_inline
from .loop import RaftLoop
from .snapshots import SnapshotHeader, ThreadSource, decode_header

log = logging.getLogger(__name__)

CHUNK_SIZE = 512 * 1024


async def align_storage(storage: LogStorage, core: RaftCore) -> None:
    """Make the stored log match the core's after a snapshot: drop stored entries the core
    does not hold (leftovers of a replaced log, or a log that ends before the snapshot)."""
    await align_storage_to(storage, core.log.snapshot_index, core.log.last_index)


async def align_storage_to(storage: LogStorage, snapshot_index: int, core_last: int) -> None:
    """`align_storage` to the core's log as it was when the snapshot was restored: the
    write runs later, in order with the saves queued before it, and the entries the core
    appended meanwhile are in the saves queued after it."""
    if not isinstance(storage, IndexedLog) or not storage.last_index:
        return
    first, last = storage.first_index, storage.last_index
    if last < snapshot_index:
        cut = first
    elif last > core_last:
        cut = max(first, core_last + 1)
    else:
        return
    await storage.save(hard_state=None, truncate_from=cut, entries=())


class SnapshotReplication:
    """Both ends of snapshot transfer for one server."""

    def __init__(
        self,
        member_id: int,
        loop: RaftLoop,
        executor: Executor,
        store: SnapshotStore,
        pool: ConnectionPool,
        nursery: trio.Nursery,
        request_timeout: float,
    ) -> None:
        self.id = member_id
        self.loop = loop
        self.executor = executor
        self.store = store
        self.pool = pool
        self.nursery = nursery
        self.request_timeout = request_timeout
        self.retry_after = request_timeout / 4
        self._sending: set[int] = set()
        self._incoming: _Incoming | None = None
        self._receiving = trio.Lock()
        """One chunk at a time: a repeated chunk waits for the first copy, then is answered."""
        self._installed: tuple[tuple[int, int, int, int], int] | None = None
        """(key, size) of the snapshot installed last, to answer a repeat of its last chunk."""
        self.resent = 0
        """Chunks sent again because no answer came in time."""
        self.sent = 0
        self.installed = 0

    # --- the leader's side -----------------------------------------------------------------

    def start_sending(self, peer: int) -> None:
        if peer not in self._sending:
            self._sending.add(peer)
            self.nursery.start_soon(self._send, peer)

    async def _send(self, peer: int) -> None:
        core = self.loop.core
        term = core.term
        index = 0
        succeeded = False
        try:
            if not await self._reach(peer, term):
                return
            info = await self.store.latest()
            if info is None or core.member(peer) is None:
                return
            index = info.index
            async with self.store.open(info) as reader:
                offset = 0
                while True:
                    data = await reader.read(CHUNK_SIZE)
                    request = InstallRequest(
                        term=term,
                        leader=self.id,
                        index=info.index,
                        offset=offset,
                        data=data,
                        complete=reader.remaining == 0,
                        snapshot_term=info.term,
                    )
                    response = await self._deliver(peer, term, request)
                    if response is None:
                        return  # no longer the leader of that term, or the peer left
                    if not isinstance(response, InstallResponse) or response.error is not None:
                        log.info("snapshot to %s refused: %s", peer, error_of(response) or response)
                        return
                    offset += len(data)
                    if request.complete:
                        break
            succeeded = True
            self.sent += 1
            log.info("sent snapshot %s to member %s", index, peer)
        except Exception as exc:
            log.info("sending snapshot to %s failed: %s", peer, exc)
        finally:
            if not succeeded:
                with trio.move_on_after(self.retry_after):
                    await trio.sleep_forever()  # do not hammer a peer that is down
            self._sending.discard(peer)
            # Shielded so the core hears of it even if this task is cancelled; a stopped loop
            # answers every call with NoLeaderError, so a stopping server does not hang here.
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.loop.call(lambda c, _now: c.snapshot_sent(peer, index, succeeded))

    async def _reach(self, peer: int, term: int) -> bool:
        """Wait until a connection to the peer opens, trying at the heartbeat pace (as appends
        do), before the snapshot is opened (which verifies its checksum: a whole read); False
        once this server no longer leads `term` or the peer is no longer a member."""
        core = self.loop.core
        while True:
            member = core.member(peer)
            if core.role is not Role.LEADER or core.term != term or member is None:
                return False
            started = trio.current_time()
            with trio.move_on_after(core.config.election_timeout):
                try:
                    await self.pool.get(member.address)
                    return True
                except RequestNotSent:
                    pass
            await trio.sleep_until(started + core.config.heartbeat_interval)

    async def _deliver(self, peer: int, term: int, request: InstallRequest) -> Any:
        """One chunk's answer, sending the chunk again while none comes: first after an
        election timeout, then twice as long each time, up to the request timeout (the last
        chunk's answer waits for the install, which may take long). None once this server no
        longer leads `term` or the peer is no longer a member."""
        core = self.loop.core
        patience = min(core.config.election_timeout, self.request_timeout)
        while True:
            member = core.member(peer)
            if core.role is not Role.LEADER or core.term != term or member is None:
                return None
            sent_at = trio.current_time()
            try:
                return await self.pool.request(member.address, request, patience)
            except ResponseLost as exc:
                log.info(
                    "snapshot %s to %s: no answer for the chunk at %s (%s); sending it again",
                    request.index,
                    peer,
                    request.offset,
                    exc,
                )
            self.resent += 1
            patience = min(2 * patience, self.request_timeout)
            # A connection that breaks at once is not retried faster than heartbeats go.
            await trio.sleep_until(sent_at + core.config.heartbeat_interval)

    # --- the follower's side ---------------------------------------------------------------

    async def on_install(self, request: InstallRequest) -> InstallResponse:
        def error(kind: ErrorType, message: str, offset: int = 0) -> InstallResponse:
            return InstallResponse(
                status=Status.ERROR, error=ErrorInfo(kind, message), offset=offset
            )

        accepted = await self.loop.call(
            lambda c, now: c.accept_leader(request.term, request.leader, now)
        )
        if not accepted:
            return error(ErrorType.ILLEGAL_MEMBER_STATE, "snapshot from a stale term")
        async with self._receiving:
            return await self._receive(request, error)

    async def _receive(
        self, request: InstallRequest, error: Callable[..., InstallResponse]
    ) -> InstallResponse:
        """Write one chunk (installing after the last); a repeat of the chunk written last, or
        of the last chunk of the snapshot installed last, is answered again, not written."""
        incoming = self._incoming
        key = (request.leader, request.term, request.index, request.snapshot_term)
        end = request.offset + len(request.data)
        repeat = (
            incoming is not None and incoming.key == key and incoming.offset == end
            if not request.complete
            else self._installed == (key, end)
        )
        if repeat:
            return InstallResponse(status=Status.OK, offset=end)
        if request.offset == 0:
            if incoming is not None:
                await incoming.abort()
            incoming = self._incoming = await _Incoming.open(self.store, key)
        elif incoming is None or incoming.key != key or incoming.offset != request.offset:
            expected = incoming.offset if incoming is not None and incoming.key == key else 0
            return error(ErrorType.INTERNAL, f"expected the chunk at offset {expected}", expected)
        try:
            await incoming.writer.write(request.data)
        except Exception:
            await incoming.abort()
            self._incoming = None
            raise
        incoming.offset += len(request.data)
        if not request.complete:
            return InstallResponse(status=Status.OK, offset=incoming.offset)
        self._incoming = None
        info = await incoming.commit()
        await self._install(info)
        self._installed = (key, incoming.offset)
        return InstallResponse(status=Status.OK, offset=incoming.offset)

    async def _install(self, info: Any) -> None:
        header = await read_header(self.store, info)

        def restore(core: RaftCore, _now: float) -> tuple[bool, int, int]:
            restored = core.restore(
                header.index, header.term, header.members, header.configuration_index
            )
            return restored, core.log.snapshot_index, core.log.last_index

        # Shielded: once the core has adopted the snapshot, the state machine must too. A
        # cancelled install (its stream timed out while the call waited behind a slow write)
        # left the core past entries the executor never got: it applied after a gap.
        async with self.executor.lock:
            with trio.CancelScope(shield=True):
                restored, *_ = await self.loop.call(
                    restore,
                    storage_op=lambda storage, marks: align_storage_to(storage, *marks[1:]),
                )
                if restored:
                    # The snapshot's configuration may name members this server never heard
                    # of (one that joined while it was away): it must be able to reach them.
                    for member in self.loop.core.members:
                        self.loop.peers.learn(member.id, member.address)
                    await self.executor.install_snapshot(info)
                    self.installed += 1
                log.info("installed snapshot %s from the leader", header.index)


class _Incoming:
    """A snapshot being received: its temp file stays open across requests."""

    def __init__(
        self,
        key: tuple[int, int, int, int],
        stack: contextlib.AsyncExitStack,
        writer: SnapshotWriter,
    ) -> None:
        self.key = key
        self.stack = stack
        self.writer = writer
        self.offset = 0

    @classmethod
    async def open(cls, store: SnapshotStore, key: tuple[int, int, int, int]) -> _Incoming:
        stack = contextlib.AsyncExitStack()
        writer = await stack.enter_async_context(store.create(key[2], key[3]))
        return cls(key, stack, writer)

    async def commit(self) -> Any:
        await self.stack.aclose()
        return self.writer.info

    async def abort(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stack.__aexit__(RuntimeError, RuntimeError("transfer abandoned"), None)


async def read_header(store: SnapshotStore, info: Any) -> SnapshotHeader:
    """Just the header of a stored snapshot (its checksum is verified on open)."""
    async with store.open(info) as reader:
        if runs_inline(store):
            head = (await BufferedSource.load(reader)).read_object()
        else:
            source = ThreadSource(reader)
            head = await trio.to_thread.run_sync(source.read_object)
    try:
        return decode_header(head)
    except StorageCorruptionError as exc:
        raise StorageCorruptionError(f"snapshot {info.path}: {exc}") from exc
