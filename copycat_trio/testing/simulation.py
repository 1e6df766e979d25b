"""Deterministic simulation: a whole cluster, its clients and its faults in one seeded Trio run.

    result = run_simulation(7)                  # the key-value workload under seed 7's faults
    assert result.ok, result.report()

Everything runs in one `trio.run` on `MockClock(autojump_threshold=0)`: N servers on the
in-memory network, each on the real DiskStorage over a simulated file system that a crash
power-cycles (`FsDisk`: torn unsynced sectors, lost unsynced names, fsync EIO; lying fsyncs and
bit flips in `disk-beyond`), clients on the built-in key-value store, and a `FaultInjector` that
partitions, crashes, pauses, skews clocks, stalls disks, drops, duplicates and delays messages
and adds members. Every random choice comes from the seed: the configuration, the faults, the
workload, each server's rng, client ids, the simulated disks and network, and Trio's own
scheduling order (`seed_trio_scheduler`). The same seed therefore gives the same run, and
`Trace.digest()` proves it.

While it runs, `InvariantChecker` watches every member (one leader per term, log matching,
leader completeness, the same command at each applied index, each session command applied once).
At the end the faults are healed, the cluster must elect a leader, fresh reads of every key are
added to the history, every member must converge on the same state, and the history must be
linearizable (`copycat_trio.testing.linearizability.check`).

From the command line (`nox -s simulate` runs this):

    python -m copycat_trio.testing.simulation --seeds 200 --jobs 2
    python -m copycat_trio.testing.simulation --seed 17        # replay one, verbosely
    python -m copycat_trio.testing.simulation --workload resources --seeds 50  # locks, queue, watch

For your own state machine, `open_simulation` gives the same cluster and faults inside a test;
see docs/testing.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from .._nursery import open_background_nursery
from ..client.client import CopycatClient
from ..core.raft import CommittedEntryConflictError, Role, TermBehindLogError
from ..protocol.errors import CopycatError, NoLeaderError, UnknownSessionError
from ..protocol.messages import ConfigurationEntry, Member, MemberType
from ..recipes.kv import Get, KeyValueStore
from ..storage.errors import StorageCorruptionError, StorageError
from ..transport.base import TransportError
from ..transport.memory import MemoryNetwork
from .cluster import MemoryCluster
from .event_workload import EventRecord, EventWorkload
from .faults import LEASE_SAFE_DRIFT, PROFILES, FaultInjector, FaultMix
from .history import History, OpKind, Outcome
from .invariants import Applied, InvariantChecker, observe
from .linearizability import CheckResult, check
from .pipeline_workload import PipelineRecord, PipelineWorkload
from .resource_machine import ProbedResources, ResourceProbe
from .resource_scenario import run_resource_scenario
from .resource_workload import ResourceWorkload
from .sim_machine import SimStore, sim_state
from .sim_watch import CpuWatchdog, deadlock_sentinel
from .simdisk import FsDisk, SimDisk
from .trace import Trace
from .workload import KvWorkload

__all__ = [
    "PROFILES",
    "FaultMix",
    "KvWorkload",
    "Simulation",
    "SimulationConfig",
    "SimulationFailure",
    "SimulationResult",
    "Trace",
    "open_simulation",
    "run_simulation",
    "seed_trio_scheduler",
]

log = logging.getLogger(__name__)


# --- determinism -------------------------------------------------------------------------------


def seed_trio_scheduler(seed: int | str) -> Callable[[], None]:
    """Make Trio's scheduling order a function of `seed`; returns a function that undoes it.

    Trio runs each batch of runnable tasks in a random order drawn from the module-level
    `trio._core._run._r` (a random.Random). Trio has no public API for this; its Hypothesis
    plugin does the same thing: with `_ALLOW_DETERMINISTIC_SCHEDULING` set, each batch is first
    sorted by task creation order (so ties between equal deadlines, broken by `id()`, do not
    matter) and then shuffled by `_r`, which we seed. Call it before `trio.run`, or at the top
    of a test that must replay (tasks created earlier keep their relative order).
    """
    from trio._core import _run

    previous_flag = _run._ALLOW_DETERMINISTIC_SCHEDULING
    previous_state = _run._r.getstate()
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(f"trio-scheduler:{seed}")

    def restore() -> None:
        _run._ALLOW_DETERMINISTIC_SCHEDULING = previous_flag  # type: ignore[misc]
        _run._r.setstate(previous_state)

    return restore


STORM_THRESHOLD = 5_000
"""Frames within 10 ms of virtual time that count as a message storm (busy runs send a few
hundred)."""

DISK_PROFILES = ("disk", "disk-beyond")
"""Profiles that run the real DiskStorage on simulated file systems (SimulationConfig.disk)."""

SCHEDULE_KINDS = (
    "fault",
    "heal",
    "crash",
    "restart",
    "pause",
    "resume",
    "clock",
    "join",
    "torn",
    "disk",
)
"""The trace lines that make up a run's fault schedule."""


