"""Real processes under faults: the simulation's workload and checker against `serve` processes.

Five (by default) `copycat-trio serve` processes with disk storage run the key-value store; the
simulation's clients (`KvWorkload`) put, get, compare-and-set and delete a few keys over real TCP
while a nemesis plays faults one after another:

- kill, kill-majority, kill-all: SIGKILL, then start again on the same data directory;
- pause, pause-leader: SIGSTOP for longer than the lease and the election timeout, then SIGCONT;
- partition-halves, partition-leader, partition-bridge, partition-oneway: silent packet drops
  between members, made in network namespaces the run creates (`netns.py`); where namespaces
  cannot be made (not root, no `ip`), the run says so and plays the other faults;
- clock: SIGKILL a member and start it again with another clock (below);
- demote: demote a follower to PASSIVE for a while, then promote it back; transfer: ask the
  leader to hand over to a follower, half the time one that is cut off (the transfer times out).

Clocks: where libfaketime is installed (Debian package `faketime`), every member process runs
under it, each start with its own clock: a rate within `clock_drift` of real time (monotonic and
wall clock alike, inside what the lease allows: see docs/sessions.md) and a wall-clock offset of
up to `clock_offset` seconds. Where it is not, the run says so on its `clocks:` line.

A watcher polls every member's status: two members leading in one term, or a member that exits
without being killed, is a failure. At the end every fault is healed, the cluster must elect a
leader and every member catch up, a fresh client reads every key, and the whole history goes to
the linearizability checker. Acknowledged writes lost to a crash, stale reads from a deposed
leader and doubled retries all show up there.

`python -m copycat_trio.testing.nemesis --seconds 60 --seed 7` (or `nox -s nemesis`); exit
status 1 on any failure, with the fault schedule, the check's explanation and the servers' logs
kept in the work directory. Beside the text report go two pictures (plots.py, where matplotlib
is installed: the extra copycat-trio[plots]): every operation's latency over time coloured by
outcome, and throughput over time, both with the fault windows shaded; into `--plots DIR`, or
else into the work directory when it is kept (a failed run, --keep, --workdir).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import trio

from ..client import CopycatClient, open_client
from ..client.admin import admin_request, fetch_status
from ..protocol.messages import MemberType, ReconfigureRequest, StatusResponse, TransferRequest
from ..recipes.kv import Get
from .availability import FaultRecovery, recovery_after, summarize
from .faults import LEASE_SAFE_DRIFT
from .history import History, Operation, OpKind, Outcome
from .linearizability import CheckResult, check
from .netns import NetworkLab, open_network_lab, unavailable_reason
from .plots import FaultWindow, matplotlib_missing
from .processes import ProcessCluster
from .trace import Trace
from .workload import KvWorkload

__all__ = ["FAULTS", "NemesisConfig", "NemesisReport", "run_nemesis"]

PROCESS_FAULTS = ("kill", "kill-majority", "kill-all", "pause", "pause-leader")
NETWORK_FAULTS = ("partition-halves", "partition-leader", "partition-bridge", "partition-oneway")
CLOCK_FAULTS = ("clock",)
MEMBERSHIP_FAULTS = ("demote", "transfer")
FAULTS = PROCESS_FAULTS + NETWORK_FAULTS + CLOCK_FAULTS + MEMBERSHIP_FAULTS
LIBFAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
)
"""Where Debian's `faketime` package puts the multi-threaded library (fsync runs in threads)."""
PORT = 7300
"""The port every member listens on inside its own namespace."""


