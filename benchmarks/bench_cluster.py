"""Throughput and latency of a three-process copycat_trio cluster on loopback.

    python benchmarks/bench_cluster.py [--seconds S] [--writers 1,16,64] [--reads] [--json FILE]
        [--storage disk|memory] [--via leader|follower] [--max-ops N] [--profile DIR]
        [--value-bytes 100] [--compare etcd,pysyncobj] [--runs 2] [--metrics]
        [--tls | --metrics-cost | --five-members] [--plots DIR]

Starts three `python -m copycat_trio serve` processes on 127.0.0.1 (free ports), waits for a
leader, then for each task count N runs N concurrent tasks that share ONE client (one pipelined
connection per member), each submitting operations back to back:

  put       Put(16-character key, --value-bytes value)  a command: logged, replicated, applied
  get-lin   Get(key), Consistency.LINEARIZABLE          --reads: read index confirmed by a quorum
  get-lease Get(key), Consistency.LINEARIZABLE_LEASE    --reads: the leader's lease, no quorum round
  get-seq   Get(key), Consistency.SEQUENTIAL            --reads: answered by the member asked

Each phase has a warm-up (default 1 s) that is not recorded, then a measured window of --seconds,
ended early once --max-ops operations have completed. Only operations that both start and finish
inside the window count. Latency is time.perf_counter() around `await client.submit(...)`. The
reads read keys written beforehand and check the values they get back.

The client's address list starts with the leader (--via follower: with a follower, which forwards
to the leader). Storage is `disk` (fsynced, in a temporary directory); --storage memory writes
nothing. The client and the three servers share the machine's cores, so the table also shows,
for the measured window, the CPU each process used (100 = one core), the whole machine's busy
time (box%, other processes included) and how long the leader was runnable but waiting for a
core (L wait%), all from /proc on Linux.

--compare etcd[,pysyncobj] runs the same phases against a 3-member etcd (its JSON gateway, from
a Trio HTTP client in this process) and/or PySyncObj (writes only, its client in the leader's
process), alternating the systems --runs times, and prints each system's medians and the ratio
copycat_trio/peer of every row (benchmarks/compare.py).

--tls runs the same phases on a cluster with TLS on (certificates made with trustme, mutual TLS
between members and for the client) and on a plaintext one, alternating --runs times, and prints
the medians and the ratio tls/plaintext of every row; --metrics-cost does the same with
`serve --metrics-address` on and off (benchmarks/variants.py). --plots DIR draws a latency
histogram per row into DIR (needs matplotlib: the extra copycat-trio[plots]). --five-members
runs the phases on five members and on three, alternating, with the ratio five/three.

Exit status: 0 if every phase ran without an unexpected error; 1 if the cluster never elected a
leader (or a server exited) or any operation failed with anything but OutcomeUnknownError (those
are counted in their own column: commands whose answer did not come within --op-timeout); 130 on
Ctrl-C. The server processes are always stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

import copycat_trio
from copycat_trio.client import open_client
from copycat_trio.client.client import CopycatClient
from copycat_trio.demo import ELECTION_TIMEOUT, wait_for_leader
from copycat_trio.protocol.errors import CopycatError, OutcomeUnknownError
from copycat_trio.protocol.operations import Consistency
from copycat_trio.recipes.kv import Get, Put
from copycat_trio.testing.plots import latency_histogram
from copycat_trio.testing.processes import ProcessCluster
from copycat_trio.transport.tls import TlsContexts, client_context, default_client_tls

if __name__ == "__main__":  # the comparison modules `import bench_cluster`: let them find this one
    sys.modules.setdefault("bench_cluster", sys.modules["__main__"])

VALUE_BYTES = 100
READ_KEYS = 1000
LEADER_TIMEOUT = 30.0
DRAIN_GRACE = 2.0
ERROR_PAUSE = 0.01


PROFILED_SERVER = """
import cProfile, sys, time
out = sys.argv[1]
sys.argv = sys.argv[2:]
from copycat_trio.cli import main
profiler = cProfile.Profile(time.process_time)
try:
    profiler.runcall(main)
except SystemExit:
    pass
finally:
    profiler.dump_stats(out)