# --- configuration -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SimulationConfig:
    """Everything a run depends on besides its seed's random streams."""

    seed: int
    profile: str = "mixed"
    servers: int = 3
    duration: float = 20.0
    """Virtual seconds of workload under faults (then healing, final reads, convergence)."""
    election_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    disk_latency: float = 0.002
    disk: str = "fs"
    """Each member's storage: "fs", the real DiskStorage (segmented log, meta file, snapshot
    store) on a SimFileSystem that each start power-cycles (testing/simdisk.py FsDisk); or
    "sim", a SimDisk (MemoryStorage whose saves take time and can be torn; a test can look at
    its entries)."""
    fsync_errors: float = 0.0
    """With disk "fs": the probability each fsync of a bootstrap member, once it has started,
    fails with EIO (its storage is poisoned, the server stops, the run restarts it later)."""
    fsync_lies: float = 0.0
    """With disk "fs": the probability an fsync returns without making anything durable
    (beyond the storage's model)."""
    bit_flips: float = 0.0
    """With disk "fs": the probability each restart of one chosen bootstrap member first flips
    a bit at rest in a valid record or its meta file (beyond the model; it must refuse to
    start, and then stays down)."""
    snapshot_every: int | None = None
    """Applied entries between snapshots; None: no snapshots (the log is never compacted)."""
    catch_up_entries: int = 1_000
    faults: FaultMix = attrs.Factory(FaultMix)
    workload: KvWorkload = attrs.Factory(KvWorkload)
    pipeline: PipelineWorkload | None = None
    """Pipelining clients beside the key-value workload (pipeline_workload.py); None: none."""
    events: EventWorkload | None = None
    """Event and timer clients beside it (event_workload.py, on the SimStore); None: none."""
    scenario: str = "kv"
    """What the run is: "kv", the key-value workload with its pipelining and event clients on
    the SimStore; or "resources", `resources` alone on the Resources state machine."""
    resources: ResourceWorkload = attrs.Factory(ResourceWorkload)
    """The clients of the "resources" scenario (resource_workload.py)."""
    poll_interval: float = 0.005
    """How often (virtual seconds) the invariant checker looks at every member."""
    settle_timeout: float = 60.0
    """After healing: virtual seconds for a leader to emerge and members to converge."""
    wall_limit: float = 300.0
    """CPU seconds (of this process) before a run is stopped and reported as stuck. CPU time,
    not real time: a run starved by a busy machine is slow, not stuck."""

    @classmethod
    def for_seed(cls, seed: int, profile: str | None = None, **overrides: Any) -> SimulationConfig:
        """The configuration seed `seed` stands for: its profile is PROFILES[seed % 8] unless
        given, and its sizes and rates are drawn from the seed."""
        rng = random.Random(f"config:{seed}")
        profile = profile or PROFILES[seed % len(PROFILES)]
        servers = rng.choice([3, 3, 5])
        snapshot_every = rng.choice([None, None, 30, 80])
        catch_up = rng.choice([0, 10, 1000])
        if profile in ("snapshots", "mixed"):
            snapshot_every = rng.choice([10, 20, 40])
            catch_up = rng.choice([0, 3, 10])
        faults = FaultMix.named(profile, rng)
        # Its own stream, so that drawing it shifts none of the draws above.
        disk_rng = random.Random(f"disk:{seed}")
        disk: dict[str, Any] = {}
        if profile in ("crashes", "snapshots", "mixed"):
            disk["fsync_errors"] = disk_rng.choice([0.0, 0.0, 0.001, 0.003])
        if profile in DISK_PROFILES:
            snapshot_every = disk_rng.choice([None, 10, 20, 40])
            disk["fsync_errors"] = disk_rng.choice([0.001, 0.003])
            if profile == "disk-beyond":
                disk["fsync_lies"] = disk_rng.choice([0.01, 0.03, 0.1])
                disk["bit_flips"] = disk_rng.choice([0.5, 1.0])
        check_lease_reads = faults.clock_drift < LEASE_SAFE_DRIFT
        workload = KvWorkload(
            clients=rng.choice([3, 4, 5]),
            keys=rng.choice([1, 2, 3]),
            max_ops=rng.choice([80, 120, 250]),
            bursty=rng.choice([0.0, 0.5]),
            lease_reads=rng.choice([0.0, 0.3]),
            check_lease_reads=check_lease_reads,
        )
        values: dict[str, Any] = {
            "seed": seed,
            "profile": profile,
            "servers": servers,
            "duration": round(rng.uniform(12, 20), 3),
            "snapshot_every": snapshot_every,
            "catch_up_entries": catch_up,
            "faults": faults,
            "workload": workload,
            "disk_latency": rng.choice([0.0005, 0.002, 0.01]),
            **disk,
        }
        # Its own stream, so that drawing it shifts none of the draws above.
        values["pipeline"] = PipelineWorkload.draw(random.Random(f"pipeline:{seed}"))
        values["events"] = EventWorkload.draw(random.Random(f"events:{seed}"))
        values["resources"] = ResourceWorkload.draw(random.Random(f"resources:{seed}"))
        values.update(overrides)
        return cls(**values)

    def describe(self) -> str:
        w = self.workload
        snapshots = f"every {self.snapshot_every}" if self.snapshot_every else "off"
        disk = ""
        if self.disk == "fs":
            disk = f", DiskStorage on a simulated file system (fsync EIO {self.fsync_errors:g}"
            if self.fsync_lies:
                disk += f", fsync lies {self.fsync_lies:g}"
            if self.bit_flips:
                disk += f", bit flips {self.bit_flips:g}"
            disk += ")"
        clients = f"{w.clients} clients on {w.keys} key(s)"
        if self.scenario == "resources":
            clients = self.resources.describe()
        return (
            f"seed {self.seed}, profile {self.profile}: {self.servers} servers, "
            f"{clients} for {self.duration:g}s, snapshots "
            f"{snapshots} (catch-up {self.catch_up_entries}), disk latency "
            f"{self.disk_latency * 1000:g}ms{disk}; faults: {self.faults.describe()}"
        )


class SimulationFailure(AssertionError):
    """A simulation broke an invariant (or its history was not linearizable)."""


# --- the running simulation -------------------------------------------------------------------


