"""Fault schedules for simulations: what goes wrong, when, to whom, all drawn from one seed.

A `FaultMix` says which faults a run may suffer and how often; `FaultInjector` plays them against
a `Simulation` as episodes (apply a fault, wait, heal it) until told to stop, then heals
everything. Every choice comes from the injector's own seeded rng, so a seed replays exactly.

Faults:

- partitions: random halves, the leader isolated, a bridge (one member sees both sides, the
  sides not each other), one-way (a member's messages to the others are lost, theirs reach it);
- crashes: a member stops at once and later restarts from its disk (which keeps what was
  durably saved, and a power loss's random part of the rest); sometimes it is crashed in the
  middle of a save;
- lease restarts: the leader is cut off from one follower until that follower campaigns,
  another follower crashes and starts again at once, right after acknowledging the leader, and
  often the leader is then cut off from it too: the leader's lease rests on that acknowledgement;
- pauses: a member freezes (its raft loop stops, its traffic is held) for longer than its
  lease, then resumes and receives everything at once, as after a long GC pause or SIGSTOP;
- clock jumps: a member's wall clock (its log timestamps, when it leads) jumps forward;
- clock drift: each member start runs its monotonic clock (election timer, heartbeats, lease)
  at its own rate, within `clock_drift` of real time;
- disk stalls: a member's saves hang for a while;
- link faults (`LinkFaults`): messages dropped, duplicated and delayed (hence reordered);
- joins: new members join the cluster during the run;
- leadership transfers: an operator asks the leader to hand over to another voter;
- reconfigurations: an operator demotes a voter (the leader too) to PASSIVE or RESERVE and later
  promotes it back, or changes a member's priority (which may make the leader hand over);
  with `replace_after`, leaders replace voters that stay silent by standbys on their own.
"""

from __future__ import annotations

import random
from typing import Protocol

import attrs
import trio

from ..core.raft import Role
from ..protocol.messages import Member, MemberType
from ..transport.memory import LinkFaults, MemoryNetwork
from .cluster import MemoryCluster
from .simdisk import FsDisk, SimDisk
from .trace import Trace


class _Timing(Protocol):
    @property
    def election_timeout(self) -> float: ...
    @property
    def heartbeat_interval(self) -> float: ...


class FaultTarget(Protocol):
    """What a FaultInjector acts on, and all it may touch (a `Simulation` is one)."""

    @property
    def trace(self) -> Trace: ...
    @property
    def cluster(self) -> MemoryCluster: ...
    @property
    def network(self) -> MemoryNetwork: ...
    @property
    def config(self) -> _Timing: ...
    @property
    def client_hosts(self) -> list[str]: ...
    @property
    def disks(self) -> dict[int, SimDisk | FsDisk]: ...

    def current_leaders(self) -> list[int]: ...
    async def add_member(self) -> None: ...
    async def crash(
        self, member_id: int, *, during_save: bool = False, within: float = 1.0
    ) -> bool: ...
    def restart(self, member_id: int) -> None: ...
    async def pause(self, member_id: int, seconds: float) -> None: ...
    def resume_all(self) -> None: ...
    def jump_clock(self, member_id: int, seconds: float) -> None: ...
    async def transfer_leadership(self, target: int, *, timeout: float = 5.0) -> str: ...
    async def reconfigure(self, member: Member, *, timeout: float = 5.0) -> str: ...


__all__ = ["EXTRA_PROFILES", "LEASE_SAFE_DRIFT", "PROFILES", "FaultInjector", "FaultMix"]

LEASE_SAFE_DRIFT = 1 / 7
"""Clock rates within this fraction of real time keep lease reads safe: a leader's lease lasts
0.75 of an election timeout on its clock and followers refuse votes for a whole one on theirs,
so a follower's clock may run at most 4/3 as fast as the leader's, and (1 + 1/7) / (1 - 1/7) is
4/3."""