"""
"""A server under cProfile measuring CPU time (wall time would charge the time a process spends
descheduled, e.g. when a send() wakes its peer on a shared core, to whatever was running)."""


class BenchCertificates:
    """A CA made by trustme for one run, one certificate for 127.0.0.1 that every member uses
    (for both directions of mutual TLS), and the client's, as PEM files in `directory`."""

    def __init__(self, directory: str) -> None:
        import trustme  # a dev dependency; `nox -s bench -- --tls` installs it

        ca = trustme.CA()
        self.ca = os.path.join(directory, "ca.pem")
        ca.cert_pem.write_to_path(self.ca)
        self.member = self._issue(ca, directory, "member", "127.0.0.1")
        self.client = self._issue(ca, directory, "client", "bench@example")

    @staticmethod
    def _issue(ca: Any, directory: str, name: str, identity: str) -> tuple[str, str]:
        cert = ca.issue_cert(identity)
        cert_path = os.path.join(directory, f"{name}.pem")
        key_path = os.path.join(directory, f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(cert_path)
        cert.private_key_pem.write_to_path(key_path)
        return cert_path, key_path

    def serve_options(self, member_id: int) -> list[str]:
        cert, key = self.member
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca]

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca, *self.client)


class BenchCluster(ProcessCluster):
    """The demo's three servers (or `members`) on free loopback ports, with a chosen storage
    level, optionally each under cProfile (--profile DIR). Disk data lives in the temporary
    work directory."""

    def __init__(
        self,
        workdir: str,
        storage: str,
        profile_dir: str | None = None,
        metrics: bool = False,
        tls: BenchCertificates | None = None,
        members: int = 3,
    ) -> None:
        super().__init__(
            Path(workdir),
            members,
            election_timeout=ELECTION_TIMEOUT,
            heartbeat_interval=None,  # serve's default, as in the demo
            storage=storage,
            metrics=metrics,
            serve_options=None if tls is None else tls.serve_options,
        )
        self.profile_dir = profile_dir

    def _command(self, member_id: int) -> list[str]:
        if self.profile_dir is None:
            return super()._command(member_id)
        out = os.path.join(self.profile_dir, f"server{member_id}.prof")
        arguments = self.serve_arguments(member_id)
        return [sys.executable, "-c", PROFILED_SERVER, out, "copycat-trio", *arguments]

    def exited(self) -> list[int]:
        return [i for i, s in self.servers.items() if s.process is not None and not s.running]

    def pids(self) -> dict[int, int]:
        return {i: s.process.pid for i, s in self.servers.items() if s.process is not None}

    def log_tails(self, limit: int = 2000) -> str:
        parts = []
        for name in sorted(os.listdir(self.workdir)):
            if not name.endswith(".log"):
                continue
            with open(os.path.join(self.workdir, name), errors="replace") as f:
                parts.append(f"--- {name}\n{f.read()[-limit:]}")
        return "\n".join(parts)


# --- CPU accounting ----------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a child process from /proc (Linux); None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent not idle (Linux /proc/stat); None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle  # user..steal; guest time is already in user
    return busy / _TICKS


def run_queue_wait_seconds(pid: int) -> float | None:
    """Time the process's live threads spent runnable but waiting for a CPU (Linux
    /proc/PID/task/*/schedstat: /proc/PID/schedstat is the main thread's alone, which for etcd's
    Go runtime or PySyncObj's tick thread is next to nothing)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except FileNotFoundError:  # the thread ended meanwhile
                continue
        return total / 1e9
    except (OSError, IndexError, ValueError):
        return None


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --- the load shape (the same for every system compared) ----------------------------------


def write_key(task: int, i: int) -> str:
    """The 16-character key of a writer task's i-th put."""
    return f"w{task:04d}{i % 10**11:011d}"


def read_key(n: int) -> str:
    """The 16-character key of the n-th seeded key (0 <= n < --read-keys)."""
    return f"r{n:015d}"


def read_value(n: int, value_bytes: int) -> str:
    """What the n-th seeded key holds: `value-n`, padded to value_bytes characters."""
    return f"value-{n}".ljust(value_bytes, ".")


def read_index(task: int, i: int, keys: int = READ_KEYS) -> int:
    """Which of the `keys` seeded keys a reader task reads on its i-th read."""
    return (task * 7919 + i) % keys


# --- one phase ---------------------------------------------------------------------------