class Simulation:
    """A cluster under faults, with the tools a test needs: clients, the trace, the checker.

    Get one from `open_simulation`. Members are ids 1..servers; joined members follow.
    """

    def __init__(
        self,
        config: SimulationConfig,
        nursery: trio.Nursery,
        state_machine: Callable[[], Any],
    ) -> None:
        self.config = config
        self.seed = config.seed
        self.nursery = nursery
        self.trace = Trace()
        self.history = History(clock=trio.current_time)
        self.invariants = InvariantChecker(self.trace.record)
        self.network = MemoryNetwork(seed=0)
        self.network.rng = self.rng("network")
        self.network.nursery = nursery
        self.network.faults = config.faults.link
        self.network.storm_threshold = STORM_THRESHOLD
        self.network.on_storm = self._on_storm
        self.abort_scope: trio.CancelScope | None = None
        """Cancelled when the run cannot usefully go on (a message storm)."""
        self.disks: dict[int, SimDisk | FsDisk] = {}
        self.corrupt: dict[int, str] = {}
        """Members that refused to start on damaged storage (kept down), with the error."""
        self.storage_failures = 0
        """Servers stopped by a failed storage (fsync EIO) and restarted later."""
        self.flip_victim: int | None = None
        """The one member whose restarts may flip a bit at rest (disk-beyond)."""
        if config.disk == "fs" and config.bit_flips:
            self.flip_victim = self.rng("bit-flips").randint(1, config.servers)
        options: dict[str, Any] = {"catch_up_entries": config.catch_up_entries}
        if config.faults.replace_after is not None:
            options["replace_after"] = config.faults.replace_after
        if config.snapshot_every is not None:
            options["snapshot_every"] = config.snapshot_every
        self.cluster = MemoryCluster(
            nursery,
            self.network,
            state_machine,
            seed=config.seed,
            election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval,
            storage=self._disk,
            server_options=options,
        )
        if config.disk == "fs":
            self.cluster.on_server_error = self._on_server_error
        self.cluster.observe_state_machine = self._observe
        if config.faults.clock_drift:
            self.cluster.clock_rate = self._clock_rate(config.faults.clock_drift)
        self.member_ids: list[int] = list(range(1, config.servers + 1))
        self.bootstrap_ids = list(self.member_ids)
        self.injector = FaultInjector(self, config.faults, self.rng("faults"))
        self._paused: dict[int, trio.Event] = {}
        self.client_hosts: list[str] = []
        """Network hosts of the workload's clients (partitions may put them on a side)."""
        self._clients = 0
        self._faults_scope: trio.CancelScope | None = None

    def _on_storm(self, at: float, frames: int) -> None:
        self.invariants.violation(
            f"message storm: over {frames - 1} frames sent within 10ms at virtual time "
            f"{at:.4f} (a flood on a real network; here, with no latency, time barely moves). "
            f"State: {self._status_line()}"
        )
        if self.abort_scope is not None:
            self.abort_scope.cancel()

    # --- seeded pieces -------------------------------------------------------------------------

    def rng(self, name: str) -> random.Random:
        """A random stream of its own for `name`, drawn from the seed (stable across runs)."""
        return random.Random(f"{self.seed}:{name}")

    def _clock_rate(self, drift: float) -> Callable[[int], float]:
        """Draws each member start's monotonic clock rate, within `drift` of real time."""
        rates = self.rng("clock-rates")

        def rate(member_id: int) -> float:
            drawn = 1 + rates.uniform(-drift, drift)
            self.trace.record("clock", f"{member_id} starts with its clock at rate {drawn:.3f}")
            return drawn

        return rate

    def _disk(self, member_id: int) -> SimDisk | FsDisk:
        disk = self.disks.get(member_id)
        if disk is None:
            if self.config.disk == "fs":
                disk = FsDisk(
                    f"member{member_id}",
                    self.rng(f"disk{member_id}"),
                    latency=self.config.disk_latency,
                    entries_per_segment=16,
                )
                disk.fs.fsync_lies = self.config.fsync_lies
                disk.tearing_crashes = True
                disk.on_flip = lambda text: self.trace.record("disk", text)
            elif self.config.disk == "sim":
                disk = SimDisk(
                    f"member{member_id}",
                    self.rng(f"disk{member_id}"),
                    latency=self.config.disk_latency,
                    snapshots=self.config.snapshot_every is not None,
                )
            else:
                raise ValueError(f"unknown disk {self.config.disk!r}: choose sim or fs")
            disk.on_torn = lambda text: self.trace.record("torn", text)
            self.disks[member_id] = disk
        return disk

    def _lies_lost(self) -> int:
        """How many lying fsyncs have lost data at a power loss so far, over every disk."""
        return sum(d.fs.lies_lost for d in self.disks.values() if isinstance(d, FsDisk))

    def disk_violations(self) -> list[str]:
        """What the real disk got wrong: bit flips at rest that a start did not detect."""
        return [
            f"disk: {text}, yet the member started (the damage went undetected)"
            for disk in self.disks.values()
            if isinstance(disk, FsDisk)
            for text in disk.undetected_flips
        ]

    def arm_disk_faults(self, member_ids: Sequence[int]) -> None:
        """Let the configured fsync errors and bit flips strike these (started) members."""
        for member_id in member_ids:
            disk = self.disks.get(member_id)
            if isinstance(disk, FsDisk):
                disk.fs.fsync_errors = self.config.fsync_errors
                if member_id == self.flip_victim:
                    disk.flip_on_load = self.config.bit_flips

    def _on_server_error(self, member_id: int, error: BaseException) -> bool:
        """A server of the real disk stopped with an exception: a StorageError (an fsync's EIO,
        or damage found at start) or an EIO itself (the snapshot store lets it out) is what
        the disk faults cause, and it stops that member only (True); so is a leader that
        contradicts its committed entries once a lying fsync has lost data (True, reported
        beyond the model), or one that wins an election below its own log's term (the same);
        anything else is a bug, and ends the run (False)."""
        leaves = _leaves(error)
        explained = _disk_fault if not self._lies_lost() else _disk_fault_or_conflict
        if not leaves or not all(explained(e) for e in leaves):
            return False
        self.cluster.servers.pop(member_id, None)
        conflicts = [e for e in leaves if isinstance(e, _LOST_WRITES)]
        if conflicts:
            # Only lost acknowledged entries explain it, and a lying fsync has lost some: a
            # violation that the run reports as beyond the model. The member stays down, as
            # the operator would keep it until the cluster is restored.
            self.trace.record("raft", f"{member_id} stops: {_first_line(conflicts[0])}")
            self.invariants.violation(f"member {member_id} stopped: {conflicts[0]}")
            if member_id in self.member_ids:
                self.member_ids.remove(member_id)
            return True
        corrupt = [e for e in leaves if isinstance(e, StorageCorruptionError)]
        if corrupt:
            # As an operator would until the member is restored: it stays down.
            self.corrupt[member_id] = str(corrupt[0])
            self.trace.record("disk", f"{member_id} refuses to start: {_first_line(corrupt[0])}")
            if not (self.config.fsync_lies or self.config.bit_flips):
                self.invariants.violation(
                    f"disk: member {member_id} refuses to start after faults the storage must "
                    f"survive (power losses, torn writes, lost names, EIO): {corrupt[0]}"
                )
            if member_id in self.member_ids:
                self.member_ids.remove(member_id)
            return True
        self.storage_failures += 1
        self.trace.record("disk", f"{member_id} stopped: storage failed: {_first_line(leaves[0])}")
        self.injector.crashed.add(member_id)
        self.nursery.start_soon(self._restart_failed, member_id)
        return True

    async def _restart_failed(self, member_id: int) -> None:
        """Restart a member its storage stopped, after a while (a supervisor's restart)."""
        await trio.sleep(self.rng(f"restart-failed{self.storage_failures}").uniform(0.2, 2.0))
        while member_id in self.injector.busy:
            await trio.sleep(0.5)
        if member_id in self.injector.crashed:  # else heal_all has restarted it
            self.injector.crashed.discard(member_id)
            self.restart(member_id)

    def _observe(self, member_id: int, state_machine: Any) -> Any:
        return observe(state_machine, member_id, self._on_apply, self.invariants.on_fire)

    def _on_apply(self, applied: Applied) -> None:
        self.invariants.on_apply(applied)

    # --- looking ---------------------------------------------------------------------------

    def current_leaders(self) -> list[int]:
        return sorted(i for i, s in self.cluster.servers.items() if s.is_leader)

    def client(
        self, *, host: str = "client", name: str | None = None, **options: Any
    ) -> AbstractAsyncContextManager[CopycatClient]:
        """A client of every member (ids 1..n and joined ones) with a seeded client id.

        NoLeaderError, which every workload takes as a fault to wait out, once no member is
        left: each refused to start (its disk held data that lying fsyncs had lost,
        disk-beyond) and stays down, as an operator would keep it."""
        self._clients += 1
        client_id = f"sim{self.seed}-{name or self._clients}"
        if not self.member_ids:
            raise NoLeaderError("no member of the simulated cluster is left: none can start")
        return self.cluster.client(
            sorted(self.member_ids), host=host, client_id=client_id, **options
        )

    # --- faults ----------------------------------------------------------------------------

    def start_faults(self, seconds: float) -> None:
        """Play the configured faults in the background for `seconds` (then `heal`)."""
        self.nursery.start_soon(self.run_faults, trio.current_time() + seconds)

    async def run_faults(self, until: float) -> None:
        """Play the configured FaultMix until virtual time `until` (or `heal`)."""
        with trio.CancelScope() as scope:
            self._faults_scope = scope
            await self.injector.run(until)

    async def crash(
        self, member_id: int, *, during_save: bool = False, within: float = 1.0
    ) -> bool:
        """Crash a member (in the middle of its next save if asked and one comes `within`
        seconds, else at the end of them). Returns whether it was running."""
        if member_id not in self.cluster.servers:
            return False
        if during_save:
            fired = trio.Event()
            disk = self.disks[member_id]

            def hook() -> None:
                self._crash_now(member_id, " in the middle of a save")
                fired.set()

            disk.crash_on_next_save = hook
            with trio.move_on_after(within):
                await fired.wait()
            disk.crash_on_next_save = None
            if fired.is_set():
                return True
            if member_id not in self.cluster.servers:
                return False
        self._crash_now(member_id, "")
        return True

    def _crash_now(self, member_id: int, how: str) -> None:
        leader = " (leader)" if member_id in self.current_leaders() else ""
        self.trace.record("crash", f"{member_id}{leader}{how}")
        self.cluster.crash(member_id)

    def restart(self, member_id: int) -> None:
        """Start a crashed member again from its disk (in the background)."""
        if member_id in self.corrupt:
            return
        if member_id in self.bootstrap_ids:
            self.trace.record("restart", f"{member_id}")
            self.cluster.restart_soon(member_id)
            return
        disk = self.disks[member_id]
        if isinstance(disk, FsDisk):
            self.nursery.start_soon(self._restart_joined_from_files, member_id, disk)
            return
        self._restart_joined(member_id, self._known_configuration(member_id))

    async def _restart_joined_from_files(self, member_id: int, disk: FsDisk) -> None:
        """A joined member on the real disk: once its server has stopped, read its files as a
        start would, to learn whether they hold a configuration that includes it."""
        stopped = self.cluster.stopped.get(member_id)
        if stopped is not None:
            await stopped.wait()
        entries, has_snapshot = await disk.peek()
        self._restart_joined(member_id, self._configuration_in(member_id, entries, has_snapshot))

    def _restart_joined(self, member_id: int, members: list[Member] | None) -> None:
        if members is None:
            self.trace.record("restart", f"{member_id} (joins again: it kept no configuration)")
            self.nursery.start_soon(self._join, member_id)
        else:
            self.trace.record("restart", f"{member_id} (joined member)")
            self.cluster.restart_soon(member_id, members)

    def _known_configuration(self, member_id: int) -> list[Member] | None:
        """The members a joined member's disk knows, if they include it."""
        disk = self.disks[member_id]
        assert isinstance(disk, SimDisk)
        has_snapshot = disk.snapshots is not None and bool(disk.snapshots._files)
        return self._configuration_in(member_id, disk.entries, has_snapshot)

    def _configuration_in(
        self, member_id: int, entries: Sequence[Any], has_snapshot: bool
    ) -> list[Member] | None:
        """The last configuration in `entries` if it includes the member; with none, and a
        snapshot (which holds the configuration), any member list that includes it."""
        for entry in reversed(entries):
            if isinstance(entry, ConfigurationEntry):
                members = list(entry.members)
                return members if any(m.id == member_id for m in members) else None
        if has_snapshot:
            return self.cluster.members(sorted(self.member_ids))
        return None

    async def pause(self, member_id: int, seconds: float) -> None:
        """Freeze a member for `seconds`: its raft loop stops (so its timers do nothing) and
        its traffic is held, both ways; then everything held is delivered at once."""
        server = self.cluster.servers.get(member_id)
        loop = server._loop if server is not None else None
        if loop is None:
            return
        resume = self._paused[member_id] = trio.Event()
        address = self.cluster.address(member_id)
        leader = " (leader)" if member_id in self.current_leaders() else ""
        self.trace.record("pause", f"{member_id}{leader} for {seconds:.2f}s")

        async def gate(_storage: object, _result: object) -> None:
            await resume.wait()

        self.network.hold(address)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop.call, lambda _core, _now: None, gate)
                with trio.move_on_after(seconds):
                    await resume.wait()
                nursery.cancel_scope.cancel()
        finally:
            resume.set()
            self._paused.pop(member_id, None)
            self.network.release(address)
            self.trace.record("resume", f"{member_id}")

    def resume_all(self) -> None:
        for event in list(self._paused.values()):
            event.set()

    def jump_clock(self, member_id: int, seconds: float) -> None:
        """Step a member's wall clock (its log timestamps) forward by `seconds`."""
        offset = self.cluster.clock_offsets.get(member_id, 0.0) + seconds
        self.cluster.clock_offsets[member_id] = offset
        leader = " (leader)" if member_id in self.current_leaders() else ""
        self.trace.record("clock", f"{member_id}{leader} wall clock +{seconds:.2f}s")

    async def add_member(self) -> None:
        """Start a new member that joins the cluster (in the background)."""
        member_id = max(self.member_ids) + 1
        self.member_ids.append(member_id)
        self.injector.joining.add(member_id)
        self.nursery.start_soon(self._join, member_id)
        await trio.lowlevel.checkpoint()

    async def _join(self, member_id: int) -> None:
        self.injector.joining.add(member_id)
        running = sorted(i for i in self.cluster.servers if i != member_id)
        rng = self.injector.rng
        via = rng.sample(running, k=min(len(running), 2)) if running else self.bootstrap_ids
        self.trace.record("join", f"{member_id} via {via}")
        try:
            await self.cluster.join(member_id, via)
            self.trace.record("join", f"{member_id} joined")
        finally:
            self.injector.joining.discard(member_id)

    async def transfer_leadership(self, target: int, *, timeout: float = 5.0) -> str:
        """Ask the cluster (any member) to hand leadership to `target`, as an operator would;
        returns how it went, in words."""
        from ..client.admin import admin_request
        from ..protocol.messages import TransferRequest

        addresses = [self.cluster.address(i) for i in sorted(self.member_ids)]
        try:
            response = await admin_request(
                addresses,
                TransferRequest(member=target),
                timeout=timeout,
                transport=self.network.transport("admin"),
            )
        except CopycatError as exc:
            return f"refused: {type(exc).__name__}: {exc}"
        return f"done, leader {getattr(response, 'leader', None)}"

    async def reconfigure(self, member: Member, *, timeout: float = 5.0) -> str:
        """Ask the cluster to change a member's type or priority, as an operator would;
        returns how it went, in words."""
        from ..client.admin import admin_request
        from ..protocol.messages import ReconfigureRequest

        addresses = [self.cluster.address(i) for i in sorted(self.member_ids)]
        try:
            await admin_request(
                addresses,
                ReconfigureRequest(member=member),
                timeout=timeout,
                transport=self.network.transport("admin"),
            )
        except CopycatError as exc:
            return f"refused: {type(exc).__name__}: {exc}"
        return "done"

    async def heal(self) -> None:
        """Stop injecting faults and undo every one still in force."""
        if self._faults_scope is not None:
            self._faults_scope.cancel()
        await trio.lowlevel.checkpoint()
        self.injector.heal_all()

    # --- the end ---------------------------------------------------------------------------

    async def settle(self, timeout: float | None = None) -> int | None:
        """Wait until every member runs and all agree on one leader and term; its id, or None
        (recorded as a liveness failure) if that does not happen within `timeout`."""
        timeout = self.config.settle_timeout if timeout is None else timeout
        with trio.move_on_after(timeout):
            while True:
                leader = self._agreed_leader()
                if leader is not None:
                    self.trace.record("settled", f"leader {leader}")
                    return leader
                await trio.sleep(0.05)
        self.invariants.violation(
            f"liveness: no leader that every member agrees on {timeout:g}s after healing "
            f"({self._status_line()})"
        )
        return None

    def _agreed_leader(self) -> int | None:
        if self.injector.joining or any(i not in self.cluster.servers for i in self.member_ids):
            return None
        cores = []
        for server in self.cluster.servers.values():
            if server._loop is None:
                return None
            cores.append(server._loop.core)
        leaders = {c.id for c in cores if c.role.value == "leader"}
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        term = next(c.term for c in cores if c.id == leader)
        if all(c.leader == leader and c.term == term for c in cores):
            return leader
        return None

    def _reserve_ids(self) -> set[int]:
        """Members the leader's configuration makes RESERVE: they keep no log, so they lag."""
        for server in self.cluster.servers.values():
            if server._loop is not None and server._loop.core.role is Role.LEADER:
                return {m.id for m in server._loop.core.members if m.type is MemberType.RESERVE}
        return set()

    def _status_line(self) -> str:
        parts = []
        for member_id in sorted(self.member_ids):
            server = self.cluster.servers.get(member_id)
            if server is None or server._loop is None:
                parts.append(f"{member_id}: down")
                continue
            core = server._loop.core
            parts.append(
                f"{member_id}: {core.role.value} term {core.term} leader {core.leader} "
                f"commit {core.commit_index} last {core.log.last_index}"
            )
        return "; ".join(parts)

    async def converge(
        self, state: Callable[[Any], Any] | None = None, timeout: float = 30.0
    ) -> bool:
        """Wait until every member that receives the log (RESERVE members do not) has applied
        the same index, then compare `state(sm)` across them (if given). False (recorded as a
        failure) if they do not converge."""
        with trio.move_on_after(timeout):
            while True:
                applied = {}
                reserve = self._reserve_ids()
                for member_id, server in sorted(self.cluster.servers.items()):
                    if member_id in reserve:
                        continue
                    if server._executor is None or server._loop is None:
                        break
                    applied[member_id] = server._executor.applied_index.value
                else:
                    commit = max(
                        s._loop.core.commit_index for s in self.cluster.servers.values() if s._loop
                    )
                    if len(set(applied.values())) == 1 and min(applied.values()) >= commit:
                        break
                await trio.sleep(0.05)
            if state is not None:
                states = {i: state(self.cluster.servers[i].state_machine) for i in sorted(applied)}
                first = next(iter(states.values()))
                for member_id, value in states.items():
                    if value != first:
                        self.invariants.violation(
                            f"convergence: members applied the same index but member "
                            f"{member_id} has {value!r}, member {min(states)} has {first!r}"
                        )
                        return False
            self.trace.record("converged", f"applied index {min(applied.values())}")
            return True
        self.invariants.violation(
            f"liveness: members did not apply the same index within {timeout:g}s "
            f"({self._status_line()})"
        )
        return False


