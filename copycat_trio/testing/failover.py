"""Failover trials: how soon every connected client writes again after its leader is lost.

Three (by default) `copycat-trio serve` processes with disk storage, and one client per member,
each talking through its own member first, as an application with a client beside each server
would. Every client writes in a closed loop. A trial waits until every client is writing, then
SIGKILLs the leader (`kill`) or cuts it off from its peers while its clients stay connected
(`isolate`, in network namespaces the run creates; as root), and measures, for every client, the
time from the fault to its first write acknowledged after it. The leader is then started again
or healed, and the next trial begins once every client is writing again.

The goal (issue 10): every client's next write within 2 election timeouts plus 0.5 s, with a
majority healthy; no client call raises InternalError for a failover.

`python -m copycat_trio.testing.failover --trials 20` (or `nox -s failover`); exit status 1 when
a trial misses the goal or a client saw an error it should not have.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import trio

from ..client import open_client
from ..protocol.errors import CopycatError, InternalError
from ..recipes.kv import Put
from .availability import FaultRecovery, recovery_after
from .nemesis import PORT, decide_netns
from .netns import NetworkLab, open_network_lab
from .processes import ProcessCluster

__all__ = ["FailoverConfig", "FailoverReport", "run_failover"]

FAULTS = ("kill", "isolate")


@attrs.frozen(kw_only=True)
class FailoverConfig:
    """One series of trials."""

    seed: int = 0
    servers: int = 3
    trials: int = 20
    faults: tuple[str, ...] = FAULTS
    """Played in turn; `isolate` only where network namespaces can be made."""
    election_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    limit: float = 20.0
    """Seconds a trial waits for every client to write again before it counts as failed."""
    netns: bool | None = None

    @property
    def goal(self) -> float:
        """Seconds within which every client's next write must be acknowledged."""
        return 2 * self.election_timeout + 0.5

    def __attrs_post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if self.servers < 3:
            raise ValueError("failover needs at least 3 servers (a majority must survive)")


@attrs.define
class FailoverReport:
    """Every trial's recovery and every error the clients saw."""

    config: FailoverConfig
    netns_note: str
    recoveries: list[FaultRecovery] = attrs.Factory(list)
    errors: Counter[str] = attrs.Factory(Counter)
    """Exceptions client calls raised, by type name."""
    problems: list[str] = attrs.Factory(list)

    @property
    def worst(self) -> float | None:
        """The longest wait of any client in any trial (None if some client never wrote)."""
        waits = [r.every for r in self.recoveries]
        if not waits or any(w is None for w in waits):
            return None
        return max(w for w in waits if w is not None)

    @property
    def ok(self) -> bool:
        """Whether every client wrote again within the goal and none saw an InternalError."""
        worst = self.worst
        return (
            not self.problems
            and worst is not None
            and worst <= self.config.goal
            and not self.errors.get(InternalError.__name__)
        )

    def format(self) -> str:
        """The text report: a line per trial, per fault the median and worst, verdict, errors."""
        lines = []
        for number, r in enumerate(self.recoveries, start=1):
            every = "never" if r.every is None else f"{r.every:.2f}s"
            first = "never" if r.first is None else f"{r.first:.2f}s"
            lines.append(
                f"  trial {number:>2} {r.kind:<8} first write after {first}, every one of "
                f"{r.clients} clients after {every}"
            )
        for kind in dict.fromkeys(r.kind for r in self.recoveries):
            waits = sorted(r.every for r in self.recoveries if r.kind == kind and r.every)
            if waits:
                lines.append(
                    f"{kind}: every client wrote again after {statistics.median(waits):.2f}s "
                    f"median, {waits[-1]:.2f}s worst ({len(waits)} trials)"
                )
        worst = self.worst
        verdict = "ok" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {len(self.recoveries)} trials, worst "
            f"{'never' if worst is None else f'{worst:.2f}s'} against a goal of "
            f"{self.config.goal:.2f}s (2 election timeouts + 0.5s); partitions: {self.netns_note}"
        )
        errors = ", ".join(f"{n} {name}" for name, n in sorted(self.errors.items()))
        lines.append(f"client errors: {errors or 'none'}")
        lines += [f"PROBLEM {p}" for p in self.problems]
        return "\n".join(lines)