@dataclass
class PhaseResult:
    op: str
    tasks: int
    ops: int = 0
    seconds: float = 0.0
    ops_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    unknown: int = 0
    error_samples: list[str] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    """CPU used during the measured window, as a percentage of one core: the client, the
    leader, each follower, and the whole machine (every process, kernel time included); and
    `leader_waiting`, the share of the window the leader was runnable but had no core."""
    histogram: list[int] = field(default_factory=list, repr=False)
    """The window's latencies counted in the fixed log-spaced bins of
    copycat_trio.testing.plots.HISTOGRAM_EDGES_MS (for --plots; runs add up bin by bin)."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


class Phase:
    """N tasks submitting operations; records those that start and finish in the window."""

    def __init__(
        self,
        op: str,
        tasks: int,
        max_ops: int,
        value_bytes: int = VALUE_BYTES,
        read_keys: int = READ_KEYS,
    ) -> None:
        self.result = PhaseResult(op, tasks)
        self.read_keys = read_keys
        self.max_ops = max_ops
        self.value = "v" * value_bytes
        self.value_bytes = value_bytes
        self.latencies: list[float] = []
        self.recording = False
        self.window_start = 0.0
        self.stopping = False
        self.full = trio.Event()

    def make_operation(self, task: int, i: int) -> tuple[Any, Consistency]:
        op = self.result.op
        if op == "put":
            return Put(write_key(task, i), self.value), Consistency.LINEARIZABLE
        key = read_key(read_index(task, i, self.read_keys))
        consistency = {
            "get-lin": Consistency.LINEARIZABLE,
            "get-lease": Consistency.LINEARIZABLE_LEASE,
        }.get(op, Consistency.SEQUENTIAL)
        return Get(key), consistency

    def check_result(self, operation: Any, result: Any) -> str | None:
        if isinstance(operation, Get):
            expected = read_value(int(operation.key[1:]), self.value_bytes)
            if result != expected:
                return f"Get({operation.key!r}) returned {result!r}, expected {expected!r}"
        return None

    def note_error(self, message: str, *, unknown: bool = False) -> None:
        if unknown:
            self.result.unknown += 1
        else:
            self.result.errors += 1
        if len(self.result.error_samples) < 5:
            self.result.error_samples.append(message)

    async def worker(self, client: CopycatClient, task: int, op_timeout: float) -> None:
        i = 0
        while not self.stopping:
            operation, consistency = self.make_operation(task, i)
            i += 1
            started = time.perf_counter()
            try:
                result = await client.submit(operation, consistency=consistency, timeout=op_timeout)
            except OutcomeUnknownError as exc:
                self.note_error(f"OutcomeUnknownError: {exc}", unknown=True)
                await trio.sleep(ERROR_PAUSE)
                continue
            except (CopycatError, ConnectionError) as exc:
                # Pause: a failure raised before any checkpoint must not starve the other tasks.
                self.note_error(f"{type(exc).__name__}: {exc}")
                await trio.sleep(ERROR_PAUSE)
                continue
            finished = time.perf_counter()
            problem = self.check_result(operation, result)
            if problem is not None:
                self.note_error(problem)
                await trio.sleep(ERROR_PAUSE)
                continue
            if self.recording and started >= self.window_start:
                self.latencies.append(finished - started)
                if len(self.latencies) >= self.max_ops:
                    self.full.set()


async def run_phase(
    client: CopycatClient,
    cluster: BenchCluster,
    leader_id: int,
    op: str,
    tasks: int,
    *,
    warmup: float,
    seconds: float,
    max_ops: int,
    op_timeout: float,
    value_bytes: int = VALUE_BYTES,
    read_keys: int = READ_KEYS,
) -> PhaseResult:
    phase = Phase(op, tasks, max_ops, value_bytes, read_keys)
    pids = cluster.pids()
    roles = {m: "leader" if m == leader_id else f"follower{m}" for m in pids}
    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(phase.worker, client, task, op_timeout)
        await trio.sleep(warmup)
        window, cpu = await measure_window(phase, pids, roles, leader_id, seconds)
        phase.stopping = True
        # Let in-flight operations finish (each is bounded by op_timeout), then cut them off.
        nursery.cancel_scope.deadline = trio.current_time() + op_timeout + DRAIN_GRACE
    return finish_result(phase, window, cpu)


async def measure_window(
    phase: Phase, pids: dict[Any, int], roles: dict[Any, str], leader: Any, seconds: float
) -> tuple[float, dict[str, float | None]]:
    """Record the phase's operations for `seconds` (or until max_ops), and the CPU that this
    process (the client), each server (`roles` names them) and the machine used meanwhile, in
    percent of one core: the window's length and that CPU."""
    cpu_before = {m: process_cpu_seconds(pid) for m, pid in pids.items()}
    wait_before = run_queue_wait_seconds(pids[leader])
    own_before = own_cpu_seconds()
    busy_before = machine_busy_seconds()
    phase.window_start = time.perf_counter()
    phase.recording = True
    with trio.move_on_after(seconds):
        await phase.full.wait()
    phase.recording = False
    window = time.perf_counter() - phase.window_start
    own_after = own_cpu_seconds()
    busy_after = machine_busy_seconds()
    cpu_after = {m: process_cpu_seconds(pid) for m, pid in pids.items()}
    wait_after = run_queue_wait_seconds(pids[leader])

    def pct(before: float | None, after: float | None) -> float | None:
        if before is None or after is None or window <= 0:
            return None
        return 100 * (after - before) / window

    cpu: dict[str, float | None] = {"client": pct(own_before, own_after)}
    for m in sorted(pids, key=roles.__getitem__):
        cpu[roles[m]] = pct(cpu_before[m], cpu_after[m])
    cpu["machine"] = pct(busy_before, busy_after)
    cpu["leader_waiting"] = pct(wait_before, wait_after)
    return window, cpu