@asynccontextmanager
async def open_simulation(
    state_machine: Callable[[], Any] = KeyValueStore,
    *,
    seed: int = 0,
    config: SimulationConfig | None = None,
    faults: FaultMix | str | None = None,
    check_invariants: bool = True,
    deterministic: bool = True,
    **config_overrides: Any,
) -> AsyncIterator[Simulation]:
    """A simulated cluster serving `state_machine`, inside a Trio test on a MockClock (use
    pytest-trio's `autojump_clock` fixture).

    `faults` is a FaultMix or a profile name (default: the seed's profile); other settings of
    SimulationConfig (servers=, snapshot_every=, election_timeout=...) may be passed by name.
    `sim.start_faults(seconds)` plays the faults in the background; `sim.heal()` stops them and
    undoes what is in force. Invariants are checked all along; on leaving the block a
    SimulationFailure is raised if any broke (unless `check_invariants=False`). With
    `deterministic` (the default), Trio's scheduler is seeded for the block's duration.
    """
    if config is None:
        if isinstance(faults, str):
            config = SimulationConfig.for_seed(seed, faults, **config_overrides)
        else:
            config = SimulationConfig.for_seed(seed, **config_overrides)
            if faults is not None:
                config = attrs.evolve(config, faults=faults)
    restore = seed_trio_scheduler(config.seed) if deterministic else None
    try:
        async with open_background_nursery() as nursery:
            sim = Simulation(config, nursery, state_machine)
            sim.trace.record("start", config.describe())
            await sim.cluster.bootstrap(list(sim.bootstrap_ids))
            sim.arm_disk_faults(sim.bootstrap_ids)
            nursery.start_soon(_watch, sim)
            yield sim
            if check_invariants and not sim.invariants.ok:
                raise SimulationFailure(
                    "invariants broken:\n"
                    + "\n".join(sim.invariants.violations)
                    + "\n\nfault schedule:\n"
                    + sim.trace.format(SCHEDULE_KINDS)
                )
    finally:
        if restore is not None:
            restore()


