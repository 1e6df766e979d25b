"""CopycatServer: a member of a cluster, run as a nursery of cooperating tasks.

    server = CopycatServer(1, "127.0.0.1:5001", state_machine=KeyValueStore)
    await nursery.start(server.bootstrap, members)     # a new cluster
    await nursery.start(server.join, ["127.0.0.1:5001"]) # an existing one

Either call returns once a leader is known; cancelling the nursery stops every task.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import trio

from ..core.raft import RaftConfig, RaftCore, Role
from ..protocol.codec import registry
from ..protocol.errors import (
    ConfigurationError,
    CopycatError,
    error_from_info,
)
from ..protocol.messages import (
    BackupRequest,
    CommandRequest,
    ConfigureRequest,
    InstallRequest,
    JoinRequest,
    KeepAliveRequest,
    LeaveRequest,
    Member,
    MemberType,
    QueryRequest,
    ReconfigureRequest,
    RegisterRequest,
    StatusRequest,
    TransferRequest,
    UnregisterRequest,
    error_of,
)
from ..storage.base import CompactableLog, LogStorage, WithSnapshots
from ..storage.memory import MemoryStorage
from ..transport.base import Transport
from ..transport.rpc import ConnectionPool
from ..transport.tcp import TcpTransport
from ..transport.tls import TlsContexts, TlsSettings
from .admin_handlers import AdminHandlers
from .authz import (
    AuthPolicy,
)
from .client_service import ClientService
from .cluster_identity import ClusterIdentity
from .connections import ConnectionHandler
from .executor import Executor
from .forwarding import LeaderForwarder
from .joining import MemberRequests
from .log_clock import LogClock
from .loop import MonotonicClock, RaftLoop, TrioClock
from .membership import MembershipService
from .metrics import ServerMetrics
from .observations import RequestCounts
from .options import ServerOptions, validate_members
from .peers import PeerLinks
from .replication import SnapshotReplication, align_storage
from .roles import RoleChange, watch_role
from .routing import RequestRouter, members_text
from .status import ServerStatus

log = logging.getLogger(__name__)


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class CopycatServer:
    """One member: listener, raft loop with its election timer, peer senders, executor."""

    def __init__(
        self,
        member_id: int,
        address: str,
        *,
        state_machine: Callable[[], Any],
        client_address: str | None = None,
        transport: Transport | None = None,
        storage: LogStorage | None = None,
        election_timeout: float = 1.0,
        heartbeat_interval: float = 0.15,
        session_timeout: float = 5.0,
        request_timeout: float = 10.0,
        rng: random.Random | None = None,
        wall_clock_ms: Callable[[], int] | None = None,
        snapshot_every: int = 10_000,
        catch_up_entries: int = 1_000,
        member_type: MemberType = MemberType.ACTIVE,
        priority: int = 0,
        replace_after: float | None = None,
        monotonic_clock: MonotonicClock | None = None,
        metrics_address: str | None = None,
        tls: TlsSettings | None = None,
        cluster_id: str | None = None,
        auth: AuthPolicy | None = None,
    ) -> None:
        """`monotonic_clock`: the raft core's clock (default: Trio's); a simulation gives each
        member its own rate. `metrics_address`: HOST:PORT to serve /metrics, /health and /ready
        on over HTTP (None: not served; see docs/operations.md). `tls`: mutual TLS on every
        listener and connection (docs/security.md); needs the default (TCP) transport.
        `cluster_id`: the cluster this member must belong to (None: whichever its data
        directory says); a data directory of another cluster is refused at start. `auth`:
        the roles and tokens clients are checked against (server/authz.py); with TLS and
        none given, every authenticated client gets `write`; without TLS and without it,
        every request is allowed, as before."""
        self.monotonic_clock = monotonic_clock
        self.member_type = member_type
        """The type this member asks for when it joins (bootstrap members are ACTIVE)."""
        self.priority = priority
        self.replace_after = replace_after
        """Seconds a voter may be unreachable before the leader replaces it with a standby
        (None: never replace automatically)."""
        if snapshot_every < 1 or catch_up_entries < 0:
            raise ConfigurationError("snapshot_every must be >= 1 and catch_up_entries >= 0")
        self.snapshot_every = snapshot_every
        """Applied entries between automatic snapshots (for Snapshottable state machines)."""
        self.catch_up_entries = catch_up_entries
        """Entries kept in the log behind a snapshot for followers that are a little behind."""
        self.options = ServerOptions(
            member_id=member_id,
            address=address,
            client_address=client_address,
            state_machine=state_machine,
            election_timeout=election_timeout,
            heartbeat_interval=heartbeat_interval,
            session_timeout=session_timeout,
            request_timeout=request_timeout,
            metrics_address=metrics_address,
            tls=tls,
            cluster_id=cluster_id,
        )
        self.id = member_id
        if tls is not None and transport is not None:
            raise ConfigurationError("tls goes with the default transport (pass one or the other)")
        self._tls = TlsContexts.for_member(tls) if tls is not None else None
        if auth is None and tls is not None:
            auth = AuthPolicy()
        if auth is not None and tls is not None and auth.server_name is None:
            auth = attrs.evolve(auth, server_name=tls.server_name)
        self.auth = auth
        """What clients may do (None: everything, no identities: plaintext without a policy)."""
        self.transport: Transport = transport or TcpTransport(
            tls=self._tls,
            # A peer that acknowledges nothing for an election timeout is as gone as a silent
            # leader: its connection breaks and the next message opens a new one, at once once
            # a partition heals (not after TCP's doubling retransmission intervals). A connect
            # gives up before TCP would resend its SYN (1 s), so that the next one is new.
            connect_timeout=min(2.0, max(0.25, election_timeout / 2)),
            unacknowledged_timeout=max(0.5, election_timeout),
        )
        self.storage: LogStorage = storage or MemoryStorage()
        self._identity = ClusterIdentity(member_id, self.storage, self.transport, cluster_id)
        self.rng = rng or random.Random()
        self.wall_clock_ms = wall_clock_ms or _wall_clock_ms
        """The wall clock a leader's log time slews toward (a simulation passes its own); see
        log_clock.py: a step of this clock does not step log time."""
        self.address = address
        self.client_address = client_address
        self.metrics_address = metrics_address
        """Where metrics and health are served (the bound port once started), or None."""
        self.metrics: ServerMetrics | None = None
        self.ready = False
        """True once started (joined, a leader known) and until stopped: what /ready says."""
        self.request_counts: RequestCounts = {}
        """Requests answered, by type and outcome (copycat_client_requests_total)."""
        self._loop: RaftLoop | None = None
        self._executor: Executor | None = None
        self._pool: ConnectionPool | None = None
        self._service: ClientService | None = None
        self._membership: MembershipService | None = None
        self._replication: SnapshotReplication | None = None
        self._router: RequestRouter | None = None
        self._requests: MemberRequests | None = None
        self._nursery: trio.Nursery | None = None
        self._was_member = False
        self._configuration_at_start = 0
        self._removal: tuple[int, tuple[Member, ...]] | None = None
        self.removed = trio.Event()
        """Set once a configuration without this member comes into force here (applied, or
        pushed by the leader after the removal committed): the member serves no clients from
        then on, and `copycat-trio serve` exits (unless --stay-when-removed)."""

    @property
    def cluster_id(self) -> str:
        """This member's cluster id once started ("" while joining, or on data from before
        cluster ids until a peer tells it)."""
        return self._identity.cluster_id

    @property
    def removal(self) -> tuple[int, tuple[Member, ...]] | None:
        """(index, members) of the configuration that removed this member; None while it is
        a member."""
        return self._removal

    def _on_configuration(self, index: int, members: tuple[Member, ...]) -> None:
        if index > self._configuration_at_start:  # not one replayed from the log at start
            log.info(
                "member %s: configuration %s in force: %s", self.id, index, members_text(members)
            )
        if any(m.id == self.id for m in members):
            self._was_member = True
            self._removal = None  # added again
        elif self._was_member and self._removal is None:
            # Only after a configuration with this member: a joining member applies the
            # configurations from before it was added, and those do not name it either.
            self._removal = (index, members)
            log.warning(
                "member %s was removed from the cluster by the configuration at index %s; "
                "members now: %s",
                self.id,
                index,
                members_text(members),
            )
            self.removed.set()

    # --- starting ------------------------------------------------------------------------

    async def bootstrap(
        self,
        members: Sequence[Member] | None = None,
        *,
        task_status: trio.TaskStatus[CopycatServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Form a new cluster of `members` (just this server if None); runs until cancelled."""
        if members is None:
            members = [Member(self.id, self.address, client_address=self.client_address)]
        members = validate_members(members, self.id)
        for member in members:
            if member.id == self.id and member.address != self.address:
                raise ConfigurationError(
                    f"member {self.id} is listed at {member.address} but listens on {self.address}"
                )
        await self._serve(members, join=None, task_status=task_status)

    async def join(
        self,
        cluster: Sequence[str],
        *,
        task_status: trio.TaskStatus[CopycatServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the existing cluster reachable at any of these addresses; runs until cancelled."""
        if not cluster:
            raise ConfigurationError("join needs the address of at least one existing member")
        await self._serve((), join=list(cluster), task_status=task_status)

    async def _serve(
        self,
        members: Sequence[Member],
        *,
        join: list[str] | None,
        task_status: trio.TaskStatus[CopycatServer],
    ) -> None:
        options = self.options
        stored = await self.storage.load()
        try:
            has_data = bool(stored.entries or stored.hard_state.term)
            await self._identity.load(has_data, join, members)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.storage.aclose()
            raise
        state_machine = options.state_machine()
        store = self.storage.snapshots if isinstance(self.storage, WithSnapshots) else None
        self._executor = executor = Executor(
            state_machine,
            members=tuple(members),
            snapshots=store,
            snapshot_every=self.snapshot_every,
            on_snapshot=self._compact,
        )
        self._was_member = any(m.id == self.id for m in members)
        executor.on_configuration = self._on_configuration
        log_clock = LogClock(self.wall_clock_ms, trio.current_time, floor=lambda: executor.log_time)
        snapshot = None
        if executor.snapshots is not None:
            info = await executor.snapshots.latest()
            if info is not None:
                async with executor.lock:
                    header = await executor.install_snapshot(info)
                snapshot = (header.index, header.term, header.members, header.configuration_index)
                log.info("member %s restored snapshot %s", self.id, header.index)
        clock = self.monotonic_clock or TrioClock()
        core = RaftCore(
            self.id,
            config=RaftConfig(
                election_timeout=options.election_timeout,
                heartbeat_interval=options.heartbeat_interval,
            ),
            members=members,
            hard_state=stored.hard_state,
            entries=stored.entries,
            rng=self.rng,
            now=clock.now(),
            timestamp=log_clock,
            entry_size=lambda entry: len(registry.encode(entry)),
            snapshot=snapshot,
        )
        await align_storage(self.storage, core)
        if stored.entries or snapshot:
            log.info(
                "member %s recovered term %s, log %s..%s",
                self.id,
                core.term,
                core.log.first_index,
                core.log.last_index,
            )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                peers = PeerLinks(
                    self.transport, nursery, self.id, retry_interval=options.heartbeat_interval
                )
                self._pool = ConnectionPool(self.transport, nursery)
                self._configuration_at_start = core.configuration_index
                self._loop = loop = RaftLoop(
                    core, self.storage, peers, executor, clock=clock.now, to_trio=clock.to_trio
                )
                self._identity.on_adopted = peers.reconnect
                if executor.snapshots is not None:
                    self._replication = SnapshotReplication(
                        self.id,
                        loop,
                        executor,
                        executor.snapshots,
                        self._pool,
                        nursery,
                        options.request_timeout,
                    )
                    loop.on_snapshot_needed = self._replication.start_sending
                forward = LeaderForwarder(
                    self.id, loop, self._pool, nursery, options.request_timeout
                )
                self._service = ClientService(
                    loop,
                    executor,
                    forward,
                    default_session_timeout_ms=int(options.session_timeout * 1000),
                    request_timeout=options.request_timeout,
                    election_timeout=options.election_timeout,
                    log_clock=log_clock,
                )
                self._membership = MembershipService(
                    loop,
                    self._pool,
                    forward,
                    election_timeout=options.election_timeout,
                    replace_after=self.replace_after,
                )
                admin = AdminHandlers(
                    self, loop, executor, self._replication, self._on_configuration
                )
                membership = self._membership
                self._router = RequestRouter(
                    self.id,
                    {
                        CommandRequest: self._service.command,
                        QueryRequest: self._service.query,
                        RegisterRequest: self._service.register,
                        KeepAliveRequest: self._service.keep_alive,
                        UnregisterRequest: self._service.unregister,
                        StatusRequest: admin.status,
                        JoinRequest: membership.join,
                        LeaveRequest: membership.leave,
                        ReconfigureRequest: membership.reconfigure,
                        TransferRequest: membership.transfer,
                        ConfigureRequest: admin.configure,
                        InstallRequest: admin.install,
                        BackupRequest: admin.backup,
                    },
                    self._service.connect,
                    removal=lambda: self._removal,
                    reserve=self._reserve,
                    cluster_id=lambda: self.cluster_id,
                )
                self._requests = MemberRequests(
                    loop,
                    self._pool,
                    self._router.dispatch,
                    self._identity,
                    nursery,
                    options.election_timeout,
                )
                connections = ConnectionHandler(
                    self.id,
                    loop=loop,
                    service=self._service,
                    executor=executor,
                    router=self._router,
                    identity=self._identity,
                    auth=self.auth,
                    request_counts=self.request_counts,
                    own_address=lambda: self.address,
                    removal=lambda: self._removal,
                    reserve=self._reserve,
                    election_timeout=options.election_timeout,
                )
                if options.metrics_address is not None:
                    self.metrics = metrics = ServerMetrics(self)
                    self.metrics_address = await metrics.start(nursery, options.metrics_address)
                await nursery.start(loop.run)
                nursery.start_soon(executor.run)
                nursery.start_soon(self._leader_duties)
                nursery.start_soon(self._log_leader_changes)
                self.address = await nursery.start(
                    self.transport.serve, self.address, connections.handle_connection
                )
                if self.client_address is not None:
                    self.client_address = await nursery.start(
                        self.transport.serve,
                        self.client_address,
                        connections.handle_client_connection,
                    )
                if join is not None:
                    me = Member(
                        self.id,
                        self.address,
                        type=self.member_type,
                        client_address=self.client_address,
                        priority=self.priority,
                    )
                    await self._requests.join(join, me)
                await loop.leader.wait_value(lambda leader: leader is not None)
                log.info("member %s ready at %s; leader is %s", self.id, self.address, core.leader)
                self.ready = True
                task_status.started(self)
        finally:
            self.ready = False
            self._loop = None
            self._identity.on_adopted = None
            self._requests = None
            with trio.CancelScope(shield=True):
                await self.storage.aclose()

    async def _compact(self, index: int) -> None:
        """A snapshot at index is durable: drop the log before it, keeping some entries so that
        followers slightly behind catch up from the log rather than by snapshot."""
        assert self._loop is not None
        upto = index - self.catch_up_entries
        if upto <= self._loop.core.log.snapshot_index:
            return

        async def drop_segments(storage: LogStorage, _result: object) -> None:
            if isinstance(storage, CompactableLog):
                await storage.compact_before(upto + 1)

        await self._loop.call(lambda core, _now: core.compact(upto), storage_op=drop_segments)

    async def _log_leader_changes(self) -> None:
        """One line per leader a follower comes to follow (a leader logs its own election)."""
        assert self._loop is not None
        loop = self._loop
        async for leader in loop.leader.eventual_values():
            if leader is not None and leader != self.id:
                log.info(
                    "member %s: following leader %s in term %s", self.id, leader, loop.core.term
                )

    async def _leader_duties(self) -> None:
        """While this server leads, its leader-only tasks run in a nursery that is cancelled the
        moment it steps down."""
        assert self._loop is not None and self._service is not None
        assert self._membership is not None
        loop, service, membership = self._loop, self._service, self._membership
        while True:
            await loop.role.wait_value(lambda role: role is Role.LEADER)
            async with trio.open_nursery() as leader_nursery:
                leader_nursery.start_soon(service.expire_sessions)
                leader_nursery.start_soon(membership.push_configuration)
                leader_nursery.start_soon(membership.replace_failed)
                await loop.role.wait_value(lambda role: role is not Role.LEADER)
                leader_nursery.cancel_scope.cancel()

    def reload_tls(self) -> None:
        """Read the certificate, key and CA files again (SIGHUP does this for `serve`):
        connections made or accepted from now on use them; open ones keep theirs. Raises
        ConfigurationError, keeping the old ones, if a file cannot be loaded."""
        if self._tls is None:
            raise ConfigurationError(f"member {self.id} does not use TLS")
        self._tls.reload()

    # --- status --------------------------------------------------------------------------

    def status(self) -> ServerStatus:
        if self._loop is None or self._executor is None:
            raise RuntimeError("server is not running")
        core = self._loop.core
        return ServerStatus(
            id=self.id,
            role="removed" if self._removal is not None else core.role.value,
            term=core.term,
            leader=core.leader,
            commit_index=core.commit_index,
            applied_index=self._executor.applied_index.value,
            last_log_index=core.log.last_index,
            members=core.members,
            cluster_id=self.cluster_id,
            unavailable=tuple(
                sorted(
                    member_id
                    for member_id, silent in self._loop.silent_for(self._loop.clock()).items()
                    if silent > self.options.election_timeout
                )
            )
            if core.role is Role.LEADER
            else (),
        )

    @property
    def state_machine(self) -> Any:
        """The local replica of the state machine (read it only between awaits)."""
        if self._executor is None:
            raise RuntimeError("server is not running")
        return self._executor.state_machine

    def watch_role(self) -> AsyncIterator[RoleChange]:
        """`async for change in server.watch_role()`: the current role, term and leader, then
        each change (see server/roles.py). It waits for the next change until cancelled: run
        it in the nursery the server runs in, which stopping the server cancels."""
        if self._loop is None:
            raise RuntimeError("server is not running")
        return watch_role(self._loop)

    @property
    def running(self) -> tuple[RaftLoop, Executor] | None:
        """The raft loop and the executor while the server runs (None before and after)."""
        if self._loop is None or self._executor is None:
            return None
        return self._loop, self._executor

    @property
    def is_leader(self) -> bool:
        return self._loop is not None and self._loop.core.role is Role.LEADER

    # --- connections ---------------------------------------------------------------------

    def _reserve(self) -> bool:
        """Whether this member is RESERVE (it serves no clients)."""
        me = self._loop.core.member(self.id) if self._loop is not None else None
        return me is not None and me.type is MemberType.RESERVE

    # --- membership, for embedding applications ----------------------------------------------

    async def leave(self, *, timeout: float = 30.0) -> None:
        """Remove this member from the configuration (through the leader) and wait for it."""
        me = Member(self.id, self.address, client_address=self.client_address)
        error = error_of(await self._admin_request(LeaveRequest(member=me), timeout))
        if error is not None:
            raise error_from_info(error)

    async def transfer_leadership(self, member_id: int, *, timeout: float = 30.0) -> None:
        """Ask the leader to hand leadership to `member_id` once it has caught up."""
        error = error_of(await self._admin_request(TransferRequest(member=member_id), timeout))
        if error is not None:
            raise error_from_info(error)

    async def shutdown_gracefully(self, *, timeout: float | None = None) -> None:
        """If this member leads, hand leadership to the most caught-up voter first, so the
        cluster does not wait an election timeout for a new leader."""
        assert self._loop is not None
        core = self._loop.core
        if core.role is not Role.LEADER:
            return
        candidates = [
            (progress.match_index, peer)
            for peer, progress in core.progress.items()
            if peer in core.voters
        ]
        if not candidates:
            return
        _, target = max(candidates)
        with trio.move_on_after(timeout or 2 * self.options.election_timeout):
            with contextlib.suppress(CopycatError):
                await self.transfer_leadership(target)

    async def _admin_request(self, body: object, timeout: float) -> object:
        if self._requests is None:
            raise RuntimeError("server is not running")
        return await self._requests.ask_leader(body, timeout)


__all__ = ["CopycatServer", "ServerStatus"]