def finish_result(phase: Phase, window: float, cpu: dict[str, float | None]) -> PhaseResult:
    """The phase's result: throughput and percentiles of what the window recorded."""
    result = phase.result
    result.seconds = window
    latencies = sorted(phase.latencies)
    result.ops = len(latencies)
    result.ops_per_s = result.ops / window if window > 0 else 0.0
    if latencies:
        result.p50_ms = percentile(latencies, 0.50) * 1000
        result.p99_ms = percentile(latencies, 0.99) * 1000
        result.max_ms = latencies[-1] * 1000
    result.histogram = latency_histogram(v * 1000 for v in latencies)
    result.cpu = cpu
    return result


async def seed_read_keys(
    client: CopycatClient, value_bytes: int = VALUE_BYTES, read_keys: int = READ_KEYS
) -> None:
    """Write the keys the read phases read (read_key(n) -> read_value(n)), 32 at a time."""
    limiter = trio.Semaphore(32)
    failures: list[CopycatError] = []

    async def put(i: int) -> None:
        async with limiter:
            if failures:
                return
            try:
                await client.submit(Put(read_key(i), read_value(i, value_bytes)))
            except CopycatError as exc:
                failures.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(read_keys):
            nursery.start_soon(put, i)
    if failures:
        raise failures[0]