async def _watch(sim: Simulation) -> None:
    while True:
        sim.invariants.poll(sim.cluster.servers, sim.cluster.starts)
        await trio.sleep(sim.config.poll_interval)


# --- a whole run -------------------------------------------------------------------------------


@attrs.define
class SimulationResult:
    """What one seed's run found."""

    config: SimulationConfig
    trace: Trace
    history: History
    violations: list[str]
    linearizability: CheckResult | None
    error: str | None = None
    """A traceback if the run itself raised (a bug somewhere), or why it was stopped."""
    virtual_time: float = 0.0
    wall_time: float = 0.0
    stats: dict[str, Any] = attrs.Factory(dict)
    logged: list[str] = attrs.Factory(list)
    """Warnings and errors the servers logged (not failures by themselves)."""
    beyond_model: list[str] = attrs.Factory(list)
    """Failures the profile allows, reported but not failing the run: in disk-beyond, the
    violations (and a non-linearizable history) of a run in which a lying fsync lost data at
    a power loss."""

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.violations
            and self.linearizability is not None
            and (self.linearizability.ok or self._linearizability_beyond_model)
        )

    @property
    def _linearizability_beyond_model(self) -> bool:
        return any(text.startswith("linearizability") for text in self.beyond_model)

    @property
    def digest(self) -> str:
        return self.trace.digest()

    def failures(self) -> list[str]:
        found = list(self.violations)
        if self.error is not None:
            found.append(f"error: {self.error}")
        if (
            self.linearizability is not None
            and not self.linearizability.ok
            and not self._linearizability_beyond_model
        ):
            found.append(f"linearizability: {self.linearizability}")
        return found

    def summary(self) -> str:
        s = self.stats
        verdict = "ok  " if self.ok else "FAIL"
        return (
            f"{verdict} seed {self.config.seed:>6} {self.config.profile:<10} "
            f"{self.config.servers} servers, {s.get('ops', 0):>4} ops "
            f"({s.get('unknown', 0)} unknown, {s.get('failed', 0)} failed), "
            f"{s.get('episodes', 0):>2} faults, "
            f"{s.get('terms', 0):>2} terms, {self.virtual_time:6.1f}s virtual, "
            f"{self.wall_time:5.1f}s real, trace {self.digest}"
        )

    def report(self, *, verbose: bool = False) -> str:
        """The configuration, fault schedule, failures and (verbose or failing) the history
        and the whole trace."""
        parts = [self.summary(), self.config.describe()]
        parts.append("fault schedule:\n" + (self.trace.format(SCHEDULE_KINDS) or "  (none)"))
        parts.append("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())))
        for failure in self.failures():
            parts.append("FAILURE: " + failure)
        for allowed in self.beyond_model:
            parts.append("BEYOND THE MODEL (allowed): " + allowed)
        if self.logged:
            parts.append("server log (warnings and errors):\n" + "\n".join(self.logged[:20]))
        if verbose or not self.ok:
            parts.append("history:\n" + self.history.format())
            parts.append("trace:\n" + self.trace.format(limit=None if verbose else 400))
        parts.append(
            f"replay: python -m copycat_trio.testing.simulation --seed {self.config.seed}"
            + (" --workload resources" if self.config.scenario == "resources" else "")
            + (
                f" --profile {self.config.profile}"
                if self.config.profile != _default_profile(self.config.seed)
                else ""
            )
        )
        return "\n\n".join(parts)


def _default_profile(seed: int) -> str:
    return PROFILES[seed % len(PROFILES)]


def kv_state(state_machine: Any) -> Any:
    """What must agree across members of a key-value store: its contents."""
    return dict(state_machine.data)


Workload = Callable[[Simulation, float], Awaitable[None]]


async def _kv_run(sim: Simulation) -> None:
    """The whole key-value scenario: workload under faults, heal, settle, read, converge."""
    config = sim.config
    until = trio.current_time() + config.duration
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sim.run_faults, until)
        records: list[PipelineRecord] = []
        events: list[EventRecord] = []
        async with trio.open_nursery() as clients:
            if config.pipeline is not None:
                clients.start_soon(config.pipeline.run, sim, until, records)
            if config.events is not None:
                clients.start_soon(config.events.run, sim, until, events)
            await config.workload.run(sim, until)
        nursery.cancel_scope.cancel()
    await sim.heal()
    if await sim.settle() is None:
        return
    pipeline_keys = config.pipeline.key_names() if config.pipeline is not None else []
    await final_reads(sim, [*config.workload.key_names(), *pipeline_keys])
    await sim.converge(sim_state)
    if config.pipeline is not None:
        config.pipeline.check(sim, records)
    if config.events is not None:
        config.events.check(sim, events)


