"""A cluster of in-process servers on an in-memory network, for tests (ours and users').

    async with open_memory_cluster(3, KeyValueStore) as cluster:
        async with cluster.client() as client:
            await client.submit(Put("k", "v"))
        cluster.network.isolate(...)

Each server runs in its own cancel scope, so a test can crash one (`crash`) and the rest go on.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from .._nursery import open_background_nursery
from ..client.client import CopycatClient, open_client
from ..protocol.messages import Member
from ..server.server import CopycatServer
from ..storage.base import LogStorage
from ..transport.memory import MemoryNetwork


class DriftingClock:
    """A member's monotonic clock that runs `rate` times as fast as Trio's, reading the same
    as Trio's at `origin`: simulated clock drift, for the raft core's timers and lease."""

    def __init__(self, rate: float, origin: float) -> None:
        if rate <= 0:
            raise ValueError("a clock rate must be positive")
        self.rate = rate
        self.origin = origin

    def now(self) -> float:
        return self.origin + (trio.current_time() - self.origin) * self.rate

    def to_trio(self, time: float) -> float:
        """The first Trio time at which this clock reads `time` or later (rounded up, so a
        timer set for a deadline never wakes to find the deadline not yet reached)."""
        at = self.origin + (time - self.origin) / self.rate
        while at < math.inf and self.origin + (at - self.origin) * self.rate < time:
            at = math.nextafter(at, math.inf)
        return at


class MemoryCluster:
    """Servers by id, the network they share, and controls to crash and partition them."""

    def __init__(
        self,
        nursery: trio.Nursery,
        network: MemoryNetwork,
        state_machine: Callable[[], Any],
        *,
        seed: int,
        election_timeout: float,
        heartbeat_interval: float,
        storage: Callable[[int], LogStorage] | None = None,
        server_options: dict[str, Any] | None = None,
    ) -> None:
        self.storage = storage
        """Makes each member's storage from its id (a DISK storage on a per-member directory
        survives `crash` and `restart`); None for fresh MEMORY storage each start."""
        self.server_options = server_options or {}
        self.bootstrap_members: list[Member] = []
        self.nursery = nursery
        self.network = network
        self.state_machine = state_machine
        self.seed = seed
        self.election_timeout = election_timeout
        self.heartbeat_interval = heartbeat_interval
        self.servers: dict[int, CopycatServer] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.stopped: dict[int, trio.Event] = {}
        self.clock_offsets: dict[int, float] = {}
        """Seconds added to a member's wall clock (where its log timestamps come from): a
        simulation steps one member's clock forward by raising its offset."""
        self.clock_rate: Callable[[int], float] | None = None
        """If set, called with a member's id at each start: the rate its monotonic clock runs
        at from then on, relative to Trio's (1.0: no drift)."""
        self.starts: dict[int, int] = {}
        """How many times each member was started (each start gets a fresh, seeded rng)."""
        self.on_server_error: Callable[[int, BaseException], bool] | None = None
        """If set, called with (member id, the exception) when a server stops with one: True
        means it is handled (that member is down, the rest go on); else it propagates."""
        self.observe_state_machine: Callable[[int, Any], Any] | None = None
        """If set, called with (member id, the fresh state machine) at each start, returning
        the state machine to serve: a simulation wraps it to watch what each member applies."""

    @staticmethod
    def address(member_id: int) -> str:
        """The in-memory network address of member `member_id`."""
        return f"server{member_id}:5000"

    def members(self, ids: list[int]) -> list[Member]:
        """The members with these ids, at their addresses (for a bootstrap or a join)."""
        return [Member(i, self.address(i)) for i in ids]

    def _new_server(self, member_id: int, **overrides: Any) -> CopycatServer:
        address = self.address(member_id)
        starts = self.starts[member_id] = self.starts.get(member_id, 0) + 1

        def wall_clock_ms() -> int:
            return int((trio.current_time() + self.clock_offsets.get(member_id, 0.0)) * 1000)

        def state_machine() -> Any:
            made = self.state_machine()
            if self.observe_state_machine is not None:
                made = self.observe_state_machine(member_id, made)
            return made

        if self.server_options.get("auth") is not None:
            # Members checking roles tell members apart by a certificate for their host.
            host = address.rpartition(":")[0]
            self.network.certificates.setdefault(
                address, fake_certificate(f"member-{member_id}", host)
            )
        rate = self.clock_rate(member_id) if self.clock_rate is not None else 1.0
        if rate != 1.0:
            overrides = {"monotonic_clock": DriftingClock(rate, trio.current_time()), **overrides}
        return CopycatServer(
            member_id,
            address,
            state_machine=state_machine,
            transport=self.network.transport(address),
            election_timeout=self.election_timeout,
            heartbeat_interval=self.heartbeat_interval,
            session_timeout=self.election_timeout * 5,
            rng=random.Random(self.seed * 1000 + member_id + 1_000_003 * (starts - 1)),
            wall_clock_ms=wall_clock_ms,
            storage=self.storage(member_id) if self.storage is not None else None,
            **{**self.server_options, **overrides},
        )

    async def _run(
        self,
        server: CopycatServer,
        start: Any,
        *args: Any,
        scope: trio.CancelScope | None = None,
        task_status: Any,
    ) -> None:
        stopped = self.stopped[server.id] = trio.Event()
        try:
            with scope if scope is not None else trio.CancelScope() as entered:
                self.scopes[server.id] = entered
                await start(*args, task_status=task_status)
        except Exception as exc:
            if self.on_server_error is None or not self.on_server_error(server.id, exc):
                raise
        finally:
            stopped.set()

    async def bootstrap(self, ids: list[int]) -> None:
        """Start these servers as a new cluster; returns when all know the leader."""
        members = self.bootstrap_members = self.members(ids)
        async with trio.open_nursery() as starting:
            for member_id in ids:
                server = self.servers[member_id] = self._new_server(member_id)
                starting.start_soon(
                    self.nursery.start, self._run, server, server.bootstrap, members
                )

    async def join(self, member_id: int, via: list[int], **options: Any) -> CopycatServer:
        """Start a new member that joins through `via` (options: member_type, priority...)."""
        server = self.servers[member_id] = self._new_server(member_id, **options)
        await self.nursery.start(self._run, server, server.join, [self.address(i) for i in via])
        return server

    async def restart(self, member_ids: list[int]) -> None:
        """Start crashed members again from their storage; returns once they know a leader."""
        for member_id in member_ids:
            await self.stopped[member_id].wait()  # its storage is closed (the lock released)
        async with trio.open_nursery() as starting:
            for member_id in member_ids:
                server = self.servers[member_id] = self._new_server(member_id)
                starting.start_soon(
                    self.nursery.start, self._run, server, server.bootstrap, self.bootstrap_members
                )

    def restart_soon(self, member_id: int, members: list[Member] | None = None) -> None:
        """Start a crashed member again from its storage in the background, without waiting
        for it to find a leader (it may be restarted inside a partition). `members` is the
        member list it boots with (default: the bootstrap list); its log's own configuration
        takes precedence. `crash` may stop it again at any moment."""
        scope = self.scopes[member_id] = trio.CancelScope()
        self.nursery.start_soon(self._restart_in_background, member_id, scope, members)

    async def _restart_in_background(
        self, member_id: int, scope: trio.CancelScope, members: list[Member] | None
    ) -> None:
        previous = self.stopped.get(member_id)
        if previous is not None:
            await previous.wait()  # its storage is closed
        if scope.cancel_called:
            return
        server = self.servers[member_id] = self._new_server(member_id)
        await self._run(
            server,
            server.bootstrap,
            members or self.bootstrap_members,
            scope=scope,
            task_status=trio.TASK_STATUS_IGNORED,
        )

    def crash(self, member_id: int) -> None:
        """Stop a server at once, as if its process died (memory storage: its state is gone)."""
        self.scopes[member_id].cancel()
        self.servers.pop(member_id, None)

    def isolate(self, member_id: int) -> None:
        """Cut a server off from the other servers (clients can still reach it)."""
        self.network.isolate(self.address(member_id), [self.address(i) for i in self.all_ids()])

    def partition(self, side_a: list[int], side_b: list[int]) -> None:
        """Cut every link between a server of `side_a` and one of `side_b`, both ways."""
        for a in side_a:
            for b in side_b:
                self.network.cut(self.address(a), self.address(b))

    def all_ids(self) -> list[int]:
        """The ids of the servers running now, sorted."""
        return sorted(self.servers)

    def leaders(self) -> list[int]:
        """The ids of the servers that think they lead (more than one: across terms)."""
        return [i for i, s in self.servers.items() if s.is_leader]

    async def wait_for_leader(self, among: list[int] | None = None, timeout: float = 30.0) -> int:
        """Wait until exactly one of `among` leads and the others agree; returns its id."""
        ids = among or self.all_ids()
        with trio.fail_after(timeout):
            while True:
                leaders = [i for i in ids if self.servers[i].is_leader]
                if len(leaders) == 1:
                    term = self.servers[leaders[0]].status().term
                    if all(self.servers[i].status().leader == leaders[0] for i in ids) and all(
                        self.servers[i].status().term == term for i in ids
                    ):
                        return leaders[0]
                await trio.sleep(self.heartbeat_interval)

    def client(
        self,
        ids: list[int] | None = None,
        *,
        timeout: float = 30.0,
        host: str = "client",
        **options: Any,
    ) -> AbstractAsyncContextManager[CopycatClient]:
        """A client on network host `host` (name hosts apart to cut one client off)."""
        addresses = [self.address(i) for i in (ids or self.all_ids())]
        return open_client(
            addresses, timeout=timeout, transport=self.network.transport(host), **options
        )

    def cut_off_host(self, host: str) -> None:
        """Partition a client host from every server, as if its process died."""
        for member_id in self.all_ids():
            self.network.cut(host, self.address(member_id))