# --- output ------------------------------------------------------------------------------


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_cpu(cpu: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        return "?" if v is None else f"{v:.0f}"

    leader = cpu.get("leader")
    followers = [v for k, v in sorted(cpu.items()) if k.startswith("follower")]
    client = one(cpu["client"]) if "client" in cpu else "-"  # "-": no client process of its own
    return f"{client}/{one(leader)}/" + "/".join(one(v) for v in followers)


def format_results(results: list[PhaseResult]) -> str:
    header = (
        "op",
        "tasks",
        "ops",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "unknown",
        "cpu% cl/L/F/F",
        "box%",
        "L wait%",
    )
    rows = [header] + [
        (
            r.op,
            str(r.tasks),
            str(r.ops),
            f"{r.ops_per_s:.0f}",
            format_ms(r.p50_ms),
            format_ms(r.p99_ms),
            format_ms(r.max_ms),
            str(r.errors),
            str(r.unknown),
            format_cpu(r.cpu),
            "?" if r.cpu.get("machine") is None else f"{r.cpu['machine']:.0f}",
            "?" if r.cpu.get("leader_waiting") is None else f"{r.cpu['leader_waiting']:.0f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def git_revision(directory: str) -> str:
    """The commit checked out where `directory` is, or a note saying there is none."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", ".")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"git {sha} + uncommitted changes" if dirty else f"git {sha}"


def machine_facts() -> dict[str, Any]:
    package_dir = os.path.dirname(os.path.abspath(copycat_trio.__file__))
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "trio": trio.__version__,
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?",
        "package": f"{package_dir} ({git_revision(package_dir)})",
    }


# --- main --------------------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,16,64") from None
    if not counts or any(n < 1 or n > 4096 for n in counts):
        raise argparse.ArgumentTypeError("writer counts must be between 1 and 4096")
    return counts


PEERS = ("etcd", "pysyncobj")


def parse_peers(text: str) -> list[str]:
    peers = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if not peers or unknown:
        raise argparse.ArgumentTypeError(f"--compare takes a list of {', '.join(PEERS)}")
    return list(dict.fromkeys(peers))


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=positive, default=5.0, help="measured window per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded warm-up per phase")
    p.add_argument(
        "--writers", type=parse_counts, default=[1, 16, 64], help="task counts, e.g. 1,16,64"
    )
    p.add_argument("--reads", action="store_true", help="also linearizable and sequential Gets")
    p.add_argument("--max-ops", type=int, default=200_000, help="end a window after this many")
    p.add_argument("--op-timeout", type=positive, default=10.0, help="per-operation timeout")
    p.add_argument(
        "--via",
        choices=("leader", "follower"),
        default="leader",
        help="which member the client tries first (a follower forwards to the leader)",
    )
    p.add_argument(
        "--storage",
        choices=("disk", "memory"),
        help="server storage: disk (fsynced, in a temporary directory under $TMPDIR; the "
        "default) or memory (nothing written)",
    )
    p.add_argument(
        "--value-bytes", type=int, default=VALUE_BYTES, help="bytes per value (keys are 16)"
    )
    p.add_argument("--read-keys", type=int, default=READ_KEYS, help="keys written before the reads")
    p.add_argument(
        "--compare",
        type=parse_peers,
        default=[],
        metavar="etcd,pysyncobj",
        help="also run the same load against these systems, alternating, and print ratios",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=2,
        help="with --compare: runs of each system, alternating (A B A B), medians quoted",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--profile", metavar="DIR", help="run each server under cProfile into DIR")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="servers serve /metrics and /health (--metrics-address on free ports; not scraped)",
    )
    side_by_side = p.add_mutually_exclusive_group()
    side_by_side.add_argument(
        "--tls",
        action="store_true",
        help="run every row with TLS on and on plaintext, alternating --runs times, with the "
        "ratio tls/plaintext (certificates made with trustme)",
    )
    side_by_side.add_argument(
        "--metrics-cost",
        action="store_true",
        help="run every row with `serve --metrics-address` on and off, alternating --runs "
        "times, with the ratio on/off",
    )
    side_by_side.add_argument(
        "--five-members",
        action="store_true",
        help="run every row on a 5-member cluster and on a 3-member one, alternating --runs "
        "times, with the ratio 5/3",
    )
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="write a latency histogram per row into DIR (needs matplotlib: copycat-trio[plots])",
    )
    return p


class BenchFailed(Exception):
    """A run that could not measure (no leader, a server exited, an unexpected CopycatError);
    its message ends with the servers' log tails."""


def phase_plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The (op, tasks) rows of one run, in the order they run."""
    phases = [("put", n) for n in args.writers]
    if args.reads:
        for op in ("get-lin", "get-lease", "get-seq"):
            phases += [(op, n) for n in args.writers]
    return phases


def phase_line(result: PhaseResult) -> str:
    """The one-line progress report of a finished phase."""
    return (
        f"  {result.op:9} x{result.tasks:<4} {result.ops:7} ops  {result.ops_per_s:8.0f}/s  "
        f"p50 {format_ms(result.p50_ms)} ms  p99 {format_ms(result.p99_ms)} ms"
        + (
            f"  errors {result.errors} unknown {result.unknown}"
            if result.errors or result.unknown
            else ""
        )
    )


async def copycat_run(
    args: argparse.Namespace,
    facts: dict[str, Any],
    say: Any = print,
    *,
    tls: bool = False,
    members: int = 3,
) -> tuple[list[PhaseResult], list[tuple[Any, ...]]]:
    """Start `members` servers, run every phase of the plan against them with one client, stop
    them: the phases' results and the members' final status rows. `tls`: the members, the
    client and the status polls speak mutual TLS (certificates made for this run). Raises
    BenchFailed."""
    with tempfile.TemporaryDirectory(prefix="copycat-bench-") as workdir:
        certificates = BenchCertificates(workdir) if tls else None
        cluster = BenchCluster(
            workdir,
            args.storage,
            profile_dir=args.profile,
            metrics=args.metrics,
            tls=certificates,
            members=members,
        )
        results: list[PhaseResult] = []
        # The status polls (wait_for_cluster, _final_status) use the default client TLS.
        token = default_client_tls.set(
            None if certificates is None else TlsContexts.for_client(certificates.client_context())
        )
        try:
            await cluster.start()
            all_addresses = cluster.addresses()
            leader = await wait_for_cluster(cluster, all_addresses)
            if leader is None:
                raise BenchFailed(
                    f"no leader elected within {LEADER_TIMEOUT:.0f}s; logs follow\n"
                    + cluster.log_tails()
                )
            leader_id = leader["id"]
            leader_address = cluster.address(leader_id)
            others = [a for a in all_addresses if a != leader_address]
            if args.via == "leader":
                addresses = [leader_address, *others]
            else:
                addresses = [*others, leader_address]
            say(
                f"servers: {', '.join(f'{i}={cluster.address(i)}' for i in cluster.ids())}; "
                f"leader: member {leader_id} (term {leader['term']}); "
                f"client goes first to {addresses[0]} ({args.via}); storage: {args.storage}"
                + (f" in {workdir}" if args.storage == "disk" else "")
                + ("; TLS on" if certificates is not None else "")
                + ("; metrics on" if args.metrics else "")
            )
            facts.update(
                leader=leader_id,
                via=args.via,
                storage=args.storage,
                addresses={i: cluster.address(i) for i in cluster.ids()},
            )
            ssl_context = None if certificates is None else certificates.client_context()
            async with open_client(
                addresses, timeout=args.op_timeout, ssl_context=ssl_context
            ) as client:
                if args.reads:
                    await seed_read_keys(client, args.value_bytes, args.read_keys)
                for op, tasks in phase_plan(args):
                    result = await run_phase(
                        client,
                        cluster,
                        leader_id,
                        op,
                        tasks,
                        warmup=args.warmup,
                        seconds=args.seconds,
                        max_ops=args.max_ops,
                        op_timeout=args.op_timeout,
                        value_bytes=args.value_bytes,
                        read_keys=args.read_keys,
                    )
                    results.append(result)
                    say(phase_line(result))
            rows = await _final_status(all_addresses)
        except CopycatError as exc:
            raise BenchFailed(
                f"{type(exc).__name__}: {exc}; logs follow\n{cluster.log_tails()}"
            ) from exc
        finally:
            default_client_tls.reset(token)
            await cluster.aclose()
    return results, rows


def report_errors(results: list[PhaseResult], say: Any = print) -> tuple[bool, bool]:
    """Print the error samples of a run: (any unexpected error, any unknown outcome)."""
    failed = [r for r in results if r.errors]
    unknown = [r for r in results if r.unknown]
    for r in failed + unknown:
        for sample in r.error_samples:
            say(f"  {r.op} x{r.tasks}: {sample}")
    return bool(failed), bool(unknown)


CPU_LEGEND = (
    "cpu%: client / leader / followers during the measured window (100 = one core); "
    "box%: the whole machine, all processes ({every} = every core busy); "
    "L wait%: leader runnable but waiting for a core"
)


async def bench(args: argparse.Namespace, facts: dict[str, Any]) -> int:
    say = print
    try:
        results, rows = await copycat_run(args, facts, say)
    except BenchFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    say("")
    say(format_results(results))
    say(CPU_LEGEND.format(every=100 * (facts["usable_cpus"] or 1)))
    if rows:
        say(f"final status: {rows}")
    failed, unknown = report_errors(results, say)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"facts": facts, "results": [asdict(r) for r in results]}, f, indent=2)
        say(f"wrote {args.json}")
    if args.plots:
        write_histograms(args.plots, phase_plan(args), {"copycat_trio": [results]}, say)
    if failed:
        say(f"FAILED: unexpected errors in {sum(1 for r in results if r.errors)} phase(s)")
        return 1
    if unknown:
        say("note: some commands timed out with unknown outcome (see the unknown column)")
    return 0


def write_histograms(
    directory: str,
    plan: list[tuple[str, int]],
    runs: dict[str, list[list[PhaseResult]]],
    say: Any = print,
) -> None:
    """`--plots`: one latency histogram per row, `DIR/latency-OP-xTASKS.png`, one outline per
    system (or variant), its runs added up; one line instead where matplotlib is missing."""
    from copycat_trio.testing.plots import (
        draw_latency_histogram,
        matplotlib_missing,
        merge_histograms,
    )

    missing = matplotlib_missing()
    if missing is not None:
        say(f"plots: skipped: {missing}")
        return
    written = []
    for op, tasks in plan:
        series = {
            name: merge_histograms(
                r.histogram
                for results in system_runs
                for r in results
                if (r.op, r.tasks) == (op, tasks)
            )
            for name, system_runs in runs.items()
        }
        n = sum(len(v) for v in runs.values())
        path = draw_latency_histogram(
            series,
            Path(directory) / f"latency-{op}-x{tasks}.png",
            title=f"{op}, {tasks} task{'s' if tasks > 1 else ''}: latency of every operation "
            f"in the measured windows ({n} run{'s' if n > 1 else ''})",
        )
        if path is not None:
            written.append(path.name)
    say(f"plots: {len(written)} latency histograms in {directory} ({', '.join(written)})")


async def wait_for_cluster(cluster: BenchCluster, addresses: list[str]) -> dict[str, Any] | None:
    """The leader's status row, or None if none was elected in time or a server exited."""
    deadline = trio.current_time() + LEADER_TIMEOUT
    while trio.current_time() < deadline:
        if cluster.exited():
            return None
        try:
            return await wait_for_leader(addresses, timeout=1.0)
        except trio.TooSlowError:
            continue
    return None


async def _final_status(addresses: list[str]) -> list[tuple[Any, ...]]:
    from copycat_trio.client.status import collect_status

    rows = await collect_status(addresses, timeout=2.0)
    return [(r["id"], r["role"], r["term"], r["commit_index"], r["applied_index"]) for r in rows]


def main() -> None:
    args = build_parser().parse_args()
    if args.max_ops < 1:
        raise SystemExit("--max-ops must be at least 1")
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.read_keys < 1:
        raise SystemExit("--read-keys must be at least 1")
    if args.value_bytes < 16:
        raise SystemExit("--value-bytes must be at least 16 (read values carry their key number)")
    if args.compare and (args.tls or args.metrics_cost or args.five_members):
        raise SystemExit("--compare runs with none of --tls, --metrics-cost, --five-members")
    if args.metrics_cost and args.metrics:
        raise SystemExit("--metrics-cost turns metrics on and off itself: drop --metrics")
    if args.tls:
        try:
            import trustme  # noqa: F401
        except ImportError:
            raise SystemExit(
                "--tls makes its certificates with trustme: pip install trustme "
                "(`nox -s bench -- --tls` installs it)"
            ) from None
    args.storage = args.storage or "disk"
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    facts = machine_facts()
    before = machine_busy_seconds()
    time.sleep(1.0)
    after = machine_busy_seconds()
    facts["busy_before_start"] = None if before is None or after is None else 100 * (after - before)
    print(f"command: {facts['command']}")
    print(f"python:  {facts['python']} on {facts['platform']}; trio {facts['trio']}")
    busy = facts["busy_before_start"]
    print(
        f"cpus:    {facts['cpus']} (usable {facts['usable_cpus']}); load {facts['load']}; "
        f"busy before start: {'?' if busy is None else f'{busy:.0f}'}% over 1 s "
        "(other processes; 100 = one core)"
    )
    print(f"date:    {facts['date']}")
    print(f"code:    {facts['package']}")
    code = 130
    try:
        if args.compare:
            import compare  # beside this file: etcd and PySyncObj, alternating with copycat_trio

            code = trio.run(compare.run_comparison, args, facts)
        elif args.tls or args.metrics_cost or args.five_members:
            import variants  # beside this file: TLS, metrics or 5 members on and off, alternating

            code = trio.run(variants.run_variants, args, facts)
        else:
            code = trio.run(bench, args, facts)
    except* KeyboardInterrupt:  # the servers were stopped on the way out (stop_all is shielded)
        print("interrupted", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