async def final_reads(sim: Simulation, keys: Sequence[str], attempts: int = 5) -> None:
    """Read every key once more through a fresh client, into the history: with the
    linearizability check, this is what proves no acknowledged write was lost."""
    for attempt in range(1, attempts + 1):
        try:
            async with sim.client(
                host="final", name=f"final{attempt}", timeout=30.0, request_timeout=2.0
            ) as client:
                for key in keys:
                    op = sim.history.invoke("final", OpKind.GET, key)
                    try:
                        value = await client.submit(Get(key))
                    except Exception as exc:
                        sim.history.unknown(op)
                        sim.invariants.violation(f"liveness: final read of {key} failed: {exc!r}")
                        continue
                    sim.history.complete(op, value)
                    sim.trace.record("ok", f"final GET {key} -> {value!r}")
            return
        except UnknownSessionError as exc:
            # Nothing expires sessions now (no faults, fresh session): the client gave up on the
            # session it had just registered.
            sim.invariants.violation(f"client: open_client failed after healing: {exc!r}")
            return
        except (CopycatError, TransportError) as exc:
            sim.trace.record("client", f"final client could not open a session: {exc!r}")
            await trio.sleep(1.0)
    sim.invariants.violation(f"liveness: no session could be opened in {attempts} attempts")