@attrs.frozen(kw_only=True)
class NemesisConfig:
    """One run: its seed, size, length, faults and timings."""

    seed: int = 0
    servers: int = 5
    seconds: float = 60.0
    """How long the workload and the nemesis run (recovery and the final reads come after)."""
    faults: tuple[str, ...] = FAULTS
    netns: bool | None = None
    """True: partitions are required; False: never; None: used where namespaces can be made."""
    election_timeout: float = 0.5
    heartbeat_interval: float = 0.1
    snapshot_every: int | None = 150
    """Small, so that restarted members catch up from snapshots sent over TCP."""
    clients: int = 5
    ops_per_client: int = 10_000
    """A bound; the clients normally run out of time first (about 15 operations a second each)."""
    quiet: tuple[float, float] = (0.5, 2.0)
    """Seconds between one fault's heal and the next fault."""
    hold: tuple[float, float] = (1.0, 4.0)
    """Seconds a fault lasts."""
    recovery: float = 45.0
    """Seconds allowed after the last heal for a leader, catch-up and the final reads."""
    clocks: bool | None = None
    """True: every member must run under libfaketime; False: never; None: where it is found."""
    clock_drift: float = 0.05
    """Each member start runs its clocks at a rate within this fraction of real time."""
    clock_offset: float = 120.0
    """Each member start sets its wall clock up to this many seconds off (either way)."""
    wipe_on_restart: bool = False
    """Self-check only: delete a killed member's data before starting it again (the bug of
    Copycat's own Jepsen suite). Runs with it should fail; that they do shows this harness
    can see lost writes."""

    def __attrs_post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if self.servers < 3:
            raise ValueError("a nemesis run needs at least 3 servers")
        if not 0 <= self.clock_drift < LEASE_SAFE_DRIFT:
            # Two members within d of real time run up to (1 + d) / (1 - d) as fast as each
            # other; the lease allows 4/3, so d must stay below 1/7 (not 0.25).
            raise ValueError("clock_drift must be at least 0 and below the lease's bound of 1/7")


@attrs.define
class NemesisReport:
    """What a run did and found; `ok` only if the history is linearizable and nothing else broke."""

    config: NemesisConfig
    workdir: Path
    netns: bool
    netns_note: str
    schedule: list[str]
    problems: list[str]
    check: CheckResult | None
    operations: int
    outcomes: dict[str, int]
    terms: int
    seconds: float
    longest_write_gap: tuple[float, float] = (0.0, 0.0)
    """(seconds, when): the longest time in which no write was acknowledged (unavailability)."""
    clocks_note: str = "not played"
    recoveries: list[FaultRecovery] = attrs.Factory(list)
    """Per fault: how long until writes were acknowledged again (see availability.py)."""
    fault_windows: list[FaultWindow] = attrs.Factory(list)
    """Per fault played: when it began and when it was healed (the plots shade them)."""
    history: list[Operation] = attrs.field(factory=list, repr=False)
    """Every operation of the run, by invocation time (the plots draw them)."""
    unknown_latency: float = 3.0
    """Where the latency plot draws operations of unknown outcome: the workload's timeout."""

    @property
    def ok(self) -> bool:
        """Whether the history was checked and linearizable, and the watcher saw no problem."""
        return self.check is not None and self.check.ok and not self.problems

    def format(self) -> str:
        """The text report: the verdict, recoveries, the fault schedule, problems, the check."""
        verdict = "ok" if self.ok else "FAILED"
        check = self.check.status.value if self.check else "not run"
        counts = ", ".join(f"{n} {name}" for name, n in sorted(self.outcomes.items()))
        lines = [
            f"{verdict}: seed {self.config.seed}, {self.config.servers} server processes, "
            f"{self.operations} operations ({counts}), {len(self.fault_windows)} faults, "
            f"{self.terms} terms, {self.seconds:.1f}s; history {check}",
            f"longest time without an acknowledged write: {self.longest_write_gap[0]:.2f}s "
            f"(from {self.longest_write_gap[1]:.2f}s)",
            f"partitions: {self.netns_note}",
            f"clocks: {self.clocks_note}",
        ]
        # Only the first write: the workload's clients read as well, and a client with an
        # operation of unknown outcome goes on under another process name, so "every client
        # that wrote before" says little here (the failover trials measure it).
        lines += [f"  recovery {stats.format(every=False)}" for stats in summarize(self.recoveries)]
        lines += [f"  fault {line}" for line in self.schedule]
        lines += [f"  PROBLEM {problem}" for problem in self.problems]
        if self.check is not None and not self.check.ok:
            lines.append(self.check.explanation)
        lines.append(f"work directory (logs, data): {self.workdir}")
        return "\n".join(lines)