class _Trials:
    def __init__(self, config: FailoverConfig, workdir: Path, lab: NetworkLab | None) -> None:
        self.config = config
        self.lab = lab
        self.cluster = ProcessCluster(
            workdir,
            config.servers,
            election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval,
            addresses=(
                [f"{lab.address(i)}:{PORT}" for i in range(1, config.servers + 1)] if lab else None
            ),
            command_prefix=lab.exec_prefix if lab else None,
        )
        self.acknowledged: list[tuple[int, float, float]] = []
        self.errors: Counter[str] = Counter()
        self.changed = trio.Event()

    async def writer(self, member_id: int) -> None:
        """A closed loop of writes through `member_id` first (the others after it)."""
        ids = [member_id, *(i for i in self.cluster.ids() if i != member_id)]
        async with open_client(self.cluster.addresses(ids), client_id=f"failover-{member_id}") as c:
            for number in range(1_000_000):  # bounded; cancelled when the trials end
                invoked = trio.current_time()
                try:
                    await c.submit(Put(f"key{member_id}", str(number)))
                except CopycatError as exc:
                    self.errors[type(exc).__name__] += 1
                    continue
                self.acknowledged.append((member_id, invoked, trio.current_time()))
                self.changed.set()
                self.changed = trio.Event()

    async def wait_all_writing(self, since: float, limit: float) -> bool:
        """Until every client has a write acknowledged after `since` (False after `limit`)."""
        with trio.move_on_after(limit):
            while {c for c, i, _ in self.acknowledged if i >= since} != set(self.cluster.ids()):
                await self.changed.wait()
            return True
        return False

    async def leader(self) -> int:
        agreement = await self.cluster.wait_for_leader(timeout=self.config.limit)
        return agreement.leader

    async def trial(self, kind: str) -> FaultRecovery:
        leader = await self.leader()
        settled = trio.current_time()
        await self.wait_all_writing(settled, self.config.limit)
        await trio.sleep(0.3)
        if kind == "kill":
            await self.cluster.kill(leader)
        else:
            assert self.lab is not None
            await self.lab.isolate(leader)
        started = trio.current_time()  # from when the fault is in effect
        await self.wait_all_writing(started, self.config.limit)
        recovery = recovery_after(kind, started, self.acknowledged)
        if kind == "kill":
            await self.cluster.start([leader])
        else:
            assert self.lab is not None
            await self.lab.heal()
        return recovery


def _faults(config: FailoverConfig, netns: bool) -> list[str]:
    return [f for f in config.faults if netns or f != "isolate"]


async def run_failover(config: FailoverConfig, workdir: Path) -> FailoverReport:
    """Run the trials in `workdir` (which keeps the servers' logs and data)."""
    use_netns, note = decide_netns(config.netns)
    report = FailoverReport(config=config, netns_note=note)
    faults = _faults(config, use_netns)
    if not faults:
        report.problems.append("no fault can be played here (isolate needs namespaces)")
        return report
    async with _lab(use_netns, config) as lab:
        trials = _Trials(config, workdir, lab)
        try:
            await trials.cluster.start()
            await trials.cluster.wait_for_leader(timeout=30)
            async with trio.open_nursery() as nursery:
                for member_id in trials.cluster.ids():
                    nursery.start_soon(trials.writer, member_id)
                for number in range(config.trials):
                    report.recoveries.append(await trials.trial(faults[number % len(faults)]))
                nursery.cancel_scope.cancel()
        except Exception as exc:  # reported with what was measured so far
            report.problems.append(f"the run failed: {type(exc).__name__}: {exc}")
            report.problems.append(trials.cluster.logs_report(20))
        finally:
            report.errors = trials.errors
            await trials.cluster.aclose()
    return report


@contextlib.asynccontextmanager
async def _lab(use_netns: bool, config: FailoverConfig) -> AsyncIterator[NetworkLab | None]:
    if not use_netns:
        yield None
        return
    import random

    async with open_network_lab(config.servers, random.Random(config.seed)) as lab:
        yield lab


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m copycat_trio.testing.failover",
        description="Kill or isolate the leader again and again; time every client's next write.",
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--election-timeout", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated: kill,isolate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-netns", dest="netns", action="store_false", default=None)
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp)")
    args = parser.parse_args(argv)
    config = FailoverConfig(
        seed=args.seed,
        servers=args.servers,
        trials=args.trials,
        election_timeout=args.election_timeout,
        heartbeat_interval=min(0.1, args.election_timeout / 5),
        faults=tuple(f for f in args.faults.split(",") if f),
        netns=args.netns,
    )
    root = args.workdir or Path(tempfile.mkdtemp(prefix="copycat-failover-"))
    root.mkdir(parents=True, exist_ok=True)
    report = trio.run(run_failover, config, root)
    print(report.format(), flush=True)
    if report.ok and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    elif not report.ok:
        print(f"work directory (logs, data): {root}", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