class _Collect(logging.Handler):
    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []
        self._clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 200:
            try:
                now = f"{self._clock():10.4f}"
            except RuntimeError:
                now = "         ?"
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
            self.records.append(f"{now} {record.levelname} {record.name}: {text}")


def run_simulation(
    seed: int,
    *,
    profile: str | None = None,
    config: SimulationConfig | None = None,
    **overrides: Any,
) -> SimulationResult:
    """Run the key-value scenario for one seed in its own `trio.run` on a MockClock."""
    config = config or SimulationConfig.for_seed(seed, profile, **overrides)
    restore = seed_trio_scheduler(config.seed)
    watchdog = CpuWatchdog(config.wall_limit)
    started = time.monotonic()
    holder: dict[str, Any] = {}
    collector = _Collect(trio.current_time)
    package_log = logging.getLogger("copycat_trio")
    package_log.addHandler(collector)
    try:
        error: str | None = None
        try:
            trio.run(
                _run_main,
                config,
                watchdog,
                holder,
                clock=trio.testing.MockClock(autojump_threshold=0),
                instruments=[watchdog],
            )
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            error = "".join(traceback.format_exception(exc))
    finally:
        package_log.removeHandler(collector)
        restore()
    sim: Simulation | None = holder.get("sim")
    if sim is None:
        raise RuntimeError(f"seed {seed}: the simulation did not start:\n{error}")
    if holder.get("stuck"):
        error = (error or "") + holder["stuck"]
    ops = sim.history.operations()
    linearizability = None
    if error is None or not holder.get("stuck"):
        linearizability = check(ops, max_states=500_000)
    stats = {
        "ops": len(ops),
        "ok": sum(op.outcome is Outcome.OK for op in ops),
        "unknown": sum(op.outcome is Outcome.UNKNOWN for op in ops),
        "failed": sum(op.outcome is Outcome.FAILED for op in ops),
        "episodes": sim.injector.episodes,
        "terms": len(sim.invariants.leaders),
        "committed": len(sim.invariants.committed),
        "torn_saves": sum(d.stats.torn_saves for d in sim.disks.values()),
        "snapshots": sum(d.stats.snapshots for d in sim.disks.values()),
        **_file_system_stats(sim),
        "restarts": sum(n - 1 for n in sim.cluster.starts.values()),
        "dropped": sim.network.stats.dropped,
        "duplicated": sim.network.stats.duplicated,
        "delayed": sim.network.stats.delayed,
        "busiest_10ms": sim.network.stats.busiest_window,
        **{f"fault_{k}": v for k, v in sorted(sim.injector.counts.items())},
    }
    violations = [*sim.invariants.violations, *sim.disk_violations()]
    beyond_model: list[str] = []
    if config.fsync_lies and stats.get("fs_lies_lost"):
        # What a lost acknowledged write may break: anything but what the disk itself must do.
        reason = f"after {stats['fs_lies_lost']} lying fsync(s) lost data at a power loss"
        beyond_model = [f"{v} ({reason})" for v in violations if not v.startswith("disk:")]
        violations = [v for v in violations if v.startswith("disk:")]
        if linearizability is not None and not linearizability.ok:
            beyond_model.append(f"linearizability: {linearizability} ({reason})")
    return SimulationResult(
        config=config,
        trace=sim.trace,
        history=sim.history,
        beyond_model=beyond_model,
        violations=violations,
        linearizability=linearizability,
        error=error,
        virtual_time=holder.get("virtual_time", 0.0),
        wall_time=time.monotonic() - started,
        stats=stats,
        logged=collector.records,
    )