@attrs.frozen(kw_only=True)
class FaultMix:
    """Which faults a run may suffer: a weight per kind of episode (0: never), link faults that
    apply to every message all along, members to add, and the pacing of episodes."""

    partitions: float = 0.0
    crashes: float = 0.0
    lease_restarts: float = 0.0
    """Crash-restarts timed inside the leader's lease, together with a partition."""
    pauses: float = 0.0
    clock_jumps: float = 0.0
    disk_stalls: float = 0.0
    transfers: float = 0.0
    """Leadership transfers (an operator's TransferRequest to a random voter)."""
    reconfigurations: float = 0.0
    """Member type and priority changes (an operator's ReconfigureRequest)."""
    replace_after: float | None = None
    """The members' `replace_after`: seconds of silence after which a leader replaces a voter
    by a standby (None: never)."""
    clock_drift: float = 0.0
    """Each member start runs its monotonic clock at a rate drawn uniformly within this
    fraction of real time (0: all agree). Below LEASE_SAFE_DRIFT lease reads must stay
    linearizable; beyond it they may break, and only they."""
    link: LinkFaults = attrs.Factory(LinkFaults)
    joins: int = 0
    """Members that join during the run (started at random times in its first half)."""
    concurrency: int = 1
    """Episodes that may be under way at once."""
    gap: tuple[float, float] = (0.3, 2.0)
    """Quiet time between episodes, in seconds (uniform)."""
    length: tuple[float, float] = (0.5, 4.0)
    """How long an episode's fault lasts, in seconds (uniform); pauses last longer than a
    lease whatever this says."""
    torn_saves: float = 0.5
    """Of crashes, the fraction that strike in the middle of a save."""
    correlated_crashes: float = 0.2
    """Of crash episodes, the fraction in which several members crash together."""

    @property
    def episode_weights(self) -> dict[str, float]:
        return {
            "partition": self.partitions,
            "crash": self.crashes,
            "lease_restart": self.lease_restarts,
            "pause": self.pauses,
            "clock": self.clock_jumps,
            "stall": self.disk_stalls,
            "transfer": self.transfers,
            "reconfigure": self.reconfigurations,
        }

    def describe(self) -> str:
        parts = [f"{k}={w:g}" for k, w in self.episode_weights.items() if w]
        link = self.link
        if link.drop or link.duplicate or link.delay:
            parts.append(
                f"link(drop={link.drop:g}, dup={link.duplicate:g}, delay={link.delay:g}"
                f"<={link.max_delay:g}s)"
            )
        if self.joins:
            parts.append(f"joins={self.joins}")
        if self.replace_after is not None:
            parts.append(f"replace_after={self.replace_after:g}s")
        if self.clock_drift:
            parts.append(f"clock_drift={self.clock_drift:.3g}")
        if self.concurrency > 1:
            parts.append(f"concurrency={self.concurrency}")
        return ", ".join(parts) or "none"

    @classmethod
    def named(cls, profile: str, rng: random.Random | None = None) -> FaultMix:
        """One of PROFILES; `rng` varies its rates (a simulation passes its seeded one)."""
        rng = rng or random.Random(0)
        noisy = LinkFaults(
            drop=rng.choice([0.01, 0.03, 0.1]),
            duplicate=rng.choice([0.01, 0.05]),
            delay=rng.choice([0.05, 0.2]),
            max_delay=rng.choice([0.01, 0.05, 0.3]),
        )
        if profile == "none":
            return cls()
        if profile == "partitions":
            return cls(partitions=1)
        if profile == "crashes":
            return cls(
                crashes=1,
                lease_restarts=0.3,
                torn_saves=rng.choice([0.3, 0.8]),
                correlated_crashes=rng.choice([0.1, 0.4]),
                concurrency=rng.choice([1, 2]),
            )
        if profile == "network":
            return cls(link=noisy, partitions=rng.choice([0, 0.3]))
        if profile == "pauses":
            return cls(pauses=1, clock_jumps=0.2, transfers=0.3)
        if profile == "clock":
            return cls(clock_jumps=1, partitions=0.3, lease_restarts=0.3, clock_drift=0.14)
        if profile == "drift-beyond":
            # Clocks beyond the lease's bound: the run checks everything but lease reads.
            return cls(crashes=1, partitions=0.5, lease_restarts=1, clock_drift=0.4)
        if profile == "membership":
            return cls(
                joins=rng.choice([1, 2]),
                crashes=0.5,
                partitions=0.5,
                transfers=1,
                reconfigurations=1,
                replace_after=rng.choice([None, 2.0]),
                link=noisy if rng.random() < 0.3 else LinkFaults(),
            )
        if profile == "snapshots":
            return cls(crashes=1, partitions=0.5, disk_stalls=0.3)
        if profile in ("disk", "disk-beyond"):
            # The real DiskStorage on a simulated file system (simulation.py sets the disk up):
            # crashes are power losses, many in the middle of a save.
            return cls(
                crashes=1,
                lease_restarts=0.3,
                partitions=0.5,
                disk_stalls=0.3,
                torn_saves=rng.choice([0.7, 1.0]),
                correlated_crashes=rng.choice([0.2, 0.5]),
                concurrency=rng.choice([1, 2]),
            )
        if profile == "mixed":
            return cls(
                partitions=1,
                crashes=1,
                lease_restarts=0.3,
                pauses=0.5,
                clock_jumps=0.3,
                disk_stalls=0.3,
                transfers=0.3,
                reconfigurations=0.3,
                link=noisy if rng.random() < 0.5 else LinkFaults(),
                joins=rng.choice([0, 0, 1]),
                concurrency=rng.choice([1, 2]),
                clock_drift=0.1,
            )
        choices = ", ".join((*PROFILES, *EXTRA_PROFILES))
        raise ValueError(f"unknown fault profile {profile!r}; choose from {choices}")