def fake_certificate(common_name: str, *dns_names: str) -> dict[str, Any]:
    """A certificate as ssl's getpeercert() gives it, for MemoryNetwork.certificates."""
    return {
        "subject": ((("commonName", common_name),),),
        "subjectAltName": tuple(("DNS", name) for name in dns_names),
    }


@asynccontextmanager
async def open_memory_cluster(
    size: int,
    state_machine: Callable[[], Any],
    *,
    seed: int = 0,
    election_timeout: float = 1.0,
    heartbeat_interval: float = 0.1,
    storage: Callable[[int], LogStorage] | None = None,
    identities: Mapping[str, str] | None = None,
    **server_options: Any,
) -> AsyncIterator[MemoryCluster]:
    """Bootstrap `size` servers (ids 1..size) on a fresh in-memory network. `identities`:
    client host -> the common name of the certificate its connections show, as if over TLS
    (with `auth=AuthPolicy(...)`, members then check roles; docs/security.md)."""
    network = MemoryNetwork(seed=seed)
    for host, name in (identities or {}).items():
        network.certificates[host] = fake_certificate(name)
    async with open_background_nursery() as nursery:
        cluster = MemoryCluster(
            nursery,
            network,
            state_machine,
            seed=seed,
            election_timeout=election_timeout,
            heartbeat_interval=heartbeat_interval,
            storage=storage,
            server_options=server_options,
        )
        await cluster.bootstrap(list(range(1, size + 1)))
        yield cluster