class _Run:
    """The state of one run; also the workload's host (history, trace, clients, rng)."""

    def __init__(self, config: NemesisConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.started = trio.current_time()
        self.trace = Trace(self.clock)
        self.history = History(clock=self.clock)
        self.client_hosts: list[str] = []
        self.problems: list[str] = []
        self.schedule: list[str] = []
        self.leaders_by_term: dict[int, set[int]] = {}
        self.leader: int | None = None
        self.expected_down: set[int] = set()
        """Members we killed (or are about to): their exit is not a crash."""
        self.workload = KvWorkload(
            clients=config.clients,
            max_ops=config.ops_per_client,
            think=0.05,
            bursty=0.3,
            op_timeout=3.0,
            request_timeout=1.0,
            session_timeout=5.0,
        )
        self.cluster: ProcessCluster | None = None
        self.lab: NetworkLab | None = None
        self._clients = 0
        self.episodes: list[tuple[str, float]] = []
        """(fault, when it began) for every fault played."""
        self.healed: dict[int, float] = {}
        """When the fault of each episode (index into `episodes`) was healed."""
        self.libfaketime: str | None = None
        """The library every member runs under, if clocks are played."""
        self.starts: dict[int, int] = {}
        self.demoted: set[int] = set()
        """Members this run demoted to PASSIVE and has not promoted back yet."""

    def clock(self) -> float:
        """Seconds since the run began (the history's and the trace's times)."""
        return trio.current_time() - self.started

    # --- the workload's host -------------------------------------------------------------------

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.config.seed}:{name}")

    def client(
        self, *, host: str = "client", name: str | None = None, **options: Any
    ) -> AbstractAsyncContextManager[CopycatClient]:
        assert self.cluster is not None
        self._clients += 1
        client_id = f"nemesis{self.config.seed}-{name or self._clients}-{time.time_ns()}"
        return open_client(self.cluster.addresses(), client_id=client_id, **options)

    # --- the run -------------------------------------------------------------------------------

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self.trace.record("PROBLEM", text)

    async def run(self, use_netns: bool) -> None:
        async with self._lab(use_netns) as lab:
            self.lab = lab
            config = self.config
            cluster = self.cluster = ProcessCluster(
                self.workdir,
                config.servers,
                election_timeout=config.election_timeout,
                heartbeat_interval=config.heartbeat_interval,
                snapshot_every=config.snapshot_every,
                addresses=(
                    [f"{lab.address(i)}:{PORT}" for i in range(1, config.servers + 1)]
                    if lab
                    else None
                ),
                command_prefix=self._command_prefix,
            )
            try:
                await cluster.start()
                await cluster.wait_for_leader(timeout=30)
                await self._load_and_faults(cluster)
                await self._recover(cluster)
                await self._final_reads()
            finally:
                await cluster.aclose()

    def _command_prefix(self, member_id: int) -> list[str]:
        """What goes before a member's command line: its namespace, then its clock."""
        prefix = list(self.lab.exec_prefix(member_id)) if self.lab is not None else []
        if self.libfaketime is None:
            return prefix
        start = self.starts[member_id] = self.starts.get(member_id, 0) + 1
        rng = self.rng(f"clock:{member_id}:{start}")
        rate = 1 + rng.uniform(-self.config.clock_drift, self.config.clock_drift)
        offset = rng.uniform(-self.config.clock_offset, self.config.clock_offset)
        self.trace.record("clock", f"member {member_id} start {start}: x{rate:.4f}, {offset:+.1f}s")
        return [
            *prefix,
            "env",
            f"LD_PRELOAD={self.libfaketime}",
            f"FAKETIME={offset:+.1f} x{rate:.4f}",
        ]

    @contextlib.asynccontextmanager
    async def _lab(self, use_netns: bool) -> AsyncIterator[NetworkLab | None]:
        if not use_netns:
            yield None
            return
        async with open_network_lab(self.config.servers, self.rng("subnet")) as lab:
            yield lab

    async def _load_and_faults(self, cluster: ProcessCluster) -> None:
        until = trio.current_time() + self.config.seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, cluster)
            async with trio.open_nursery() as load:
                load.start_soon(self._nemesis, cluster, until)
                await self.workload.run(self, until)
            nursery.cancel_scope.cancel()

    async def _recover(self, cluster: ProcessCluster) -> None:
        """Heal everything, then wait for a leader and for every member to apply everything."""
        await self._heal_all(cluster)
        deadline = trio.current_time() + self.config.recovery
        try:
            agreement = await cluster.wait_for_leader(timeout=self.config.recovery)
        except AssertionError as exc:
            self._problem(f"no leader after every fault was healed: {exc}")
            return
        self.trace.record("recover", f"leader {agreement.leader} in term {agreement.term}")
        last: tuple[Any, ...] | None = None
        rows: list[dict[str, Any]] = []
        while trio.current_time() < deadline:
            rows = await cluster.status()
            marks = tuple((r["commit_index"], r["applied_index"]) for r in rows)
            caught_up = (
                all(
                    r["role"] != "unreachable" and r["applied_index"] == rows[0]["commit_index"]
                    for r in rows
                )
                and len({c for c, _ in marks}) == 1
            )
            if caught_up and marks == last:
                self.trace.record("recover", f"every member applied {marks[0][1]}")
                return
            last = marks if caught_up else None
            await trio.sleep(0.2)
        self._problem(f"members did not all catch up in {self.config.recovery}s: {rows}")

    async def _final_reads(self) -> None:
        """A fresh client reads every key linearizably: the last word on lost writes."""
        try:
            with trio.fail_after(self.config.recovery):
                async with self.client(name="final", timeout=10.0, request_timeout=2.0) as c:
                    for key in self.workload.key_names():
                        token = self.history.invoke("final", OpKind.GET, key)
                        value = await c.submit(Get(key))
                        self.history.complete(token, value)
                        self.trace.record("final", f"{key} = {value!r}")
        except Exception as exc:  # any failure to read is a problem to report
            self._problem(f"final reads failed: {type(exc).__name__}: {exc}")

    # --- watching ------------------------------------------------------------------------------

    async def _watch(self, cluster: ProcessCluster) -> None:
        """Poll every member: leaders per term, and processes that died without being killed."""
        addresses = cluster.addresses()
        while True:
            for member_id, server in cluster.servers.items():
                if (
                    server.process is not None
                    and server.returncode is not None
                    and member_id not in self.expected_down
                ):
                    self._problem(
                        f"member {member_id} exited by itself (status {server.returncode}); "
                        f"its log ends:\n{server.log_tail(20)}"
                    )
                    self.expected_down.add(member_id)  # report it once
            answers = await fetch_status(addresses, timeout=0.3)
            for answer in answers:
                if isinstance(answer, StatusResponse) and answer.role == "leader":
                    leaders = self.leaders_by_term.setdefault(answer.term, set())
                    if answer.id not in leaders:
                        leaders.add(answer.id)
                        self.trace.record("leader", f"{answer.id} leads term {answer.term}")
                        if len(leaders) > 1:
                            self._problem(f"members {sorted(leaders)} both led term {answer.term}")
                    if self.leader != answer.id and answer.term == max(self.leaders_by_term):
                        self.leader = answer.id
            await trio.sleep(0.1)

    # --- faults --------------------------------------------------------------------------------

    def _faults(self) -> list[str]:
        faults = list(self.config.faults)
        if self.lab is None:
            faults = [f for f in faults if f not in NETWORK_FAULTS]
        if self.libfaketime is None:
            faults = [f for f in faults if f not in CLOCK_FAULTS]
        return faults

    async def _nemesis(self, cluster: ProcessCluster, until: float) -> None:
        rng = self.rng("nemesis")
        faults = self._faults()
        if not faults:
            return
        while True:
            await trio.sleep(rng.uniform(*self.config.quiet))
            if trio.current_time() >= until - 1.0:
                return
            fault = rng.choice(faults)
            hold = rng.uniform(*self.config.hold)
            played = len(self.episodes)
            await self._episode(cluster, fault, hold, rng)
            if len(self.episodes) > played:  # it began (a membership fault may be skipped)
                self.healed[played] = self.clock()

    def _note(self, text: str) -> None:
        self.schedule.append(f"{self.clock():7.2f}s {text}")
        self.trace.record("fault", text)

    def _began(self, fault: str) -> None:
        """The fault is in effect from now on: recovery is timed from here."""
        self.episodes.append((fault, self.clock()))

    def _pick_leader(self, rng: random.Random) -> int:
        ids = list(range(1, self.config.servers + 1))
        if self.leader is not None and self.leader in ids:
            return self.leader
        return rng.choice(ids)

    async def _episode(
        self, cluster: ProcessCluster, fault: str, hold: float, rng: random.Random
    ) -> None:
        ids = list(range(1, self.config.servers + 1))
        majority = self.config.servers // 2 + 1
        if fault == "clock":
            victim = self._pick_leader(rng) if rng.random() < 0.5 else rng.choice(ids)
            self.expected_down.add(victim)
            await cluster.kill(victim)
            self._began(fault)
            await cluster.start([victim])  # the prefix gives this start a new clock
            self.expected_down.discard(victim)
            self._note(f"clock: SIGKILLed {victim}, started again with a new clock")
            await trio.sleep(hold)
        elif fault in MEMBERSHIP_FAULTS:
            await self._membership_episode(cluster, fault, hold, rng)
        elif fault.startswith("kill"):
            if fault == "kill":
                victims = [self._pick_leader(rng) if rng.random() < 0.5 else rng.choice(ids)]
            elif fault == "kill-majority":
                victims = sorted(rng.sample(ids, majority))
            else:
                victims = ids
                hold = min(hold, 1.5)
            self._note(f"{fault}: SIGKILL {victims} for {hold:.1f}s")
            for member_id in victims:
                self.expected_down.add(member_id)
                await cluster.kill(member_id)
            self._began(fault)
            await trio.sleep(hold)
            if self.config.wipe_on_restart:
                for member_id in victims:
                    shutil.rmtree(cluster.data_dir(member_id), ignore_errors=True)
                self._note(f"{fault}: wiped the data of {victims}")
            await cluster.start(victims)
            for member_id in victims:
                self.expected_down.discard(member_id)
            self._note(f"{fault}: restarted {victims}")
        elif fault.startswith("pause"):
            victim = self._pick_leader(rng) if fault == "pause-leader" else rng.choice(ids)
            self._note(f"{fault}: SIGSTOP {victim} for {hold:.1f}s")
            cluster.pause(victim)
            self._began(fault)
            await trio.sleep(hold)
            cluster.resume(victim)
            self._note(f"{fault}: SIGCONT {victim}")
        else:
            assert self.lab is not None
            lab = self.lab
            if fault == "partition-halves":
                shuffled = rng.sample(ids, len(ids))
                cut = rng.randint(1, len(ids) // 2)
                sides = [sorted(shuffled[:cut]), sorted(shuffled[cut:])]
                await lab.partition(*sides)
                text = f"{sides[0]} | {sides[1]}"
            elif fault == "partition-leader":
                leader = self._pick_leader(rng)
                await lab.isolate(leader)
                text = f"{leader} isolated"
            elif fault == "partition-bridge":
                shuffled = rng.sample(ids, len(ids))
                bridge, rest = shuffled[0], shuffled[1:]
                half = len(rest) // 2
                sides = [sorted(rest[:half]), sorted(rest[half:])]
                await lab.partition(*sides)
                text = f"{sides[0]} | {sides[1]}, {bridge} sees both"
            else:
                leader = self._pick_leader(rng)
                others = [i for i in ids if i != leader]
                if rng.random() < 0.5:
                    for other in others:
                        await lab.cut(leader, other)
                    text = f"{leader} cannot send to {others}"
                else:
                    for other in others:
                        await lab.cut(other, leader)
                    text = f"{leader} hears nothing from {others}"
            self._began(fault)
            self._note(f"{fault}: {text} for {hold:.1f}s")
            await trio.sleep(hold)
            await lab.heal()
            self._note(f"{fault}: healed")

    async def _membership_episode(
        self, cluster: ProcessCluster, fault: str, hold: float, rng: random.Random
    ) -> None:
        """Demote a follower and promote it back, or transfer leadership (to a member that is
        cut off, half the time where partitions can be played: that transfer must time out)."""
        members = await self._members(cluster)
        leader = self.leader
        followers = sorted(m.id for m in members if m.type is MemberType.ACTIVE and m.id != leader)
        if not members or leader is None or not followers:
            self._note(f"{fault}: skipped (no leader or no follower known)")
            return
        target = rng.choice(followers)
        self._began(fault)
        timeout = 4 * self.config.election_timeout + 1.0
        if fault == "demote":
            member = next(m for m in members if m.id == target)
            self._note(f"demote: {target} to PASSIVE for {hold:.1f}s")
            if await self._admin(
                cluster,
                ReconfigureRequest(member=attrs.evolve(member, type=MemberType.PASSIVE)),
                timeout,
                "demote",
            ):
                self.demoted.add(target)
            await trio.sleep(hold)
            await self._promote_demoted(cluster, timeout)
            return
        cut = self.lab is not None and rng.random() < 0.5
        if cut:
            assert self.lab is not None
            await self.lab.isolate(target)
        self._note(f"transfer: leadership to {target}{' (cut off)' if cut else ''}")
        await self._admin(cluster, TransferRequest(member=target), timeout, "transfer")
        await trio.sleep(hold)
        if cut:
            assert self.lab is not None
            await self.lab.heal()
            self._note("transfer: healed")

    async def _members(self, cluster: ProcessCluster) -> tuple[Any, ...]:
        """The configuration as the latest leader reports it (empty if it does not answer)."""
        if self.leader is None:
            return ()
        answers = await fetch_status([cluster.address(self.leader)], timeout=1.0)
        answer = answers[0]
        return answer.members if isinstance(answer, StatusResponse) else ()

    async def _admin(
        self, cluster: ProcessCluster, body: object, timeout: float, what: str
    ) -> bool:
        """Send an operator request; its refusal or timeout is noted, not a problem (faults
        may be in play), since a change that did not happen cannot break anything."""
        try:
            await admin_request(cluster.addresses(), body, timeout=timeout)
        except Exception as exc:  # any refusal is an outcome to note
            self._note(f"{what}: not done: {type(exc).__name__}: {exc}")
            return False
        self._note(f"{what}: done")
        return True

    async def _promote_demoted(self, cluster: ProcessCluster, timeout: float) -> None:
        for member_id in sorted(self.demoted):
            members = await self._members(cluster)
            member = next((m for m in members if m.id == member_id), None)
            if member is None or member.type is MemberType.ACTIVE:
                self.demoted.discard(member_id)  # promoted (or replaced) by the leader itself
                continue
            self._note(f"demote: promote {member_id} back to ACTIVE")
            request = ReconfigureRequest(member=attrs.evolve(member, type=MemberType.ACTIVE))
            if await self._admin(cluster, request, timeout, "promote"):
                self.demoted.discard(member_id)

    async def _heal_all(self, cluster: ProcessCluster) -> None:
        if self.lab is not None:
            await self.lab.heal()
        for member_id, server in cluster.servers.items():
            if server.paused:
                cluster.resume(member_id)
        down = [i for i, s in cluster.servers.items() if not s.running]
        if down:
            await cluster.start(down)
        self.expected_down.clear()
        if self.demoted:
            with contextlib.suppress(AssertionError):
                await cluster.wait_for_leader(timeout=self.config.recovery / 2)
            self.leader = None
            for row in await cluster.status():
                if row["role"] == "leader":
                    self.leader = row["id"]
            await self._promote_demoted(cluster, 4 * self.config.election_timeout + 1.0)


def decide_netns(wanted: bool | None) -> tuple[bool, str]:
    """Whether to make partitions with namespaces, and a sentence saying so (and why not)."""
    if wanted is False:
        return False, "not played (--no-netns)"
    reason = unavailable_reason()
    if reason is None:
        return True, "played in network namespaces made by this run"
    if wanted:
        raise RuntimeError(f"partitions need network namespaces, and {reason}")
    return False, f"NOT played: {reason}; kills and pauses only"


def find_libfaketime() -> str | None:
    """The libfaketime library to run members under, or None where it is not installed
    (`COPYCAT_LIBFAKETIME` names another path)."""
    candidates = [os.environ.get("COPYCAT_LIBFAKETIME", ""), *LIBFAKETIME_PATHS]
    return next((path for path in candidates if path and os.path.exists(path)), None)


def decide_clocks(config: NemesisConfig) -> tuple[str | None, str]:
    """The libfaketime library to use (None: clocks not played) and a sentence saying so."""
    if config.clocks is False:
        return None, "not played (--no-clocks)"
    library = find_libfaketime()
    if library is None:
        if config.clocks:
            raise RuntimeError("clock faults need libfaketime (apt-get install faketime)")
        return None, "NOT played: libfaketime not found (apt-get install faketime)"
    return library, (
        f"each member start runs at a rate within {config.clock_drift:.0%} of real time, "
        f"wall clock up to {config.clock_offset:.0f}s off (libfaketime)"
    )


async def run_nemesis(config: NemesisConfig, workdir: Path) -> NemesisReport:
    """Run one nemesis test in `workdir` (which keeps the servers' logs and data)."""
    use_netns, note = decide_netns(config.netns)
    started = trio.current_time()
    run = _Run(config, workdir)
    run.libfaketime, clocks_note = decide_clocks(config)
    try:
        await run.run(use_netns)
    except Exception as exc:  # reported, with the history so far
        run._problem(f"the run itself failed: {type(exc).__name__}: {exc}")
    ops = run.history.operations()
    outcomes: dict[str, int] = {}
    for op in ops:
        outcomes[op.outcome.value] = outcomes.get(op.outcome.value, 0) + 1
    ended = run.clock()
    windows = [
        FaultWindow(kind, at, run.healed.get(i, ended)) for i, (kind, at) in enumerate(run.episodes)
    ]
    result = await trio.to_thread.run_sync(lambda: check(ops, max_states=2_000_000))
    acknowledged = [
        (op.process, op.invoked, op.completed)
        for op in ops
        if op.kind is not OpKind.GET and op.outcome is Outcome.OK and op.completed is not None
    ]
    return NemesisReport(
        config=config,
        workdir=workdir,
        netns=use_netns,
        netns_note=note,
        schedule=run.schedule,
        problems=run.problems,
        check=result,
        operations=len(ops),
        outcomes=outcomes,
        terms=len(run.leaders_by_term),
        clocks_note=clocks_note,
        recoveries=[recovery_after(kind, at, acknowledged) for kind, at in run.episodes],
        longest_write_gap=_longest_gap(
            [op.completed for op in ops if op.kind is not OpKind.GET and op.completed is not None]
        ),
        seconds=trio.current_time() - started,
        fault_windows=windows,
        history=ops,
        unknown_latency=run.workload.op_timeout,
    )


def plots_directory(plots: Path | None, workdir: Path, kept: bool) -> Path | None:
    """Where a run's pictures go: `--plots DIR` if given, else its work directory if that is
    kept; None when it is removed (a passing run in a temporary directory)."""
    if plots is not None:
        return plots
    return workdir if kept else None


def write_plots(report: NemesisReport, directory: Path | None) -> str:
    """Draw the run's latency and throughput plots into `directory`; the one line that says
    where they are, or why there are none."""
    if directory is None:
        return "plots: none (a passing run's work directory is removed; --plots DIR or --keep)"
    missing = matplotlib_missing()
    if missing is not None:
        return f"plots: skipped: {missing}"
    from .plots import draw_nemesis

    seed = report.config.seed
    written = draw_nemesis(
        report.history,
        report.fault_windows,
        directory,
        title=f"nemesis seed {seed}, {report.config.servers} servers",
        unknown_latency=report.unknown_latency,
        prefix=f"seed{seed}-",
    )
    return "plots: " + ", ".join(str(path) for path in written)


def _longest_gap(times: list[float]) -> tuple[float, float]:
    """The longest interval between consecutive times, and where it starts."""
    ordered = sorted(times)
    gaps = [(b - a, a) for a, b in itertools.pairwise(ordered)]
    return max(gaps, default=(0.0, 0.0))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m copycat_trio.testing.nemesis",
        description="Real server processes under SIGKILL, SIGSTOP and network partitions, "
        "checked for linearizability.",
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--runs", type=int, default=1, help="runs, seeds seed..seed+runs-1")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--netns",
        dest="netns",
        action="store_true",
        default=None,
        help="fail unless partitions can be played",
    )
    group.add_argument(
        "--no-netns", dest="netns", action="store_false", help="kills and pauses only"
    )
    clocks = parser.add_mutually_exclusive_group()
    clocks.add_argument(
        "--clocks",
        dest="clocks",
        action="store_true",
        default=None,
        help="fail unless every member can run under libfaketime",
    )
    clocks.add_argument("--no-clocks", dest="clocks", action="store_false", help="real clocks")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory on success")
    parser.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write each run's latency and throughput plots here (needs matplotlib: "
        "copycat-trio[plots]; default: the work directory, when it is kept)",
    )
    parser.add_argument(
        "--wipe-on-restart",
        action="store_true",
        help="self-check: delete killed members' data before restarting them (should fail)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    failures = 0
    for seed in range(args.seed, args.seed + args.runs):
        config = NemesisConfig(
            seed=seed,
            servers=args.servers,
            seconds=args.seconds,
            faults=tuple(f for f in args.faults.split(",") if f),
            netns=args.netns,
            clocks=args.clocks,
            wipe_on_restart=args.wipe_on_restart,
        )
        root = args.workdir or Path(tempfile.mkdtemp(prefix="copycat-nemesis-"))
        workdir = root / f"seed{seed}"
        workdir.mkdir(parents=True, exist_ok=True)
        report = trio.run(run_nemesis, config, workdir)
        print(report.format(), flush=True)
        kept = not report.ok or args.keep or args.workdir is not None
        print(write_plots(report, plots_directory(args.plots, workdir, kept)), flush=True)
        if report.ok:
            if not args.keep and args.workdir is None:
                shutil.rmtree(root, ignore_errors=True)
        else:
            failures += 1
    print(f"{args.runs - failures} of {args.runs} runs passed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