PROFILES = (
    "partitions",
    "crashes",
    "network",
    "pauses",
    "clock",
    "membership",
    "snapshots",
    "mixed",
)
"""The fault profiles seeds cycle through (seed % len(PROFILES)); "none" and "drift-beyond"
(clock rates beyond LEASE_SAFE_DRIFT, lease reads unchecked) are also accepted."""

EXTRA_PROFILES = ("disk", "drift-beyond", "disk-beyond", "none")
"""Profiles outside the seed cycle: crashes and fsync errors on the real disk, clock rates
beyond LEASE_SAFE_DRIFT (lease reads unchecked), disk faults beyond the storage's model (lying
fsyncs, bit flips at rest: simulation.py), no faults."""


class FaultInjector:
    """Plays a FaultMix against a simulation; `run` until cancelled, then `heal_all`."""

    def __init__(self, sim: FaultTarget, mix: FaultMix, rng: random.Random) -> None:
        self.sim = sim
        self.mix = mix
        self.rng = rng
        self.busy: set[int] = set()
        """Members some episode is working on (no other episode touches them meanwhile)."""
        self.crashed: set[int] = set()
        self.paused: dict[int, trio.Event] = {}
        self.joining: set[int] = set()
        self.partitioned = False
        self.episodes = 0
        self.counts: dict[str, int] = {}

    # --- choosing ----------------------------------------------------------------------------

    def _pick(self, candidates: list[int], *, leader_bias: float = 0.5) -> int | None:
        """A member from candidates: the leader with probability leader_bias if it is one."""
        candidates = sorted(candidates)
        if not candidates:
            return None
        leaders = [i for i in self.sim.current_leaders() if i in candidates]
        if leaders and self.rng.random() < leader_bias:
            return leaders[0]
        return self.rng.choice(candidates)

    def _available(self) -> list[int]:
        """Running members no episode is busy with."""
        return [
            i
            for i in sorted(self.sim.cluster.servers)
            if i not in self.busy and i not in self.crashed and i not in self.joining
        ]

    # --- running -----------------------------------------------------------------------------

    async def run(self, until: float) -> None:
        """Episodes until virtual time `until` (joins at random times in the first half)."""
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(self.mix.joins):
                at = self.rng.uniform(start, start + (until - start) / 2)
                nursery.start_soon(self._join_at, at)
            weights = self.mix.episode_weights
            if any(weights.values()):
                for lane in range(self.mix.concurrency):
                    nursery.start_soon(self._lane, lane, until)

    async def _join_at(self, at: float) -> None:
        await trio.sleep_until(at)
        await self.sim.add_member()

    async def _lane(self, lane: int, until: float) -> None:
        kinds = [k for k, w in self.mix.episode_weights.items() if w > 0]
        weights = [self.mix.episode_weights[k] for k in kinds]
        while True:
            await trio.sleep(self.rng.uniform(*self.mix.gap))
            if trio.current_time() >= until:
                return
            kind = self.rng.choices(kinds, weights)[0]
            length = self.rng.uniform(*self.mix.length)
            self.episodes += 1
            self.counts[kind] = self.counts.get(kind, 0) + 1
            await getattr(self, f"_episode_{kind}")(length)

    async def _episode_partition(self, length: float) -> None:
        if self.partitioned:
            return
        ids = [i for i in sorted(self.sim.cluster.servers) if i not in self.joining]
        if len(ids) < 2:
            return
        cluster = self.sim.cluster
        kind = self.rng.choice(["halves", "isolate-leader", "bridge", "one-way"])
        if kind == "halves":
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(ids) - 1)
            a, b = sorted(shuffled[:cut]), sorted(shuffled[cut:])
            cluster.partition(a, b)
            what = f"halves {a} | {b}{self._split_clients(a, b)}"
        elif kind == "isolate-leader":
            victim = self._pick(ids, leader_bias=1.0)
            assert victim is not None
            cluster.isolate(victim)
            leader = " (leader)" if victim in self.sim.current_leaders() else ""
            rest = [i for i in ids if i != victim]
            what = f"isolate {victim}{leader}{self._split_clients([victim], rest)}"
        elif kind == "bridge" and len(ids) >= 3:
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            bridge, rest = shuffled[0], shuffled[1:]
            cut = self.rng.randint(1, len(rest) - 1)
            a, b = sorted(rest[:cut]), sorted(rest[cut:])
            cluster.partition(a, b)
            what = f"bridge {bridge} between {a} | {b}"
        else:
            victim = self._pick(ids, leader_bias=0.7)
            assert victim is not None
            inbound = self.rng.random() < 0.5
            for other in ids:
                if other != victim:
                    source, target = (other, victim) if inbound else (victim, other)
                    cluster.network.cut_one_way(cluster.address(source), cluster.address(target))
            what = f"one-way: {victim} {'hears nobody' if inbound else 'is heard by nobody'}"
        self.partitioned = True
        self.sim.trace.record("fault", f"partition {what} for {length:.2f}s")
        await trio.sleep(length)
        cluster.network.heal()
        self.partitioned = False
        self.sim.trace.record("heal", "partition healed")

    def _split_clients(self, a: list[int], b: list[int]) -> str:
        """Half the time, put each client host on one side: it is cut from the other side's
        members (so some clients can talk only to a deposed leader, as in Jepsen's tests)."""
        hosts = self.sim.client_hosts
        if not hosts or self.rng.random() < 0.5:
            return ""
        cluster = self.sim.cluster
        sides: dict[str, list[str]] = {"a": [], "b": []}
        for host in hosts:
            side, other = (a, "a") if self.rng.random() < 0.5 else (b, "b")
            sides[other].append(host)
            for member_id in b if side is a else a:
                cluster.network.cut(host, cluster.address(member_id))
        return f"; clients {sides['a']} with {a}, {sides['b']} with {b}"

    async def _episode_crash(self, length: float) -> None:
        available = self._available()
        if len(available) >= 2 and self.rng.random() < self.mix.correlated_crashes:
            await self._crash_many(available, length)
            return
        victim = self._pick(available, leader_bias=0.4)
        if victim is None:
            return
        self.busy.add(victim)
        try:
            torn = self.rng.random() < self.mix.torn_saves
            crashed = await self.sim.crash(victim, during_save=torn)
            if not crashed:
                return
            self.crashed.add(victim)
            await trio.sleep(length)
            self.crashed.discard(victim)
            self.sim.restart(victim)
        finally:
            self.busy.discard(victim)

    async def _crash_many(self, available: list[int], length: float) -> None:
        """Several members crash within a few milliseconds (a power loss), most in the
        middle of a save; they come back one by one."""
        victims = sorted(self.rng.sample(available, self.rng.randint(2, len(available))))
        self.sim.trace.record("fault", f"power loss: {victims} crash together")
        self.busy.update(victims)
        try:
            async with trio.open_nursery() as nursery:
                for victim in victims:
                    torn = self.rng.random() < self.mix.torn_saves
                    within = self.rng.choice([0.005, 0.05, 0.3])
                    nursery.start_soon(self._crash_one, victim, torn, within)
            await trio.sleep(length)
            self.rng.shuffle(victims)
            for victim in victims:
                if victim in self.crashed:
                    self.crashed.discard(victim)
                    self.sim.restart(victim)
                    await trio.sleep(self.rng.uniform(0.0, 0.5))
        finally:
            self.busy.difference_update(victims)

    async def _crash_one(self, victim: int, torn: bool, within: float) -> None:
        if await self.sim.crash(victim, during_save=torn, within=within):
            self.crashed.add(victim)

    async def _episode_lease_restart(self, length: float) -> None:
        """Issue 10's race. The leader L is cut off from follower B until B's election timer
        has fired; the clients are cut off from L and A except one, which can reach only L
        (so nothing lengthens L's log past B's but that client's keep-alives). Follower A then
        crashes and starts again at once, just after acknowledging a heartbeat round of L's,
        and L is cut off from A too (most of the time); once A is up, B's timer fires again.
        L still holds a lease that counts on A's acknowledgement while B asks for A's vote."""
        leaders = self.sim.current_leaders()
        if self.partitioned or len(leaders) != 1 or leaders[0] in self.busy:
            return
        leader = leaders[0]
        followers = [i for i in self._available() if i != leader]
        if len(followers) < 2:
            return
        cut_off, victim = self.rng.sample(followers, 2)
        cluster, config = self.sim.cluster, self.sim.config
        address = cluster.address
        self.partitioned = True
        self.busy.update((leader, cut_off, victim))
        try:
            cluster.partition([leader], [cut_off])
            hosts = sorted(self.sim.client_hosts)
            reader = self.rng.choice(hosts) if hosts else None
            for host in hosts:
                for member_id in [cut_off, victim] if host == reader else [leader, victim]:
                    cluster.network.cut(host, address(member_id))
            self.sim.trace.record(
                "fault",
                f"lease restart: leader {leader} cut off from {cut_off} (and clients but "
                f"{reader}), {victim} next",
            )
            await trio.sleep(config.election_timeout * self.rng.uniform(1.0, 2.0))
            await trio.sleep(self.rng.uniform(0.0, config.heartbeat_interval))
            if not await self.sim.crash(victim):
                return
            self.sim.restart(victim)
            if self.rng.random() < 0.8:
                cluster.partition([leader], [victim])
                self.sim.trace.record("fault", f"leader {leader} cut off from {victim} too")
            with trio.move_on_after(config.election_timeout):
                while victim not in cluster.servers or cluster.servers[victim]._loop is None:
                    await trio.sleep(0.001)
                await trio.sleep(self.rng.uniform(0.0, 0.01))
                server = cluster.servers.get(cut_off)
                loop = server._loop if server is not None else None
                if loop is not None and loop.core.role is not Role.LEADER:
                    self.sim.trace.record("fault", f"{cut_off}'s election timer fires")
                    await loop.call(lambda core, now: core.campaign(now))
            await trio.sleep(length)
        finally:
            cluster.network.heal()
            self.partitioned = False
            self.busy.difference_update((leader, cut_off, victim))
            self.sim.trace.record("heal", "lease restart healed")

    async def _episode_pause(self, length: float) -> None:
        victim = self._pick(self._available(), leader_bias=0.7)
        if victim is None:
            return
        # Longer than the lease (0.75 of the election timeout) and usually than an election.
        length = max(length, self.rng.uniform(1.0, 3.0) * self.sim.config.election_timeout)
        self.busy.add(victim)
        try:
            await self.sim.pause(victim, length)
        finally:
            self.busy.discard(victim)

    async def _episode_clock(self, length: float) -> None:
        victim = self._pick(self._available(), leader_bias=0.7)
        if victim is None:
            return
        jump = self.rng.choice([0.5, 2.0, 8.0, 30.0]) * self.rng.uniform(0.5, 1.5)
        self.sim.jump_clock(victim, jump)
        await trio.sleep(length)

    async def _episode_transfer(self, length: float) -> None:
        leaders = self.sim.current_leaders()
        if len(leaders) != 1:
            return
        candidates = [i for i in self._available() if i != leaders[0]]
        if not candidates:
            return
        target = self.rng.choice(candidates)
        self.sim.trace.record("fault", f"transfer leadership {leaders[0]} -> {target}")
        outcome = await self.sim.transfer_leadership(target, timeout=length)
        self.sim.trace.record("fault", f"transfer to {target}: {outcome}")

    async def _episode_reconfigure(self, length: float) -> None:
        """Demote a voter (the leader a third of the time) and promote it back after `length`;
        or, one time in four, give a member another priority."""
        leaders = self.sim.current_leaders()
        if len(leaders) != 1:
            return
        members = self.sim.cluster.servers[leaders[0]].status().members
        if self.rng.random() < 0.25:
            member = self.rng.choice(sorted(members, key=lambda m: m.id))
            priority = self.rng.choice([0, 1, 2])
            self.sim.trace.record("fault", f"priority of {member.id}: {priority}")
            outcome = await self.sim.reconfigure(attrs.evolve(member, priority=priority))
            self.sim.trace.record("fault", f"priority of {member.id}: {outcome}")
            return
        available = set(self._available())
        voters = [m for m in members if m.type is MemberType.ACTIVE]
        candidates = [m.id for m in voters if m.id in available]
        if len(voters) < 3 or not candidates:
            return  # keep at least two voters
        victim = self._pick(candidates, leader_bias=1 / 3)
        assert victim is not None
        member = next(m for m in voters if m.id == victim)
        kind = self.rng.choice([MemberType.PASSIVE, MemberType.RESERVE])
        leader = " (leader)" if victim in leaders else ""
        self.sim.trace.record("fault", f"demote {victim}{leader} to {kind.name}")
        outcome = await self.sim.reconfigure(attrs.evolve(member, type=kind))
        self.sim.trace.record("fault", f"demote {victim}: {outcome}")
        await trio.sleep(length)
        steps = [MemberType.ACTIVE] if kind is MemberType.PASSIVE else []
        if kind is MemberType.RESERVE:
            steps = [MemberType.PASSIVE, MemberType.ACTIVE]
        for step in steps:
            for _attempt in range(5):  # promotion waits until it has caught up
                outcome = await self.sim.reconfigure(attrs.evolve(member, type=step))
                self.sim.trace.record("fault", f"promote {victim} to {step.name}: {outcome}")
                if outcome.startswith("done"):
                    break
                await trio.sleep(0.5)

    async def _episode_stall(self, length: float) -> None:
        victim = self._pick(self._available(), leader_bias=0.5)
        if victim is None:
            return
        self.sim.disks[victim].stall(length)
        self.sim.trace.record("fault", f"disk of {victim} stalls for {length:.2f}s")
        await trio.sleep(length)

    # --- the end -----------------------------------------------------------------------------

    def heal_all(self) -> None:
        """Undo every fault still in force: cuts, link faults, holds; restart the crashed."""
        network = self.sim.network
        network.heal()
        network.faults = LinkFaults()
        self.partitioned = False
        for member_id in sorted(self.crashed):
            self.sim.restart(member_id)
        self.crashed.clear()
        for disk in self.sim.disks.values():
            disk.unstall()
        self.sim.resume_all()
        self.sim.trace.record("heal", "all faults healed")