def _file_system_stats(sim: Simulation) -> dict[str, int]:
    """With the real disk: what its simulated file systems did and what the faults struck."""
    systems = [d.fs for d in sim.disks.values() if isinstance(d, FsDisk)]
    if not systems:
        return {}
    return {
        "fs_fsyncs": sum(fs.fsyncs for fs in systems),
        "fs_eio": sum(fs.errors for fs in systems),
        "fs_lies": sum(fs.lies for fs in systems),
        "fs_lies_lost": sum(fs.lies_lost for fs in systems),
        "fs_power_cycles": sum(fs.crashes for fs in systems),
        "fs_torn_files": sum(fs.torn_files for fs in systems),
        "fs_torn_out_of_order": sum(fs.torn_out_of_order for fs in systems),
        "fs_sectors_lost": sum(fs.sectors_lost for fs in systems),
        "fs_names_lost": sum(fs.names_lost for fs in systems),
        "bit_flips": sum(d.flips for d in sim.disks.values() if isinstance(d, FsDisk)),
        "storage_failures": sim.storage_failures,
        "refused_corrupt": len(sim.corrupt),
    }


async def _run_main(
    config: SimulationConfig, watchdog: CpuWatchdog, holder: dict[str, Any]
) -> None:
    seed_trio_scheduler(config.seed)
    limit = config.duration + config.workload.op_timeout * 4 + config.settle_timeout + 120
    async with trio.open_nursery() as outer:
        outer.start_soon(deadlock_sentinel, config.seed, limit * 10)
        try:
            with trio.CancelScope() as scope:
                watchdog.scope = scope
                with trio.move_on_after(limit) as virtual:
                    if config.scenario == "resources":
                        probe = ResourceProbe()
                        machine: Callable[[], Any] = lambda: ProbedResources(probe)  # noqa: E731
                    else:
                        machine = SimStore
                    async with open_simulation(
                        machine, config=config, check_invariants=False
                    ) as sim:
                        holder["sim"] = sim
                        sim.abort_scope = scope
                        if config.scenario == "resources":
                            await run_resource_scenario(
                                config.resources, sim, probe, config.duration
                            )
                        else:
                            await _kv_run(sim)
                if virtual.cancelled_caught:
                    holder["stuck"] = f"stopped after {limit:g}s of virtual time (stuck?)"
            if watchdog.fired:
                holder["stuck"] = f"stopped after {config.wall_limit:g}s of CPU time (spinning?)"
        finally:
            holder["virtual_time"] = trio.current_time()
            outer.cancel_scope.cancel()


def _disk_fault(error: BaseException) -> bool:
    """Whether a server's exception is one the simulated disk's faults explain."""
    return isinstance(error, StorageError) or (
        isinstance(error, OSError) and error.errno == errno.EIO
    )


_LOST_WRITES = (CommittedEntryConflictError, TermBehindLogError)
"""What a member stops with when others lost writes they had made durable."""


def _disk_fault_or_conflict(error: BaseException) -> bool:
    """A disk fault, or a member stopping because others lost durable writes (a leader
    contradicting committed entries, an election won below the log's term: only lost writes
    explain them, so this is asked only once a lying fsync has lost data)."""
    return _disk_fault(error) or isinstance(error, _LOST_WRITES)


def _first_line(error: BaseException) -> str:
    """An error's message up to its first full stop or semicolon (the rest is advice)."""
    text = str(error)
    for mark in (". ", "; "):
        text = text.split(mark, 1)[0]
    return text


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in an exception group (nested ones too), or the exception itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


if __name__ == "__main__":  # the command line lives in sim_runner (it imports this module)
    from .sim_runner import main

    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
